package pkcs11

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// BenchmarkSignKeyCount signs with ES256 through the provider, rotating over
// 10 keys, on a token holding 10 and then 2,000 keys: with object handles
// cached, the number of objects on the token must not matter.
//
//	go test -run '^$' -bench SignKeyCount -benchtime 3s ./internal/provider/pkcs11/
func BenchmarkSignKeyCount(b *testing.B) {
	p := openTest(b, 2)
	ctx := context.Background()
	spec := alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}
	info, _ := alg.Lookup("ES256")
	digest := alg.Digest(info, []byte("bench"))
	var refs []string
	grow := func(n int) {
		for len(refs) < n {
			k, err := p.CreateKey(ctx, provider.CreateKeyRequest{ObjectID: newID(), Label: fmt.Sprintf("bench-%d", len(refs)),
				Spec: spec, Usage: []alg.Usage{alg.UsageSign}})
			if err != nil {
				b.Fatal(err)
			}
			refs = append(refs, k.Ref)
		}
	}
	for _, n := range []int{10, 2000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			grow(n)
			use := refs[len(refs)-10:] // the newest ten: their handles are not cached yet
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := p.Sign(ctx, provider.SignRequest{Ref: use[i%len(use)], Spec: spec, Algorithm: info, Input: digest}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkIsolation measures what isolation: process costs per operation
// against in-process, on SoftHSM2: ES256 signatures and AES-256-GCM
// encryptions of 1 KiB, one at a time (p50 latency) and from 16
// goroutines (throughput).
//
//	go test -run '^$' -bench Isolation -benchtime 2s ./internal/provider/pkcs11/
func BenchmarkIsolation(b *testing.B) {
	ctx := context.Background()
	es256, _ := alg.Lookup("ES256")
	a256, _ := alg.Lookup("A256GCM")
	ecSpec := alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}
	aesSpec := alg.Spec{Type: alg.AES, Size: 256}
	digest := alg.Digest(es256, []byte("bench"))
	plaintext := make([]byte, 1024)
	for _, isolation := range []string{IsolationInProcess, IsolationProcess} {
		c := testConfig(b, 16)
		c.Isolation = isolation
		p, err := Open(ctx, "bench", TypePKCS11, c, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		ec := create(b, p, ecSpec, []alg.Usage{alg.UsageSign}, "bench-ec")
		aes := create(b, p, aesSpec, []alg.Usage{alg.UsageEncrypt, alg.UsageDecrypt}, "bench-aes")
		ops := []struct {
			name string
			op   func() error
		}{
			{"ES256", func() error {
				_, err := p.Sign(ctx, provider.SignRequest{Ref: ec.Ref, Spec: ecSpec, Algorithm: es256, Input: digest})
				return err
			}},
			{"A256GCM-1KiB", func() error {
				_, err := p.Encrypt(ctx, provider.EncryptRequest{Ref: aes.Ref, Spec: aesSpec, Algorithm: a256, Plaintext: plaintext})
				return err
			}},
		}
		for _, o := range ops {
			b.Run(fmt.Sprintf("%s/%s/c1", isolation, o.name), func(b *testing.B) {
				lat := make([]time.Duration, 0, b.N)
				for i := 0; i < b.N; i++ {
					start := time.Now()
					if err := o.op(); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Since(start))
				}
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
			})
			b.Run(fmt.Sprintf("%s/%s/c16", isolation, o.name), func(b *testing.B) {
				b.SetParallelism((16 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := o.op(); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
			})
		}
		p.Close()
	}
}
