package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// `keygrid-hsm doctor` on an aws-cloudhsm provider that watches its cluster
// (SoftHSM2 as the token, the stand-in management API as AWS): the cluster
// check passes with two ACTIVE HSMs in two zones, warns (without failing)
// when the cluster is at risk, and fails when the API cannot be reached or
// denies; no credential is printed.
func TestDoctorCluster(t *testing.T) {
	testbed.Require(t, "softhsm2-util", testbed.SoftHSMModule)
	dir := t.TempDir()
	const pin = "kg-cu:doctor-cluster-pin-5531"
	soft, err := testbed.NewSoftHSM(dir, "keygrid-doctor-cluster", pin)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", soft.Conf)
	t.Setenv("DOCTOR_CLUSTER_PIN", pin)
	creds := testbed.TestAWSCredentials
	creds.Setenv(t)
	const clusterID = "cluster-kgdoctor23456"
	fake := testbed.NewFakeCloudHSM(t, creds, "us-west-2", clusterID)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	a := testbed.FakeHSM{ID: "hsm-aaaaaaaaaaa", Zone: "us-west-2a", State: "ACTIVE", IP: "10.0.1.10"}
	b := testbed.FakeHSM{ID: "hsm-bbbbbbbbbbb", Zone: "us-west-2b", State: "ACTIVE", IP: "10.0.2.10"}
	write := func(endpoint string) string {
		p := filepath.Join(t.TempDir(), "keygrid.yaml")
		yaml := fmt.Sprintf(`data_dir: %s
providers:
  aws-cloudhsm:
    config:
      region: us-west-2
      cluster_id: %s
      cloudhsm_endpoint: %s
      pkcs11:
        library_path: %s
        token_label: keygrid-doctor-cluster
        pin_env: DOCTOR_CLUSTER_PIN
`, filepath.Join(dir, "data"), clusterID, endpoint, testbed.SoftHSMModule)
		if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		name     string
		setup    func()
		endpoint string
		wantCode int
		want     []string // lines that must be there
	}{
		{"ok two zones", func() { fake.SetHSMs(a, b) }, fake.URL, 0,
			[]string{"PASS  cluster      " + clusterID + " in us-west-2: reachable, DescribeClusters authorized; state ACTIVE",
				"PASS  cluster-hsms 2 HSM(s), 2 ACTIVE in 2 availability zone(s) (us-west-2a, us-west-2b)", "PASS  sign/verify"}},
		{"warn one HSM", func() { fake.SetHSMs(a) }, fake.URL, 0,
			[]string{"PASS  cluster ", "WARN  cluster-hsms 1 HSM(s), 1 ACTIVE in 1 availability zone(s) (us-west-2a): only one HSM is ACTIVE",
				"PASS  sign/verify"}},
		{"fail access denied", func() { fake.Fail(http.StatusForbidden, "AccessDeniedException", "not authorized") }, fake.URL, 1,
			[]string{"FAIL  cluster      DescribeClusters " + clusterID + " in us-west-2: access denied (AccessDeniedException)", "PASS  sign/verify"}},
		{"fail unreachable", func() {}, closed.URL, 1,
			[]string{"FAIL  cluster      DescribeClusters " + clusterID + " in us-west-2: the management API cannot be reached", "[unreachable]"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fake.Recover()
			c.setup()
			code, out, _ := cliRun("", "doctor", "--config", write(c.endpoint))
			if code != c.wantCode {
				t.Fatalf("exit %d, want %d:\n%s", code, c.wantCode, out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("no %q in:\n%s", w, out)
				}
			}
			fails := 0
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "FAIL") {
					fails++
				}
			}
			if fails != c.wantCode {
				t.Errorf("%d FAIL lines, want %d:\n%s", fails, c.wantCode, out)
			}
			for _, s := range []string{pin, creds.SecretAccessKey, creds.SessionToken} {
				if strings.Contains(out, s) {
					t.Fatalf("a secret was printed:\n%s", out)
				}
			}
		})
	}
}
