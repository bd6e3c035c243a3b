package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"
)

// Result is one measurement: one mode of one row.
type Result struct {
	OpsPerSec float64 `json:"ops_per_sec"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	Ops       int     `json:"ops"`
	Errors    int     `json:"errors"`
}

// parseLoad reads the JSON of `keygrid-hsm bench --output json`; a run with
// errors or no request is an error naming what (the load's description).
// Ops counts the successful requests.
func parseLoad(out []byte, what string) (Result, error) {
	var r struct {
		OpsPerSec float64 `json:"ops_per_sec"`
		P50us     float64 `json:"p50_us"`
		P99us     float64 `json:"p99_us"`
		Requests  int64   `json:"requests"`
		Errors    int64   `json:"errors"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return Result{}, fmt.Errorf("keygrid-hsm bench %s: %w", what, err)
	}
	if r.Errors > 0 || r.Requests == 0 {
		return Result{}, fmt.Errorf("keygrid-hsm bench %s: %d errors of %d requests", what, r.Errors, r.Requests)
	}
	return Result{OpsPerSec: r.OpsPerSec, P50us: r.P50us, P99us: r.P99us, Ops: int(r.Requests)}, nil
}

// common are the flags every measuring mode takes.
type common struct {
	alg         string
	size        int
	concurrency int
	duration    time.Duration
	warmup      time.Duration
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.alg, "alg", "ES256", "algorithm")
	fs.IntVar(&c.size, "size", 32, "payload bytes")
	fs.IntVar(&c.concurrency, "concurrency", 2, "workers")
	fs.DurationVar(&c.duration, "duration", 3*time.Second, "measured time")
	fs.DurationVar(&c.warmup, "warmup", 500*time.Millisecond, "warm-up")
}

// runMode runs a measuring mode in this process and prints its Result as
// JSON on stdout.
func runMode(args []string, mode func([]string) (Result, error)) int {
	r, err := mode(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

// measure runs op from n workers: warm-up, then the measured period. Each
// worker's op gets the worker's index.
func measure(n int, warmup, dur time.Duration, op func(w int) error) Result {
	run := func(d time.Duration, record bool) ([]time.Duration, int) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		var (
			mu     sync.Mutex
			all    []time.Duration
			errors int
			wg     sync.WaitGroup
		)
		for w := 0; w < n; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lat := make([]time.Duration, 0, 1<<14)
				errs := 0
				for ctx.Err() == nil {
					t := time.Now()
					if err := op(w); err != nil {
						errs++
						if errs == 1 && record {
							fmt.Fprintln(os.Stderr, "bench: operation failed:", err)
						}
						continue
					}
					if record {
						lat = append(lat, time.Since(t))
					}
				}
				mu.Lock()
				all = append(all, lat...)
				errors += errs
				mu.Unlock()
			}()
		}
		wg.Wait()
		return all, errors
	}
	if warmup > 0 {
		run(warmup, false)
	}
	start := time.Now()
	lat, errs := run(dur, true)
	el := time.Since(start)
	slices.Sort(lat)
	r := Result{Ops: len(lat), Errors: errs, OpsPerSec: float64(len(lat)) / el.Seconds()}
	if len(lat) > 0 {
		r.P50us = float64(lat[len(lat)/2].Microseconds())
		r.P99us = float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds())
	}
	return r
}
