package httpstack

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// refusals audits the requests the stack refuses before any service
// operation sees them (a malformed or oversized body, a principal over its
// rate limit), coalesced: at most one record per principal, route and
// reason per second; the record carries how many refusals it stands for
// (itself and those since the previous one that were not recorded).
type refusals struct {
	record func(ctx context.Context, detail string, err error)
	now    func() time.Time

	mu   sync.Mutex
	last map[string]*refusalWindow
}

type refusalWindow struct {
	start      time.Time
	suppressed int
}

// maxRefusalKeys bounds the coalescing table; past it the table starts over
// (a few more records, never fewer).
const maxRefusalKeys = 1 << 14

func newRefusals(record func(ctx context.Context, detail string, err error)) *refusals {
	return &refusals{record: record, now: time.Now, last: map[string]*refusalWindow{}}
}

// refused audits (or counts) the refusal of r with err.
func (f *refusals) refused(r *http.Request, err error) {
	if f == nil || f.record == nil {
		return
	}
	kind := kgerr.KindOf(err)
	route := routeOf(r.Context())
	c := service.CallerFrom(r.Context())
	key := c.Principal + "\x00" + c.ClientAddr + "\x00" + route + "\x00" + string(kind)
	if c.Principal != "" {
		key = c.Principal + "\x00\x00" + route + "\x00" + string(kind)
	}
	now := f.now()
	f.mu.Lock()
	w := f.last[key]
	if w != nil && now.Sub(w.start) < time.Second {
		w.suppressed++
		f.mu.Unlock()
		return
	}
	count := 1
	if w != nil {
		count += w.suppressed
	}
	if len(f.last) >= maxRefusalKeys {
		clear(f.last)
	}
	f.last[key] = &refusalWindow{start: now}
	f.mu.Unlock()
	detail := fmt.Sprintf("%s %s: refused before the service (%s)", r.Method, route, kind)
	if count > 1 {
		detail += fmt.Sprintf("; %d refusals since the last record", count)
	}
	f.record(r.Context(), detail, err)
}

type routeKey struct{}

func routeOf(ctx context.Context) string {
	r, _ := ctx.Value(routeKey{}).(string)
	if r == "" {
		return "unmatched"
	}
	return r
}
