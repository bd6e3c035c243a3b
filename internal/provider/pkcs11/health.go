package pkcs11

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// health is the up/down state of a provider instance.
type health struct {
	isDown atomic.Bool // fast path for every operation
	resets atomic.Uint64

	mu          sync.Mutex
	upCh        chan struct{} // closed while up
	lastErr     error
	downSince   time.Time
	lastSuccess time.Time
	ckrCounts   map[string]uint64
}

func (h *health) init() {
	h.upCh = make(chan struct{})
	close(h.upCh)
	h.ckrCounts = map[string]uint64{}
	h.lastSuccess = time.Now()
}

// downErr is the fast failure while the HSM is away.
func (h *health) downErr() error {
	if !h.isDown.Load() {
		return nil
	}
	return &kgerr.Error{Code: apitypes.CodeServiceUnavailable, RetryAfter: 2 * time.Second,
		Message: "the HSM is unavailable; the gateway is reconnecting"}
}

// setDown marks the state down; it returns false if it was down already.
func (h *health) setDown(cause error) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.isDown.Load() {
		return false
	}
	h.isDown.Store(true)
	h.upCh = make(chan struct{})
	h.lastErr, h.downSince = cause, time.Now()
	return true
}

func (h *health) setUp() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.isDown.Load() {
		return
	}
	h.isDown.Store(false)
	h.lastSuccess = time.Now()
	close(h.upCh)
}

// waitUp waits until the state is up or ctx ends.
func (h *health) waitUp(ctx context.Context) error {
	h.mu.Lock()
	ch := h.upCh
	h.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *health) recordFailure(err error) {
	h.mu.Lock()
	h.lastErr = err
	h.mu.Unlock()
	h.countError(err)
}

func (h *health) recordSuccess() {
	h.mu.Lock()
	h.lastSuccess = time.Now()
	h.mu.Unlock()
}

// countError counts failures by CKR code.
func (h *health) countError(err error) {
	code, ok := ckrCode(err)
	if !ok {
		return
	}
	name := ckrName(code)
	h.mu.Lock()
	h.ckrCounts[name]++
	h.mu.Unlock()
}

// CheckHealth implements provider.Provider: a cheap call on a pooled
// session. A lost module marks the provider down (and starts recovery).
func (p *Provider) CheckHealth(ctx context.Context) error {
	gen, err := p.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := p.mod.ctx.GetSessionInfo(sh)
		return err
	})
	if err != nil {
		p.state.countError(err)
		if classify(err, false) == classReset {
			p.markDown(err, gen)
		}
		return toError(err, opOther)
	}
	p.state.recordSuccess()
	return nil
}
