package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/fsutil"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// storeCommand parses the flags of an operator command on the metadata
// store (flags adds the command's own and returns their check), loads and
// validates the configuration, and opens the store (never a provider: these
// commands do not touch the HSM).
func storeCommand(ctx context.Context, name string, args []string, stderr io.Writer, migrate bool,
	flags func(fs *flag.FlagSet) func() error) (*config.Config, store.Store, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (YAML) of the gateway whose store this is")
	check := func() error { return nil }
	if flags != nil {
		check = flags(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	if fs.NArg() > 0 {
		return nil, nil, fmt.Errorf("%s: unexpected argument %q", name, fs.Arg(0))
	}
	if err := check(); err != nil {
		return nil, nil, err
	}
	cfg, err := config.Load(*cfgPath, config.Flags{})
	if err != nil {
		return nil, nil, err
	}
	if err := cfg.Validate(registry.All().Types()); err != nil {
		return nil, nil, err
	}
	st, err := server.OpenStore(ctx, cfg, migrate)
	if err != nil {
		return nil, nil, err
	}
	return cfg, st, nil
}

// cmdMigrate applies the schema migrations the store has not seen and
// prints the schema version. Gateways migrate at start too, unless
// storage.migrate_on_start is false; two at once are safe.
func cmdMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, st, err := storeCommand(ctx, "migrate", args, stderr, true, nil)
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

// cmdBackup writes the key metadata (names, states, versions, provider
// references, public keys — never key material) to a file, from one
// snapshot of the store: consistent while gateways keep serving. The file
// is written under a temporary name, mode 0600, synced and renamed.
func cmdBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var out string
	cfg, st, err := storeCommand(ctx, "backup", args, stderr, false, func(fs *flag.FlagSet) func() error {
		fs.StringVar(&out, "out", "", "backup file to write (required)")
		return func() error {
			if out == "" {
				return errors.New("backup: --out FILE is required")
			}
			return nil
		}
	})
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

// cmdRestore loads a backup into the store: into an empty one, or, with
// --force, replacing every key it holds. The file is checked whole before
// anything is committed; the restore is one transaction.
func cmdRestore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		in    string
		force bool
	)
	cfg, st, err := storeCommand(ctx, "restore", args, stderr, true, func(fs *flag.FlagSet) func() error {
		fs.StringVar(&in, "in", "", "backup file to read (required)")
		fs.BoolVar(&force, "force", false, "replace the keys the store already holds")
		return func() error {
			if in == "" {
				return errors.New("restore: --in FILE is required")
			}
			return nil
		}
	})
	if err != nil {
		return err
	}
	defer st.Close()
	sn, ok := st.(store.Snapshotter)
	if !ok {
		return fmt.Errorf("restore: the %s store cannot import", cfg.Storage.Driver)
	}
	f, err := os.Open(in)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
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
