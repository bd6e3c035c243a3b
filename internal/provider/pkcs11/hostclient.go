package pkcs11

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/pkcs11"
)

// hostClient is the gateway's end of a module host (isolation: process): a
// child process, this same binary, that loads the library and serves the
// host protocol (hostwire.go).
//
// Transport. The host's descriptor 3 is a control socket: it carries the
// opening request (hopOpen) and then, one at a time, the host's ends of
// lanes — socket pairs the gateway makes as it needs them and passes over
// with SCM_RIGHTS. A lane carries one call at a time: the caller takes an
// idle lane, writes its request in one write and reads the reply itself,
// in blocking system calls, and gives the lane back. On the host one
// goroutine per lane reads a request, calls the library and writes the
// reply. So a call costs a write and a read on each side and one wake-up
// of each process: no demultiplexer goroutine, no call ids, no channel
// between goroutines, and calls on different lanes never queue behind one
// another on one socket.
//
// When the host dies every call in flight, and every later one, fails
// with a hostLostError, which the provider classifies as a lost device
// (reset class): recovery starts a new host.
type hostClient struct {
	path string
	log  *slog.Logger
	cmd  *exec.Cmd
	ctl  *os.File // the control socket (blocking)
	pid  int

	ctlMu sync.Mutex // one lane hand-over at a time on ctl

	mu    sync.Mutex
	idle  []*lane        // lanes free for a call, most recent last
	lanes map[*lane]bool // every open lane (in use or idle)
	lost  error          // set once the host is gone

	closing atomic.Bool   // set by close: the end is expected
	exited  chan struct{} // closed when the process has been reaped
	state   string        // how it ended, set before exited is closed

	// deadlines holds the deadline (time.Time) of the call that has a
	// session (pkcs11.SessionHandle) now, where the provider set one: the
	// calls on it give up when it passes (errCallDeadline).
	deadlines sync.Map
}

// lane is the gateway's end of one socket pair to the host, on the
// runtime's poller: a call waiting for its reply parks its goroutine, not
// an OS thread, and can give up at a deadline. One call at a time; buf is
// its reply buffer, reused from call to call. Against blocking reads in one
// interleaved run (bench/results/hsm-isolation.md): about +25 µs p50 at
// concurrency 1, but at 16 less CPU per call (+104 against +182 µs over
// in-process, ES256) and more throughput (0.63 against 0.49 of
// in-process); with a network HSM, where every call waits milliseconds, a
// parked goroutine is what scales. (The host's end on the poller too was
// measured and left: 25–40 µs more at concurrency 1 and more host CPU
// behind p11-kit, for less CPU at 16 on a local token only.)
type lane struct {
	fd  int
	f   *os.File
	buf []byte
}

// errCallDeadline is the error of a call on a lane that passed the
// deadline of its session's call (hostClient.deadlines): the host may still
// be inside the module, on that session; the lane is closed.
var errCallDeadline = errors.New("the call to the module host passed its deadline")

// Buffers of a lane or a request above this size are not kept after the
// call (a large AES-GCM input must not pin its memory).
const keepBuf = 64 << 10

// hostLostError is the failure of a call whose host process is gone (it
// crashed, was killed, or was stopped by recovery). It unwraps to
// CKR_DEVICE_ERROR: the provider's classification treats it as a lost
// device, answers 503 and resets, which starts a new host.
type hostLostError struct {
	pid   int
	state string
}

func (e *hostLostError) Error() string {
	return fmt.Sprintf("the PKCS#11 module host process (pid %d) is gone: %s", e.pid, e.state)
}

func (e *hostLostError) Unwrap() error { return pkcs11.Error(pkcs11.CKR_DEVICE_ERROR) }

// hostCallError is a failure the host reports from outside the library (a
// request it could not decode, a library it cannot load).
type hostCallError struct{ msg string }

func (e *hostCallError) Error() string { return "pkcs11 host: " + e.msg }

// hostOpenTimeout bounds loading and initialising the library in a new
// host (a vendor library may connect to its HSM there).
const hostOpenTimeout = 30 * time.Second

// startHost starts a host for the library at path, with env as its whole
// environment, and has it load and initialise the library. The host gets
// the control socket as descriptor 3 and nothing else: stdin and stdout
// are /dev/null, stderr goes to log line by line, and every other
// descriptor of the gateway is close-on-exec.
func startHost(path string, env []string, log *slog.Logger) (*hostClient, error) {
	closeOnExec()
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("%w %s: finding this program to run the module host: %v", errModule, path, err)
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w %s: socketpair: %v", errModule, path, err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "pkcs11-host"), os.NewFile(uintptr(fds[1]), "pkcs11-host")
	defer theirs.Close()
	cmd := exec.Command(exe, hostCommand)
	cmd.Env = append(env, hostEnv+"=1")
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = &lineLog{log: log}
	cmd.SysProcAttr = hostSysProcAttr()
	cmd.WaitDelay = time.Second // a grandchild holding stderr cannot keep Wait waiting
	if err := cmd.Start(); err != nil {
		mine.Close()
		return nil, fmt.Errorf("%w %s: starting the module host: %v", errModule, path, err)
	}
	c := &hostClient{path: path, log: log, cmd: cmd, ctl: mine, pid: cmd.Process.Pid,
		lanes: map[*lane]bool{}, exited: make(chan struct{})}
	go c.reap()
	opened := make(chan error, 1)
	go func() { opened <- c.open(path) }()
	select {
	case err = <-opened:
	case <-time.After(hostOpenTimeout):
		err = errors.New("the module host did not load the library in time")
	}
	if err != nil {
		c.kill()
		return nil, fmt.Errorf("%w %s: %v", errModule, path, err)
	}
	log.Info("pkcs11 module host started", "pid", c.pid)
	return c, nil
}

// open sends hopOpen on the control socket and reads its reply.
func (c *hostClient) open(path string) error {
	w := newReq(hopOpen)
	w.str(path)
	defer w.recycle()
	c.ctlMu.Lock()
	frame, err := roundTrip(rawFD(c.ctl.Fd()), w.b, nil)
	c.ctlMu.Unlock()
	if err != nil {
		return c.lostErr()
	}
	return replyErr(frame[4], frame[5:])
}

// reap waits for the process, records how it ended and fails every lane:
// a call blocked on one returns at once, even if a grandchild of the host
// kept the host's end open.
func (c *hostClient) reap() {
	err := c.cmd.Wait()
	state := "exited"
	if c.cmd.ProcessState != nil {
		state = c.cmd.ProcessState.String()
	} else if err != nil {
		state = err.Error()
	}
	c.state = state
	close(c.exited)
	c.mu.Lock()
	if c.lost == nil {
		c.lost = &hostLostError{pid: c.pid, state: state}
	}
	for l := range c.lanes {
		syscall.Shutdown(l.fd, syscall.SHUT_RDWR) // the fd stays valid: its user closes it
	}
	idle := c.idle
	c.idle = nil
	for _, l := range idle {
		delete(c.lanes, l)
	}
	c.mu.Unlock()
	for _, l := range idle {
		l.f.Close()
	}
	syscall.Shutdown(int(c.ctl.Fd()), syscall.SHUT_RDWR) // an open blocked on it returns
	c.ctlMu.Lock()
	c.ctl.Close()
	c.ctlMu.Unlock()
	level := slog.LevelWarn
	if c.closing.Load() {
		level = slog.LevelInfo
	}
	c.log.Log(context.Background(), level, "pkcs11 module host ended", "pid", c.pid, "state", state)
}

// kill ends the host at once (SIGKILL works on a stopped process too).
func (c *hostClient) kill() {
	select {
	case <-c.exited:
	default:
		c.cmd.Process.Kill()
	}
}

// lostErr kills the host after a broken lane (a broken stream is a broken
// host) and returns the error of every call from now on.
func (c *hostClient) lostErr() error {
	c.kill()
	select {
	case <-c.exited:
	case <-time.After(2 * time.Second):
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lost == nil {
		c.lost = &hostLostError{pid: c.pid, state: "its socket closed"}
	}
	return c.lost
}

// close asks the host to finalize and exit (by closing the control
// socket and the idle lanes), and kills it if it has not within grace.
func (c *hostClient) close(grace time.Duration) {
	c.closing.Store(true)
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	for _, l := range idle {
		delete(c.lanes, l)
	}
	c.mu.Unlock()
	for _, l := range idle {
		l.f.Close()
	}
	c.ctlMu.Lock()
	select {
	case <-c.exited: // reap closed ctl
	default:
		syscall.Shutdown(int(c.ctl.Fd()), syscall.SHUT_WR)
	}
	c.ctlMu.Unlock()
	select {
	case <-c.exited:
	case <-time.After(grace):
		c.kill()
		<-c.exited
	}
}

// alive reports whether the host still answers calls.
func (c *hostClient) alive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lost == nil
}

// getLane takes an idle lane, or makes a new one and hands its other end to
// the host.
func (c *hostClient) getLane() (*lane, error) {
	c.mu.Lock()
	if c.lost != nil {
		err := c.lost
		c.mu.Unlock()
		return nil, err
	}
	if n := len(c.idle); n > 0 {
		l := c.idle[n-1]
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		return l, nil
	}
	c.mu.Unlock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, &hostCallError{msg: "socketpair: " + err.Error()}
	}
	c.ctlMu.Lock()
	err = syscall.Sendmsg(int(c.ctl.Fd()), []byte{'L'}, syscall.UnixRights(fds[1]), nil, 0)
	c.ctlMu.Unlock()
	syscall.Close(fds[1])
	if err != nil {
		syscall.Close(fds[0])
		return nil, c.lostErr()
	}
	if err := syscall.SetNonblock(fds[0], true); err != nil {
		syscall.Close(fds[0])
		return nil, &hostCallError{msg: "lane: " + err.Error()}
	}
	l := &lane{fd: fds[0], f: os.NewFile(uintptr(fds[0]), "pkcs11-lane"), buf: make([]byte, 0, 4096)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lost != nil {
		l.f.Close()
		return nil, c.lost
	}
	c.lanes[l] = true
	return l, nil
}

// putLane gives a lane back after a call; a broken one, or any once the
// host is gone, is closed.
func (c *hostClient) putLane(l *lane, broken bool) {
	if cap(l.buf) > keepBuf {
		l.buf = make([]byte, 0, 4096)
	}
	c.mu.Lock()
	if !broken && c.lost == nil {
		c.idle = append(c.idle, l)
		c.mu.Unlock()
		return
	}
	delete(c.lanes, l)
	c.mu.Unlock()
	l.f.Close()
}

// newReq starts a request frame of op; the length is filled by do.
func newReq(op byte) *wbuf {
	w := &wbuf{fb: framePool.Get().(*frameBuf)}
	w.b = append(w.fb.b[:0], 0, 0, 0, 0, op)
	return w
}

// do makes the call w on a lane and decodes its results with dec (nil:
// none). w is cleared (it may hold a PIN, plaintext or key material) and
// recycled: w.b is nil after do.
func (c *hostClient) do(w *wbuf, dec func(r *rbuf)) error {
	defer w.recycle()
	if len(w.b)-4 > maxFrame {
		return &hostCallError{msg: "request too large"}
	}
	l, err := c.getLane()
	if err != nil {
		return err
	}
	if !w.deadline.IsZero() {
		l.f.SetDeadline(w.deadline)
	}
	frame, err := roundTrip(l.f, w.b, l.buf)
	if err != nil {
		c.putLane(l, true)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return errCallDeadline // the provider resets the host
		}
		return c.lostErr()
	}
	if !w.deadline.IsZero() {
		l.f.SetDeadline(time.Time{})
	}
	l.buf = frame[:0]
	err = replyErr(frame[4], frame[5:])
	if err == nil {
		r := rbuf{b: frame[5:]}
		if dec != nil {
			dec(&r)
		}
		err = r.done()
	}
	clear(frame) // the reply may hold plaintext or key material
	c.putLane(l, false)
	return err
}

// replyErr is the error of a reply of status and body (nil: success).
func replyErr(status byte, body []byte) error {
	switch status {
	case statusOK:
		return nil
	case statusCKR:
		rb := rbuf{b: body}
		code := rb.uint()
		if rb.err != nil {
			return rb.err
		}
		return pkcs11.Error(code)
	}
	return &hostCallError{msg: string(body)}
}

// lineLog writes a host's stderr to the gateway's log, one record a line.
type lineLog struct {
	log *slog.Logger
	mu  sync.Mutex
	buf []byte
}

func (l *lineLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, b...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 && len(l.buf) < 4096 {
			break
		}
		if i < 0 {
			i = len(l.buf)
		}
		if line := strings.TrimSpace(string(l.buf[:i])); line != "" {
			l.log.Warn("pkcs11 module stderr", "line", line)
		}
		l.buf = l.buf[min(i+1, len(l.buf)):]
	}
	return len(b), nil
}

// hostEnvOf is the environment of a host: the gateway's, without the
// variable the PIN comes from and without the gateway's own KEYGRID_*
// settings (which may hold secrets); the module's own settings
// (SOFTHSM2_CONF, P11_KIT_SERVER_ADDRESS, a vendor's) pass.
func hostEnvOf(environ []string, pinEnv string) []string {
	var out []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "KEYGRID_") || (pinEnv != "" && k == pinEnv) {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// closeOnExec marks every descriptor of this process above stderr
// close-on-exec. Go opens its own that way; this catches those the gateway
// inherited from its parent without the flag, which a host would inherit
// in turn.
func closeOnExec() {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return // not Linux: nothing to read the list from
	}
	for _, e := range es {
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}
