package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/fsutil"
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
	pidFile := filepath.Join(cfg.DataDir, pidFileName)
	if err := fsutil.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		log.Warn("could not write the pid file; keygrid-hsm reload will not find this server", "path", pidFile, "err", err)
	} else {
		defer os.Remove(pidFile)
	}
	flags := config.Flags{Listen: *listen, DataDir: *dataDir}
	onHUP(ctx, srv, log, func() (*config.Config, error) { return config.Load(*cfgPath, flags) })
	return srv.Serve(ctx, nil)
}

// pidFileName is the file in the data directory that holds the serving
// process's id, for keygrid-hsm reload.
const pidFileName = "keygrid-hsm.pid"

// onHUP, on each SIGHUP until ctx ends, reloads the configuration (the
// principals, tokens, limits and XKS credentials; a bad file keeps the
// running configuration) and then rotates the audit log.
func onHUP(ctx context.Context, srv *server.Server, log *slog.Logger, load func() (*config.Config, error)) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				cfg, err := load()
				if err == nil {
					err = srv.Reload(ctx, cfg, registry.All().Types())
				} else if aerr := srv.Service().RecordEvent(ctx, "config_reload", "refused: the configuration file does not load; the running one is kept", err); aerr != nil {
					log.Error("audit record of a refused reload not written", "err", aerr)
				}
				if err != nil {
					log.Error("configuration reload on SIGHUP refused; the running configuration is kept", "err", err)
				}
				if _, err := srv.RotateAudit(); err != nil {
					log.Error("audit log rotation on SIGHUP failed", "err", err)
				}
			}
		}
	}()
}

// cmdReload asks the server of a configuration to reload it: it sends
// SIGHUP to the process whose id is in the data directory's pid file.
func cmdReload(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "the server's configuration file (YAML); none: the embedded default")
	dataDir := fs.String("data-dir", "", "data directory (env KEYGRID_DATA_DIR; default ./data)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath, config.Flags{DataDir: *dataDir})
	if err != nil {
		return err
	}
	pidFile := filepath.Join(cfg.DataDir, pidFileName)
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return fmt.Errorf("reload: no running server found (%w)", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return fmt.Errorf("reload: %s does not hold a process id", pidFile)
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload: signal process %d: %w", pid, err)
	}
	fmt.Fprintf(stdout, "sent SIGHUP to keygrid-hsm (pid %d); the server log and audit log say whether the reload was applied\n", pid)
	return nil
}
