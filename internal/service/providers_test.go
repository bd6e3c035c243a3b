package service

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// TestProvidersAndReady checks the provider listing, one provider's
// health, and readiness with the store up and closed.
func TestProvidersAndReady(t *testing.T) {
	vault := openSoftware(t, "vault")
	f := newFixture(t, withProvider(vault))
	ctx := context.Background()
	ps := f.svc.Providers(ctx)
	if len(ps) != 2 || ps[0].Name != "software" || ps[1].Name != "vault" {
		t.Fatalf("providers %+v", ps)
	}
	for _, p := range ps {
		if p.Type != "software" || !p.Healthy || !slices.Contains(p.Capabilities.Algorithms, "EdDSA") {
			t.Fatalf("provider %+v", p)
		}
	}
	h, err := f.svc.ProviderHealth(ctx, "vault")
	wantErr(t, err, nil)
	// Healthy since it opened (the clock's time), never checked yet.
	if h.Name != "vault" || h.State != StateHealthy || !h.Healthy || h.LastCheck != nil || h.LastSuccess == nil ||
		!h.LastSuccess.Equal(f.clock.Now()) || h.LastErrorKind != "" || h.Details != nil {
		t.Fatalf("health %+v", h)
	}
	_, err = f.svc.ProviderHealth(ctx, "nope")
	wantErr(t, err, kgerr.ErrProviderNotFound)

	ready, st := f.svc.Ready(ctx)
	if !ready || len(st) != 2 || !st[0].Healthy || st[0].State != StateHealthy {
		t.Fatalf("ready %v %+v", ready, st)
	}
	if got := f.metric("keygrid_provider_up", map[string]string{"provider": "vault", "type": "software"}); got != 1 {
		t.Fatalf("keygrid_provider_up %v", got)
	}

	f.store.Close()
	ready, st = f.svc.Ready(ctx)
	if ready || len(st) != 3 || st[2].Name != "metadata-store" || st[2].State != StateUnavailable || st[2].Healthy {
		t.Fatalf("ready with the store closed: %v %+v", ready, st)
	}
}

// TestHealthChecks runs the background checker against a provider that
// works, then is closed (its real CheckHealth fails), and one whose check
// hangs; and returns when its context ends.
func TestHealthChecks(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	var slow *faultProvider
	f := newFixture(t, func(f *fixture, o *Options) {
		slow = &faultProvider{Provider: openSoftware(t, "hung")}
		o.Providers = append(o.Providers, slow)
		o.HealthTimeout = 100 * time.Millisecond
	})
	slow.set(func(p *faultProvider) {
		p.health = func(context.Context) error { <-hang; return nil } // ignores its deadline
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		f.svc.RunHealthChecks(ctx, 10*time.Millisecond)
		close(done)
	}()
	health := func(name string) *ProviderHealth {
		h, err := f.svc.ProviderHealth(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	waitFor(t, "a first check of software", func() bool { return health("software").LastCheck != nil })
	if h := health("software"); h.State != StateHealthy || !h.Healthy || h.LastSuccess == nil || h.LastError != "" {
		t.Fatalf("software %+v", h)
	}
	waitFor(t, "the hung check to time out", func() bool { return health("hung").State == StateUnavailable })
	if h := health("hung"); h.Healthy || h.LastErrorKind != kgerr.KindTimeout || h.LastCheck == nil {
		t.Fatalf("hung %+v", h)
	}
	if ready, _ := f.svc.Ready(context.Background()); ready {
		t.Fatal("ready with a hung provider")
	}

	f.soft.Close()
	waitFor(t, "the closed provider to be unavailable", func() bool { return health("software").State == StateUnavailable })
	if h := health("software"); h.LastErrorKind != kgerr.KindUnavailable || h.LastError == "" {
		t.Fatalf("closed %+v", h)
	}
	if ps := f.svc.Providers(context.Background()); ps[1].Name != "software" || ps[1].Healthy {
		t.Fatalf("providers %+v", ps)
	}
	if got := f.metric("keygrid_provider_up", map[string]string{"provider": "software"}); got != 0 {
		t.Fatalf("keygrid_provider_up %v", got)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("RunHealthChecks did not return after its context ended (a hung check must not hold it)")
	}
}

// TestHealthStats checks the health of a provider with a session pool (its
// statistics injected): requests that gave up waiting degrade it, a
// provider that reports itself down is unavailable at once, and the
// numbers reach the health details and the metrics.
func TestHealthStats(t *testing.T) {
	var sp *statsProvider
	f := newFixture(t, func(f *fixture, o *Options) {
		sp = &statsProvider{faultProvider: &faultProvider{Provider: openSoftware(t, "pool")}}
		o.Providers = []provider.Provider{sp}
		o.HealthTimeout = 2 * time.Second // generous: the slow check below must end before it
	})
	reset := time.Date(2029, 12, 31, 0, 0, 0, 0, time.UTC)
	stats := provider.Stats{SessionsInUse: 2, SessionsIdle: 3, SessionsMax: 8, SessionsOpen: 6, Waits: 4, WaitSeconds: 0.5,
		Resets: 1, LastReset: reset, Up: true, Errors: map[string]uint64{"CKR_DEVICE_ERROR": 2}, Info: map[string]any{"token_label": "kg"}}
	sp.setStats(stats)
	ctx := context.Background()
	f.svc.check(ctx, sp)
	h, err := f.svc.ProviderHealth(ctx, "pool")
	wantErr(t, err, nil)
	if h.State != StateHealthy || h.Details["sessions_in_use"] != 2 || h.Details["token_label"] != "kg" ||
		h.Details["last_reset"] != reset || h.Details["module_resets"] != uint64(1) {
		t.Fatalf("health %+v", h)
	}
	for _, c := range []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"keygrid_provider_up", map[string]string{"provider": "pool"}, 1},
		{"keygrid_provider_sessions", map[string]string{"provider": "pool", "state": "idle"}, 3},
		{"keygrid_provider_sessions", map[string]string{"provider": "pool", "state": "max"}, 8},
		{"keygrid_provider_session_waits_total", map[string]string{"provider": "pool"}, 4},
		{"keygrid_provider_session_wait_seconds_total", map[string]string{"provider": "pool"}, 0.5},
		{"keygrid_provider_resets_total", map[string]string{"provider": "pool"}, 1},
		{"keygrid_provider_last_reset_timestamp_seconds", map[string]string{"provider": "pool"}, float64(reset.Unix())},
		{"keygrid_provider_hsm_errors_total", map[string]string{"provider": "pool", "code": "CKR_DEVICE_ERROR"}, 2},
	} {
		if got := f.metric(c.metric, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.metric, c.labels, got, c.want)
		}
	}

	// Requests gave up waiting for a session since the last check.
	stats.WaitTimeouts = 3
	sp.setStats(stats)
	f.svc.check(ctx, sp)
	if h, _ := f.svc.ProviderHealth(ctx, "pool"); h.State != StateDegraded || !h.Healthy {
		t.Fatalf("after wait timeouts: %+v", h)
	}
	// None since: healthy again.
	f.svc.check(ctx, sp)
	if h, _ := f.svc.ProviderHealth(ctx, "pool"); h.State != StateHealthy {
		t.Fatalf("after a quiet check: %+v", h)
	}
	// The provider lost its HSM during a request: unavailable before the
	// next check.
	stats.Up = false
	sp.setStats(stats)
	if h, _ := f.svc.ProviderHealth(ctx, "pool"); h.State != StateUnavailable || h.Healthy {
		t.Fatalf("down: %+v", h)
	}
	if ready, st := f.svc.Ready(ctx); ready || st[0].State != StateUnavailable {
		t.Fatalf("ready %v %+v", ready, st)
	}
	if got := f.metric("keygrid_provider_up", map[string]string{"provider": "pool"}); got != 0 {
		t.Fatalf("keygrid_provider_up %v", got)
	}
	// A slow check (over half its deadline) is degraded.
	stats.Up = true
	sp.setStats(stats)
	sp.set(func(p *faultProvider) {
		p.health = func(context.Context) error { time.Sleep(f.svc.healthTO/2 + 50*time.Millisecond); return nil }
	})
	f.svc.check(ctx, sp)
	if h, _ := f.svc.ProviderHealth(ctx, "pool"); h.State != StateDegraded || h.Latency < time.Second {
		t.Fatalf("slow: %+v", h)
	}
}

// TestProviderEvent checks the audit record of a provider's event.
func TestProviderEvent(t *testing.T) {
	f := newFixture(t)
	at := time.Date(2030, 1, 1, 12, 0, 0, 0, time.FixedZone("X", 7200))
	f.svc.ProviderEvent("software", provider.Event{Kind: "reset", Time: at, Duration: 1500 * time.Microsecond, Detail: "module reset"})
	r := f.last()
	wantRecord(t, r, audit.Event{Operation: "provider_reset", Outcome: audit.OutcomeSuccess, Provider: "software"})
	if !r.Time.Equal(at) || r.DurationMS != 1.5 || r.Detail != "module reset" {
		t.Fatalf("record %+v", r)
	}
	f.svc.ProviderEvent("software", provider.Event{Kind: "reset_failed", Err: kgerr.New(kgerr.KindTimeout, "C_Initialize hung")})
	r = f.last()
	wantRecord(t, r, audit.Event{Operation: "provider_reset_failed", Outcome: audit.OutcomeFailure, ErrorCode: string(kgerr.KindTimeout)})
	if !r.Time.Equal(f.clock.Now()) || strings.Contains(r.Detail, "C_Initialize") {
		t.Fatalf("record %+v", r)
	}
}

// TestClose closes the providers.
func TestClose(t *testing.T) {
	f := newFixture(t)
	wantErr(t, f.svc.Close(), nil)
	if err := f.soft.CheckHealth(context.Background()); !errors.Is(err, kgerr.ErrServiceUnavailable) {
		t.Fatalf("provider not closed: %v", err)
	}
}
