package pkcs11

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// session is a PKCS#11 session of one module generation.
type session struct {
	h   pkcs11.SessionHandle
	gen uint64
}

// pool is a bounded pool of read-write sessions, reused LIFO (the most
// recently used session is the warmest in the module's caches). A caller
// first takes a slot — at most max are out — waiting no longer than its
// context allows; then it reuses an idle session of the current generation
// or opens a new one.
type pool struct {
	slots chan struct{}
	max   int

	mu   sync.Mutex
	idle []session

	inUse     atomic.Int64
	live      atomic.Int64 // pooled sessions open in the current generation
	waits     atomic.Uint64
	waitNanos atomic.Uint64
	timeouts  atomic.Uint64
}

func newPool(max int) *pool {
	return &pool{slots: make(chan struct{}, max), max: max}
}

// acquire takes a slot, waiting at most until ctx ends; a request whose
// deadline passes while waiting gets 503.
func (p *pool) acquire(ctx context.Context) error {
	select {
	case p.slots <- struct{}{}:
		p.inUse.Add(1)
		return nil
	default:
	}
	p.waits.Add(1)
	start := time.Now()
	defer func() { p.waitNanos.Add(uint64(time.Since(start))) }()
	select {
	case p.slots <- struct{}{}:
		p.inUse.Add(1)
		return nil
	case <-ctx.Done():
		p.timeouts.Add(1)
		return &kgerr.Error{Kind: kgerr.KindUnavailable, Message: "no HSM session became free before the request's deadline",
			Cause: ctx.Err(), RetryAfter: time.Second}
	}
}

// release returns a slot.
func (p *pool) release() {
	p.inUse.Add(-1)
	<-p.slots
}

// pop returns the most recently idle session of generation gen. Sessions of
// older generations are dropped without a call into the library: their
// handles are dead and their numbers may belong to new sessions.
func (p *pool) pop(gen uint64) (session, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.idle) > 0 {
		s := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if s.gen == gen {
			return s, true
		}
	}
	return session{}, false
}

// push makes a session idle.
func (p *pool) push(s session) {
	p.mu.Lock()
	p.idle = append(p.idle, s)
	p.mu.Unlock()
}

// takeIdle empties the idle list and returns it.
func (p *pool) takeIdle() []session {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.idle
	p.idle = nil
	return out
}

func (p *pool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// drain takes every slot, waiting for sessions in use to come back or for
// ctx to end.
func (p *pool) drain(ctx context.Context) error {
	for i := 0; i < p.max; i++ {
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
