package pkcs11

import (
	"context"
	"errors"
	"strings"
	"time"
)

// Rescans: a module that re-reads the token after a lookup missed.
//
// SoftHSM2 (2.6.1, file backend) keeps one generation counter in the token
// directory and re-reads the directory only when the counter differs from
// the value it last saw. A process that changes the token itself (a key
// generation, a delete) remembers the counter it wrote, which includes the
// increments of other processes it has not read: an object another process
// made just before is then invisible to this one until some other process
// changes the token again. Two gateways on one SoftHSM2 token hit this every
// time one of them creates a key right after the other did (see
// docs/deployment.md). The only way to make the module read the directory
// again is C_Finalize + C_Initialize.
//
// So when no object has a key's CKA_ID, and rescan_on_miss is on (by default
// for SoftHSM2 only), the provider resets the module — under the module's
// exclusive lock, as a recovery does — and looks once more. Rescans of one
// module are at most one a second; requests that missed while one ran use
// its result.

// errObjectsMissing is the cause of the KEY_NOT_FOUND answered when no
// object on the token has a key's CKA_ID.
var errObjectsMissing = errors.New("no object on the token has the key's CKA_ID")

// rescanInterval is the least time between two rescans of one module.
const rescanInterval = time.Second

// rescanOnMiss reports whether a missed lookup makes the module re-read the
// token.
func (p *Provider) rescanOnMiss() bool {
	if p.cfg.rescanOnMiss != nil {
		return *p.cfg.rescanOnMiss
	}
	return p.mod.isSoftHSM()
}

// isSoftHSM reports whether the module is SoftHSM2 (by its C_GetInfo
// manufacturer), asking once.
func (m *module) isSoftHSM() bool {
	switch m.softHSM.Load() {
	case 1:
		return true
	case 2:
		return false
	}
	m.mu.RLock()
	info, err := m.ctx.GetInfo()
	m.mu.RUnlock()
	if err != nil {
		return false // ask again next time
	}
	soft := strings.HasPrefix(strings.TrimSpace(info.ManufacturerID), "SoftHSM")
	if soft {
		m.softHSM.Store(1)
	} else {
		m.softHSM.Store(2)
	}
	return soft
}

// rescan makes the module re-read the token, unless a rescan began after
// since (the start of the lookup that missed): then that one's view is new
// enough. It waits, within ctx, for the interval since the last rescan.
func (p *Provider) rescan(ctx context.Context, since time.Time) error {
	m := p.mod
	m.rescanMu.Lock()
	defer m.rescanMu.Unlock()
	if m.lastRescan.After(since) {
		return nil
	}
	if wait := time.Until(m.lastRescan.Add(rescanInterval)); wait > 0 {
		if err := sleepCtx(ctx, wait); err != nil {
			return err
		}
	}
	m.lastRescan = time.Now()
	p.log.Info("no object has the key's CKA_ID; the module re-reads the token (rescan_on_miss)")
	p.resetMu.Lock()
	defer p.resetMu.Unlock()
	// SoftHSM2 rewrites its token file at every C_Login; a C_Initialize in
	// another process that reads it meanwhile finds no token. Such a miss
	// passes: try a few times before calling the HSM down.
	seen := p.gen.Load()
	for attempt := 1; ; attempt++ {
		g, err := m.reinitialize(seen, false)
		if err == nil {
			err = p.resync(g)
		}
		if err == nil {
			break
		}
		seen = g // reset again next time, even though the generation moved
		if attempt == rescanAttempts || sleepCtx(ctx, time.Duration(attempt)*100*time.Millisecond) != nil {
			p.markDown(err, p.gen.Load())
			return err
		}
	}
	p.dropHandles()
	return nil
}

// rescanAttempts bounds the resets of one rescan.
const rescanAttempts = 3
