package service

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// Health states of a provider.
const (
	StateHealthy     = "healthy"
	StateDegraded    = "degraded"
	StateUnavailable = "unavailable"
)

// providerHealth is the cached result of a provider's background checks.
type providerHealth struct {
	name, typ string

	mu           sync.Mutex
	state        string
	reasons      []string // why the last check made the state degraded
	lastErr      error
	lastCheck    time.Time
	lastSuccess  time.Time
	latency      time.Duration
	waitTimeouts uint64 // provider's session wait timeouts at the last check
}

func newProviderHealth(p provider.Provider, now time.Time) *providerHealth {
	// A provider that opened is healthy until a check says otherwise.
	return &providerHealth{name: p.Name(), typ: p.Type(), state: StateHealthy, lastSuccess: now}
}

// record stores the outcome of one check. A check that passes is degraded
// when it was slow (over half its deadline) or when requests gave up
// waiting for a session since the last check.
func (h *providerHealth) record(p provider.Provider, d, timeout time.Duration, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastCheck, h.latency, h.lastErr, h.reasons = time.Now(), d, err, nil
	if err != nil {
		h.state = StateUnavailable
		return
	}
	h.lastSuccess = h.lastCheck
	h.state = StateHealthy
	if d > timeout/2 {
		h.state = StateDegraded
		h.reasons = append(h.reasons, fmt.Sprintf("the health check took %s, over half its %s deadline", d.Round(time.Millisecond), timeout))
	}
	if r, ok := p.(provider.StatsReporter); ok {
		st := r.Stats()
		if st.WaitTimeouts > h.waitTimeouts {
			h.state = StateDegraded
			h.reasons = append(h.reasons, fmt.Sprintf("%d request(s) gave up waiting for an HSM session since the last check",
				st.WaitTimeouts-h.waitTimeouts))
		}
		h.waitTimeouts = st.WaitTimeouts
	}
}

// view renders the cached health. A provider that reports itself down
// (it lost its HSM during a request) is unavailable at once, without
// waiting for the next check.
func (h *providerHealth) view(p provider.Provider) *ProviderHealth {
	h.mu.Lock()
	out := &ProviderHealth{Name: h.name, Type: h.typ, State: h.state, Latency: h.latency, Reasons: slices.Clone(h.reasons)}
	if !h.lastCheck.IsZero() {
		t := h.lastCheck.UTC()
		out.LastCheck = &t
	}
	if !h.lastSuccess.IsZero() {
		t := h.lastSuccess.UTC()
		out.LastSuccess = &t
	}
	if h.lastErr != nil {
		e := kgerr.Classify(h.lastErr)
		out.LastErrorKind, out.LastError = e.Kind, e.Message
	}
	h.mu.Unlock()
	if r, ok := p.(provider.StatsReporter); ok {
		st := r.Stats()
		if !st.Up {
			out.State = StateUnavailable
		}
		out.Details = map[string]any{
			"sessions_in_use": st.SessionsInUse, "sessions_idle": st.SessionsIdle, "sessions_max": st.SessionsMax,
			"sessions_open": st.SessionsOpen, "session_waits": st.Waits, "session_wait_timeouts": st.WaitTimeouts,
			"module_resets": st.Resets, "hsm_errors": st.Errors,
		}
		if !st.LastReset.IsZero() {
			out.Details["last_reset"] = st.LastReset.UTC()
		}
		for k, v := range st.Info {
			out.Details[k] = v
		}
	}
	if r, ok := p.(provider.ClusterReporter); ok {
		if cs, ok := r.ClusterStatus(); ok {
			out.Cluster = &cs
			// A cluster at risk is degraded, never unavailable: the HSMs
			// that are left still serve, and only the provider's own check
			// says they do not.
			if len(cs.Risks) > 0 && out.State == StateHealthy {
				out.State = StateDegraded
			}
			out.Reasons = append(out.Reasons, cs.Risks...)
		}
	}
	out.Healthy = out.State != StateUnavailable
	return out
}

// check runs one health check with its own deadline, so that a hung HSM
// cannot hold the checker: the call is left behind if it does not return.
func (s *Service) check(ctx context.Context, p provider.Provider) {
	ctx, cancel := context.WithTimeout(ctx, s.healthTO)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- p.CheckHealth(ctx) }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		err = kgerr.Wrap(kgerr.KindTimeout, ctx.Err(), "the health check did not finish before its deadline")
	}
	s.health[p.Name()].record(p, time.Since(start), s.healthTO, err)
}

// RunHealthChecks checks every provider at once and then every interval,
// each on its own goroutine, until ctx ends.
func (s *Service) RunHealthChecks(ctx context.Context, interval time.Duration) {
	var wg sync.WaitGroup
	for _, n := range s.names {
		p := s.providers[n]
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				s.check(ctx, p)
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	wg.Wait()
}

// providerCollector exports provider health, pool and recovery numbers at
// scrape time.
type providerCollector struct{ s *Service }

var (
	descUp           = prometheus.NewDesc("keygrid_provider_up", "1 while the provider is not unavailable.", []string{"provider", "type"}, nil)
	descSessions     = prometheus.NewDesc("keygrid_provider_sessions", "HSM sessions by state (in_use, idle, open, max).", []string{"provider", "state"}, nil)
	descWaits        = prometheus.NewDesc("keygrid_provider_session_waits_total", "Session acquisitions that had to wait.", []string{"provider"}, nil)
	descWaitSeconds  = prometheus.NewDesc("keygrid_provider_session_wait_seconds_total", "Total time spent waiting for a session.", []string{"provider"}, nil)
	descWaitTimeouts = prometheus.NewDesc("keygrid_provider_session_wait_timeouts_total", "Requests whose deadline passed while waiting for a session.", []string{"provider"}, nil)
	descResets       = prometheus.NewDesc("keygrid_provider_resets_total", "Module resets (C_Finalize + C_Initialize).", []string{"provider"}, nil)
	descLastReset    = prometheus.NewDesc("keygrid_provider_last_reset_timestamp_seconds", "Time of the last successful module reset.", []string{"provider"}, nil)
	descHostRestarts = prometheus.NewDesc("keygrid_provider_module_host_restarts_total",
		"PKCS#11 module host processes replaced after a hang, a crash or a lost HSM (isolation: process).", []string{"provider"}, nil)
	descHSMErrors = prometheus.NewDesc("keygrid_provider_hsm_errors_total", "HSM failures by PKCS#11 return code.", []string{"provider", "code"}, nil)

	descClusterHSMs      = prometheus.NewDesc("keygrid_cloudhsm_hsms", "HSMs of the provider's CloudHSM cluster by state, as last described.", []string{"provider", "state"}, nil)
	descClusterFailures  = prometheus.NewDesc("keygrid_cloudhsm_describe_failures_total", "DescribeClusters calls that failed (management API unreachable, denied, throttled).", []string{"provider"}, nil)
	descClusterDescribed = prometheus.NewDesc("keygrid_cloudhsm_last_described_timestamp_seconds", "Time of the last successful DescribeClusters.", []string{"provider"}, nil)
)

func (c providerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descSessions, descWaits, descWaitSeconds, descWaitTimeouts, descResets, descLastReset, descHostRestarts, descHSMErrors,
		descClusterHSMs, descClusterFailures, descClusterDescribed} {
		ch <- d
	}
}

func (c providerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, n := range c.s.names {
		p := c.s.providers[n]
		up := 0.0
		if c.s.health[n].view(p).Healthy {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, n, p.Type())
		collectCluster(ch, n, p)
		r, ok := p.(provider.StatsReporter)
		if !ok {
			continue
		}
		st := r.Stats()
		for state, v := range map[string]int{"in_use": st.SessionsInUse, "idle": st.SessionsIdle, "open": st.SessionsOpen, "max": st.SessionsMax} {
			ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(v), n, state)
		}
		ch <- prometheus.MustNewConstMetric(descWaits, prometheus.CounterValue, float64(st.Waits), n)
		ch <- prometheus.MustNewConstMetric(descWaitSeconds, prometheus.CounterValue, st.WaitSeconds, n)
		ch <- prometheus.MustNewConstMetric(descWaitTimeouts, prometheus.CounterValue, float64(st.WaitTimeouts), n)
		ch <- prometheus.MustNewConstMetric(descResets, prometheus.CounterValue, float64(st.Resets), n)
		if st.ModuleHost {
			ch <- prometheus.MustNewConstMetric(descHostRestarts, prometheus.CounterValue, float64(st.ModuleHostRestarts), n)
		}
		if !st.LastReset.IsZero() {
			ch <- prometheus.MustNewConstMetric(descLastReset, prometheus.GaugeValue, float64(st.LastReset.Unix()), n)
		}
		for code, v := range st.Errors {
			ch <- prometheus.MustNewConstMetric(descHSMErrors, prometheus.CounterValue, float64(v), n, code)
		}
	}
}

// collectCluster exports a provider's view of its CloudHSM cluster. The HSM
// counts appear only once a describe succeeded: an unknown cluster is not
// one with no ACTIVE HSM.
func collectCluster(ch chan<- prometheus.Metric, name string, p provider.Provider) {
	r, ok := p.(provider.ClusterReporter)
	if !ok {
		return
	}
	cs, ok := r.ClusterStatus()
	if !ok {
		return
	}
	ch <- prometheus.MustNewConstMetric(descClusterFailures, prometheus.CounterValue, float64(cs.Failures), name)
	if cs.DescribedAt.IsZero() {
		return
	}
	ch <- prometheus.MustNewConstMetric(descClusterDescribed, prometheus.GaugeValue, float64(cs.DescribedAt.Unix()), name)
	for state, v := range cs.HSMCounts {
		ch <- prometheus.MustNewConstMetric(descClusterHSMs, prometheus.GaugeValue, float64(v), name, state)
	}
}
