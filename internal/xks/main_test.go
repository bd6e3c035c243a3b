package xks_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/smithy-go/aws-http-auth/credentials"
	"github.com/aws/smithy-go/aws-http-auth/sigv4"
	v4 "github.com/aws/smithy-go/aws-http-auth/v4"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// The tests run real gateways (server.New: SQLite, the audit log, the
// software provider and a SoftHSM2 token) on real listeners, and sign their
// requests with smithy-go's SigV4 signer (an implementation independent of
// the SDK signer the proxy verifies with) or with curl --aws-sigv4.

const hsmPIN = "xks-test-pin-2468"

// Credentials of the test stores (access key ids: A-Z and 2-7).
var (
	credMain1 = cred{"AKIAI2SFODNN7EXAMPLE", "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE"}
	credMain2 = cred{"BETWEEN2TENAND3TENCHARACTERS", "VU6W2byoiBrhDqNGbx703oL0syCAmhlQgwNUT123456"}
	credOpen  = cred{"OPENSTORE2ACCESS3KEY4ID5", "b3BlbiBzdG9yZSBzZWNyZXQgYWNjZXNzIGtleSAxMjM="}
	credQuota = cred{"QUOTASTORE2ACCESSKEYID", "cXVvdGEgc3RvcmUgc2VjcmV0IGFjY2VzcyBrZXkgMTI="}
	credOps   = cred{"OPERATIONS2STORE3KEYID", "b3BzIHN0b3JlIHNlY3JldCBhY2Nlc3Mga2V5IDEyMzQ="}
)

type cred struct{ id, secret string }

func TestMain(m *testing.M) {
	os.Setenv("KEYGRID_XKS_PIN", hsmPIN)
	os.Setenv("KEYGRID_XKS_MASTER_KEY", strings.Repeat("cd", 32))
	os.Setenv("XKS_TEST_MAIN_1", credMain1.secret)
	os.Setenv("XKS_TEST_OPEN", credOpen.secret)
	os.Setenv("XKS_TEST_QUOTA", credQuota.secret)
	os.Setenv("XKS_TEST_OPS", credOps.secret)
	testbed.Main(m, testbed.WithSoftHSM("keygrid-xks", hsmPIN))
}

// storesYAML is the xks block of the test gateways. secretFile holds
// credMain2's secret (the file form of a credential).
func storesYAML(secretFile string) string {
	return fmt.Sprintf(`
xks:
  stores:
    - name: main
      uri_prefix: example/uri/path/prefix
      region: us-east-1
      credentials:
        - access_key_id: %s
          secret_access_key_env: XKS_TEST_MAIN_1
        - access_key_id: %s
          secret_access_key_file: %s
      keys: ["xks-*"]
      policy:
        principals: ["arn:aws:iam::123456789012:*"]
    - name: open
      uri_prefix: ""
      region: eu-west-1
      credentials:
        - access_key_id: %s
          secret_access_key_env: XKS_TEST_OPEN
      keys: ["open-*", "xks-*"]
    - name: quota
      uri_prefix: quota
      region: us-east-1
      credentials:
        - access_key_id: %s
          secret_access_key_env: XKS_TEST_QUOTA
      keys: ["xks-*"]
      rate_per_second: 2
    - name: ops
      uri_prefix: ops/v2_store
      region: us-east-1
      credentials:
        - access_key_id: %s
          secret_access_key_env: XKS_TEST_OPS
      keys: ["xks-*"]
      policy:
        operations: ["Encrypt", "GenerateDataKey", "Decrypt", "DescribeKey"]
        via_services: ["ebs", ""]
`, credMain1.id, credMain2.id, secretFile, credOpen.id, credQuota.id, credOps.id)
}

// gateway is a running server with its REST client.
type gateway struct {
	srv     *server.Server
	ts      *httptest.Server
	URL     string
	C       *client.Client
	DataDir string
	hc      *http.Client
}

// startGateway starts a gateway from extra YAML (providers and the like)
// plus the test stores. withHSM adds the SoftHSM2 token as provider "hsm".
func startGateway(t *testing.T, extra string, withHSM bool) *gateway {
	t.Helper()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "main2.secret")
	if err := os.WriteFile(secretFile, []byte(credMain2.secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return startGatewayYAML(t, dir, extra+storesYAML(secretFile), withHSM, nil)
}

// startGatewayYAML starts a gateway in dir from yaml (with the providers
// added). With tc, it serves HTTPS with the server's TLS configuration and
// tc is the clients' configuration.
func startGatewayYAML(t *testing.T, dir, yaml string, withHSM bool, tc *tls.Config) *gateway {
	t.Helper()
	providers := `
providers:
  software:
    config:
      master_key_env: KEYGRID_XKS_MASTER_KEY
`
	if withHSM {
		hsm := testbed.ProcessSoftHSM(t)
		providers += fmt.Sprintf(`  hsm:
    type: pkcs11
    config:
      library_path: %s
      token_label: %s
      pin_env: KEYGRID_XKS_PIN
      max_sessions: 8
`, testbed.SoftHSMModule, hsm.Label)
	}
	yaml = providers + yaml
	path := filepath.Join(dir, "keygrid.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, config.Flags{DataDir: filepath.Join(dir, "data"), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Limits.RatePerPrincipal = -1
	srv, err := server.New(context.Background(), cfg, registry.All(), slog.New(slog.DiscardHandler), "test")
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway{srv: srv, DataDir: cfg.DataDir, hc: http.DefaultClient}
	g.ts = httptest.NewUnstartedServer(srv.Handler())
	copts := []client.Option{}
	if tc != nil {
		g.ts.TLS = srv.TLS()
		g.ts.StartTLS()
		g.hc = &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
		copts = append(copts, client.WithTLSConfig(tc))
	} else {
		g.ts.Start()
	}
	g.URL = g.ts.URL
	tok, err := os.ReadFile(cfg.Auth.AdminTokenFile)
	if err != nil {
		t.Fatal(err)
	}
	g.C, _ = client.New(g.URL, append(copts, client.WithToken(strings.TrimSpace(string(tok))))...)
	t.Cleanup(func() {
		g.ts.Close()
		srv.Close()
	})
	return g
}

// aesKey creates an AES key on a provider through the REST API.
func (g *gateway) aesKey(t *testing.T, name, prov string, size int, usage ...string) *apitypes.Key {
	t.Helper()
	if len(usage) == 0 {
		usage = []string{"encrypt", "decrypt"}
	}
	k, err := g.C.CreateKey(context.Background(), apitypes.CreateKeyRequest{Name: name, Provider: prov,
		KeySpec: apitypes.KeySpec{KeyType: "AES", KeySize: size, Usage: usage}})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return k
}

// store is how a test talks to one store: its base URL, region and
// credential.
type store struct {
	g      *gateway
	path   string // the XksProxyUriPath
	region string
	cred   cred
}

func (g *gateway) store(path, region string, c cred) store {
	return store{g: g, path: path, region: region, cred: c}
}

func (g *gateway) main() store {
	return g.store("/example/uri/path/prefix/kms/xks/v1", "us-east-1", credMain1)
}

// reply is an XKS answer.
type reply struct {
	status int
	header http.Header
	raw    []byte
	m      map[string]any
}

// errorName is the errorName of an error reply ("" for none).
func (r reply) errorName() string {
	s, _ := r.m["errorName"].(string)
	return s
}

// b64 returns a binary field of the reply.
func (r reply) b64(t *testing.T, f string) []byte {
	t.Helper()
	s, ok := r.m[f].(string)
	if !ok {
		t.Fatalf("reply has no %s: %s", f, r.raw)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("%s: %v", f, err)
	}
	return b
}

// signOpts change how a request is signed or sent.
type signOpts struct {
	at      time.Time
	region  string
	service string
	cred    *cred
	// headers are signed too (besides host and x-amz-*).
	signed []string
	// after changes the request after signing.
	after func(*http.Request)
	// method (default POST).
	method string
	// unsigned sends no Authorization.
	unsigned bool
	// set are headers set before signing.
	set map[string]string
}

type headerRules []string

func (h headerRules) IsSigned(name string) bool {
	if name == "host" || strings.HasPrefix(name, "x-amz-") {
		return true
	}
	for _, s := range h {
		if s == name {
			return true
		}
	}
	return false
}

// sign signs req over body with smithy-go's SigV4 signer.
func sign(t *testing.T, req *http.Request, body []byte, c cred, region, service string, at time.Time, signed []string) {
	t.Helper()
	sum := sha256.Sum256(body)
	s := sigv4.New(func(o *v4.SignerOptions) { o.HeaderRules = headerRules(signed) })
	if err := s.SignRequest(&sigv4.SignRequestInput{Request: req, PayloadHash: sum[:],
		Credentials: credentials.Credentials{AccessKeyID: c.id, SecretAccessKey: c.secret},
		Service:     service, Region: region, Time: at}); err != nil {
		t.Fatal(err)
	}
}

// call POSTs body (a string, []byte or a value sent as JSON) to the
// store's path + rel, signed.
func (s store) call(t *testing.T, rel string, body any, o ...signOpts) reply {
	t.Helper()
	var opt signOpts
	if len(o) > 0 {
		opt = o[0]
	}
	var raw []byte
	switch v := body.(type) {
	case string:
		raw = []byte(v)
	case []byte:
		raw = v
	default:
		var err error
		if raw, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	method := opt.method
	if method == "" {
		method = http.MethodPost
	}
	req, err := http.NewRequest(method, s.g.URL+s.path+rel, bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range opt.set {
		req.Header.Set(k, v)
	}
	if !opt.unsigned {
		c, region, service, at := s.cred, s.region, "kms-xks-proxy", time.Now()
		if opt.cred != nil {
			c = *opt.cred
		}
		if opt.region != "" {
			region = opt.region
		}
		if opt.service != "" {
			service = opt.service
		}
		if !opt.at.IsZero() {
			at = opt.at
		}
		sign(t, req, raw, c, region, service, at, opt.signed)
	}
	if opt.after != nil {
		opt.after(req)
	}
	return send(t, s.g.hc, req)
}

func send(t *testing.T, hc *http.Client, req *http.Request) reply {
	t.Helper()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := reply{status: resp.StatusCode, header: resp.Header, raw: raw}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &r.m); err != nil {
			t.Fatalf("status %d: not JSON: %q", resp.StatusCode, raw)
		}
		if bytes.Count(bytes.TrimSuffix(raw, []byte("\n")), []byte("\n")) != 0 {
			t.Fatalf("more than one line: %q", raw)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type %q", ct)
		}
	}
	return r
}

// md is request metadata for a key operation.
func md(op string) map[string]any {
	return map[string]any{
		"awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
		"kmsKeyArn":       "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
		"kmsOperation":    op,
		"kmsRequestId":    fmt.Sprintf("req-%s-%d", op, time.Now().UnixNano()),
		"kmsViaService":   "ebs",
	}
}

func healthBody() map[string]any {
	return map[string]any{"requestMetadata": map[string]any{"kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae", "kmsOperation": "KmsHealthCheck"}}
}

func encryptBody(pt, aad []byte) map[string]any {
	b := map[string]any{"requestMetadata": md("Encrypt"), "plaintext": pt, "encryptionAlgorithm": "AES_GCM"}
	if aad != nil {
		b["additionalAuthenticatedData"] = aad
	}
	return b
}

// ciphertext is what an encrypt returned.
type ciphertext struct {
	ct, cm, iv, tag, cdiv []byte
}

func (s store) encrypt(t *testing.T, key string, pt, aad []byte) ciphertext {
	t.Helper()
	r := s.call(t, "/keys/"+key+"/encrypt", encryptBody(pt, aad))
	if r.status != 200 {
		t.Fatalf("encrypt %s: %d %s", key, r.status, r.raw)
	}
	return ciphertext{ct: r.b64(t, "ciphertext"), cm: r.b64(t, "ciphertextMetadata"), iv: r.b64(t, "initializationVector"), tag: r.b64(t, "authenticationTag")}
}

func decryptBody(c ciphertext, aad []byte) map[string]any {
	b := map[string]any{"requestMetadata": md("Decrypt"), "ciphertext": c.ct, "encryptionAlgorithm": "AES_GCM",
		"initializationVector": c.iv, "authenticationTag": c.tag}
	if c.cm != nil {
		b["ciphertextMetadata"] = c.cm
	}
	if aad != nil {
		b["additionalAuthenticatedData"] = aad
	}
	return b
}

func (s store) decrypt(t *testing.T, key string, c ciphertext, aad []byte) reply {
	t.Helper()
	return s.call(t, "/keys/"+key+"/decrypt", decryptBody(c, aad))
}

// want checks a reply's status and error name.
func want(t *testing.T, r reply, status int, name string) {
	t.Helper()
	if r.status != status || r.errorName() != name {
		t.Fatalf("got %d %s, want %d %s", r.status, r.raw, status, name)
	}
	if name != "" {
		msg, _ := r.m["errorMessage"].(string)
		if len(msg) >= 512 {
			t.Fatalf("errorMessage of %d characters", len(msg))
		}
		for _, c := range msg {
			if c < 0x20 || c > 0x7e {
				t.Fatalf("errorMessage has %q", c)
			}
		}
	}
}
