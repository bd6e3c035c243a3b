package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// The sweep: the software provider (no HSM, so what is measured is the
// gateway) at several concurrencies, in both audit modes, over HTTP and in
// process; for the HTTP rows the CPU time the gateway process and the load
// generator spent per request, read from /proc and from the load
// generator's rusage. With -compare, a second gateway binary (an older
// build) is measured in the same run, interleaved with this one.

// SweepRow is one line of the sweep.
type SweepRow struct {
	Provider    string `json:"provider"`
	Algorithm   string `json:"algorithm"`
	Payload     int    `json:"payload_bytes"`
	Concurrency int    `json:"concurrency"`
	// Audit is "durable" (the default: fsynced before each response) or
	// "fsync 10ms" (audit.fsync_interval 10ms).
	Audit  string     `json:"audit"`
	InProc Result     `json:"inproc"`
	HTTP   HTTPResult `json:"http"`
	// Compare is the same HTTP row against the -compare binary (nil
	// without one), and CompareRatio this build's ops/s over its.
	Compare      *HTTPResult `json:"compare,omitempty"`
	CompareRatio float64     `json:"http_over_compare,omitempty"`
}

// HTTPResult is an HTTP measurement with the CPU time each side spent per
// successful request.
type HTTPResult struct {
	Result
	// ServerCPUus is the gateway process's CPU time (utime+stime from
	// /proc/<pid>/stat, all threads) over the measured period, per request.
	ServerCPUus float64 `json:"server_cpu_us_per_request"`
	// ClientCPUus is the load generator's (its rusage), per request.
	ClientCPUus float64 `json:"client_cpu_us_per_request"`
}

// Sweep is the sweep's part of the report.
type Sweep struct {
	Concurrency []int      `json:"concurrency"`
	Duration    string     `json:"duration_per_measurement"`
	Compare     string     `json:"compare_binary,omitempty"`
	Rows        []SweepRow `json:"rows"`
}

// gateway is one running `keygrid-hsm serve` of the sweep.
type gateway struct {
	bin, dir, url, token string
	cmd                  *exec.Cmd
}

const sweepMasterKey = "BENCH_MASTER_KEY"

func sweepConfig(addr, fsync string) string {
	return fmt.Sprintf("server:\n  listen: %s\ndefault_provider: software\n", addr) +
		testbed.Providers(testbed.SoftwareProvider{MasterKeyEnv: sweepMasterKey}) +
		fmt.Sprintf("limits:\n  rate_per_principal: -1\nlog:\n  level: warn\naudit:\n  fsync_interval: %s\n", orZero(fsync))
}

// startSweepGateway starts bin on its own data directory dir (kept across
// restarts) with audit.fsync_interval fsync.
func startSweepGateway(bin, dir, fsync string, env []string) (*gateway, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	g, err := startGateway(bin, filepath.Join(dir, "keygrid.yaml"), filepath.Join(dir, "data"), env,
		func(addr string) string { return sweepConfig(addr, fsync) })
	if g != nil {
		g.dir = dir
	}
	return g, err
}

// startGateway writes the configuration config(listen address) to cfgPath,
// starts `bin serve` on it and the data directory data, and waits until it
// is ready.
func startGateway(bin, cfgPath, data string, env []string, config func(addr string) string) (*gateway, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfgPath, []byte(config(addr)), 0o600); err != nil {
		return nil, err
	}
	g := &gateway{bin: bin, url: "http://" + addr}
	g.cmd = exec.Command(bin, "serve", "--config", cfgPath, "--data-dir", data)
	g.cmd.Env, g.cmd.Stderr = env, os.Stderr
	if err := g.cmd.Start(); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get(g.url + "/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			g.stop()
			return nil, fmt.Errorf("%s serve --config %s did not become ready", bin, cfgPath)
		}
	}
	tok, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		g.stop()
		return nil, fmt.Errorf("admin token: %w", err)
	}
	g.token = strings.TrimSpace(string(tok))
	return g, nil
}

func (g *gateway) stop() {
	if g == nil || g.cmd == nil || g.cmd.Process == nil {
		return
	}
	g.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { g.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		g.cmd.Process.Kill()
		<-done
	}
	g.cmd = nil
}

// keys makes the sweep's keys when they do not exist yet.
func (g *gateway) keys(ctx context.Context) error {
	c, err := client.New(g.url, client.WithToken(g.token))
	if err != nil {
		return err
	}
	for _, k := range []apitypes.CreateKeyRequest{
		{Provider: "software", Name: "sweep-ec", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}},
		{Provider: "software", Name: "sweep-aes", KeySpec: apitypes.KeySpec{KeyType: "AES", KeySize: 256, Usage: []string{"encrypt", "decrypt"}}},
	} {
		if _, err := c.GetKey(ctx, k.Name); err == nil {
			continue
		}
		if _, err := c.CreateKey(ctx, k); err != nil {
			return fmt.Errorf("create %s: %w", k.Name, err)
		}
	}
	return nil
}

// procCPU is the CPU time (user + system, every thread) of process pid.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: count from after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("unreadable /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	// Fields 14 (utime) and 15 (stime) of stat(5), in clock ticks (USER_HZ,
	// 100 on Linux).
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("unreadable /proc stat times")
	}
	return time.Duration(ut+st) * (time.Second / 100), nil
}

// load runs the load generator (loadgen: a keygrid-hsm binary) against g:
// an unmeasured warm-up run, then the measured run with the gateway's CPU
// time read before and after it.
func (b *bed) load(loadgen string, g *gateway, conc int, key, algorithm string, size int, dur, warmup time.Duration) (HTTPResult, error) {
	op := "sign"
	if strings.HasSuffix(algorithm, "GCM") {
		op = "encrypt"
	}
	run := func(d time.Duration) (HTTPResult, error) {
		cmd := exec.Command(loadgen, "bench", "--server", g.url, "--token", g.token, "--op", op, "--key", key,
			"--algorithm", algorithm, "--size", strconv.Itoa(size), "--concurrency", strconv.Itoa(conc),
			"--duration", d.String(), "--warmup", "0s", "--output", "json", "--progress=false")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, os.Stderr
		cpu0, err := procCPU(g.cmd.Process.Pid)
		if err != nil {
			return HTTPResult{}, err
		}
		if err := cmd.Run(); err != nil {
			return HTTPResult{}, fmt.Errorf("keygrid-hsm bench %s %s: %w", key, algorithm, err)
		}
		cpu1, err := procCPU(g.cmd.Process.Pid)
		if err != nil {
			return HTTPResult{}, err
		}
		r, err := parseLoad(out.Bytes(), key+" "+algorithm)
		if err != nil {
			return HTTPResult{}, err
		}
		client := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		return HTTPResult{Result: r, ServerCPUus: float64((cpu1 - cpu0).Microseconds()) / float64(r.Ops),
			ClientCPUus: float64(client.Microseconds()) / float64(r.Ops)}, nil
	}
	if warmup > 0 {
		if _, err := run(warmup); err != nil {
			return HTTPResult{}, err
		}
	}
	return run(dur)
}

// runSweep measures the sweep; b.gateway is this build's binary.
func (b *bed) runSweep(ctx context.Context) (*Sweep, error) {
	o := b.o
	sw := &Sweep{Concurrency: o.sweep, Duration: o.sweepDuration.String(), Compare: o.compare}
	env := append(os.Environ(), sweepMasterKey+"="+strings.Repeat("5a", 32))
	for _, mode := range []struct{ name, fsync string }{{"durable", ""}, {"fsync 10ms", "10ms"}} {
		cur, err := startSweepGateway(b.gateway, filepath.Join(b.dir, "sweep-new"), mode.fsync, env)
		if err != nil {
			return nil, err
		}
		var old *gateway
		if o.compare != "" {
			if old, err = startSweepGateway(o.compare, filepath.Join(b.dir, "sweep-old"), mode.fsync, env); err != nil {
				cur.stop()
				return nil, err
			}
		}
		err = func() error {
			for _, g := range []*gateway{cur, old} {
				if g != nil {
					if err := g.keys(ctx); err != nil {
						return err
					}
				}
			}
			for i, conc := range o.sweep {
				for _, r := range []struct {
					key, alg string
					size     int
				}{{"sweep-ec", "ES256", 32}, {"sweep-aes", "A256GCM", 1024}} {
					fmt.Fprintf(os.Stderr, "bench: sweep software %s c=%d audit %s\n", r.alg, conc, mode.name)
					row := SweepRow{Provider: "software", Algorithm: r.alg, Payload: r.size, Concurrency: conc, Audit: mode.name}
					var err error
					if row.InProc, err = b.mode("inproc", conc, r.alg, r.size, "--config", filepath.Join(cur.dir, "keygrid.yaml"),
						"--data-dir", filepath.Join(cur.dir, "data"), "--audit", filepath.Join(b.dir, "sweep-inproc-audit.log"), "--key", r.key,
						"--duration", o.sweepDuration.String(), "--warmup", o.sweepWarmup.String()); err != nil {
						return err
					}
					// This build and the other one in turns, the order
					// swapped at each concurrency.
					order := []*gateway{cur, old}
					if i%2 == 1 {
						order = []*gateway{old, cur}
					}
					for _, g := range order {
						if g == nil {
							continue
						}
						res, err := b.load(b.gateway, g, conc, r.key, r.alg, r.size, o.sweepDuration, o.sweepWarmup)
						if err != nil {
							return err
						}
						if g == cur {
							row.HTTP = res
						} else {
							row.Compare = &res
						}
					}
					if row.Compare != nil && row.Compare.OpsPerSec > 0 {
						row.CompareRatio = row.HTTP.OpsPerSec / row.Compare.OpsPerSec
					}
					sw.Rows = append(sw.Rows, row)
				}
			}
			return nil
		}()
		cur.stop()
		old.stop()
		if err != nil {
			return nil, err
		}
	}
	return sw, nil
}

// parseInts reads "1,4,16,64".
func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("concurrency %q is not a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}
