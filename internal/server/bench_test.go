package server_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/duration"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// BenchmarkRESTSign is the REST path around a software signature and an
// AES-GCM encryption: HTTP, JSON, authentication, the service, the audit
// record; rate limits off, audit fsync every 10 ms (so that the disk does
// not set the pace), the client and server in this process.
//
//	go test -run '^$' -bench RESTSign -benchtime 3s ./internal/server/
func BenchmarkRESTSign(b *testing.B) {
	dir := b.TempDir()
	cfg, err := config.Load("", config.Flags{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	cfg.Limits.RatePerPrincipal = -1
	cfg.Audit.FsyncInterval = duration.Duration(10 * time.Millisecond)
	srv, err := server.New(context.Background(), cfg, provider.Registry{"software": software.New}, slog.New(slog.NewTextHandler(io.Discard, nil)), "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	tok, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		b.Fatal(err)
	}
	c, err := client.New(ts.URL, client.WithHTTPClient(ts.Client()), client.WithToken(strings.TrimSpace(string(tok))))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, k := range []apitypes.CreateKeyRequest{
		{Name: "ec", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}},
		{Name: "aes", KeySpec: apitypes.KeySpec{KeyType: "AES", KeySize: 256}},
	} {
		if _, err := c.CreateKey(ctx, k); err != nil {
			b.Fatal(err)
		}
	}
	data := make([]byte, 1024)
	b.Run("ES256", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.Sign(ctx, "ec", apitypes.SignRequest{Data: data[:32]}); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("A256GCM-1KiB", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.Encrypt(ctx, "aes", apitypes.EncryptRequest{Plaintext: data}); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
