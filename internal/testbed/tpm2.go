package testbed

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The parts of a tpm2-pkcs11 bed (Debian packages swtpm, swtpm-tools,
// tpm2-tools, tpm2-abrmd, libtss2-tcti-tabrmd0, libtss2-tcti-swtpm0,
// libtpm2-pkcs11-1, libtpm2-pkcs11-tools, dbus-daemon).
var tpm2Tools = []string{"swtpm", "tpm2-abrmd", "dbus-daemon", "tpm2_ptool", "tpm2_dictionarylockout", "pkcs11-tool"}

// TPM2Module returns the path of the tpm2-pkcs11 module, or "".
func TPM2Module() string {
	m, _ := filepath.Glob("/usr/lib/*/pkcs11/libtpm2_pkcs11.so")
	if len(m) == 0 {
		return ""
	}
	return m[0]
}

// MissingTPM2 returns what of the tpm2-pkcs11 bed is missing, or "".
func MissingTPM2() string {
	if TPM2Module() == "" {
		return "libtpm2_pkcs11.so (libtpm2-pkcs11-1)"
	}
	if _, err := os.Stat(tcti("tabrmd")); err != nil {
		return "libtss2-tcti-tabrmd (libtss2-tcti-tabrmd0)"
	}
	if _, err := os.Stat(tcti("swtpm")); err != nil {
		return "libtss2-tcti-swtpm (libtss2-tcti-swtpm0)"
	}
	return Missing(tpm2Tools...)
}

func tcti(name string) string {
	m, _ := filepath.Glob("/usr/lib/*/libtss2-tcti-" + name + ".so.0")
	if len(m) == 0 {
		return "/usr/lib/libtss2-tcti-" + name + ".so.0"
	}
	return m[0]
}

// TPM2 is a tpm2-pkcs11 token on a software TPM, every piece in its own
// directory: swtpm on loopback TCP, a private D-Bus session bus, the
// tpm2-abrmd resource manager on it (swtpm alone holds 3 transient objects),
// and a tpm2-pkcs11 store with one token. The TPM's dictionary-attack
// lockout is cleared and disabled (3 bad PINs would lock the whole TPM for
// 1,000 s). Stop ends every process the bed started.
type TPM2 struct {
	Dir    string // the bed's directory
	Store  string // TPM2_PKCS11_STORE
	Bus    string // DBUS_SESSION_BUS_ADDRESS
	Module string
	Label  string
	PIN    string
	SOPIN  string
	Port   int // swtpm's command port (control on Port+1)

	mu    sync.Mutex
	procs []*bedProc // in start order
}

type bedProc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
}

// StartTPM2 starts a bed under dir (which must exist) with a token of label
// and user PIN. On failure, whatever was started is stopped.
func StartTPM2(dir, label, pin string) (_ *TPM2, err error) {
	if m := MissingTPM2(); m != "" {
		return nil, fmt.Errorf("%s is missing", m)
	}
	t := &TPM2{Dir: dir, Store: filepath.Join(dir, "store"), Module: TPM2Module(), Label: label, PIN: pin, SOPIN: "so-" + pin}
	defer func() {
		if err != nil {
			t.Stop()
		}
	}()
	for _, d := range []string{t.Store, filepath.Join(dir, "tpm")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if err := t.startSWTPM(); err != nil {
		return nil, err
	}
	if err := t.startBus(); err != nil {
		return nil, err
	}
	abrmd := exec.Command("tpm2-abrmd", "--session", "--allow-root", "--logger=stdout", "--max-transients=100",
		fmt.Sprintf("--tcti=swtpm:host=127.0.0.1,port=%d", t.Port))
	if _, err := t.start("tpm2-abrmd", abrmd, filepath.Join(dir, "tpm2-abrmd.log")); err != nil {
		return nil, err
	}
	// The first TPM command waits for tpm2-abrmd to own its bus name. A
	// recovery time of 0 disables the lockout.
	if err := t.retry(10*time.Second, "tpm2_dictionarylockout", "--clear-lockout", "--setup-parameters",
		"--max-tries=1000", "--recovery-time=0", "--lockout-recovery-time=0"); err != nil {
		return nil, err
	}
	if err := t.run("tpm2_ptool", "init", "--path="+t.Store); err != nil {
		return nil, err
	}
	if err := t.run("tpm2_ptool", "addtoken", "--pid=1", "--label="+label, "--sopin="+t.SOPIN, "--userpin="+pin, "--path="+t.Store); err != nil {
		return nil, err
	}
	return t, nil
}

// startSWTPM starts swtpm on two free adjacent loopback ports (the TCTI
// takes the control channel at port+1), trying other ports if another
// process took them meanwhile.
func (t *TPM2) startSWTPM() error {
	var last error
	for range 10 {
		port, err := freePortPair()
		if err != nil {
			return err
		}
		cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+filepath.Join(t.Dir, "tpm"),
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
			"--flags", "not-need-init,startup-clear")
		p, err := t.start("swtpm", cmd, filepath.Join(t.Dir, "swtpm.log"))
		if err != nil {
			return err
		}
		if last = waitListening(p, port+1, 10*time.Second); last == nil {
			t.Port = port
			return nil
		}
		t.stopLast()
	}
	return fmt.Errorf("swtpm: %w", last)
}

// freePortPair returns a port p such that p and p+1 were free on 127.0.0.1.
func freePortPair() (int, error) {
	for range 50 {
		l1, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+1))
		l1.Close()
		if err == nil {
			l2.Close()
			return port, nil
		}
	}
	return 0, errors.New("no two adjacent free ports on 127.0.0.1")
}

func waitListening(p *bedProc, port int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited at start", p.name)
		default:
		}
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not listen on port %d", p.name, port)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startBus starts a private D-Bus session bus on a socket in the bed's
// directory and waits for its address.
func (t *TPM2) startBus() error {
	conf := filepath.Join(t.Dir, "bus.conf")
	sock := filepath.Join(t.Dir, "bus")
	xml := `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=` + sock + `</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`
	if err := os.WriteFile(conf, []byte(xml), 0o600); err != nil {
		return err
	}
	cmd := exec.Command("dbus-daemon", "--config-file="+conf, "--nofork", "--nopidfile", "--print-address")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	p, err := t.start("dbus-daemon", cmd, "")
	if err != nil {
		return err
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(s)
		// Keep draining, so that the daemon never blocks on a full pipe.
		buf := make([]byte, 512)
		for {
			if _, err := out.Read(buf); err != nil {
				return
			}
		}
	}()
	select {
	case addr := <-line:
		if addr == "" {
			return errors.New("dbus-daemon printed no address")
		}
		t.Bus = addr
		return nil
	case <-p.exited:
		return errors.New("dbus-daemon exited at start")
	case <-time.After(10 * time.Second):
		return errors.New("dbus-daemon printed no address in 10s")
	}
}

// start starts cmd in its own process group, killed with the test process,
// with the bed's environment and its output in logPath (none when "").
func (t *TPM2) start(name string, cmd *exec.Cmd, logPath string) (*bedProc, error) {
	cmd.Env = t.Env()
	cmd.Dir = t.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, err
		}
		defer f.Close() // the child has its own descriptor
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &bedProc{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(p.exited) }()
	t.mu.Lock()
	t.procs = append(t.procs, p)
	t.mu.Unlock()
	return p, nil
}

// run runs a tpm2 tool of the bed and fails with its output.
func (t *TPM2) run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Env = t.Env()
	cmd.Dir = t.Dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, args[0], err, redact(string(out), t.PIN, t.SOPIN))
	}
	return nil
}

func (t *TPM2) retry(within time.Duration, name string, args ...string) error {
	deadline := time.Now().Add(within)
	for {
		err := t.run(name, args...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func redact(s string, secrets ...string) string {
	for _, x := range secrets {
		s = strings.ReplaceAll(s, x, "***")
	}
	return s
}

// Env is the environment of a process using the bed's token: the module
// reads TPM2_PKCS11_STORE and TPM2_PKCS11_TCTI at C_Initialize, the tabrmd
// TCTI finds the bus in DBUS_SESSION_BUS_ADDRESS, tpm2-tools read
// TPM2TOOLS_TCTI.
func (t *TPM2) Env() []string {
	env := []string{}
	for _, e := range os.Environ() {
		switch k, _, _ := strings.Cut(e, "="); k {
		case "TPM2_PKCS11_STORE", "TPM2_PKCS11_TCTI", "TPM2TOOLS_TCTI", "DBUS_SESSION_BUS_ADDRESS":
			continue
		}
		env = append(env, e)
	}
	return append(env, t.vars()...)
}

func (t *TPM2) vars() []string {
	return []string{"TPM2_PKCS11_STORE=" + t.Store, "TPM2_PKCS11_TCTI=tabrmd:bus_type=session",
		"TPM2TOOLS_TCTI=tabrmd:bus_type=session", "DBUS_SESSION_BUS_ADDRESS=" + t.Bus}
}

// Setenv points this process at the bed (before the module is loaded: it
// reads its environment once, at C_Initialize).
func (t *TPM2) Setenv() {
	for _, v := range t.vars() {
		k, val, _ := strings.Cut(v, "=")
		os.Setenv(k, val)
	}
}

// Tool returns a pkcs11-tool command on the bed's token, logged in.
func (t *TPM2) Tool(args ...string) *exec.Cmd {
	base := []string{"--module", t.Module, "--token-label", t.Label, "--login", "--pin", t.PIN}
	cmd := exec.Command("pkcs11-tool", append(base, args...)...)
	cmd.Env = t.Env()
	return cmd
}

// Stop ends the bed's processes, the last started first: SIGTERM, then
// SIGKILL to the process group after 5 s.
func (t *TPM2) Stop() {
	for t.stopLast() {
	}
}

func (t *TPM2) stopLast() bool {
	t.mu.Lock()
	if len(t.procs) == 0 {
		t.mu.Unlock()
		return false
	}
	p := t.procs[len(t.procs)-1]
	t.procs = t.procs[:len(t.procs)-1]
	t.mu.Unlock()
	pgid := p.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.exited
	}
	syscall.Kill(-pgid, syscall.SIGKILL) // anything the process left in its group
	return true
}

// SetupTPM2Process starts a bed for the whole test binary in a temporary
// directory and points this process's environment at it. It returns nil,
// with a reason, when a part is missing; the cleanup stops the bed and
// removes its directory.
func SetupTPM2Process(label, pin string) (*TPM2, func(), string, error) {
	if m := MissingTPM2(); m != "" {
		return nil, func() {}, m + " is missing (run scripts/test-deps.sh)", nil
	}
	dir, err := os.MkdirTemp("", "keygrid-tpm2-")
	if err != nil {
		return nil, nil, "", err
	}
	t, err := StartTPM2(dir, label, pin)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, "", err
	}
	t.Setenv()
	return t, func() { t.Stop(); os.RemoveAll(dir) }, "", nil
}

// RequireTPM2 skips the test when a part of the tpm2-pkcs11 bed is
// missing, or fails it when parts are required.
func RequireTPM2(tb testing.TB) {
	tb.Helper()
	if m := MissingTPM2(); m != "" {
		if Required() {
			tb.Fatalf("%s is missing and KEYGRID_REQUIRE_SOFTHSM=1 (run scripts/test-deps.sh)", m)
		}
		tb.Skipf("%s is missing (run scripts/test-deps.sh)", m)
	}
}

// NewTPM2 starts a bed in a test's temporary directory, stopped when the
// test ends.
func NewTPM2(tb testing.TB, label, pin string) *TPM2 {
	tb.Helper()
	RequireTPM2(tb)
	t, err := StartTPM2(tb.TempDir(), label, pin)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(t.Stop)
	return t
}
