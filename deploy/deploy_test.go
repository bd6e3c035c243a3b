// Package deploy_test checks the systemd unit in deploy/: systemd-analyze
// verify accepts it without a warning, and it is the unit docs/deployment.md
// shows, byte for byte.
package deploy_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

const unitFile = "keygrid-hsm.service"

// installedBinary is where `make install` puts the binary and ExecStart
// looks for it.
const installedBinary = "/usr/local/bin/keygrid-hsm"

func readUnit(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// verify runs systemd-analyze verify on unit (written to a scratch
// directory under its own name) and returns its output and error.
func verify(t *testing.T, unit string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, unitFile)
	if err := os.WriteFile(p, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", p).CombinedOutput()
	return string(out), err
}

// withBinary points ExecStart (and every other use of the install path) at
// an executable that exists here: systemd-analyze verify checks that the
// command is executable. It is this test binary, so that the check needs no
// build and no install.
func withBinary(t *testing.T, unit string) string {
	t.Helper()
	if !strings.Contains(unit, "ExecStart="+installedBinary+" serve ") {
		t.Fatalf("%s: ExecStart does not run %s serve", unitFile, installedBinary)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(unit, installedBinary, exe)
}

func TestUnitVerifies(t *testing.T) {
	testbed.Require(t, "systemd-analyze")
	out, err := verify(t, withBinary(t, readUnit(t)))
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify %s: %v\n%s", unitFile, err, out)
	}
}

// TestVerifyCatchesMistakes shows that the check above can fail: a
// misspelled hardening option (systemd ignores it with a warning, exit 0) and
// a missing binary.
func TestVerifyCatchesMistakes(t *testing.T) {
	testbed.Require(t, "systemd-analyze")
	unit := withBinary(t, readUnit(t))
	if out, _ := verify(t, strings.Replace(unit, "ProtectSystem=strict", "ProtectSystm=strict", 1)); !strings.Contains(out, "ProtectSystm") {
		t.Errorf("a misspelled option gave no warning:\n%s", out)
	}
	if out, err := verify(t, strings.Replace(unit, "ExecStart=", "ExecStart=/nonexistent/keygrid-hsm-", 1)); err == nil {
		t.Errorf("a missing binary verified:\n%s", out)
	}
}

// TestUnitHardening: the hardening options docs/deployment.md promises are in
// the unit.
func TestUnitHardening(t *testing.T) {
	unit := readUnit(t)
	for _, opt := range []string{
		"User=keygrid", "StateDirectory=keygrid-hsm", "StateDirectoryMode=0700", "UMask=0077",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
		"ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectControlGroups=yes", "RestrictSUIDSGID=yes",
		"LockPersonality=yes", "ReadWritePaths=/var/lib/keygrid-hsm", "Restart=on-failure", "KillSignal=SIGTERM",
	} {
		found := false
		for _, line := range strings.Split(unit, "\n") {
			found = found || line == opt || strings.HasPrefix(line, opt+" ")
		}
		if !found {
			t.Errorf("%s lacks %s", unitFile, opt)
		}
	}
}

// TestDocsShowTheUnit: the unit in docs/deployment.md is this file.
func TestDocsShowTheUnit(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "deployment.md"))
	if err != nil {
		t.Fatal(err)
	}
	marker := []byte("`deploy/keygrid-hsm.service`")
	i := bytes.Index(doc, marker)
	if i < 0 {
		t.Fatalf("docs/deployment.md does not name %s", marker)
	}
	rest := doc[i:]
	start := bytes.Index(rest, []byte("```ini\n"))
	if start < 0 {
		t.Fatal("no ```ini block after the unit's name in docs/deployment.md")
	}
	rest = rest[start+len("```ini\n"):]
	end := bytes.Index(rest, []byte("```"))
	if end < 0 {
		t.Fatal("unterminated ```ini block in docs/deployment.md")
	}
	if got, want := string(rest[:end]), readUnit(t); got != want {
		t.Fatalf("docs/deployment.md shows a different unit than deploy/%s:\n--- docs\n%s\n--- deploy\n%s", unitFile, got, want)
	}
}

// TestMakeInstall: `make install` with DESTDIR and PREFIX puts a working
// binary in DESTDIR/PREFIX/bin and the unit, its ExecStart pointing there, in
// DESTDIR/etc/systemd/system.
func TestMakeInstall(t *testing.T) {
	testbed.Require(t, "make", "go")
	dest := t.TempDir()
	cmd := makeCmd("-s", "install", "DESTDIR="+dest, "PREFIX=/opt/keygrid")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	bin := filepath.Join(dest, "opt", "keygrid", "bin", "keygrid-hsm")
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "keygrid-hsm ") {
		t.Fatalf("%s version: %v\n%s", bin, err, out)
	}
	unit, err := os.ReadFile(filepath.Join(dest, "etc", "systemd", "system", unitFile))
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.ReplaceAll(readUnit(t), installedBinary, "/opt/keygrid/bin/keygrid-hsm"); string(unit) != want {
		t.Fatalf("installed unit:\n%s\nwant:\n%s", unit, want)
	}
	if fi, err := os.Stat(bin); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("installed binary: %v %v", fi.Mode(), err)
	}
}

// TestMakeRunTakesListenAndDataDir: `make run LISTEN=… DATA_DIR=…` serves
// there, and without them on the embedded default's 127.0.0.1:8080 and ./data.
func TestMakeRunTakesListenAndDataDir(t *testing.T) {
	testbed.Require(t, "make")
	for args, want := range map[string]string{
		"LISTEN=127.0.0.1:9443 DATA_DIR=/tmp/kg-data": "./bin/keygrid-hsm serve --listen 127.0.0.1:9443 --data-dir /tmp/kg-data\n",
		"": "./bin/keygrid-hsm serve --listen 127.0.0.1:8080 --data-dir ./data\n",
	} {
		cmd := makeCmd(append([]string{"-n", "run"}, strings.Fields(args)...)...)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.HasSuffix(string(out), want) {
			t.Errorf("make -n run %s: %v\n%s\nwant the last line %q", args, err, out, want)
		}
	}
}

// makeCmd runs make in the checkout as a user would: without the outer
// make's MAKEFLAGS and MAKELEVEL (under `make test` they would add
// "Entering directory" lines and its flags).
func makeCmd(args ...string) *exec.Cmd {
	cmd := exec.Command("make", append([]string{"--no-print-directory"}, args...)...)
	cmd.Dir = ".."
	cmd.Env = slices.DeleteFunc(os.Environ(), func(e string) bool {
		return strings.HasPrefix(e, "MAKEFLAGS=") || strings.HasPrefix(e, "MFLAGS=") || strings.HasPrefix(e, "MAKELEVEL=")
	})
	return cmd
}
