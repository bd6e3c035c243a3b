package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

var sqliteMigrations = []string{
	`CREATE TABLE keys (
		id          TEXT PRIMARY KEY,
		name        TEXT NOT NULL UNIQUE,
		provider    TEXT NOT NULL,
		key_type    TEXT NOT NULL,
		key_size    INTEGER NOT NULL,
		curve       TEXT,
		algorithm   TEXT,
		usage       TEXT NOT NULL,
		extractable BOOLEAN NOT NULL,
		state       TEXT NOT NULL,
		metadata    TEXT NOT NULL,
		created_at  BIGINT NOT NULL,
		updated_at  BIGINT NOT NULL,
		expires_at  BIGINT,
		revision    BIGINT NOT NULL
	);
	CREATE INDEX keys_provider_state ON keys (provider, state, id);
	CREATE TABLE key_versions (
		key_id       TEXT NOT NULL,
		version      INTEGER NOT NULL,
		object_id    TEXT NOT NULL UNIQUE,
		provider_ref TEXT,
		public_key   BLOB,
		state        TEXT NOT NULL,
		created_at   BIGINT NOT NULL,
		PRIMARY KEY (key_id, version)
	);`,
	// Certificates and JWKS: the chain attached to each version and the
	// keys published in /.well-known/jwks.json.
	`ALTER TABLE keys ADD COLUMN publish_jwks BOOLEAN NOT NULL DEFAULT 0;
	ALTER TABLE key_versions ADD COLUMN certificate_chain BLOB;`,
	lifecycleMigration,
	// Audit checkpoints and the audit signing key.
	checkpointMigration("TEXT", "BLOB"),
	originMigration,
}

// originMigration (5) stores how a key was made; keys made before it were
// generated. It is the same on both databases.
const originMigration = `ALTER TABLE keys ADD COLUMN origin TEXT NOT NULL DEFAULT 'generated';`

// lifecycleMigration (3) adds what scheduled deletion, automatic rotation
// and updates need; it is the same on both databases.
const lifecycleMigration = `ALTER TABLE keys ADD COLUMN description TEXT NOT NULL DEFAULT '';
	ALTER TABLE keys ADD COLUMN deletion_date BIGINT;
	ALTER TABLE keys ADD COLUMN rotation_period BIGINT NOT NULL DEFAULT 0;
	ALTER TABLE keys ADD COLUMN next_rotation_at BIGINT;
	ALTER TABLE keys ADD COLUMN min_decrypt_version INTEGER NOT NULL DEFAULT 0;
	CREATE INDEX keys_deletion_date ON keys (deletion_date);
	CREATE INDEX keys_next_rotation_at ON keys (next_rotation_at);`

// OpenSQLite opens (creating and migrating) the SQLite store at path. The
// database runs in WAL mode with synchronous=FULL, so a committed key
// survives a crash of the process or the machine.
func OpenSQLite(ctx context.Context, path string) (Store, error) {
	return openSQLite(ctx, path, true)
}

func openSQLite(ctx context.Context, path string, migrate bool) (*sqlStore, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("sqlite store: %w", err)
	}
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "busy_timeout(10000)", "foreign_keys(1)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlite store: %w", err)
	}
	s := &sqlStore{db: db, d: dialect{
		name:       "sqlite",
		migrations: sqliteMigrations,
		rebind:     func(q string) string { return q },
		isUnique: func(err error) bool {
			var e *sqlite.Error
			return errors.As(err, &e) && (e.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || e.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY)
		},
		// _txlock=immediate: a write transaction takes the database's write
		// lock at BEGIN, so it also serialises migrations and imports
		// between processes.
		beginWrite: func(ctx context.Context, db *sql.DB) (*sql.Tx, error) { return db.BeginTx(ctx, nil) },
		// A read-only transaction is a deferred BEGIN: in WAL mode its reads
		// share one snapshot and do not block writers.
		beginSnapshot: func(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
			return db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		},
		hasMigrationsTable: `SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`,
	}}
	if migrate {
		if _, err := s.Migrate(ctx); err != nil {
			db.Close()
			return nil, err
		}
	} else if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite store: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}
