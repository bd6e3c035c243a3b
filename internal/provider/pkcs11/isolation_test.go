package pkcs11

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/duration"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// recoverWithin is the bound: signing is back within 10 s of a
// hang being detected, a crash, or a kill of the host.
const recoverWithin = 10 * time.Second

// faultModule builds the fault-injecting module (testdata/faultmod) with
// gcc against miekg/pkcs11's headers and returns its path and the
// directory its commands go in. It forwards to SoftHSM2.
func faultModule(t *testing.T) (lib, ctl string) {
	t.Helper()
	testbed.Require(t, "gcc", "go", testbed.SoftHSMModule)
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/miekg/pkcs11").Output()
	if err != nil {
		t.Fatalf("finding miekg/pkcs11's headers: %v", err)
	}
	dir := t.TempDir()
	lib = filepath.Join(dir, "libfaultmod.so")
	cmd := exec.Command("gcc", "-shared", "-fPIC", "-Wall", "-I"+strings.TrimSpace(string(out)), "-o", lib, "testdata/faultmod/faultmod.c", "-ldl")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, msg)
	}
	ctl = filepath.Join(dir, "ctl")
	if err := os.Mkdir(ctl, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAULTMOD_TARGET", testbed.SoftHSMModule)
	t.Setenv("FAULTMOD_DIR", ctl)
	return lib, ctl
}

// signer is the load of a fault test: n goroutines signing with one ES256
// key until stopped; every signature returned is checked.
type signer struct {
	p    *Provider
	ref  string
	pub  *ecdsa.PublicKey
	spec alg.Spec
	info alg.Info

	mu      sync.Mutex
	results []signed
	stop    chan struct{}
	wg      sync.WaitGroup
}

type signed struct {
	start, end time.Time
	err        error
}

func newSigner(t *testing.T, p *Provider) *signer {
	t.Helper()
	spec := alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}
	k := create(t, p, spec, []alg.Usage{alg.UsageSign}, "isolation")
	pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := alg.Lookup("ES256")
	return &signer{p: p, ref: k.Ref, pub: pub.(*ecdsa.PublicKey), spec: spec, info: info, stop: make(chan struct{})}
}

func (s *signer) sign(msg string) error {
	d := alg.Digest(s.info, []byte(msg))
	sig, err := s.p.Sign(context.Background(), provider.SignRequest{Ref: s.ref, Spec: s.spec, Algorithm: s.info, Input: d})
	if err == nil {
		der, derr := alg.ECDSARawToDER(sig)
		if derr != nil || !ecdsa.VerifyASN1(s.pub, d, der) {
			return errBadSignature
		}
	}
	return err
}

var errBadSignature = errors.New("a returned signature does not verify")

func (s *signer) run(n int) {
	for g := 0; g < n; g++ {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-s.stop:
					return
				default:
				}
				start := time.Now()
				err := s.sign(fmt.Sprintf("load %d %d", g, i))
				s.mu.Lock()
				s.results = append(s.results, signed{start, time.Now(), err})
				s.mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
}

func (s *signer) end(t *testing.T) []signed {
	t.Helper()
	close(s.stop)
	s.wg.Wait()
	for _, r := range s.results {
		if errors.Is(r.err, errBadSignature) {
			t.Fatal(r.err)
		}
	}
	return s.results
}

// first returns the first result after from that matches.
func (s *signer) first(from time.Time, match func(signed) bool) (signed, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.results {
		if !r.start.Before(from) && match(r) {
			return r, true
		}
	}
	return signed{}, false
}

func (s *signer) waitFirst(t *testing.T, from time.Time, within time.Duration, what string, match func(signed) bool) signed {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if r, ok := s.first(from, match); ok {
			return r
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.mu.Lock()
	seen := map[string]int{}
	for _, r := range s.results {
		if !r.start.Before(from) {
			seen[fmt.Sprint(r.err)]++
		}
	}
	s.mu.Unlock()
	t.Fatalf("%s: not within %s (results since: %v)", what, within, seen)
	return signed{}
}

func ok(r signed) bool { return r.err == nil }

// waitRecovered waits for the host old to be replaced and for a signature
// made on the new one, both within recoverWithin of since.
func (s *signer) waitRecovered(t *testing.T, p *Provider, old int, since time.Time) signed {
	t.Helper()
	for p.mod.hostPID() == old {
		if time.Since(since) > recoverWithin {
			t.Fatalf("the host (pid %d) was not replaced within %s", old, recoverWithin)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s.waitFirst(t, time.Now(), recoverWithin-time.Since(since), "a signature on the new host", ok)
}

func openFD(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// A module that hangs in C_Sign or crashes the process: the hung call is
// answered HSM_TIMEOUT at its deadline and signing is back within 10 s of
// the hang being detected; the crash fails the calls in flight with
// SERVICE_UNAVAILABLE and signing is back within 10 s. A software
// provider beside it serves throughout; every signature verifies; closing
// the provider leaves no goroutine or descriptor behind.
func TestIsolatedModuleHangAndCrash(t *testing.T) {
	lib, ctl := faultModule(t)
	testbed.ProcessSoftHSM(t)
	goroutinesBefore, fdsBefore := runtime.NumGoroutine(), openFD(t)

	c := testConfig(t, 8)
	c.LibraryPath = lib
	c.OperationTimeout = duration.Duration(2 * time.Second)
	p, err := Open(context.Background(), "faulty", TypePKCS11, c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			p.Close()
		}
	}()
	soft, err := software.Open("soft", t.TempDir(), make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	softKey := softwareSigner(t, soft)

	s := newSigner(t, p)
	s.run(8)
	softErrs := make(chan error, 1)
	softStop := make(chan struct{})
	go func() { softErrs <- softKey(softStop) }()
	time.Sleep(300 * time.Millisecond)

	// Hang.
	pid := p.mod.hostPID()
	hangAt := time.Now()
	touch(t, filepath.Join(ctl, "hang"))
	// The call that hangs may have started (in Go) before the command.
	hung := s.waitFirst(t, hangAt.Add(-time.Second), 10*time.Second, "a hung C_Sign answers HSM_TIMEOUT",
		func(r signed) bool { return r.end.After(hangAt) && errors.Is(r.err, kgerr.ErrTimeout) })
	if d := hung.end.Sub(hung.start); d < 1900*time.Millisecond || d > 3*time.Second {
		t.Errorf("the hung call was answered after %s; want at its 2s deadline", d.Round(time.Millisecond))
	}
	back := s.waitFirst(t, hung.end, recoverWithin, "signing after the hang", ok)
	t.Logf("hang: HSM_TIMEOUT after %s, signing back %s after detection", hung.end.Sub(hung.start).Round(time.Millisecond),
		back.end.Sub(hung.end).Round(time.Millisecond))
	if p.mod.hostPID() == pid {
		t.Error("the hung host was not replaced")
	}

	// Crash. The calls in flight fail with SERVICE_UNAVAILABLE, or, being
	// idempotent, are retried once the new host is up within their
	// deadline: a client sees 503 or a valid signature, nothing else.
	pid = p.mod.hostPID()
	crashAt := time.Now()
	touch(t, filepath.Join(ctl, "crash"))
	back = s.waitRecovered(t, p, pid, crashAt)
	t.Logf("crash: signing back %s after it", back.end.Sub(crashAt).Round(time.Millisecond))
	time.Sleep(200 * time.Millisecond)

	rs := s.end(t)
	close(softStop)
	if err := <-softErrs; err != nil {
		t.Fatalf("the software provider beside the faulty module: %v", err)
	}
	var signedOK int
	for _, r := range rs {
		switch {
		case r.err == nil:
			signedOK++
		case errors.Is(r.err, kgerr.ErrTimeout), errors.Is(r.err, kgerr.ErrServiceUnavailable):
		default:
			t.Errorf("a sign failed with %v; want HSM_TIMEOUT or SERVICE_UNAVAILABLE only", r.err)
		}
	}
	if st := p.Stats(); st.Info["module_host_restarts"].(uint64) < 2 {
		t.Errorf("module host restarts %v, want at least 2", st.Info["module_host_restarts"])
	}
	p.Close()
	closed = true
	var goroutinesAfter, fdsAfter int
	deadline := time.Now().Add(5 * time.Second)
	for {
		goroutinesAfter, fdsAfter = runtime.NumGoroutine(), openFD(t)
		if (goroutinesAfter <= goroutinesBefore && fdsAfter <= fdsBefore) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if goroutinesAfter > goroutinesBefore || fdsAfter > fdsBefore {
		t.Errorf("leak: goroutines %d → %d, descriptors %d → %d", goroutinesBefore, goroutinesAfter, fdsBefore, fdsAfter)
	}
	t.Logf("%d signs (%d valid signatures); goroutines %d → %d, descriptors %d → %d", len(rs), signedOK,
		goroutinesBefore, goroutinesAfter, fdsBefore, fdsAfter)
}

func touch(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// softwareSigner makes a software key and returns a loop that signs with
// it until stop, failing on the first error or a call slower than a
// second.
func softwareSigner(t *testing.T, soft *software.Provider) func(stop <-chan struct{}) error {
	t.Helper()
	spec := alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}
	k, err := soft.CreateKey(context.Background(), provider.CreateKeyRequest{ObjectID: newID(), Label: "soft", Spec: spec, Usage: []alg.Usage{alg.UsageSign}})
	if err != nil {
		t.Fatal(err)
	}
	info, _ := alg.Lookup("ES256")
	return func(stop <-chan struct{}) error {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return nil
			case <-time.After(10 * time.Millisecond):
			}
			start := time.Now()
			if _, err := soft.Sign(context.Background(), provider.SignRequest{Ref: k.Ref, Spec: spec, Algorithm: info,
				Input: alg.Digest(info, []byte{byte(i)})}); err != nil {
				return err
			}
			if d := time.Since(start); d > time.Second {
				return fmt.Errorf("a software sign took %s", d)
			}
		}
	}
}

// kill -9 of the host under load, three times: the calls in flight fail
// with SERVICE_UNAVAILABLE, a new host is started, signing is back within
// 10 s each time, and each restart is reported as an event.
func TestIsolatedHostKilledUnderLoad(t *testing.T) {
	p := openTest(t, 8)
	var mu sync.Mutex
	var events []provider.Event
	p.SetEventSink(func(e provider.Event) { mu.Lock(); events = append(events, e); mu.Unlock() })
	s := newSigner(t, p)
	s.run(8)
	time.Sleep(200 * time.Millisecond)
	for cycle := 1; cycle <= 3; cycle++ {
		pid := p.mod.hostPID()
		killed := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		back := s.waitRecovered(t, p, pid, killed)
		t.Logf("cycle %d: signing back %s after the kill", cycle, back.end.Sub(killed).Round(time.Millisecond))
		time.Sleep(100 * time.Millisecond)
	}
	for _, r := range s.end(t) {
		if r.err != nil && !errors.Is(r.err, kgerr.ErrServiceUnavailable) {
			t.Errorf("a sign failed with %v; want SERVICE_UNAVAILABLE only", r.err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	restarts := 0
	for _, e := range events {
		if e.Kind == "module_host_restarted" {
			restarts++
		}
	}
	if restarts < 3 {
		t.Errorf("%d module_host_restarted events for 3 kills", restarts)
	}
}

// The host sees the PIN in neither its arguments nor its environment, and
// holds none of the gateway's descriptors (a listening socket, an open
// file) beyond its own socket and stdio.
func TestHostHasNoPINAndNoInheritedDescriptors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := os.Create(filepath.Join(t.TempDir(), "gateway-file"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := openTest(t, 2)
	pid := p.mod.hostPID()
	if pid == 0 {
		t.Fatal("the default isolation must be process")
	}
	for _, name := range []string{"cmdline", "environ"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), testPIN) || strings.Contains(string(b), "KEYGRID_TEST_PIN") {
			t.Errorf("the host's %s holds the PIN or its variable", name)
		}
	}
	mine := map[string]bool{}
	for _, l := range fdLinks(t, os.Getpid()) {
		mine[l] = true
	}
	for fd, l := range fdLinks(t, pid) {
		if fd <= 2 {
			continue
		}
		// Sockets and pipes are named by inode: the same name is the same
		// object. Files the host's own runtime opens have the gateway's
		// names too (cgroup limits): only the gateway's file counts.
		shared := strings.HasPrefix(l, "socket:") || strings.HasPrefix(l, "pipe:") || l == f.Name()
		if mine[l] && shared {
			t.Errorf("the host holds descriptor %d (%s), which is the gateway's", fd, l)
		}
		if fd == 3 && !strings.HasPrefix(l, "socket:") {
			t.Errorf("the host's descriptor 3 is %s, want its socket", l)
		}
	}
}

func fdLinks(t *testing.T, pid int) map[int]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for _, e := range es {
		var fd int
		fmt.Sscan(e.Name(), &fd)
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			out[fd] = l
		}
	}
	return out
}

// isolation: in-process keeps loading the module into this process.
func TestInProcessIsolationLoadsHere(t *testing.T) {
	c := testConfig(t, 2)
	c.Isolation = IsolationInProcess
	p, err := Open(context.Background(), "hsm", TypePKCS11, c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if pid := p.mod.hostPID(); pid != 0 {
		t.Fatalf("in-process has a host (pid %d)", pid)
	}
	if _, ok := p.mod.ctx.(local); !ok {
		t.Fatalf("in-process module is %T", p.mod.ctx)
	}
	s := newSigner(t, p)
	if err := s.sign("in-process"); err != nil {
		t.Fatal(err)
	}
	c.Isolation = "thread"
	if _, err := Open(context.Background(), "hsm", TypePKCS11, c, nil); err == nil || !strings.Contains(err.Error(), "isolation") {
		t.Fatalf("isolation: thread: %v, want a refusal naming the field", err)
	}
}
