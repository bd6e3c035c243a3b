package server_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/duration"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// env is one running gateway: a real server on the embedded default
// configuration (software provider, SQLite, audit log) in a data directory,
// served over a real listener.
type env struct {
	dataDir string
	srv     *server.Server
	ts      *httptest.Server
	c       *client.Client
	// token is the admin token the server generated in
	// <dataDir>/admin.token; send and c use it.
	token string

	closeOnce sync.Once
}

// newEnv starts a gateway on a fresh data directory.
func newEnv(t *testing.T) *env {
	t.Helper()
	return startEnv(t, t.TempDir())
}

// startEnv starts a gateway on dataDir (which may hold an earlier server's
// keys). It is closed when the test ends, or earlier by close.
func startEnv(t *testing.T, dataDir string) *env {
	t.Helper()
	cfg, err := config.Load("", config.Flags{DataDir: dataDir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("config.Load: %v", err)
	}
	// The lifecycle's floors lowered, to keep deletion and rotation tests
	// to seconds (keys.min_deletion_window, keys.min_rotation_period).
	cfg.Keys.MinDeletionWindow, cfg.Keys.MinRotationPeriod = duration.Duration(time.Second), duration.Duration(time.Second)
	cfg.Keys.DeletionSweepInterval = duration.Duration(100 * time.Millisecond)
	srv, err := server.New(context.Background(), cfg, provider.Registry{"software": software.New}, slog.New(slog.DiscardHandler), "test")
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	e := &env{dataDir: dataDir, srv: srv, ts: httptest.NewServer(srv.Handler()), token: adminToken(t, dataDir)}
	e.c, err = client.New(e.ts.URL, client.WithHTTPClient(e.ts.Client()), client.WithToken(e.token))
	if err != nil {
		e.close(t)
		t.Fatalf("client.New: %v", err)
	}
	t.Cleanup(func() { e.close(t) })
	return e
}

// adminToken reads the admin token a server made in dataDir.
func adminToken(t *testing.T, dataDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "admin.token"))
	if err != nil {
		t.Fatalf("admin token: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// close stops the listener and closes the server (providers, audit log,
// store).
func (e *env) close(t *testing.T) {
	e.closeOnce.Do(func() {
		e.ts.Close()
		if err := e.srv.Close(); err != nil {
			t.Errorf("server.Close: %v", err)
		}
	})
}

// response is one HTTP answer, body read.
type response struct {
	status int
	header http.Header
	body   []byte
}

// send makes one request with the admin token. in is nil (no body), a
// string or []byte (sent as is) or a value (sent as JSON). hdr are extra
// headers, as name, value pairs; an empty value removes the header (so
// "Authorization", "" sends no credential).
func (e *env) send(t *testing.T, method, path string, in any, hdr ...string) response {
	t.Helper()
	req := e.newRequest(t, method, path, in)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return e.do(t, req)
}

// newRequest makes the request send sends (admin token, JSON body), for a
// test that sets headers send cannot (one header twice).
func (e *env) newRequest(t *testing.T, method, path string, in any) *http.Request {
	t.Helper()
	var body io.Reader
	switch v := in.(type) {
	case nil:
	case string:
		body = strings.NewReader(v)
	case []byte:
		body = bytes.NewReader(v)
	default:
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("marshal request: %v", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.ts.URL+path, body)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+e.token)
	return req
}

// do sends req and reads the answer.
func (e *env) do(t *testing.T, req *http.Request) response {
	t.Helper()
	resp, err := e.ts.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL.Path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// ok makes a request that must answer want; the JSON body goes into out
// (when not nil).
func (e *env) ok(t *testing.T, method, path string, in any, want int, out any) response {
	t.Helper()
	r := e.send(t, method, path, in)
	if r.status != want {
		t.Fatalf("%s %s: status %d, want %d; body %s", method, path, r.status, want, r.body)
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			t.Fatalf("%s %s: decode %T: %v; body %s", method, path, out, err, r.body)
		}
	}
	return r
}

// fails makes a request that must fail with status and code, and checks the
// error body shape: {"error":{"code","message","request_id"}} and nothing
// else, request_id equal to the X-Request-Id answered.
func (e *env) fails(t *testing.T, method, path string, in any, status int, code apitypes.ErrorCode, hdr ...string) apitypes.ErrorDetail {
	t.Helper()
	r := e.send(t, method, path, in, hdr...)
	if r.status != status {
		t.Fatalf("%s %s: status %d, want %d; body %s", method, path, r.status, status, r.body)
	}
	d := checkErrorBody(t, r)
	if d.Code != code {
		t.Fatalf("%s %s: code %s, want %s; body %s", method, path, d.Code, code, r.body)
	}
	return d
}

// checkErrorBody checks the shape of an error response and returns it.
func checkErrorBody(t *testing.T, r response) apitypes.ErrorDetail {
	t.Helper()
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("error response Content-Type %q, want application/json; body %s", ct, r.body)
	}
	var body apitypes.ErrorBody
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("error body is not {\"error\":{code,message,request_id}}: %v; body %s", err, r.body)
	}
	d := body.Error
	if d.Code == "" || d.Message == "" || d.RequestID == "" {
		t.Fatalf("error body lacks code, message or request_id: %s", r.body)
	}
	if h := r.header.Get("X-Request-Id"); d.RequestID != h {
		t.Fatalf("error request_id %q, X-Request-Id header %q", d.RequestID, h)
	}
	return d
}

func keyPath(ref, suffix string) string { return "/api/v1/keys/" + ref + suffix }

// createKey creates a key through POST /api/v1/keys.
func (e *env) createKey(t *testing.T, name string, spec apitypes.KeySpec) apitypes.Key {
	t.Helper()
	var k apitypes.Key
	e.ok(t, http.MethodPost, "/api/v1/keys", apitypes.CreateKeyRequest{Provider: "software", Name: name, KeySpec: spec}, http.StatusCreated, &k)
	if k.ID == "" || k.Name != name || k.State != "active" || k.Version != 1 {
		t.Fatalf("created key %+v: want id set, name %q, state active, version 1", k, name)
	}
	return k
}

// publicPEM fetches a key's public key (version 0: current) as PEM.
func (e *env) publicPEM(t *testing.T, ref string, version int) string {
	t.Helper()
	p := keyPath(ref, "/public")
	if version > 0 {
		p += fmt.Sprintf("?version=%d", version)
	}
	var pk apitypes.PublicKey
	e.ok(t, http.MethodGet, p, nil, http.StatusOK, &pk)
	if !strings.HasPrefix(pk.PublicKey, "-----BEGIN PUBLIC KEY-----") {
		t.Fatalf("public key of %s is not a PEM PUBLIC KEY: %q", ref, pk.PublicKey)
	}
	return pk.PublicKey
}

// listKeys pages through GET /api/v1/keys.
func (e *env) listKeys(t *testing.T) []apitypes.Key {
	t.Helper()
	var all []apitypes.Key
	token := ""
	for range 1000 {
		p := "/api/v1/keys?limit=50"
		if token != "" {
			p += "&page_token=" + token
		}
		var l apitypes.KeyList
		e.ok(t, http.MethodGet, p, nil, http.StatusOK, &l)
		all = append(all, l.Keys...)
		if l.NextPageToken == "" {
			return all
		}
		token = l.NextPageToken
	}
	t.Fatal("key listing does not end")
	return nil
}

// keystoreFiles counts the software provider's key files: key material that
// exists on disk (of the keys of the API: the audit signing key's file,
// made at start, is not counted).
func (e *env) keystoreFiles(t *testing.T) int {
	t.Helper()
	return len(keyFilesBut(t, e.srv, filepath.Join(e.dataDir, "keystore", "software")))
}

// keyFilesBut lists the key files of a software keystore directory but
// the audit signing key's.
func keyFilesBut(t *testing.T, srv *server.Server, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.key"))
	if err != nil {
		t.Fatal(err)
	}
	cs, ok := store.Checkpoints(srv.Store())
	if !ok {
		t.Fatal("the store keeps no audit keys")
	}
	aks, err := cs.AuditKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(m, func(p string) bool {
		return slices.ContainsFunc(aks, func(k store.AuditKey) bool { return filepath.Base(p) == k.ObjectID+".key" })
	})
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// parsePEM parses a PEM SubjectPublicKeyInfo with Go's crypto/x509 only.
func parsePEM(t *testing.T, s string) crypto.PublicKey {
	t.Helper()
	block, rest := pem.Decode([]byte(s))
	if block == nil || block.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("not one PEM PUBLIC KEY block: %q", s)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatalf("x509.ParsePKIXPublicKey: %v", err)
	}
	return pub
}

// sigAlg is what an independent verifier needs to know of an algorithm.
type sigAlg struct {
	hash crypto.Hash // 0: EdDSA
	pss  bool
}

var sigAlgs = map[string]sigAlg{
	"RS256": {crypto.SHA256, false}, "RS384": {crypto.SHA384, false}, "RS512": {crypto.SHA512, false},
	"PS256": {crypto.SHA256, true}, "PS384": {crypto.SHA384, true}, "PS512": {crypto.SHA512, true},
	"ES256": {crypto.SHA256, false}, "ES384": {crypto.SHA384, false}, "ES512": {crypto.SHA512, false},
	"EdDSA": {},
}

func digestOf(h crypto.Hash, data []byte) []byte {
	d := h.New()
	d.Write(data)
	return d.Sum(nil)
}

// goVerify checks a signature (ECDSA: DER) over data with Go's crypto and
// the public key alone. PSS must use salt length = hash length.
func goVerify(pub crypto.PublicKey, algorithm string, data, sig []byte) error {
	a, ok := sigAlgs[algorithm]
	if !ok {
		return fmt.Errorf("unknown algorithm %s", algorithm)
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if a.pss {
			return rsa.VerifyPSS(k, a.hash, digestOf(a.hash, data), sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: a.hash})
		}
		return rsa.VerifyPKCS1v15(k, a.hash, digestOf(a.hash, data), sig)
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digestOf(a.hash, data), sig) {
			return fmt.Errorf("ECDSA signature does not verify")
		}
		return nil
	case ed25519.PublicKey:
		if a.hash != 0 || !ed25519.Verify(k, data, sig) {
			return fmt.Errorf("Ed25519 signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("unexpected public key %T", pub)
}

// rawToDER turns a fixed-width r‖s ECDSA signature into ASN.1 DER.
func rawToDER(t *testing.T, raw []byte) []byte {
	t.Helper()
	n := len(raw) / 2
	der, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(raw[:n]), new(big.Int).SetBytes(raw[n:])})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func flip(b []byte, i int) []byte {
	out := bytes.Clone(b)
	out[i] ^= 0x01
	return out
}
