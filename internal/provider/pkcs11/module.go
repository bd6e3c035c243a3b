package pkcs11

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// module is one loaded PKCS#11 library, shared by every provider instance
// that names the same path: loaded and C_Initialize'd once per process.
//
// Every call into the library holds mu for reading; a reset (C_Finalize +
// C_Initialize) holds it for writing, so no goroutine is inside the library
// meanwhile. gen counts resets: sessions and object handles of an older
// generation are dead and are never passed to the library again (their
// numbers may have been given to new sessions).
type module struct {
	path string
	ctx  cryptoki // guarded by mu: replaced under the write lock

	mu  sync.RWMutex
	gen atomic.Uint64

	// With isolation: process, host is the child process running the
	// library (ctx is host), env its environment, log where its stderr
	// goes. hostMu serialises restarts; restarts counts them.
	isolated bool
	host     *hostClient // guarded by hostMu
	// pid is the host's process id, readable without hostMu (which a
	// restart holds while it waits for the calls in flight to leave).
	pid      atomic.Int64
	env      []string
	log      *slog.Logger
	hostMu   sync.Mutex
	restarts atomic.Uint64

	// refs and logins are guarded by modules.mu.
	refs   int
	logins map[string]int // token key → provider instances logged in

	// Re-reads of the token after a missed lookup (rescan.go).
	rescanMu   sync.Mutex
	lastRescan time.Time // start of the last rescan, guarded by rescanMu
	softHSM    atomic.Int32

	// refusesDenials is set once CreateKey found that the module makes a
	// key only from templates without usage attributes set to false
	// (keys.go).
	refusesDenials atomic.Bool
}

var modules = struct {
	sync.Mutex
	m map[string]*module
}{m: map[string]*module{}}

// errModule is a failure to load or initialise a module (bad path, not a
// PKCS#11 library).
var errModule = errors.New("pkcs11 module")

// Isolation modes.
const (
	IsolationProcess   = "process"
	IsolationInProcess = "in-process"
)

// openModule returns the module at path, loading and initialising it on
// first use: in this process (in-process), or in a host process of its own
// (process) whose environment is env and whose stderr goes to log.
func openModule(path, isolation string, env []string, log *slog.Logger) (*module, error) {
	modules.Lock()
	defer modules.Unlock()
	key := isolation + "\x00" + path
	if m, ok := modules.m[key]; ok {
		m.refs++
		return m, nil
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%w %s: %v", errModule, path, err)
	}
	if isolation == IsolationProcess {
		log = log.With("library", path)
		h, err := startHost(path, env, log)
		if err != nil {
			return nil, err
		}
		m := &module{path: path, ctx: h, host: h, isolated: true, env: env, log: log, refs: 1, logins: map[string]int{}}
		m.pid.Store(int64(h.pid))
		modules.m[key] = m
		return m, nil
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("%w %s: cannot load it as a PKCS#11 library", errModule, path)
	}
	if err := ctx.Initialize(); err != nil {
		if code, ok := ckrCode(err); !ok || code != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			ctx.Destroy()
			return nil, fmt.Errorf("%w %s: C_Initialize: %v", errModule, path, err)
		}
	}
	m := &module{path: path, ctx: local{Ctx: ctx}, refs: 1, logins: map[string]int{}}
	modules.m[key] = m
	return m, nil
}

// release drops one reference; the last finalizes and unloads the module.
func (m *module) release() {
	modules.Lock()
	defer modules.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	for k, x := range modules.m {
		if x == m {
			delete(modules.m, k)
		}
	}
	if m.isolated {
		m.hostMu.Lock()
		defer m.hostMu.Unlock()
		m.host.close(2 * time.Second)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ctx.Finalize()
	m.ctx.(local).Destroy()
}

// addLogin records that one more provider instance uses the login of token;
// it returns true for the first.
func (m *module) addLogin(token string) bool {
	modules.Lock()
	defer modules.Unlock()
	m.logins[token]++
	return m.logins[token] == 1
}

// dropLogin records that a provider instance stopped using the login of
// token; it returns true for the last.
func (m *module) dropLogin(token string) bool {
	modules.Lock()
	defer modules.Unlock()
	if m.logins[token] == 0 {
		return false
	}
	m.logins[token]--
	return m.logins[token] == 0
}

// reinitialize finalizes and initializes the library again, under the
// exclusive lock, if no one else did it since generation seen. It returns
// the current generation. With a host, restart (a reset) kills the host
// first — a call the library never returns from cannot hold the lock — and
// starts a new one; without restart (a rescan) the host finalizes and
// initializes its library as the gateway would in-process.
func (m *module) reinitialize(seen uint64, restart bool) (uint64, error) {
	if m.isolated && restart {
		return m.restartHost(seen)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if g := m.gen.Load(); g != seen {
		return g, nil // another provider on this module reset it already
	}
	_ = m.ctx.Finalize()
	err := m.ctx.Initialize()
	if code, ok := ckrCode(err); ok && code == pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
		err = nil
	}
	g := m.gen.Add(1)
	return g, err
}

// restartHost kills the host and starts a new one, unless another provider
// instance did since generation seen. The calls in flight on the old host
// fail (hostLostError) and release the lock.
func (m *module) restartHost(seen uint64) (uint64, error) {
	m.hostMu.Lock()
	defer m.hostMu.Unlock()
	if g := m.gen.Load(); g != seen {
		return g, nil
	}
	old := m.host
	old.kill()
	select {
	case <-old.exited:
	case <-time.After(5 * time.Second):
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	h, err := startHost(m.path, m.env, m.log)
	g := m.gen.Add(1)
	if err != nil {
		return g, err // ctx stays the dead host: every call fails until the next attempt
	}
	m.host, m.ctx = h, h
	m.pid.Store(int64(h.pid))
	m.restarts.Add(1)
	return g, nil
}

// hostPID is the process id of the module's host (0 in-process).
func (m *module) hostPID() int {
	if !m.isolated {
		return 0
	}
	return int(m.pid.Load())
}
