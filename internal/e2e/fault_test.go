package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// The fault bed: SoftHSM2 behind `p11-kit server`, the gateway loading
// p11-kit-client.so as it would load CloudHSM's library. Killing the server
// cuts the gateway off from its HSM; starting it again brings it back.
//
// What p11-kit-client.so answers (observed): while the server is down,
// every call on an existing session and C_OpenSession return
// CKR_DEVICE_ERROR, C_GetSlotList returns CKR_DEVICE_ERROR, then (after
// C_Finalize + C_Initialize, which succeed) an empty list; once the server
// is back, only a new C_Finalize + C_Initialize makes the slot appear again.

const (
	faultOpTimeout     = 2 * time.Second
	faultHealthEvery   = 500 * time.Millisecond
	faultRecoverWithin = 10 * time.Second
)

type faultBed struct {
	soft *testbed.SoftHSM
	p11  *testbed.P11KitServer
	g    *gateway
}

func newFaultBed(t *testing.T) *faultBed {
	t.Helper()
	testbed.Require(t, "p11-kit", "softhsm2-util", "pkcs11-tool", testbed.SoftHSMModule)
	client := testbed.P11KitClientModule()
	if client == "" {
		testbed.Require(t, "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so")
	}
	// A short directory: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "kgfault")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	soft, err := testbed.NewSoftHSM(dir, "keygrid-fault", hsmPIN)
	if err != nil {
		t.Fatal(err)
	}
	srv := testbed.NewP11KitServer(soft, dir)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	os.Setenv("P11_KIT_SERVER_ADDRESS", srv.Address())
	yaml := "default_provider: hsm\n" + testbed.Providers(
		testbed.PKCS11Provider{Library: client, TokenLabel: "keygrid-fault", PinEnv: "KEYGRID_E2E_PIN", MaxSessions: 4, Settings: []string{
			"operation_timeout: " + faultOpTimeout.String(),
			"# isolation: process (the default) and no serialize_calls: p11-kit's",
			"# client (0.24) can leave a thread inside a call forever when its",
			"# server dies under concurrent calls; the host holding it is replaced.",
		}},
		testbed.SoftwareProvider{MasterKeyEnv: "KEYGRID_E2E_MASTER_KEY"},
	) + fmt.Sprintf(`health:
  interval: %s
  timeout: 1s
reconcile:
  grace: 1ms
  interval: 1h
`, faultHealthEvery)
	return &faultBed{soft: soft, p11: srv, g: startGateway(t, yaml, "")}
}

func (b *faultBed) stats(t *testing.T) provider.Stats {
	p, _ := b.g.srv.Service().Provider("hsm")
	return p.(provider.StatsReporter).Stats()
}

// signResult is one sign request seen by a load client.
type signResult struct {
	start, end time.Time
	status     int
	code       apitypes.ErrorCode
	retryAfter string
	sig        []byte
	data       []byte
}

// signLoad runs n clients signing in a loop until stop is closed (or the
// test ends).
func signLoad(t *testing.T, url, key string, n int, stop <-chan struct{}) <-chan []signResult {
	out := make(chan []signResult, 1)
	ended := make(chan struct{})
	t.Cleanup(func() { close(ended) })
	go func() {
		var mu sync.Mutex
		var all []signResult
		var wg sync.WaitGroup
		hc := &http.Client{Timeout: 30 * time.Second}
		for c := 0; c < n; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-ended:
						return
					default:
					}
					data := []byte(fmt.Sprintf("client %d request %d", c, i))
					body, _ := json.Marshal(apitypes.SignRequest{Data: data})
					r := signResult{start: time.Now(), data: data}
					req, _ := http.NewRequest(http.MethodPost, url+"/api/v1/keys/"+key+"/sign", bytes.NewReader(body))
					authorize(req, url)
					resp, err := hc.Do(req)
					r.end = time.Now()
					if err != nil {
						r.status = -1
					} else {
						r.status, r.retryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
						if resp.StatusCode == http.StatusOK {
							var s apitypes.SignResponse
							json.NewDecoder(resp.Body).Decode(&s)
							r.sig = s.Signature
						} else {
							var e apitypes.ErrorBody
							json.NewDecoder(resp.Body).Decode(&e)
							r.code = e.Error.Code
							time.Sleep(20 * time.Millisecond) // a client backing off
						}
						resp.Body.Close()
					}
					mu.Lock()
					all = append(all, r)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		out <- all
	}()
	return out
}

func ecPublicKey(t *testing.T, pemText string) *ecdsa.PublicKey {
	t.Helper()
	b, _ := pem.Decode([]byte(pemText))
	pub, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return pub.(*ecdsa.PublicKey)
}

// checkSignatures fails on any returned signature that does not verify.
func checkSignatures(t *testing.T, pub *ecdsa.PublicKey, rs []signResult) int {
	t.Helper()
	ok := 0
	for _, r := range rs {
		if r.status != http.StatusOK {
			continue
		}
		d := sha256.Sum256(r.data)
		if !ecdsa.VerifyASN1(pub, d[:], r.sig) {
			t.Fatalf("a signature returned with 200 does not verify (request at %s)", r.start.Format(time.StampMicro))
		}
		ok++
	}
	return ok
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

func readyStatus(url string) int {
	resp, err := http.Get(url + "/ready")
	if err != nil {
		return -1
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Kill the HSM's network while 8 clients sign: new requests fail fast with
// 503 SERVICE_UNAVAILABLE and Retry-After, none outlives its deadline by
// more than a second, /ready turns 503 within a health interval, the
// software provider keeps serving. Bring it back: signing resumes within
// 10 s with the same keys, /ready is 200 again.
func TestHSMOutageAndRecovery(t *testing.T) {
	testbed.ProcessSoftHSM(t)
	b := newFaultBed(t)
	ctx := context.Background()
	g := b.g
	if _, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "fault-ec", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Provider: "software", Name: "soft-ec", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}}); err != nil {
		t.Fatal(err)
	}
	pk, _ := g.C.PublicKey(ctx, "fault-ec", 0)
	pub := ecPublicKey(t, pk.PublicKey)

	stop := make(chan struct{})
	results := signLoad(t, g.URL, "fault-ec", 8, stop)
	time.Sleep(400 * time.Millisecond)

	killed := time.Now()
	if err := b.p11.Stop(); err != nil {
		t.Fatal(err)
	}
	readyAfter := waitFor(t, faultHealthEvery+2*time.Second, "/ready turns 503", func() bool { return readyStatus(g.URL) == http.StatusServiceUnavailable })
	t.Logf("/ready turned 503 %s after the kill", readyAfter.Round(time.Millisecond))
	if _, err := g.C.Sign(ctx, "soft-ec", apitypes.SignRequest{Data: []byte("software still serves")}); err != nil {
		t.Fatalf("the software provider must keep serving during the HSM outage: %v", err)
	}
	if _, err := g.C.Sign(ctx, "fault-ec", apitypes.SignRequest{Data: []byte("x")}); !errors.Is(err, client.ErrServiceUnavailable) {
		t.Fatalf("sign during the outage: %v, want SERVICE_UNAVAILABLE", err)
	}
	time.Sleep(2500 * time.Millisecond)

	restarted := time.Now()
	if err := b.p11.Start(); err != nil {
		t.Fatal(err)
	}
	back := waitFor(t, faultRecoverWithin, "signing succeeds again", func() bool {
		_, err := g.C.Sign(ctx, "fault-ec", apitypes.SignRequest{Data: []byte("back")})
		return err == nil
	})
	t.Logf("signing resumed %s after the HSM came back", back.Round(time.Millisecond))
	waitFor(t, faultHealthEvery+2*time.Second, "/ready is 200 again", func() bool { return readyStatus(g.URL) == http.StatusOK })
	time.Sleep(300 * time.Millisecond)
	close(stop)
	rs := <-results

	pk2, err := g.C.PublicKey(ctx, "fault-ec", 0)
	if err != nil || pk2.PublicKey != pk.PublicKey {
		t.Fatalf("public key after recovery differs: %v", err)
	}
	// The outage and the reset are in the audit log, and the chain holds.
	logBytes, err := os.ReadFile(filepath.Join(g.DataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{`"operation":"provider_unavailable"`, `"operation":"provider_reset"`} {
		if !bytes.Contains(logBytes, []byte(op)) {
			t.Errorf("the audit log has no %s record", op)
		}
	}
	if _, _, err := audit.Verify(bytes.NewReader(logBytes), ""); err != nil {
		t.Errorf("audit chain after the outage: %v", err)
	}
	var during, failFast, late int
	for _, r := range rs {
		if d := r.end.Sub(r.start); d > faultOpTimeout+time.Second {
			t.Errorf("a request took %s (deadline %s + 1s)", d.Round(time.Millisecond), faultOpTimeout)
		}
		if r.start.After(killed.Add(2*time.Second)) && r.end.Before(restarted) {
			during++
			if r.status != http.StatusServiceUnavailable || r.code != apitypes.CodeServiceUnavailable || r.retryAfter == "" {
				t.Errorf("request during the outage: status %d code %s Retry-After %q, want 503 SERVICE_UNAVAILABLE with Retry-After",
					r.status, r.code, r.retryAfter)
			} else if r.end.Sub(r.start) < 100*time.Millisecond {
				failFast++
			}
		}
		if r.start.After(restarted.Add(back)) && r.status == http.StatusOK {
			late++
		}
	}
	ok := checkSignatures(t, pub, rs)
	t.Logf("%d requests: %d signed, %d during the outage (%d answered in under 100 ms), %d signed after recovery", len(rs), ok, during, failFast, late)
	if during == 0 || late == 0 {
		t.Fatalf("the load did not span the outage (%d during, %d after)", during, late)
	}
}

// burnCPU runs n processes that spin until the test ends: recovery must
// hold on a busy machine.
func burnCPU(t *testing.T, n int) {
	for i := 0; i < n; i++ {
		cmd := exec.Command("sh", "-c", "while :; do :; done")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
}

// Twenty outages in a row under 8 signers, with p11-kit's client running
// unserialized and two CPU-burning processes beside the test: recovery
// within 10 s every time, no goroutine or session leak, no signature that
// fails verification.
func TestRepeatedOutagesLeakNothing(t *testing.T) {
	testbed.ProcessSoftHSM(t)
	b := newFaultBed(t)
	burnCPU(t, 2)
	ctx := context.Background()
	g := b.g
	if _, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "repeat-ec", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}}); err != nil {
		t.Fatal(err)
	}
	pk, _ := g.C.PublicKey(ctx, "repeat-ec", 0)
	pub := ecPublicKey(t, pk.PublicKey)
	// Warm up: pool filled, keep-alive connections open.
	warm := make(chan struct{})
	wr := signLoad(t, g.URL, "repeat-ec", 8, warm)
	time.Sleep(300 * time.Millisecond)
	close(warm)
	checkSignatures(t, pub, <-wr)
	http.DefaultClient.CloseIdleConnections()
	time.Sleep(200 * time.Millisecond)
	goroutinesBefore := runtime.NumGoroutine()
	before := b.stats(t)

	var total atomic.Int64
	const cycles = 20
	for cycle := 1; cycle <= cycles; cycle++ {
		stop := make(chan struct{})
		results := signLoad(t, g.URL, "repeat-ec", 8, stop)
		time.Sleep(200 * time.Millisecond)
		if err := b.p11.Stop(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 3*time.Second, fmt.Sprintf("cycle %d: requests fail with 503", cycle), func() bool {
			_, err := g.C.Sign(ctx, "repeat-ec", apitypes.SignRequest{Data: []byte("x")})
			return errors.Is(err, client.ErrServiceUnavailable)
		})
		time.Sleep(300 * time.Millisecond)
		if err := b.p11.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, faultRecoverWithin, fmt.Sprintf("cycle %d: recovery", cycle), func() bool {
			_, err := g.C.Sign(ctx, "repeat-ec", apitypes.SignRequest{Data: []byte("back")})
			return err == nil
		})
		time.Sleep(200 * time.Millisecond)
		close(stop)
		total.Add(int64(checkSignatures(t, pub, <-results)))
	}
	after := b.stats(t)
	if after.Resets < before.Resets+cycles {
		t.Errorf("%d resets for %d outages", after.Resets-before.Resets, cycles)
	}
	// Quiet again: every session back in the pool, none open beyond the
	// pool's cap and the login session.
	waitFor(t, 3*time.Second, "sessions return to the pool", func() bool { return b.stats(t).SessionsInUse == 0 })
	st := b.stats(t)
	if st.SessionsOpen > st.SessionsMax+1 || st.SessionsOpen != st.SessionsIdle+1 || !st.Up {
		t.Errorf("sessions after the outages: open %d, idle %d, max %d, up %v (want open = idle + 1 login session <= max + 1)",
			st.SessionsOpen, st.SessionsIdle, st.SessionsMax, st.Up)
	}
	http.DefaultClient.CloseIdleConnections()
	var goroutinesAfter int
	waitFor(t, 5*time.Second, "goroutines settle", func() bool {
		goroutinesAfter = runtime.NumGoroutine()
		return goroutinesAfter <= goroutinesBefore+4
	})
	t.Logf("%d outages: %d valid signatures; resets %d; goroutines %d → %d; sessions open %d (idle %d, max %d)",
		cycles, total.Load(), after.Resets-before.Resets, goroutinesBefore, goroutinesAfter, st.SessionsOpen, st.SessionsIdle, st.SessionsMax)
}

// Creates interrupted by the outage either complete or leave nothing: after
// recovery and reconciliation, every key in the store has its objects on the
// token and every gateway object on the token belongs to a key.
func TestCreatesDuringOutageLeaveStoreAndTokenConsistent(t *testing.T) {
	testbed.ProcessSoftHSM(t)
	b := newFaultBed(t)
	ctx := context.Background()
	g := b.g

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var created, failed atomic.Int64
	for c := 0; c < 4; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: fmt.Sprintf("ft-%d-%d", c, i),
					KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}})
				if err != nil {
					failed.Add(1)
					time.Sleep(50 * time.Millisecond)
				} else {
					created.Add(1)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	b.p11.Stop()
	// Longer than a create waits for recovery (the operation timeout), so
	// creates in flight cannot all wait the outage out.
	time.Sleep(faultOpTimeout + 1500*time.Millisecond)
	b.p11.Start()
	waitFor(t, faultRecoverWithin, "creates succeed again", func() bool {
		before := created.Load()
		time.Sleep(200 * time.Millisecond)
		return created.Load() > before
	})
	close(stop)
	wg.Wait()
	// Under load the health checker may still be resetting the provider
	// when the creates resume: the reconciler then answers
	// SERVICE_UNAVAILABLE for the keys it reaches. Once the HSM is back it
	// must run through; any other error fails at once.
	waitFor(t, faultRecoverWithin, "the reconciler runs through", func() bool {
		err := g.srv.Service().Reconcile(ctx)
		if err != nil && !errors.Is(err, kgerr.ErrServiceUnavailable) {
			t.Fatal(err)
		}
		if err != nil {
			t.Logf("reconcile while the provider recovers: %v", err)
		}
		return err == nil
	})

	keys := map[string]string{} // CKA_ID hex → key name
	token := ""
	for {
		l, err := g.C.ListKeys(ctx, client.ListOptions{Provider: "hsm", Limit: 1000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range l.Keys {
			if k.State != "active" {
				t.Errorf("key %s is %s after reconciliation", k.Name, k.State)
				continue
			}
			keys[idOf(t, &k)] = k.Name
		}
		if token = l.NextPageToken; token == "" {
			break
		}
	}
	out, err := b.soft.Tool("--list-objects").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	objects := map[string]int{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "ID:" {
			objects[f[1]]++
		}
	}
	for id, name := range keys {
		if objects[id] != 2 {
			t.Errorf("key %s has %d token objects, want 2", name, objects[id])
		}
	}
	// The audit signing key (made at start) has its record among the
	// audit keys, not the keys.
	if cs, ok := store.Checkpoints(g.srv.Store()); ok {
		aks, err := cs.AuditKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range aks {
			delete(objects, k.ObjectID)
		}
	}
	for id, n := range objects {
		if _, ok := keys[id]; !ok {
			t.Errorf("orphan: %d token objects with CKA_ID %s and no key record", n, id)
		}
	}
	t.Logf("%d creates succeeded, %d failed during the outage; %d keys, %d object ids on the token", created.Load(), failed.Load(), len(keys), len(objects))
	if failed.Load() == 0 {
		t.Fatal("no create met the outage")
	}
}

// kill -9 of the module's host process under 8 signers: a new host within
// 10 s and signing with it, every answer a valid signature or 503
// SERVICE_UNAVAILABLE, the software provider serving, the restart in the
// audit log.
func TestModuleHostKilledUnderLoad(t *testing.T) {
	testbed.ProcessSoftHSM(t)
	b := newFaultBed(t)
	ctx := context.Background()
	g := b.g
	for _, p := range []string{"", "software"} {
		if _, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Provider: p, Name: "kill-ec-" + p, KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}}); err != nil {
			t.Fatal(err)
		}
	}
	pk, _ := g.C.PublicKey(ctx, "kill-ec-", 0)
	pub := ecPublicKey(t, pk.PublicKey)
	stop := make(chan struct{})
	results := signLoad(t, g.URL, "kill-ec-", 8, stop)
	time.Sleep(300 * time.Millisecond)
	pid, _ := b.stats(t).Info["module_host_pid"].(int)
	if pid == 0 {
		t.Fatal("the provider has no module host (isolation: process is the default)")
	}
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, faultRecoverWithin, "a new module host", func() bool {
		now, _ := b.stats(t).Info["module_host_pid"].(int)
		return now != 0 && now != pid
	})
	waitFor(t, faultRecoverWithin-time.Since(killed), "signing on the new host", func() bool {
		_, err := g.C.Sign(ctx, "kill-ec-", apitypes.SignRequest{Data: []byte("back")})
		return err == nil
	})
	t.Logf("signing back %s after the kill", time.Since(killed).Round(time.Millisecond))
	if _, err := g.C.Sign(ctx, "kill-ec-software", apitypes.SignRequest{Data: []byte("software")}); err != nil {
		t.Fatalf("the software provider: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	rs := <-results
	for _, r := range rs {
		if r.status != http.StatusOK && (r.status != http.StatusServiceUnavailable || r.code != apitypes.CodeServiceUnavailable) {
			t.Errorf("a sign answered %d %s; want 200 or 503 SERVICE_UNAVAILABLE", r.status, r.code)
		}
	}
	t.Logf("%d requests, %d valid signatures", len(rs), checkSignatures(t, pub, rs))
	logBytes, err := os.ReadFile(filepath.Join(g.DataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(logBytes, []byte(`"operation":"provider_module_host_restarted"`)) {
		t.Error("the audit log has no provider_module_host_restarted record")
	}
	req, _ := http.NewRequest(http.MethodGet, g.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+g.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	metrics, _ := io.ReadAll(resp.Body)
	if !regexp.MustCompile(`(?m)^keygrid_provider_module_host_restarts_total\{provider="hsm"\} [1-9]`).Match(metrics) {
		t.Errorf("/metrics has no host restart of provider hsm:\n%s", metrics)
	}
}
