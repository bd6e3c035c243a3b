package store_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/store/storetest"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// One PostgreSQL cluster serves every test of this binary; each test gets
// databases of its own.
func TestMain(m *testing.M) { testbed.Main(m, testbed.WithPostgres()) }

func openPG(t *testing.T, dsn string, o store.PostgresOptions) store.Store {
	t.Helper()
	s, err := store.OpenPostgres(context.Background(), dsn, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestPostgresConformance(t *testing.T) {
	p := testbed.ProcessPostgres(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		return openPG(t, p.NewDatabase(t), store.PostgresOptions{})
	})
}

// Two stores on one database, each with its own pool: two gateway
// processes.
func TestPostgresShared(t *testing.T) {
	p := testbed.ProcessPostgres(t)
	storetest.RunShared(t, func(t *testing.T) (store.Store, store.Store) {
		dsn := p.NewDatabase(t)
		return openPG(t, dsn, store.PostgresOptions{}), openPG(t, dsn, store.PostgresOptions{MaxConns: 4})
	})
}

// Gateways starting together on a fresh database migrate it once.
func TestPostgresConcurrentMigrations(t *testing.T) {
	p := testbed.ProcessPostgres(t)
	dsn := p.NewDatabase(t)
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	stores := make([]store.Store, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			stores[i], errs[i] = store.OpenPostgres(context.Background(), dsn, store.PostgresOptions{MaxConns: 2})
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		defer stores[i].Close()
	}
	m := stores[0].(store.Migrator)
	v, err := m.SchemaVersion(context.Background())
	if err != nil || v != m.LatestSchemaVersion() {
		t.Fatalf("schema version %d, %v; want %d", v, err, m.LatestSchemaVersion())
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var rows int
	if err := db.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&rows); err != nil || rows != m.LatestSchemaVersion() {
		t.Fatalf("schema_migrations has %d rows (%v), want one per migration", rows, err)
	}
	// And the schema works from every one of them.
	if err := stores[n-1].CreateKey(context.Background(), storetest.NewKey("after-migrate", "software")); err != nil {
		t.Fatal(err)
	}
}

// Without migrations, a store on an unmigrated database is refused with
// ErrSchemaOutdated, and accepted once `migrate` ran.
func TestPostgresNoMigrate(t *testing.T) {
	p := testbed.ProcessPostgres(t)
	dsn := p.NewDatabase(t)
	ctx := context.Background()
	o := store.Options{Driver: "postgres", DSN: dsn, NoMigrate: true}
	if _, err := store.Open(ctx, o); !errors.Is(err, store.ErrSchemaOutdated) {
		t.Fatalf("open unmigrated without migrating: %v, want ErrSchemaOutdated", err)
	}
	s := openPG(t, dsn, store.PostgresOptions{})
	v, err := s.(store.Migrator).Migrate(ctx) // again: a no-op
	if err != nil || v != s.(store.Migrator).LatestSchemaVersion() {
		t.Fatalf("migrate: %d, %v", v, err)
	}
	s2, err := store.Open(ctx, o)
	if err != nil {
		t.Fatalf("open migrated without migrating: %v", err)
	}
	s2.Close()
}

// A statement waiting for a row another transaction holds gives up at its
// context's deadline.
func TestPostgresHonoursDeadlines(t *testing.T) {
	p := testbed.ProcessPostgres(t)
	dsn := p.NewDatabase(t)
	s := openPG(t, dsn, store.PostgresOptions{})
	ctx := context.Background()
	k := storetest.NewKey("locked", "software")
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`SELECT id FROM keys WHERE id = $1 FOR UPDATE`, k.ID); err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	k.State = store.StateInactive
	err = s.UpdateKey(dctx, k)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("update of a locked row: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("the update returned after %v, long past its 300ms deadline", d)
	}
	tx.Rollback()
	// The store still works, and the update did not happen.
	got, err := s.GetKey(ctx, k.ID)
	if err != nil || got.State != store.StateActive || got.Revision != 1 {
		t.Fatalf("after the timed-out update: %+v, %v", got, err)
	}
}

// Errors about the DSN or the connection never show its password; the log
// form of a DSN has none either.
func TestPostgresDSNPasswordNeverShown(t *testing.T) {
	p := testbed.ProcessPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const secret = "s3cret-Pa55word"
	cases := map[string]string{
		"wrong password": strings.Replace(p.DSN("postgres"), p.Password, secret, 1),
		"bad parameter":  "postgres://keygrid:" + secret + "@127.0.0.1:1/db?sslmode=bogus",
		"key value form": "host=127.0.0.1 port=1 user=keygrid password=" + secret + " dbname=db sslmode=bogus",
	}
	for name, dsn := range cases {
		t.Run(name, func(t *testing.T) {
			s, err := store.OpenPostgres(ctx, dsn, store.PostgresOptions{})
			if err == nil {
				s.Close()
				t.Fatal("open succeeded")
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error shows the password: %v", err)
			}
		})
	}
	got := store.RedactDSN("postgres://keygrid:" + secret + "@db.example:6432/keys?sslmode=require")
	if got != "postgres://keygrid@db.example:6432/keys" {
		t.Fatalf("RedactDSN = %q", got)
	}
}

// A database that went away is SERVICE_UNAVAILABLE (503), not an internal
// error.
func TestPostgresUnavailable(t *testing.T) {
	testbed.ProcessPostgres(t)
	own := testbed.NewPostgres(t) // this test stops its cluster
	s := openPG(t, own.NewDatabase(t), store.PostgresOptions{})
	ctx := context.Background()
	if err := s.CreateKey(ctx, storetest.NewKey("before", "software")); err != nil {
		t.Fatal(err)
	}
	if err := own.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetKey(ctx, "before"); !errors.Is(err, kgerr.ErrServiceUnavailable) {
		t.Fatalf("get with the database stopped: %v, want SERVICE_UNAVAILABLE", err)
	}
	if err := s.Ping(ctx); !errors.Is(err, kgerr.ErrServiceUnavailable) {
		t.Fatalf("ping with the database stopped: %v, want SERVICE_UNAVAILABLE", err)
	}
}
