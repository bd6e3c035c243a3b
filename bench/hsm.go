package main

// The HSM-path section of `make bench` (issues 15 and 17):
//
//  1. isolation: the pkcs11 provider alone (no service, HTTP or audit) on
//     SoftHSM2, `isolation: process` against `isolation: in-process`,
//     ES256 and AES-256-GCM on 1 KiB: p50 at concurrency 1 and ops/s at
//     concurrency 16, with the CPU time per operation of the measuring
//     process and its module host together. The modes alternate, round
//     after round, so that a noisy machine treats both alike; the
//     figures are medians over the rounds.
//  2. remote HSM: SoftHSM2 behind `p11-kit server` (the shape of
//     CloudHSM's network client; p11-kit 0.24's RPC carries no AES-GCM), a
//     `keygrid-hsm serve` on p11-kit's client module, driven over HTTP at
//     concurrency 16: the gateway's CPU time per request (utime+stime of
//     the gateway and of its module host, from /proc) for ES256 and
//     RS256, against the raw C_SignInit/C_Sign loop through the same
//     client module on the same token (its throughput and CPU per
//     signature).
//
// With --old-bench and --old-gateway (binaries built from an older tree
// with this file copied into its bench/), every measurement also runs
// with the old binaries, interleaved with the new: before/after in one
// run. `go run ./bench hsm` runs this section alone.
//
// The measuring mode "isoprov" and the driver "hsm" are dispatched from
// init, so that this file alone, copied into an older tree, builds the
// old measuring binary.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/pkcs11"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

func init() {
	if len(os.Args) < 2 {
		return
	}
	switch os.Args[1] {
	case "isoprov":
		os.Exit(isoprovMain(os.Args[2:]))
	case "isokeys":
		os.Exit(isokeysMain(os.Args[2:]))
	case "floor":
		os.Exit(floorMain(os.Args[2:]))
	case "hsm":
		fs := flag.NewFlagSet("hsm", flag.ExitOnError)
		var o hsmOptions
		o.register(fs)
		out := fs.String("out", "bench/results/hsm-latest.json", "where to write the JSON report")
		fs.Parse(os.Args[2:])
		rep, err := runHSM(context.Background(), o, "")
		sectionExit("hsm", rep, err, printHSM, *out)
	}
}

// sectionExit ends a section run alone (`go run ./bench NAME`): it
// prints rep with print and writes it as JSON to out, or reports err, and
// exits.
func sectionExit[R any](name string, rep R, err error, print func(io.Writer, R), out string) {
	if err == nil {
		print(os.Stdout, rep)
		err = writeJSON(out, rep)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", name, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// hsmOptions are the settings of the section.
type hsmOptions struct {
	duration, warmup time.Duration
	rounds           int
	oldBench         string // a bench binary of an older tree ("" none)
	oldGateway       string // its keygrid-hsm
	remote           bool   // run part 2 (p11-kit)
}

func (o *hsmOptions) register(fs *flag.FlagSet) {
	fs.DurationVar(&o.duration, "duration", 2*time.Second, "measured time per measurement")
	fs.DurationVar(&o.warmup, "warmup", 300*time.Millisecond, "unmeasured warm-up per measurement")
	fs.IntVar(&o.rounds, "rounds", 3, "alternating rounds of every measurement")
	fs.StringVar(&o.oldBench, "old-bench", "", "bench binary built from an older tree (with bench/hsm.go copied in), measured interleaved")
	fs.StringVar(&o.oldGateway, "old-gateway", "", "keygrid-hsm binary of the same older tree")
	fs.BoolVar(&o.remote, "remote", true, "also measure the gateway against SoftHSM2 behind p11-kit server")
}

// CPUResult is a Result with the CPU time spent per operation by the
// measured processes.
type CPUResult struct {
	Result
	CPUus float64 `json:"cpu_us_per_op"`
	// HostCPUus is the part of CPUus spent in the gateway's module host
	// (isolation: process), the rest is the gateway process's.
	HostCPUus float64 `json:"host_cpu_us_per_op,omitempty"`
}

// IsoCell is one measurement of part 1, its rounds and their median.
type IsoCell struct {
	Binary      string      `json:"binary"` // "new" or "old"
	Isolation   string      `json:"isolation"`
	Algorithm   string      `json:"algorithm"`
	Concurrency int         `json:"concurrency"`
	Rounds      []CPUResult `json:"rounds"`
	Median      CPUResult   `json:"median"`
}

// IsoSummary is the cost of isolation: process of one binary and
// algorithm: added p50 at c=1, and the throughput ratio at c=16 (medians
// of the per-round differences and ratios).
type IsoSummary struct {
	Binary       string  `json:"binary"`
	Algorithm    string  `json:"algorithm"`
	AddedP50us   float64 `json:"added_p50_us_c1"`
	RatioC16     float64 `json:"process_over_inprocess_c16"`
	CPUAddedC16  float64 `json:"added_cpu_us_per_op_c16"`
	InProcP50us  float64 `json:"inprocess_p50_us_c1"`
	ProcessP50us float64 `json:"process_p50_us_c1"`
}

// RemoteCell is one measurement of part 2.
type RemoteCell struct {
	Binary string `json:"binary"`
	// Mode is "raw" (the PKCS#11 loop), "http" (the gateway as
	// configured by default: isolation: process, durable audit),
	// "http-inproc" (isolation: in-process), "http-relaxed" (audit
	// fsync_interval 10ms) or "floor" (floorMain, waiting the raw loop's
	// p50 of the same round).
	Mode      string      `json:"mode"`
	Algorithm string      `json:"algorithm"`
	Rounds    []CPUResult `json:"rounds"`
	Median    CPUResult   `json:"median"`
}

// HSMReport is what the section measured.
type HSMReport struct {
	Time      time.Time    `json:"time"`
	Machine   string       `json:"machine"`
	LoadAvg   string       `json:"load_average_at_start"`
	Duration  string       `json:"duration_per_measurement"`
	Rounds    int          `json:"rounds"`
	Isolation []IsoCell    `json:"isolation"`
	Summary   []IsoSummary `json:"isolation_summary"`
	Remote    []RemoteCell `json:"remote_hsm,omitempty"`
	// RemoteRatio is RS256 over HTTP against the raw loop, per binary.
	RemoteRatio map[string]float64 `json:"remote_rs256_http_over_raw,omitempty"`
	// RemoteOwn is the gateway's own CPU per request, per algorithm and
	// binary/mode: the http cell's minus the raw loop's per signature
	// (the client module's work, done in the gateway or its host),
	// medians of the per-round differences; "floor" is floorMain's CPU
	// per request as it is.
	RemoteOwn map[string]map[string]float64 `json:"remote_own_cpu_us_per_request,omitempty"`
	Seconds   float64                       `json:"total_seconds"`
}

const hsmBenchPIN = "bench-pin-1234"

// runHSM runs the section on a token of its own under dir ("" a new
// temporary directory).
func runHSM(ctx context.Context, o hsmOptions, gateway string) (*HSMReport, error) {
	start := time.Now()
	if m := testbed.Missing("softhsm2-util", testbed.SoftHSMModule); m != "" {
		return nil, fmt.Errorf("%s is missing (run scripts/test-deps.sh)", m)
	}
	// A short directory: p11-kit's unix socket path is limited.
	dir, err := os.MkdirTemp("", "kgbh")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if gateway == "" {
		gateway = filepath.Join(dir, "keygrid-hsm")
		fmt.Fprintln(os.Stderr, "bench hsm: building keygrid-hsm")
		if out, err := exec.Command("go", "build", "-o", gateway, "./cmd/keygrid-hsm").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build: %v\n%s", err, out)
		}
	}
	soft, err := testbed.NewSoftHSM(dir, "kg-hsm-bench", hsmBenchPIN)
	if err != nil {
		return nil, err
	}
	env := append(soft.Env(), "BENCH_PIN="+hsmBenchPIN, "BENCH_MASTER_KEY="+strings.Repeat("5a", 32))
	load, _ := os.ReadFile("/proc/loadavg")
	rep := &HSMReport{Time: time.Now().UTC(), Machine: machine(), LoadAvg: strings.TrimSpace(string(load)),
		Duration: o.duration.String(), Rounds: o.rounds, RemoteRatio: map[string]float64{}}

	// Part 1: the keys, made once through the provider in-process.
	var refs map[string]string
	out, err := runCapture(self, env, "isokeys", "--token", soft.Label)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(out, &refs); err != nil {
		return nil, fmt.Errorf("isokeys: %w", err)
	}
	type bin struct{ name, path string }
	bins := []bin{{"new", self}}
	if o.oldBench != "" {
		bins = append(bins, bin{"old", o.oldBench})
	}
	cells := map[string]*IsoCell{}
	var order []string
	for round := 0; round < o.rounds; round++ {
		for _, a := range []struct {
			name string
			size int
			ref  string
		}{{"ES256", 32, refs["ec"]}, {"A256GCM", 1024, refs["aes"]}} {
			for _, conc := range []int{1, 16} {
				for _, b := range bins {
					for _, iso := range []string{pkcs11.IsolationInProcess, pkcs11.IsolationProcess} {
						k := fmt.Sprintf("%s/%s/%s/%d", b.name, iso, a.name, conc)
						fmt.Fprintf(os.Stderr, "bench hsm: round %d: %s\n", round+1, k)
						out, err := runCapture(b.path, env, "isoprov", "--alg", a.name, "--size", strconv.Itoa(a.size),
							"--concurrency", strconv.Itoa(conc), "--duration", o.duration.String(), "--warmup", o.warmup.String(),
							"--token", soft.Label, "--ref", a.ref, "--isolation", iso)
						if err != nil {
							return nil, err
						}
						var r CPUResult
						if err := json.Unmarshal(out, &r); err != nil {
							return nil, fmt.Errorf("isoprov %s: %w", k, err)
						}
						c := cells[k]
						if c == nil {
							c = &IsoCell{Binary: b.name, Isolation: iso, Algorithm: a.name, Concurrency: conc}
							cells[k] = c
							order = append(order, k)
						}
						c.Rounds = append(c.Rounds, r)
					}
				}
			}
		}
	}
	for _, k := range order {
		c := cells[k]
		c.Median = medianResult(c.Rounds)
		rep.Isolation = append(rep.Isolation, *c)
	}
	for _, b := range bins {
		for _, a := range []string{"ES256", "A256GCM"} {
			in1, pr1 := cells[b.name+"/in-process/"+a+"/1"], cells[b.name+"/process/"+a+"/1"]
			in16, pr16 := cells[b.name+"/in-process/"+a+"/16"], cells[b.name+"/process/"+a+"/16"]
			var added, ratio, cpu []float64
			for i := range in1.Rounds {
				added = append(added, pr1.Rounds[i].P50us-in1.Rounds[i].P50us)
				ratio = append(ratio, pr16.Rounds[i].OpsPerSec/in16.Rounds[i].OpsPerSec)
				cpu = append(cpu, pr16.Rounds[i].CPUus-in16.Rounds[i].CPUus)
			}
			rep.Summary = append(rep.Summary, IsoSummary{Binary: b.name, Algorithm: a, AddedP50us: median(added), RatioC16: median(ratio),
				CPUAddedC16: median(cpu), InProcP50us: in1.Median.P50us, ProcessP50us: pr1.Median.P50us})
		}
	}

	if o.remote {
		if err := remoteHSM(ctx, o, rep, dir, soft, env, gateway, self); err != nil {
			return nil, err
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// remoteHSM is part 2: the gateway on p11-kit's client module.
func remoteHSM(ctx context.Context, o hsmOptions, rep *HSMReport, dir string, soft *testbed.SoftHSM, env []string, gatewayBin, self string) error {
	clientMod := testbed.P11KitClientModule()
	if clientMod == "" || testbed.Missing("p11-kit") != "" {
		return errors.New("p11-kit or its client module is missing (run scripts/test-deps.sh)")
	}
	srv := testbed.NewP11KitServer(soft, dir)
	if err := srv.Start(); err != nil {
		return err
	}
	defer srv.Stop()
	env = append(env, "P11_KIT_SERVER_ADDRESS="+srv.Address())
	type gw struct {
		name, mode, bin, bench string
		settings               []string // more lines of the pkcs11 provider's config
		extra                  string   // more top-level config
		g                      *gateway
	}
	gws := []*gw{
		{name: "new", mode: "http", bin: gatewayBin, bench: self},
		{name: "new", mode: "http-inproc", bin: gatewayBin, bench: self, settings: []string{"isolation: " + pkcs11.IsolationInProcess}},
		{name: "new", mode: "http-relaxed", bin: gatewayBin, bench: self, extra: "audit:\n  fsync_interval: 10ms\n"},
	}
	if o.oldGateway != "" && o.oldBench != "" {
		gws = append(gws, &gw{name: "old", mode: "http", bin: o.oldGateway, bench: o.oldBench})
	}
	data := filepath.Join(dir, "gw-data")
	// The first gateway makes the keys; each gateway has its own data
	// directory copied from it after, so all sign with the same keys.
	var ids map[string]string
	for i, g := range gws {
		d := fmt.Sprintf("%s-%s-%s", data, g.name, g.mode)
		if i > 0 {
			first := fmt.Sprintf("%s-%s-%s", data, gws[0].name, gws[0].mode)
			if out, err := exec.Command("cp", "-a", first, d).CombinedOutput(); err != nil {
				return fmt.Errorf("cp: %v: %s", err, out)
			}
			os.Remove(filepath.Join(d, "audit.log.lock"))
		}
		var err error
		if g.g, err = startHSMGateway(g.bin, d, env, clientMod, soft.Label, g.settings, g.extra); err != nil {
			return err
		}
		defer g.g.stop()
		if i == 0 {
			if ids, err = g.g.makeKeys(ctx); err != nil {
				return err
			}
		}
	}
	cells := map[string]*RemoteCell{}
	var order []string
	add := func(bin, mode, a string, r CPUResult) {
		k := bin + "/" + mode + "/" + a
		c := cells[k]
		if c == nil {
			c = &RemoteCell{Binary: bin, Mode: mode, Algorithm: a}
			cells[k] = c
			order = append(order, k)
		}
		c.Rounds = append(c.Rounds, r)
	}
	for round := 0; round < o.rounds; round++ {
		for _, a := range []struct{ name, key string }{{"ES256", "ec"}, {"RS256", "rsa"}} {
			fmt.Fprintf(os.Stderr, "bench hsm: round %d: remote raw %s\n", round+1, a.name)
			raw, err := rawCPU(self, env, clientMod, soft.Label, ids[a.key], a.name, o)
			if err != nil {
				return err
			}
			add("raw", "raw", a.name, raw)
			for _, g := range gws {
				fmt.Fprintf(os.Stderr, "bench hsm: round %d: remote %s %s %s\n", round+1, g.name, g.mode, a.name)
				r, err := loadCPU(g.bin, g.g, "remote-"+a.key, a.name, o)
				if err != nil {
					return err
				}
				add(g.name, g.mode, a.name, r)
			}
			fmt.Fprintf(os.Stderr, "bench hsm: round %d: remote floor %s\n", round+1, a.name)
			r, err := floorCPU(self, gatewayBin, "remote-"+a.key, a.name, time.Duration(raw.P50us)*time.Microsecond, o)
			if err != nil {
				return err
			}
			add("floor", "floor", a.name, r)
		}
	}
	for _, k := range order {
		c := cells[k]
		c.Median = medianResult(c.Rounds)
		rep.Remote = append(rep.Remote, *c)
	}
	rep.RemoteOwn = map[string]map[string]float64{}
	for _, a := range []string{"ES256", "RS256"} {
		raw := cells["raw/raw/"+a].Rounds
		own := map[string]float64{"floor": cells["floor/floor/"+a].Median.CPUus}
		for _, g := range gws {
			var d []float64
			for i, r := range cells[g.name+"/"+g.mode+"/"+a].Rounds {
				d = append(d, r.CPUus-raw[i].CPUus)
			}
			own[g.name+"/"+g.mode] = median(d)
		}
		rep.RemoteOwn[a] = own
	}
	for _, g := range gws {
		if g.mode != "http" {
			continue
		}
		var ratios []float64
		for i, r := range cells[g.name+"/http/RS256"].Rounds {
			ratios = append(ratios, r.OpsPerSec/cells["raw/raw/RS256"].Rounds[i].OpsPerSec)
		}
		rep.RemoteRatio[g.name] = median(ratios)
	}
	return nil
}

// startHSMGateway starts a gateway of part 2: its default provider the
// token label behind the PKCS#11 module (p11-kit's client) with more
// provider settings, extra more top-level config, data in data.
func startHSMGateway(bin, data string, env []string, module, label string, settings []string, extra string) (*gateway, error) {
	return startGateway(bin, data+".yaml", data, env, func(addr string) string {
		return fmt.Sprintf("server:\n  listen: %s\ndefault_provider: hsm\n", addr) + testbed.Providers(
			testbed.PKCS11Provider{Library: module, TokenLabel: label, PinEnv: "BENCH_PIN", MaxSessions: 16, Settings: settings},
			testbed.SoftwareProvider{MasterKeyEnv: "BENCH_MASTER_KEY"},
		) + "limits:\n  rate_per_principal: -1\nlog:\n  level: warn\n" + extra
	})
}

// makeKeys makes the EC and RSA keys of part 2 and returns their CKA_IDs
// (hex) for the raw loop.
func (g *gateway) makeKeys(ctx context.Context) (map[string]string, error) {
	c, err := client.New(g.url, client.WithToken(g.token))
	if err != nil {
		return nil, err
	}
	ids := map[string]string{}
	for k, spec := range map[string]apitypes.KeySpec{
		"ec":  {KeyType: "EC", Curve: "P-256"},
		"rsa": {KeyType: "RSA", KeySize: 2048, Usage: []string{"sign", "verify"}},
	} {
		key, err := c.CreateKey(ctx, apitypes.CreateKeyRequest{Provider: "hsm", Name: "remote-" + k, KeySpec: spec})
		if err != nil {
			return nil, fmt.Errorf("create remote-%s: %w", k, err)
		}
		u, err := pkcs11.ParseURI(key.Versions[0].ProviderRef)
		if err != nil {
			return nil, err
		}
		ids[k] = fmt.Sprintf("%x", u.ID)
	}
	return ids, nil
}

// loadCPU drives g with `kg bench` (kg a keygrid-hsm binary) on key at
// concurrency 16 and reads the CPU time of g's process and of its
// children (a module host) over the measured period.
func loadCPU(kg string, g *gateway, key, algorithm string, o hsmOptions) (CPUResult, error) {
	url, token, pid := g.url, g.token, g.cmd.Process.Pid
	args := func(d, w time.Duration) []string {
		return []string{"bench", "--server", url, "--token", token, "--op", "sign", "--key", key,
			"--algorithm", algorithm, "--size", "32", "--concurrency", "16", "--duration", d.String(), "--warmup", w.String(),
			"--output", "json", "--progress=false"}
	}
	// Warm up apart, so that the CPU read covers the measured requests only.
	if _, err := runCapture(kg, nil, args(o.warmup, 0)...); err != nil {
		return CPUResult{}, err
	}
	hosts := childPIDs(pid)
	self0, host0 := procsCPU([]int{pid}), procsCPU(hosts)
	out, err := runCapture(kg, nil, args(o.duration, 0)...)
	if err != nil {
		return CPUResult{}, err
	}
	self, host := procsCPU([]int{pid})-self0, procsCPU(hosts)-host0
	r, err := parseLoad(out, key+" "+algorithm)
	if err != nil {
		return CPUResult{}, err
	}
	return CPUResult{Result: r, CPUus: float64((self + host).Microseconds()) / float64(r.Ops),
		HostCPUus: float64(host.Microseconds()) / float64(r.Ops)}, nil
}

// floorCPU starts floorMain (in the bench binary self) waiting delay per
// request and measures it as loadCPU does a gateway.
func floorCPU(self, kg, key, algorithm string, delay time.Duration, o hsmOptions) (CPUResult, error) {
	f, err := startFloor(self, "--delay", delay.String())
	if err != nil {
		return CPUResult{}, err
	}
	defer f.stop()
	return loadCPU(kg, f, key, algorithm, o)
}

// startFloor starts floorMain (in the bench binary self) with args, as a
// gateway to drive.
func startFloor(self string, args ...string) (*gateway, error) {
	cmd := exec.Command(self, append([]string{"floor"}, args...)...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var addr string
	if _, err := fmt.Fscanln(stdout, &addr); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("bench floor: its address: %w", err)
	}
	return &gateway{url: "http://" + addr, token: "floor", cmd: cmd}, nil
}

// rawCPU runs the raw loop through the client module at concurrency 16;
// its CPU per signature is the whole process's (rusage), load and login
// included (a few ms against seconds of signing).
func rawCPU(self string, env []string, module, label, id, algorithm string, o hsmOptions) (CPUResult, error) {
	cmd := exec.Command(self, "raw", "--alg", algorithm, "--size", "32", "--concurrency", "16", "--duration", o.duration.String(),
		"--warmup", "0s", "--module", module, "--token", label, "--id", id)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return CPUResult{}, fmt.Errorf("raw %s: %w", algorithm, err)
	}
	var r CPUResult
	if err := json.Unmarshal(out.Bytes(), &r.Result); err != nil {
		return CPUResult{}, err
	}
	if r.Ops > 0 {
		cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		r.CPUus = float64(cpu.Microseconds()) / float64(r.Ops)
	}
	return r, nil
}

// isokeysMain makes the keys of part 1 through the provider (in-process)
// and prints their references as JSON.
func isokeysMain(args []string) int {
	fs := flag.NewFlagSet("isokeys", flag.ContinueOnError)
	token := fs.String("token", "", "token label")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx := context.Background()
	p, err := openBenchProvider(ctx, *token, pkcs11.IsolationInProcess)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench isokeys:", err)
		return 1
	}
	defer p.Close()
	refs := map[string]string{}
	for k, req := range map[string]provider.CreateKeyRequest{
		"ec":  {Label: "iso-ec", Spec: alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}, Usage: []alg.Usage{alg.UsageSign, alg.UsageVerify}},
		"aes": {Label: "iso-aes", Spec: alg.Spec{Type: alg.AES, Size: 256}, Usage: []alg.Usage{alg.UsageEncrypt, alg.UsageDecrypt}},
	} {
		id := make([]byte, 16)
		rand.Read(id)
		req.ObjectID = fmt.Sprintf("%x", id)
		k2, err := p.CreateKey(ctx, req)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench isokeys:", err)
			return 1
		}
		refs[k] = k2.Ref
	}
	json.NewEncoder(os.Stdout).Encode(refs)
	return 0
}

func openBenchProvider(ctx context.Context, token, isolation string) (*pkcs11.Provider, error) {
	c := pkcs11.Config{Isolation: isolation}
	c.LibraryPath = testbed.SoftHSMModule
	c.TokenLabel = token
	c.PinEnv = "BENCH_PIN"
	c.MaxSessions = 16
	return pkcs11.Open(ctx, "hsm", pkcs11.TypePKCS11, c, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// isoprovMain measures the provider alone with the given isolation and
// prints a CPUResult.
func isoprovMain(args []string) int {
	fs := flag.NewFlagSet("isoprov", flag.ContinueOnError)
	var c common
	c.register(fs)
	token := fs.String("token", "", "token label")
	ref := fs.String("ref", "", "the key's provider reference")
	isolation := fs.String("isolation", pkcs11.IsolationProcess, "process or in-process")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "bench isoprov:", err); return 1 }
	a, err := alg.Lookup(c.alg)
	if err != nil {
		return fail(err)
	}
	ctx := context.Background()
	p, err := openBenchProvider(ctx, *token, *isolation)
	if err != nil {
		return fail(err)
	}
	defer p.Close()
	data := make([]byte, c.size)
	rand.Read(data)
	var op func(int) error
	if a.KeyType == alg.AES {
		spec := alg.Spec{Type: alg.AES, Size: 256}
		op = func(int) error {
			_, err := p.Encrypt(ctx, provider.EncryptRequest{Ref: *ref, Spec: spec, Algorithm: a, Plaintext: data})
			return err
		}
	} else {
		spec := alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}
		digest := alg.Digest(a, data)
		op = func(int) error {
			_, err := p.Sign(ctx, provider.SignRequest{Ref: *ref, Spec: spec, Algorithm: a, Input: digest})
			return err
		}
	}
	if err := op(0); err != nil {
		return fail(err)
	}
	if c.warmup > 0 {
		measure(c.concurrency, c.warmup, 0, op)
	}
	self := os.Getpid()
	pids := append([]int{self}, childPIDs(self)...)
	before := procsCPU(pids)
	r := CPUResult{Result: measure(c.concurrency, 0, c.duration, op)}
	if r.Ops > 0 {
		r.CPUus = float64((procsCPU(pids) - before).Microseconds()) / float64(r.Ops)
	}
	if r.Errors > 0 {
		return fail(fmt.Errorf("%d operations failed", r.Errors))
	}
	json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

// procsCPU is the utime+stime of the processes pids (all their threads),
// from /proc/<pid>/stat; a process that is gone counts 0.
func procsCPU(pids []int) time.Duration {
	var sum time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The command name (field 2) may hold spaces: fields count from
		// after its closing parenthesis.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14
		st, _ := strconv.ParseInt(f[12], 10, 64) // field 15
		sum += time.Duration(ut+st) * time.Second / clkTck
	}
	return sum
}

// clkTck is USER_HZ, 100 on every Linux this runs on.
const clkTck = 100

// childPIDs lists the live children of pid (the module host).
func childPIDs(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

func runCapture(bin string, env []string, args ...string) ([]byte, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %s: %w", filepath.Base(bin), args[0], err)
	}
	return out.Bytes(), nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianResult(rs []CPUResult) CPUResult {
	pick := func(f func(CPUResult) float64) float64 {
		var v []float64
		for _, r := range rs {
			v = append(v, f(r))
		}
		return median(v)
	}
	m := CPUResult{CPUus: pick(func(r CPUResult) float64 { return r.CPUus }), HostCPUus: pick(func(r CPUResult) float64 { return r.HostCPUus })}
	m.OpsPerSec = pick(func(r CPUResult) float64 { return r.OpsPerSec })
	m.P50us = pick(func(r CPUResult) float64 { return r.P50us })
	m.P99us = pick(func(r CPUResult) float64 { return r.P99us })
	for _, r := range rs {
		m.Ops += r.Ops
		m.Errors += r.Errors
	}
	return m
}

// floorMain is the floor of the HSM path's part 2: a net/http server that
// does nothing a gateway must do (no auth, decoding, audit, provider or
// module) but read the request, wait as long as the HSM takes (--delay)
// and answer with a sign response of the real size. `keygrid-hsm bench`
// drives it like a gateway, so its CPU time per request is what any Go
// HTTP front end spends on this machine at that latency and rate: the
// part of the gateway's CPU that no change to the gateway removes.
//
// It prints its address on stdout and serves until it is killed.
func floorMain(args []string) int {
	fs := flag.NewFlagSet("floor", flag.ExitOnError)
	delay := fs.Duration("delay", 0, "how long each request waits (the HSM's latency)")
	sign := fs.Bool("es256", false, "sign the request body's SHA-256 with an in-memory P-256 key (the raw operation of `bench stdlib`) instead of waiting")
	fs.Parse(args)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench floor:", err)
		return 1
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench floor:", err)
		return 1
	}
	// The size of a real ES256 answer (the RS256 one is 256 bytes longer:
	// a few µs of copying at most).
	answer := []byte(`{"key_id":"01a237b8-f6f8-70ea-a173-f6bd42dfdd7d","key_version":1,"algorithm":"ES256",` +
		`"signature":"MEUCIQDd4r3x8nq0s2pP6pQ3o3t3w3x3y3z3A3B3C3D3E3F3GwIgZ2FiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6MDEyMzQ1"}`)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/keys/{name}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"name":%q}`, r.PathValue("name"))
	})
	mux.HandleFunc("POST /api/v1/keys/{name}/sign", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if *sign {
			d := sha256.Sum256(body)
			if _, err := ecdsa.SignASN1(rand.Reader, key, d[:]); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		} else {
			time.Sleep(*delay)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(answer)
	})
	fmt.Println(ln.Addr().String())
	if err := http.Serve(ln, mux); err != nil {
		fmt.Fprintln(os.Stderr, "bench floor:", err)
		return 1
	}
	return 0
}

// printHSM prints the section's tables.
func printHSM(w io.Writer, r *HSMReport) {
	fmt.Fprintf(w, "\nHSM path — %s — load %s — %s per measurement, median of %d alternating rounds\n", r.Machine, r.LoadAvg, r.Duration, r.Rounds)
	fmt.Fprintln(w, "\nisolation (the pkcs11 provider alone, SoftHSM2):")
	fmt.Fprintf(w, "  %-4s %-10s %-8s %3s %10s %8s %8s %10s\n", "bin", "isolation", "alg", "c", "ops/s", "p50µs", "p99µs", "cpuµs/op")
	for _, c := range r.Isolation {
		m := c.Median
		fmt.Fprintf(w, "  %-4s %-10s %-8s %3d %10.0f %8.0f %8.0f %10.1f\n", c.Binary, c.Isolation, c.Algorithm, c.Concurrency, m.OpsPerSec, m.P50us, m.P99us, m.CPUus)
	}
	fmt.Fprintln(w, "\n  cost of isolation: process (medians of per-round differences and ratios; target ≤ +25 µs p50 at c=1, ≥ 0.9 at c=16):")
	for _, s := range r.Summary {
		fmt.Fprintf(w, "  %-4s %-8s p50 c=1 %5.0f → %5.0f µs: added %+5.0f µs; ops/s c=16 process/in-process %.2f; CPU added %+.1f µs/op\n",
			s.Binary, s.Algorithm, s.InProcP50us, s.ProcessP50us, s.AddedP50us, s.RatioC16, s.CPUAddedC16)
	}
	if len(r.Remote) > 0 {
		fmt.Fprintln(w, "\nremote HSM (SoftHSM2 behind p11-kit server), concurrency 16; cpu = the gateway and its module host per request (http),")
		fmt.Fprintln(w, "the loop's process per signature (raw), a Go HTTP server that only waits the raw p50 per request (floor):")
		fmt.Fprintf(w, "  %-5s %-12s %-6s %10s %8s %8s %10s %10s\n", "bin", "mode", "alg", "ops/s", "p50µs", "p99µs", "cpuµs/op", "host µs")
		for _, c := range r.Remote {
			m := c.Median
			fmt.Fprintf(w, "  %-5s %-12s %-6s %10.0f %8.0f %8.0f %10.1f %10.1f\n", c.Binary, c.Mode, c.Algorithm, m.OpsPerSec, m.P50us, m.P99us, m.CPUus, m.HostCPUus)
		}
		for _, a := range []string{"ES256", "RS256"} {
			own := r.RemoteOwn[a]
			var ks []string
			for k := range own {
				if k != "floor" {
					ks = append(ks, k)
				}
			}
			slices.Sort(ks)
			fmt.Fprintf(w, "  %s: the gateway's own CPU per request (http − raw; target ≤ 40 µs):", a)
			for _, k := range ks {
				fmt.Fprintf(w, " %s %.0f µs;", k, own[k])
			}
			fmt.Fprintf(w, " floor %.0f µs\n", own["floor"])
		}
		for b, x := range r.RemoteRatio {
			fmt.Fprintf(w, "  %s: RS256 http/raw %.2f (target ≥ 0.9)\n", b, x)
		}
	}
	fmt.Fprintf(w, "hsm section: %.0fs\n", r.Seconds)
}
