package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/server"
)

func newLogger(c *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Log.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func cmdServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (YAML); none: the embedded default")
	listen := fs.String("listen", "", "listen address host:port (env KEYGRID_LISTEN; default 127.0.0.1:8080)")
	dataDir := fs.String("data-dir", "", "data directory (env KEYGRID_DATA_DIR; default ./data)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// Everything the server writes (database, WAL, keystore, audit log,
	// master key) is for its own user only.
	syscall.Umask(0o077)
	cfg, err := config.Load(*cfgPath, config.Flags{Listen: *listen, DataDir: *dataDir})
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	srv, err := server.New(ctx, cfg, registry.All(), log, version)
	if err != nil {
		return err
	}
	defer srv.Close()
	rotateOnHUP(ctx, srv, log)
	return srv.Serve(ctx, nil)
}

// rotateOnHUP rotates the audit log on each SIGHUP until ctx ends.
func rotateOnHUP(ctx context.Context, srv *server.Server, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if _, err := srv.RotateAudit(); err != nil {
					log.Error("audit log rotation on SIGHUP failed", "err", err)
				}
			}
		}
	}()
}
