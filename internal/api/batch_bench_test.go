package api

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// BenchmarkBatchSign compares ES256 signatures per second on the software
// provider over real HTTP: single sign requests against 100-item batches,
// at the same client concurrency (GOMAXPROCS × 4 goroutines). The store is
// the server's default: SQLite behind the key cache of 2 s.
//
//	go test -run '^$' -bench BatchSign -benchtime 3s ./internal/api/
func BenchmarkBatchSign(b *testing.B) {
	l, err := audit.Open(filepath.Join(b.TempDir(), "audit.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	s := newStack(b, l, func(st store.Store) store.Store { return store.WithCache(st, 2*time.Second) })
	srv := httptest.NewServer(s.api)
	defer srv.Close()
	s.mustDo(b, http.MethodPost, "/api/v1/keys", `{"name":"bench-ec","key_spec":{"key_type":"EC","curve":"P-256"}}`, http.StatusCreated)
	item := `{"op":"sign","key":"bench-ec","data":"aGVsbG8="}`
	items := make([]string, 100)
	for i := range items {
		items[i] = item
	}
	batch := []byte(`{"items":[` + strings.Join(items, ",") + `]}`)
	// Connections are kept for every client goroutine: a single request
	// does not pay for a TCP connection (the default keeps 2 per host).
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	post := func(b *testing.B, path string, body []byte) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
		resp, err := client.Do(req)
		if err != nil {
			b.Error(err)
			return
		}
		io.Copy(io.Discard, resp.Body) // read to the end, so the connection is reused
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Errorf("%s: %d", path, resp.StatusCode)
		}
	}
	b.Run("single", func(b *testing.B) {
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				post(b, "/api/v1/keys/bench-ec/sign", []byte(`{"data":"aGVsbG8="}`))
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
	})
	b.Run("batch100", func(b *testing.B) {
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				post(b, "/api/v1/batch", batch)
			}
		})
		b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "sigs/s")
	})
}
