package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// An aws-cloudhsm provider on SoftHSM2 watching its cluster through the
// real SDK client and the stand-in management API (no AWS is reachable
// here): GET /api/v1/providers/{name}/health shows the cluster and is
// degraded, with the reason, while fewer than two HSMs are ACTIVE or they
// sit in one zone; each change of the HSM count is one audit record; the
// metrics follow; a management API that denies leaves signing and
// readiness alone and shows in cluster.error; no credential or signature
// reaches the log, the audit log or a response.
func TestCloudHSMClusterAwareness(t *testing.T) {
	hsm := testbed.ProcessSoftHSM(t)
	creds := testbed.TestAWSCredentials
	creds.Setenv(t)
	const clusterID = "cluster-kge2etest234"
	fake := testbed.NewFakeCloudHSM(t, creds, "us-west-2", clusterID)
	a := testbed.FakeHSM{ID: "hsm-aaaaaaaaaaa", Zone: "us-west-2a", State: "ACTIVE", IP: "10.0.1.10"}
	b := testbed.FakeHSM{ID: "hsm-bbbbbbbbbbb", Zone: "us-west-2b", State: "ACTIVE", IP: "10.0.2.10"}
	c := testbed.FakeHSM{ID: "hsm-ccccccccccc", Zone: "us-west-2a", State: "ACTIVE", IP: "10.0.1.11"}
	fake.SetHSMs(a, b)

	yaml := fmt.Sprintf(`
providers:
  aws-cloudhsm:
    enabled: true
    config:
      region: "us-west-2"
      cluster_id: %q
      cloudhsm_endpoint: %q
      cluster_poll_interval: 1s
      pkcs11:
        library_path: %q
        token_label: %q
        pin_env: "KEYGRID_E2E_PIN"
`, clusterID, fake.URL, testbed.SoftHSMModule, hsm.Label)
	dir := t.TempDir()
	path := filepath.Join(dir, "keygrid.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, config.Flags{DataDir: filepath.Join(dir, "data"), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	var logs testbed.LogBuffer
	srv, err := server.New(context.Background(), cfg, registry.All(), testbed.JSONLogger(&logs), "e2e")
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer func() { ts.Close(); srv.Close() }()
	tok, err := os.ReadFile(cfg.Auth.AdminTokenFile)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))
	cl, _ := client.New(ts.URL, client.WithToken(token))
	ctx := context.Background()

	var bodies [][]byte
	get := func(p string) []byte {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, ts.URL+p, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", p, resp.StatusCode, body)
		}
		bodies = append(bodies, body)
		return body
	}
	health := func() (apitypes.ProviderHealth, []byte) {
		t.Helper()
		body := get("/api/v1/providers/aws-cloudhsm/health")
		var h apitypes.ProviderHealth
		if err := json.Unmarshal(body, &h); err != nil || h.Cluster == nil {
			t.Fatalf("health %s: %v", body, err)
		}
		return h, body
	}
	waitHealth := func(what string, cond func(apitypes.ProviderHealth) bool) apitypes.ProviderHealth {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			h, body := health()
			if cond(h) {
				return h
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 30s; health %s", what, body)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// settle waits for two more describes, so that a change would have
	// been seen twice.
	settle := func(h apitypes.ProviderHealth) {
		t.Helper()
		since := *h.Cluster.CheckedAt
		waitHealth("two more describes", func(h apitypes.ProviderHealth) bool {
			return h.Cluster.CheckedAt.After(since.Add(1500 * time.Millisecond))
		})
	}
	metric := func(name, labels string) float64 {
		t.Helper()
		sc := bufio.NewScanner(bytes.NewReader(get("/metrics")))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), name+labels+" "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatal(err)
				}
				return f
			}
		}
		t.Fatalf("no sample %s%s", name, labels)
		return 0
	}
	activeHSMs := func() float64 {
		return metric("keygrid_cloudhsm_hsms", `{provider="aws-cloudhsm",state="ACTIVE"}`)
	}
	changeRecords := func() int {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join(dir, "data", "audit.log"))
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Count(raw, []byte(`"operation":"provider_cluster_hsms_changed"`))
	}
	if _, err := cl.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "cluster-key", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}}); err != nil {
		t.Fatal(err)
	}
	serves := func(when string) {
		t.Helper()
		if _, err := cl.Sign(ctx, "cluster-key", apitypes.SignRequest{Data: []byte(when)}); err != nil {
			t.Fatalf("sign %s: %v", when, err)
		}
		if _, err := cl.Ready(ctx); err != nil {
			t.Fatalf("/ready %s: %v", when, err)
		}
	}

	// Healthy: two ACTIVE HSMs in two zones, in the shape.
	h := waitHealth("first describe", func(h apitypes.ProviderHealth) bool { return h.Cluster.LastSuccess != nil })
	if h.State != "healthy" || !h.Healthy || len(h.Reasons) != 0 || h.Cluster.ID != clusterID || h.Cluster.State != "ACTIVE" ||
		h.Cluster.HSMType != "hsm2m.medium" || h.Cluster.Error != "" || h.Cluster.CheckedAt == nil || len(h.Cluster.HSMs) != 2 ||
		h.Cluster.HSMs[0] != (apitypes.ClusterHSM{ID: a.ID, AvailabilityZone: a.Zone, State: "ACTIVE", ENIIP: a.IP}) {
		t.Fatalf("healthy cluster: %+v %+v", h, h.Cluster)
	}
	_, raw := health()
	var shape struct {
		Cluster map[string]json.RawMessage `json:"cluster"`
	}
	json.Unmarshal(raw, &shape)
	for _, k := range []string{"id", "state", "hsm_type", "hsms", "checked_at"} {
		if _, ok := shape.Cluster[k]; !ok {
			t.Errorf("cluster has no %q: %s", k, raw)
		}
	}
	var hsms []map[string]any
	json.Unmarshal(shape.Cluster["hsms"], &hsms)
	for _, k := range []string{"id", "availability_zone", "state", "eni_ip"} {
		if _, ok := hsms[0][k]; !ok {
			t.Errorf("an HSM has no %q: %s", k, raw)
		}
	}
	if n := activeHSMs(); n != 2 {
		t.Fatalf("ACTIVE HSMs metric %v, want 2", n)
	}
	serves("healthy")

	// One HSM: degraded (still ready), the reason names the risk, one
	// audit record.
	fake.SetHSMs(a)
	h = waitHealth("one HSM", func(h apitypes.ProviderHealth) bool { return len(h.Cluster.HSMs) == 1 })
	if h.State != "degraded" || !h.Healthy || len(h.Reasons) != 1 || !strings.Contains(h.Reasons[0], "only one HSM is ACTIVE (in us-west-2a)") {
		t.Fatalf("one HSM: state %s, reasons %q", h.State, h.Reasons)
	}
	settle(h)
	if n := changeRecords(); n != 1 {
		t.Fatalf("%d audit records of the change 2 → 1, want 1", n)
	}
	if n := activeHSMs(); n != 1 {
		t.Fatalf("ACTIVE HSMs metric %v, want 1", n)
	}
	serves("with one HSM")

	// Two HSMs in one zone: degraded for the zone; the count went 1 → 2.
	fake.SetHSMs(a, c)
	h = waitHealth("two HSMs in one zone", func(h apitypes.ProviderHealth) bool { return len(h.Cluster.HSMs) == 2 })
	if h.State != "degraded" || len(h.Reasons) != 1 || !strings.Contains(h.Reasons[0], "one availability zone (us-west-2a)") {
		t.Fatalf("one zone: state %s, reasons %q", h.State, h.Reasons)
	}
	// Back to two zones: healthy; the count did not change, no record.
	fake.SetHSMs(a, b)
	h = waitHealth("two zones again", func(h apitypes.ProviderHealth) bool { return h.State == "healthy" })
	settle(h)
	if n := changeRecords(); n != 2 {
		t.Fatalf("%d audit records after 2 → 1 → 2 → 2, want 2", n)
	}
	if n := activeHSMs(); n != 2 {
		t.Fatalf("ACTIVE HSMs metric %v, want 2", n)
	}

	// A management API that denies: crypto and readiness untouched, the
	// error and its age in health, the last known HSMs kept.
	failures := metric("keygrid_cloudhsm_describe_failures_total", `{provider="aws-cloudhsm"}`)
	fake.Fail(http.StatusForbidden, "AccessDeniedException", "User: arn:aws:iam::123456789012:user/keygrid is not authorized to perform: cloudhsm:DescribeClusters")
	h = waitHealth("access denied", func(h apitypes.ProviderHealth) bool { return h.Cluster.ErrorCode == "AccessDeniedException" })
	if h.State != "healthy" || !h.Healthy || !strings.Contains(h.Cluster.Error, "cloudhsm:DescribeClusters") || h.Cluster.ErrorSince == nil ||
		len(h.Cluster.HSMs) != 2 || h.Cluster.LastSuccess == nil || !h.Cluster.CheckedAt.After(*h.Cluster.LastSuccess) {
		t.Fatalf("denied: %+v %+v", h, h.Cluster)
	}
	serves("while the management API denies")
	if n := metric("keygrid_cloudhsm_describe_failures_total", `{provider="aws-cloudhsm"}`); n <= failures {
		t.Fatalf("describe failures %v, were %v", n, failures)
	}
	if n := activeHSMs(); n != 2 {
		t.Fatalf("ACTIVE HSMs metric while denied %v, want the last known 2", n)
	}
	fake.Recover()
	waitHealth("the management API answers again", func(h apitypes.ProviderHealth) bool { return h.Cluster.Error == "" })

	ts.Close()
	srv.Close()
	auditRaw, err := os.ReadFile(filepath.Join(dir, "data", "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := audit.Verify(bytes.NewReader(auditRaw), audit.ZeroHash); err != nil {
		t.Fatalf("audit chain: %v", err)
	}
	if _, bad := fake.Calls(); bad != 0 {
		t.Fatalf("%d requests not signed with the configured credentials", bad)
	}
	secrets := map[string]string{"secret access key": creds.SecretAccessKey, "session token": creds.SessionToken, "PIN": hsmPIN}
	for _, auth := range fake.Authorizations() {
		if _, sig, ok := strings.Cut(auth, "Signature="); ok {
			secrets["signature "+sig[:8]] = sig
		}
	}
	for what, s := range secrets {
		for where, b := range map[string][]byte{"log": logs.Bytes(), "audit log": auditRaw, "responses": bytes.Join(bodies, nil)} {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("the %s is in the %s", what, where)
			}
		}
	}
	if !bytes.Contains(logs.Bytes(), []byte("DescribeClusters failed")) {
		t.Fatal("the denial was not logged: the log capture is not working")
	}
}
