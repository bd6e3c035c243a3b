// Package console is the operator console of KeyGrid HSM: server-rendered
// pages (html/template, with a little embedded CSS and JavaScript, no CDN)
// served at /ui/ on the main listener, beside the REST API.
//
// It is a front end like the REST API and the XKS proxy: it runs inside the
// shared HTTP stack (request ids, deadline, body cap, panic recovery, access
// log, rate limits, the per-address budget of failed authentications) and
// calls the domain service with the signed-in principal in the context, the
// same calls the REST API makes, so that the service authorizes every read
// and every change exactly as it does for the API. The console adds no
// permission of its own: a button for an action the principal may not take
// is not shown, and the service refuses it anyway when posted.
//
// Sign-in is with an API token (or a mapped TLS client certificate), checked
// by the same authenticator as the API. A sign-in makes a server-side
// session: a random id in an HttpOnly, SameSite=Strict cookie (Secure under
// TLS) with Path=/ui/, kept in memory only (a restart or a configuration
// reload signs everyone out), ending after SessionTTL or IdleTimeout; sign-out
// deletes it. Every form carries the session's CSRF token, checked in
// constant time; the sign-in form carries one of its own (a short-lived
// cookie). Every answer has a strict Content-Security-Policy and no-store.
package console

import (
	"context"
	"embed"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/httpstack"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// Service is what the console needs of the key service: the calls the REST
// API makes for the same things.
type Service interface {
	CreateKey(ctx context.Context, req service.CreateKeyRequest) (*service.Key, error)
	GetKey(ctx context.Context, ref string) (*service.Key, error)
	ListKeys(ctx context.Context, o service.ListOptions) (*service.KeyList, error)
	DeleteKey(ctx context.Context, req service.DeleteKeyRequest) (*service.Key, error)
	CancelDeletion(ctx context.Context, ref string) (*service.Key, error)
	ActivateKey(ctx context.Context, ref string) (*service.Key, error)
	DeactivateKey(ctx context.Context, ref string) (*service.Key, error)
	RotateKey(ctx context.Context, ref string) (*service.Key, error)
	PublicKey(ctx context.Context, ref string, version int) (*service.PublicKeyInfo, error)
	Providers(ctx context.Context) []service.ProviderInfo
	ProviderHealth(ctx context.Context, name string) (*service.ProviderHealth, error)
	// RecordEvent audits sign-in and sign-out.
	RecordEvent(ctx context.Context, operation, detail string, err error) error
	// AuthenticationFailed audits a refused sign-in.
	AuthenticationFailed(ctx context.Context, detail string)
}

// Options configure the console.
type Options struct {
	Service Service
	// Stack is the server's shared HTTP stack. Required.
	Stack *httpstack.Stack
	// Auth authenticates sign-ins (nil refuses them).
	Auth   *auth.Authenticator
	Logger *slog.Logger
	// Version is shown in the footer.
	Version string
	// AuditPath is the audit log the audit page and key pages read;
	// AuditHead returns the writer's chain head (nil: not shown).
	AuditPath string
	AuditHead func() (uint64, string)
	// SessionTTL (default 8h) and IdleTimeout (default 30m) end sessions.
	SessionTTL, IdleTimeout time.Duration
	// MinDeletionWindow is the shortest deletion window the service takes
	// (shown on the deletion form).
	MinDeletionWindow time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Console is the console's HTTP handler.
type Console struct {
	svc      Service
	log      *slog.Logger
	version  string
	auth     atomic.Pointer[auth.Authenticator]
	sessions *sessions
	mux      *http.ServeMux
	handler  http.Handler
	pages    *pages

	auditPath  string
	auditHead  func() (uint64, string)
	chain      *audit.ChainCheck
	minWindow  time.Duration
	now        func() time.Time
	maxRecords int
}

//go:embed templates/*.html static/*
var assets embed.FS

// Prefix is the console's path space on the listener.
const Prefix = "/ui/"

// Claims reports whether a request is the console's: its raw path is /ui
// or under /ui/.
func Claims(r *http.Request) bool {
	p := r.URL.EscapedPath()
	return p == "/ui" || strings.HasPrefix(p, Prefix)
}

// New builds the console.
func New(o Options) (*Console, error) {
	if o.Service == nil || o.Stack == nil {
		return nil, errors.New("console: Service and Stack are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = 8 * time.Hour
	}
	if o.IdleTimeout <= 0 || o.IdleTimeout > o.SessionTTL {
		o.IdleTimeout = min(30*time.Minute, o.SessionTTL)
	}
	pg, err := parsePages()
	if err != nil {
		return nil, err
	}
	c := &Console{svc: o.Service, log: o.Logger, version: o.Version, mux: http.NewServeMux(), pages: pg,
		sessions: newSessions(o.SessionTTL, o.IdleTimeout, o.Now), auditPath: o.AuditPath, auditHead: o.AuditHead,
		minWindow: o.MinDeletionWindow, now: o.Now, maxRecords: 100}
	if o.AuditPath != "" {
		c.chain = audit.NewChainCheck(o.AuditPath, 0)
	}
	c.auth.Store(o.Auth)
	c.routes()
	c.handler = securityHeaders(o.Stack.Wrap(c.frontEnd(), c.checkCSRF(c.mux)))
	return c, nil
}

// SetAuthenticator replaces the principals sign-ins are checked against (a
// configuration reload) and ends every session: a principal removed, or
// given another role, scope or token, must sign in again.
func (c *Console) SetAuthenticator(a *auth.Authenticator) {
	c.auth.Store(a)
	c.sessions.clear()
}

// ServeHTTP implements http.Handler.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.handler.ServeHTTP(w, r) }

func (c *Console) routes() {
	m := c.mux
	m.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, Prefix, http.StatusSeeOther) })
	m.HandleFunc("GET /ui/{$}", c.overview)
	m.HandleFunc("GET /ui/login", c.loginPage)
	m.HandleFunc("POST /ui/login", c.login)
	m.HandleFunc("POST /ui/logout", c.logout)
	m.HandleFunc("GET /ui/static/{file}", c.static)

	m.HandleFunc("GET /ui/keys", c.listKeys)
	m.HandleFunc("GET /ui/keys/new", c.newKeyPage)
	m.HandleFunc("POST /ui/keys", c.createKey)
	m.HandleFunc("GET /ui/keys/{key}", c.keyPage)
	m.HandleFunc("GET /ui/keys/{key}/public.pem", c.publicPEM)
	m.HandleFunc("GET /ui/keys/{key}/public.jwk", c.publicJWK)
	m.HandleFunc("GET /ui/keys/{key}/{action}", c.confirmPage)
	m.HandleFunc("POST /ui/keys/{key}/{action}", c.keyAction)

	m.HandleFunc("GET /ui/audit", c.auditPage)
	m.HandleFunc("/ui/", c.notFound)
}

// frontEnd is what the console plugs into the shared stack.
func (c *Console) frontEnd() httpstack.FrontEnd {
	return httpstack.FrontEnd{
		Name:         "console",
		Fail:         c.fail,
		Route:        c.route,
		Protected:    protected,
		Authenticate: c.authenticate,
		AuthFailed:   c.svc.AuthenticationFailed,
	}
}

// route is the pattern a request matches ("" when none).
func (c *Console) route(r *http.Request) string {
	if _, p := c.mux.Handler(r); p != "/ui/" && p != "" {
		return p
	}
	return ""
}

// protected: everything but the sign-in page, the static files and the
// redirect of /ui needs a session (or, for POST /ui/login, a token).
func protected(r *http.Request, _ string) bool {
	p := r.URL.Path
	switch {
	case r.Method == http.MethodGet && (p == "/ui/login" || p == "/ui"):
		return false
	case r.Method == http.MethodGet && strings.HasPrefix(p, "/ui/static/"):
		return false
	}
	return true
}

// securityHeaders sets the headers of every console answer, errors of the
// stack included.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", ContentSecurityPolicy)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.ServeHTTP(w, r)
	})
}

// ContentSecurityPolicy is the policy of every console page: scripts,
// styles and images only from the gateway itself, no inline script or
// style, forms only to the gateway, never framed.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func (c *Console) static(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	var ctype string
	switch {
	case strings.HasSuffix(name, ".css"):
		ctype = "text/css; charset=utf-8"
	case strings.HasSuffix(name, ".js"):
		ctype = "text/javascript; charset=utf-8"
	default:
		c.notFound(w, r)
		return
	}
	b, err := assets.ReadFile("static/" + name)
	if err != nil {
		c.notFound(w, r)
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.Write(b)
}
