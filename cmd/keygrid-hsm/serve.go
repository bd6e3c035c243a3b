package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

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

// serveOptions are the flags of serve.
type serveOptions struct {
	config, listen, dataDir string
}

func serveCmd(s *streams) *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "run the gateway (SIGHUP reloads principals, tokens, limits and XKS credentials, then rotates the audit log)",
		Long: `Run the gateway. With no --config it runs the embedded default: the software provider and a SQLite
store in the data directory (./data), on 127.0.0.1:8080, with a generated admin token in
<data dir>/admin.token. The configuration is checked and the listen address bound before anything is
written to the data directory.`,
		Example: `  keygrid-hsm serve
  keygrid-hsm serve --listen 127.0.0.1:9090 --data-dir /var/lib/keygrid-hsm
  keygrid-hsm serve --config /etc/keygrid-hsm/config.yaml`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runServe(cmd.Context(), o, s.stderr) },
	}
	f := cmd.Flags()
	f.StringVarP(&o.config, "config", "c", "", "configuration file (YAML); none: the embedded default")
	f.StringVarP(&o.listen, "listen", "l", "", "listen address host:port (env KEYGRID_LISTEN; default 127.0.0.1:8080)")
	f.StringVarP(&o.dataDir, "data-dir", "d", "", "data directory (env KEYGRID_DATA_DIR; default ./data)")
	return cmd
}

// runServe loads and validates the configuration, binds the listener, and
// only then opens the server (which writes the data directory: database,
// keystore, master key, admin token).
func runServe(ctx context.Context, o serveOptions, stderr io.Writer) error {
	// Everything the server writes (database, WAL, keystore, audit log,
	// master key) is for its own user only.
	syscall.Umask(0o077)
	flags := config.Flags{Listen: o.listen, DataDir: o.dataDir}
	cfg, err := config.Load(o.config, flags)
	if err != nil {
		return err
	}
	if err := cfg.Validate(registry.All().Types()); err != nil {
		return err
	}
	if _, err := server.TLSConfig(cfg.Server.TLS); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (nothing was written to %s)", cfg.Server.Listen, err, cfg.DataDir)
	}
	log := newLogger(cfg, stderr)
	srv, err := server.New(ctx, cfg, registry.All(), log, version)
	if err != nil {
		ln.Close()
		return err
	}
	defer srv.Close()
	pidFile := filepath.Join(cfg.DataDir, pidFileName)
	if err := fsutil.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		log.Warn("could not write the pid file; keygrid-hsm reload will not find this server", "path", pidFile, "err", err)
	} else {
		defer os.Remove(pidFile)
	}
	onHUP(ctx, srv, log, func() (*config.Config, error) { return config.Load(o.config, flags) })
	return srv.ServeListener(ctx, ln, nil)
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

// reloadOptions are the flags of reload.
type reloadOptions struct {
	config, dataDir string
}

func reloadCmd(s *streams) *cobra.Command {
	var o reloadOptions
	cmd := &cobra.Command{
		Use:     "reload",
		Short:   "make the running server reload its configuration (finds it by the pid file in its data directory)",
		Example: "  keygrid-hsm reload --config /etc/keygrid-hsm/config.yaml",
		Args:    noArgs,
		RunE:    func(cmd *cobra.Command, args []string) error { return runReload(o, s.stdout) },
	}
	cmd.Flags().StringVarP(&o.config, "config", "c", "", "the server's configuration file (YAML); none: the embedded default")
	cmd.Flags().StringVarP(&o.dataDir, "data-dir", "d", "", "data directory (env KEYGRID_DATA_DIR; default ./data)")
	return cmd
}

// runReload asks the server of a configuration to reload it: it sends
// SIGHUP to the process whose id is in the data directory's pid file.
func runReload(o reloadOptions, stdout io.Writer) error {
	cfg, err := config.Load(o.config, config.Flags{DataDir: o.dataDir})
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
