package xks_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/xks"
)

// testCA makes certificates for the mTLS test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue makes a leaf: a server certificate for 127.0.0.1, or a client
// certificate whose DNS SAN (and CN) is name.
func (ca *testCA) issue(t *testing.T, name string, server bool) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	if server {
		tmpl.IPAddresses, tmpl.ExtKeyUsage = []net.IP{net.ParseIP("127.0.0.1")}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	} else {
		tmpl.DNSNames, tmpl.ExtKeyUsage = []string{name}, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func writePEM(t *testing.T, dir, name string, c tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	kb, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestRequireClientName checks require_client_name over a real TLS
// listener with client certificates: KMS's name is accepted, another name
// from the same CA refused with AuthenticationFailedException, no
// certificate refused at the handshake, and a store without the setting
// takes any certificate the CA signed.
func TestRequireClientName(t *testing.T) {
	dir := t.TempDir()
	serverCA, clientCA := newTestCA(t, "server CA"), newTestCA(t, "client CA")
	certFile, keyFile := writePEM(t, dir, "server", serverCA.issue(t, "127.0.0.1", true))
	caFile := filepath.Join(dir, "client-ca.pem")
	if err := os.WriteFile(caFile, clientCA.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	const kmsName = "cks.kms.us-east-1.amazonaws.com"
	yaml := fmt.Sprintf(`
server:
  tls:
    cert_file: %s
    key_file: %s
    client_ca_file: %s
xks:
  stores:
    - name: mtls
      uri_prefix: mtls
      region: us-east-1
      credentials:
        - access_key_id: %s
          secret_access_key_env: XKS_TEST_MAIN_1
      keys: ["xks-*"]
      require_client_name: %s
    - name: any
      uri_prefix: any
      region: us-east-1
      credentials:
        - access_key_id: %s
          secret_access_key_env: XKS_TEST_OPEN
      keys: ["xks-*"]
`, certFile, keyFile, caFile, credMain1.id, kmsName, credOpen.id)
	roots := x509.NewCertPool()
	roots.AddCert(serverCA.cert)
	clientConfig := func(c *tls.Certificate) *tls.Config {
		tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		if c != nil {
			tc.Certificates = []tls.Certificate{*c}
		}
		return tc
	}
	kms, other := clientCA.issue(t, kmsName, false), clientCA.issue(t, "other.example.com", false)
	g := startGatewayYAML(t, dir, yaml, false, clientConfig(&kms))
	mtls, anyStore := g.store("/mtls/kms/xks/v1", "us-east-1", credMain1), g.store("/any/kms/xks/v1", "us-east-1", credOpen)

	want(t, mtls.call(t, "/health", healthBody()), 200, "")

	g.hc = &http.Client{Transport: &http.Transport{TLSClientConfig: clientConfig(&other)}}
	r := mtls.call(t, "/health", healthBody())
	want(t, r, 401, xks.AuthenticationFailedException)
	want(t, anyStore.call(t, "/health", healthBody()), 200, "")

	// A client without a certificate does not get past the handshake.
	nocert := &http.Client{Transport: &http.Transport{TLSClientConfig: clientConfig(nil)}}
	req, _ := http.NewRequest(http.MethodPost, g.URL+"/mtls/kms/xks/v1/health", nil)
	if resp, err := nocert.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a client without a certificate got %d", resp.StatusCode)
	}
}
