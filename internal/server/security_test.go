package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// Tokens of the principals of securityYAML.
const (
	adminTok    = "kgt_admin-token-for-tests-0001"
	payTok      = "kgt_payments-operator-token-0002"
	auditorTok  = "kgt_auditor-token-for-tests-0003"
	hsmOnlyTok  = "kgt_hsm-only-operator-token-0004"
	limitedTok  = "kgt_rate-limited-token-00000005"
	wrongTok    = "kgt_admin-token-for-tests-0009"
	masterKeyHx = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
)

// securityYAML configures principals: an admin, an operator scoped to
// payments-* keys, an auditor, an operator scoped to a provider this
// gateway does not have, and a rate-limited operator. extra is appended.
func securityYAML(t *testing.T, extra string) string {
	t.Helper()
	mk := filepath.Join(t.TempDir(), "master.key")
	if err := os.WriteFile(mk, []byte(masterKeyHx), 0o600); err != nil {
		t.Fatal(err)
	}
	return "\n" + testbed.Providers(testbed.SoftwareProvider{MasterKeyFile: mk}) + fmt.Sprintf(`auth:
  principals:
    - {name: admin, role: admin, token_sha256: %s}
    - {name: payments-app, role: operator, token_sha256: %s, keys: ["payments-*"]}
    - {name: auditor, role: auditor, token_sha256: %s}
    - {name: hsm-only, role: operator, token_sha256: %s, providers: [hsm]}
    - {name: limited, role: operator, token_sha256: %s, rate_per_second: 1, burst: 3}
%s`, auth.HashToken(adminTok), auth.HashToken(payTok), auth.HashToken(auditorTok), auth.HashToken(hsmOnlyTok),
		auth.HashToken(limitedTok), extra)
}

// startYAML starts a gateway from YAML on a fresh data directory, its log
// written to logw (nil: discarded). Its env sends the admin token.
func startYAML(t *testing.T, yaml string, logw io.Writer) *env {
	t.Helper()
	dataDir := t.TempDir()
	cfg, err := config.Load(testbed.WriteConfig(t, yaml), config.Flags{DataDir: dataDir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(context.Background(), cfg, provider.Registry{"software": software.New}, testbed.TextLogger(logw), "test")
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	e := &env{dataDir: dataDir, srv: srv, ts: httptest.NewServer(srv.Handler()), token: adminTok}
	e.c, _ = client.New(e.ts.URL, client.WithHTTPClient(e.ts.Client()), client.WithToken(adminTok))
	t.Cleanup(func() { e.close(t) })
	return e
}

// as returns a view of e that sends token.
func (e *env) as(token string) *env {
	v := &env{dataDir: e.dataDir, srv: e.srv, ts: e.ts, token: token}
	v.c, _ = client.New(e.ts.URL, client.WithHTTPClient(e.ts.Client()), client.WithToken(token))
	return v
}

// record is what the security tests read of an audit line.
type record struct {
	Seq             uint64  `json:"seq"`
	RequestID       string  `json:"request_id"`
	ClientRequestID string  `json:"client_request_id"`
	Principal       string  `json:"principal"`
	ClientAddr      string  `json:"client_addr"`
	Operation       string  `json:"operation"`
	KeyID           string  `json:"key_id"`
	KeyName         string  `json:"key_name"`
	KeyVersion      int     `json:"key_version"`
	Provider        string  `json:"provider"`
	Outcome         string  `json:"outcome"`
	ErrorCode       string  `json:"error_code"`
	DurationMS      float64 `json:"duration_ms"`
	Detail          string  `json:"detail"`
}

func (e *env) auditRaw(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.dataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// auditByRID returns the audit records of a request the client sent with
// X-Request-Id rid (the records' client_request_id), or of the server's
// request id rid.
func (e *env) auditByRID(t *testing.T, rid string) []record {
	t.Helper()
	var out []record
	for _, l := range bytes.Split(bytes.TrimSpace(e.auditRaw(t)), []byte("\n")) {
		var r record
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatalf("audit line %s: %v", l, err)
		}
		if r.RequestID == rid || r.ClientRequestID == rid {
			out = append(out, r)
		}
	}
	return out
}

// auditByOp returns the audit records of an operation, oldest first.
func (e *env) auditByOp(t *testing.T, op string) []record {
	t.Helper()
	var out []record
	for _, l := range bytes.Split(bytes.TrimSpace(e.auditRaw(t)), []byte("\n")) {
		var r record
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatalf("audit line %s: %v", l, err)
		}
		if r.Operation == op {
			out = append(out, r)
		}
	}
	return out
}

// oneRecord asserts that request rid left exactly one audit record and
// returns it.
func (e *env) oneRecord(t *testing.T, rid string) record {
	t.Helper()
	rs := e.auditByRID(t, rid)
	if len(rs) != 1 {
		t.Fatalf("request %s left %d audit records, want 1", rid, len(rs))
	}
	return rs[0]
}

func TestAuthenticationRequired(t *testing.T) {
	t.Parallel()
	e := startYAML(t, securityYAML(t, "limits:\n  auth_failure_burst: 100\n"), nil)
	e.createKey(t, "payments-1", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})

	// /health is always open; /ready and /metrics are open by default.
	for _, p := range []string{"/health", "/ready", "/metrics"} {
		if r := e.send(t, http.MethodGet, p, nil, "Authorization", ""); r.status != http.StatusOK {
			t.Errorf("GET %s without a credential: %d", p, r.status)
		}
	}
	routes := []struct{ method, path string }{
		{http.MethodGet, "/api/v1/keys"}, {http.MethodPost, "/api/v1/keys"}, {http.MethodGet, keyPath("payments-1", "")},
		{http.MethodPost, keyPath("payments-1", "/sign")}, {http.MethodDelete, keyPath("payments-1", "")},
		{http.MethodGet, "/api/v1/providers"},
		// A known path with another method: its 405 only after
		// authentication (a path no route has is 404 without one:
		// TestOpenAPIAndUnknownPathsWithoutCredential).
		{http.MethodPut, "/api/v1/keys"},
	}
	for i, rt := range routes {
		rid := fmt.Sprintf("noauth-%d", i)
		d := e.fails(t, rt.method, rt.path, nil, http.StatusUnauthorized, apitypes.CodeAuthenticationFailed, "Authorization", "", "X-Request-Id", rid)
		if !strings.Contains(d.Message, "Bearer") {
			t.Errorf("401 message does not say what to send: %q", d.Message)
		}
		if r := e.send(t, rt.method, rt.path, nil, "Authorization", ""); !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("401 without WWW-Authenticate: %v", r.header)
		}
		if r := e.oneRecord(t, rid); r.Operation != "authenticate" || r.Outcome != audit.OutcomeDenied || r.ErrorCode != "AUTHENTICATION_FAILED" || r.ClientAddr == "" {
			t.Errorf("%s %s: audit record %+v", rt.method, rt.path, r)
		}
	}
	bad := []struct {
		name string
		hdr  []string
	}{
		{"wrong bearer token", []string{"Authorization", "Bearer " + wrongTok}},
		{"wrong API key", []string{"Authorization", "", "X-API-Key", wrongTok}},
		{"other scheme", []string{"Authorization", "Basic " + wrongTok}},
		{"two different credentials", []string{"Authorization", "Bearer " + adminTok, "X-API-Key", wrongTok}},
	}
	for i, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			rid := fmt.Sprintf("badauth-%d", i)
			r := e.send(t, http.MethodPost, keyPath("payments-1", "/sign"), map[string]any{"data": b64([]byte("x"))}, append(tc.hdr, "X-Request-Id", rid)...)
			if r.status != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401: %s", r.status, r.body)
			}
			if d := checkErrorBody(t, r); d.Code != apitypes.CodeAuthenticationFailed || strings.Contains(string(r.body), wrongTok) {
				t.Fatalf("body %s", r.body)
			}
			rec := e.oneRecord(t, rid)
			if rec.Operation != "authenticate" || rec.Outcome != audit.OutcomeDenied || rec.ErrorCode != "AUTHENTICATION_FAILED" ||
				!strings.Contains(rec.Detail, "/sign") || rec.Principal != "" {
				t.Fatalf("audit record %+v", rec)
			}
		})
	}
	// The right token as a bearer token or as an API key.
	e.ok(t, http.MethodGet, keyPath("payments-1", ""), nil, http.StatusOK, nil)
	if r := e.send(t, http.MethodGet, keyPath("payments-1", ""), nil, "Authorization", "", "X-API-Key", adminTok); r.status != http.StatusOK {
		t.Fatalf("API key: %d %s", r.status, r.body)
	}
	raw := e.auditRaw(t)
	if bytes.Contains(raw, []byte(wrongTok)) || bytes.Contains(raw, []byte(adminTok)) {
		t.Fatal("a token reached the audit log")
	}
	if n, _, err := audit.Verify(bytes.NewReader(raw), audit.ZeroHash); err != nil {
		t.Fatalf("audit chain after %d lines: %v", n, err)
	}
}

func TestProtectedReadyAndMetrics(t *testing.T) {
	t.Parallel()
	e := startYAML(t, securityYAML(t, "  protect_ready: true\n  protect_metrics: true\n"), nil)
	for _, p := range []string{"/ready", "/metrics"} {
		e.fails(t, http.MethodGet, p, nil, http.StatusUnauthorized, apitypes.CodeAuthenticationFailed, "Authorization", "")
		if r := e.as(auditorTok).send(t, http.MethodGet, p, nil); r.status != http.StatusOK {
			t.Errorf("GET %s with a token: %d", p, r.status)
		}
	}
	if r := e.send(t, http.MethodGet, "/health", nil, "Authorization", ""); r.status != http.StatusOK {
		t.Errorf("/health is not open: %d", r.status)
	}
}

func TestAuthorizationByRoleAndScope(t *testing.T) {
	t.Parallel()
	e := startYAML(t, securityYAML(t, ""), nil)
	// Keys in and out of the payments-* scope, interleaved so that pages
	// of the store mix them.
	var inScope, outScope []string
	for i := range 7 {
		p := fmt.Sprintf("payments-%d", i)
		e.createKey(t, p, apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
		inScope = append(inScope, p)
		for j := range 2 {
			o := fmt.Sprintf("billing-%d-%d", i, j)
			e.createKey(t, o, apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
			outScope = append(outScope, o)
		}
	}
	e.createKey(t, "payments-aes", apitypes.KeySpec{KeyType: "AES", KeySize: 256})
	billingAES := e.createKey(t, "billing-aes", apitypes.KeySpec{KeyType: "AES", KeySize: 256})
	inScope = append(inScope, "payments-aes")
	pay, aud, hsmOnly := e.as(payTok), e.as(auditorTok), e.as(hsmOnlyTok)
	data := map[string]any{"data": b64([]byte("hello"))}
	pt := map[string]any{"plaintext": b64([]byte("hello"))}

	t.Run("operator outside its scope", func(t *testing.T) {
		for i, c := range []struct {
			method, path string
			body         any
			op           string
		}{
			{http.MethodGet, keyPath("billing-0-0", ""), nil, "get"},
			{http.MethodGet, keyPath(billingAES.ID, ""), nil, "get"},
			{http.MethodPost, keyPath("billing-0-0", "/sign"), data, "sign"},
			{http.MethodPost, keyPath("billing-aes", "/encrypt"), pt, "encrypt"},
			{http.MethodGet, keyPath("billing-0-0", "/public"), nil, "public_key"},
			{http.MethodPost, keyPath("billing-0-0", "/verify"), map[string]any{"data": b64([]byte("x")), "signature": b64([]byte("x"))}, "verify"},
		} {
			rid := fmt.Sprintf("scope-%d", i)
			d := pay.fails(t, c.method, c.path, c.body, http.StatusForbidden, apitypes.CodeAuthorizationFailed, "X-Request-Id", rid)
			if !strings.Contains(d.Message, "payments-app") {
				t.Errorf("403 message %q does not name the principal", d.Message)
			}
			r := e.oneRecord(t, rid)
			if r.Operation != c.op || r.Outcome != audit.OutcomeDenied || r.ErrorCode != "AUTHORIZATION_FAILED" || r.Principal != "payments-app" || r.KeyID == "" {
				t.Errorf("%s %s: audit record %+v", c.method, c.path, r)
			}
		}
		// Names outside the scope are 403 whether they exist or not; a
		// missing name inside it is 404.
		pay.fails(t, http.MethodGet, keyPath("billing-nope", ""), nil, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
		pay.fails(t, http.MethodPost, keyPath("billing-nope", "/sign"), data, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
		pay.fails(t, http.MethodGet, keyPath("payments-nope", ""), nil, http.StatusNotFound, apitypes.CodeKeyNotFound)
		// A provider scope: the key's provider is not in it.
		hsmOnly.fails(t, http.MethodPost, keyPath("payments-0", "/sign"), data, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
	})

	t.Run("operator inside its scope", func(t *testing.T) {
		var sr apitypes.SignResponse
		pay.ok(t, http.MethodPost, keyPath("payments-3", "/sign"), data, http.StatusOK, &sr)
		var vr apitypes.VerifyResponse
		pay.ok(t, http.MethodPost, keyPath("payments-3", "/verify"), map[string]any{"data": b64([]byte("hello")), "signature": b64(sr.Signature)}, http.StatusOK, &vr)
		var er apitypes.EncryptResponse
		pay.ok(t, http.MethodPost, keyPath("payments-aes", "/encrypt"), pt, http.StatusOK, &er)
		pay.ok(t, http.MethodPost, keyPath("payments-aes", "/decrypt"), map[string]any{"ciphertext": b64(er.Ciphertext)}, http.StatusOK, nil)
		pay.ok(t, http.MethodGet, keyPath("payments-3", ""), nil, http.StatusOK, nil)
		pay.ok(t, http.MethodGet, keyPath("payments-3", "/public"), nil, http.StatusOK, nil)
		// Operators use keys; they do not manage them, even in scope.
		pay.fails(t, http.MethodPost, "/api/v1/keys", apitypes.CreateKeyRequest{Name: "payments-new", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}},
			http.StatusForbidden, apitypes.CodeAuthorizationFailed)
		for _, p := range []string{"/rotate", "/deactivate", "/activate"} {
			pay.fails(t, http.MethodPost, keyPath("payments-3", p), nil, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
		}
		pay.fails(t, http.MethodDelete, keyPath("payments-3", ""), nil, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
		pay.ok(t, http.MethodGet, "/api/v1/providers", nil, http.StatusOK, nil)
	})

	t.Run("listing shows only the keys in scope, across pages", func(t *testing.T) {
		for _, limit := range []int{1, 2, 3, 5, 100} {
			var names []string
			token, pages := "", 0
			for {
				p := "/api/v1/keys?limit=" + strconv.Itoa(limit)
				if token != "" {
					p += "&page_token=" + token
				}
				var l apitypes.KeyList
				pay.ok(t, http.MethodGet, p, nil, http.StatusOK, &l)
				pages++
				if len(l.Keys) > limit || (l.NextPageToken != "" && len(l.Keys) != limit) {
					t.Fatalf("limit %d: page of %d keys with next token %q", limit, len(l.Keys), l.NextPageToken)
				}
				for _, k := range l.Keys {
					names = append(names, k.Name)
				}
				if token = l.NextPageToken; token == "" {
					break
				}
				if pages > 50 {
					t.Fatal("listing does not end")
				}
			}
			if strings.Join(names, ",") != strings.Join(inScope, ",") {
				t.Fatalf("limit %d: operator lists %v, want %v", limit, names, inScope)
			}
		}
		// With a filter too, and the SDK.
		l, err := pay.c.ListKeys(context.Background(), client.ListOptions{State: "active", Limit: 4})
		if err != nil || len(l.Keys) != 4 || l.Keys[0].Name != "payments-0" || l.Keys[3].Name != "payments-3" {
			t.Fatalf("SDK listing: %v %+v", err, l)
		}
		if l := e.listKeys(t); len(l) != len(inScope)+len(outScope)+1 {
			t.Fatalf("admin lists %d keys, want %d", len(l), len(inScope)+len(outScope)+1)
		}
		if l := aud.listKeys(t); len(l) != len(inScope)+len(outScope)+1 {
			t.Fatalf("auditor lists %d keys, want all %d", len(l), len(inScope)+len(outScope)+1)
		}
		if l := hsmOnly.listKeys(t); len(l) != 0 {
			t.Fatalf("a principal scoped to another provider lists %d keys", len(l))
		}
	})

	t.Run("auditor reads but does no crypto", func(t *testing.T) {
		aud.ok(t, http.MethodGet, keyPath("billing-0-0", ""), nil, http.StatusOK, nil)
		aud.ok(t, http.MethodGet, keyPath("billing-0-0", "/public"), nil, http.StatusOK, nil)
		aud.ok(t, http.MethodGet, "/api/v1/providers/software/health", nil, http.StatusOK, nil)
		d := aud.fails(t, http.MethodPost, keyPath("payments-0", "/sign"), data, http.StatusForbidden, apitypes.CodeAuthorizationFailed, "X-Request-Id", "auditor-sign")
		if !strings.Contains(d.Message, "auditor") {
			t.Errorf("message %q", d.Message)
		}
		if r := e.oneRecord(t, "auditor-sign"); r.Outcome != audit.OutcomeDenied || r.Principal != "auditor" || r.Operation != "sign" || r.KeyName != "payments-0" {
			t.Errorf("audit record %+v", r)
		}
		aud.fails(t, http.MethodPost, keyPath("payments-aes", "/encrypt"), pt, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
		aud.fails(t, http.MethodPost, keyPath("payments-0", "/verify"), map[string]any{"data": b64([]byte("x")), "signature": b64([]byte("x"))}, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
		aud.fails(t, http.MethodPost, "/api/v1/keys", apitypes.CreateKeyRequest{Name: "a1", KeySpec: apitypes.KeySpec{KeyType: "AES", KeySize: 128}}, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
		aud.fails(t, http.MethodDelete, keyPath("billing-0-0", ""), nil, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
		aud.fails(t, http.MethodPatch, keyPath("billing-0-0", ""), map[string]any{"description": "x"}, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
		aud.fails(t, http.MethodPost, keyPath("billing-0-0", "/cancel-deletion"), nil, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
	})

	t.Run("admin does everything", func(t *testing.T) {
		e.createKey(t, "admin-ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
		e.ok(t, http.MethodPost, keyPath("billing-0-0", "/sign"), data, http.StatusOK, nil)
		e.ok(t, http.MethodPost, keyPath("billing-aes", "/encrypt"), pt, http.StatusOK, nil)
		e.ok(t, http.MethodPost, keyPath("admin-ec", "/rotate"), nil, http.StatusOK, nil)
		e.ok(t, http.MethodPost, keyPath("admin-ec", "/deactivate"), nil, http.StatusOK, nil)
		e.ok(t, http.MethodPost, keyPath("admin-ec", "/activate"), nil, http.StatusOK, nil)
		var del apitypes.KeyOperation
		e.ok(t, http.MethodDelete, keyPath("admin-ec", ""), nil, http.StatusOK, &del)
		if del.State != "pending_deletion" || del.DeletionDate == nil {
			t.Errorf("DELETE answered %+v, want the key pending deletion", del.Key)
		}
		e.ok(t, http.MethodPost, keyPath("admin-ec", "/cancel-deletion"), nil, http.StatusOK, nil)
		e.ok(t, http.MethodPatch, keyPath("admin-ec", ""), map[string]any{"description": "admin's"}, http.StatusOK, nil)
	})

	raw := e.auditRaw(t)
	if n, _, err := audit.Verify(bytes.NewReader(raw), audit.ZeroHash); err != nil {
		t.Fatalf("audit chain after %d lines: %v", n, err)
	}
}

// TestAuditChainTamperingFound runs a mixed workload (operations, failures,
// denials, failed authentications, a rotation) and then edits one byte of
// each line, deletes each line and swaps each pair of neighbours: the
// verifier names the line every time.
func TestAuditChainTamperingFound(t *testing.T) {
	t.Parallel()
	e := startYAML(t, securityYAML(t, ""), nil)
	e.createKey(t, "payments-ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	e.createKey(t, "billing-aes", apitypes.KeySpec{KeyType: "AES", KeySize: 128})
	e.ok(t, http.MethodPost, keyPath("payments-ec", "/sign"), map[string]any{"data": b64([]byte("m"))}, http.StatusOK, nil)
	e.as(payTok).ok(t, http.MethodPost, keyPath("payments-ec", "/sign"), map[string]any{"data": b64([]byte("m"))}, http.StatusOK, nil)
	e.as(payTok).fails(t, http.MethodPost, keyPath("billing-aes", "/encrypt"), map[string]any{"plaintext": b64([]byte("m"))}, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
	e.as(auditorTok).fails(t, http.MethodPost, keyPath("payments-ec", "/sign"), map[string]any{"data": b64([]byte("m"))}, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
	e.as(wrongTok).fails(t, http.MethodGet, "/api/v1/keys", nil, http.StatusUnauthorized, apitypes.CodeAuthenticationFailed)
	e.fails(t, http.MethodPost, keyPath("payments-ec", "/sign"), map[string]any{"digest": b64([]byte("short"))}, http.StatusBadRequest, apitypes.CodeInvalidInput)
	e.ok(t, http.MethodPost, keyPath("billing-aes", "/encrypt"), map[string]any{"plaintext": b64([]byte("m"))}, http.StatusOK, nil)
	if _, err := e.srv.RotateAudit(); err != nil {
		t.Fatal(err)
	}
	e.ok(t, http.MethodPost, keyPath("payments-ec", "/rotate"), nil, http.StatusOK, nil)
	e.ok(t, http.MethodDelete, keyPath("billing-aes", ""), nil, http.StatusOK, nil)

	rotated, _ := filepath.Glob(filepath.Join(e.dataDir, "audit.log.2*"))
	if len(rotated) != 1 {
		t.Fatalf("rotated files: %v", rotated)
	}
	live := filepath.Join(e.dataDir, "audit.log")
	// 12 records and the checkpoint of the rotated file.
	if s, err := audit.VerifyFiles([]string{rotated[0], live}, audit.ZeroHash); err != nil || s.Lines != 13 {
		t.Fatalf("mixed workload: %+v, %v", s, err)
	}
	old, _ := os.ReadFile(rotated[0])
	lines := bytes.SplitAfter(bytes.TrimSuffix(old, []byte("\n")), []byte("\n"))
	check := func(t *testing.T, tampered []byte, wantLine int) {
		t.Helper()
		p := filepath.Join(t.TempDir(), "audit.log.old")
		if err := os.WriteFile(p, tampered, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := audit.VerifyFiles([]string{p, live}, audit.ZeroHash)
		var pr *audit.Problem
		if !errors.As(err, &pr) || pr.File != p || pr.Line != wantLine {
			t.Fatalf("got %v, want a problem at line %d of the tampered file", err, wantLine)
		}
	}
	for i := range lines {
		t.Run(fmt.Sprintf("line %d", i+1), func(t *testing.T) {
			off := len(bytes.Join(lines[:i], nil))
			for _, j := range []int{1, len(lines[i]) / 2, len(lines[i]) - 3} {
				m := bytes.Clone(old)
				m[off+j] ^= 0x01
				check(t, m, i+1)
			}
			if i < len(lines)-1 {
				check(t, bytes.Join(append(append([][]byte{}, lines[:i]...), lines[i+1:]...), nil), i+1)
				swapped := append([][]byte{}, lines...)
				swapped[i], swapped[i+1] = swapped[i+1], swapped[i]
				check(t, bytes.Join(swapped, nil), i+1)
			}
		})
	}
	// The last line of a rotated file removed: the next file's first line
	// no longer links.
	p := filepath.Join(t.TempDir(), "audit.log.old")
	os.WriteFile(p, bytes.Join(lines[:len(lines)-1], nil), 0o600)
	var pr *audit.Problem
	if _, err := audit.VerifyFiles([]string{p, live}, audit.ZeroHash); !errors.As(err, &pr) || pr.File != live || pr.Line != 1 {
		t.Fatalf("last line of the rotated file removed: %v", err)
	}
}

// TestAuditUnwritableFailsClosed fills a small tmpfs holding the audit log:
// operations are refused with 503 while the disk is full and served again
// once it has room. Mounting needs root (CI runs as root); elsewhere the
// test skips, and internal/api's TestAuditFailureRefusesThenServes covers
// the same with a failing writer.
func TestAuditUnwritableFailsClosed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	e := startYAML(t, securityYAML(t, "audit:\n  path: "+filepath.Join(mnt, "audit.log")+"\n"), nil)
	e.createKey(t, "ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	sign := map[string]any{"data": b64([]byte("m"))}
	e.ok(t, http.MethodPost, keyPath("ec", "/sign"), sign, http.StatusOK, nil)

	// Fill the disk.
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	// The audit file's last page may still take a few lines.
	okWhileFull := 0
	for {
		r := e.send(t, http.MethodPost, keyPath("ec", "/sign"), sign)
		if r.status == http.StatusServiceUnavailable {
			break
		}
		if r.status != http.StatusOK || okWhileFull > 20 {
			t.Fatalf("sign with the audit disk filling: %d %s", r.status, r.body)
		}
		okWhileFull++
	}
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{http.MethodPost, keyPath("ec", "/sign"), sign},
		{http.MethodPost, "/api/v1/keys", apitypes.CreateKeyRequest{Name: "while-full", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}}},
		{http.MethodPost, keyPath("ec", "/deactivate"), nil},
	} {
		r := e.send(t, c.method, c.path, c.body)
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
			t.Fatalf("%s %s with the audit disk full: %d %s", c.method, c.path, r.status, r.body)
		}
		if d := checkErrorBody(t, r); d.Code != apitypes.CodeServiceUnavailable || !strings.Contains(d.Message, "audit") {
			t.Fatalf("body %s", r.body)
		}
	}
	// Refused means not done: the key is still active, no key was made.
	var k0 apitypes.Key
	e.ok(t, http.MethodGet, keyPath("ec", ""), nil, http.StatusOK, &k0)
	if k0.State != "active" {
		t.Fatalf("a deactivation refused for want of audit took effect: %s", k0.State)
	}
	e.fails(t, http.MethodGet, keyPath("while-full", ""), nil, http.StatusNotFound, apitypes.CodeKeyNotFound)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	e.ok(t, http.MethodPost, keyPath("ec", "/sign"), sign, http.StatusOK, nil)
	k := e.createKey(t, "after-full", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	raw, err := os.ReadFile(filepath.Join(mnt, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n, _, err := audit.Verify(bytes.NewReader(raw), audit.ZeroHash); err != nil || n != 4+okWhileFull {
		t.Fatalf("audit log after the full disk: %d lines, %v\n%s", n, err, raw)
	}
	if !bytes.Contains(raw, []byte(k.ID)) {
		t.Fatal("the create after the disk had room is not audited")
	}
}

func TestRateLimitPerPrincipal(t *testing.T) {
	t.Parallel()
	e := startYAML(t, securityYAML(t, ""), nil)
	e.createKey(t, "payments-ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	lim := e.as(limitedTok)
	sign := map[string]any{"data": b64([]byte("m"))}
	// Burst 3, 1 per second: the fourth request at once is refused.
	for i := range 3 {
		if r := lim.send(t, http.MethodPost, keyPath("payments-ec", "/sign"), sign); r.status != http.StatusOK {
			t.Fatalf("request %d within the burst: %d %s", i, r.status, r.body)
		}
	}
	r := lim.send(t, http.MethodPost, keyPath("payments-ec", "/sign"), sign)
	if r.status != http.StatusTooManyRequests {
		t.Fatalf("past the burst: %d %s", r.status, r.body)
	}
	if d := checkErrorBody(t, r); d.Code != apitypes.CodeRateLimited {
		t.Fatalf("code %s", d.Code)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 || ra > 2 {
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	// Others are unaffected.
	for range 10 {
		e.ok(t, http.MethodPost, keyPath("payments-ec", "/sign"), sign, http.StatusOK, nil)
		e.as(payTok).ok(t, http.MethodGet, keyPath("payments-ec", ""), nil, http.StatusOK, nil)
	}
	// The SDK sees a retryable error with its wait.
	var err error
	for range 5 { // the bucket may have refilled a token meanwhile
		if _, err = lim.c.GetKey(context.Background(), "payments-ec"); err != nil {
			break
		}
	}
	var ce *client.Error
	if !errors.As(err, &ce) || !errors.Is(err, client.ErrRateLimited) || !client.IsRetryable(err) || ce.RetryAfter < time.Second {
		t.Fatalf("SDK: %v", err)
	}

	// Failed authentications from one address are limited too (burst 20):
	// then 429, and no longer one audit line each.
	var got429 bool
	for i := range 40 {
		r := e.send(t, http.MethodGet, "/api/v1/keys", nil, "Authorization", fmt.Sprintf("Bearer kgt_guess-%02d-0000000000000", i))
		if r.status == http.StatusTooManyRequests {
			got429 = true
			break
		}
		if r.status != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d", i, r.status)
		}
	}
	if !got429 {
		t.Fatal("40 failed authentications from one address were never rate limited")
	}
}

func TestRequestLimits(t *testing.T) {
	t.Parallel()
	e := startYAML(t, securityYAML(t, "limits:\n  max_body_bytes: 4096\n  max_json_depth: 4\n"), nil)
	e.createKey(t, "payments-ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	deep := `{"name":"x","key_spec":{"key_type":"EC"},"metadata":{"a":` + strings.Repeat("[", 10) + strings.Repeat("]", 10) + `}}`
	d := e.fails(t, http.MethodPost, "/api/v1/keys", deep, http.StatusBadRequest, apitypes.CodeInvalidInput)
	if !strings.Contains(d.Message, "deeper than 4") {
		t.Fatalf("nesting message %q", d.Message)
	}
	big := `{"data":"` + strings.Repeat("A", 8000) + `"}`
	e.fails(t, http.MethodPost, keyPath("payments-ec", "/sign"), big, http.StatusRequestEntityTooLarge, apitypes.CodePayloadTooLarge)
	// Strings holding brackets do not count as nesting.
	e.ok(t, http.MethodPost, keyPath("payments-ec", "/sign"), `{"data":"W1tbW1tbW1tb","algorithm":"ES256"}`, http.StatusOK, nil)
	e.fails(t, http.MethodPost, keyPath("payments-ec", "/sign"), `{"data":"eA==","algorithm":"[[[[[[[[[["}`, http.StatusBadRequest, apitypes.CodeUnsupportedAlgorithm)

	// The old name of the body cap still works.
	e2 := startYAML(t, securityYAML(t, "server:\n  max_body_bytes: 2048\n"), nil)
	e2.fails(t, http.MethodPost, "/api/v1/keys", `{"name":"`+strings.Repeat("a", 3000)+`"}`, http.StatusRequestEntityTooLarge, apitypes.CodePayloadTooLarge)
}

// TestPlainHTTPBeyondLoopbackRefused: the server will not listen on a
// non-loopback address without TLS unless allow_insecure_http is set.
func TestPlainHTTPBeyondLoopbackRefused(t *testing.T) {
	t.Parallel()
	cfg, err := config.Load(testbed.WriteConfig(t, securityYAML(t, "")), config.Flags{DataDir: t.TempDir(), Listen: "0.0.0.0:0"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = server.New(context.Background(), cfg, provider.Registry{"software": software.New}, slog.New(slog.DiscardHandler), "test")
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Field != "server.tls" {
		t.Fatalf("server.New on 0.0.0.0 without TLS: %v", err)
	}
}

// testPKI is a CA made in the test, a server certificate for 127.0.0.1 and
// client certificates, as PEM files.
type testPKI struct {
	dir                            string
	caFile, certFile, keyFile      string
	signerCert, signerKey          string // CN=ci-signer
	strangerCert, strangerKey      string // CN=stranger, same CA
	otherCACert, otherCAKey        string // CN=ci-signer from another CA
	caPool                         *x509.CertPool
	signerPair, strangerPair, othr tls.Certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	write := func(name string, typ string, der []byte) string {
		path := filepath.Join(p.dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	newCA := func(cn string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c, key, der
	}
	leaf := func(ca *x509.Certificate, caKey *ecdsa.PrivateKey, serial int64, cn string, server bool, name string) (string, string, tls.Certificate) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
		if server {
			tmpl.ExtKeyUsage, tmpl.IPAddresses = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, []net.IP{net.ParseIP("127.0.0.1")}
		} else {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalPKCS8PrivateKey(key)
		cf, kf := write(name+".crt", "CERTIFICATE", der), write(name+".key", "PRIVATE KEY", kder)
		pair, err := tls.LoadX509KeyPair(cf, kf)
		if err != nil {
			t.Fatal(err)
		}
		return cf, kf, pair
	}
	ca, caKey, caDER := newCA("KeyGrid test CA")
	p.caFile = write("ca.crt", "CERTIFICATE", caDER)
	p.caPool = x509.NewCertPool()
	p.caPool.AddCert(ca)
	p.certFile, p.keyFile, _ = leaf(ca, caKey, 2, "keygrid-server", true, "server")
	p.signerCert, p.signerKey, p.signerPair = leaf(ca, caKey, 3, "ci-signer", false, "signer")
	p.strangerCert, p.strangerKey, p.strangerPair = leaf(ca, caKey, 4, "stranger", false, "stranger")
	other, otherKey, _ := newCA("another CA")
	p.otherCACert, p.otherCAKey, p.othr = leaf(other, otherKey, 5, "ci-signer", false, "other")
	return p
}

// serveTLS runs the gateway with its real listener (Serve) and returns its
// https URL.
func serveTLS(t *testing.T, yaml string) (string, *env) {
	t.Helper()
	path := testbed.WriteConfig(t, yaml)
	dataDir := t.TempDir()
	cfg, err := config.Load(path, config.Flags{DataDir: dataDir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(context.Background(), cfg, provider.Registry{"software": software.New}, slog.New(slog.DiscardHandler), "test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, func(a net.Addr) { addr <- a }) }()
	t.Cleanup(func() {
		cancel()
		<-done
		srv.Close()
	})
	select {
	case a := <-addr:
		return "https://" + a.String(), &env{dataDir: dataDir, srv: srv}
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	}
	return "", nil
}

func TestTLS(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	tlsYAML := fmt.Sprintf("server:\n  tls:\n    cert_file: %s\n    key_file: %s\n", pki.certFile, pki.keyFile)

	t.Run("https with a test CA", func(t *testing.T) {
		url, _ := serveTLS(t, securityYAML(t, tlsYAML))
		tc, err := client.LoadTLSConfig(pki.caFile, "", "")
		if err != nil {
			t.Fatal(err)
		}
		c, _ := client.New(url, client.WithTLSConfig(tc), client.WithToken(adminTok))
		if _, err := c.CreateKey(context.Background(), apitypes.CreateKeyRequest{Name: "tls-ec", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}}); err != nil {
			t.Fatalf("create over https: %v", err)
		}
		// Without the CA the server's certificate is not trusted; TLS 1.1
		// is refused.
		plain, _ := client.New(url, client.WithToken(adminTok))
		var ue x509.UnknownAuthorityError
		if _, err := plain.Health(context.Background()); !errors.As(err, &ue) {
			t.Fatalf("a client without the CA: %v", err)
		}
		old := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.caPool, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}}}
		if _, err := old.Get(url + "/health"); err == nil {
			t.Fatal("TLS 1.1 was accepted")
		}
	})

	t.Run("client certificates", func(t *testing.T) {
		yaml := securityYAML(t, fmt.Sprintf("server:\n  tls:\n    cert_file: %s\n    key_file: %s\n    client_ca_file: %s\n", pki.certFile, pki.keyFile, pki.caFile))
		yaml = strings.Replace(yaml, "auth:\n  principals:\n", "auth:\n  principals:\n    - {name: ci-signer, role: operator, client_cert_subject: \"CN=ci-signer\", keys: [\"ci-*\"]}\n", 1)
		url, e := serveTLS(t, yaml)
		get := func(cert *tls.Certificate, token, path string) (*http.Response, error) {
			tc := &tls.Config{RootCAs: pki.caPool}
			if cert != nil {
				tc.Certificates = []tls.Certificate{*cert}
			}
			hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
			req, _ := http.NewRequest(http.MethodGet, url+path, nil)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			req.Header.Set("X-Request-Id", "tls-"+strings.ReplaceAll(strings.Trim(path, "/"), "/", "-"))
			return hc.Do(req)
		}
		// No certificate: refused at the handshake, before any HTTP.
		if _, err := get(nil, adminTok, "/health"); err == nil {
			t.Fatal("a client without a certificate got through the handshake")
		}
		// A certificate from another CA: refused at the handshake.
		if _, err := get(&pki.othr, adminTok, "/health"); err == nil {
			t.Fatal("a certificate from another CA got through the handshake")
		}
		// The admin creates keys with its token (and any valid certificate).
		ac, _ := client.New(url, client.WithTLSConfig(&tls.Config{RootCAs: pki.caPool, Certificates: []tls.Certificate{pki.strangerPair}}), client.WithToken(adminTok))
		for _, n := range []string{"ci-ec", "other-ec"} {
			if _, err := ac.CreateKey(context.Background(), apitypes.CreateKeyRequest{Name: n, KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}}); err != nil {
				t.Fatal(err)
			}
		}
		// CN=ci-signer maps to principal ci-signer, with no token: it sees
		// and uses its keys only.
		tc, err := client.LoadTLSConfig(pki.caFile, pki.signerCert, pki.signerKey)
		if err != nil {
			t.Fatal(err)
		}
		sc, _ := client.New(url, client.WithTLSConfig(tc))
		l, err := sc.ListKeys(context.Background(), client.ListOptions{})
		if err != nil || len(l.Keys) != 1 || l.Keys[0].Name != "ci-ec" {
			t.Fatalf("ci-signer lists %+v, %v", l, err)
		}
		if _, err := sc.Sign(context.Background(), "ci-ec", apitypes.SignRequest{Data: []byte("build 42")}); err != nil {
			t.Fatalf("ci-signer signs: %v", err)
		}
		if _, err := sc.Sign(context.Background(), "other-ec", apitypes.SignRequest{Data: []byte("x")}); !errors.Is(err, client.ErrAuthorizationFailed) {
			t.Fatalf("ci-signer signs outside its scope: %v", err)
		}
		resp, err := get(&pki.signerPair, "", "/api/v1/keys/ci-ec/public")
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("ci-signer public key: %v %v", resp, err)
		}
		resp.Body.Close()
		if r := e.oneRecord(t, "tls-api-v1-keys-ci-ec-public"); r.Principal != "ci-signer" {
			t.Fatalf("audit record of the certificate's request: %+v", r)
		}
		// A certificate of the CA with a subject no principal has, and no
		// token: 401. Its token and another principal's certificate: 401.
		resp, err = get(&pki.strangerPair, "", "/api/v1/keys")
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("unmapped certificate: %v %v", resp, err)
		}
		resp.Body.Close()
		resp, err = get(&pki.signerPair, payTok, "/api/v1/keys")
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("certificate and token of two principals: %v %v", resp, err)
		}
		resp.Body.Close()
	})
}

// eventingProvider is the software provider with the event hook a PKCS#11
// provider implements to report resets.
type eventingProvider struct {
	provider.Provider
	sink func(provider.Event)
}

func (p *eventingProvider) SetEventSink(sink func(provider.Event)) { p.sink = sink }

// TestProviderEventsAudited: the server gives every provider with
// SetEventSink a sink, and each event becomes an audit record.
func TestProviderEventsAudited(t *testing.T) {
	t.Parallel()
	var ep *eventingProvider
	reg := provider.Registry{"software": func(ctx context.Context, p provider.Params) (provider.Provider, error) {
		sp, err := software.New(ctx, p)
		if err != nil {
			return nil, err
		}
		ep = &eventingProvider{Provider: sp}
		return ep, nil
	}}
	path := testbed.WriteConfig(t, securityYAML(t, ""))
	dataDir := t.TempDir()
	cfg, err := config.Load(path, config.Flags{DataDir: dataDir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(context.Background(), cfg, reg, slog.New(slog.DiscardHandler), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if ep == nil || ep.sink == nil {
		t.Fatal("the server did not give the provider an event sink")
	}
	ep.sink(provider.Event{Kind: "reset", Time: time.Now(), Duration: 1500 * time.Millisecond, Detail: "module re-initialized after CKR_DEVICE_REMOVED"})
	ep.sink(provider.Event{Kind: "reset_failed", Err: fmt.Errorf("wrapped: %w", errors.New("boom")), Detail: "token not present"})
	raw, _ := os.ReadFile(filepath.Join(dataDir, "audit.log"))
	var recs []record
	for _, l := range bytes.Split(bytes.TrimSpace(raw), []byte("\n")) {
		var r record
		json.Unmarshal(l, &r)
		recs = append(recs, r)
	}
	if len(recs) != 2 || recs[0].Operation != "provider_reset" || recs[0].Provider != "software" || recs[0].Outcome != audit.OutcomeSuccess ||
		recs[0].DurationMS != 1500 || recs[1].Operation != "provider_reset_failed" || recs[1].Outcome != audit.OutcomeFailure ||
		recs[1].ErrorCode != "INTERNAL_ERROR" || strings.Contains(string(raw), "boom") {
		t.Fatalf("provider events in the audit log:\n%s", raw)
	}
}

// The attack: an unauthenticated client sets X-Request-Id to another
// request's id (or to junk) to blur or forge the audit trail. Every record
// keeps the server's own id; a client id is kept beside it only when it is
// short and plain.
func TestForgedRequestIDs(t *testing.T) {
	t.Parallel()
	e := startYAML(t, securityYAML(t, "limits:\n  auth_failure_burst: 100\n"), nil)
	e.createKey(t, "payments-1", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	data := map[string]any{"data": b64([]byte("x"))}

	// A genuine request, then two forgeries reusing its id.
	first := e.send(t, http.MethodPost, keyPath("payments-1", "/sign"), data, "X-Request-Id", "victim-1")
	if first.status != http.StatusOK {
		t.Fatalf("sign: %d %s", first.status, first.body)
	}
	victimID := first.header.Get("X-Request-Id")
	if victimID == "victim-1" || victimID == "" {
		t.Fatalf("server answered with X-Request-Id %q", victimID)
	}
	e.send(t, http.MethodPost, keyPath("payments-1", "/sign"), data, "X-Request-Id", victimID, "Authorization", "")
	e.send(t, http.MethodPost, keyPath("payments-1", "/sign"), data, "X-Request-Id", "victim-1", "Authorization", "Bearer wrong-token-0123456789")
	var withID []record
	for _, r := range e.auditByRID(t, victimID) {
		if r.RequestID == victimID {
			withID = append(withID, r)
		}
	}
	if len(withID) != 1 || withID[0].Operation != "sign" || withID[0].Outcome != audit.OutcomeSuccess {
		t.Fatalf("records with the victim's server id: %+v (want only the victim's sign)", withID)
	}
	seen := map[string]bool{}
	for _, r := range e.auditByRID(t, "victim-1") {
		if r.ClientRequestID != "victim-1" || seen[r.RequestID] {
			t.Fatalf("record %+v: want the client id beside a distinct server id", r)
		}
		seen[r.RequestID] = true
	}
	if len(seen) != 2 {
		t.Fatalf("%d records carry client id victim-1, want 2", len(seen))
	}
	// Junk ids never reach the log.
	for _, junk := range []string{strings.Repeat("a", 65), "a b", "id\"injected", "ü-id"} {
		r := e.send(t, http.MethodGet, keyPath("missing", ""), nil, "X-Request-Id", junk)
		if r.header.Get("X-Client-Request-Id") != "" || bytes.Contains(e.auditRaw(t), []byte(junk)) {
			t.Fatalf("junk request id %q was echoed or recorded", junk)
		}
	}
	// Two X-Request-Id headers: neither is kept.
	req := e.newRequest(t, http.MethodGet, keyPath("missing", ""), nil)
	req.Header.Add("X-Request-Id", "dup-a")
	req.Header.Add("X-Request-Id", "dup-b")
	if r := e.do(t, req); r.header.Get("X-Client-Request-Id") != "" {
		t.Fatalf("a doubled X-Request-Id was kept: %v", r.header)
	}
}

// The attack: make the server answer with a copy of the request. Every
// piece of a request a message echoes is clipped (kgerr.Clip), so no
// error is much larger than its fixed text.
func TestEchoedInputIsClipped(t *testing.T) {
	t.Parallel()
	e := startYAML(t, securityYAML(t, "server:\n  max_body_bytes: 4194304\n"), nil)
	e.createKey(t, "payments-1", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	huge := strings.Repeat("A", 1<<20)
	long := strings.Repeat("k", 4000) // a path fits in a request line
	for _, tc := range []struct {
		name         string
		method, path string
		body         any
		status       int
		code         apitypes.ErrorCode
	}{
		{"1 MB unknown field", http.MethodPost, keyPath("payments-1", "/sign"), `{"data":"eA==","` + huge + `":1}`, http.StatusBadRequest, apitypes.CodeInvalidInput},
		{"1 MB signature_format", http.MethodPost, keyPath("payments-1", "/sign"), map[string]any{"data": b64([]byte("x")), "signature_format": huge}, http.StatusBadRequest, apitypes.CodeInvalidInput},
		{"1 MB algorithm", http.MethodPost, keyPath("payments-1", "/sign"), map[string]any{"data": b64([]byte("x")), "algorithm": huge}, http.StatusBadRequest, apitypes.CodeUnsupportedAlgorithm},
		{"1 MB provider", http.MethodPost, "/api/v1/keys", map[string]any{"name": "k1", "provider": huge, "key_spec": map[string]any{"key_type": "EC", "curve": "P-256"}}, http.StatusBadRequest, apitypes.CodeInvalidInput},
		{"1 MB metadata key", http.MethodPost, "/api/v1/keys", map[string]any{"name": "k2", "key_spec": map[string]any{"key_type": "EC", "curve": "P-256"}, "metadata": map[string]string{"m": huge}}, http.StatusBadRequest, apitypes.CodeInvalidInput},
		{"long key ref", http.MethodGet, keyPath(long, ""), nil, http.StatusNotFound, apitypes.CodeKeyNotFound},
		{"long provider name", http.MethodGet, "/api/v1/providers/" + long + "/health", nil, http.StatusNotFound, apitypes.CodeProviderNotFound},
		{"long path", http.MethodGet, "/api/v1/" + long, nil, http.StatusNotFound, apitypes.CodeNotFound},
		{"long path, wrong method", http.MethodPut, "/api/v1/keys", nil, http.StatusMethodNotAllowed, ""},
		{"1 MB list state", http.MethodGet, "/api/v1/keys?state=" + long, nil, http.StatusBadRequest, apitypes.CodeInvalidInput},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.send(t, tc.method, tc.path, tc.body)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %.300s", r.status, tc.status, r.body)
			}
			d := checkErrorBody(t, r)
			if tc.code != "" && d.Code != tc.code {
				t.Fatalf("code %s, want %s: %s", d.Code, tc.code, d.Message)
			}
			if len(r.body) > 1024 {
				t.Fatalf("a %d-byte error echoes the request: %.300s…", len(r.body), r.body)
			}
		})
	}
}

// The attack: a body or header a proxy or WAF in front reads one way and
// the gateway another (a duplicate key, a field name in another case, an
// odd base64 spelling, a credential header twice). Each is refused and
// changes nothing.
func TestLenientParsingRefused(t *testing.T) {
	t.Parallel()
	e := startYAML(t, securityYAML(t, "limits:\n  auth_failure_burst: 100\n"), nil)
	e.createKey(t, "payments-1", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	e.createKey(t, "payments-aes", apitypes.KeySpec{KeyType: "AES", KeySize: 256})
	spec := `"key_spec":{"key_type":"EC","curve":"P-256"}`
	for _, tc := range []struct{ name, path, body string }{
		{"duplicate name on create", "/api/v1/keys", `{"name":"dup-a","name":"dup-b",` + spec + `}`},
		{"duplicate nested key", "/api/v1/keys", `{"name":"dup-c","key_spec":{"key_type":"EC","key_type":"RSA","curve":"P-256"}}`},
		{"duplicate metadata key", "/api/v1/keys", `{"name":"dup-d",` + spec + `,"metadata":{"team":"a","team":"b"}}`},
		{"field name in upper case", "/api/v1/keys", `{"NAME":"case-a",` + spec + `}`},
		{"nested field name in mixed case", "/api/v1/keys", `{"name":"case-b","key_spec":{"Key_Type":"EC","curve":"P-256"}}`},
		{"duplicate data", keyPath("payments-1", "/sign"), `{"data":"eA==","data":"eQ=="}`},
		{"base64 with a newline", keyPath("payments-1", "/sign"), `{"data":"eA\n=="}`},
		{"base64 with CRLF", keyPath("payments-aes", "/encrypt"), `{"plaintext":"aGVs\r\nbG8="}`},
		{"base64 without padding", keyPath("payments-1", "/sign"), `{"data":"eA"}`},
		{"base64 with non-zero trailing bits", keyPath("payments-1", "/sign"), `{"data":"eB=="}`},
		{"URL-safe base64", keyPath("payments-aes", "/encrypt"), `{"plaintext":"-_8="}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := e.fails(t, http.MethodPost, tc.path, tc.body, http.StatusBadRequest, apitypes.CodeInvalidInput)
			if d.Message == "" {
				t.Fatal("no message")
			}
			if n := len(e.listKeys(t)); n != 2 {
				t.Fatalf("%d keys after a refused request, want 2", n)
			}
		})
	}
	// The canonical spellings work.
	e.ok(t, http.MethodPost, keyPath("payments-1", "/sign"), `{"data":"eA=="}`, http.StatusOK, nil)

	// A credential header twice is refused even when both copies are valid.
	for _, h := range []string{"Authorization", "X-API-Key"} {
		t.Run("two "+h+" headers", func(t *testing.T) {
			req := e.newRequest(t, http.MethodGet, "/api/v1/keys", nil)
			req.Header.Del("Authorization")
			val := e.token
			if h == "Authorization" {
				val = "Bearer " + e.token
			}
			req.Header.Add(h, val)
			req.Header.Add(h, val)
			r := e.do(t, req)
			if r.status != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401: %s", r.status, r.body)
			}
			if d := checkErrorBody(t, r); d.Code != apitypes.CodeAuthenticationFailed || !strings.Contains(d.Message, "once") {
				t.Fatalf("error %+v", d)
			}
		})
	}
}

// The attack: requests refused before the key logic (malformed and
// oversized bodies, 429s), on keys in and out of the caller's scope, leave
// no trace but the access log. Each kind is audited with the principal; a
// flood is one record per principal, route and reason per second, with a
// count.
func TestRefusalsBeforeTheServiceAreAudited(t *testing.T) {
	t.Parallel()
	e := startYAML(t, securityYAML(t, "server:\n  max_body_bytes: 2048\n"), nil)
	e.createKey(t, "payments-1", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	e.createKey(t, "billing-1", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	pay, limited := e.as(payTok), e.as(limitedTok)
	big := `{"data":"` + strings.Repeat("A", 4096) + `"}`
	for _, tc := range []struct {
		name      string
		as        *env
		path      string
		body      string
		status    int
		code      string
		principal string
	}{
		{"malformed body", pay, keyPath("payments-1", "/sign"), `{"data":`, http.StatusBadRequest, "INVALID_INPUT", "payments-app"},
		{"malformed body on a key out of scope", pay, keyPath("billing-1", "/encrypt"), `{"data":`, http.StatusBadRequest, "INVALID_INPUT", "payments-app"},
		{"unknown field on a forbidden action", e.as(auditorTok), keyPath("payments-1", "/sign"), `{"nope":1}`, http.StatusBadRequest, "INVALID_INPUT", "auditor"},
		{"oversized body", pay, keyPath("payments-1", "/sign"), big, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE", "payments-app"},
		{"oversized body on create", e, "/api/v1/keys", big, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE", "admin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rid := "refused-" + strings.ReplaceAll(tc.name, " ", "-")
			r := tc.as.send(t, http.MethodPost, tc.path, tc.body, "X-Request-Id", rid)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			rec := e.oneRecord(t, rid)
			if rec.Operation != "refused" || rec.Principal != tc.principal || rec.ErrorCode != tc.code || rec.ClientAddr == "" ||
				!strings.Contains(rec.Detail, "POST /api/v1/keys") {
				t.Fatalf("audit record %+v", rec)
			}
		})
	}
	// 429: limited has a burst of 3 at 1/s.
	var limitedRIDs []string
	for i := range 6 {
		rid := fmt.Sprintf("limited-%d", i)
		limited.send(t, http.MethodGet, keyPath("payments-1", ""), nil, "X-Request-Id", rid)
		limitedRIDs = append(limitedRIDs, rid)
	}
	var rateRecs []record
	for _, rid := range limitedRIDs {
		for _, r := range e.auditByRID(t, rid) {
			if r.Operation == "refused" && r.ErrorCode == "RATE_LIMITED" && r.Principal == "limited" {
				rateRecs = append(rateRecs, r)
			}
		}
	}
	if len(rateRecs) != 1 {
		t.Fatalf("%d rate-limit records for one burst, want 1: %+v", len(rateRecs), rateRecs)
	}

	// A flood: 200 malformed bodies from one principal on one route.
	for range 200 {
		pay.send(t, http.MethodPost, keyPath("payments-1", "/verify"), `{`, "X-Request-Id", "flood")
	}
	flood := e.auditByRID(t, "flood")
	if len(flood) < 1 || len(flood) > 20 {
		t.Fatalf("a flood of 200 left %d records", len(flood))
	}
	// After a second, the next refusal's record counts those not
	// recorded: the counts add up to every refusal.
	time.Sleep(1100 * time.Millisecond)
	pay.send(t, http.MethodPost, keyPath("payments-1", "/verify"), `{`, "X-Request-Id", "flood-after")
	total := 0
	for _, r := range append(flood, e.oneRecord(t, "flood-after")) {
		n := 1
		if _, c, ok := strings.Cut(r.Detail, "; "); ok {
			if _, err := fmt.Sscanf(c, "%d refusals since the last record", &n); err != nil {
				t.Fatalf("detail %q", r.Detail)
			}
		}
		if r.Principal != "payments-app" || r.ErrorCode != "INVALID_INPUT" {
			t.Fatalf("flood record %+v", r)
		}
		total += n
	}
	if total != 201 {
		t.Fatalf("the flood's records count %d refusals, want 201", total)
	}
}
