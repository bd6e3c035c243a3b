package cloudhsm

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// The management API is AWS's, which no test reaches: these tests run the
// real SDK client against testbed.FakeCloudHSM, which speaks its protocol
// and checks every request's SigV4 signature.

const (
	testRegion  = "us-west-2"
	testCluster = "cluster-kgtest234567ab"
)

var (
	hsmA = testbed.FakeHSM{ID: "hsm-aaaaaaaaaaa", Zone: "us-west-2a", State: "ACTIVE", IP: "10.0.1.10"}
	hsmB = testbed.FakeHSM{ID: "hsm-bbbbbbbbbbb", Zone: "us-west-2b", State: "ACTIVE", IP: "10.0.2.10"}
	hsmC = testbed.FakeHSM{ID: "hsm-ccccccccccc", Zone: "us-west-2a", State: "ACTIVE", IP: "10.0.1.11"}
)

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type bed struct {
	fake   *testbed.FakeCloudHSM
	logs   *lockedBuffer
	mu     sync.Mutex
	events []provider.Event
}

func newBed(t *testing.T) *bed {
	testbed.TestAWSCredentials.Setenv(t)
	return &bed{fake: testbed.NewFakeCloudHSM(t, testbed.TestAWSCredentials, testRegion, testCluster), logs: &lockedBuffer{}}
}

func (b *bed) poller(t *testing.T, mod func(*Options)) *Poller {
	o := Options{Region: testRegion, ClusterID: testCluster, Endpoint: b.fake.URL, Timeout: 20 * time.Second,
		Logger: slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if mod != nil {
		mod(&o)
	}
	if err := o.Validate("providers.hsm.config"); err != nil {
		t.Fatal(err)
	}
	p := NewPoller(o, func(e provider.Event) {
		b.mu.Lock()
		b.events = append(b.events, e)
		b.mu.Unlock()
	})
	t.Cleanup(p.Close)
	return p
}

func (b *bed) eventList() []provider.Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.events)
}

// noSecrets fails the test when a credential or a request signature shows
// in s.
func (b *bed) noSecrets(t *testing.T, what, s string) {
	t.Helper()
	c := testbed.TestAWSCredentials
	for _, secret := range []string{c.SecretAccessKey, c.SessionToken} {
		if strings.Contains(s, secret) {
			t.Fatalf("a credential is in the %s:\n%s", what, s)
		}
	}
	for _, a := range b.fake.Authorizations() {
		if _, sig, ok := strings.Cut(a, "Signature="); ok && strings.Contains(s, sig) {
			t.Fatalf("a request signature is in the %s:\n%s", what, s)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Options{Region: "us-west-2", ClusterID: "cluster-jxhlf7644ne"}
	for _, c := range []struct {
		name    string
		mod     func(*Options)
		wantErr string // "" = valid
	}{
		{"ok seed block", func(*Options) {}, ""},
		{"ok gov region and https endpoint", func(o *Options) {
			o.Region, o.Endpoint = "us-gov-west-1", "https://vpce-1234.cloudhsmv2.us-gov-west-1.vpce.amazonaws.com"
		}, ""},
		{"ok interval", func(o *Options) { o.Interval = 5 * time.Minute }, ""},
		{"fail no region", func(o *Options) { o.Region = "" }, "providers.x.config.region: required"},
		{"fail no cluster id", func(o *Options) { o.ClusterID = "" }, "providers.x.config.cluster_id: required"},
		{"fail bad region", func(o *Options) { o.Region = "Oregon" }, "providers.x.config.region: \"Oregon\""},
		{"ok seed example cluster id", func(o *Options) { o.ClusterID = "cluster-123456789abcdef0" }, ""},
		{"fail bad cluster id", func(o *Options) { o.ClusterID = "hsm-jxhlf7644ne" }, "providers.x.config.cluster_id: \"hsm-jxhlf7644ne\""},
		{"fail cluster id with a path", func(o *Options) { o.ClusterID = "cluster-abc/../x" }, "providers.x.config.cluster_id"},
		{"fail interval too short", func(o *Options) { o.Interval = 100 * time.Millisecond }, "providers.x.config.cluster_poll_interval"},
		{"fail interval too long", func(o *Options) { o.Interval = 48 * time.Hour }, "providers.x.config.cluster_poll_interval"},
		{"fail endpoint not a url", func(o *Options) { o.Endpoint = "cloudhsmv2.internal" }, "providers.x.config.cloudhsm_endpoint"},
		{"fail endpoint ftp", func(o *Options) { o.Endpoint = "ftp://x" }, "providers.x.config.cloudhsm_endpoint"},
		{"fail endpoint with password", func(o *Options) { o.Endpoint = "https://u:p@x" }, "providers.x.config.cloudhsm_endpoint: must not carry"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := ok
			c.mod(&o)
			err := o.Validate("providers.x.config")
			if c.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), c.wantErr) {
				t.Fatalf("err %v, want one starting %q", err, c.wantErr)
			}
		})
	}
}

// The degraded rule: fewer than two ACTIVE HSMs, or all in one zone, or a
// cluster that is not ACTIVE, is a risk named for people.
func TestPollAssessesTheCluster(t *testing.T) {
	b := newBed(t)
	creating := hsmB
	creating.State = "CREATE_IN_PROGRESS"
	for _, c := range []struct {
		name         string
		hsms         []testbed.FakeHSM
		clusterState string
		wantRisk     string // "" = none
	}{
		{"healthy two HSMs in two zones", []testbed.FakeHSM{hsmA, hsmB}, "ACTIVE", ""},
		{"healthy three HSMs in two zones", []testbed.FakeHSM{hsmA, hsmB, hsmC}, "ACTIVE", ""},
		{"degraded one HSM", []testbed.FakeHSM{hsmA}, "ACTIVE", "only one HSM is ACTIVE (in us-west-2a)"},
		{"degraded one ACTIVE beside one being created", []testbed.FakeHSM{hsmA, creating}, "ACTIVE", "only one HSM is ACTIVE"},
		{"degraded two HSMs in one zone", []testbed.FakeHSM{hsmA, hsmC}, "ACTIVE", "all 2 ACTIVE HSMs are in one availability zone (us-west-2a)"},
		{"degraded no HSM", nil, "ACTIVE", "no HSM of the cluster is ACTIVE"},
		{"degraded cluster not ACTIVE", []testbed.FakeHSM{hsmA, hsmB}, "UPDATE_IN_PROGRESS", "the cluster is UPDATE_IN_PROGRESS"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b.fake.SetHSMs(c.hsms...)
			b.fake.SetClusterState(c.clusterState)
			st := b.poller(t, nil).Poll(context.Background())
			if st.ErrorCode != "" || st.DescribedAt.IsZero() || st.CheckedAt != st.DescribedAt {
				t.Fatalf("describe failed: %+v", st)
			}
			if st.ID != testCluster || st.Region != testRegion || st.State != c.clusterState || st.HSMType != "hsm2m.medium" || len(st.HSMs) != len(c.hsms) {
				t.Fatalf("status %+v", st)
			}
			for i, h := range c.hsms {
				if got := st.HSMs[i]; got != (provider.ClusterHSM{ID: h.ID, AvailabilityZone: h.Zone, State: h.State, ENIIP: h.IP}) {
					t.Errorf("HSM %d: %+v, want %+v", i, got, h)
				}
			}
			active := 0
			for _, h := range c.hsms {
				if h.State == "ACTIVE" {
					active++
				}
			}
			if st.HSMCounts["ACTIVE"] != active || len(st.HSMCounts) < 5 {
				t.Errorf("counts %v, want ACTIVE %d and every state listed", st.HSMCounts, active)
			}
			switch {
			case c.wantRisk == "" && len(st.Risks) != 0:
				t.Fatalf("risks %q, want none", st.Risks)
			case c.wantRisk != "" && (len(st.Risks) == 0 || !strings.Contains(strings.Join(st.Risks, "; "), c.wantRisk)):
				t.Fatalf("risks %q, want one naming %q", st.Risks, c.wantRisk)
			}
		})
	}
	calls, bad := b.fake.Calls()
	if calls == 0 || bad != 0 {
		t.Fatalf("%d calls, %d with a bad signature", calls, bad)
	}
}

// A failing management API shows as the status's error, with its age; the
// HSMs of the last good describe stay; the credentials and signatures
// reach no log line and no error.
func TestPollErrors(t *testing.T) {
	b := newBed(t)
	b.fake.SetHSMs(hsmA, hsmB)
	p := b.poller(t, func(o *Options) { o.Timeout = 5 * time.Second })
	if st := p.Poll(context.Background()); st.ErrorCode != "" || len(st.HSMs) != 2 {
		t.Fatalf("first describe: %+v", st)
	}
	good := p.Status().DescribedAt
	var since time.Time
	for _, c := range []struct {
		name     string
		fail     func()
		wantCode string
		wantText string
	}{
		{"403 access denied", func() {
			b.fake.Fail(http.StatusForbidden, "AccessDeniedException",
				"User: arn:aws:sts::123456789012:assumed-role/keygrid/i-0abc is not authorized to perform: cloudhsm:DescribeClusters")
		}, "AccessDeniedException", "may not call cloudhsm:DescribeClusters on cluster " + testCluster},
		{"throttled", func() { b.fake.Fail(http.StatusBadRequest, "ThrottlingException", "Rate exceeded") }, "ThrottlingException", "throttled"},
		{"timeout", func() { b.fake.Hang(time.Minute) }, "timeout", "did not answer within 5s"},
		{"internal failure", func() {
			b.fake.Fail(http.StatusInternalServerError, "CloudHsmInternalFailureException", "internal")
		}, "CloudHsmInternalFailureException", "HTTP 500"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b.fake.Recover()
			c.fail()
			st := p.Poll(context.Background())
			if st.ErrorCode != c.wantCode || !strings.Contains(st.Error, c.wantText) {
				t.Fatalf("error %q %q, want %s naming %q", st.ErrorCode, st.Error, c.wantCode, c.wantText)
			}
			if strings.Contains(st.Error, "arn:aws") || strings.Contains(st.Error, "Rate exceeded") {
				t.Fatalf("the API's own message is in the error: %q", st.Error)
			}
			// The failures are one run: ErrorSince is the first's time.
			if since.IsZero() {
				since = st.ErrorSince
			}
			if st.ErrorSince.IsZero() || !st.ErrorSince.Equal(since) || !st.CheckedAt.After(good) {
				t.Fatalf("error since %v (first %v), checked %v", st.ErrorSince, since, st.CheckedAt)
			}
			if !st.DescribedAt.Equal(good) || len(st.HSMs) != 2 || len(st.Risks) != 0 {
				t.Fatalf("the last good view was lost: %+v", st)
			}
		})
	}
	b.fake.Recover()
	st := p.Poll(context.Background())
	if st.ErrorCode != "" || st.Error != "" || !st.ErrorSince.IsZero() || !st.DescribedAt.After(good) || st.Failures != 4 {
		t.Fatalf("after recovery: %+v", st)
	}
	if _, bad := b.fake.Calls(); bad != 0 {
		t.Fatalf("%d requests with a bad signature", bad)
	}
	b.noSecrets(t, "log", b.logs.String())
}

// Errors before any good describe: unreachable, a cluster that is not
// there, credentials the API refuses (AWS's message quotes the canonical
// request with the security token), no credentials at all.
func TestPollErrorsWithoutCluster(t *testing.T) {
	b := newBed(t)
	b.fake.SetHSMs(hsmA, hsmB)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	for _, c := range []struct {
		name     string
		mod      func(*Options)
		env      map[string]string
		wantCode string
		wantText string
	}{
		{"unreachable", func(o *Options) { o.Endpoint = closed.URL }, nil, "unreachable", "connection refused"},
		{"cluster not found", func(o *Options) { o.ClusterID = "cluster-other234567ab" }, nil, "cluster_not_found", "no cluster cluster-other234567ab in us-west-2"},
		{"wrong secret", nil, map[string]string{"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "InvalidSignatureException", "refused the credentials"},
		{"no credentials", nil, map[string]string{"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": ""}, "no_credentials", "use_instance_role"},
		{"missing profile", nil, map[string]string{"AWS_PROFILE": "nope"}, "aws_config", `"nope"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			st := b.poller(t, c.mod).Poll(context.Background())
			if st.ErrorCode != c.wantCode || !strings.Contains(st.Error, c.wantText) {
				t.Fatalf("error %q %q, want %s naming %q", st.ErrorCode, st.Error, c.wantCode, c.wantText)
			}
			if !st.DescribedAt.IsZero() || st.HSMCounts != nil || len(st.HSMs) != 0 || len(st.Risks) != 0 || st.Failures != 1 || st.ErrorSince.IsZero() {
				t.Fatalf("status %+v", st)
			}
			b.noSecrets(t, "error", st.Error)
		})
	}
	if _, bad := b.fake.Calls(); bad != 1 {
		t.Fatalf("%d requests with a bad signature, want 1 (the wrong secret)", bad)
	}
	b.noSecrets(t, "log", b.logs.String())
}

// A change in the number of HSMs (or of ACTIVE ones) is one event; a
// describe that finds the same cluster is none, and so is the first.
func TestHSMCountChangeIsOneEvent(t *testing.T) {
	b := newBed(t)
	p := b.poller(t, nil)
	degradedB := hsmB
	degradedB.State = "DEGRADED"
	for i, step := range []struct {
		hsms       []testbed.FakeHSM
		wantEvents int
	}{
		{[]testbed.FakeHSM{hsmA, hsmB}, 0},
		{[]testbed.FakeHSM{hsmA, hsmB}, 0},
		{[]testbed.FakeHSM{hsmA}, 1},
		{[]testbed.FakeHSM{hsmA}, 1},
		{[]testbed.FakeHSM{hsmA, hsmB}, 2},
		{[]testbed.FakeHSM{hsmA, degradedB}, 3}, // same count, one fewer ACTIVE
	} {
		b.fake.SetHSMs(step.hsms...)
		if st := p.Poll(context.Background()); st.ErrorCode != "" {
			t.Fatalf("step %d: %s", i, st.Error)
		}
		if n := len(b.eventList()); n != step.wantEvents {
			t.Fatalf("step %d: %d events, want %d", i, n, step.wantEvents)
		}
	}
	ev := b.eventList()
	if ev[0].Kind != EventHSMsChanged || ev[0].Err != nil || ev[0].Time.IsZero() ||
		ev[0].Detail != testCluster+": 1 HSM(s), 1 ACTIVE in 1 availability zone(s) (us-west-2a), was 2 HSM(s), 2 ACTIVE in 2 availability zone(s) (us-west-2a, us-west-2b)" {
		t.Fatalf("event %+v", ev[0])
	}
	if !strings.Contains(ev[2].Detail, "2 HSM(s), 1 ACTIVE") {
		t.Fatalf("event %+v", ev[2])
	}
}

// Start describes at once and then every interval; Close abandons a
// describe in flight at once and does not record it.
func TestStartAndClose(t *testing.T) {
	b := newBed(t)
	b.fake.SetHSMs(hsmA, hsmB)
	p := b.poller(t, func(o *Options) { o.Interval = time.Second })
	p.Start()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if calls, _ := b.fake.Calls(); calls >= 2 && !p.Status().DescribedAt.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the poller did not describe twice within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.fake.Hang(time.Minute)
	before, _ := b.fake.Calls()
	for calls, _ := b.fake.Calls(); calls == before; calls, _ = b.fake.Calls() {
		if time.Now().After(deadline) {
			t.Fatal("no describe while the API hangs")
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	p.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Close took %s with a describe hanging", d)
	}
	if st := p.Status(); st.ErrorCode != "" || st.Failures != 0 {
		t.Fatalf("the abandoned describe was recorded: %+v", st)
	}
}

// Why the API's messages are never quoted: AWS's answer to a bad signature
// carries the canonical request, the security token in it, and the SDK's
// error text repeats it.
func TestAPIMessageCarriesTheToken(t *testing.T) {
	b := newBed(t)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
	o := Options{Region: testRegion, ClusterID: testCluster, Endpoint: b.fake.URL}
	c, err := newClient(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	_, err = describe(context.Background(), c, testCluster)
	if err == nil || !strings.Contains(err.Error(), testbed.TestAWSCredentials.SessionToken) {
		t.Fatalf("the SDK's error does not quote the token (the premise of the scrubbing): %v", err)
	}
	code, msg, _ := describeError(err, o)
	if code != "InvalidSignatureException" {
		t.Fatalf("code %q", code)
	}
	b.noSecrets(t, "error", msg)
}
