// Command bench puts the gateway beside the raw HSM in one run (`make bench`).
//
// On a fresh SoftHSM2 token, for RSA-2048 RS256 and PS256, ECDSA P-256 ES256,
// Ed25519 EdDSA and AES-256-GCM on 1 KiB, it measures at the same
// concurrency (= HSM sessions):
//
//  1. raw: a tight C_SignInit/C_Sign (or C_EncryptInit/C_Encrypt) loop
//     through miekg/pkcs11 on the same token key, one session per worker;
//  2. inproc: the key service in process (store lookup, policy, provider,
//     audit, metrics), no HTTP;
//  3. http: the full HTTP API of a `keygrid-hsm serve` process, driven by
//     `keygrid-hsm bench` over keep-alive connections;
//
// and the same three for the software provider against Go's standard
// library. Each mode runs in its own process. It prints one table with
// ops/s, p50/p99 and the ratios 2/1 and 3/1, the added latency at
// concurrency 1, the sign throughput with 10 and with 2,000 keys on the
// token, and writes the table as JSON (bench/results/latest.json).
//
// Then the sweep (sweep.go): the software provider, ES256 and AES-GCM on
// 1 KiB, at concurrency 1, 4, 16 and 64 (-sweep), with the default durable
// audit and with audit.fsync_interval 10ms, over HTTP and in process, with
// the gateway's and the load generator's CPU time per request; -compare
// measures an older build beside this one in the same run.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "raw":
			os.Exit(runMode(os.Args[2:], rawMain))
		case "inproc":
			os.Exit(runMode(os.Args[2:], inprocMain))
		case "stdlib":
			os.Exit(runMode(os.Args[2:], stdlibMain))
		case "fill":
			if err := fillMain(os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, "bench fill:", err)
				os.Exit(1)
			}
			os.Exit(0)
		}
	}
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	o := options{}
	fs.DurationVar(&o.duration, "duration", 3*time.Second, "measured time per row and mode")
	fs.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "unmeasured warm-up per row and mode")
	fs.IntVar(&o.concurrency, "concurrency", 2, "workers = HSM sessions")
	fs.IntVar(&o.scaleKeys, "scale-keys", 2000, "keys on the token for the key-count row (0: skip)")
	fs.StringVar(&o.out, "out", "bench/results/latest.json", "where to write the JSON table")
	sweep := fs.String("sweep", "1,4,16,64", "concurrencies of the software-provider sweep (both audit modes, HTTP and in process; empty: no sweep)")
	fs.DurationVar(&o.sweepDuration, "sweep-duration", 2*time.Second, "measured time per sweep measurement")
	fs.DurationVar(&o.sweepWarmup, "sweep-warmup", 500*time.Millisecond, "unmeasured warm-up per sweep measurement")
	fs.StringVar(&o.compare, "compare", "", "another keygrid-hsm binary (an older build) to measure in the sweep, interleaved with this one")
	fs.BoolVar(&o.sweepOnly, "sweep-only", false, "run only the sweep (no SoftHSM rows)")
	fs.Parse(os.Args[1:])
	var err error
	if o.sweep, err = parseInts(*sweep); err != nil {
		fmt.Fprintln(os.Stderr, "bench: -sweep:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
