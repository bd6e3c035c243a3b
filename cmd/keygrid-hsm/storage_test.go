package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/store/storetest"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// gatewayConfig writes the configuration of a gateway on SQLite in a data
// directory of its own.
func gatewayConfig(t *testing.T) string {
	t.Helper()
	t.Setenv("KEYGRID_TEST_MASTER_KEY", strings.Repeat("c3", 32))
	return testbed.WriteConfig(t, "data_dir: "+filepath.Join(t.TempDir(), "data")+"\n"+
		testbed.Providers(testbed.SoftwareProvider{MasterKeyEnv: "KEYGRID_TEST_MASTER_KEY"}))
}

func openStoreOf(t *testing.T, cfgPath string) store.Store {
	t.Helper()
	cfg, err := config.Load(cfgPath, config.Flags{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := server.OpenStore(context.Background(), cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestMigrateBackupRestore(t *testing.T) {
	ctx := context.Background()
	src := gatewayConfig(t)
	latest := latestSchemaVersion(t)
	// A store that does not exist is not made without --create.
	code, out, errOut := cliRun("", "migrate", "--config", src)
	if code != 1 || !strings.Contains(errOut, "no metadata store at "+storePathOf(t, src)) || !strings.Contains(errOut, "--create") {
		t.Fatalf("migrate of a missing store: %d %q %q", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Dir(storePathOf(t, src))); err == nil {
		t.Fatal("a refused migrate made the data directory")
	}
	code, out, errOut = cliRun("", "migrate", "--config", src, "--create")
	if code != 0 || !strings.HasPrefix(out, fmt.Sprintf("schema version %d (sqlite ", latest)) {
		t.Fatalf("migrate: %d %q %q", code, out, errOut)
	}
	if code, out, _ := cliRun("", "migrate", "--config", src); code != 0 || !strings.HasPrefix(out, fmt.Sprintf("schema version %d ", latest)) {
		t.Fatalf("second migrate: %d %q", code, out)
	}
	st := openStoreOf(t, src)
	var names []string
	for _, n := range []string{"cmd-a", "cmd-b", "cmd-c"} {
		if err := st.CreateKey(ctx, storetest.NewKey(n, "software")); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}

	backup := filepath.Join(t.TempDir(), "meta.backup")
	if err := os.WriteFile(backup, []byte("an older backup"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = cliRun("", "backup", "--config", src, "--out", backup)
	if code != 0 || !strings.Contains(out, "backed up 3 keys") {
		t.Fatalf("backup: %d %q %q", code, out, errOut)
	}
	fi, err := os.Stat(backup)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file mode %v (%v), want 0600", fi.Mode(), err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(backup), ".*tmp*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	f, _ := os.Open(backup)
	sc := bufio.NewScanner(f)
	sc.Scan()
	var first struct {
		Header *store.BackupHeader `json:"header"`
	}
	if err := json.Unmarshal(sc.Bytes(), &first); err != nil || first.Header == nil || first.Header.Format != store.BackupFormat ||
		first.Header.Driver != "sqlite" || first.Header.SchemaVersion != latest {
		t.Fatalf("backup header: %s (%v)", sc.Bytes(), err)
	}
	f.Close()

	dst := gatewayConfig(t)
	if code, _, errOut := cliRun("", "restore", "--config", dst, "--in", backup); code != 1 || !strings.Contains(errOut, "--create") {
		t.Fatalf("restore into a missing store: %d %q", code, errOut)
	}
	code, out, errOut = cliRun("", "restore", "--config", dst, "--in", backup, "--create")
	if code != 0 || !strings.Contains(out, "restored 3 keys") {
		t.Fatalf("restore: %d %q %q", code, out, errOut)
	}
	dstStore := openStoreOf(t, dst)
	for _, n := range names {
		want, _ := st.GetKey(ctx, n)
		got, err := dstStore.GetKey(ctx, n)
		if err != nil || got.ID != want.ID || got.Versions[0].ObjectID != want.Versions[0].ObjectID {
			t.Fatalf("restored %s: %+v %v", n, got, err)
		}
	}
	// Into a store that holds keys: refused without --force, nothing changed.
	if err := st.CreateKey(ctx, storetest.NewKey("cmd-d", "software")); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := cliRun("", "restore", "--config", src, "--in", backup); code == 0 || !strings.Contains(errOut, "--force") {
		t.Fatalf("restore over keys without --force: %d %q %q", code, out, errOut)
	}
	if _, err := st.GetKey(ctx, "cmd-d"); err != nil {
		t.Fatalf("a refused restore changed the store: %v", err)
	}
	if code, out, errOut := cliRun("", "restore", "--config", src, "--in", backup, "--force"); code != 0 || !strings.Contains(out, "restored 3 keys") {
		t.Fatalf("restore --force: %d %q %q", code, out, errOut)
	}
	if _, err := st.GetKey(ctx, "cmd-d"); err == nil {
		t.Fatal("restore --force kept a key the backup does not have")
	}
}

// storePathOf is the SQLite store path of a configuration.
func storePathOf(t *testing.T, cfgPath string) string {
	t.Helper()
	cfg, err := config.Load(cfgPath, config.Flags{})
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Storage.Path
}

func TestStorageCommandsRefuseBadUse(t *testing.T) {
	cfg, fresh, missing := gatewayConfig(t), gatewayConfig(t), gatewayConfig(t)
	if code, _, errOut := cliRun("", "migrate", "--config", cfg, "--create"); code != 0 {
		t.Fatalf("migrate --create: %s", errOut)
	}
	// fresh: a store file that exists but was never migrated (an empty
	// SQLite database).
	if err := os.MkdirAll(filepath.Dir(storePathOf(t, fresh)), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(storePathOf(t, fresh), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"backup", "--config", cfg}, "--out FILE is required"},
		{[]string{"restore", "--config", cfg}, "--in FILE is required"},
		{[]string{"restore", "--config", cfg, "--in", filepath.Join(t.TempDir(), "missing")}, "no such file"},
		{[]string{"migrate", "--config", cfg, "extra"}, "takes no arguments"},
		// Backup never migrates: an unmigrated store is refused.
		{[]string{"backup", "--config", fresh, "--out", filepath.Join(t.TempDir(), "b")}, "run keygrid-hsm migrate"},
		// Backup never creates a store: a missing one is named.
		{[]string{"backup", "--config", missing, "--out", filepath.Join(t.TempDir(), "b")}, "no metadata store at " + storePathOf(t, missing)},
	} {
		if code, _, errOut := cliRun("", c.args...); code == 0 || !strings.Contains(errOut, c.stderr) {
			t.Errorf("%v: exit %d, stderr %q; want a failure saying %q", c.args, code, errOut, c.stderr)
		}
	}
	if _, err := os.Stat(filepath.Dir(storePathOf(t, missing))); err == nil {
		t.Error("a refused backup made the data directory")
	}
	// Without --config, in a directory with no ./data: the embedded
	// default's store is missing, and nothing is made.
	t.Chdir(t.TempDir())
	if code, out, errOut := cliRun("", "backup", "--out", "b"); code != 1 || !strings.Contains(errOut, "no metadata store at data/keygrid.db") ||
		!strings.Contains(errOut, "give --config") {
		t.Errorf("backup without a store: %d %q %q", code, out, errOut)
	}
	if left, _ := os.ReadDir("."); len(left) != 0 {
		t.Errorf("a refused backup left %v", left)
	}
	// A damaged file restores nothing.
	bad := filepath.Join(t.TempDir(), "bad.backup")
	os.WriteFile(bad, []byte("{\"header\":{\"format\":\"keygrid-hsm-metadata-backup\",\"format_version\":1}}\n"), 0o600)
	if code, _, errOut := cliRun("", "restore", "--config", cfg, "--in", bad); code == 0 || !strings.Contains(errOut, "nothing was restored") {
		t.Fatalf("restore of a truncated backup: %d %q", code, errOut)
	}
}

// latestSchemaVersion is the schema version this binary migrates to.
func latestSchemaVersion(t *testing.T) int {
	t.Helper()
	s, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "latest.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return s.(store.Migrator).LatestSchemaVersion()
}
