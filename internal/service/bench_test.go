package service_test

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/metrics"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// BenchmarkSignES256 is the service's cost around a software ES256
// signature: metadata lookup, policy, provider, audit record, metrics;
// with the key cache (storage.cache_ttl) and without.
//
//	go test -run '^$' -bench SignES256 -cpuprofile cpu.out ./internal/service/
func BenchmarkSignES256(b *testing.B) {
	b.Run("read-through", func(b *testing.B) { benchSign(b, 0) })
	b.Run("cache", func(b *testing.B) { benchSign(b, 2*time.Second) })
}

func benchSign(b *testing.B, cacheTTL time.Duration) {
	ctx := context.Background()
	dir := b.TempDir()
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, "meta.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	al, err := audit.Open(filepath.Join(dir, "audit.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer al.Close()
	mk := make([]byte, 32)
	rand.Read(mk)
	sp, err := software.Open("software", filepath.Join(dir, "ks"), mk)
	if err != nil {
		b.Fatal(err)
	}
	svc, err := service.New(service.Options{Store: store.WithCache(st, cacheTTL), Providers: []provider.Provider{sp}, Audit: al, Metrics: metrics.New("bench")})
	if err != nil {
		b.Fatal(err)
	}
	ctx = service.WithCaller(ctx, service.Caller{Principal: "bench", Auth: &auth.Principal{Name: "bench", Role: auth.RoleAdmin}})
	if _, err := svc.CreateKey(ctx, service.CreateKeyRequest{Name: "ec", Spec: service.KeySpec{KeyType: "EC", Curve: "P-256"}}); err != nil {
		b.Fatal(err)
	}
	req := service.SignRequest{Key: "ec", Data: []byte("benchmark payload of 32 bytes..")}
	b.ReportAllocs()
	b.SetParallelism(1)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := svc.Sign(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
}
