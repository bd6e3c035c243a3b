package server

import (
	"context"
	"log/slog"
	"os"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// OpenStore opens the metadata store the configuration names: SQLite at
// storage.path, or PostgreSQL at storage.dsn (or the DSN in the environment
// variable storage.dsn_env names). With migrate false the schema must
// already be current (store.ErrSchemaOutdated otherwise). The server,
// `keygrid-hsm migrate`, `backup` and `restore` all open the store here.
func OpenStore(ctx context.Context, cfg *config.Config, migrate bool) (store.Store, error) {
	o := store.Options{
		Driver: cfg.Storage.Driver, Path: cfg.Storage.Path, NoMigrate: !migrate,
		Postgres: store.PostgresOptions{MaxConns: cfg.Storage.MaxConns},
	}
	if o.Driver == "postgres" {
		dsn, err := cfg.Storage.DSNFrom(os.LookupEnv)
		if err != nil {
			return nil, err
		}
		o.DSN = dsn
	}
	return store.Open(ctx, o)
}

// StoreTarget says where the store is, for logs and command output: the
// SQLite path, or the PostgreSQL user, host, port and database — never the
// password.
func StoreTarget(cfg *config.Config) string {
	if cfg.Storage.Driver != "postgres" {
		return cfg.Storage.Path
	}
	dsn, err := cfg.Storage.DSNFrom(os.LookupEnv)
	if err != nil {
		return "(no dsn)"
	}
	return store.RedactDSN(dsn)
}

// openStore opens the server's store, migrating it when
// storage.migrate_on_start says so, and logs what it opened.
func (s *Server) openStore(ctx context.Context) error {
	st, err := OpenStore(ctx, s.cfg, s.cfg.Storage.MigrateOnStartEnabled())
	if err != nil {
		return err
	}
	s.store = st
	attrs := []any{"driver", s.cfg.Storage.Driver, "target", StoreTarget(s.cfg)}
	if m, ok := st.(store.Migrator); ok {
		v, err := m.SchemaVersion(ctx)
		if err != nil {
			return err
		}
		attrs = append(attrs, "schema_version", v)
		if v > m.LatestSchemaVersion() {
			// Migrations only add: an older replica keeps working on a
			// schema a newer one migrated during a rolling upgrade.
			s.log.Warn("the metadata schema is newer than this binary's; upgrade this replica",
				"schema_version", v, "binary_schema_version", m.LatestSchemaVersion())
		}
	}
	ttl := s.cfg.Storage.CacheTTLOrDefault()
	s.store = store.WithCache(st, ttl)
	attrs = append(attrs, "cache_ttl", ttl.String())
	s.log.Log(ctx, slog.LevelInfo, "metadata store open", attrs...)
	return nil
}
