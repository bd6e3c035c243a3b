package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// P11KitClientModule returns the path of p11-kit's client module, or "".
func P11KitClientModule() string {
	m, _ := filepath.Glob("/usr/lib/*/pkcs11/p11-kit-client.so")
	if len(m) == 0 {
		return ""
	}
	return m[0]
}

// P11KitServer is a `p11-kit server` exposing one SoftHSM2 token on a unix
// socket: the network between the gateway and its HSM. Stop cuts the
// gateway off (the whole process group is killed: the server forks one
// p11-kit-remote per client connection); Start brings the HSM back on the
// same socket path.
type P11KitServer struct {
	Socket string
	soft   *SoftHSM
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// NewP11KitServer prepares (does not start) a server for soft's token with
// its socket in dir.
func NewP11KitServer(soft *SoftHSM, dir string) *P11KitServer {
	return &P11KitServer{Socket: filepath.Join(dir, "p11kit.sock"), soft: soft}
}

// Address is the value of P11_KIT_SERVER_ADDRESS for clients.
func (s *P11KitServer) Address() string { return "unix:path=" + s.Socket }

// Start starts the server in its own process group and waits for its
// socket.
func (s *P11KitServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("p11-kit server already running")
	}
	os.Remove(s.Socket) // a stale socket from a killed server
	cmd := exec.Command("p11-kit", "server", "-f", "-n", s.Socket, "-p", SoftHSMModule, "pkcs11:token="+s.soft.Label)
	cmd.Env = s.soft.Env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("p11-kit server: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(s.Socket); err == nil {
			break
		}
		select {
		case <-exited:
			return errors.New("p11-kit server exited at start")
		default:
		}
		if time.Now().After(deadline) {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			return errors.New("p11-kit server did not create its socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.cmd, s.exited = cmd, exited
	return nil
}

// Stop kills the server's process group (the listener and every
// connection) and waits for the listener to exit.
func (s *P11KitServer) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
	return err
}

// StartP11Kit makes a SoftHSM2 token of its own (label, pin) behind a
// started p11-kit server, points P11_KIT_SERVER_ADDRESS at it for the test,
// and returns the client module's path and the server (stopped, and the
// token removed, when the test ends). It skips, or fails when parts are
// required, without p11-kit.
func StartP11Kit(t *testing.T, label, pin string) (client string, srv *P11KitServer) {
	t.Helper()
	Require(t, "p11-kit", "pkcs11-tool", "softhsm2-util", SoftHSMModule)
	if client = P11KitClientModule(); client == "" {
		Require(t, "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so")
	}
	// A short directory: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "kgp11")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	soft, err := NewSoftHSM(dir, label, pin)
	if err != nil {
		t.Fatal(err)
	}
	srv = NewP11KitServer(soft, dir)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	t.Setenv("P11_KIT_SERVER_ADDRESS", srv.Address())
	// The socket exists before the server serves the token (on a loaded
	// machine a first client can see no slot): wait until a client lists it.
	deadline := time.Now().Add(15 * time.Second)
	for {
		cmd := exec.Command("pkcs11-tool", "--module", client, "-L")
		cmd.Env = append(os.Environ(), "P11_KIT_SERVER_ADDRESS="+srv.Address())
		out, err := cmd.CombinedOutput()
		if err == nil && bytes.Contains(out, []byte(label)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("p11-kit server does not list token %s: %v\n%s", label, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return client, srv
}
