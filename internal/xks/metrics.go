package xks

import (
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keygrid/keygrid-hsm/internal/metrics"
)

// xksMetrics count XKS calls by store, operation and error name.
type xksMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics(m *metrics.Metrics) (*xksMetrics, error) {
	x := &xksMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygrid_xks_requests_total", Help: "XKS proxy calls by store, operation and XKS error name (\"\" on success).",
		}, []string{"store", "operation", "error"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keygrid_xks_request_duration_seconds", Help: "Latency of XKS proxy calls (KMS gives up at 250 ms).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .15, .2, .25, .5, 1},
		}, []string{"store", "operation"}),
	}
	if m == nil {
		return x, nil
	}
	for _, c := range []prometheus.Collector{x.requests, x.duration} {
		if err := m.Registry.Register(c); err != nil {
			return nil, err
		}
	}
	return x, nil
}

// observe counts a finished call and writes its log line: the XKS access
// log, with KMS's request id so that a CloudTrail entry finds its line.
// Successes log at debug, the caller's errors at info, ours at warn.
func (h *Handler) observe(r *http.Request, c *call) {
	d := h.now().Sub(c.start)
	storeName, op := "unmatched", "unmatched"
	if c.st != nil {
		storeName, op = c.st.cfg.Name, c.op
	}
	h.metrics.requests.WithLabelValues(storeName, op, c.errName).Inc()
	h.metrics.duration.WithLabelValues(storeName, op).Observe(d.Seconds())
	level := slog.LevelDebug
	switch {
	case c.status >= 500:
		level = slog.LevelWarn
	case c.status >= 400:
		level = slog.LevelInfo
	}
	if !h.log.Enabled(r.Context(), level) {
		return
	}
	attrs := []any{"request_id", c.rid, "store", storeName, "operation", op, "status", c.status,
		"duration_ms", float64(d.Microseconds()) / 1000}
	if c.keyID != "" {
		attrs = append(attrs, "key", c.keyID)
	}
	if c.req != nil && c.req.md != nil {
		attrs = append(attrs, "kms_request_id", c.req.md.kmsRequestID(), "kms_operation", c.req.md.kmsOperation())
	}
	if c.errName != "" {
		attrs = append(attrs, "error", c.errName)
	}
	h.log.Log(r.Context(), level, "xks request", attrs...)
}

// logFailure logs the private cause of a server-side failure (the client
// sees only the public message).
func (h *Handler) logFailure(r *http.Request, c *call, err error) {
	if c.status >= 500 && c.status != http.StatusServiceUnavailable {
		h.log.Error("xks request failed", "request_id", c.rid, "path", r.URL.EscapedPath(), "error", c.errName, "err", err)
	}
}
