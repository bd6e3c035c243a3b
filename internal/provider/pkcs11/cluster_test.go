package pkcs11

import (
	"bytes"
	"context"
	"crypto/sha256"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/cloudhsm"
	"github.com/keygrid/keygrid-hsm/internal/duration"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

func TestClusterSettings(t *testing.T) {
	t.Setenv("CLOUDHSM_PIN", "cu_app:s3cret")
	t.Setenv("PLAIN_PIN", "plain-pin-9876")
	plain := Settings{LibraryPath: "/x.so", PinEnv: "PLAIN_PIN"}
	cases := []struct {
		name, typ string
		cfg       Config
		want      *cloudhsm.Options
		wantErr   string // the error's start
	}{
		{name: "ok no cluster", typ: TypeAWSCloudHSM, cfg: Config{}},
		{name: "ok seed block", typ: TypeAWSCloudHSM, cfg: Config{Region: "us-west-2", ClusterID: "cluster-123456789abcdef0"},
			want: &cloudhsm.Options{Region: "us-west-2", ClusterID: "cluster-123456789abcdef0"}},
		{name: "ok every setting", typ: TypeAWSCloudHSM, cfg: Config{Region: "eu-central-1", ClusterID: "cluster-jxhlf7644ne", UseInstanceRole: true,
			ClusterPollInterval: duration.Duration(30 * time.Second), CloudHSMEndpoint: "https://vpce.example.internal"},
			want: &cloudhsm.Options{Region: "eu-central-1", ClusterID: "cluster-jxhlf7644ne", UseInstanceRole: true,
				Interval: 30 * time.Second, Endpoint: "https://vpce.example.internal"}},
		{name: "fail region without cluster_id", typ: TypeAWSCloudHSM, cfg: Config{Region: "us-west-2"},
			wantErr: "providers.x.config.cluster_id: required"},
		{name: "fail cluster_id without region", typ: TypeAWSCloudHSM, cfg: Config{ClusterID: "cluster-jxhlf7644ne"},
			wantErr: "providers.x.config.region: required"},
		{name: "fail instance role alone", typ: TypeAWSCloudHSM, cfg: Config{UseInstanceRole: true},
			wantErr: "providers.x.config: region and cluster_id are required"},
		{name: "fail bad region", typ: TypeAWSCloudHSM, cfg: Config{Region: "us west", ClusterID: "cluster-jxhlf7644ne"},
			wantErr: "providers.x.config.region:"},
		{name: "fail bad cluster id", typ: TypeAWSCloudHSM, cfg: Config{Region: "us-west-2", ClusterID: "jxhlf7644ne"},
			wantErr: "providers.x.config.cluster_id:"},
		{name: "fail short poll interval", typ: TypeAWSCloudHSM, cfg: Config{Region: "us-west-2", ClusterID: "cluster-jxhlf7644ne",
			ClusterPollInterval: duration.Duration(10 * time.Millisecond)}, wantErr: "providers.x.config.cluster_poll_interval:"},
		{name: "fail endpoint", typ: TypeAWSCloudHSM, cfg: Config{Region: "us-west-2", ClusterID: "cluster-jxhlf7644ne",
			CloudHSMEndpoint: "vpce.example.internal"}, wantErr: "providers.x.config.cloudhsm_endpoint:"},
		{name: "fail cluster on a plain pkcs11 provider", typ: TypePKCS11, cfg: Config{Settings: plain, ClusterID: "cluster-jxhlf7644ne"},
			wantErr: "providers.x.config.cluster_id: watching a CloudHSM cluster needs type aws-cloudhsm"},
		{name: "fail endpoint on a plain pkcs11 provider", typ: TypePKCS11, cfg: Config{Settings: plain, CloudHSMEndpoint: "https://x"},
			wantErr: "providers.x.config.cloudhsm_endpoint: watching"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := c.cfg.resolve(c.typ, "providers.x.config")
			if c.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want one starting %q", err, c.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "plain-pin-9876") {
					t.Fatal("a PIN is in the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case c.want == nil && r.cluster != nil:
				t.Fatalf("cluster %+v, want none", r.cluster)
			case c.want != nil && (r.cluster == nil || *r.cluster != *c.want):
				t.Fatalf("cluster %+v, want %+v", r.cluster, c.want)
			}
		})
	}
}

// The YAML keys of the cluster settings, beside the seed's nested pkcs11
// block, decode with unknown fields refused (as the server decodes).
func TestClusterSettingsYAML(t *testing.T) {
	const block = `
region: "us-west-2"
cluster_id: "cluster-123456789abcdef0"
use_instance_role: true
cluster_poll_interval: 90s
cloudhsm_endpoint: "https://cloudhsmv2.us-west-2.amazonaws.com"
pkcs11:
  library_path: "/opt/cloudhsm/lib/libcloudhsm_pkcs11.so"
  slot_id: 0
  token_label: "keygrid-partition"
  pin_env: "CLOUDHSM_PIN"
`
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(block))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	if c.Region != "us-west-2" || c.ClusterID != "cluster-123456789abcdef0" || !c.UseInstanceRole ||
		time.Duration(c.ClusterPollInterval) != 90*time.Second || c.CloudHSMEndpoint != "https://cloudhsmv2.us-west-2.amazonaws.com" {
		t.Fatalf("%+v", c)
	}
}

// An aws-cloudhsm instance on SoftHSM2 watches its cluster through the
// real SDK client and the stand-in management API: the view follows the
// cluster, a change in the number of HSMs is one event, and a management
// API that refuses or hangs never touches signing, health or Close.
func TestCloudHSMClusterOnSoftHSM(t *testing.T) {
	hsm := testbed.ProcessSoftHSM(t)
	testbed.TestAWSCredentials.Setenv(t)
	const clusterID = "cluster-kgpkcs11test2"
	fake := testbed.NewFakeCloudHSM(t, testbed.TestAWSCredentials, "us-west-2", clusterID)
	a := testbed.FakeHSM{ID: "hsm-aaaaaaaaaaa", Zone: "us-west-2a", State: "ACTIVE", IP: "10.0.1.10"}
	b := testbed.FakeHSM{ID: "hsm-bbbbbbbbbbb", Zone: "us-west-2b", State: "ACTIVE", IP: "10.0.2.10"}
	fake.SetHSMs(a, b)
	os.Setenv("KEYGRID_TEST_CLOUD_PIN", testPIN)
	c := Config{Region: "us-west-2", ClusterID: clusterID, CloudHSMEndpoint: fake.URL, ClusterPollInterval: duration.Duration(time.Second),
		PKCS11: &Settings{LibraryPath: testbed.SoftHSMModule, TokenLabel: hsm.Label, PinEnv: "KEYGRID_TEST_CLOUD_PIN"}}
	var logs lockedLog
	p, err := Open(context.Background(), "cloud", TypeAWSCloudHSM, c, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var mu sync.Mutex
	var events []provider.Event
	p.SetEventSink(func(e provider.Event) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	})
	clusterEvents := func() (n int) {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range events {
			if e.Kind == cloudhsm.EventHSMsChanged {
				n++
			}
		}
		return n
	}
	var r provider.ClusterReporter = p
	wait := func(what string, cond func(provider.ClusterStatus) bool) provider.ClusterStatus {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, ok := r.ClusterStatus()
			if !ok {
				t.Fatal("the provider reports no cluster")
			}
			if cond(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 30s; last %+v", what, st)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	st := wait("first describe", func(st provider.ClusterStatus) bool { return !st.DescribedAt.IsZero() })
	if len(st.HSMs) != 2 || len(st.Risks) != 0 || st.ErrorCode != "" || st.ID != clusterID {
		t.Fatalf("healthy cluster: %+v", st)
	}

	spec := alg.Spec{Type: alg.EC, Curve: "P-256", Size: 256}
	k := create(t, p, spec, []alg.Usage{alg.UsageSign}, "cluster-ec")
	es256, _ := alg.Lookup("ES256")
	d := sha256.Sum256([]byte("cluster"))
	sign := func(when string) {
		t.Helper()
		if _, err := p.Sign(context.Background(), provider.SignRequest{Ref: k.Ref, Spec: spec, Algorithm: es256, Input: d[:]}); err != nil {
			t.Fatalf("sign %s: %v", when, err)
		}
		if err := p.CheckHealth(context.Background()); err != nil || !p.Stats().Up {
			t.Fatalf("health %s: %v, up %v", when, err, p.Stats().Up)
		}
	}

	fake.SetHSMs(a)
	st = wait("one HSM", func(st provider.ClusterStatus) bool { return len(st.HSMs) == 1 })
	if len(st.Risks) != 1 || !strings.Contains(st.Risks[0], "only one HSM is ACTIVE") {
		t.Fatalf("risks %q", st.Risks)
	}
	wait("a few more describes", func(s provider.ClusterStatus) bool { return s.CheckedAt.After(st.CheckedAt.Add(time.Second)) })
	if n := clusterEvents(); n != 1 {
		t.Fatalf("%d cluster events for one change, want 1", n)
	}
	sign("with one HSM")

	fake.Fail(http.StatusForbidden, "AccessDeniedException", "User: arn:aws:iam::123456789012:user/x is not authorized")
	st = wait("access denied", func(st provider.ClusterStatus) bool { return st.ErrorCode == "AccessDeniedException" })
	if st.ErrorSince.IsZero() || len(st.HSMs) != 1 {
		t.Fatalf("denied: %+v", st)
	}
	sign("while the management API denies")

	fake.Recover()
	fake.SetHSMs(a, b)
	st = wait("recovered", func(st provider.ClusterStatus) bool { return st.ErrorCode == "" && len(st.HSMs) == 2 })
	if len(st.Risks) != 0 || clusterEvents() != 2 {
		t.Fatalf("after recovery: %+v, %d events", st, clusterEvents())
	}

	// Close does not wait for a management API that hangs.
	fake.Hang(time.Minute)
	before, _ := fake.Calls()
	wait("a describe in flight", func(provider.ClusterStatus) bool { n, _ := fake.Calls(); return n > before })
	sign("while the management API hangs")
	start := time.Now()
	p.Close()
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Close took %s", d)
	}
	if _, bad := fake.Calls(); bad != 0 {
		t.Fatalf("%d requests not signed with the configured credentials", bad)
	}
	out := logs.String()
	for _, secret := range []string{testbed.TestAWSCredentials.SecretAccessKey, testbed.TestAWSCredentials.SessionToken, testPIN} {
		if strings.Contains(out, secret) {
			t.Fatalf("a secret is in the log:\n%s", out)
		}
	}
}

type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
