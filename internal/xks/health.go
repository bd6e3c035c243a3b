package xks

import (
	"context"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// GetHealthStatus is deep: each provider that can serve XKS keys (every one
// with AES-GCM) is checked with a real AES-GCM round trip on its own probe
// key (service.ProbeAESGCM, never a customer key), combined with the
// provider's health as the service's background checker sees it. Probe
// results are reused for probeTTL and run in the background when stale, so
// an answer takes a few milliseconds; one older than the specification's
// minute is never used.

// Health states of ekmFleetDetails.
const (
	ekmActive      = "ACTIVE"
	ekmDegraded    = "DEGRADED"
	ekmUnavailable = "UNAVAILABLE"
)

const (
	// defaultProbeTTL is how long a probe result is reused.
	defaultProbeTTL = 10 * time.Second
	// maxProbeAge is the oldest result ever used (the specification's
	// bound on a cached health check).
	maxProbeAge = time.Minute
	// probeWait is how long an answer waits for a fresh probe.
	probeWait = 100 * time.Millisecond
	// probeTimeout bounds one probe.
	probeTimeout = 3 * time.Second
	// maxFleet is the specification's bound on ekmFleetDetails.
	maxFleet = 10
)

// prober runs and caches each provider's probe, one at a time per provider.
type prober struct {
	svc Service
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	results map[string]*probeResult
}

type probeResult struct {
	at      time.Time // zero: never finished
	err     error
	running chan struct{} // non-nil while a probe runs; closed when it ends
}

func newProber(svc Service, ttl time.Duration, now func() time.Time) *prober {
	if ttl <= 0 || ttl > maxProbeAge {
		ttl = defaultProbeTTL
	}
	return &prober{svc: svc, ttl: ttl, now: now, results: map[string]*probeResult{}}
}

// state returns the last probe's outcome for provider name, starting a new
// probe when it is stale and waiting a little for it.
func (p *prober) state(ctx context.Context, name string) error {
	p.mu.Lock()
	r := p.results[name]
	if r == nil {
		r = &probeResult{}
		p.results[name] = r
	}
	if !r.at.IsZero() && p.now().Sub(r.at) < p.ttl {
		err := r.err
		p.mu.Unlock()
		return err
	}
	if r.running == nil {
		r.running = make(chan struct{})
		go p.run(name, r, r.running)
	}
	done := r.running
	p.mu.Unlock()

	wait := time.NewTimer(probeWait)
	defer wait.Stop()
	select {
	case <-done:
	case <-wait.C:
	case <-ctx.Done():
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case r.at.IsZero():
		return kgerr.New(kgerr.KindTimeout, "the provider's first health probe has not finished")
	case p.now().Sub(r.at) > maxProbeAge:
		return kgerr.New(kgerr.KindTimeout, "the provider's health probe has not finished for a minute")
	}
	return r.err
}

func (p *prober) run(name string, r *probeResult, done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	err := p.svc.ProbeAESGCM(ctx, name)
	p.mu.Lock()
	r.at, r.err, r.running = p.now(), err, nil
	p.mu.Unlock()
	close(done)
}

// fleet is the GetHealthStatus answer: one entry per provider that can
// serve XKS keys.
func (h *Handler) fleet(ctx context.Context) (*healthResponse, error) {
	var details []ekmDetail
	types := map[string]bool{}
	for _, pi := range h.svc.Providers(ctx) {
		if pi.Capabilities.CheckAlgorithm(alg.A256GCM) != nil {
			continue
		}
		ph, err := h.svc.ProviderHealth(ctx, pi.Name)
		if err != nil {
			return nil, err
		}
		status := ekmActive
		switch {
		case ph.State == service.StateUnavailable:
			status = ekmUnavailable
		case h.probe.state(ctx, pi.Name) != nil:
			status = ekmUnavailable
		case ph.State == service.StateDegraded:
			status = ekmDegraded
		}
		details = append(details, ekmDetail{ID: pi.Name, Model: model(ph), HealthStatus: status})
		types[pi.Type] = true
	}
	if len(details) == 0 {
		return nil, kgerr.New(kgerr.KindInternal, "no provider of this gateway does AES-GCM: no XKS key can be served")
	}
	sort.Slice(details, func(i, j int) bool { return details[i].ID < details[j].ID })
	if len(details) > maxFleet {
		details = details[:maxFleet]
	}
	var ts []string
	for t := range types {
		ts = append(ts, t)
	}
	sort.Strings(ts)
	return &healthResponse{
		XksProxyFleetSize: 1,
		XksProxyVendor:    "KeyGrid",
		XksProxyModel:     "KeyGrid HSM " + h.version,
		EkmVendor:         "KeyGrid HSM gateway (" + strings.Join(ts, ", ") + ")",
		EkmFleetDetails:   details,
	}, nil
}

// model describes a provider for ekmFleetDetails: its type and, for
// PKCS#11, the module and token.
func model(ph *service.ProviderHealth) string {
	m := ph.Type
	if lib, ok := ph.Details["library"].(string); ok && lib != "" {
		m += " " + filepath.Base(lib)
	}
	if tok, ok := ph.Details["token_label"].(string); ok && tok != "" {
		m += " token " + tok
	}
	if ph.Type == "software" {
		m = "KeyGrid software keystore"
	}
	return m
}
