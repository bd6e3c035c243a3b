package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// cliRun runs the binary's run() with args and returns its exit code,
// stdout and stderr.
func cliRun(stdin string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEmbeddedDefaultAndCLI is `make run` and the CLI out of the box: serve
// with no configuration in a fresh working directory makes
// ./data/admin.token (0600) and says where it is without printing it; the
// CLI finds it there with no flag; a wrong token is refused. SIGHUP rotates
// the audit log, and `audit verify` checks the rotated files as one chain
// and names the line of each kind of tampering.
func TestEmbeddedDefaultAndCLI(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	for _, v := range []string{"KEYGRID_TOKEN", "KEYGRID_TOKEN_FILE", "KEYGRID_DATA_DIR", "KEYGRID_LISTEN", "KEYGRID_CA_FILE",
		"KEYGRID_CERT_FILE", "KEYGRID_CERT_KEY_FILE"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	var logs testbed.LogBuffer
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- runServe(ctx, serveOptions{listen: "127.0.0.1:0"}, &logs) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-served; err != nil {
				t.Errorf("serve: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	addrRE := regexp.MustCompile(`msg="keygrid-hsm serving" addr=(\S+)`)
	waitFor(t, "the server to listen", func() bool { return addrRE.MatchString(logs.String()) })
	t.Setenv("KEYGRID_ADDR", "http://"+addrRE.FindStringSubmatch(logs.String())[1])

	tokPath := filepath.Join("data", "admin.token")
	st, err := os.Stat(tokPath)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file: %v, %v", st, err)
	}
	b, _ := os.ReadFile(tokPath)
	token := strings.TrimSpace(string(b))
	if !strings.Contains(logs.String(), "data/admin.token") || strings.Contains(logs.String(), token) {
		t.Fatalf("the log must name the token file and not hold the token:\n%s", logs.String())
	}

	if code, out, errs := cliRun("", "keys", "create", "--name", "cli-ec", "--type", "EC", "--curve", "P-256"); code != 0 || !strings.Contains(out, "cli-ec") {
		t.Fatalf("keys create with the default token file: %d\n%s%s", code, out, errs)
	}
	if code, out, errs := cliRun("hello", "sign", "cli-ec"); code != 0 || len(strings.TrimSpace(out)) < 40 {
		t.Fatalf("sign: %d\n%s%s", code, out, errs)
	}
	if code, _, errs := cliRun("", "keys", "get", "cli-ec", "--token", "kgt_wrong-token-000000000000"); code != 1 || !strings.Contains(errs, "AUTHENTICATION_FAILED") {
		t.Fatalf("a wrong --token: exit %d, %s", code, errs)
	}
	other := filepath.Join(dir, "other.token")
	os.WriteFile(other, []byte("kgt_another-wrong-token-000000\n"), 0o600)
	if code, _, errs := cliRun("", "keys", "list", "--token-file", other); code != 1 || !strings.Contains(errs, "AUTHENTICATION_FAILED") {
		t.Fatalf("--token-file wins over the default file: exit %d, %s", code, errs)
	}
	t.Setenv("KEYGRID_TOKEN", token)
	if code, out, errs := cliRun("", "keys", "list", "--output", "json"); code != 0 || !strings.Contains(out, "cli-ec") {
		t.Fatalf("KEYGRID_TOKEN: %d\n%s%s", code, out, errs)
	}

	// SIGHUP rotates the audit log; the new file continues the chain.
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the audit log to rotate", func() bool {
		m, _ := filepath.Glob(filepath.Join("data", "audit.log.2*"))
		return len(m) == 1
	})
	for i := range 3 {
		if code, _, errs := cliRun("x", "sign", "cli-ec", "--algorithm", "ES256"); code != 0 {
			t.Fatalf("sign %d after rotation: %s", i, errs)
		}
	}
	stop()
	if strings.Contains(logs.String(), token) {
		t.Fatal("the server log holds the admin token")
	}

	rotated, _ := filepath.Glob(filepath.Join("data", "audit.log.2*"))
	sort.Strings(rotated)
	live := filepath.Join("data", "audit.log")
	if code, out, errs := cliRun("", "audit", "verify", rotated[0], live); code != 0 || !strings.Contains(out, "audit chain OK") {
		t.Fatalf("audit verify of the rotated files: %d %s %s", code, out, errs)
	}
	if code, _, errs := cliRun("", "audit", "verify", live, rotated[0]); code != 1 || !strings.Contains(errs, "line 1") {
		t.Fatalf("audit verify with the files out of order: %d %s", code, errs)
	}

	raw, err := os.ReadFile(live)
	if err != nil {
		t.Fatal(err)
	}
	ls := strings.SplitAfter(strings.TrimSuffix(string(raw), "\n"), "\n")
	if len(ls) != 6 || strings.Count(string(raw), `"operation":"sign"`) != 3 || strings.Count(string(raw), `"operation":"audit_checkpoint"`) != 2 {
		t.Fatalf("live audit file has %d lines, want 6 (rotation record, 3 signs, the checkpoints of the rotation and the shutdown):\n%s", len(ls), raw)
	}
	edited := append([]string{}, ls...)
	edited[2] = strings.Replace(edited[2], `"outcome":"success"`, `"outcome":"failure"`, 1)
	tests := []struct {
		name  string
		lines []string
		want  string
	}{
		{"one byte changed", edited, "line 3"},
		{"line removed", []string{ls[0], ls[1], ls[3]}, "line 3"},
		{"lines swapped", []string{ls[0], ls[2], ls[1], ls[3]}, "line 2"},
		{"line inserted", []string{ls[0], ls[1], ls[1], ls[2], ls[3]}, "line 3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "tampered.log")
			if err := os.WriteFile(p, []byte(strings.Join(tc.lines, "")), 0o600); err != nil {
				t.Fatal(err)
			}
			code, out, errs := cliRun("", "audit", "verify", rotated[0], p)
			if code != 1 || !strings.Contains(errs, "tampered.log: "+tc.want+":") {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 naming %s", code, out, errs, tc.want)
			}
		})
	}
}
