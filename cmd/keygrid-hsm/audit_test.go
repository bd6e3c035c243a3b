package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// auditGateway is a gateway started from a YAML file whose data_dir it
// names, so that `audit verify --config` finds what the gateway wrote.
type auditGateway struct {
	cfgPath string
	cfg     *config.Config
	srv     *server.Server
	ts      *httptest.Server
	c       *client.Client
	token   string
}

func startAuditGateway(t *testing.T, yaml string) *auditGateway {
	t.Helper()
	g := &auditGateway{cfgPath: testbed.WriteConfig(t, yaml)}
	var err error
	if g.cfg, err = config.Load(g.cfgPath, config.Flags{}); err != nil {
		t.Fatal(err)
	}
	g.cfg.Limits.RatePerPrincipal = -1
	if g.srv, err = server.New(context.Background(), g.cfg, registry.All(), slog.New(slog.DiscardHandler), "test"); err != nil {
		t.Fatal(err)
	}
	g.ts = httptest.NewServer(g.srv.Handler())
	b, err := os.ReadFile(g.cfg.Auth.AdminTokenFile)
	if err != nil {
		t.Fatal(err)
	}
	g.token = strings.TrimSpace(string(b))
	g.c, _ = client.New(g.ts.URL, client.WithToken(g.token))
	t.Cleanup(g.close)
	return g
}

func (g *auditGateway) close() {
	if g.ts != nil {
		g.ts.Close()
		g.srv.Close()
		g.ts = nil
	}
}

func (g *auditGateway) checkpoints(t *testing.T) []store.Checkpoint {
	t.Helper()
	cs, ok := store.Checkpoints(g.srv.Store())
	if !ok {
		t.Fatal("the store keeps no checkpoints")
	}
	cps, _, err := cs.ListCheckpoints(context.Background(), store.CheckpointFilter{Limit: -1})
	if err != nil {
		t.Fatal(err)
	}
	return cps
}

// work makes a key and signs n times with it.
func (g *auditGateway) work(t *testing.T, key string, n int) {
	t.Helper()
	ctx := context.Background()
	if _, err := g.c.GetKey(ctx, key); err != nil {
		if _, err := g.c.CreateKey(ctx, apitypes.CreateKeyRequest{Name: key, KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256", Usage: []string{"sign", "verify"}}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if _, err := g.c.Sign(ctx, key, apitypes.SignRequest{Data: []byte(fmt.Sprintf("record %d", i)), Algorithm: "ES256"}); err != nil {
			t.Fatal(err)
		}
	}
}

// runLog drives a gateway through what checkpoints a log: records, a
// rotation (SIGHUP's) with its checkpoint, records, an interval's
// checkpoint, records, and the checkpoint at shutdown.
func (g *auditGateway) runLog(t *testing.T, key string) {
	t.Helper()
	g.work(t, key, 4)
	if _, err := g.srv.RotateAudit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rotation's checkpoint", func() bool { return len(g.checkpoints(t)) >= 1 })
	g.work(t, key, 3)
	if err := g.srv.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	g.work(t, key, 2)
	n := len(g.checkpoints(t))
	g.close()
	// The shutdown's: a checkpoint of the last record.
	st, err := server.OpenStore(context.Background(), g.cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cs, _ := store.Checkpoints(st)
	cps, _, err := cs.ListCheckpoints(context.Background(), store.CheckpointFilter{Limit: -1})
	if err != nil || len(cps) != n+1 {
		t.Fatalf("after shutdown %d checkpoints (%v), want %d", len(cps), err, n+1)
	}
}

// copyDir copies a gateway's data directory (closed) to a new one and
// returns a configuration naming it.
func copyDir(t *testing.T, yaml, from string) (string, string) {
	t.Helper()
	to := t.TempDir()
	err := filepath.Walk(from, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, fi.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
	return testbed.WriteConfig(t, strings.ReplaceAll(yaml, from, to)), to
}

// rehashFile rewrites a log file with one record edited (its second line's
// outcome) and every hash after it recomputed, chained from start (""
// keeps the file's own first prev_hash): a chain that verifies on its
// own. It returns the last hash.
func rehashFile(t *testing.T, path, start string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	prev := start
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for i := 0; sc.Scan(); i++ {
		line := sc.Text()
		at := strings.LastIndex(line, `,"prev_hash":`)
		body := line[:at]
		if i == 0 && prev == "" {
			var r struct {
				PrevHash string `json:"prev_hash"`
			}
			json.Unmarshal([]byte(line), &r)
			prev = r.PrevHash
		}
		if i == 1 {
			body = strings.Replace(body, `"outcome":"success"`, `"outcome":"failure"`, 1)
		}
		content := body + `,"prev_hash":"` + prev + `"`
		sum := sha256.Sum256([]byte(content + "}"))
		prev = hex.EncodeToString(sum[:])
		out.WriteString(content + `,"hash":"` + prev + `"}` + "\n")
	}
	f.Close()
	if err := os.WriteFile(path, []byte(out.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return prev
}

func cutLines(t *testing.T, path string, n int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) <= n {
		t.Fatalf("%s has %d lines, cannot cut %d", path, len(lines), n)
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines[:len(lines)-n], "")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// tamperCases are the attacks on a closed gateway's log (its rotated
// file and its live file), with what `audit verify` must name.
var tamperCases = []struct {
	name    string
	tamper  func(t *testing.T, files []string)
	wantErr error // nil: verifies
}{
	{"intact", func(*testing.T, []string) {}, nil},
	{"tail cut after the last checkpoint", func(t *testing.T, f []string) { cutLines(t, f[len(f)-1], 2) }, audit.ErrTailCut},
	{"whole chain re-hashed", func(t *testing.T, f []string) {
		last := ""
		for _, p := range f {
			last = rehashFile(t, p, last)
		}
		if _, err := audit.VerifyFiles(f, ""); err != nil {
			t.Fatalf("the re-hashed chain should verify on its own: %v", err)
		}
	}, audit.ErrRehashed},
	{"rotated file deleted", func(t *testing.T, f []string) { os.Remove(f[0]) }, audit.ErrMissingFile},
	{"rotated file emptied", func(t *testing.T, f []string) { os.WriteFile(f[0], nil, 0o600) }, audit.ErrEmptyFile},
	{"live file emptied", func(t *testing.T, f []string) { os.WriteFile(f[len(f)-1], nil, 0o600) }, audit.ErrEmptyFile},
}

// checkTampering runs every tamper case on a copy of a closed gateway's
// data directory: the verify function names each with its typed error,
// and the command exits 1 (0 when intact).
func checkTampering(t *testing.T, yaml, dataDir string) {
	for _, tc := range tamperCases {
		t.Run(tc.name, func(t *testing.T) {
			cfgPath, dir := copyDir(t, yaml, dataDir)
			files, err := audit.LogFiles(filepath.Join(dir, "audit.log"))
			if err != nil || len(files) != 2 {
				t.Fatalf("log files %v, %v; want a rotated one and the live one", files, err)
			}
			tc.tamper(t, files)
			err = auditVerify(context.Background(), auditVerifyOptions{Config: cfgPath}, io.Discard)
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("audit verify --config: %v, want %v", err, tc.wantErr)
			}
			code, out, stderr := cliRun("", "audit", "verify", "--config", cfgPath)
			want := 0
			if tc.wantErr != nil {
				want = 1
			}
			if code != want || (want == 1 && !strings.Contains(stderr, tc.wantErr.Error())) || (want == 0 && !strings.Contains(out, "checkpoints match")) {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, want, out, stderr)
			}
		})
	}
}

func TestAuditCheckpointsSoftwareProvider(t *testing.T) {
	t.Setenv("KG_AUDIT_MASTER_KEY", strings.Repeat("cd", 32))
	dataDir := t.TempDir()
	yaml := "data_dir: " + dataDir + "\n" + testbed.Providers(testbed.SoftwareProvider{MasterKeyEnv: "KG_AUDIT_MASTER_KEY"})
	g := startAuditGateway(t, yaml)
	g.runLog(t, "soft-signer")
	checkTampering(t, yaml, dataDir)
}

func TestAuditCheckpointsSoftHSMKey(t *testing.T) {
	testbed.Require(t, "softhsm2-util", "pkcs11-tool", testbed.SoftHSMModule)
	const pin = "audit-pin-2468"
	soft, err := testbed.NewSoftHSM(t.TempDir(), "keygrid-audit-ckpt", pin)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", soft.Conf)
	t.Setenv("KG_AUDIT_PIN", pin)
	dataDir := t.TempDir()
	yaml := "data_dir: " + dataDir + "\n" + testbed.Providers(testbed.PKCS11Provider{TokenLabel: soft.Label, PinEnv: "KG_AUDIT_PIN"})
	g := startAuditGateway(t, yaml)
	if g.cfg.Audit.SigningKey != "hsm/keygrid-audit" {
		t.Fatalf("default signing key %q, want hsm/keygrid-audit", g.cfg.Audit.SigningKey)
	}
	g.runLog(t, "hsm-signer")

	// The audit key on the token: sign only, never extractable, and no key
	// of the API.
	out, err := soft.Tool("--list-objects", "--type", "privkey").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	block := auditKeyObject(string(out), "keygrid-audit")
	if block == "" || !strings.Contains(block, "Usage:      sign") || strings.Contains(block, "decrypt") ||
		!strings.Contains(block, "never extractable") {
		t.Fatalf("the audit key on the token:\n%s", out)
	}
	checkTampering(t, yaml, dataDir)
}

// auditKeyObject is pkcs11-tool's listing of the object labelled label.
func auditKeyObject(listing, label string) string {
	for _, b := range strings.Split(listing, "Private Key Object") {
		if strings.Contains(b, "label:      "+label+"\n") {
			return b
		}
	}
	return ""
}

// --server: the checkpoints and keys from a running server, with the
// client's credential flags; an operator may not read them.
func TestAuditVerifyAgainstAServer(t *testing.T) {
	t.Setenv("KG_AUDIT_MASTER_KEY", strings.Repeat("cd", 32))
	dataDir := t.TempDir()
	yaml := "data_dir: " + dataDir + "\n" + testbed.Providers(testbed.SoftwareProvider{MasterKeyEnv: "KG_AUDIT_MASTER_KEY"})
	g := startAuditGateway(t, yaml)
	g.work(t, "srv-signer", 3)
	if _, err := g.srv.RotateAudit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rotation's checkpoint", func() bool { return len(g.checkpoints(t)) >= 1 })
	g.work(t, "srv-signer", 2)
	if err := g.srv.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	files, err := audit.LogFiles(g.cfg.Audit.Path)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"audit", "verify", "--server", g.ts.URL, "--token", g.token}, files...)
	if code, out, stderr := cliRun("", args...); code != 0 || !strings.Contains(out, "replica "+g.srv.ReplicaID()) {
		t.Fatalf("intact log against the server: exit %d\n%s%s", code, out, stderr)
	}
	// Passed off as another replica's.
	if code, _, stderr := cliRun("", append(args, "--replica", "someone-else")...); code != 1 || !strings.Contains(stderr, audit.ErrOtherReplica.Error()) {
		t.Fatalf("as another replica: exit %d: %s", code, stderr)
	}
	// The live file cut back to before the last checkpoint's record.
	cut := filepath.Join(t.TempDir(), "audit.log")
	b, _ := os.ReadFile(files[1])
	os.WriteFile(cut, b, 0o600)
	cutLines(t, cut, 2)
	err = auditVerify(context.Background(), auditVerifyOptions{Files: []string{files[0], cut},
		Client: func() (*client.Client, error) { return client.New(g.ts.URL, client.WithToken(g.token)) }}, io.Discard)
	if !errors.Is(err, audit.ErrTailCut) {
		t.Fatalf("cut log against the server: %v", err)
	}
	if code, _, _ := cliRun("", "audit", "verify", "--server", g.ts.URL, "--token", g.token, files[0], cut); code != 1 {
		t.Fatalf("cut log: exit %d", code)
	}
	// The chain-only form keeps working.
	if code, out, _ := cliRun("", append([]string{"audit", "verify"}, files...)...); code != 0 || !strings.Contains(out, "audit chain OK") {
		t.Fatalf("audit verify FILE…: exit %d: %s", code, out)
	}
}

// Two replicas on one PostgreSQL store and one HSM token: one audit key
// made for both; each replica's log verifies against the shared store,
// and replica A's log checked as replica B's fails.
func TestAuditCheckpointsTwoReplicasOnPostgres(t *testing.T) {
	testbed.Require(t, "softhsm2-util", testbed.SoftHSMModule)
	pg := testbed.NewPostgres(t)
	dsn := pg.NewDatabase(t)
	const pin = "audit-pin-1357"
	soft, err := testbed.NewSoftHSM(t.TempDir(), "keygrid-audit-replicas", pin)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", soft.Conf)
	t.Setenv("KG_AUDIT_PIN", pin)
	t.Setenv("KG_AUDIT_DSN", dsn)
	yamlOf := func(dataDir string) string {
		return "data_dir: " + dataDir + "\nstorage:\n  driver: postgres\n  dsn_env: KG_AUDIT_DSN\n" +
			testbed.Providers(testbed.PKCS11Provider{TokenLabel: soft.Label, PinEnv: "KG_AUDIT_PIN"})
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	// Both start at once: they race to make the audit key.
	gs := make([]*auditGateway, 2)
	done := make(chan struct{})
	go func() { defer close(done); gs[1] = startAuditGateway(t, yamlOf(dirB)) }()
	gs[0] = startAuditGateway(t, yamlOf(dirA))
	<-done
	a, b := gs[0], gs[1]
	if a.srv.ReplicaID() == b.srv.ReplicaID() {
		t.Fatalf("both replicas are %s", a.srv.ReplicaID())
	}
	a.work(t, "replica-a-key", 3)
	b.work(t, "replica-b-key", 2)
	for _, g := range gs {
		if err := g.srv.Checkpoint(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	a.work(t, "replica-a-key", 1)
	b.work(t, "replica-b-key", 1)
	a.close()
	b.close()
	out, err := soft.Tool("--list-objects", "--type", "privkey").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	if n := strings.Count(string(out), "label:      keygrid-audit\n"); n != 1 {
		t.Fatalf("%d audit keys on the token, want one for both replicas:\n%s", n, out)
	}
	cfgA, cfgB := testbed.WriteConfig(t, yamlOf(dirA)), testbed.WriteConfig(t, yamlOf(dirB))
	for _, c := range []string{cfgA, cfgB} {
		if err := auditVerify(context.Background(), auditVerifyOptions{Config: c}, io.Discard); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if code, _, stderr := cliRun("", "audit", "verify", "--config", c); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
	}
	filesA, _ := audit.LogFiles(filepath.Join(dirA, "audit.log"))
	err = auditVerify(context.Background(), auditVerifyOptions{Config: cfgB, Files: filesA}, io.Discard)
	if !errors.Is(err, audit.ErrOtherReplica) {
		t.Fatalf("replica A's log checked as replica B's: %v", err)
	}
	if code, _, _ := cliRun("", append([]string{"audit", "verify", "--config", cfgB}, filesA...)...); code != 1 {
		t.Fatalf("replica A's log as B's: exit %d", code)
	}
}

// The HSM cut off (p11-kit's server stopped) when a checkpoint is due: it
// fails and says so, nothing half-made is stored or logged; once the HSM
// is back the next one signs, and the log verifies.
func TestAuditCheckpointWhileTheHSMIsAway(t *testing.T) {
	const pin = "audit-pin-8642"
	module, p11 := testbed.StartP11Kit(t, "keygrid-audit-away", pin)
	t.Setenv("KG_AUDIT_PIN", pin)
	dataDir := t.TempDir()
	yaml := "data_dir: " + dataDir + "\n" + testbed.Providers(testbed.PKCS11Provider{Library: module, TokenLabel: "keygrid-audit-away", PinEnv: "KG_AUDIT_PIN"})
	g := startAuditGateway(t, yaml)
	g.work(t, "away-key", 2)
	if err := p11.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := g.srv.Checkpoint(context.Background()); err == nil {
		t.Fatal("a checkpoint was signed with the HSM away")
	}
	if n := len(g.checkpoints(t)); n != 0 {
		t.Fatalf("%d checkpoints stored while the HSM was away", n)
	}
	if err := p11.Start(); err != nil {
		t.Fatal(err)
	}
	// The provider reconnects at its next health check or call (generous
	// deadline: a loaded machine).
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		err := g.srv.Checkpoint(context.Background())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint 90s after the HSM came back: %v", err)
		}
	}
	if n := len(g.checkpoints(t)); n != 1 {
		t.Fatalf("%d checkpoints, want 1", n)
	}
	g.work(t, "away-key", 1)
	g.close()
	if code, out, stderr := cliRun("", "audit", "verify", "--config", testbed.WriteConfig(t, yaml)); code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
}
