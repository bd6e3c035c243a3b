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
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
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

func newStack(t testing.TB, rec audit.Recorder, wrap ...func(store.Store) store.Store) *stack {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, "keygrid.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for _, w := range wrap {
		st = w(st)
	}
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
