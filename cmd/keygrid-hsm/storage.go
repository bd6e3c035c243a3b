package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/fsutil"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// storeOptions are the flags every operator command on the metadata store
// takes.
type storeOptions struct {
	config string
	create bool // migrate and restore: make the store when it does not exist
}

func (o *storeOptions) register(cmd *cobra.Command, create bool) {
	cmd.Flags().StringVarP(&o.config, "config", "c", "", "configuration file (YAML) of the gateway whose store this is (none: the embedded default, ./data)")
	if create {
		cmd.Flags().BoolVar(&o.create, "create", false, "create the store when it does not exist (a new gateway's)")
	}
}

// openStoreFor loads and validates the configuration and opens its store
// (never a provider: these commands do not touch the HSM). A SQLite store
// that does not exist is an error naming its path, unless o.create: these
// commands never make an empty store by accident.
func openStoreFor(ctx context.Context, name string, o storeOptions, migrate bool) (*config.Config, store.Store, error) {
	cfg, err := config.Load(o.config, config.Flags{})
	if err != nil {
		return nil, nil, err
	}
	if err := cfg.Validate(registry.All().Types()); err != nil {
		return nil, nil, err
	}
	if cfg.Storage.Driver != "postgres" && !o.create {
		if _, err := os.Stat(cfg.Storage.Path); errors.Is(err, fs.ErrNotExist) {
			hint := "point --config at the gateway's configuration file (its data_dir or storage.path)"
			if o.config == "" {
				hint = "give --config with the gateway's configuration file, or run this where the gateway's ./data is"
			}
			if name != "backup" {
				hint += ", or give --create to make a new store"
			}
			return nil, nil, fmt.Errorf("%s: no metadata store at %s: %s", name, cfg.Storage.Path, hint)
		}
	}
	st, err := server.OpenStore(ctx, cfg, migrate)
	if err != nil {
		return nil, nil, err
	}
	return cfg, st, nil
}

func migrateCmd(s *streams) *cobra.Command {
	var o storeOptions
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "apply the metadata schema migrations, print the version",
		Long: `Apply the schema migrations the store has not seen and print the schema version. Gateways migrate
at start too, unless storage.migrate_on_start is false; two at once are safe.`,
		Example: "  keygrid-hsm migrate --config /etc/keygrid-hsm/config.yaml",
		Args:    noArgs,
		RunE:    func(cmd *cobra.Command, args []string) error { return runMigrate(cmd.Context(), o, s.stdout) },
	}
	o.register(cmd, true)
	return cmd
}

func backupCmd(s *streams) *cobra.Command {
	var (
		o   storeOptions
		out string
	)
	cmd := &cobra.Command{
		Use:   "backup --out FILE",
		Short: "write the key metadata to a file, consistent while serving",
		Long: `Write the key metadata (names, states, versions, provider references, public keys; never key
material) to a file from one snapshot of the store: consistent while gateways keep serving.`,
		Example: "  keygrid-hsm backup --config /etc/keygrid-hsm/config.yaml --out /backup/keygrid-meta.backup",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usageErr(cmd, "backup: --out FILE is required")
			}
			return runBackup(cmd.Context(), o, out, s.stdout)
		},
	}
	o.register(cmd, false)
	cmd.Flags().StringVar(&out, "out", "", "backup file to write (required)")
	return cmd
}

func restoreCmd(s *streams) *cobra.Command {
	var (
		o     storeOptions
		in    string
		force bool
	)
	cmd := &cobra.Command{
		Use:     "restore --in FILE",
		Short:   "load a backup into an empty store, or replace its keys with --force",
		Example: "  keygrid-hsm restore --config /etc/keygrid-hsm/config.yaml --in /backup/keygrid-meta.backup",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if in == "" {
				return usageErr(cmd, "restore: --in FILE is required")
			}
			return runRestore(cmd.Context(), o, in, force, s.stdout)
		},
	}
	o.register(cmd, true)
	cmd.Flags().StringVar(&in, "in", "", "backup file to read (required)")
	cmd.Flags().BoolVar(&force, "force", false, "replace the keys the store already holds")
	return cmd
}

// runMigrate applies the schema migrations the store has not seen and
// prints the schema version. Gateways migrate at start too, unless
// storage.migrate_on_start is false; two at once are safe.
func runMigrate(ctx context.Context, o storeOptions, stdout io.Writer) error {
	cfg, st, err := openStoreFor(ctx, "migrate", o, true)
	if err != nil {
		return err
	}
	defer st.Close()
	m, ok := st.(store.Migrator)
	if !ok {
		return fmt.Errorf("migrate: the %s store has no schema versions", cfg.Storage.Driver)
	}
	v, err := m.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "schema version %d (%s %s)\n", v, cfg.Storage.Driver, server.StoreTarget(cfg))
	return nil
}

// runBackup writes the key metadata (names, states, versions, provider
// references, public keys — never key material) to a file, from one
// snapshot of the store: consistent while gateways keep serving. The file
// is written under a temporary name, mode 0600, synced and renamed.
func runBackup(ctx context.Context, o storeOptions, out string, stdout io.Writer) error {
	cfg, st, err := openStoreFor(ctx, "backup", o, false)
	if err != nil {
		return err
	}
	defer st.Close()
	sn, ok := st.(store.Snapshotter)
	if !ok {
		return fmt.Errorf("backup: the %s store cannot export", cfg.Storage.Driver)
	}
	h := store.BackupHeader{Driver: cfg.Storage.Driver, Software: version}
	if m, ok := st.(store.Migrator); ok {
		if h.SchemaVersion, err = m.SchemaVersion(ctx); err != nil {
			return err
		}
	}
	var n int
	err = fsutil.WriteFileFunc(out, 0o600, func(w io.Writer) error {
		n, err = store.WriteBackup(ctx, sn, w, h)
		return err
	})
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	fmt.Fprintf(stdout, "backed up %d keys to %s (schema version %d)\n", n, out, h.SchemaVersion)
	return nil
}

// runRestore loads a backup into the store: into an empty one, or, with
// --force, replacing every key it holds. The file is checked whole before
// anything is committed; the restore is one transaction.
func runRestore(ctx context.Context, o storeOptions, in string, force bool, stdout io.Writer) error {
	f, err := os.Open(in)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	cfg, st, err := openStoreFor(ctx, "restore", o, true)
	if err != nil {
		return err
	}
	defer st.Close()
	sn, ok := st.(store.Snapshotter)
	if !ok {
		return fmt.Errorf("restore: the %s store cannot import", cfg.Storage.Driver)
	}
	h, n, err := store.ReadBackup(ctx, sn, f, store.ImportOptions{Replace: force})
	var ne *store.NotEmptyError
	if errors.As(err, &ne) {
		return fmt.Errorf("restore: the store already holds %d keys; nothing was restored (use --force to replace them)", ne.Keys)
	}
	if err != nil {
		return fmt.Errorf("restore: nothing was restored: %w", err)
	}
	fmt.Fprintf(stdout, "restored %d keys from %s (backup of %s, %s)\n", n, in, h.Driver, h.CreatedAt.Format("2006-01-02T15:04:05Z07:00"))
	return nil
}
