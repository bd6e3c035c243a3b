package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/metrics"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

const (
	testAdminToken   = "kgt_api-test-admin-token-0001"
	testAuditorToken = "kgt_api-test-auditor-token-02"
)

// stack is the API over a real service, software provider and SQLite store
// in a temporary directory.
type stack struct {
	api *API
	svc *service.Service
}

func newStack(t testing.TB, rec audit.Recorder) *stack {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, "keygrid.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.DiscardHandler)
	p, err := software.New(ctx, provider.Params{Name: "software", Type: "software", DataDir: dir, Embedded: true,
		Decode: func(any) error { return nil }, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New("test")
	svc, err := service.New(service.Options{Store: st, Providers: []provider.Provider{p}, Audit: rec, Metrics: m, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	a := New(Options{Service: svc, Metrics: m, Logger: log, Version: "test",
		Auth: auth.WithPrincipals(auth.NewPrincipal("admin", auth.RoleAdmin, testAdminToken, nil, nil),
			auth.NewPrincipal("auditor", auth.RoleAuditor, testAuditorToken, nil, nil))})
	return &stack{api: a, svc: svc}
}

// do serves one request with a token and returns the status and body.
func (s *stack) do(method, path, token string, body []byte) (int, http.Header, []byte) {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	s.api.ServeHTTP(w, req)
	return w.Code, w.Header(), w.Body.Bytes()
}

func (s *stack) mustDo(t testing.TB, method, path string, body string, want int) []byte {
	t.Helper()
	code, _, b := s.do(method, path, testAdminToken, []byte(body))
	if code != want {
		t.Fatalf("%s %s: %d, want %d: %s", method, path, code, want, b)
	}
	return b
}

// flakyRecorder is a real audit log whose writes fail while failing is set,
// as a full or broken disk makes them.
type flakyRecorder struct {
	log     *audit.Log
	failing atomic.Bool
}

func (f *flakyRecorder) Record(ctx context.Context, e audit.Event) error {
	if f.failing.Load() {
		return errors.Join(audit.ErrUnavailable, syscall.ENOSPC)
	}
	return f.log.Record(ctx, e)
}

func (f *flakyRecorder) Ready() error {
	if f.failing.Load() {
		return errors.Join(audit.ErrUnavailable, syscall.ENOSPC)
	}
	return f.log.Ready()
}

// TestAuditFailureRefusesThenServes: while the audit log cannot be
// written, every key operation is refused with 503 (a state change is not
// made), and the gateway serves again as soon as it can write.
func TestAuditFailureRefusesThenServes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	rec := &flakyRecorder{log: l}
	s := newStack(t, rec)
	s.mustDo(t, http.MethodPost, "/api/v1/keys", `{"name":"ec","key_spec":{"key_type":"EC","curve":"P-256"}}`, http.StatusCreated)
	s.mustDo(t, http.MethodPost, "/api/v1/keys", `{"name":"aes","key_spec":{"key_type":"AES","key_size":256}}`, http.StatusCreated)
	sign := `{"data":"aGVsbG8="}`
	s.mustDo(t, http.MethodPost, "/api/v1/keys/ec/sign", sign, http.StatusOK)

	rec.failing.Store(true)
	for _, c := range []struct{ method, path, body string }{
		{http.MethodPost, "/api/v1/keys/ec/sign", sign},
		{http.MethodPost, "/api/v1/keys/aes/encrypt", `{"plaintext":"aGVsbG8="}`},
		{http.MethodPost, "/api/v1/keys/ec/deactivate", ""},
		{http.MethodPost, "/api/v1/keys/ec/rotate", ""},
		{http.MethodDelete, "/api/v1/keys/aes", ""},
		{http.MethodPost, "/api/v1/keys", `{"name":"new","key_spec":{"key_type":"EC","curve":"P-256"}}`},
	} {
		code, hdr, b := s.do(c.method, c.path, testAdminToken, []byte(c.body))
		var eb apitypes.ErrorBody
		if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" || json.Unmarshal(b, &eb) != nil ||
			eb.Error.Code != apitypes.CodeServiceUnavailable || bytes.Contains(b, []byte("signature")) {
			t.Fatalf("%s %s with the audit log failing: %d %s", c.method, c.path, code, b)
		}
	}
	// Nothing was changed.
	var k apitypes.Key
	if err := json.Unmarshal(s.mustDo(t, http.MethodGet, "/api/v1/keys/ec", "", http.StatusOK), &k); err != nil || k.State != "active" || k.Version != 1 {
		t.Fatalf("key after refused changes: %+v %v", k, err)
	}
	s.mustDo(t, http.MethodGet, "/api/v1/keys/aes", "", http.StatusOK)
	s.mustDo(t, http.MethodGet, "/api/v1/keys/new", "", http.StatusNotFound)

	rec.failing.Store(false)
	s.mustDo(t, http.MethodPost, "/api/v1/keys/ec/sign", sign, http.StatusOK)
	s.mustDo(t, http.MethodPost, "/api/v1/keys/ec/deactivate", "", http.StatusOK)
	raw, _ := os.ReadFile(path)
	if n, _, err := audit.Verify(bytes.NewReader(raw), audit.ZeroHash); err != nil || n != 5 {
		t.Fatalf("audit log: %d lines, %v\n%s", n, err, raw)
	}
}

func TestDecodeErrors(t *testing.T) {
	type req struct {
		A string            `json:"a"`
		M map[string]string `json:"m"`
		B []byte            `json:"b"`
	}
	for _, tc := range []struct {
		name, body, msg string
	}{
		{"empty", "", "empty"},
		{"spaces", "  \n", "empty"},
		{"not an object", `[1]`, "JSON object"},
		{"trailing data", `{"a":"x"} {}`, "after the JSON object"},
		{"trailing garbage", `{"a":"x"}x`, "after the JSON object"},
		{"unknown field", `{"z":1}`, "unknown field"},
		{"wrong type", `{"a":1}`, `"a" must be a string`},
		{"bad base64", `{"b":"!!"}`, "base64"},
		{"too deep", `{"m":{"x":` + strings.Repeat("[", 20) + strings.Repeat("]", 20) + `}}`, "deeper than 16"},
		{"syntax", `{"a":`, "invalid request body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v req
			err := decodeJSON([]byte(tc.body), 16, &v)
			if !errors.Is(err, kgerr.ErrInvalidInput) || !strings.Contains(kgerr.Classify(err).Message, tc.msg) {
				t.Fatalf("got %v, want INVALID_INPUT mentioning %q", err, tc.msg)
			}
		})
	}
	for body, want := range map[string]int{`{"a":"[[[["}`: 1, `{"a":"\"{{"}`: 1, `[[[]]]`: 3, `{}`: 1, `"x"`: 0} {
		if got := jsonDepth([]byte(body)); got != want {
			t.Errorf("jsonDepth(%s) = %d, want %d", body, got, want)
		}
	}
}

// TestLimiter checks the token bucket: burst, refill, wait, first refusal.
func TestLimiter(t *testing.T) {
	l := newLimiter(2)
	now := l.now()
	l.now = func() time.Time { return now }
	for i := range 3 {
		if ok, _, _ := l.take("a", 2, 3); !ok {
			t.Fatalf("take %d within the burst refused", i)
		}
	}
	ok, wait, first := l.take("a", 2, 3)
	if ok || !first || wait != 500*time.Millisecond {
		t.Fatalf("past the burst: %v %v %v", ok, wait, first)
	}
	if _, _, first := l.take("a", 2, 3); first {
		t.Fatal("second refusal reported as first")
	}
	now = now.Add(500 * time.Millisecond)
	if ok, _, _ := l.take("a", 2, 3); !ok {
		t.Fatal("no token after the wait")
	}
	if ok, _, _ := l.take("b", 2, 3); !ok {
		t.Fatal("another key is limited")
	}
	// Beyond max entries, idle (refilled) buckets are dropped.
	now = now.Add(time.Hour)
	l.take("c", 2, 3)
	if len(l.buckets) > 2 {
		t.Fatalf("%d buckets kept", len(l.buckets))
	}
	if ok, _, _ := l.take("x", -1, 0); !ok {
		t.Fatal("a negative rate limits")
	}
}
