package api

import (
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// protected reports whether a request needs a credential: everything but
// /health, and /ready and /metrics unless configured to.
func (a *API) protected(r *http.Request) bool {
	switch r.URL.Path {
	case "/health":
		return false
	case "/ready":
		return a.protectReady
	case "/metrics":
		return a.protectMetrics
	}
	return true
}

// credential returns the token of a request: a bearer token
// (Authorization: Bearer …) or an API key (X-API-Key). Both at once must be
// the same.
func credential(r *http.Request) (string, error) {
	var bearer string
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			return "", errBadScheme
		}
		bearer = strings.TrimSpace(tok)
	}
	key := strings.TrimSpace(r.Header.Get("X-API-Key"))
	switch {
	case bearer != "" && key != "" && bearer != key:
		return "", errTwoCredentials
	case bearer != "":
		return bearer, nil
	}
	return key, nil
}

var (
	errBadScheme      = errors.New("Authorization header is not \"Bearer <token>\"")
	errTwoCredentials = errors.New("Authorization and X-API-Key carry different credentials")
)

// authenticate finds the request's principal. A failure is audited (why,
// never the credential) and answered 401, or 429 once a client address has
// failed too often.
func (a *API) authenticate(r *http.Request, route string) (*auth.Principal, error) {
	tok, err := credential(r)
	var p *auth.Principal
	if err == nil {
		if a.auth == nil {
			err = auth.ErrBadToken
		} else {
			p, err = a.auth.Authenticate(tok, chainsOf(r))
		}
	}
	if err == nil {
		return p, nil
	}
	host := clientHost(r.RemoteAddr)
	ok, wait, first := a.failures.take(host, a.failRate, a.failBurst)
	if !ok {
		if first {
			a.svc.AuthenticationFailed(r.Context(), route+": authentication failures from this address are rate limited; further ones are not audited one by one")
		}
		e := kgerr.New(kgerr.KindRateLimited, "too many failed authentications from this address; retry later")
		e.RetryAfter = wait
		return nil, e
	}
	a.svc.AuthenticationFailed(r.Context(), route+": "+err.Error())
	msg := "authentication failed: the credential is not valid"
	switch {
	case errors.Is(err, auth.ErrNoCredential):
		msg = "authentication required: send a bearer token (Authorization: Bearer …) or an API key (X-API-Key)"
	case errors.Is(err, auth.ErrUnknownCertificate):
		msg = "authentication failed: the client certificate is not mapped to a principal"
	case errors.Is(err, errBadScheme):
		msg = "authentication failed: the Authorization header must be \"Bearer <token>\""
	case errors.Is(err, errTwoCredentials):
		msg = "authentication failed: Authorization and X-API-Key carry different credentials"
	}
	return nil, kgerr.Wrap(kgerr.KindUnauthenticated, err, msg)
}

func chainsOf(r *http.Request) [][]*x509.Certificate {
	if r.TLS == nil {
		return nil
	}
	return r.TLS.VerifiedChains
}

func clientHost(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// rateLimit takes one request from the principal's bucket.
func (a *API) rateLimit(p *auth.Principal) error {
	rate, burst := a.rate, a.burst
	if p.RatePerSecond != 0 {
		rate = p.RatePerSecond
	}
	if p.Burst != 0 {
		burst = p.Burst
	}
	ok, wait, _ := a.principals.take(p.Name, rate, burst)
	if ok {
		return nil
	}
	e := kgerr.New(kgerr.KindRateLimited, "rate limit of principal "+p.Name+" exceeded; retry later")
	e.RetryAfter = wait
	return e
}

// limiter is a set of token buckets by key.
type limiter struct {
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

func newLimiter(max int) *limiter {
	return &limiter{buckets: map[string]*bucket{}, max: max, now: time.Now}
}

// take takes a token from key's bucket (rate per second, burst size). When
// none is left it returns false, the wait for the next token, and whether
// this is the first refusal since the last success. rate <= 0 means no
// limit.
func (l *limiter) take(key string, rate float64, burst int) (ok bool, wait time.Duration, first bool) {
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

// sweep drops buckets that have refilled (they hold no state worth
// keeping); if that frees nothing, it starts over.
func (l *limiter) sweep(now time.Time, rate float64, burst int) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*rate >= float64(burst) {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) >= l.max {
		clear(l.buckets)
	}
}
