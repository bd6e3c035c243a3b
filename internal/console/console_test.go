package console_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/console"
	"github.com/keygrid/keygrid-hsm/internal/duration"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

const (
	adminToken    = "kgt_console-test-admin-token-0123456789"
	operatorToken = "kgt_console-test-operator-token-0123456789"
	auditorToken  = "kgt_console-test-auditor-token-0123456789"
)

// gateway is a real server (software provider, SQLite, audit log) with an
// admin, an operator and an auditor scoped to team-a-* keys, on a real
// listener.
type gateway struct {
	srv *server.Server
	ts  *httptest.Server
	cfg *config.Config
}

func newGateway(t *testing.T, tune func(*config.Config)) *gateway {
	t.Helper()
	cfg, err := config.Load("", config.Flags{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Auth.Principals = []config.Principal{
		{Name: "alice", Role: "admin", TokenSHA256: auth.HashToken(adminToken)},
		{Name: "bob", Role: "operator", TokenSHA256: auth.HashToken(operatorToken), Keys: []string{"team-a-*"}},
		{Name: "carol", Role: "auditor", TokenSHA256: auth.HashToken(auditorToken), Keys: []string{"team-a-*"}},
	}
	cfg.Keys.MinDeletionWindow = duration.Duration(time.Hour)
	if tune != nil {
		tune(cfg)
	}
	srv, err := server.New(context.Background(), cfg, provider.Registry{"software": software.New}, slog.New(slog.DiscardHandler), "test")
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway{srv: srv, ts: httptest.NewServer(srv.Handler()), cfg: cfg}
	t.Cleanup(func() { g.ts.Close(); srv.Close() })
	return g
}

// browser is a plain HTTP client with a cookie jar that does not follow
// redirects.
func (g *gateway) browser(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func get(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func post(t *testing.T, c *http.Client, u string, form url.Values) (*http.Response, string) {
	t.Helper()
	resp, err := c.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// signIn signs c in with token and returns the session's CSRF token.
func (g *gateway) signIn(t *testing.T, c *http.Client, token string) string {
	t.Helper()
	_, body := get(t, c, g.ts.URL+"/ui/login")
	m := csrfField.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no csrf on the sign-in page")
	}
	resp, _ := post(t, c, g.ts.URL+"/ui/login", url.Values{"csrf": {m[1]}, "token": {token}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/" {
		t.Fatalf("sign-in: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	_, body = get(t, c, g.ts.URL+"/ui/")
	m = csrfField.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no csrf on the overview: %s", body)
	}
	return m[1]
}

func TestHeadersAndCookie(t *testing.T) {
	g := newGateway(t, nil)
	c := g.browser(t)
	resp, _ := get(t, c, g.ts.URL+"/ui/login")
	if got := resp.Header.Get("Content-Security-Policy"); got != console.ContentSecurityPolicy ||
		!strings.Contains(got, "default-src 'none'") || !strings.Contains(got, "frame-ancestors 'none'") {
		t.Errorf("CSP = %q", got)
	}
	for h, want := range map[string]string{"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	g.signIn(t, c, adminToken)
	u, _ := url.Parse(g.ts.URL + "/ui/")
	var sess *http.Cookie
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == "kg_console" {
			sess = ck
		}
	}
	if sess == nil {
		t.Fatal("no session cookie")
	}
	// The Set-Cookie attributes, read from a fresh sign-in.
	c2 := g.browser(t)
	_, body := get(t, c2, g.ts.URL+"/ui/login")
	m := csrfField.FindStringSubmatch(body)
	resp, _ = post(t, c2, g.ts.URL+"/ui/login", url.Values{"csrf": {m[1]}, "token": {adminToken}})
	sc := strings.Join(resp.Header.Values("Set-Cookie"), "\n")
	for _, want := range []string{"kg_console=", "Path=/ui/", "HttpOnly", "SameSite=Strict"} {
		if !strings.Contains(sc, want) {
			t.Errorf("Set-Cookie %q lacks %s", sc, want)
		}
	}
	if strings.Contains(sc, "Secure") {
		t.Errorf("Secure cookie over plain HTTP: %q", sc)
	}
	// No page source shows the token or the session id.
	for _, p := range []string{"/ui/", "/ui/keys", "/ui/audit", "/ui/keys/new"} {
		_, body := get(t, c, g.ts.URL+p)
		if strings.Contains(body, adminToken) || strings.Contains(body, sess.Value) {
			t.Errorf("%s shows a secret", p)
		}
	}
}

func TestCSRFRequired(t *testing.T) {
	g := newGateway(t, nil)
	c := g.browser(t)
	csrf := g.signIn(t, c, adminToken)
	form := url.Values{"provider_spec": {"software|EC:P-256"}, "name": {"csrf-key"}, "confirm": {"csrf-key"}}
	resp, body := post(t, c, g.ts.URL+"/ui/keys", form)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "CSRF") {
		t.Fatalf("create without csrf: %d", resp.StatusCode)
	}
	form.Set("csrf", csrf+"x")
	if resp, _ := post(t, c, g.ts.URL+"/ui/keys", form); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("create with a wrong csrf: %d", resp.StatusCode)
	}
	if _, err := g.srv.Service().GetKey(adminCtx(), "csrf-key"); err == nil {
		t.Fatal("a key was created without the CSRF token")
	}
	// Sign-out without the token is refused too; the session lives.
	if resp, _ := post(t, c, g.ts.URL+"/ui/logout", url.Values{}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("logout without csrf: %d", resp.StatusCode)
	}
	// The sign-in form without its own token: refused before the token.
	c2 := g.browser(t)
	if resp, _ := post(t, c2, g.ts.URL+"/ui/login", url.Values{"token": {adminToken}}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("sign-in without csrf: %d", resp.StatusCode)
	}
	form.Set("csrf", csrf)
	if resp, _ := post(t, c, g.ts.URL+"/ui/keys", form); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("create with csrf: %d", resp.StatusCode)
	}
}

func adminCtx() context.Context {
	p := auth.NewPrincipal("test", auth.RoleAdmin, "", nil, nil)
	return service.WithCaller(context.Background(), service.Caller{Principal: "test", Auth: p})
}

func TestFailedSignInsAreLimitedAndAudited(t *testing.T) {
	g := newGateway(t, func(c *config.Config) { c.Limits.AuthFailuresPerClient, c.Limits.AuthFailureBurst = 0.001, 5 })
	c := g.browser(t)
	for i := range 6 {
		_, body := get(t, c, g.ts.URL+"/ui/login")
		m := csrfField.FindStringSubmatch(body)
		resp, body := post(t, c, g.ts.URL+"/ui/login", url.Values{"csrf": {m[1]}, "token": {"kgt_wrong-token-0123456789"}})
		want := http.StatusUnauthorized
		if i == 5 {
			want = http.StatusTooManyRequests
		}
		if resp.StatusCode != want {
			t.Fatalf("attempt %d: %d, want %d", i+1, resp.StatusCode, want)
		}
		if strings.Contains(body, "kgt_wrong-token") {
			t.Fatal("the sign-in page shows the token posted")
		}
	}
	b, err := os.ReadFile(g.cfg.Audit.Path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), `"operation":"authenticate"`); n < 5 {
		t.Errorf("%d failed sign-ins audited, want at least 5", n)
	}
	if strings.Contains(string(b), "kgt_wrong-token") {
		t.Error("the audit log holds the token")
	}
}

// An operator posting an action its role does not allow is refused by the
// service (the console adds no way around authorization), and a key
// outside its scope is not reachable by URL.
func TestOperatorRefusedByTheService(t *testing.T) {
	g := newGateway(t, nil)
	svc := g.srv.Service()
	a, err := svc.CreateKey(adminCtx(), service.CreateKeyRequest{Name: "team-a-1", Spec: service.KeySpec{KeyType: "EC", Curve: "P-256"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := svc.CreateKey(adminCtx(), service.CreateKeyRequest{Name: "team-b-1", Spec: service.KeySpec{KeyType: "EC", Curve: "P-256"}})
	if err != nil {
		t.Fatal(err)
	}
	c := g.browser(t)
	csrf := g.signIn(t, c, operatorToken)
	resp, _ := post(t, c, g.ts.URL+"/ui/keys/"+a.ID+"/rotate", url.Values{"csrf": {csrf}, "confirm": {"team-a-1"}})
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("operator rotate: %d", resp.StatusCode)
	}
	if k, _ := svc.GetKey(adminCtx(), a.ID); k.Version != 1 {
		t.Fatalf("rotated to %d by an operator", k.Version)
	}
	for _, p := range []string{"/ui/keys/" + b.ID, "/ui/keys/team-b-1", "/ui/keys/" + b.ID + "/public.pem", "/ui/keys/" + b.ID + "/deactivate"} {
		resp, body := get(t, c, g.ts.URL+p)
		if resp.StatusCode != http.StatusForbidden || strings.Contains(body, b.ID) && !strings.Contains(p, b.ID) {
			t.Errorf("%s: %d", p, resp.StatusCode)
		}
		if strings.Contains(body, "BEGIN PUBLIC KEY") {
			t.Errorf("%s shows team-b's public key", p)
		}
	}
	if k, _ := svc.GetKey(adminCtx(), b.ID); k.State != "active" {
		t.Fatalf("team-b-1 is %s", k.State)
	}
	// No API route gives an operator the audit log, and neither does the
	// console: no audit page, no records on its key's page, no link.
	if resp, body := get(t, c, g.ts.URL+"/ui/audit"); resp.StatusCode != http.StatusForbidden || strings.Contains(body, "team-a-1") {
		t.Errorf("operator's audit page: %d", resp.StatusCode)
	}
	if resp, body := get(t, c, g.ts.URL+"/ui/keys/"+a.ID); resp.StatusCode != http.StatusOK || strings.Contains(body, "Recent audit records") ||
		strings.Contains(body, `href="/ui/audit`) {
		t.Errorf("operator's key page: %d, shows audit records or links the audit page", resp.StatusCode)
	}
	// A scoped auditor reads the records of its scope only.
	c3 := g.browser(t)
	g.signIn(t, c3, auditorToken)
	resp, body := get(t, c3, g.ts.URL+"/ui/audit")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "team-a-1") || strings.Contains(body, "team-b-1") {
		t.Errorf("scoped auditor's audit page: %d, team-a-1 shown %v, team-b-1 shown %v", resp.StatusCode,
			strings.Contains(body, "team-a-1"), strings.Contains(body, "team-b-1"))
	}
	// The admin's rotate through the same form works.
	c2 := g.browser(t)
	csrf = g.signIn(t, c2, adminToken)
	if resp, _ := post(t, c2, g.ts.URL+"/ui/keys/"+a.ID+"/rotate", url.Values{"csrf": {csrf}, "confirm": {"wrong"}}); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("rotate with the wrong name: %d", resp.StatusCode)
	}
	if resp, _ := post(t, c2, g.ts.URL+"/ui/keys/"+a.ID+"/rotate", url.Values{"csrf": {csrf}, "confirm": {"team-a-1"}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("admin rotate: %d", resp.StatusCode)
	}
	if k, _ := svc.GetKey(adminCtx(), a.ID); k.Version != 2 {
		t.Fatalf("version %d after the admin's rotate", k.Version)
	}
}
