package service

// The service-level test fixture: the real SQLite store, the real software
// provider, the real audit log (read back to assert its records), real
// metrics and a clock the test moves. No HTTP.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/metrics"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// testClock is the service's clock in tests: it stands still until moved.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type fixture struct {
	t         *testing.T
	dir       string
	store     store.Store
	soft      *software.Provider
	keystore  string
	audit     *audit.Log
	auditPath string
	metrics   *metrics.Metrics
	clock     *testClock
	logs      *testbed.LogBuffer
	svc       *Service
}

// fixtureOption changes the service's options before New (to add or wrap
// providers, replace the recorder, set the grace period, …).
type fixtureOption func(f *fixture, o *Options)

// newFixture builds a service over fresh parts in t.TempDir().
func newFixture(t *testing.T, opts ...fixtureOption) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{t: t, dir: t.TempDir(), logs: &testbed.LogBuffer{},
		clock: &testClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}}
	var err error
	if f.store, err = store.OpenSQLite(ctx, filepath.Join(f.dir, "meta.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.store.Close() })
	f.auditPath = filepath.Join(f.dir, "audit.log")
	if f.audit, err = audit.Open(f.auditPath); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.audit.Close()
		// Whatever a test did, the chain it left is whole.
		if _, err := audit.VerifyFiles([]string{f.auditPath}, ""); err != nil {
			t.Errorf("audit chain: %v", err)
		}
	})
	f.keystore = filepath.Join(f.dir, "keystore")
	if f.soft, err = software.Open("software", f.keystore, testMasterKey(t)); err != nil {
		t.Fatal(err)
	}
	f.metrics = metrics.New("test")
	o := Options{
		Store: f.store, Providers: []provider.Provider{f.soft}, Audit: f.audit, Metrics: f.metrics,
		Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:    f.clock.Now,
	}
	for _, opt := range opts {
		opt(f, &o)
	}
	if f.svc, err = New(o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.svc.Close() })
	return f
}

func testMasterKey(t *testing.T) []byte {
	mk := make([]byte, 32)
	if _, err := rand.Read(mk); err != nil {
		t.Fatal(err)
	}
	return mk
}

// withProvider adds a provider (a second software keystore, a fault-
// injecting wrapper, …).
func withProvider(p provider.Provider) fixtureOption {
	return func(_ *fixture, o *Options) { o.Providers = append(o.Providers, p) }
}

// openSoftware opens another software provider under the fixture's
// directory.
func openSoftware(t *testing.T, name string) *software.Provider {
	t.Helper()
	p, err := software.Open(name, filepath.Join(t.TempDir(), name), testMasterKey(t))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Principals of each role, unscoped.
var (
	adminP    = auth.NewPrincipal("alice-admin", auth.RoleAdmin, "", nil, nil)
	operatorP = auth.NewPrincipal("oscar-operator", auth.RoleOperator, "", nil, nil)
	auditorP  = auth.NewPrincipal("ada-auditor", auth.RoleAuditor, "", nil, nil)
)

// as returns a context whose caller is p (nil: no principal).
func as(p *auth.Principal) context.Context {
	c := Caller{RequestID: "req-anonymous", ClientAddr: "192.0.2.7", Auth: p}
	if p != nil {
		c.RequestID, c.Principal = "req-"+p.Name, p.Name
	}
	return WithCaller(context.Background(), c)
}

func (f *fixture) admin() context.Context { return as(adminP) }

// create makes a key as admin and fails the test if it cannot.
func (f *fixture) create(name string, spec KeySpec) *Key {
	f.t.Helper()
	k, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: name, Spec: spec})
	if err != nil {
		f.t.Fatalf("create %s: %v", name, err)
	}
	return k
}

// Key specs the tests use often.
var (
	specRSA     = KeySpec{KeyType: "RSA", KeySize: 2048}
	specRSAEnc  = KeySpec{KeyType: "RSA", KeySize: 2048, Usage: []string{"encrypt", "decrypt"}}
	specP256    = KeySpec{KeyType: "EC", Curve: "P-256"}
	specP384    = KeySpec{KeyType: "EC", Curve: "P-384"}
	specP521    = KeySpec{KeyType: "EC", Curve: "P-521"}
	specEd25519 = KeySpec{KeyType: "Ed25519"}
	specAES128  = KeySpec{KeyType: "AES", KeySize: 128}
	specAES256  = KeySpec{KeyType: "AES", KeySize: 256}
	specKEK     = KeySpec{KeyType: "AES", KeySize: 256, Usage: []string{"wrap", "unwrap"}}
)

// stored reads a key straight from the store.
func (f *fixture) stored(ref string) *store.Key {
	f.t.Helper()
	k, err := f.store.GetKey(context.Background(), ref)
	if err != nil {
		f.t.Fatalf("store: get %s: %v", ref, err)
	}
	return k
}

// gone asserts the store has no key ref.
func (f *fixture) gone(ref string) {
	f.t.Helper()
	if k, err := f.store.GetKey(context.Background(), ref); !errors.Is(err, kgerr.ErrKeyNotFound) {
		f.t.Fatalf("store: key %s: got %+v, %v; want it gone", ref, k, err)
	}
}

// storedKeys lists every key in the store.
func (f *fixture) storedKeys() []*store.Key {
	f.t.Helper()
	keys, _, err := f.store.ListKeys(context.Background(), store.ListOptions{Limit: store.MaxPageSize})
	if err != nil {
		f.t.Fatal(err)
	}
	return keys
}

// material reports whether the software keystore holds an object id.
func (f *fixture) material(objectID string) bool {
	f.t.Helper()
	_, found, err := f.soft.FindKey(context.Background(), objectID)
	if err != nil {
		f.t.Fatal(err)
	}
	return found
}

// keyFiles counts the key files in the software keystore.
func (f *fixture) keyFiles() int {
	f.t.Helper()
	m, err := filepath.Glob(filepath.Join(f.keystore, "*.key"))
	if err != nil {
		f.t.Fatal(err)
	}
	return len(m)
}

// records reads back the audit log.
func (f *fixture) records() []audit.Event {
	f.t.Helper()
	b, err := os.ReadFile(f.auditPath)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []audit.Event
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var e audit.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			f.t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

// mark is the number of audit records so far; since returns those after it.
func (f *fixture) mark() int { return len(f.records()) }

func (f *fixture) since(mark int) []audit.Event {
	f.t.Helper()
	return f.records()[mark:]
}

// last is the latest audit record.
func (f *fixture) last() audit.Event {
	f.t.Helper()
	r := f.records()
	if len(r) == 0 {
		f.t.Fatal("no audit record")
	}
	return r[len(r)-1]
}

// wantRecord checks the fields of an audit record that a test cares about;
// zero fields of want are not compared, except Outcome and ErrorCode.
func wantRecord(t *testing.T, got, want audit.Event) {
	t.Helper()
	bad := got.Operation != want.Operation || got.Outcome != want.Outcome || got.ErrorCode != want.ErrorCode ||
		(want.KeyID != "" && got.KeyID != want.KeyID) || (want.KeyName != "" && got.KeyName != want.KeyName) ||
		(want.KeyVersion != 0 && got.KeyVersion != want.KeyVersion) || (want.Provider != "" && got.Provider != want.Provider) ||
		(want.Algorithm != "" && got.Algorithm != want.Algorithm) || (want.Principal != "" && got.Principal != want.Principal) ||
		(want.RequestID != "" && got.RequestID != want.RequestID)
	if bad {
		t.Fatalf("audit record\n got %+v\nwant %+v", got, want)
	}
}

// wantErr checks err against a kgerr sentinel (nil: no error).
func wantErr(t *testing.T, err, want error) {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != nil && !errors.Is(err, want):
		t.Fatalf("got error %v (kind %q), want kind %q", err, kgerr.KindOf(err), kgerr.KindOf(want))
	}
}

// metric sums the samples of a metric family whose labels include labels
// (counter, gauge or histogram count).
func (f *fixture) metric(name string, labels map[string]string) float64 {
	f.t.Helper()
	fams, err := f.metrics.Registry.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	total := 0.0
	for _, fam := range fams {
		if fam.GetName() != name {
			continue
		}
	metrics:
		for _, m := range fam.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				total += m.GetCounter().GetValue()
			case m.Gauge != nil:
				total += m.GetGauge().GetValue()
			case m.Histogram != nil:
				total += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return total
}

// pending writes a pending record the way CreateKey does before it calls
// the provider, aged by age on the fixture's clock, with its material made
// in the provider when withMaterial is set (a create cut short after the
// provider's call).
func (f *fixture) pending(name string, spec alg.Spec, withMaterial bool, age time.Duration) (*store.Key, provider.CreatedKey) {
	f.t.Helper()
	return f.pendingOn("software", name, spec, withMaterial, age)
}

// pendingOn is pending on a named provider (material is made in the
// software provider only).
func (f *fixture) pendingOn(prov, name string, spec alg.Spec, withMaterial bool, age time.Duration) (*store.Key, provider.CreatedKey) {
	f.t.Helper()
	ctx := context.Background()
	id, err := uuid.NewV7()
	if err != nil {
		f.t.Fatal(err)
	}
	a := alg.Default(spec, nil)
	info, _ := alg.Lookup(string(a))
	var usage []string
	for _, u := range alg.DefaultUsage(info) {
		usage = append(usage, string(u))
	}
	at := f.clock.Now().Add(-age).UTC()
	k := &store.Key{ID: id.String(), Name: name, Provider: prov, KeyType: string(spec.Type), KeySize: spec.Size,
		Curve: spec.Curve, Algorithm: string(a), Usage: usage, State: store.StatePending, CreatedAt: at, UpdatedAt: at,
		Versions: []store.Version{{Version: 1, ObjectID: newObjectID(), State: store.StatePending, CreatedAt: at}}}
	if err := f.store.CreateKey(ctx, k); err != nil {
		f.t.Fatal(err)
	}
	var created provider.CreatedKey
	if withMaterial {
		created = f.makeMaterial(k, k.Versions[0].ObjectID)
	}
	return k, created
}

// makeMaterial makes key material for objectID in the software provider
// directly.
func (f *fixture) makeMaterial(k *store.Key, objectID string) provider.CreatedKey {
	f.t.Helper()
	var usage []alg.Usage
	for _, u := range k.Usage {
		usage = append(usage, alg.Usage(u))
	}
	c, err := f.soft.CreateKey(context.Background(), provider.CreateKeyRequest{ObjectID: objectID, Label: k.Name, Spec: specOf(k), Usage: usage})
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// faultProvider is the software provider with faults injected that no real
// part here produces on demand: a create that fails (after making the
// material, or not), a generation cut short (FindKey's IncompleteKeyError),
// a health check that hangs, and a session pool's statistics. Everything
// else is the real provider.
type faultProvider struct {
	*software.Provider

	mu           sync.Mutex
	createErr    error // CreateKey fails with this
	createAnyway bool  // … after making the material
	incomplete   bool  // FindKey reports existing material as incomplete
	health       func(ctx context.Context) error
}

func (p *faultProvider) CreateKey(ctx context.Context, req provider.CreateKeyRequest) (provider.CreatedKey, error) {
	p.mu.Lock()
	err, anyway := p.createErr, p.createAnyway
	p.mu.Unlock()
	if err == nil {
		return p.Provider.CreateKey(ctx, req)
	}
	if anyway {
		if _, cerr := p.Provider.CreateKey(ctx, req); cerr != nil {
			return provider.CreatedKey{}, cerr
		}
	}
	return provider.CreatedKey{}, err
}

func (p *faultProvider) FindKey(ctx context.Context, objectID string) (string, bool, error) {
	p.mu.Lock()
	incomplete := p.incomplete
	p.mu.Unlock()
	ref, found, err := p.Provider.FindKey(ctx, objectID)
	if incomplete && found && err == nil {
		return "", false, &provider.IncompleteKeyError{Ref: ref, Missing: "private key"}
	}
	return ref, found, err
}

func (p *faultProvider) CheckHealth(ctx context.Context) error {
	p.mu.Lock()
	h := p.health
	p.mu.Unlock()
	if h != nil {
		return h(ctx)
	}
	return p.Provider.CheckHealth(ctx)
}

func (p *faultProvider) set(f func(p *faultProvider)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

// statsProvider adds a session pool's statistics (provider.StatsReporter)
// to a faultProvider: what PKCS#11 reports, set by the test.
type statsProvider struct {
	*faultProvider

	smu   sync.Mutex
	stats provider.Stats
}

func (p *statsProvider) Stats() provider.Stats {
	p.smu.Lock()
	defer p.smu.Unlock()
	return p.stats
}

func (p *statsProvider) setStats(s provider.Stats) {
	p.smu.Lock()
	defer p.smu.Unlock()
	p.stats = s
}

// noSecrets fails the test if any of secrets appears in the audit log or
// the service's log.
func (f *fixture) noSecrets(secrets ...[]byte) {
	f.t.Helper()
	b, err := os.ReadFile(f.auditPath)
	if err != nil {
		f.t.Fatal(err)
	}
	logs := f.logs.String()
	for _, s := range secrets {
		if bytes.Contains(b, s) || strings.Contains(logs, string(s)) {
			f.t.Fatalf("%q appears in the audit log or the service log", s)
		}
	}
}
