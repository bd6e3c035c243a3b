// Package pkcs11 is the PKCS#11 key provider: keys held in an HSM reached
// through a PKCS#11 module (AWS CloudHSM's libcloudhsm_pkcs11.so in
// production, SoftHSM2 in tests, any module by configuration), driven with
// github.com/miekg/pkcs11.
//
// Concurrency model. A module is loaded and C_Initialize'd once per process,
// however many provider instances name it. Each instance logs in once, on a
// session it keeps open for its whole life (closing a token's last session
// logs the application out), and keeps a bounded pool of read-write sessions
// (max_sessions, capped by the token's MaxRwSessionCount), reused LIFO. An
// operation takes a session for its duration, waiting for a free one no
// longer than its deadline (then 503). A session on which any call failed is
// closed, not reused. Object handles are looked up by CKA_ID once and cached
// per module generation; a stale handle is looked up again.
//
// Recovery. Failures are classified by their CKR code (errors.go): a broken
// session is replaced; a lost device, token or login marks the provider down
// and starts one background recovery loop that resets the module
// (C_Finalize, C_Initialize, find the token again, log in) under the
// module's exclusive lock, with capped exponential backoff and jitter, until
// it succeeds. While down, operations fail fast with 503 and Retry-After. An
// idempotent operation that met the failure waits for the recovery within its
// deadline and is retried once; a key generation is never repeated blindly:
// the provider first looks for the CKA_ID it would have made.
package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/cloudhsm"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// Provider is a PKCS#11 provider instance.
type Provider struct {
	name  string
	cfg   resolved
	mod   *module
	log   *slog.Logger
	caps  provider.Capabilities
	mechs map[uint]pkcs11.MechanismInfo

	pool *pool

	// resetMu serialises resets and resyncs of this instance.
	resetMu sync.Mutex
	gen     atomic.Uint64 // module generation this instance is logged in for
	slot    atomic.Uint64
	token   atomic.Pointer[tokenInfo]
	login   session // the persistent logged-in session (guarded by resetMu)

	hmu     sync.RWMutex
	handles map[string]objHandles // CKA_ID → handles of the current generation

	// callMu, when cfg.serializeCalls is set, lets one call at a time into
	// the module.
	callMu sync.Mutex

	// changeMu, when cfg.serializeChanges is set, makes key generation and
	// deletion exclusive, and object searches shared: SoftHSM2 fails token
	// object creation that runs beside another creation or a search.
	changeMu sync.RWMutex

	state  health
	events atomic.Pointer[func(provider.Event)]
	canary atomic.Pointer[canary]
	closed atomic.Bool
	wg     sync.WaitGroup // recovery goroutine

	cluster *cloudhsm.Poller // nil: no CloudHSM cluster to watch (cluster.go)

	wrap wrapState // the import wrapping key (material.go)
}

// objHandles are the object handles of one key, valid in generation gen;
// 0 (CK_INVALID_HANDLE) where a class was not looked up yet.
type objHandles struct {
	gen  uint64
	priv pkcs11.ObjectHandle
	pub  pkcs11.ObjectHandle
	sec  pkcs11.ObjectHandle
}

// New is the provider.Factory of the pkcs11 and aws-cloudhsm types.
func New(ctx context.Context, p provider.Params) (provider.Provider, error) {
	var c Config
	if p.Decode != nil {
		if err := p.Decode(&c); err != nil {
			return nil, err
		}
	}
	return Open(ctx, p.Name, p.Type, c, p.Logger)
}

// Open opens a provider instance: loads the module (once per process),
// finds the token, logs in, reads the token's mechanisms.
func Open(ctx context.Context, name, typ string, c Config, log *slog.Logger) (*Provider, error) {
	if log == nil {
		log = slog.Default()
	}
	field := "providers." + name + ".config"
	cfg, err := c.resolve(typ, field)
	if err != nil {
		return nil, err
	}
	mod, err := openModule(cfg.LibraryPath, cfg.isolation, hostEnvOf(os.Environ(), cfg.PinEnv), log.With("provider", name))
	if err != nil {
		return nil, fmt.Errorf("%s.library_path: %w", field, err)
	}
	p := &Provider{name: name, cfg: cfg, mod: mod, log: log, handles: map[string]objHandles{}}
	p.state.init()
	p.resetMu.Lock()
	err = p.resync(mod.gen.Load())
	p.resetMu.Unlock()
	if err != nil {
		mod.release()
		return nil, err
	}
	tok := p.token.Load()
	if !mod.addLogin(tokenKey(tok)) {
		log.Debug("token already logged in by another provider instance on this module", "token", tok.label)
	}
	max := cfg.MaxSessions
	if ti, err := mod.ctx.GetTokenInfo(tok.slot); err == nil && ti.MaxRwSessionCount != pkcs11.CK_EFFECTIVELY_INFINITE &&
		ti.MaxRwSessionCount != pkcs11.CK_UNAVAILABLE_INFORMATION && int(ti.MaxRwSessionCount) > 1 && int(ti.MaxRwSessionCount)-1 < max {
		max = int(ti.MaxRwSessionCount) - 1 // one is the login session
		log.Info("max_sessions capped by the token", "max_sessions", max)
	}
	p.pool = newPool(max)
	if err := p.discover(ctx); err != nil {
		p.Close()
		return nil, err
	}
	p.startCluster()
	log.Info("pkcs11 provider ready", "type", typ, "library", cfg.LibraryPath, "token", tok.label, "serial", tok.serial,
		"slot", tok.slot, "max_sessions", max, "algorithms", len(p.caps.Algorithms))
	return p, nil
}

// lockCalls takes callMu when the configuration asks for it; it returns
// the unlock.
func (p *Provider) lockCalls() func() {
	if !p.cfg.serializeCalls {
		return func() {}
	}
	p.callMu.Lock()
	return p.callMu.Unlock
}

// lockChanges takes changeMu (exclusive for a change, shared for a search)
// when the configuration asks for it; it returns the unlock.
func (p *Provider) lockChanges(change bool) func() {
	switch {
	case !p.cfg.serializeChanges:
		return func() {}
	case change:
		p.changeMu.Lock()
		return p.changeMu.Unlock
	}
	p.changeMu.RLock()
	return p.changeMu.RUnlock
}

func tokenKey(t *tokenInfo) string { return t.label + "\x00" + t.serial }

// Name implements provider.Provider.
func (p *Provider) Name() string { return p.name }

// Type implements provider.Provider.
func (p *Provider) Type() string { return p.cfg.typ }

// Capabilities implements provider.Provider.
func (p *Provider) Capabilities() provider.Capabilities { return p.caps }

// resync finds the token and logs in for module generation g. The caller
// holds resetMu. The PIN never reaches an error or a log line.
func (p *Provider) resync(g uint64) error {
	p.mod.mu.RLock()
	defer p.mod.mu.RUnlock()
	defer p.lockCalls()()
	c := p.mod.ctx
	slots, err := c.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("C_GetSlotList: %w", err)
	}
	var tokens []tokenInfo
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		tokens = append(tokens, tokenInfo{slot: s, label: strings.TrimSpace(ti.Label), serial: strings.TrimSpace(ti.SerialNumber)})
	}
	tok, err := selectSlot(tokens, p.cfg.Settings, p.cfg.firstSlotDefault)
	if err != nil {
		return kgerr.Wrap(kgerr.KindUnavailable, err, "the configured token is not present")
	}
	sh, err := c.OpenSession(tok.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("C_OpenSession on slot %d: %w", tok.slot, err)
	}
	if err := c.Login(sh, pkcs11.CKU_USER, p.cfg.pin); err != nil {
		if code, ok := ckrCode(err); !ok || code != pkcs11.CKR_USER_ALREADY_LOGGED_IN {
			c.CloseSession(sh)
			return fmt.Errorf("C_Login on token %q: %w", tok.label, toError(err, opOther))
		}
	}
	p.login = session{h: sh, gen: g}
	if p.pool != nil && g != p.gen.Load() {
		p.pool.live.Store(0) // the old generation's sessions died with it
	}
	p.slot.Store(uint64(tok.slot))
	p.token.Store(&tok)
	p.gen.Store(g)
	return nil
}

// errStale reports that the module was reset by another provider instance
// since this one logged in.
var errStale = errors.New("module generation changed")

// withSession runs fn on a pooled session. It returns the generation the
// session belonged to with fn's error.
func (p *Provider) withSession(ctx context.Context, fn func(pkcs11.SessionHandle) error) (uint64, error) {
	if p.closed.Load() {
		return 0, kgerr.New(kgerr.KindUnavailable, "the provider is closed")
	}
	if err := p.state.downErr(); err != nil {
		return 0, err
	}
	if err := p.pool.acquire(ctx); err != nil {
		return 0, err
	}
	// With the module in a host, the calls run on this goroutine: each
	// waits for its reply on the poller until the operation's deadline
	// (hostClient.deadlines), and a call past it gives up (the host, maybe
	// stuck in the module, is reset). Without a deadline, and in process,
	// where a call into the module cannot be given up, they run on their
	// own goroutine so that a call the module never returns from (a hung
	// HSM or network) cannot hold the request past its deadline. A call
	// left behind there keeps its session and pool slot until it returns;
	// the provider is marked down meanwhile.
	if dl, ok := ctx.Deadline(); ok && p.cfg.isolation == IsolationProcess {
		defer p.pool.release()
		gen, err := p.onSessionRetry(fn, dl)
		if errors.Is(err, errCallDeadline) {
			return gen, p.hung(gen, context.DeadlineExceeded)
		}
		return gen, err
	}
	type result struct {
		gen uint64
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer p.pool.release()
		gen, err := p.onSessionRetry(fn, time.Time{})
		done <- result{gen, err}
	}()
	select {
	case r := <-done:
		return r.gen, r.err
	case <-ctx.Done():
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return p.gen.Load(), kgerr.Wrap(kgerr.KindUnavailable, ctx.Err(), "the request was cancelled")
		}
		return p.gen.Load(), p.hung(p.gen.Load(), ctx.Err())
	}
}

// hung marks the provider down after a call into the module of generation
// gen outlived its operation's deadline (cause), and is the operation's
// error.
func (p *Provider) hung(gen uint64, cause error) error {
	p.state.hung.Add(1)
	p.markDown(kgerr.Wrap(kgerr.KindTimeout, errHung, "the HSM did not answer in time"), gen)
	return &kgerr.Error{Kind: kgerr.KindTimeout, Cause: cause, RetryAfter: 2 * time.Second,
		Message: "the HSM did not answer before the operation's deadline"}
}

// errHung is the cause recorded when a call into the module outlived its
// operation's deadline.
var errHung = errors.New("a call into the PKCS#11 module did not return before its deadline")

// onSessionRetry is onSession, again after catching up with a reset by
// another provider instance on the same module.
func (p *Provider) onSessionRetry(fn func(pkcs11.SessionHandle) error, deadline time.Time) (uint64, error) {
	for {
		gen, err := p.onSession(fn, deadline)
		if errors.Is(err, errStale) {
			if err = p.catchUp(); err == nil {
				continue
			}
		}
		return gen, err
	}
}

// onSession runs fn on a pooled session (a new one when none is idle); the
// calls of a module host on it give up at deadline (zero: never).
func (p *Provider) onSession(fn func(pkcs11.SessionHandle) error, deadline time.Time) (uint64, error) {
	p.mod.mu.RLock()
	defer p.mod.mu.RUnlock()
	defer p.lockCalls()()
	gen := p.mod.gen.Load()
	if gen != p.gen.Load() {
		return gen, errStale
	}
	c := p.mod.ctx
	s, ok := p.pool.pop(gen)
	if !ok {
		h, err := c.OpenSession(uint(p.slot.Load()), pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return gen, err
		}
		p.pool.live.Add(1)
		s = session{h: h, gen: gen}
	}
	if hc, ok := c.(*hostClient); ok && !deadline.IsZero() {
		hc.deadlines.Store(s.h, deadline)
		defer hc.deadlines.Delete(s.h)
	}
	err := fn(s.h)
	if err == nil {
		p.pool.push(s)
		return gen, nil
	}
	switch {
	case errors.Is(err, errCallDeadline):
		// The host may still be inside the module on this session: it is
		// neither reused nor closed (the reset that follows ends it).
		p.pool.live.Add(-1)
	case classify(err, false) != classReset:
		// A session on which a call failed may hold an active operation:
		// close it, unless the whole module is gone (then the handle is
		// dead and is counted out at the reset).
		c.CloseSession(s.h)
		p.pool.live.Add(-1)
	}
	return gen, err
}

// catchUp logs in again after another provider instance on the same module
// reset it.
func (p *Provider) catchUp() error {
	p.resetMu.Lock()
	defer p.resetMu.Unlock()
	g := p.mod.gen.Load()
	if g == p.gen.Load() {
		return nil
	}
	if err := p.resync(g); err != nil {
		p.markDown(err, p.gen.Load())
		return kgerr.Wrap(kgerr.KindUnavailable, err, "the HSM is unavailable")
	}
	return nil
}

// run executes fn on a session within the operation timeout and handles
// failures by class: a broken session is replaced and fn retried once; a
// lost module marks the provider down (recovery starts) and an idempotent fn
// is retried once after recovery, within the deadline; a busy HSM (CloudHSM)
// gets bounded retries for idempotent fn.
func (p *Provider) run(ctx context.Context, idempotent bool, kind opKind, fn func(pkcs11.SessionHandle) error) error {
	return p.runWithin(ctx, p.cfg.opTimeout, idempotent, kind, fn)
}

// runWithin is run with a deadline of its own (a generation known to take
// long).
func (p *Provider) runWithin(ctx context.Context, timeout time.Duration, idempotent bool, kind opKind, fn func(pkcs11.SessionHandle) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	retried, busy := false, 0
	for {
		gen, err := p.withSession(ctx, fn)
		if err == nil {
			return nil
		}
		p.state.countError(err)
		switch classify(err, p.cfg.busyRetries > 0) {
		case classSession:
			if !retried {
				retried = true
				continue
			}
		case classReset:
			p.markDown(err, gen)
			if idempotent && !retried {
				retried = true
				if p.state.waitUp(ctx) == nil {
					continue
				}
			}
			return toError(err, kind)
		case classBusy:
			if idempotent && busy < p.cfg.busyRetries {
				busy++
				if sleepCtx(ctx, backoff(busy, 20*time.Millisecond, 500*time.Millisecond)) == nil {
					continue
				}
			}
		}
		return toError(err, kind)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// backoff is the delay before attempt n (1-based): capped exponential with
// full jitter in [d/2, d].
func backoff(n int, base, max time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// markDown marks the provider down after a failure in generation gen and
// starts the recovery loop, unless a newer generation exists (someone
// recovered already) or recovery is under way.
func (p *Provider) markDown(cause error, gen uint64) {
	if p.closed.Load() || gen != p.gen.Load() {
		return
	}
	if !p.state.setDown(cause) {
		return
	}
	p.log.Warn("HSM unavailable; recovering in the background", "err", toError(cause, opOther).Error())
	p.emit(provider.Event{Kind: "unavailable", Err: toError(cause, opOther), Detail: "the HSM stopped answering; recovering"})
	p.wg.Add(1)
	go p.recover()
}

// SetEventSink implements provider.EventReporter: losing the HSM and each
// successful reset are reported (for the audit log).
func (p *Provider) SetEventSink(sink func(provider.Event)) { p.events.Store(&sink) }

func (p *Provider) emit(e provider.Event) {
	if sink := p.events.Load(); sink != nil {
		if e.Time.IsZero() {
			e.Time = time.Now()
		}
		(*sink)(e)
	}
}

// recover resets the module until it works again.
func (p *Provider) recover() {
	defer p.wg.Done()
	seen := p.gen.Load()
	start := time.Now()
	for attempt := 1; !p.closed.Load(); attempt++ {
		var err error
		seen, err = p.reset(seen)
		if err == nil {
			p.dropHandles()
			p.state.setUp(true)
			p.log.Info("HSM recovered", "attempts", attempt)
			p.emit(provider.Event{Kind: "reset", Duration: time.Since(start),
				Detail: fmt.Sprintf("module reset and logged in again after %d attempt(s)", attempt)})
			return
		}
		p.state.recordFailure(err)
		d := backoff(attempt, 100*time.Millisecond, 5*time.Second)
		p.log.Debug("HSM reset failed; retrying", "attempt", attempt, "in", d.String(), "err", err)
		time.Sleep(d)
	}
}

// reset finalizes and initializes the module — unless another instance on
// the same module did since generation seen, the last one this instance
// found broken — and logs in again. It returns the generation it tried, the
// one to pass next time if this attempt failed.
func (p *Provider) reset(seen uint64) (uint64, error) {
	p.resetMu.Lock()
	defer p.resetMu.Unlock()
	restarts := p.mod.restarts.Load()
	g, err := p.mod.reinitialize(seen, true)
	p.state.resets.Add(1)
	if p.mod.isolated && err == nil && p.mod.restarts.Load() != restarts {
		p.emit(provider.Event{Kind: "module_host_restarted",
			Detail: fmt.Sprintf("the PKCS#11 module host process was replaced (now pid %d)", p.mod.hostPID())})
	}
	if err != nil {
		return g, fmt.Errorf("C_Initialize: %w", err)
	}
	return g, p.resync(g)
}

func (p *Provider) dropHandles() {
	p.hmu.Lock()
	clear(p.handles)
	p.hmu.Unlock()
}

// Close drains the pool (waiting up to the operation timeout for sessions in
// use), closes the sessions, logs out (if no other instance uses the login)
// and releases the module (finalizing it with its last user).
func (p *Provider) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	if p.cluster != nil {
		p.cluster.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.opTimeout)
	defer cancel()
	if p.pool != nil {
		if err := p.pool.drain(ctx); err != nil {
			p.log.Warn("closing with HSM operations still in flight")
		}
	}
	p.wg.Wait()
	p.resetMu.Lock()
	defer p.resetMu.Unlock()
	p.mod.mu.RLock()
	unlockCalls := p.lockCalls()
	gen := p.mod.gen.Load()
	c := p.mod.ctx
	if p.pool != nil {
		for _, s := range p.pool.takeIdle() {
			if s.gen == gen {
				c.CloseSession(s.h)
				p.pool.live.Add(-1)
			}
		}
	}
	if tok := p.token.Load(); tok != nil && p.login.gen == gen {
		if p.mod.dropLogin(tokenKey(tok)) {
			c.Logout(p.login.h)
		}
		c.CloseSession(p.login.h)
	}
	unlockCalls()
	p.mod.mu.RUnlock()
	p.mod.release()
	return nil
}

// Stats implements provider.StatsReporter.
func (p *Provider) Stats() provider.Stats {
	st := p.state.snapshot()
	st.SessionsInUse = int(p.pool.inUse.Load())
	st.SessionsIdle = p.pool.idleCount()
	st.SessionsMax = p.pool.max
	st.SessionsOpen = int(p.pool.live.Load())
	if !p.closed.Load() && st.Up {
		st.SessionsOpen++ // the login session
	}
	st.Waits = p.pool.waits.Load()
	st.WaitSeconds = float64(p.pool.waitNanos.Load()) / 1e9
	st.WaitTimeouts = p.pool.timeouts.Load()
	st.Resets = p.state.resets.Load()
	st.Info = map[string]any{"library": p.cfg.LibraryPath, "module_generation": p.gen.Load(), "cached_keys": p.cachedHandles(),
		"isolation": p.cfg.isolation}
	if p.mod.isolated {
		st.ModuleHost, st.ModuleHostRestarts = true, p.mod.restarts.Load()
		st.Info["module_host_restarts"] = st.ModuleHostRestarts
		st.Info["module_host_pid"] = p.mod.hostPID()
	}
	if tok := p.token.Load(); tok != nil {
		st.Info["token_label"], st.Info["token_serial"], st.Info["slot"] = tok.label, tok.serial, tok.slot
	}
	return st
}

func (p *Provider) cachedHandles() int {
	p.hmu.RLock()
	defer p.hmu.RUnlock()
	return len(p.handles)
}
