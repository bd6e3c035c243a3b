// Package server assembles a KeyGrid HSM server from its configuration:
// metadata store, audit log, providers, key service and HTTP API, and runs
// it until its context ends, then shuts down gracefully.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/api"
	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/metrics"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/xks"
)

// Server is an assembled gateway.
type Server struct {
	cfg     *config.Config
	log     *slog.Logger
	store   store.Store
	audit   *audit.Log
	svc     *service.Service
	handler http.Handler
	tls     *tls.Config // nil: plain HTTP
	// stop ends the background work (health checks, reconciler); done
	// closes when it has ended.
	stop func()
	done chan struct{}
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
	if s.audit, err = audit.OpenWith(cfg.Audit.Path, audit.Options{MaxBytes: cfg.Audit.MaxBytes, Logger: log, SyncInterval: cfg.Audit.FsyncInterval.D()}); err != nil {
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
	bctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop, s.done = stop, make(chan struct{})
	go func() {
		defer close(s.done)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); s.svc.RunReconciler(bctx, cfg.Reconcile.Interval.D()) }()
		go func() { defer wg.Done(); s.svc.RunHealthChecks(bctx, cfg.Health.Interval.D()) }()
		wg.Wait()
	}()
	s.handler = api.New(api.Options{
		Service: s.svc, Metrics: m, Logger: log, Version: version,
		MaxBodyBytes: cfg.Server.MaxBodyBytes, RequestTimeout: cfg.Server.RequestTimeout.D(),
		MaxJSONDepth: cfg.Limits.MaxJSONDepth, Auth: authn,
		ProtectReady: cfg.Auth.ProtectReady, ProtectMetrics: cfg.Auth.ProtectMetrics,
		RatePerPrincipal: cfg.Limits.RatePerPrincipal, Burst: cfg.Limits.Burst,
		AuthFailureRate: cfg.Limits.AuthFailuresPerClient, AuthFailureBurst: cfg.Limits.AuthFailureBurst,
	})
	if len(cfg.XKS.Stores) > 0 {
		xh, err := xks.New(xks.Options{Service: s.svc, Stores: cfg.XKS.Stores, Metrics: m, Logger: log, Version: version})
		if err != nil {
			return nil, err
		}
		s.handler = xksFirst(xh, s.handler, cfg.Server.RequestTimeout.D(), cfg.Server.MaxBodyBytes)
	}
	return s, nil
}

// xksFirst sends XKS requests (a raw path with /kms/xks/v1/ in it) to the
// XKS front end, with the deadline and body cap it takes from the stack in
// front of it, and everything else to the REST API.
func xksFirst(x, rest http.Handler, timeout time.Duration, maxBody int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !xks.Matches(r) {
			rest.ServeHTTP(w, r)
			return
		}
		ctx := r.Context()
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		x.ServeHTTP(w, r.WithContext(ctx))
	})
}

// Handler is the HTTP handler (for tests with httptest).
func (s *Server) Handler() http.Handler { return s.handler }

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
		Handler:           s.handler,
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
