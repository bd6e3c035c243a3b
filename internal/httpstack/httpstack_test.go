package httpstack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/metrics"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// testFrontEnd is a small front end of its own protocol: errors are
// {"kind":…,"message":…} with a status of its own table, credentials an
// X-Test-Key header naming a principal.
type testFrontEnd struct {
	principals map[string]*auth.Principal
	mu         sync.Mutex
	audited    []string
}

var testStatus = map[kgerr.Kind]int{
	kgerr.KindInvalidInput:    http.StatusBadRequest,
	kgerr.KindTooLarge:        http.StatusRequestEntityTooLarge,
	kgerr.KindUnauthenticated: http.StatusUnauthorized,
	kgerr.KindRateLimited:     http.StatusTooManyRequests,
	kgerr.KindUnavailable:     http.StatusServiceUnavailable,
	kgerr.KindInternal:        http.StatusInternalServerError,
}

type testError struct {
	Kind    kgerr.Kind `json:"kind"`
	Message string     `json:"message"`
}

func (f *testFrontEnd) fail(w http.ResponseWriter, _ *http.Request, err error) {
	e := kgerr.Classify(err)
	status, ok := testStatus[e.Kind]
	if !ok {
		status = http.StatusInternalServerError
	}
	if e.Kind == kgerr.KindRateLimited {
		SetRetryAfter(w, e.RetryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(testError{e.Kind, e.Message})
}

var errNoSuchKey = errors.New("no principal has this key")

func (f *testFrontEnd) authenticate(r *http.Request) (*auth.Principal, error) {
	k := r.Header.Get("X-Test-Key")
	if k == "down" {
		return nil, kgerr.New(kgerr.KindUnavailable, "the key directory is down")
	}
	if p := f.principals[k]; p != nil {
		return p, nil
	}
	return nil, kgerr.Wrap(kgerr.KindUnauthenticated, errNoSuchKey, "send a known X-Test-Key")
}

func (f *testFrontEnd) authFailed(_ context.Context, detail string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.audited = append(f.audited, detail)
}

func (f *testFrontEnd) auditLines() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.audited...)
}

func (f *testFrontEnd) frontEnd() FrontEnd {
	return FrontEnd{
		Name: "test",
		Fail: f.fail,
		Route: func(r *http.Request) string {
			if strings.HasPrefix(r.URL.Path, "/op/") {
				return "POST /op/{x}"
			}
			return ""
		},
		Protected:    func(r *http.Request, _ string) bool { return r.URL.Path != "/open" },
		Authenticate: f.authenticate,
		AuthFailed:   f.authFailed,
	}
}

func newTestFrontEnd() *testFrontEnd {
	a := auth.NewPrincipal("alice", auth.RoleAdmin, "", nil, nil)
	b := auth.NewPrincipal("bob", auth.RoleAdmin, "", nil, nil)
	b.RatePerSecond, b.Burst = 0.5, 1
	return &testFrontEnd{principals: map[string]*auth.Principal{"alice-key": a, "bob-key": b}}
}

type answer struct {
	status int
	header http.Header
	body   []byte
	err    testError
}

// serve sends one request through h from addr (host:port) with headers
// given as name, value pairs.
func serve(h http.Handler, method, path, addr string, body []byte, hdr ...string) answer {
	r := httptest.NewRequest(method, path, bytes.NewReader(body))
	r.RemoteAddr = addr
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	a := answer{status: w.Code, header: w.Header(), body: w.Body.Bytes()}
	if a.status >= 400 {
		json.Unmarshal(a.body, &a.err)
	}
	return a
}

const addr1 = "192.0.2.1:40000"

// seen is what a handler saw of its request.
type seen struct {
	requestID, principal, clientAddr string
	clientRequestID                  string
	deadline                         time.Time
	hasDeadline                      bool
}

func recordingHandler(out *seen) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := service.CallerFrom(r.Context())
		out.requestID, out.principal, out.clientAddr = RequestID(r.Context()), c.Principal, c.ClientAddr
		out.clientRequestID = c.ClientRequestID
		if c.Auth != nil && c.Auth.Name != c.Principal {
			panic("caller's Auth and Principal disagree")
		}
		out.deadline, out.hasDeadline = r.Context().Deadline()
		io.WriteString(w, "ok")
	})
}

func TestRequestID(t *testing.T) {
	fe := newTestFrontEnd()
	var got seen
	h := New(Options{Logger: slog.New(slog.DiscardHandler)}).Wrap(fe.frontEnd(), recordingHandler(&got))
	made := regexp.MustCompile(`^[0-9a-f]{24}$`)
	for _, tc := range []struct {
		name, sent string
		kept       bool
	}{
		{"plain", "req-1", true},
		{"every allowed character", "Az09._:-", true},
		{"64 characters", strings.Repeat("a", 64), true},
		{"none", "", false},
		{"65 characters", strings.Repeat("a", 65), false},
		{"space", "req 1", false},
		{"slash", "a/b", false},
		{"newline", "a\nb", false},
		{"non-ASCII", "réq", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got = seen{}
			a := serve(h, http.MethodGet, "/open", addr1, nil, "X-Request-Id", tc.sent)
			id := a.header.Get("X-Request-Id")
			// The request id is always the server's; the client's is
			// kept beside it when valid.
			if a.status != http.StatusOK || id != got.requestID || !made.MatchString(id) {
				t.Fatalf("status %d, X-Request-Id %q, handler saw %q", a.status, id, got.requestID)
			}
			want := ""
			if tc.kept {
				want = tc.sent
			}
			if got.clientRequestID != want || a.header.Get("X-Client-Request-Id") != want {
				t.Fatalf("sent %q: client id %q, echoed %q, want %q", tc.sent, got.clientRequestID, a.header.Get("X-Client-Request-Id"), want)
			}
			if got.clientAddr != addr1 || got.principal != "" {
				t.Fatalf("caller %+v", got)
			}
		})
	}
	// Two requests get different ones.
	a, b := serve(h, http.MethodGet, "/open", addr1, nil), serve(h, http.MethodGet, "/open", addr1, nil, "X-Request-Id", "x")
	if a.header.Get("X-Request-Id") == b.header.Get("X-Request-Id") {
		t.Fatal("two made request ids are equal")
	}
	// An error answer carries both.
	if a := serve(h, http.MethodGet, "/closed", addr1, nil, "X-Request-Id", "err-1"); a.status != http.StatusUnauthorized || !made.MatchString(a.header.Get("X-Request-Id")) || a.header.Get("X-Client-Request-Id") != "err-1" {
		t.Fatalf("401: %d, %v", a.status, a.header)
	}
}

func TestDeadline(t *testing.T) {
	fe := newTestFrontEnd()
	var got seen
	before := time.Now()
	h := New(Options{Timeout: 3 * time.Second, Logger: slog.New(slog.DiscardHandler)}).Wrap(fe.frontEnd(), recordingHandler(&got))
	if a := serve(h, http.MethodGet, "/open", addr1, nil); a.status != http.StatusOK {
		t.Fatalf("status %d", a.status)
	}
	if !got.hasDeadline || got.deadline.Before(before.Add(3*time.Second)) || got.deadline.After(time.Now().Add(3*time.Second)) {
		t.Fatalf("deadline %v (set %v), want 3s after the request", got.deadline, got.hasDeadline)
	}
	h = New(Options{Logger: slog.New(slog.DiscardHandler)}).Wrap(fe.frontEnd(), recordingHandler(&got))
	serve(h, http.MethodGet, "/open", addr1, nil)
	if got.hasDeadline {
		t.Fatal("a deadline without a timeout")
	}
}

type opBody struct {
	Name string          `json:"name"`
	Tags map[string]any  `json:"tags"`
	Raw  json.RawMessage `json:"raw"`
}

// TestBodyAndJSON: the body cap answers 413 whether the handler decodes
// or reads the body itself, and the JSON decode refuses depth, unknown
// fields and trailing data with a message that says so.
func TestBodyAndJSON(t *testing.T) {
	fe := newTestFrontEnd()
	s := New(Options{MaxBody: 64, MaxJSONDepth: 3, Logger: slog.New(slog.DiscardHandler)})
	var decoded opBody
	decode := s.Wrap(fe.frontEnd(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		decoded = opBody{}
		if err := s.DecodeJSON(r, &decoded); err != nil {
			fe.fail(w, r, err)
			return
		}
		io.WriteString(w, decoded.Name)
	}))
	raw := s.Wrap(fe.frontEnd(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			fe.fail(w, r, kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("over %d", mb.Limit)))
			return
		}
		w.Write(b)
	}))
	key := []string{"X-Test-Key", "alice-key"}
	for _, tc := range []struct {
		name   string
		h      http.Handler
		body   string
		status int
		msg    string
	}{
		{"ok", decode, `{"name":"n","tags":{"a":[1]}}`, http.StatusOK, ""},
		{"at the cap", decode, `{"name":"` + strings.Repeat("x", 64-len(`{"name":""}`)) + `"}`, http.StatusOK, ""},
		{"over the cap", decode, `{"name":"` + strings.Repeat("x", 64) + `"}`, http.StatusRequestEntityTooLarge, "larger than 64 bytes"},
		{"over the cap, read raw", raw, strings.Repeat("x", 65), http.StatusRequestEntityTooLarge, "over 64"},
		{"at the cap, read raw", raw, strings.Repeat("x", 64), http.StatusOK, ""},
		{"depth at the cap", decode, `{"tags":{"a":[1]}}`, http.StatusOK, ""},
		{"too deep", decode, `{"tags":{"a":[[1]]}}`, http.StatusBadRequest, "deeper than 3 levels"},
		{"unknown field", decode, `{"name":"n","extra":1}`, http.StatusBadRequest, `unknown field "extra"`},
		{"trailing data", decode, `{"name":"n"}{}`, http.StatusBadRequest, "data after the JSON object"},
		{"empty", decode, ``, http.StatusBadRequest, "empty"},
		{"wrong type", decode, `{"name":1}`, http.StatusBadRequest, `"name" must be a string`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := serve(tc.h, http.MethodPost, "/op/x", addr1, []byte(tc.body), key...)
			if a.status != tc.status || !strings.Contains(a.err.Message, tc.msg) {
				t.Fatalf("status %d %s, want %d mentioning %q", a.status, a.body, tc.status, tc.msg)
			}
		})
	}
	// The body cap is in force before authentication, so a front end that
	// reads the body to check a signature over it reads at most the cap.
	var read int
	sig := fe.frontEnd()
	sig.Authenticate = func(r *http.Request) (*auth.Principal, error) {
		b, err := io.ReadAll(r.Body)
		read = len(b)
		if err != nil {
			return nil, kgerr.New(kgerr.KindTooLarge, "too large to check")
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		return fe.principals["alice-key"], nil
	}
	h := s.Wrap(sig, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v opBody
		if err := s.DecodeJSON(r, &v); err != nil {
			fe.fail(w, r, err)
			return
		}
		io.WriteString(w, v.Name)
	}))
	if a := serve(h, http.MethodPost, "/op/x", addr1, []byte(`{"name":"signed"}`)); a.status != http.StatusOK || string(a.body) != "signed" {
		t.Fatalf("body read by Authenticate, then decoded: %d %s", a.status, a.body)
	}
	if a := serve(h, http.MethodPost, "/op/x", addr1, bytes.Repeat([]byte("x"), 1000)); a.status != http.StatusRequestEntityTooLarge || read != 64 {
		t.Fatalf("large body read by Authenticate: %d %s, read %d bytes", a.status, a.body, read)
	}
}

// TestPanic: a panicking handler is answered with the front end's 500,
// counted and logged; http.ErrAbortHandler is passed on.
func TestPanic(t *testing.T) {
	fe := newTestFrontEnd()
	m := metrics.New("test")
	var logs bytes.Buffer
	s := New(Options{Metrics: m, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	h := s.Wrap(fe.frontEnd(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/op/abort" {
			panic(http.ErrAbortHandler)
		}
		var m map[string]int
		m["x"]++ // a nil map: a real bug, not a staged panic value
	}))
	a := serve(h, http.MethodPost, "/op/bug", addr1, nil, "X-Test-Key", "alice-key", "X-Request-Id", "panic-1")
	if a.status != http.StatusInternalServerError || a.err.Kind != kgerr.KindInternal || a.err.Message != "internal error" {
		t.Fatalf("panic answered %d %s", a.status, a.body)
	}
	if strings.Contains(string(a.body), "nil map") {
		t.Fatalf("the panic's text reached the client: %s", a.body)
	}
	if got := scrape(t, m); !strings.Contains(got, `keygrid_http_requests_total{route="POST /op/{x}",status="500"} 1`) {
		t.Fatalf("metrics after a panic:\n%s", got)
	}
	if !strings.Contains(logs.String(), `"client_request_id":"panic-1"`) || !strings.Contains(logs.String(), `"status":500`) {
		t.Fatalf("access log after a panic: %s", logs.String())
	}
	func() {
		defer func() {
			if p := recover(); p != http.ErrAbortHandler {
				t.Fatalf("ErrAbortHandler came out as %v", p)
			}
		}()
		serve(h, http.MethodPost, "/op/abort", addr1, nil, "X-Test-Key", "alice-key")
	}()
}

// TestAuthenticationAndRateLimit: unprotected requests pass without a
// credential; the principal reaches the handler; a principal's bucket
// refuses with RATE_LIMITED and the Retry-After of its next token; failed
// authentications are audited and limited per address.
func TestAuthenticationAndRateLimit(t *testing.T) {
	fe := newTestFrontEnd()
	s := New(Options{RatePerPrincipal: 0.25, Burst: 2, AuthFailureRate: 0.1, AuthFailureBurst: 2, Logger: slog.New(slog.DiscardHandler)})
	now := time.Now()
	s.principals.now = func() time.Time { return now }
	s.failures.now = func() time.Time { return now }
	var got seen
	h := s.Wrap(fe.frontEnd(), recordingHandler(&got))

	if a := serve(h, http.MethodGet, "/open", addr1, nil); a.status != http.StatusOK || got.principal != "" {
		t.Fatalf("open route: %d, principal %q", a.status, got.principal)
	}
	for i := range 2 {
		if a := serve(h, http.MethodPost, "/op/x", addr1, nil, "X-Test-Key", "alice-key"); a.status != http.StatusOK || got.principal != "alice" {
			t.Fatalf("request %d within the burst: %d, principal %q", i, a.status, got.principal)
		}
	}
	a := serve(h, http.MethodPost, "/op/x", addr1, nil, "X-Test-Key", "alice-key")
	if a.status != http.StatusTooManyRequests || a.err.Kind != kgerr.KindRateLimited || a.header.Get("Retry-After") != "4" ||
		!strings.Contains(a.err.Message, "principal alice") {
		t.Fatalf("past the burst at 0.25/s: %d %s, Retry-After %q", a.status, a.body, a.header.Get("Retry-After"))
	}
	now = now.Add(time.Second)
	if a := serve(h, http.MethodPost, "/op/x", addr1, nil, "X-Test-Key", "alice-key"); a.header.Get("Retry-After") != "3" {
		t.Fatalf("a second later: %d, Retry-After %q", a.status, a.header.Get("Retry-After"))
	}
	now = now.Add(3 * time.Second)
	if a := serve(h, http.MethodPost, "/op/x", addr1, nil, "X-Test-Key", "alice-key"); a.status != http.StatusOK {
		t.Fatalf("after the wait: %d %s", a.status, a.body)
	}
	// bob's own limit (0.5/s, burst 1) overrides the default.
	serve(h, http.MethodPost, "/op/x", addr1, nil, "X-Test-Key", "bob-key")
	if a := serve(h, http.MethodPost, "/op/x", addr1, nil, "X-Test-Key", "bob-key"); a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") != "2" {
		t.Fatalf("bob's second request: %d, Retry-After %q", a.status, a.header.Get("Retry-After"))
	}

	// Failed authentications: two audited 401s, then 429 (audited once),
	// while another address still gets its 401.
	for i := range 2 {
		a := serve(h, http.MethodPost, "/op/x", addr1, nil, "X-Test-Key", "wrong")
		if a.status != http.StatusUnauthorized || a.err.Message != "send a known X-Test-Key" {
			t.Fatalf("failure %d: %d %s", i, a.status, a.body)
		}
	}
	for i := range 2 {
		a := serve(h, http.MethodPost, "/op/x", "192.0.2.1:40001", nil, "X-Test-Key", "wrong")
		if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") != "10" || !strings.Contains(a.err.Message, "failed authentications") {
			t.Fatalf("failure %d past the address's budget: %d %s, Retry-After %q", i+3, a.status, a.body, a.header.Get("Retry-After"))
		}
	}
	if a := serve(h, http.MethodPost, "/op/x", "[2001:db8::1]:5000", nil); a.status != http.StatusUnauthorized {
		t.Fatalf("another address: %d %s", a.status, a.body)
	}
	// A front end's failure that is no refused credential passes as is and
	// costs the address nothing.
	if a := serve(h, http.MethodPost, "/op/x", "192.0.2.9:1", nil, "X-Test-Key", "down"); a.status != http.StatusServiceUnavailable {
		t.Fatalf("authenticator down: %d %s", a.status, a.body)
	}
	want := []string{
		"POST /op/{x}: " + errNoSuchKey.Error(),
		"POST /op/{x}: " + errNoSuchKey.Error(),
		"POST /op/{x}: authentication failures from this address are rate limited; further ones are not audited one by one",
		"POST /op/{x}: " + errNoSuchKey.Error(),
	}
	if got := fe.auditLines(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audited:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// A front end without Authenticate refuses its protected requests.
	bare := fe.frontEnd()
	bare.Authenticate = nil
	if a := serve(New(Options{Logger: slog.New(slog.DiscardHandler)}).Wrap(bare, recordingHandler(&got)), http.MethodPost, "/op/x", addr1, nil); a.status != http.StatusUnauthorized {
		t.Fatalf("no Authenticate: %d %s", a.status, a.body)
	}
}

// TestMetricsAndAccessLog: every request is counted by route label and
// status (unmatched without a label) and logged at a level by its status.
func TestMetricsAndAccessLog(t *testing.T) {
	fe := newTestFrontEnd()
	m := metrics.New("test")
	var logs bytes.Buffer
	s := New(Options{Metrics: m, Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	h := s.Wrap(fe.frontEnd(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/op/missing" {
			fe.fail(w, r, kgerr.Invalid("no"))
			return
		}
		io.WriteString(w, "ok")
	}))
	serve(h, http.MethodPost, "/op/x", addr1, nil, "X-Test-Key", "alice-key", "X-Request-Id", "ok-1")
	serve(h, http.MethodPost, "/op/x", addr1, nil, "X-Test-Key", "alice-key")
	serve(h, http.MethodPost, "/op/missing", addr1, nil, "X-Test-Key", "alice-key", "X-Request-Id", "bad-1")
	serve(h, http.MethodGet, "/open", addr1, nil)
	got := scrape(t, m)
	for _, w := range []string{
		`keygrid_http_requests_total{route="POST /op/{x}",status="200"} 2`,
		`keygrid_http_requests_total{route="POST /op/{x}",status="400"} 1`,
		`keygrid_http_requests_total{route="unmatched",status="200"} 1`,
	} {
		if !strings.Contains(got, w) {
			t.Errorf("metrics lack %s:\n%s", w, got)
		}
	}
	var lines []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(logs.Bytes()), []byte("\n")) {
		var v map[string]any
		if err := json.Unmarshal(l, &v); err != nil {
			t.Fatalf("log line %s: %v", l, err)
		}
		lines = append(lines, v)
	}
	// At level info only the 400 is kept.
	if len(lines) != 1 || lines[0]["msg"] != "request" || lines[0]["client_request_id"] != "bad-1" || lines[0]["front_end"] != "test" ||
		lines[0]["route"] != "POST /op/{x}" || lines[0]["principal"] != "alice" || lines[0]["status"] != float64(400) || lines[0]["method"] != "POST" {
		t.Fatalf("access log: %s", logs.String())
	}
}

func TestSetRetryAfter(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "1", time.Millisecond: "1", time.Second: "1", 1001 * time.Millisecond: "2", 4 * time.Second: "4", time.Minute: "60"} {
		w := httptest.NewRecorder()
		SetRetryAfter(w, d)
		if got := w.Header().Get("Retry-After"); got != want {
			t.Errorf("SetRetryAfter(%v) = %q, want %q", d, got, want)
		}
	}
}

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return w.Body.String()
}
