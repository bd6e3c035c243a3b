package pkcs11

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
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
// host protocol (hostwire.go) on a socket pair. Calls from many goroutines
// are in flight at once; each waits for its own reply. When the host dies
// every call in flight, and every later one, fails with a hostLostError,
// which the provider classifies as a lost device (reset class): recovery
// starts a new host.
type hostClient struct {
	path string
	log  *slog.Logger
	cmd  *exec.Cmd
	conn *net.UnixConn
	pid  int

	wmu sync.Mutex // one frame at a time on conn

	mu      sync.Mutex
	pending map[uint32]chan hostReply
	next    uint32
	lost    error // set once the host is gone

	closing atomic.Bool   // set by close: the end is expected
	exited  chan struct{} // closed when the process has been reaped
	state   string        // how it ended, set before exited is closed
}

type hostReply struct {
	status byte
	body   []byte
}

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
// the socket as descriptor 3 and nothing else: stdin and stdout are
// /dev/null, stderr goes to log line by line, and every other descriptor
// of the gateway is close-on-exec.
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
	fc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return nil, fmt.Errorf("%w %s: socket: %v", errModule, path, err)
	}
	cmd := exec.Command(exe, hostCommand)
	cmd.Env = append(env, hostEnv+"=1")
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = &lineLog{log: log}
	cmd.SysProcAttr = hostSysProcAttr()
	cmd.WaitDelay = time.Second // a grandchild holding stderr cannot keep Wait waiting
	if err := cmd.Start(); err != nil {
		fc.Close()
		return nil, fmt.Errorf("%w %s: starting the module host: %v", errModule, path, err)
	}
	c := &hostClient{path: path, log: log, cmd: cmd, conn: fc.(*net.UnixConn), pid: cmd.Process.Pid,
		pending: map[uint32]chan hostReply{}, exited: make(chan struct{})}
	go c.reap()
	go c.read()
	opened := make(chan error, 1)
	go func() {
		w := newReq(hopOpen)
		w.str(path)
		_, err := c.call(w)
		opened <- err
	}()
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

// reap waits for the process and records how it ended.
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
	c.conn.Close()
}

// read dispatches replies until the socket fails, then fails every call
// in flight.
func (c *hostClient) read() {
	br := bufio.NewReaderSize(c.conn, 64<<10)
	var hdr [9]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			break
		}
		n := binary.LittleEndian.Uint32(hdr[0:4])
		if n < 5 || n > maxFrame {
			break
		}
		body := make([]byte, n-5)
		if _, err := io.ReadFull(br, body); err != nil {
			break
		}
		id := binary.LittleEndian.Uint32(hdr[4:8])
		c.mu.Lock()
		ch := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if ch != nil {
			ch <- hostReply{status: hdr[8], body: body}
		}
	}
	c.kill() // a broken stream is a broken host
	state := "its socket closed"
	select {
	case <-c.exited:
		state = c.state
	case <-time.After(2 * time.Second):
	}
	c.mu.Lock()
	c.lost = &hostLostError{pid: c.pid, state: state}
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	c.mu.Unlock()
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

// close asks the host to finalize and exit (by closing the socket), and
// kills it if it has not within grace.
func (c *hostClient) close(grace time.Duration) {
	c.closing.Store(true)
	c.conn.CloseWrite()
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

// newReq starts a request frame of op; the header is filled by call.
func newReq(op byte) *wbuf {
	w := &wbuf{b: make([]byte, 9, 128)}
	w.b[8] = op
	return w
}

// call sends the request w and waits for its reply.
func (c *hostClient) call(w *wbuf) (*rbuf, error) {
	if len(w.b)-4 > maxFrame {
		return nil, &hostCallError{msg: "request too large"}
	}
	ch := make(chan hostReply, 1)
	c.mu.Lock()
	if c.lost != nil {
		err := c.lost
		c.mu.Unlock()
		return nil, err
	}
	c.next++
	id := c.next
	c.pending[id] = ch
	c.mu.Unlock()
	binary.LittleEndian.PutUint32(w.b[0:4], uint32(len(w.b)-4))
	binary.LittleEndian.PutUint32(w.b[4:8], id)
	c.wmu.Lock()
	_, err := c.conn.Write(w.b)
	c.wmu.Unlock()
	if err != nil {
		c.kill() // the reader then fails this call with the others
	}
	r, ok := <-ch
	if !ok {
		c.mu.Lock()
		err := c.lost
		c.mu.Unlock()
		return nil, err
	}
	switch r.status {
	case statusOK:
		return &rbuf{b: r.body}, nil
	case statusCKR:
		rb := rbuf{b: r.body}
		code := rb.uint()
		if rb.err != nil {
			return nil, rb.err
		}
		return nil, pkcs11.Error(code)
	}
	return nil, &hostCallError{msg: string(r.body)}
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
