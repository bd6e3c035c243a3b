// Package httpstack is the HTTP machinery every front end of KeyGrid HSM
// shares: request ids, the request deadline, the body cap and strict JSON
// decoding, the access log line, HTTP metrics, panic recovery,
// per-principal rate limits, per-address limits on failed authentications,
// and the TLS client-certificate chains a principal is found by.
//
// It is protocol-neutral: it knows no wire error body. A front end (the
// REST API, the XKS proxy API, ...) plugs in its own pieces with a
// FrontEnd: how it renders an error, how it authenticates a request, which
// requests need a credential, and the route label of a request. Errors the
// stack makes itself are kgerr errors (RATE_LIMITED with RetryAfter,
// PAYLOAD_TOO_LARGE, INVALID_INPUT, INTERNAL_ERROR), which each front end
// maps with its own table.
//
// One Stack serves every front end of a server, so a principal has one rate
// limit and an address one budget of failed authentications whichever front
// end it calls.
package httpstack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/metrics"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// Options configure a Stack. Zero values take the defaults noted.
type Options struct {
	Logger *slog.Logger // default slog.Default()
	// Metrics counts requests (keygrid_http_requests_total{route,status});
	// nil: not counted.
	Metrics *metrics.Metrics
	// Timeout bounds each request's work (0: no deadline of the stack's).
	Timeout time.Duration
	// MaxBody caps request bodies, 413 beyond (default 1 MiB).
	MaxBody int64
	// MaxJSONDepth caps the nesting of JSON bodies (default 16).
	MaxJSONDepth int
	// RatePerPrincipal and Burst are a principal's default token bucket
	// (rate <= 0: no limit); a principal's own RatePerSecond and Burst
	// override them.
	RatePerPrincipal float64
	Burst            int
	// AuthFailureRate and AuthFailureBurst bound failed authentications per
	// client address (rate <= 0: no limit).
	AuthFailureRate  float64
	AuthFailureBurst int
	// AuditRefusal audits a request the stack refused before any service
	// operation saw it (a malformed or oversized body, a rate limit),
	// with the caller in ctx; detail is server-chosen text (the route and
	// the reason, with a count when coalesced). nil: not audited.
	AuditRefusal func(ctx context.Context, detail string, err error)
}

// Stack is the shared machinery; Wrap puts it around a front end.
type Stack struct {
	o                    Options
	principals, failures *Limiter
	refusals             *refusals
	limits               atomic.Pointer[Limits]
}

// Limits are the rate limits of a Stack, replaceable while it serves
// (SetLimits).
type Limits struct {
	RatePerPrincipal float64
	Burst            int
	AuthFailureRate  float64
	AuthFailureBurst int
}

// SetLimits replaces the default rate limits (a configuration reload).
func (s *Stack) SetLimits(l Limits) { s.limits.Store(&l) }

// New returns a stack.
func New(o Options) *Stack {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxBody <= 0 {
		o.MaxBody = 1 << 20
	}
	if o.MaxJSONDepth <= 0 {
		o.MaxJSONDepth = 16
	}
	s := &Stack{o: o, principals: NewLimiter(1 << 16), failures: NewLimiter(1 << 14), refusals: newRefusals(o.AuditRefusal)}
	s.SetLimits(Limits{RatePerPrincipal: o.RatePerPrincipal, Burst: o.Burst, AuthFailureRate: o.AuthFailureRate, AuthFailureBurst: o.AuthFailureBurst})
	return s
}

// FrontEnd is what a front end plugs into the stack.
type FrontEnd struct {
	// Name names the front end in the access log ("rest", "xks").
	Name string
	// Fail writes err in the front end's error format. Required.
	Fail func(w http.ResponseWriter, r *http.Request, err error)
	// Route labels a request for metrics, logs and audit details: the
	// route pattern it matches, "" when none ("unmatched"). nil: every
	// request is "unmatched".
	Route func(r *http.Request) string
	// Protected reports whether a request needs a credential, given the
	// route Route found for it ("" none). nil: every request does.
	Protected func(r *http.Request, route string) bool
	// Authenticate finds the principal of a protected request by the front
	// end's own scheme. A refused credential is a KindUnauthenticated
	// *kgerr.Error whose Cause says why (audited, never the credential) and
	// whose Message is public; only those count against the client
	// address's budget of failures. Any other error is passed to Fail as
	// is. It may read the body (capped) if it leaves r.Body readable for
	// the handler. nil: protected requests are refused.
	Authenticate func(r *http.Request) (*auth.Principal, error)
	// AuthFailed audits a refused credential; detail is the route and why.
	// nil: not audited.
	AuthFailed func(ctx context.Context, detail string)
}

// Wrap returns h with the stack around it, in this order: the request id
// (always made by the server and answered in X-Request-Id; a client's own
// X-Request-Id, when valid (ClientRequestID), is kept beside it and echoed
// in X-Client-Request-Id), the caller (request id, client address) in the context for the
// service, panic recovery (fe.Fail with INTERNAL_ERROR), metrics and an
// access log line, the deadline, the body cap, then for protected
// requests authentication, the per-address failure limit and the
// per-principal rate limit, after which the caller carries the principal.
func (s *Stack) Wrap(fe FrontEnd, h http.Handler) http.Handler {
	if fe.Fail == nil {
		panic("httpstack: front end " + fe.Name + " has no Fail")
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rid, crid := newRequestID(), ClientRequestID(r)
		hdr := w.Header()
		hdr["X-Request-Id"] = []string{rid} // canonical names: Set without its canonicalization
		if crid != "" {
			hdr["X-Client-Request-Id"] = []string{crid}
		}
		ctx := r.Context()
		if s.o.Timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, s.o.Timeout)
			defer cancel()
		}
		matched := ""
		if fe.Route != nil {
			matched = fe.Route(r)
		}
		route := matched
		if route == "" {
			route = "unmatched"
		}
		ctx = context.WithValue(ctx, routeKey{}, route)
		// One caller for the whole request, in the context by reference:
		// authentication fills in the principal without another copy of
		// the request.
		caller := &service.Caller{RequestID: rid, ClientRequestID: crid, ClientAddr: r.RemoteAddr}
		r = r.WithContext(service.WithCallerRef(ctx, caller))
		sw := &statusWriter{ResponseWriter: w}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(sw, r.Body, s.o.MaxBody)
		}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				fe.Fail(sw, r, kgerr.Wrap(kgerr.KindInternal, fmt.Errorf("panic: %v", p), "internal error"))
			}
			s.logRequest(r, fe.Name, route, caller.Principal, sw.status, start)
		}()
		if fe.Protected == nil || fe.Protected(r, matched) {
			p, err := s.authenticate(fe, r, route)
			if err != nil {
				fe.Fail(sw, r, err)
				return
			}
			caller.Principal, caller.Auth = p.Name, p
			if err := s.rateLimit(p); err != nil {
				s.refusals.refused(r, err)
				fe.Fail(sw, r, err)
				return
			}
		}
		h.ServeHTTP(sw, r)
	})
}

// logRequest counts the request and writes its access line: debug when it
// succeeded, info for a 4xx, warn for a 5xx.
func (s *Stack) logRequest(r *http.Request, frontEnd, route, principal string, status int, start time.Time) {
	if s.o.Metrics != nil {
		s.o.Metrics.CountHTTPRequest(route, status)
	}
	level := slog.LevelDebug
	switch {
	case status >= 500:
		level = slog.LevelWarn
	case status >= 400:
		level = slog.LevelInfo
	}
	if s.o.Logger.Enabled(r.Context(), level) { // the access line allocates: build it only when it is kept
		c := service.CallerFrom(r.Context())
		s.o.Logger.Log(r.Context(), level, "request", "request_id", c.RequestID, "client_request_id", c.ClientRequestID, "front_end", frontEnd,
			"method", r.Method, "route", route, "principal", principal, "status", status,
			"duration_ms", float64(time.Since(start).Microseconds())/1000)
	}
}

// RequestID returns the request id Wrap gave the request of ctx.
func RequestID(ctx context.Context) string { return service.CallerFrom(ctx).RequestID }

// ClientRequestID returns the request id a client sent in X-Request-Id
// when it is 1 to 64 characters of [A-Za-z0-9._:-] and the header is sent
// once, else "". It is only ever recorded beside the server's own id (the
// id of every audit record and error body), since anyone can send any id,
// another request's included.
func ClientRequestID(r *http.Request) string {
	v := r.Header.Values("X-Request-Id")
	if len(v) != 1 || !validClientRequestID.MatchString(v[0]) {
		return ""
	}
	return v[0]
}

var validClientRequestID = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)

func newRequestID() string {
	var b [12]byte
	var x [24]byte
	_, _ = rand.Read(b[:])
	hex.Encode(x[:], b[:])
	return string(x[:])
}

// SetRetryAfter sets the Retry-After header to d in whole seconds, rounded
// up, at least 1.
func SetRetryAfter(w http.ResponseWriter, d time.Duration) {
	secs := int(d.Seconds() + 0.999)
	if secs < 1 {
		secs = 1
	}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
}

// statusWriter remembers the status for logs and metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
