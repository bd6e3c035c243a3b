package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/provider/pkcs11"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

type options struct {
	duration, warmup time.Duration
	concurrency      int
	scaleKeys        int
	out              string
	// The sweep (sweep.go).
	sweep                      []int
	sweepDuration, sweepWarmup time.Duration
	compare                    string
	sweepOnly                  bool
}

// Row is one line of the table.
type Row struct {
	Provider    string  `json:"provider"`
	Algorithm   string  `json:"algorithm"`
	Payload     int     `json:"payload_bytes"`
	Concurrency int     `json:"concurrency"`
	Raw         Result  `json:"raw"`
	InProc      Result  `json:"inproc"`
	HTTP        Result  `json:"http"`
	InProcRatio float64 `json:"inproc_over_raw"`
	HTTPRatio   float64 `json:"http_over_raw"`
	// HTTPBatched is the HTTP API with audit.fsync_interval 10ms: the
	// audit records are written before each response and fsynced every
	// 10 ms, which shows the gateway's cost apart from the disk's fsync.
	HTTPBatched      Result  `json:"http_audit_fsync_10ms"`
	HTTPBatchedRatio float64 `json:"http_audit_fsync_10ms_over_raw"`
	// InProcBatched is the in-process service with the same setting.
	InProcBatched      Result  `json:"inproc_audit_fsync_10ms"`
	InProcBatchedRatio float64 `json:"inproc_audit_fsync_10ms_over_raw"`
}

// Report is the JSON the run writes.
type Report struct {
	Time            time.Time `json:"time"`
	Machine         string    `json:"machine"`
	Duration        string    `json:"duration_per_measurement"`
	Rows            []Row     `json:"rows"`
	AddedLatencyP50 float64   `json:"added_latency_p50_us_es256_c1"`
	// AddedLatencyP50Batched is the same with audit.fsync_interval 10ms.
	AddedLatencyP50Batched float64 `json:"added_latency_p50_us_es256_c1_audit_fsync_10ms"`
	LatencyC1              Row     `json:"latency_c1_es256"`
	Scale                  *Scale  `json:"key_count_scaling,omitempty"`
	Sweep                  *Sweep  `json:"sweep,omitempty"`
	TotalSeconds           float64 `json:"total_seconds"`

	// HSM is the HSM-path section (bench/hsm.go).
	HSM *HSMReport `json:"hsm_path,omitempty"`
}

// Scale is the key-count row: ES256 through the HTTP API with few and with
// many keys on the token.
type Scale struct {
	FewKeys  int     `json:"few_keys"`
	ManyKeys int     `json:"many_keys"`
	Few      Result  `json:"few"`
	Many     Result  `json:"many"`
	Ratio    float64 `json:"many_over_few"`
	FillSecs float64 `json:"fill_seconds"`
	// RawFew and RawMany are the raw PKCS#11 loop on the same key: what
	// the token itself loses with more objects.
	RawFew   Result  `json:"raw_few"`
	RawMany  Result  `json:"raw_many"`
	RawRatio float64 `json:"raw_many_over_few"`
}

type bed struct {
	o       options
	dir     string
	gateway string // keygrid-hsm binary
	self    string // this binary
	soft    *testbed.SoftHSM
	cfg     string
	data    string
	url     string
	token   string
	srv     *exec.Cmd
	env     []string
	// auditFsync is the server's audit.fsync_interval ("" for the default).
	auditFsync string
}

const benchPIN = "bench-pin-1234"

func run(ctx context.Context, o options) error {
	start := time.Now()
	if m := testbed.Missing("softhsm2-util", testbed.SoftHSMModule); m != "" && !o.sweepOnly {
		return fmt.Errorf("%s is missing (run scripts/test-deps.sh)", m)
	}
	dir, err := os.MkdirTemp("", "keygrid-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b := &bed{o: o, dir: dir, gateway: filepath.Join(dir, "keygrid-hsm"), data: filepath.Join(dir, "data")}
	if b.self, err = os.Executable(); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "bench: building keygrid-hsm")
	if out, err := exec.Command("go", "build", "-o", b.gateway, "./cmd/keygrid-hsm").CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	if o.sweepOnly {
		b.env = append(os.Environ(), "BENCH_MASTER_KEY="+strings.Repeat("5a", 32))
		rep := Report{Time: time.Now().UTC(), Machine: machine(), Duration: o.duration.String()}
		if rep.Sweep, err = b.runSweep(ctx); err != nil {
			return err
		}
		rep.TotalSeconds = time.Since(start).Seconds()
		return writeReport(rep, o.out)
	}
	if b.soft, err = testbed.NewSoftHSM(dir, "keygrid-bench", benchPIN); err != nil {
		return err
	}
	b.env = append(b.soft.Env(), "BENCH_PIN="+benchPIN, "BENCH_MASTER_KEY="+strings.Repeat("5a", 32))
	if err := b.startServer(); err != nil {
		return err
	}
	defer b.stopServer()

	c, _ := client.New(b.url, client.WithToken(b.token))
	type keyDef struct {
		name string
		spec apitypes.KeySpec
	}
	var rows []Row
	for _, prov := range []string{"hsm", "software"} {
		keys := map[string]keyDef{
			"rsa":     {prov + "-rsa", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048, Usage: []string{"sign", "verify"}}},
			"ec":      {prov + "-ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}},
			"ed25519": {prov + "-ed25519", apitypes.KeySpec{KeyType: "Ed25519"}},
			"aes":     {prov + "-aes", apitypes.KeySpec{KeyType: "AES", KeySize: 256, Usage: []string{"encrypt", "decrypt"}}},
		}
		ids := map[string]string{}
		for k, d := range keys {
			key, err := c.CreateKey(ctx, apitypes.CreateKeyRequest{Provider: prov, Name: d.name, KeySpec: d.spec})
			if err != nil {
				return fmt.Errorf("create %s: %w", d.name, err)
			}
			if prov == "hsm" {
				u, err := pkcs11.ParseURI(key.Versions[0].ProviderRef)
				if err != nil {
					return err
				}
				ids[k] = hex.EncodeToString(u.ID)
			}
		}
		for _, r := range []struct {
			key, alg string
			size     int
		}{{"rsa", "RS256", 32}, {"rsa", "PS256", 32}, {"ec", "ES256", 32}, {"ed25519", "EdDSA", 32}, {"aes", "A256GCM", 1024}} {
			row := Row{Provider: prov, Algorithm: r.alg, Payload: r.size, Concurrency: o.concurrency}
			fmt.Fprintf(os.Stderr, "bench: %s %s\n", prov, r.alg)
			if prov == "hsm" {
				row.Raw, err = b.mode("raw", o.concurrency, r.alg, r.size, "--token", b.soft.Label, "--id", ids[r.key])
			} else {
				row.Raw, err = b.mode("stdlib", o.concurrency, r.alg, r.size)
			}
			if err != nil {
				return err
			}
			if row.InProc, err = b.mode("inproc", o.concurrency, r.alg, r.size, "--config", b.cfg, "--data-dir", b.data,
				"--audit", filepath.Join(dir, "inproc-audit.log"), "--key", keys[r.key].name); err != nil {
				return err
			}
			if row.HTTP, err = b.http(o.concurrency, keys[r.key].name, r.alg, r.size); err != nil {
				return err
			}
			row.InProcRatio, row.HTTPRatio = row.InProc.OpsPerSec/row.Raw.OpsPerSec, row.HTTP.OpsPerSec/row.Raw.OpsPerSec
			rows = append(rows, row)
		}
	}
	// The same HTTP rows with the audit log fsynced every 10 ms.
	b.stopServer()
	b.auditFsync = "10ms"
	if err := b.startServer(); err != nil {
		return err
	}
	for i := range rows {
		r := &rows[i]
		fmt.Fprintf(os.Stderr, "bench: %s %s, audit fsync every 10ms\n", r.Provider, r.Algorithm)
		key := map[string]string{"RS256": "rsa", "PS256": "rsa", "ES256": "ec", "EdDSA": "ed25519", "A256GCM": "aes"}[r.Algorithm]
		if r.InProcBatched, err = b.mode("inproc", o.concurrency, r.Algorithm, r.Payload, "--config", b.cfg, "--data-dir", b.data,
			"--audit", filepath.Join(dir, "inproc-audit.log"), "--key", r.Provider+"-"+key); err != nil {
			return err
		}
		if r.HTTPBatched, err = b.http(o.concurrency, r.Provider+"-"+key, r.Algorithm, r.Payload); err != nil {
			return err
		}
		r.InProcBatchedRatio = r.InProcBatched.OpsPerSec / r.Raw.OpsPerSec
		r.HTTPBatchedRatio = r.HTTPBatched.OpsPerSec / r.Raw.OpsPerSec
	}
	fmt.Fprintln(os.Stderr, "bench: hsm ES256 at concurrency 1, audit fsync every 10ms")
	latBatched, err := b.http(1, "hsm-ec", "ES256", 32)
	if err != nil {
		return err
	}
	b.stopServer()
	b.auditFsync = ""
	if err := b.startServer(); err != nil {
		return err
	}
	rep := Report{Time: time.Now().UTC(), Machine: machine(), Duration: o.duration.String(), Rows: rows}

	// Added latency at concurrency 1: HTTP p50 − raw p50, ES256 on the HSM.
	c, _ = client.New(b.url, client.WithToken(b.token)) // the restarted server
	ec, err := c.GetKey(ctx, "hsm-ec")
	if err != nil {
		return err
	}
	u, _ := pkcs11.ParseURI(ec.Versions[0].ProviderRef)
	ecID := hex.EncodeToString(u.ID)
	lat := Row{Provider: "hsm", Algorithm: "ES256", Payload: 32, Concurrency: 1}
	fmt.Fprintln(os.Stderr, "bench: hsm ES256 at concurrency 1")
	if lat.Raw, err = b.mode("raw", 1, "ES256", 32, "--token", b.soft.Label, "--id", ecID); err != nil {
		return err
	}
	if lat.HTTP, err = b.http(1, "hsm-ec", "ES256", 32); err != nil {
		return err
	}
	lat.HTTPRatio = lat.HTTP.OpsPerSec / lat.Raw.OpsPerSec
	lat.HTTPBatched, lat.HTTPBatchedRatio = latBatched, latBatched.OpsPerSec/lat.Raw.OpsPerSec
	rep.LatencyC1, rep.AddedLatencyP50 = lat, lat.HTTP.P50us-lat.Raw.P50us
	rep.AddedLatencyP50Batched = lat.HTTPBatched.P50us - lat.Raw.P50us

	if o.scaleKeys > 0 {
		fmt.Fprintf(os.Stderr, "bench: key-count scaling (%d keys)\n", o.scaleKeys)
		s := &Scale{FewKeys: 10}
		// Ten keys on the token for the "few" measurement (8 from above).
		for i := 0; i < 2; i++ {
			if _, err := c.CreateKey(ctx, apitypes.CreateKeyRequest{Name: fmt.Sprintf("few-%d", i), KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}}); err != nil {
				return err
			}
		}
		if s.Few, err = b.http(o.concurrency, "hsm-ec", "ES256", 32); err != nil {
			return err
		}
		if s.RawFew, err = b.mode("raw", o.concurrency, "ES256", 32, "--token", b.soft.Label, "--id", ecID); err != nil {
			return err
		}
		t := time.Now()
		if err := b.fill(o.scaleKeys - s.FewKeys); err != nil {
			return err
		}
		s.FillSecs = time.Since(t).Seconds()
		// A fresh server: handles are found again on a token that holds
		// them all.
		b.stopServer()
		if err := b.startServer(); err != nil {
			return err
		}
		s.ManyKeys = o.scaleKeys
		if s.Many, err = b.http(o.concurrency, "hsm-ec", "ES256", 32); err != nil {
			return err
		}
		if s.RawMany, err = b.mode("raw", o.concurrency, "ES256", 32, "--token", b.soft.Label, "--id", ecID); err != nil {
			return err
		}
		s.Ratio, s.RawRatio = s.Many.OpsPerSec/s.Few.OpsPerSec, s.RawMany.OpsPerSec/s.RawFew.OpsPerSec
		rep.Scale = s
	}
	b.stopServer()
	if len(o.sweep) > 0 {
		if rep.Sweep, err = b.runSweep(ctx); err != nil {
			return err
		}
	}
	fmt.Fprintln(os.Stderr, "bench: HSM path (isolation, remote HSM)")
	if rep.HSM, err = runHSM(ctx, hsmOptions{duration: o.duration, warmup: o.warmup, rounds: 3, remote: true}, b.gateway); err != nil {
		return err
	}
	rep.TotalSeconds = time.Since(start).Seconds()
	return writeReport(rep, o.out)
}

// writeReport prints the table and writes the JSON (out "": not written).
func writeReport(rep Report, out string) error {
	printTable(os.Stdout, rep)
	if rep.HSM != nil {
		printHSM(os.Stdout, rep.HSM)
	}
	return writeJSON(out, rep)
}

// writeJSON writes v indented to the file out ("": nowhere), making its
// directory.
func writeJSON(out string, v any) error {
	if out == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	buf, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(out, append(buf, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "bench: wrote", out)
	return nil
}

func orZero(s string) string {
	if s == "" {
		return "0s"
	}
	return s
}

func machine() string {
	host, _ := os.Hostname()
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d CPUs (%s), %s/%s, %s", host, runtime.NumCPU(), cpu, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (b *bed) startServer() error {
	addr, err := freePort()
	if err != nil {
		return err
	}
	b.cfg = filepath.Join(b.dir, "keygrid.yaml")
	cfg := fmt.Sprintf("server:\n  listen: %s\ndefault_provider: hsm\n", addr) + testbed.Providers(
		testbed.PKCS11Provider{TokenLabel: b.soft.Label, PinEnv: "BENCH_PIN", MaxSessions: b.o.concurrency},
		testbed.SoftwareProvider{MasterKeyEnv: "BENCH_MASTER_KEY"},
	) + fmt.Sprintf(`limits:
  rate_per_principal: -1
log:
  level: warn
audit:
  fsync_interval: %s
`, orZero(b.auditFsync))
	if err := os.WriteFile(b.cfg, []byte(cfg), 0o600); err != nil {
		return err
	}
	b.srv = exec.Command(b.gateway, "serve", "--config", b.cfg, "--data-dir", b.data)
	b.srv.Env = b.env
	b.srv.Stderr = os.Stderr
	if err := b.srv.Start(); err != nil {
		return err
	}
	b.url = "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get(b.url + "/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			b.stopServer()
			return errors.New("the gateway did not become ready")
		}
		time.Sleep(100 * time.Millisecond)
	}
	tok, err := os.ReadFile(filepath.Join(b.data, "admin.token"))
	if err != nil {
		return fmt.Errorf("admin token: %w", err)
	}
	b.token = strings.TrimSpace(string(tok))
	return nil
}

func (b *bed) stopServer() {
	if b.srv != nil && b.srv.Process != nil {
		b.srv.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { b.srv.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			b.srv.Process.Kill()
			<-done
		}
		b.srv = nil
	}
}

// mode runs a measuring mode of this binary in its own process.
func (b *bed) mode(name string, conc int, algorithm string, size int, extra ...string) (Result, error) {
	args := append([]string{name, "--alg", algorithm, "--size", strconv.Itoa(size), "--concurrency", strconv.Itoa(conc),
		"--duration", b.o.duration.String(), "--warmup", b.o.warmup.String()}, extra...)
	cmd := exec.Command(b.self, args...)
	cmd.Env = b.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return Result{}, fmt.Errorf("%s %s: %w", name, algorithm, err)
	}
	var r Result
	return r, json.Unmarshal(out.Bytes(), &r)
}

// http drives the server with `keygrid-hsm bench`.
func (b *bed) http(conc int, key, algorithm string, size int) (Result, error) {
	op := "sign"
	if strings.HasSuffix(algorithm, "GCM") {
		op = "encrypt"
	}
	cmd := exec.Command(b.gateway, "bench", "--server", b.url, "--token", b.token, "--op", op, "--key", key,
		"--algorithm", algorithm, "--size", strconv.Itoa(size), "--concurrency", strconv.Itoa(conc),
		"--duration", b.o.duration.String(), "--warmup", b.o.warmup.String(), "--output", "json", "--progress=false")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return Result{}, fmt.Errorf("keygrid-hsm bench %s %s: %w", key, algorithm, err)
	}
	return parseLoad(out.Bytes(), key+" "+algorithm)
}

// fill puts n more EC key pairs on the token, directly through PKCS#11
// (they are not gateway keys: only their number matters).
func (b *bed) fill(n int) error {
	cmd := exec.Command(b.self, "fill", "--token", b.soft.Label, "--count", strconv.Itoa(n))
	cmd.Env = b.env
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}
