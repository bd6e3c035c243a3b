package metrics

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The hot path counts every request and operation. A CounterVec's
// WithLabelValues hashes the label values and takes a lock on each call;
// the children are few (routes × statuses, operations × providers ×
// algorithms), so each is looked up once and then found in a map read
// without a lock.

// children is a copy-on-write map from a label tuple to a vector's child.
type children[K comparable, V any] struct {
	m  atomic.Pointer[map[K]V]
	mu sync.Mutex
}

// maxChildren bounds a cache; past it, lookups go to the vector (the
// label values are server-chosen, so this is never reached in practice).
const maxChildren = 4096

func (c *children[K, V]) get(k K, mk func() V) V {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if v, ok := (*old)[k]; ok {
			return v
		}
		if len(*old) >= maxChildren {
			return mk()
		}
	}
	v := mk()
	m := grown(old)
	m[k] = v
	c.m.Store(&m)
	return v
}

func grown[K comparable, V any](old *map[K]V) map[K]V {
	if old == nil {
		return map[K]V{}
	}
	m := make(map[K]V, len(*old)+1)
	for k, v := range *old {
		m[k] = v
	}
	return m
}

type httpLabels struct {
	route  string
	status int
}

type opLabels struct {
	operation, provider, algorithm string
}

// opChildren are the series of one (operation, provider, algorithm).
type opChildren struct {
	success, failure prometheus.Counter
	duration         prometheus.Observer
}

type errLabels struct {
	opLabels
	code string
}

// caches hold the children of the hot-path vectors.
type caches struct {
	http children[httpLabels, prometheus.Counter]
	ops  children[opLabels, *opChildren]
	errs children[errLabels, prometheus.Counter]
}

// CountHTTPRequest counts one request of route answered with status
// (keygrid_http_requests_total).
func (m *Metrics) CountHTTPRequest(route string, status int) {
	m.cache.http.get(httpLabels{route, status}, func() prometheus.Counter {
		return m.HTTPRequests.WithLabelValues(route, strconv.Itoa(status))
	}).Inc()
}

// ObserveOperation counts one key operation and its latency
// (keygrid_operations_total, keygrid_operation_duration_seconds) and, when
// it failed, its error code (keygrid_operation_errors_total).
func (m *Metrics) ObserveOperation(operation, provider, algorithm string, d time.Duration, failed bool, code string) {
	l := opLabels{operation, provider, algorithm}
	c := m.cache.ops.get(l, func() *opChildren {
		return &opChildren{
			success:  m.Operations.WithLabelValues(operation, provider, algorithm, "success"),
			failure:  m.Operations.WithLabelValues(operation, provider, algorithm, "failure"),
			duration: m.Duration.WithLabelValues(operation, provider, algorithm),
		}
	})
	if failed {
		m.cache.errs.get(errLabels{l, code}, func() prometheus.Counter {
			return m.Errors.WithLabelValues(operation, provider, algorithm, code)
		}).Inc()
		c.failure.Inc()
	} else {
		c.success.Inc()
	}
	c.duration.Observe(d.Seconds())
}
