package main

import (
	"bytes"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/config"
)

// listing is every file and directory under dir with its mode, size,
// modification time and content: two listings are equal when nothing was
// written.
func listing(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		entry := fi.Mode().String() + " " + fi.ModTime().Format(time.RFC3339Nano)
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			entry += " " + string(b)
		}
		out[rel] = entry
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameListing(a, b map[string]string) (diff []string) {
	for p, e := range a {
		if b[p] != e {
			diff = append(diff, p)
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			diff = append(diff, p+" (new)")
		}
	}
	return diff
}

// TestServeBindsBeforeWriting: serve whose port is taken, or whose
// configuration is wrong, fails (exit 1) naming why and writes nothing: no
// master.key, admin.token, database or keystore, in an empty data
// directory, a missing one, or the working directory's ./data.
func TestServeBindsBeforeWriting(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	empty, missing := t.TempDir(), filepath.Join(t.TempDir(), "not-yet")
	for _, c := range []struct {
		name string
		args []string
		env  []string
		says string
	}{
		{"port taken, empty data dir", []string{"--listen", addr, "--data-dir", empty}, nil, "address already in use"},
		{"port taken, missing data dir", []string{"--listen", addr, "--data-dir", missing}, nil, "address already in use"},
		{"port taken, default data dir", []string{"--listen", addr}, nil, "address already in use"},
		{"port taken, from the environment", nil, []string{"KEYGRID_LISTEN=" + addr, "KEYGRID_DATA_DIR=" + empty}, "address already in use"},
		{"bad listen address", []string{"--listen", "nonsense", "--data-dir", empty}, nil, `"nonsense" is not host:port`},
		{"missing configuration", []string{"--config", "/nonexistent/keygrid.yaml", "--data-dir", empty}, nil, "/nonexistent/keygrid.yaml"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cwd := t.TempDir()
			r := binRun{dir: cwd, env: c.env}.run(t, append([]string{"serve"}, c.args...)...)
			if r.code != 1 || !strings.Contains(r.stderr, c.says) {
				t.Fatalf("want exit 1 saying %q; %s", c.says, r)
			}
			if strings.Contains(c.says, "in use") && (!strings.Contains(r.stderr, addr) || !strings.Contains(r.stderr, "nothing was written")) {
				t.Errorf("the refusal does not name the address and say nothing was written: %s", r.stderr)
			}
			for _, d := range []string{empty, cwd} {
				if left, _ := os.ReadDir(d); len(left) != 0 {
					t.Errorf("serve wrote into %s: %v", d, left)
				}
			}
			if _, err := os.Stat(missing); err == nil {
				t.Errorf("serve made %s", missing)
			}
		})
	}
}

// softwareGateway writes the configuration of a gateway with the software
// provider (its master key in the environment) in dataDir, and returns it
// with the environment the binary needs.
func softwareGateway(t *testing.T, dataDir string) (cfgPath string, env []string) {
	t.Helper()
	cfgPath = gatewayConfig(t)
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "data_dir:") {
			lines = append(lines, l)
		}
	}
	yaml := "data_dir: " + dataDir + "\n" + strings.Join(lines, "\n")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfgPath, []string{"KEYGRID_TEST_MASTER_KEY=" + os.Getenv("KEYGRID_TEST_MASTER_KEY")}
}

// TestDoctorWritesNothing: doctor on a gateway's data directory (its
// store, keystore, audit log, admin token) leaves every file as it was,
// byte for byte; on a gateway that never started it makes no data
// directory.
func TestDoctorWritesNothing(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	cfgPath, env := softwareGateway(t, dataDir)
	cfg, err := config.Load(cfgPath, config.Flags{})
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, "", env, "--config", cfgPath)
	s.dataDir, s.tokenFile = dataDir, cfg.Auth.AdminTokenFile
	s.ok(t, nil, "keys", "create", "doctor-key", "--type", "EC", "--curve", "P-256")
	s.stop(t)

	before := listing(t, dataDir)
	if len(before) < 4 {
		t.Fatalf("the gateway left too little to check: %v", before)
	}
	r := binRun{env: env}.run(t, "doctor", "--config", cfgPath)
	if r.code != 0 || !strings.Contains(r.stdout, "PASS  open") {
		t.Fatalf("doctor: %s", r)
	}
	if diff := sameListing(before, listing(t, dataDir)); len(diff) != 0 {
		t.Fatalf("doctor changed %v", diff)
	}

	fresh := filepath.Join(t.TempDir(), "never-started")
	freshCfg, env := softwareGateway(t, fresh)
	if r := (binRun{env: env}).run(t, "doctor", "--config", freshCfg); r.code != 0 || !strings.Contains(r.stdout, "SKIP  open") {
		t.Fatalf("doctor of a gateway that never started: %s", r)
	}
	if _, err := os.Stat(fresh); err == nil {
		t.Fatalf("doctor made %s", fresh)
	}
}

// TestAdminTokenLogLine: the start-up log names the admin token where it
// is, in the data directory given (relative or absolute), at the first
// start and the next; the CLI finds it there through KEYGRID_DATA_DIR.
func TestAdminTokenLogLine(t *testing.T) {
	cwd := t.TempDir()
	s := startServer(t, cwd, nil, "--data-dir", "custom-dir")
	want := filepath.Join("custom-dir", "admin.token")
	logs := s.logs.String()
	if !strings.Contains(logs, "path="+want+" ") || !strings.Contains(logs, `cli="--token-file `+want+`"`) ||
		strings.Contains(logs, "data/admin.token") {
		t.Fatalf("the start-up log does not name %s:\n%s", want, logs)
	}
	if fi, err := os.Stat(filepath.Join(cwd, want)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v", want, fi, err)
	}
	in := func(env ...string) binRun { return binRun{dir: cwd, env: append(env, "KEYGRID_ADDR="+s.addr)} }
	if r := in("KEYGRID_DATA_DIR=custom-dir").run(t, "keys", "list"); r.code != 0 {
		t.Fatalf("keys list with KEYGRID_DATA_DIR=custom-dir: %s", r)
	}
	if r := in().run(t, "keys", "list"); r.code != 1 || !strings.Contains(r.stderr, "data/admin.token") {
		t.Fatalf("keys list without a token: want exit 1 naming where the CLI looked; %s", r)
	}
	s.stop(t)

	abs := filepath.Join(cwd, "custom-dir")
	again := startServer(t, cwd, nil, "--data-dir", abs)
	if logs := again.logs.String(); !strings.Contains(logs, "path="+filepath.Join(abs, "admin.token")) || strings.Contains(logs, "data/admin.token") {
		t.Fatalf("the second start's log does not name %s:\n%s", filepath.Join(abs, "admin.token"), logs)
	}
}

// TestStoreCommandsNeverCreate, with the binary in a directory without
// ./data: backup, migrate and restore fail naming the store they looked
// for, and make nothing; migrate --create makes it.
func TestStoreCommandsNeverCreate(t *testing.T) {
	cwd := t.TempDir()
	if err := os.WriteFile(filepath.Join(cwd, "meta.backup"), []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := listing(t, cwd)
	for _, c := range []struct {
		args []string
		says []string
	}{
		{[]string{"backup", "--out", "b"}, []string{"no metadata store at data/keygrid.db", "give --config"}},
		{[]string{"migrate"}, []string{"no metadata store at data/keygrid.db", "--create"}},
		{[]string{"restore", "--in", "meta.backup"}, []string{"no metadata store at data/keygrid.db", "--create"}},
	} {
		r := binRun{dir: cwd}.run(t, c.args...)
		for _, s := range c.says {
			if r.code != 1 || !strings.Contains(r.stderr, s) {
				t.Errorf("%v: want exit 1 saying %q; %s", c.args, s, r)
			}
		}
		if diff := sameListing(before, listing(t, cwd)); len(diff) != 0 {
			t.Errorf("%v made %v", c.args, diff)
		}
	}
	if r := (binRun{dir: cwd}).run(t, "migrate", "--create"); r.code != 0 || !strings.HasPrefix(r.stdout, "schema version ") {
		t.Fatalf("migrate --create: %s", r)
	}
	if _, err := os.Stat(filepath.Join(cwd, "data", "keygrid.db")); err != nil {
		t.Fatalf("migrate --create made no store: %v", err)
	}
	if !bytes.Equal([]byte(before["meta.backup"]), []byte(listing(t, cwd)["meta.backup"])) {
		t.Fatal("the backup file changed")
	}
}
