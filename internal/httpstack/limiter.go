package httpstack

import (
	"sync"
	"time"
)

// Limiter is a set of token buckets by key (a principal, a client address).
// It is safe for concurrent use.
type Limiter struct {
	mu      sync.Mutex
	buckets map[string]*bucket
	max     int // entries before idle buckets are swept
	now     func() time.Time
}

type bucket struct {
	tokens  float64
	last    time.Time
	limited bool // the last take was refused
}

// NewLimiter returns a limiter that keeps up to max buckets; beyond that,
// buckets that have refilled are dropped (they hold no state worth
// keeping).
func NewLimiter(max int) *Limiter {
	return &Limiter{buckets: map[string]*bucket{}, max: max, now: time.Now}
}

// Take takes a token from key's bucket (rate per second, burst size). When
// none is left it returns false, the wait for the next token, and whether
// this is the first refusal since the last success. rate <= 0 means no
// limit.
func (l *Limiter) Take(key string, rate float64, burst int) (ok bool, wait time.Duration, first bool) {
	if rate <= 0 {
		return true, 0, false
	}
	burst = max(burst, 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= l.max {
			l.sweep(now, rate, burst)
		}
		b = &bucket{tokens: float64(burst), last: now}
		l.buckets[key] = b
	}
	b.tokens = min(float64(burst), b.tokens+now.Sub(b.last).Seconds()*rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		b.limited = false
		return true, 0, false
	}
	first = !b.limited
	b.limited = true
	return false, time.Duration((1 - b.tokens) / rate * float64(time.Second)), first
}

// sweep drops buckets that have refilled; if that frees nothing, it starts
// over.
func (l *Limiter) sweep(now time.Time, rate float64, burst int) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*rate >= float64(burst) {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) >= l.max {
		clear(l.buckets)
	}
}
