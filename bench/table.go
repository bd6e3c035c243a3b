package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// printTable prints the report as one table.
func printTable(w io.Writer, r Report) {
	if len(r.Rows) > 0 {
		fmt.Fprintf(w, "KeyGrid HSM bench — %s — %s per measurement\n\n", r.Machine, r.Duration)
		printRows(w, r)
	} else {
		fmt.Fprintf(w, "KeyGrid HSM bench — %s\n\n", r.Machine)
	}
	if r.Sweep != nil {
		printSweep(w, r.Sweep)
	}
	fmt.Fprintf(w, "total %.0fs\n", r.TotalSeconds)
}

// printRows prints the HSM and software rows at one concurrency.
func printRows(w io.Writer, r Report) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "provider\talgorithm\tc\traw ops/s\tp50µs\tp99µs\tinproc ops/s\tp50µs\tp99µs\thttp ops/s\tp50µs\tp99µs\tinproc/raw\thttp/raw\tinproc*/raw\thttp* ops/s\thttp*/raw\t")
	for _, x := range r.Rows {
		name := x.Algorithm
		if x.Payload >= 1024 {
			name = fmt.Sprintf("%s %dKiB", x.Algorithm, x.Payload/1024)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.2f\t%.2f\t%.2f\t%.0f\t%.2f\t\n", x.Provider, name, x.Concurrency,
			x.Raw.OpsPerSec, x.Raw.P50us, x.Raw.P99us, x.InProc.OpsPerSec, x.InProc.P50us, x.InProc.P99us,
			x.HTTP.OpsPerSec, x.HTTP.P50us, x.HTTP.P99us, x.InProcRatio, x.HTTPRatio, x.InProcBatchedRatio, x.HTTPBatched.OpsPerSec, x.HTTPBatchedRatio)
	}
	tw.Flush()
	fmt.Fprintln(w, "inproc*, http*: with audit.fsync_interval 10ms (records written before each response, fsynced every 10 ms)")
	l := r.LatencyC1
	fmt.Fprintf(w, "\nconcurrency 1, hsm ES256: raw p50 %.0fµs, http p50 %.0fµs: added latency %.0fµs (http/raw ops %.2f); http* p50 %.0fµs: added %.0fµs\n",
		l.Raw.P50us, l.HTTP.P50us, r.AddedLatencyP50, l.HTTPRatio, l.HTTPBatched.P50us, r.AddedLatencyP50Batched)
	if s := r.Scale; s != nil {
		fmt.Fprintf(w, "key count, hsm ES256 over http: %d keys %.0f ops/s, %d keys %.0f ops/s: ratio %.2f; raw PKCS#11 on the same token: %.0f → %.0f ops/s, ratio %.2f (filling the token took %.0fs)\n",
			s.FewKeys, s.Few.OpsPerSec, s.ManyKeys, s.Many.OpsPerSec, s.Ratio, s.RawFew.OpsPerSec, s.RawMany.OpsPerSec, s.RawRatio, s.FillSecs)
	}
	fmt.Fprintln(w)
}

// vaultClass are the rates of an in-memory, audit-less OpenBao transit
// (ES256 sign over HTTP) measured on this machine kind in issue 17, the
// point of comparison of the sweep's targets.
var vaultClass = map[int]float64{1: 2354, 4: 5562, 16: 6052}

// printSweep prints the sweep: one line per algorithm, concurrency and
// audit mode.
func printSweep(w io.Writer, s *Sweep) {
	fmt.Fprintf(w, "sweep: software provider, %s per measurement; cpu µs/req from /proc (gateway) and rusage (load generator)\n", s.Duration)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	hdr := "algorithm\taudit\tc\tinproc ops/s\tp50µs\thttp ops/s\tp50µs\tp99µs\tgw cpu µs/req\tclient cpu µs/req\tES256 vs OpenBao ref\t"
	if s.Compare != "" {
		hdr += "old ops/s\told p50µs\told gw cpu µs/req\tnew/old\t"
	}
	fmt.Fprintln(tw, hdr)
	for _, x := range s.Rows {
		name := x.Algorithm
		if x.Payload >= 1024 {
			name = fmt.Sprintf("%s %dKiB", x.Algorithm, x.Payload/1024)
		}
		vs := "-"
		if ref, ok := vaultClass[x.Concurrency]; ok && x.Algorithm == "ES256" {
			vs = fmt.Sprintf("%.2f×", x.HTTP.OpsPerSec/ref)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.1f\t%.1f\t%s\t", name, x.Audit, x.Concurrency,
			x.InProc.OpsPerSec, x.InProc.P50us, x.HTTP.OpsPerSec, x.HTTP.P50us, x.HTTP.P99us, x.HTTP.ServerCPUus, x.HTTP.ClientCPUus, vs)
		if c := x.Compare; c != nil {
			fmt.Fprintf(tw, "%.0f\t%.0f\t%.1f\t%.2f\t", c.OpsPerSec, c.P50us, c.ServerCPUus, x.CompareRatio)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	fmt.Fprintln(w, "OpenBao ref: in-memory, audit-less OpenBao transit ES256 from issue 17 (2,354/s at c=1, 5,562/s at c=4, 6,052/s at c=16); not measured in this run")
	if s.Compare != "" {
		fmt.Fprintln(w, "old:", s.Compare, "(measured in the same run, interleaved)")
	}
	fmt.Fprintln(w)
}
