package pkcs11

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// health is the up/down state of a provider instance.
type health struct {
	isDown atomic.Bool // fast path for every operation
	resets atomic.Uint64
	// hung counts calls into the module that outlived their deadline.
	hung atomic.Uint64

	mu          sync.Mutex
	upCh        chan struct{} // closed while up
	lastErr     error
	downSince   time.Time
	lastSuccess time.Time
	lastReset   time.Time
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
	return &kgerr.Error{Kind: kgerr.KindUnavailable, RetryAfter: 2 * time.Second,
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

// setUp marks the state up after a successful reset.
func (h *health) setUp(reset bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if reset {
		h.lastReset = time.Now()
	}
	if !h.isDown.Load() {
		return
	}
	h.isDown.Store(false)
	h.lastSuccess = time.Now()
	close(h.upCh)
}

// snapshot fills the state part of provider.Stats.
func (h *health) snapshot() provider.Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := provider.Stats{Up: !h.isDown.Load(), LastReset: h.lastReset, Errors: make(map[string]uint64, len(h.ckrCounts))}
	for k, v := range h.ckrCounts {
		st.Errors[k] = v
	}
	return st
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

// canary is a P-256 session key pair made on the login session, so it
// lives until the next reset; every health check signs with it on a pooled
// session and verifies in Go: the HSM must not only answer but compute. A
// token that makes no session objects (tpm2-pkcs11) gets no key (pub nil):
// its check draws random bytes from the token instead, which reaches the
// device without leaving an object behind.
type canary struct {
	gen  uint64
	priv pkcs11.ObjectHandle
	pub  *ecdsa.PublicKey
}

// canaryKey returns the canary of the current generation, making it if
// needed (nil if the token cannot make P-256 keys).
func (p *Provider) canaryKey() (*canary, error) {
	if p.caps.CheckAlgorithm(alg.ES256) != nil {
		return nil, nil
	}
	if c := p.canary.Load(); c != nil && c.gen == p.gen.Load() {
		return c, nil
	}
	p.resetMu.Lock()
	defer p.resetMu.Unlock()
	p.mod.mu.RLock()
	defer p.mod.mu.RUnlock()
	defer p.lockCalls()()
	gen := p.mod.gen.Load()
	if gen != p.gen.Load() || p.login.gen != gen {
		return nil, errStale
	}
	_, priv, key, err := sessionP256(p.mod.ctx, p.login.h, "keygrid-canary")
	if err != nil && !refusedAttribute(err) {
		return nil, err
	}
	c := &canary{gen: gen, priv: priv, pub: key}
	p.canary.Store(c)
	return c, nil
}

// CheckHealth implements provider.Provider: a cheap call on a pooled
// session, then a sign with the canary key, verified in Go. A lost module
// marks the provider down (and starts recovery).
func (p *Provider) CheckHealth(ctx context.Context) error {
	gen, err := p.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := p.mod.ctx.GetSessionInfo(sh)
		return err
	})
	if err == nil {
		err = p.checkCanary(ctx)
	}
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

var canaryDigest = sha256.Sum256([]byte("keygrid health canary"))

func (p *Provider) checkCanary(ctx context.Context) error {
	c, err := p.canaryKey()
	if err != nil || c == nil {
		if errors.Is(err, errStale) {
			return nil // a reset is under way; the next check makes a new one
		}
		return err
	}
	var valid bool
	_, err = p.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		if c.pub == nil {
			r, err := p.mod.ctx.GenerateRandom(sh, 16)
			valid = len(r) == 16
			return err
		}
		var err error
		valid, err = signECDSA(p.mod.ctx, sh, c.priv, c.pub, canaryDigest[:])
		return err
	})
	if err != nil {
		return err
	}
	if !valid {
		return kgerr.New(kgerr.KindUnavailable, "the HSM's canary signature does not verify")
	}
	return nil
}
