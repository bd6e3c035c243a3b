package httpstack

import (
	"crypto/x509"
	"net"
	"net/http"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// authenticate runs the front end's scheme. A refused credential is
// audited (the route and why, never the credential) and returned as the
// front end made it, or answered RATE_LIMITED once the client address has
// failed too often; then only the first refusal is audited.
func (s *Stack) authenticate(fe FrontEnd, r *http.Request, route string) (*auth.Principal, error) {
	if fe.Authenticate == nil {
		return nil, kgerr.New(kgerr.KindUnauthenticated, "authentication failed: this front end accepts no credential")
	}
	p, err := fe.Authenticate(r)
	if err == nil {
		if p == nil {
			return nil, kgerr.New(kgerr.KindInternal, "internal error")
		}
		return p, nil
	}
	e := kgerr.Classify(err)
	if e.Kind != kgerr.KindUnauthenticated {
		return nil, err
	}
	audit := func(detail string) {
		if fe.AuthFailed != nil {
			fe.AuthFailed(r.Context(), route+": "+detail)
		}
	}
	l := s.limits.Load()
	ok, wait, first := s.failures.Take(clientHost(r.RemoteAddr), l.AuthFailureRate, l.AuthFailureBurst)
	if !ok {
		if first {
			audit("authentication failures from this address are rate limited; further ones are not audited one by one")
		}
		rl := kgerr.New(kgerr.KindRateLimited, "too many failed authentications from this address; retry later")
		rl.RetryAfter = wait
		return nil, rl
	}
	why := e.Message
	if e.Cause != nil {
		why = e.Cause.Error()
	}
	audit(why)
	return nil, err
}

// rateLimit takes one request from the principal's bucket.
func (s *Stack) rateLimit(p *auth.Principal) error {
	l := s.limits.Load()
	rate, burst := l.RatePerPrincipal, l.Burst
	if p.RatePerSecond != 0 {
		rate = p.RatePerSecond
	}
	if p.Burst != 0 {
		burst = p.Burst
	}
	ok, wait, _ := s.principals.Take(p.Name, rate, burst)
	if ok {
		return nil
	}
	e := kgerr.New(kgerr.KindRateLimited, "rate limit of principal "+p.Name+" exceeded; retry later")
	e.RetryAfter = wait
	return e
}

// VerifiedChains returns the client-certificate chains the TLS handshake
// verified (nil without TLS or without a client certificate): what a
// principal is found by when it authenticates with a certificate.
func VerifiedChains(r *http.Request) [][]*x509.Certificate {
	if r.TLS == nil {
		return nil
	}
	return r.TLS.VerifiedChains
}

// clientHost is the host of a client address, the key of its failure
// budget.
func clientHost(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// TakeRate takes one request from p's bucket, for a front end that counts
// the parts of one request as requests (the items of a REST batch). A nil
// principal (an unprotected route) is not limited.
func (s *Stack) TakeRate(p *auth.Principal) error {
	if p == nil {
		return nil
	}
	return s.rateLimit(p)
}
