package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

type ridKey struct{}

func requestID(ctx context.Context) string {
	s, _ := ctx.Value(ridKey{}).(string)
	return s
}

var validRequestID = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

func newRequestID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
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

// middleware adds, in order: the request id (X-Request-Id taken when sane,
// else made, and echoed), panic recovery, metrics and an access log line,
// the request deadline, authentication and the per-principal rate limit
// (auth.go), and the caller (principal included) for the service.
func (a *API) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rid := r.Header.Get("X-Request-Id")
		if !validRequestID.MatchString(rid) {
			rid = newRequestID()
		}
		w.Header().Set("X-Request-Id", rid)
		ctx := context.WithValue(r.Context(), ridKey{}, rid)
		if a.timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, a.timeout)
			defer cancel()
		}
		caller := service.Caller{RequestID: rid, ClientAddr: r.RemoteAddr}
		r = r.WithContext(service.WithCaller(ctx, caller))
		_, route := a.mux.Handler(r)
		if route == "" || route == "/" {
			route = "unmatched"
		}
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				a.fail(sw, r, kgerr.Wrap(kgerr.KindInternal, fmt.Errorf("panic: %v", p), "internal error"))
			}
			a.metrics.HTTPRequests.WithLabelValues(route, strconv.Itoa(sw.status)).Inc()
			level := slog.LevelDebug
			switch {
			case sw.status >= 500:
				level = slog.LevelWarn
			case sw.status >= 400:
				level = slog.LevelInfo
			}
			if a.log.Enabled(r.Context(), level) { // the access line allocates: build it only when it is kept
				a.log.Log(r.Context(), level, "request", "request_id", rid, "method", r.Method, "route", route,
					"principal", caller.Principal, "status", sw.status, "duration_ms", float64(time.Since(start).Microseconds())/1000)
			}
		}()
		if a.protected(r) {
			p, err := a.authenticate(r, route)
			if err == nil {
				err = a.rateLimit(p)
			}
			if err != nil {
				a.fail(sw, r, err)
				return
			}
			caller.Principal, caller.Auth = p.Name, p
			r = r.WithContext(service.WithCaller(ctx, caller))
		}
		next.ServeHTTP(sw, r)
	})
}
