package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// The tests in cli_*_test.go run the built binary, as a user does: it is
// built once per test binary (with a version of its own, so --version can
// be checked), into a directory TestMain removes at the end.

func TestMain(m *testing.M) { testbed.Main(m, withBinaryDir) }

// binaryVersion is the version the test build is stamped with.
const binaryVersion = "v0.0.0-clitest"

var built struct {
	dir  string
	once sync.Once
	path string
	err  error
}

// withBinaryDir makes the directory the binary is built into, and removes
// it after the tests.
func withBinaryDir() (func(), error) {
	dir, err := os.MkdirTemp("", "keygrid-cli-")
	if err != nil {
		return nil, err
	}
	built.dir = dir
	return func() { os.RemoveAll(dir) }, nil
}

// binary builds keygrid-hsm (once) and returns its path.
func binary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goTool); err != nil {
			goTool = "go"
		}
		p := filepath.Join(built.dir, "keygrid-hsm")
		cmd := exec.Command(goTool, "build", "-ldflags", "-X main.version="+binaryVersion, "-o", p, ".")
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = errors.New("go build: " + err.Error() + "\n" + string(out))
			return
		}
		built.path = p
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}

// binRun is one run of the binary: its working directory (a fresh one when
// empty), environment (added to the test's, whose KEYGRID_* variables are
// left out) and standard input.
type binRun struct {
	dir   string
	env   []string
	stdin []byte
}

// result is what a run of the binary gave.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
}

// cleanEnv is the test's environment without the variables the CLI reads.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KEYGRID_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// run runs the binary with args and waits for it (at most a minute).
func (r binRun) run(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Dir = r.dir
	if cmd.Dir == "" {
		cmd.Dir = t.TempDir()
	}
	cmd.Env = cleanEnv(r.env...)
	cmd.Stdin = bytes.NewReader(r.stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%v: still running after a minute", args)
	}
	res := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%v: %v", args, err)
	}
	return res
}

// binServer is the binary serving the embedded default (software keys,
// SQLite) in a data directory of its own, on a free loopback port.
type binServer struct {
	addr, dataDir, tokenFile string
	logs                     *testbed.LogBuffer
	cmd                      *exec.Cmd
	exited                   chan error // its Wait's answer, put back by each reader
	stopped                  bool
}

var servingRE = regexp.MustCompile(`msg="keygrid-hsm serving" addr=(\S+)`)

// startServer runs "keygrid-hsm serve --listen 127.0.0.1:0" with args
// (default: --data-dir <temp>/data) in dir, and waits until it serves.
func startServer(t *testing.T, dir string, env []string, args ...string) *binServer {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	s := &binServer{logs: &testbed.LogBuffer{}, exited: make(chan error, 1)}
	if len(args) == 0 {
		s.dataDir = filepath.Join(dir, "data")
		args = []string{"--data-dir", s.dataDir}
	}
	s.cmd = exec.Command(binary(t), append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)...)
	s.cmd.Dir, s.cmd.Env = dir, cleanEnv(env...)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.exited <- s.cmd.Wait() }()
	t.Cleanup(func() { s.stop(t) })
	deadline := time.Now().Add(60 * time.Second)
	for !servingRE.MatchString(s.logs.String()) {
		select {
		case err := <-s.exited:
			s.exited <- err
			t.Fatalf("serve exited (%v):\n%s", err, s.logs)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start in a minute:\n%s", s.logs)
		}
	}
	s.addr = "http://" + servingRE.FindStringSubmatch(s.logs.String())[1]
	if s.dataDir != "" {
		s.tokenFile = filepath.Join(s.dataDir, "admin.token")
	}
	return s
}

// stop ends the server with SIGTERM (as a service manager does) and waits
// for it; it must exit 0.
func (s *binServer) stop(t *testing.T) {
	if s.stopped {
		return
	}
	s.stopped = true
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.exited:
		s.exited <- err
		if err != nil {
			t.Errorf("serve after SIGTERM: %v\n%s", err, s.logs)
		}
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		t.Errorf("serve did not stop on SIGTERM:\n%s", s.logs)
	}
}

// client is a run of the binary as a client of s: --server and the token
// file in the environment.
func (s *binServer) client(stdin []byte) binRun {
	return binRun{env: []string{"KEYGRID_ADDR=" + s.addr, "KEYGRID_TOKEN_FILE=" + s.tokenFile}, stdin: stdin}
}

// ok runs a client command that must succeed.
func (s *binServer) ok(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	r := s.client(stdin).run(t, args...)
	if r.code != 0 {
		t.Fatalf("%v: %s", args, r)
	}
	return r.stdout
}
