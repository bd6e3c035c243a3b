package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// BenchmarkReplicasES256Sign measures ES256 sign throughput through one
// gateway process and through two, both behind the same client (this test
// process, 16 concurrent requests, spread round-robin over the replicas as a
// load balancer would), with the key metadata in PostgreSQL and the key on
// one SoftHSM2 token. One SoftHSM2 process is held to about one core by its
// locks; a second process on the same token works beside it.
//
//	go test -run '^$' -bench ReplicasES256Sign -benchtime 5s ./internal/e2e/
//
// Compare the signs/s of the two sub-benchmarks of one run: on a small
// machine the client, PostgreSQL and the replicas share the same cores. The
// CPU time per sign of each part (gateways, PostgreSQL, the client) is
// reported beside it, to tell which one the machine runs out of.
func BenchmarkReplicasES256Sign(b *testing.B) {
	bed := newReplicaBed(b)
	dsn := bed.pg.NewDatabase(b)
	a := bed.start(b, "A", dsn)
	bb := bed.start(b, "B", dsn)
	ctx := context.Background()
	k, err := a.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: bed.n("bench-es256"), KeySpec: ecSpec})
	if err != nil {
		b.Fatal(err)
	}
	// Both replicas have found the key's objects before the clock starts.
	for _, r := range []*replica{a, bb} {
		if _, err := r.C.Sign(ctx, k.Name, apitypes.SignRequest{Data: []byte("warm")}); err != nil {
			b.Fatal(err)
		}
	}
	digest := make([]byte, 32)
	for _, c := range []struct {
		name     string
		replicas []*client.Client
	}{
		{"replicas=1", []*client.Client{a.C}},
		{"replicas=2", []*client.Client{a.C, bb.C}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var next atomic.Uint64
			var failed atomic.Int64
			b.SetParallelism(8) // 16 requests in flight on 2 cores
			gw0, pg0, self0 := cpuOf(a.cmd.Process.Pid)+cpuOf(bb.cmd.Process.Pid), postgresCPU(bed), selfCPU()
			start := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					cl := c.replicas[next.Add(1)%uint64(len(c.replicas))]
					if _, err := cl.Sign(ctx, k.Name, apitypes.SignRequest{Digest: digest, Algorithm: "ES256"}); err != nil {
						if failed.Add(1) == 1 {
							b.Error(fmt.Errorf("sign: %w", err))
						}
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "signs/s")
			per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) }
			b.ReportMetric(per(cpuOf(a.cmd.Process.Pid)+cpuOf(bb.cmd.Process.Pid)-gw0), "gateway-cpu-µs/op")
			b.ReportMetric(per(postgresCPU(bed)-pg0), "postgres-cpu-µs/op")
			b.ReportMetric(per(selfCPU()-self0), "client-cpu-µs/op")
		})
	}
}

// cpuOf is the user+system CPU time a process has used (Linux /proc).
func cpuOf(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name in parentheses: state is field 3,
	// utime 14, stime 15 (clock ticks of 1/100 s on Linux).
	rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// parentOf is the parent pid of a process.
func parentOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// postgresCPU is the CPU time of the bed's PostgreSQL server: the
// postmaster (its pid is the first line of postmaster.pid) and its children.
func postgresCPU(bed *replicaBed) time.Duration {
	f, err := os.Open(filepath.Join(bed.pg.Dir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	master, _ := strconv.Atoi(strings.TrimSpace(sc.Text()))
	total := cpuOf(master)
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		pid, _ := strconv.Atoi(filepath.Base(p))
		if pid != master && parentOf(pid) == master {
			total += cpuOf(pid)
		}
	}
	return total
}

// selfCPU is this process's CPU time: the client's.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
