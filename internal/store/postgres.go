package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// The PostgreSQL schema is SQLite's, migration for migration, in
// PostgreSQL's types: the same schema_migrations table and numbering, the
// same columns (times are Unix nanoseconds in BIGINT on both), so that one
// set of SQL statements serves both. Ids and names are compared bytewise
// (COLLATE "C") whatever the database's locale, so that listing order and
// page tokens match SQLite's.
var postgresMigrations = []string{
	`CREATE TABLE keys (
		id          TEXT COLLATE "C" PRIMARY KEY,
		name        TEXT COLLATE "C" NOT NULL UNIQUE,
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
		key_id       TEXT COLLATE "C" NOT NULL,
		version      INTEGER NOT NULL,
		object_id    TEXT NOT NULL UNIQUE,
		provider_ref TEXT,
		public_key   BYTEA,
		state        TEXT NOT NULL,
		created_at   BIGINT NOT NULL,
		PRIMARY KEY (key_id, version)
	);`,
	`ALTER TABLE keys ADD COLUMN publish_jwks BOOLEAN NOT NULL DEFAULT false;
	ALTER TABLE key_versions ADD COLUMN certificate_chain BYTEA;`,
	lifecycleMigration,
	checkpointMigration(`TEXT COLLATE "C"`, "BYTEA"),
	originMigration,
}

// Advisory lock ids (pg_advisory_xact_lock): any constant shared by every
// gateway on one database; these are "keygrid" and "keygrid" + 1 as
// big-endian bytes.
const (
	pgMigrationLock = 0x6b657967726964
	pgImportLock    = pgMigrationLock + 1
)

// PostgreSQL error codes.
const (
	pgUniqueViolation    = "23505"
	pgAdminShutdown      = "57P01"
	pgCrashShutdown      = "57P02"
	pgCannotConnectNow   = "57P03"
	pgConnectionExcClass = "08"
)

// PostgresOptions configure the PostgreSQL store. The zero value is the
// default.
type PostgresOptions struct {
	// MaxConns caps the connection pool (default 16). Every gateway replica
	// has its own pool: the database's max_connections must exceed the sum.
	MaxConns int
	// ConnMaxLifetime closes connections older than this (default 30m), so
	// that a fail-over or DNS change is picked up.
	ConnMaxLifetime time.Duration
	// ConnMaxIdleTime closes connections idle this long (default 5m).
	ConnMaxIdleTime time.Duration
	// NoMigrate skips the migrations; Open then refuses a schema older than
	// this binary's (see Options).
	NoMigrate bool
}

// DefaultPostgresMaxConns is the default pool size.
const DefaultPostgresMaxConns = 16

// OpenPostgres opens the PostgreSQL store at dsn (a URL
// postgres://user:password@host:port/db?sslmode=… or key=value pairs, as
// libpq), with a bounded connection pool, and migrates it unless
// o.NoMigrate. Every call honours its context's deadline: waiting for a
// connection, connecting and each statement. Errors never carry the DSN's
// password.
//
// Writes run at READ COMMITTED, which is what keeps the compare-and-swap
// right without retries: an UPDATE … WHERE revision = n waits for a
// concurrent writer of the row to commit and is then evaluated against the
// row it wrote, so of two racing updates exactly one matches; a name is
// unique by constraint, so of two creates exactly one inserts.
func OpenPostgres(ctx context.Context, dsn string, o PostgresOptions) (Store, error) {
	s, err := openPostgres(ctx, dsn, o)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func openPostgres(ctx context.Context, dsn string, o PostgresOptions) (*sqlStore, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgconn's parse errors replace the password with xxxxx.
		return nil, fmt.Errorf("postgres store: dsn: %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultPostgresMaxConns
	}
	if o.ConnMaxLifetime <= 0 {
		o.ConnMaxLifetime = 30 * time.Minute
	}
	if o.ConnMaxIdleTime <= 0 {
		o.ConnMaxIdleTime = 5 * time.Minute
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(o.MaxConns)
	db.SetMaxIdleConns(o.MaxConns)
	db.SetConnMaxLifetime(o.ConnMaxLifetime)
	db.SetConnMaxIdleTime(o.ConnMaxIdleTime)
	s := &sqlStore{db: db, d: dialect{
		name:       "postgres",
		migrations: postgresMigrations,
		rebind:     rebindDollar,
		isUnique: func(err error) bool {
			var e *pgconn.PgError
			return errors.As(err, &e) && e.Code == pgUniqueViolation
		},
		beginWrite: func(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
			return db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
		},
		beginSnapshot: func(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
			return db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
		},
		lockMigrations: "SELECT pg_advisory_xact_lock(" + strconv.Itoa(pgMigrationLock) + ")",
		// Writers wait while a restore replaces the keys; readers go on
		// reading the old ones until it commits.
		lockImport:         "LOCK TABLE keys, key_versions IN EXCLUSIVE MODE; SELECT pg_advisory_xact_lock(" + strconv.Itoa(pgImportLock) + ")",
		hasMigrationsTable: `SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = 'schema_migrations'`,
		unavailable:        pgUnavailable,
	}}
	if o.NoMigrate {
		if err := db.PingContext(ctx); err != nil {
			db.Close()
			return nil, s.fail("connect", err)
		}
		return s, nil
	}
	if _, err := s.Migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// rebindDollar turns ? placeholders into $1, $2, … (the store's statements
// have no ? inside string literals).
func rebindDollar(q string) string {
	var b strings.Builder
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

// pgUnavailable reports errors that mean the server cannot be reached or is
// going away, as opposed to a statement's own failure.
func pgUnavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return strings.HasPrefix(pgErr.Code, pgConnectionExcClass) || pgErr.Code == pgAdminShutdown ||
			pgErr.Code == pgCrashShutdown || pgErr.Code == pgCannotConnectNow
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connErr) || errors.As(err, &netErr) || errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// RedactDSN describes a PostgreSQL DSN for logs: user, host, port and
// database, never the password or other parameters.
func RedactDSN(dsn string) string {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "(unparsable dsn)"
	}
	return fmt.Sprintf("postgres://%s@%s/%s", cfg.User, net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))), cfg.Database)
}
