package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

func runOpenSSL(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("openssl", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func writeText(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// CSRs signed by SoftHSM2 keys pass openssl req -verify; a three-level
// chain of HSM keys (the leaf's CSR made by openssl) passes openssl verify.
func TestHSMCSRsAndChainVerifyWithOpenSSL(t *testing.T) {
	testbed.Require(t, "openssl")
	testbed.ProcessSoftHSM(t)
	g := startGateway(t, hsmConfig(t), "")
	ctx := context.Background()
	dir := t.TempDir()
	for _, c := range []struct {
		name, algorithm string
		spec            apitypes.KeySpec
	}{
		{"rsa-rs256", "RS256", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048}},
		{"rsa-ps256", "PS256", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048}},
		{"p256", "", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}},
		{"p384", "", apitypes.KeySpec{KeyType: "EC", Curve: "P-384"}},
		{"ed25519", "", apitypes.KeySpec{KeyType: "Ed25519"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			k, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "csr-" + c.name, KeySpec: c.spec})
			if err != nil {
				t.Fatal(err)
			}
			if k.Provider != "hsm" {
				t.Fatalf("key on %s, not the HSM", k.Provider)
			}
			r, err := g.C.CreateCSR(ctx, k.Name, apitypes.CSRRequest{Algorithm: c.algorithm, Subject: apitypes.Subject{CommonName: c.name + ".hsm.example"},
				DNSNames: []string{c.name + ".hsm.example"}})
			if err != nil {
				t.Fatal(err)
			}
			out := runOpenSSL(t, dir, "req", "-in", writeText(t, dir, c.name+".csr", r.CSR), "-verify", "-noout", "-text")
			if !strings.Contains(out, "DNS:"+c.name+".hsm.example") {
				t.Fatalf("openssl req -text: %s", out)
			}
		})
	}

	root := "chain-root"
	if _, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: root, KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-384"}}); err != nil {
		t.Fatal(err)
	}
	one := 1
	rc, err := g.C.IssueCertificate(ctx, root, apitypes.IssueCertificateRequest{SelfSigned: true, Subject: &apitypes.Subject{CommonName: "HSM Root"},
		Validity: "87600h", IsCA: true, MaxPathLen: &one})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.C.AttachChain(ctx, root, rc.Certificate); err != nil {
		t.Fatal(err)
	}
	inter := "chain-intermediate"
	if _, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: inter, KeySpec: apitypes.KeySpec{KeyType: "RSA", KeySize: 2048, Algorithm: "PS256"}}); err != nil {
		t.Fatal(err)
	}
	icsr, err := g.C.CreateCSR(ctx, inter, apitypes.CSRRequest{Subject: apitypes.Subject{CommonName: "HSM Intermediate"}})
	if err != nil {
		t.Fatal(err)
	}
	ic, err := g.C.IssueCertificate(ctx, root, apitypes.IssueCertificateRequest{CSR: icsr.CSR, Validity: "43800h", IsCA: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.C.AttachChain(ctx, inter, ic.Certificate+rc.Certificate); err != nil {
		t.Fatal(err)
	}
	runOpenSSL(t, dir, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-subj", "/CN=leaf.hsm.example", "-out", "leaf.csr")
	leafCSR, err := os.ReadFile(filepath.Join(dir, "leaf.csr"))
	if err != nil {
		t.Fatal(err)
	}
	lc, err := g.C.IssueCertificate(ctx, inter, apitypes.IssueCertificateRequest{CSR: string(leafCSR), Validity: "720h",
		KeyUsage: []string{"digital_signature", "key_encipherment"}, ExtKeyUsage: []string{"server_auth"}})
	if err != nil {
		t.Fatal(err)
	}
	out := runOpenSSL(t, dir, "verify", "-CAfile", writeText(t, dir, "root.pem", rc.Certificate),
		"-untrusted", writeText(t, dir, "inter.pem", ic.Certificate), writeText(t, dir, "leaf.pem", lc.Certificate))
	if !strings.Contains(out, "leaf.pem: OK") {
		t.Fatalf("openssl verify: %s", out)
	}
	if text := runOpenSSL(t, dir, "x509", "-in", filepath.Join(dir, "inter.pem"), "-noout", "-text"); !strings.Contains(text, "CA:TRUE, pathlen:0") {
		t.Fatalf("intermediate: %s", text)
	}
	// The intermediate's key is PS256: the leaf is signed with RSASSA-PSS.
	if text := runOpenSSL(t, dir, "x509", "-in", filepath.Join(dir, "leaf.pem"), "-noout", "-text"); !strings.Contains(text, "rsassaPss") ||
		!strings.Contains(text, "TLS Web Server Authentication") || !strings.Contains(text, "Digital Signature, Key Encipherment") {
		t.Fatalf("leaf: %s", text)
	}
}

// JWTs signed by SoftHSM2 keys verify with go-jose using the key found in
// the gateway's /.well-known/jwks.json, fetched without a credential.
func TestHSMJWTsVerifyWithServedJWKS(t *testing.T) {
	testbed.ProcessSoftHSM(t)
	g := startGateway(t, hsmConfig(t), "")
	ctx := context.Background()
	var names []string
	for _, c := range []struct {
		name string
		spec apitypes.KeySpec
	}{
		{"jwt-hsm-rs256", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048}},
		{"jwt-hsm-ps256", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048, Algorithm: "PS256"}},
		{"jwt-hsm-es256", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}},
		{"jwt-hsm-es384", apitypes.KeySpec{KeyType: "EC", Curve: "P-384"}},
		{"jwt-hsm-eddsa", apitypes.KeySpec{KeyType: "Ed25519"}},
	} {
		if _, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: c.name, KeySpec: c.spec, PublishJWKS: true}); err != nil {
			t.Fatal(err)
		}
		names = append(names, c.name)
	}
	resp, err := http.Get(g.URL + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("well-known: %d %s", resp.StatusCode, body)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != len(names) {
		t.Fatalf("%d keys served, want %d", len(set.Keys), len(names))
	}
	algs := []jose.SignatureAlgorithm{jose.RS256, jose.PS256, jose.ES256, jose.ES384, jose.EdDSA}
	for _, n := range names {
		res, err := g.C.SignJWT(ctx, n, apitypes.JWTRequest{Claims: map[string]any{"sub": n}, ExpiresIn: "5m"})
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		tok, err := jwt.ParseSigned(res.Token, algs)
		if err != nil {
			t.Fatal(err)
		}
		keys := set.Key(tok.Headers[0].KeyID)
		if len(keys) != 1 {
			t.Fatalf("%s: kid %s not served", n, tok.Headers[0].KeyID)
		}
		var claims jwt.Claims
		if err := tok.Claims(keys[0].Key, &claims); err != nil || claims.Subject != n {
			t.Fatalf("%s: verify with the served key: %v (%+v)", n, err, claims)
		}
		other := set.Keys[0]
		if other.KeyID == keys[0].KeyID {
			other = set.Keys[1]
		}
		if err := tok.Claims(other.Key, &claims); err == nil {
			t.Fatalf("%s: verifies with another key of the set", n)
		}
	}
}
