// Package metrics holds the Prometheus metrics of KeyGrid HSM on a registry
// of its own.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is the set of collectors.
type Metrics struct {
	Registry *prometheus.Registry

	// Operations counts key operations by operation, provider, algorithm
	// and outcome (success | failure).
	Operations *prometheus.CounterVec
	// Errors counts failed operations by operation, provider, algorithm
	// and error code.
	Errors *prometheus.CounterVec
	// Duration is the latency of operations by operation, provider and
	// algorithm.
	Duration *prometheus.HistogramVec
	// HTTPRequests counts HTTP requests by route and status code.
	HTTPRequests *prometheus.CounterVec
	// AuditFailures counts audit records that could not be written.
	AuditFailures prometheus.Counter

	cache caches
}

// New makes and registers the collectors.
func New(version string) *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		Operations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygrid_operations_total", Help: "Key operations by operation, provider, algorithm and outcome.",
		}, []string{"operation", "provider", "algorithm", "outcome"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygrid_operation_errors_total", Help: "Failed key operations by error code.",
		}, []string{"operation", "provider", "algorithm", "code"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keygrid_operation_duration_seconds",
			Help:    "Latency of key operations.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"operation", "provider", "algorithm"}),
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygrid_http_requests_total", Help: "HTTP requests by route and status.",
		}, []string{"route", "status"}),
		AuditFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keygrid_audit_write_failures_total", Help: "Audit records that could not be written (the operation was refused).",
		}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keygrid_build_info", Help: "Build information.",
	}, []string{"version"})
	build.WithLabelValues(version).Set(1)
	r.MustRegister(m.Operations, m.Errors, m.Duration, m.HTTPRequests, m.AuditFailures, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}
