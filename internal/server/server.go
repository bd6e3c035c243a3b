// Package server assembles a KeyGrid HSM server from its configuration:
// metadata store, audit log, providers, key service and its front ends (the
// REST API, and any other mounted beside it on the same listener and TLS),
// and runs it until its context ends, then shuts down gracefully.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/keygrid/keygrid-hsm/internal/api"
	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/console"
	"github.com/keygrid/keygrid-hsm/internal/httpstack"
	"github.com/keygrid/keygrid-hsm/internal/metrics"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/xks"
)

// Server is an assembled gateway.
type Server struct {
	cfg   *config.Config
	log   *slog.Logger
	store store.Store
	audit *audit.Log
	svc   *service.Service
	// stack is the HTTP machinery of every front end; frontEnds dispatches
	// requests to them.
	stack     *httpstack.Stack
	frontEnds *frontEnds
	tls       *tls.Config // nil: plain HTTP
	// stop ends the background work (health checks, reconciler, deletion
	// sweeps and automatic rotation); done
	// closes when it has ended.
	stop func()
	done chan struct{}

	// What a reload needs: the REST front end (its authenticator is
	// swapped), the metrics and version the XKS front end is rebuilt with,
	// and the reload lock.
	rest     *api.API
	console  *console.Console // nil: console.enabled is off
	metrics  *metrics.Metrics
	version  string
	reloadMu sync.Mutex

	// ckpt signs the audit checkpoints (nil when they are off); see
	// checkpoint.go.
	ckpt atomic.Pointer[checkpointer]
}

// New builds a server. On error, whatever was opened is closed again.
func New(ctx context.Context, cfg *config.Config, reg provider.Registry, log *slog.Logger, version string) (_ *Server, err error) {
	if err := cfg.Validate(reg.Types()); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	s := &Server{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := s.openStore(ctx); err != nil {
		return nil, err
	}
	if s.audit, err = audit.OpenWith(cfg.Audit.Path, audit.Options{MaxBytes: cfg.Audit.MaxBytes, Logger: log, SyncInterval: cfg.Audit.FsyncInterval.D(),
		OnRotate: s.onAuditRotate}); err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	authn, err := newAuthenticator(cfg, log)
	if err != nil {
		return nil, err
	}
	if s.tls, err = TLSConfig(cfg.Server.TLS); err != nil {
		return nil, err
	}
	var providers []provider.Provider
	defer func() {
		if err != nil {
			for _, p := range providers {
				p.Close()
			}
		}
	}()
	for _, name := range cfg.EnabledProviders() {
		typ := cfg.ProviderType(name)
		p, err := reg[typ](ctx, provider.Params{
			Name: name, Type: typ, DataDir: cfg.DataDir, Embedded: cfg.Embedded,
			Decode: func(out any) error { return cfg.DecodeProviderConfig(name, out) },
			Logger: log.With("provider", name),
		})
		if err != nil {
			return nil, fmt.Errorf("provider %q (%s): %w", name, typ, err)
		}
		providers = append(providers, p)
	}
	m := metrics.New(version)
	s.svc, err = service.New(service.Options{
		Store: s.store, Providers: providers, DefaultProvider: cfg.DefaultProvider, Audit: s.audit, Metrics: m,
		Logger: log, ReconcileGrace: cfg.Reconcile.Grace.D(), HealthTimeout: cfg.Health.Timeout.D(),
		DeletionWindow: cfg.Keys.DeletionWindow.D(), MinDeletionWindow: cfg.Keys.MinDeletionWindow.D(),
		MinRotationPeriod: cfg.Keys.MinRotationPeriod.D(),
	})
	if err != nil {
		return nil, err
	}
	for _, p := range providers {
		if r, ok := p.(provider.EventReporter); ok {
			name := p.Name()
			r.SetEventSink(func(e provider.Event) { s.svc.ProviderEvent(name, e) })
		}
	}
	if err := s.startCheckpoints(cfg); err != nil {
		return nil, err
	}
	bctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop, s.done = stop, make(chan struct{})
	go func() {
		defer close(s.done)
		var wg sync.WaitGroup
		wg.Add(4)
		go func() { defer wg.Done(); s.svc.RunReconciler(bctx, cfg.Reconcile.Interval.D()) }()
		go func() { defer wg.Done(); s.svc.RunHealthChecks(bctx, cfg.Health.Interval.D()) }()
		go func() { defer wg.Done(); s.svc.RunLifecycle(bctx, cfg.Keys.DeletionSweepInterval.D()) }()
		go func() { defer wg.Done(); s.runCheckpoints(bctx, cfg.Audit.CheckpointInterval.D()) }()
		wg.Wait()
	}()
	s.stack = httpstack.New(httpstack.Options{
		Logger: log, Metrics: m, Timeout: cfg.Server.RequestTimeout.D(),
		MaxBody: cfg.Server.MaxBodyBytes, MaxJSONDepth: cfg.Limits.MaxJSONDepth,
		RatePerPrincipal: cfg.Limits.RatePerPrincipal, Burst: cfg.Limits.Burst,
		AuthFailureRate: cfg.Limits.AuthFailuresPerClient, AuthFailureBurst: cfg.Limits.AuthFailureBurst,
		AuditRefusal: s.svc.Refused,
	})
	s.rest = api.New(api.Options{
		Service: s.svc, Metrics: m, Logger: log, Version: version, Stack: s.stack, Auth: authn,
		ProtectReady: cfg.Auth.ProtectReady, ProtectMetrics: cfg.Auth.ProtectMetrics,
	})
	s.frontEnds, s.metrics, s.version = &frontEnds{rest: s.rest}, m, version
	if len(cfg.XKS.Stores) > 0 {
		fe, err := s.xksFrontEnd(cfg)
		if err != nil {
			return nil, err
		}
		if err := s.Mount(fe); err != nil {
			return nil, err
		}
	}
	if cfg.ConsoleEnabled() {
		if err := s.mountConsole(cfg, authn); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// mountConsole serves the operator console at /ui/ (internal/console) over
// the shared HTTP stack and the key service, its sign-ins checked by the
// API's authenticator.
func (s *Server) mountConsole(cfg *config.Config, authn *auth.Authenticator) error {
	c, err := console.New(console.Options{
		Service: s.svc, Stack: s.stack, Auth: authn, Logger: s.log, Version: s.version,
		AuditPath: cfg.Audit.Path, AuditHead: s.audit.Head,
		SessionTTL: cfg.Console.SessionTTL.D(), IdleTimeout: cfg.Console.IdleTimeout.D(),
		MinDeletionWindow: cfg.Keys.MinDeletionWindow.D(),
	})
	if err != nil {
		return err
	}
	s.console = c
	return s.Mount(FrontEnd{Name: "console", Claims: console.Claims, Handler: c})
}

// xksFrontEnd builds the XKS proxy front end of cfg.
func (s *Server) xksFrontEnd(cfg *config.Config) (FrontEnd, error) {
	xh, err := xks.New(xks.Options{Service: s.svc, Stores: cfg.XKS.Stores, Metrics: s.metrics, Logger: s.log, Version: s.version})
	if err != nil {
		return FrontEnd{}, err
	}
	return FrontEnd{Name: "xks", Claims: xks.Matches, Handler: s.stack.Wrap(xh.FrontEnd(), xh)}, nil
}

// Handler is the HTTP handler of the listener, every front end behind it
// (for tests with httptest).
func (s *Server) Handler() http.Handler { return s.frontEnds }

// HTTPStack is the HTTP machinery the front ends share (request ids,
// deadline, body and JSON caps, rate limits, access log, metrics): a front
// end mounted with Mount wraps itself in it.
func (s *Server) HTTPStack() *httpstack.Stack { return s.stack }

// FrontEnd is a protocol front end served on the server's listener (and
// its TLS) beside the REST API: the requests it claims go to its handler.
type FrontEnd struct {
	Name string
	// Claims reports whether a request is in the front end's path space.
	// It sees the raw path (PathContains, PathPrefix); no cleaning or
	// redirect happens before it.
	Claims func(r *http.Request) bool
	// Handler serves the front end's requests, normally wrapped in
	// HTTPStack.
	Handler http.Handler
}

// restPaths are paths of the REST API's own space, which no other front end
// may claim.
var restPaths = []string{"/health", "/ready", "/metrics", "/api/v1/keys", "/api/v1/providers", "/api/v1/keys/k/sign"}

// Mount adds a front end. Requests go to the first mounted front end that
// claims them; the REST API answers every other request (its /health,
// /ready, /metrics and /api/v1/..., and its 404 for the rest). Mount
// refuses a front end that claims a path of the REST API.
func (s *Server) Mount(fe FrontEnd) error {
	if fe.Claims == nil || fe.Handler == nil {
		return fmt.Errorf("front end %q: Claims and Handler are required", fe.Name)
	}
	for _, p := range restPaths {
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			if fe.Claims(&http.Request{Method: m, URL: &url.URL{Path: p}, Header: http.Header{}}) {
				return fmt.Errorf("front end %q claims %s %s, which is the REST API's", fe.Name, m, p)
			}
		}
	}
	s.frontEnds.mount(fe)
	return nil
}

// frontEnds dispatches each request to the front end whose path space it
// is in, on the raw path: no http.ServeMux cleaning, which would redirect
// "//kms/xks/v1/health" (an XKS route with an empty URI prefix).
type frontEnds struct {
	mu      sync.Mutex                 // serializes mounts
	mounted atomic.Pointer[[]FrontEnd] // replaced, never changed, by a mount
	rest    http.Handler
}

func (f *frontEnds) mount(fe FrontEnd) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var next []FrontEnd
	if cur := f.mounted.Load(); cur != nil {
		next = append(next, *cur...)
	}
	next = append(next, fe)
	f.mounted.Store(&next)
}

// replace swaps the front end named fe.Name for fe (adds it when there is
// none; removes it when fe.Handler is nil).
func (f *frontEnds) replace(fe FrontEnd) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var next []FrontEnd
	found := false
	if cur := f.mounted.Load(); cur != nil {
		for _, x := range *cur {
			if x.Name == fe.Name {
				found = true
				if fe.Handler == nil {
					continue
				}
				x = fe
			}
			next = append(next, x)
		}
	}
	if !found && fe.Handler != nil {
		next = append(next, fe)
	}
	f.mounted.Store(&next)
}

func (f *frontEnds) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if m := f.mounted.Load(); m != nil {
		for i := range *m {
			if (*m)[i].Claims(r) {
				(*m)[i].Handler.ServeHTTP(w, r)
				return
			}
		}
	}
	f.rest.ServeHTTP(w, r)
}

// PathContains claims the requests whose raw (escaped) path contains sub,
// such as "/kms/xks/v1/" for XKS routes under any URI prefix.
func PathContains(sub string) func(*http.Request) bool {
	return func(r *http.Request) bool { return strings.Contains(r.URL.EscapedPath(), sub) }
}

// PathPrefix claims the requests whose raw (escaped) path starts with
// prefix.
func PathPrefix(prefix string) func(*http.Request) bool {
	return func(r *http.Request) bool { return strings.HasPrefix(r.URL.EscapedPath(), prefix) }
}

// Store is the metadata store.
func (s *Server) Store() store.Store { return s.store }

// Service is the key service.
func (s *Server) Service() *service.Service { return s.svc }

// Serve listens on the configured address and serves until ctx ends; then
// it stops accepting, lets requests in flight finish within the shutdown
// timeout, and returns. ready, if not nil, receives the bound address.
func (s *Server) Serve(ctx context.Context, ready func(addr net.Addr)) error {
	ln, err := net.Listen("tcp", s.cfg.Server.Listen)
	if err != nil {
		return err
	}
	return s.ServeListener(ctx, ln, ready)
}

// ServeListener is Serve on a listener bound already (keygrid-hsm serve
// binds before it writes the data directory); it closes ln.
func (s *Server) ServeListener(ctx context.Context, ln net.Listener, ready func(addr net.Addr)) (err error) {
	if addr := s.cfg.Debug.PprofListen; addr != "" {
		stop, err := servePprof(addr, s.log)
		if err != nil {
			ln.Close()
			return err
		}
		defer stop()
	}
	ln = s.secureListener(ln)
	c := s.cfg.Server
	hs := &http.Server{
		Handler:           s.frontEnds,
		ReadHeaderTimeout: c.ReadHeaderTimeout.D(),
		ReadTimeout:       c.ReadTimeout.D(),
		WriteTimeout:      c.WriteTimeout.D(),
		IdleTimeout:       c.IdleTimeout.D(),
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	s.log.Info("keygrid-hsm serving", "addr", ln.Addr().String(), "tls", s.tls != nil, "providers", s.svc.ProviderNames(),
		"storage", s.cfg.Storage.Driver, "data_dir", s.cfg.DataDir)
	if ready != nil {
		ready(ln.Addr())
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down: draining requests in flight", "timeout", c.ShutdownTimeout.D().String())
	sctx, cancel := context.WithTimeout(context.Background(), c.ShutdownTimeout.D())
	defer cancel()
	err = hs.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("shutdown deadline passed with requests still in flight; closing them")
		hs.Close()
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		return serr
	}
	return nil
}

// Close stops the background work, then closes the providers, the audit
// log and the store, in that order.
func (s *Server) Close() error {
	if s.stop != nil {
		s.stop()
		<-s.done
		s.stop = nil
	}
	var errs []error
	if s.audit != nil {
		s.closeCheckpoints() // while the providers are open
	}
	if s.svc != nil {
		errs = append(errs, s.svc.Close())
	}
	if s.audit != nil {
		errs = append(errs, s.audit.Close())
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
	}
	return errors.Join(errs...)
}
