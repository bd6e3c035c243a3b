package main

import (
	"context"
	"crypto/rand"
	"flag"
	"io"
	"log/slog"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// inprocMain is the gateway without HTTP: the key service in this process
// (metadata lookup, policy, provider, audit record, metrics) on the same
// configuration and data directory as the server.
func inprocMain(args []string) (Result, error) {
	fs := flag.NewFlagSet("inproc", flag.ContinueOnError)
	var c common
	c.register(fs)
	cfgPath := fs.String("config", "", "gateway configuration")
	dataDir := fs.String("data-dir", "", "data directory")
	auditPath := fs.String("audit", "", "audit log of this process (the server keeps its own)")
	key := fs.String("key", "", "key name")
	if err := fs.Parse(args); err != nil {
		return Result{}, err
	}
	a, err := alg.Lookup(c.alg)
	if err != nil {
		return Result{}, err
	}
	cfg, err := config.Load(*cfgPath, config.Flags{DataDir: *dataDir})
	if err != nil {
		return Result{}, err
	}
	cfg.Audit.Path = *auditPath
	ctx := context.Background()
	srv, err := server.New(ctx, cfg, registry.All(), slog.New(slog.NewTextHandler(io.Discard, nil)), "bench")
	if err != nil {
		return Result{}, err
	}
	defer srv.Close()
	svc := srv.Service()
	ctx = service.WithCaller(ctx, service.Caller{Principal: "bench", Auth: &auth.Principal{Name: "bench", Role: auth.RoleAdmin}})
	data := make([]byte, c.size)
	rand.Read(data)
	op := func(int) error {
		_, err := svc.Sign(ctx, service.SignRequest{Key: *key, Data: data, Algorithm: c.alg})
		return err
	}
	if a.KeyType == alg.AES {
		op = func(int) error {
			_, err := svc.Encrypt(ctx, service.EncryptRequest{Key: *key, Plaintext: data, Algorithm: c.alg})
			return err
		}
	}
	return measure(c.concurrency, c.warmup, c.duration, op), nil
}
