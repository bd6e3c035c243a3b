package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// `go run ./bench audit`: the cost of the audit log at concurrency 1, in one
// run. It measures
//
//  1. one fdatasync of the audit disk: a 400-byte line appended to a file
//     in the gateway's data directory (where audit.log lives) and
//     fdatasync'd, which is what a durable record needs at the least;
//  2. the raw ES256 operation of the software provider (Go's crypto on an
//     in-memory P-256 key, hash included: `bench stdlib`);
//  3. ES256 over HTTP at concurrency 1 against `keygrid-hsm serve` with the
//     default durable audit and with audit.fsync_interval 10ms, for this
//     build and, with -compare-commit, for an older one built from git;
//
// in alternating rounds, and reports the medians and the added p50 of each
// HTTP row over the raw operation against the targets of issue 17: durable
// ≤ one fdatasync + 100 µs, relaxed ≤ 100 µs.

func init() {
	if len(os.Args) < 2 || os.Args[1] != "audit" {
		return
	}
	fs := flag.NewFlagSet("audit", flag.ExitOnError)
	var o auditOptions
	fs.DurationVar(&o.duration, "duration", 2*time.Second, "measured time per HTTP measurement")
	fs.DurationVar(&o.warmup, "warmup", 300*time.Millisecond, "unmeasured warm-up per HTTP measurement")
	fs.IntVar(&o.rounds, "rounds", 3, "alternating rounds of every measurement")
	fs.IntVar(&o.syncs, "syncs", 1000, "fdatasyncs per round")
	fs.StringVar(&o.compareCommit, "compare-commit", "", "a git commit to build and measure beside this tree (e.g. cf4011f)")
	out := fs.String("out", "bench/results/audit-latest.json", "where to write the JSON report (empty: nowhere)")
	fs.Parse(os.Args[2:])
	rep, err := runAudit(context.Background(), o)
	sectionExit("audit", rep, err, printAudit, *out)
}

type auditOptions struct {
	duration, warmup time.Duration
	rounds, syncs    int
	compareCommit    string
}

// AuditRow is one HTTP configuration: medians over the rounds.
type AuditRow struct {
	Build   string  `json:"build"` // "this", the compared commit, or "floor" (bench floor --es256; Audit "none")
	Audit   string  `json:"audit"` // "durable" or "fsync 10ms"
	P50us   float64 `json:"p50_us"`
	P99us   float64 `json:"p99_us"`
	Ops     float64 `json:"ops_per_sec"`
	AddedUs float64 `json:"added_p50_us_over_raw"`
	// TargetUs is the bound on AddedUs: one fdatasync + 100 µs
	// (durable) or 100 µs (relaxed).
	TargetUs float64   `json:"target_us"`
	Rounds   []float64 `json:"p50_us_per_round"`
}

// AuditReport is what `bench audit` writes.
type AuditReport struct {
	Time          time.Time  `json:"time"`
	Machine       string     `json:"machine"`
	AuditFS       string     `json:"audit_dir"`
	Duration      string     `json:"duration_per_measurement"`
	Rounds        int        `json:"rounds"`
	FdatasyncP50  float64    `json:"fdatasync_p50_us"`
	FdatasyncP99  float64    `json:"fdatasync_p99_us"`
	RawES256P50   float64    `json:"raw_es256_p50_us"`
	RawES256Ops   float64    `json:"raw_es256_ops_per_sec"`
	Rows          []AuditRow `json:"rows"`
	TotalSeconds  float64    `json:"total_seconds"`
	CompareCommit string     `json:"compare_commit,omitempty"`
}

type auditTarget struct {
	build, bin, fsync string
	g                 *gateway
	p50, p99, ops     []float64
}

func runAudit(ctx context.Context, o auditOptions) (*AuditReport, error) {
	start := time.Now()
	dir, err := os.MkdirTemp("", "keygrid-bench-audit-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	bins := map[string]string{"this": filepath.Join(dir, "keygrid-hsm")}
	fmt.Fprintln(os.Stderr, "bench audit: building keygrid-hsm")
	if err := goBuild(".", bins["this"]); err != nil {
		return nil, err
	}
	builds := []string{"this"}
	if c := o.compareCommit; c != "" {
		fmt.Fprintln(os.Stderr, "bench audit: building keygrid-hsm at", c)
		src := filepath.Join(dir, "src-"+c)
		if err := os.MkdirAll(src, 0o700); err != nil {
			return nil, err
		}
		arch := exec.Command("sh", "-c", "git archive "+c+" | tar -x -C "+src)
		if out, err := arch.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("git archive %s: %v\n%s", c, err, out)
		}
		bins[c] = filepath.Join(dir, "keygrid-hsm-"+c)
		if err := goBuild(src, bins[c]); err != nil {
			return nil, err
		}
		builds = append(builds, c)
	}
	env := append(os.Environ(), sweepMasterKey+"="+strings.Repeat("5a", 32))
	var targets []*auditTarget
	defer func() {
		for _, t := range targets {
			t.g.stop()
		}
	}()
	for _, build := range builds {
		for _, fsync := range []string{"", "10ms"} {
			t := &auditTarget{build: build, bin: bins[build], fsync: fsync}
			if t.g, err = startSweepGateway(t.bin, filepath.Join(dir, build+"-"+orZero(fsync)), fsync, env); err != nil {
				return nil, err
			}
			targets = append(targets, t)
			if err := t.g.keys(ctx); err != nil {
				return nil, err
			}
		}
	}
	floor := &auditTarget{build: "floor", bin: bins["this"]}
	if floor.g, err = startFloor(self, "--es256"); err != nil {
		return nil, err
	}
	targets = append(targets, floor)
	auditDir := filepath.Join(targets[0].g.dir, "data")
	rep := &AuditReport{Time: time.Now().UTC(), Machine: machine(), AuditFS: auditDir, Duration: o.duration.String(),
		Rounds: o.rounds, CompareCommit: o.compareCommit}
	var syncP50, syncP99, rawP50, rawOps []float64
	b := &bed{}
	for round := range o.rounds {
		fmt.Fprintf(os.Stderr, "bench audit: round %d/%d\n", round+1, o.rounds)
		p50, p99, err := measureFdatasync(auditDir, o.syncs)
		if err != nil {
			return nil, err
		}
		syncP50, syncP99 = append(syncP50, p50), append(syncP99, p99)
		raw, err := rawES256(self, o)
		if err != nil {
			return nil, err
		}
		rawP50, rawOps = append(rawP50, raw.P50us), append(rawOps, raw.OpsPerSec)
		for _, t := range targets {
			r, err := b.load(t.bin, t.g, 1, "sweep-ec", "ES256", 32, o.duration, o.warmup)
			if err != nil {
				return nil, err
			}
			t.p50, t.p99, t.ops = append(t.p50, r.P50us), append(t.p99, r.P99us), append(t.ops, r.OpsPerSec)
		}
	}
	rep.FdatasyncP50, rep.FdatasyncP99 = median(syncP50), median(syncP99)
	rep.RawES256P50, rep.RawES256Ops = median(rawP50), median(rawOps)
	for _, t := range targets {
		row := AuditRow{Build: t.build, Audit: "durable", P50us: median(t.p50), P99us: median(t.p99), Ops: median(t.ops),
			Rounds: t.p50, TargetUs: rep.FdatasyncP50 + 100}
		switch {
		case t == floor:
			row.Audit, row.TargetUs = "none", 0
		case t.fsync != "":
			row.Audit, row.TargetUs = "fsync "+t.fsync, 100
		}
		row.AddedUs = row.P50us - rep.RawES256P50
		rep.Rows = append(rep.Rows, row)
	}
	rep.TotalSeconds = time.Since(start).Seconds()
	return rep, nil
}

func goBuild(dir, out string) error {
	cmd := exec.Command("go", "build", "-o", out, "./cmd/keygrid-hsm")
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build in %s: %v\n%s", dir, err, b)
	}
	return nil
}

// measureFdatasync appends a 400-byte line to a file in dir and
// fdatasyncs it, n times; it returns the p50 and p99 in µs.
func measureFdatasync(dir string, n int) (float64, float64, error) {
	f, err := os.CreateTemp(dir, "fdatasync-probe-")
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	line := append(bytes.Repeat([]byte("x"), 399), '\n')
	d := make([]float64, 0, n)
	for range n {
		t := time.Now()
		if _, err := f.Write(line); err != nil {
			return 0, 0, err
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return 0, 0, err
		}
		d = append(d, float64(time.Since(t).Nanoseconds())/1e3)
	}
	slices.Sort(d)
	return d[len(d)/2], d[len(d)*99/100], nil
}

// rawES256 runs `bench stdlib` (the software provider's crypto) at
// concurrency 1 in its own process.
func rawES256(self string, o auditOptions) (Result, error) {
	cmd := exec.Command(self, "stdlib", "-alg", "ES256", "-size", "32", "-concurrency", "1",
		"-duration", o.duration.String(), "-warmup", o.warmup.String())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return Result{}, fmt.Errorf("bench stdlib: %w", err)
	}
	var r Result
	return r, json.Unmarshal(out.Bytes(), &r)
}

func printAudit(w io.Writer, r *AuditReport) {
	fmt.Fprintf(w, "audit cost at concurrency 1 (%s, %d rounds of %s; medians)\n", r.Machine, r.Rounds, r.Duration)
	fmt.Fprintf(w, "  one fdatasync of the audit disk (400-byte append): p50 %.0f µs, p99 %.0f µs\n", r.FdatasyncP50, r.FdatasyncP99)
	fmt.Fprintf(w, "  raw ES256 (software provider's crypto): p50 %.0f µs (%.0f/s)\n", r.RawES256P50, r.RawES256Ops)
	fmt.Fprintf(w, "  %-8s %-11s %8s %8s %8s %10s %10s  %s\n", "build", "audit", "ops/s", "p50 µs", "p99 µs", "added p50", "target", "p50 per round")
	for _, x := range r.Rows {
		verdict := "met"
		switch {
		case x.Build == "floor":
			verdict = "(net/http and the raw operation only)"
		case x.AddedUs > x.TargetUs:
			verdict = "MISSED"
		}
		fmt.Fprintf(w, "  %-8s %-11s %8.0f %8.0f %8.0f %10.0f %7.0f %-6s %v\n", x.Build, x.Audit, x.Ops, x.P50us, x.P99us, x.AddedUs, x.TargetUs, verdict, x.Rounds)
	}
}
