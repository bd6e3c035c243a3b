package e2e

import (
	"context"
	"fmt"
	"sync/atomic"
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
// machine the client, PostgreSQL and the replicas share the same cores.
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
		})
	}
}
