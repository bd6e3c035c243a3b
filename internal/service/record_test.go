package service_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/metrics"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// testService is a service on SQLite, the software provider and an audit
// log in dir.
func testService(t *testing.T, dir string) (*service.Service, *software.Provider, string) {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logPath := filepath.Join(dir, "audit.log")
	al, err := audit.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	mk := make([]byte, 32)
	rand.Read(mk)
	sp, err := software.Open("software", filepath.Join(dir, "ks"), mk)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := service.New(service.Options{Store: st, Providers: []provider.Provider{sp}, Audit: al, Metrics: metrics.New("test")})
	if err != nil {
		t.Fatal(err)
	}
	return svc, sp, logPath
}

func readAudit(t *testing.T, path string) []audit.Event {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []audit.Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e audit.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// TestCallerAttributesReachEveryRecord checks that a front end's
// attributes and error names are carried into the service's own records,
// into Record's and into authentication failures, and that the log's chain
// still verifies.
func TestCallerAttributesReachEveryRecord(t *testing.T) {
	dir := t.TempDir()
	svc, _, logPath := testService(t, dir)
	attrs := map[string]string{"store": "main", "kmsRequestId": "r-1"}
	c := service.Caller{RequestID: "rid", Principal: "xks:main", Attributes: attrs,
		Auth:      auth.NewPrincipal("xks:main", auth.RoleOperator, "", []string{"k*"}, nil),
		ErrorName: func(err error) string { return "Name-" + string(kgerr.KindOf(err)) }}
	admin := service.WithCaller(context.Background(), service.Caller{Auth: &auth.Principal{Name: "a", Role: auth.RoleAdmin}})
	if _, err := svc.CreateKey(admin, service.CreateKeyRequest{Name: "k1", Spec: service.KeySpec{KeyType: "AES", KeySize: 256}}); err != nil {
		t.Fatal(err)
	}
	ctx := service.WithCaller(context.Background(), c)
	if _, err := svc.Encrypt(ctx, service.EncryptRequest{Key: "k1", Plaintext: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Decrypt(ctx, service.DecryptRequest{Key: "k1", Ciphertext: []byte("xx"), Nonce: make([]byte, 12), Tag: make([]byte, 16)}); !errors.Is(err, kgerr.ErrDecryptionFailed) {
		t.Fatalf("decrypt garbage: %v", err)
	}
	start := time.Now()
	k, err := svc.GetKey(ctx, "k1")
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Record(ctx, "xks_metadata", k, start, nil); err != nil {
		t.Fatal(err)
	}
	if err := svc.Record(ctx, "xks_health", nil, start, kgerr.New(kgerr.KindRateLimited, "slow down")); err != nil {
		t.Fatal(err)
	}
	svc.AuthenticationFailed(ctx, "bad signature")

	recs := readAudit(t, logPath)[1:] // the create
	want := []struct{ op, outcome, code, name string }{
		{"encrypt", "success", "", ""},
		{"decrypt", "failure", "DECRYPTION_FAILED", "Name-DECRYPTION_FAILED"},
		{"xks_metadata", "success", "", ""},
		{"xks_health", "failure", "RATE_LIMITED", "Name-RATE_LIMITED"},
		{"authenticate", "denied", "AUTHENTICATION_FAILED", "Name-AUTHENTICATION_FAILED"},
	}
	if len(recs) != len(want) {
		t.Fatalf("%d records, want %d: %+v", len(recs), len(want), recs)
	}
	for i, w := range want {
		r := recs[i]
		if r.Operation != w.op || r.Outcome != w.outcome || r.ErrorCode != w.code || r.ErrorName != w.name ||
			r.Attributes["store"] != "main" || r.Attributes["kmsRequestId"] != "r-1" || r.RequestID != "rid" {
			t.Errorf("record %d: %+v, want %+v", i, r, w)
		}
	}
	if recs[2].KeyName != "k1" || recs[2].KeyVersion != 1 || recs[2].Provider != "software" || recs[2].Principal != "xks:main" {
		t.Errorf("metadata record: %+v", recs[2])
	}
	if recs[4].Principal != "" {
		t.Errorf("an authentication failure names principal %q", recs[4].Principal)
	}
	f, _ := os.Open(logPath)
	defer f.Close()
	if _, _, err := audit.Verify(f, ""); err != nil {
		t.Fatalf("chain: %v", err)
	}
}

// TestProbeAESGCM checks the deep probe: it works, makes its key once (no
// managed key appears), and makes it again when the provider lost it.
func TestProbeAESGCM(t *testing.T) {
	dir := t.TempDir()
	svc, sp, _ := testService(t, dir)
	ctx := context.Background()
	if err := svc.ProbeAESGCM(ctx, "software"); err != nil {
		t.Fatal(err)
	}
	files := func() int {
		es, err := os.ReadDir(filepath.Join(dir, "ks"))
		if err != nil {
			t.Fatal(err)
		}
		return len(es)
	}
	n := files()
	if err := svc.ProbeAESGCM(ctx, "software"); err != nil || files() != n {
		t.Fatalf("second probe: %v, %d files then %d", err, n, files())
	}
	admin := service.WithCaller(ctx, service.Caller{Auth: &auth.Principal{Name: "a", Role: auth.RoleAdmin}})
	if l, err := svc.ListKeys(admin, service.ListOptions{}); err != nil || len(l.Keys) != 0 {
		t.Fatalf("the probe key is listed: %+v %v", l, err)
	}
	// The keystore loses the probe key: the next probe makes a new one.
	keys, _ := filepath.Glob(filepath.Join(dir, "ks", "*.key"))
	if len(keys) != 1 {
		t.Fatalf("keystore files: %v", keys)
	}
	if err := sp.DeleteKey(ctx, strings.TrimSuffix(filepath.Base(keys[0]), ".key")); err != nil {
		t.Fatal(err)
	}
	if err := svc.ProbeAESGCM(ctx, "software"); err != nil {
		t.Fatalf("probe after the key was lost: %v", err)
	}
	if again, _ := filepath.Glob(filepath.Join(dir, "ks", "*.key")); len(again) != 1 {
		t.Fatalf("the probe key was not made again: %v", again)
	}
	if err := svc.ProbeAESGCM(ctx, "nope"); !errors.Is(err, kgerr.ErrProviderNotFound) {
		t.Fatalf("unknown provider: %v", err)
	}
}
