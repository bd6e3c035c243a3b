package store

import (
	"context"
	"errors"
	"fmt"
)

// Options choose and configure a store.
type Options struct {
	// Driver is "sqlite" or "postgres".
	Driver string
	// Path is the SQLite file.
	Path string
	// DSN is the PostgreSQL connection string.
	DSN string
	// Postgres configures the PostgreSQL pool.
	Postgres PostgresOptions
	// NoMigrate opens without migrating: the schema must then already be at
	// this binary's version (ErrSchemaOutdated otherwise), as when
	// migrations are run by `keygrid-hsm migrate` before a rollout.
	NoMigrate bool
}

// ErrSchemaOutdated: the database's schema is older than this binary's and
// migrations were not to be run. Match it with errors.Is.
var ErrSchemaOutdated = errors.New("the metadata schema is older than this binary's; run keygrid-hsm migrate")

// SchemaError is ErrSchemaOutdated with the versions.
type SchemaError struct{ Have, Want int }

func (e *SchemaError) Error() string {
	return fmt.Sprintf("metadata schema version %d, this binary needs %d: run keygrid-hsm migrate", e.Have, e.Want)
}

// Is makes errors.Is(err, ErrSchemaOutdated) match.
func (e *SchemaError) Is(target error) bool { return target == ErrSchemaOutdated }

// Open opens the store o describes. The store it returns also implements
// Migrator and Snapshotter.
func Open(ctx context.Context, o Options) (Store, error) {
	var (
		s   *sqlStore
		err error
	)
	switch o.Driver {
	case "sqlite":
		s, err = openSQLite(ctx, o.Path, !o.NoMigrate)
	case "postgres":
		po := o.Postgres
		po.NoMigrate = o.NoMigrate
		s, err = openPostgres(ctx, o.DSN, po)
	default:
		return nil, fmt.Errorf("store: driver %q is not sqlite or postgres", o.Driver)
	}
	if err != nil {
		return nil, err
	}
	if o.NoMigrate {
		v, err := s.SchemaVersion(ctx)
		if err != nil {
			s.Close()
			return nil, err
		}
		if v < s.LatestSchemaVersion() {
			s.Close()
			return nil, &SchemaError{Have: v, Want: s.LatestSchemaVersion()}
		}
	}
	return s, nil
}

// Interface checks: both SQL stores migrate, export and import.
var (
	_ Migrator    = (*sqlStore)(nil)
	_ Snapshotter = (*sqlStore)(nil)
)
