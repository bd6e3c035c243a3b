package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// dialect is what differs between the SQL databases.
type dialect struct {
	name string
	// migrations are applied in order; index+1 is the schema version.
	migrations []string
	// rebind turns ? placeholders into the database's own.
	rebind func(string) string
	// isUnique reports a unique-constraint violation.
	isUnique func(error) bool
	// beginWrite starts a transaction that will write.
	beginWrite func(ctx context.Context, db *sql.DB) (*sql.Tx, error)
	// beginSnapshot starts a read-only transaction whose reads all see one
	// snapshot of the database.
	beginSnapshot func(ctx context.Context, db *sql.DB) (*sql.Tx, error)
	// lockMigrations, run first in every migration transaction, keeps two
	// processes from migrating at once ("" when beginWrite already does).
	lockMigrations string
	// lockImport, run first in an import transaction, keeps other writers
	// out until it commits ("" when beginWrite already does).
	lockImport string
	// hasMigrationsTable is a query answering one row when the
	// schema_migrations table exists.
	hasMigrationsTable string
	// unavailable reports an error that means the database cannot be
	// reached (the caller gets 503, not 500); nil: never.
	unavailable func(error) bool
}

// sqlStore implements Store over database/sql.
type sqlStore struct {
	db *sql.DB
	d  dialect

	// getStmt is GetKey's query, prepared once: every key operation runs
	// it, and parsing it each time was a quarter of an operation's cost.
	getOnce sync.Once
	getStmt *sql.Stmt
	getErr  error
}

const getKeyQuery = `SELECT %s, %s
		FROM keys k LEFT JOIN key_versions v ON v.key_id = k.id
		WHERE k.id = ? OR k.name = ?
		ORDER BY CASE WHEN k.id = ? THEN 0 ELSE 1 END, v.version`

func (s *sqlStore) q(query string) string { return s.d.rebind(query) }

// Migrate applies the migrations the database has not seen, each in its own
// transaction that first takes the dialect's migration lock, so that two
// processes migrating at once apply each migration exactly once. It returns
// the schema version.
func (s *sqlStore) Migrate(ctx context.Context) (int, error) {
	for v := 1; v <= len(s.d.migrations); v++ {
		if err := s.applyMigration(ctx, v); err != nil {
			return 0, err
		}
	}
	return s.SchemaVersion(ctx)
}

func (s *sqlStore) applyMigration(ctx context.Context, v int) error {
	tx, err := s.d.beginWrite(ctx, s.db)
	if err != nil {
		return s.fail("migrate", err)
	}
	defer tx.Rollback()
	if s.d.lockMigrations != "" {
		if _, err := tx.ExecContext(ctx, s.d.lockMigrations); err != nil {
			return s.fail("migration lock", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
		return s.fail("migrations table", err)
	}
	var n int
	if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM schema_migrations WHERE version = ?`), v).Scan(&n); err != nil {
		return s.fail("migrations", err)
	}
	if n > 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, s.d.migrations[v-1]); err != nil {
		return fmt.Errorf("%s store: migration %d: %w", s.d.name, v, err)
	}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`), v, time.Now().UnixNano()); err != nil {
		return s.fail(fmt.Sprintf("record migration %d", v), err)
	}
	if err := tx.Commit(); err != nil {
		return s.fail(fmt.Sprintf("commit migration %d", v), err)
	}
	return nil
}

// SchemaVersion returns the highest migration applied (0 on an empty
// database).
func (s *sqlStore) SchemaVersion(ctx context.Context) (int, error) {
	rows, err := s.db.QueryContext(ctx, s.d.hasMigrationsTable)
	if err != nil {
		return 0, s.fail("schema version", err)
	}
	exists := rows.Next()
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, s.fail("schema version", err)
	}
	if !exists {
		return 0, nil
	}
	var v sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, s.fail("schema version", err)
	}
	return int(v.Int64), nil
}

// LatestSchemaVersion is the schema version this binary migrates to.
func (s *sqlStore) LatestSchemaVersion() int { return len(s.d.migrations) }

// fail wraps a database error: unreachable database → 503
// SERVICE_UNAVAILABLE; a context's error stays matchable as it is.
func (s *sqlStore) fail(what string, err error) error {
	if s.d.unavailable != nil && s.d.unavailable(err) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return kgerr.Wrap(kgerr.KindUnavailable, fmt.Errorf("%s store: %s: %w", s.d.name, what, err), "the metadata store is unavailable")
	}
	return fmt.Errorf("%s store: %s: %w", s.d.name, what, err)
}

const keyColumns = `id, name, provider, key_type, key_size, curve, algorithm, usage, extractable, state, metadata, created_at, updated_at, expires_at, revision, publish_jwks, description, deletion_date, rotation_period, next_rotation_at, min_decrypt_version, origin`

const versionColumns = `version, object_id, provider_ref, public_key, state, created_at, certificate_chain`

// prefixed qualifies every column of a list with a table alias.
func prefixed(alias, cols string) string {
	parts := strings.Split(cols, ", ")
	for i, c := range parts {
		parts[i] = alias + "." + c
	}
	return strings.Join(parts, ", ")
}

func nanos(t time.Time) int64 { return t.UnixNano() }

// nullNanos is a nullable time column's value.
func nullNanos(t *time.Time) sql.NullInt64 {
	if t == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: nanos(*t), Valid: true}
}

// fromNullNanos reads a nullable time column.
func fromNullNanos(n sql.NullInt64) *time.Time {
	if !n.Valid {
		return nil
	}
	t := fromNanos(n.Int64)
	return &t
}

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

func encodeJSON(v any) string {
	b, _ := json.Marshal(v) // []string and map[string]string always marshal
	return string(b)
}

// querier is a *sql.DB or a *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func (s *sqlStore) CreateKey(ctx context.Context, k *Key) error {
	tx, err := s.d.beginWrite(ctx, s.db)
	if err != nil {
		return s.fail("begin", err)
	}
	defer tx.Rollback()
	k.Revision = 1
	if err := s.insertKey(ctx, tx, k); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return s.fail("commit", err)
	}
	return nil
}

// originOf is k's origin, generated when unset.
func originOf(k *Key) string {
	if k.Origin == "" {
		return OriginGenerated
	}
	return k.Origin
}

// insertKey inserts the row and the versions of k, with k.Revision.
func (s *sqlStore) insertKey(ctx context.Context, tx *sql.Tx, k *Key) error {
	_, err := tx.ExecContext(ctx, s.q(`INSERT INTO keys (`+keyColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		k.ID, k.Name, k.Provider, k.KeyType, k.KeySize, k.Curve, k.Algorithm, encodeJSON(k.Usage), k.Extractable,
		string(k.State), encodeJSON(k.Metadata), nanos(k.CreatedAt), nanos(k.UpdatedAt), nullNanos(k.ExpiresAt), k.Revision,
		k.PublishJWKS, k.Description, nullNanos(k.DeletionDate), int64(k.RotationPeriod), nullNanos(k.NextRotationAt), k.MinDecryptVersion, originOf(k))
	if err != nil {
		if s.d.isUnique(err) {
			return kgerr.New(kgerr.KindAlreadyExists, fmt.Sprintf("a key named %q already exists", k.Name))
		}
		return s.fail("insert key", err)
	}
	return s.writeVersions(ctx, tx, k)
}

// writeVersions makes the stored versions of k exactly k.Versions.
func (s *sqlStore) writeVersions(ctx context.Context, tx *sql.Tx, k *Key) error {
	keep := make([]string, len(k.Versions))
	args := []any{k.ID}
	for i, v := range k.Versions {
		keep[i] = "?"
		args = append(args, v.Version)
	}
	del := `DELETE FROM key_versions WHERE key_id = ?`
	if len(keep) > 0 {
		del += ` AND version NOT IN (` + strings.Join(keep, ", ") + `)`
	}
	if _, err := tx.ExecContext(ctx, s.q(del), args...); err != nil {
		return s.fail("delete dropped key versions", err)
	}
	for _, v := range k.Versions {
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO key_versions (key_id, `+versionColumns+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (key_id, version) DO UPDATE SET provider_ref = excluded.provider_ref,
				public_key = excluded.public_key, state = excluded.state, certificate_chain = excluded.certificate_chain`),
			k.ID, v.Version, v.ObjectID, v.ProviderRef, v.PublicKey, string(v.State), nanos(v.CreatedAt), v.CertificateChain)
		if err != nil {
			if s.d.isUnique(err) {
				return kgerr.New(kgerr.KindConflict, fmt.Sprintf("object id %s of version %d is already in use", v.ObjectID, v.Version))
			}
			return s.fail("write key version", err)
		}
	}
	return nil
}

type rowScanner interface{ Scan(...any) error }

// scanKey scans the key columns and then extra.
func scanKey(r rowScanner, extra ...any) (*Key, error) {
	var (
		k                       Key
		usage, meta, state      string
		created, updated        int64
		exp, deletion, rotation sql.NullInt64
		curve, algorithm        sql.NullString
		extractable             bool
		period                  int64
	)
	dest := append([]any{&k.ID, &k.Name, &k.Provider, &k.KeyType, &k.KeySize, &curve, &algorithm, &usage, &extractable,
		&state, &meta, &created, &updated, &exp, &k.Revision, &k.PublishJWKS, &k.Description, &deletion, &period, &rotation, &k.MinDecryptVersion, &k.Origin}, extra...)
	if err := r.Scan(dest...); err != nil {
		return nil, err
	}
	k.Curve, k.Algorithm, k.Extractable, k.State = curve.String, algorithm.String, extractable, State(state)
	k.CreatedAt, k.UpdatedAt = fromNanos(created), fromNanos(updated)
	k.ExpiresAt, k.DeletionDate, k.NextRotationAt = fromNullNanos(exp), fromNullNanos(deletion), fromNullNanos(rotation)
	k.RotationPeriod = time.Duration(period)
	if err := json.Unmarshal([]byte(usage), &k.Usage); err != nil {
		return nil, fmt.Errorf("key %s: usage column: %w", k.ID, err)
	}
	if err := json.Unmarshal([]byte(meta), &k.Metadata); err != nil {
		return nil, fmt.Errorf("key %s: metadata column: %w", k.ID, err)
	}
	return &k, nil
}

// versionScan holds the nullable version columns of a LEFT JOIN row.
type versionScan struct {
	version       sql.NullInt64
	objectID, ref sql.NullString
	publicKey     []byte
	state         sql.NullString
	created       sql.NullInt64
	chain         []byte
}

func (v *versionScan) dest() []any {
	return []any{&v.version, &v.objectID, &v.ref, &v.publicKey, &v.state, &v.created, &v.chain}
}

func (v *versionScan) get() (Version, bool) {
	if !v.version.Valid {
		return Version{}, false
	}
	return Version{Version: int(v.version.Int64), ObjectID: v.objectID.String, ProviderRef: v.ref.String,
		PublicKey: v.publicKey, State: State(v.state.String), CreatedAt: fromNanos(v.created.Int64), CertificateChain: v.chain}, true
}

// loadVersions fills the versions of keys with one query.
func (s *sqlStore) loadVersions(ctx context.Context, q querier, keys []*Key) error {
	if len(keys) == 0 {
		return nil
	}
	byID := make(map[string]*Key, len(keys))
	args := make([]any, len(keys))
	marks := make([]string, len(keys))
	for i, k := range keys {
		byID[k.ID] = k
		args[i] = k.ID
		marks[i] = "?"
	}
	rows, err := q.QueryContext(ctx, s.q(`SELECT key_id, `+versionColumns+`
		FROM key_versions WHERE key_id IN (`+strings.Join(marks, ",")+`) ORDER BY key_id, version`), args...)
	if err != nil {
		return s.fail("versions", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id string
			vs versionScan
		)
		if err := rows.Scan(append([]any{&id}, vs.dest()...)...); err != nil {
			return s.fail("versions", err)
		}
		if v, ok := vs.get(); ok && byID[id] != nil {
			byID[id].Versions = append(byID[id].Versions, v)
		}
	}
	if err := rows.Err(); err != nil {
		return s.fail("versions", err)
	}
	return nil
}

// GetKey reads the key and its versions with one statement, so they come
// from one snapshot even while another process updates the key, and every
// call reads the database: there is no cache to go stale.
func (s *sqlStore) GetKey(ctx context.Context, idOrName string) (*Key, error) {
	s.getOnce.Do(func() {
		s.getStmt, s.getErr = s.db.Prepare(s.q(fmt.Sprintf(getKeyQuery, prefixed("k", keyColumns), prefixed("v", versionColumns))))
	})
	if s.getErr != nil {
		return nil, s.fail("get key", s.getErr)
	}
	rows, err := s.getStmt.QueryContext(ctx, idOrName, idOrName, idOrName)
	if err != nil {
		return nil, s.fail("get key", err)
	}
	defer rows.Close()
	var k *Key
	for rows.Next() {
		var vs versionScan
		row, err := scanKey(rows, vs.dest()...)
		if err != nil {
			return nil, s.fail("get key", err)
		}
		if k == nil {
			k = row
		} else if row.ID != k.ID {
			break // another key's name is this key's id: the id wins
		}
		if v, ok := vs.get(); ok {
			k.Versions = append(k.Versions, v)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail("get key", err)
	}
	if k == nil {
		return nil, kgerr.New(kgerr.KindKeyNotFound, fmt.Sprintf("key %s not found", kgerr.Quote(idOrName)))
	}
	return k, nil
}

// Page tokens are opaque to clients: base64 of the last id of the page.
func encodePageToken(id string) string { return base64.RawURLEncoding.EncodeToString([]byte(id)) }

// decodePageToken returns the key id a token resumes after. Only a token
// this store made decodes: canonical base64 of a key id (a UUID in its
// canonical form), so that a mistyped or made-up token is refused instead
// of answering an empty page.
func decodePageToken(t string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(t)
	id := string(b)
	if u, uerr := uuid.Parse(id); err != nil || uerr != nil || u.String() != id || encodePageToken(id) != t {
		return "", kgerr.Invalid("page_token is not valid: send the next_page_token of an earlier page")
	}
	return id, nil
}

// MaxPageSize caps ListOptions.Limit.
const MaxPageSize = 1000

func (s *sqlStore) ListKeys(ctx context.Context, o ListOptions) ([]*Key, string, error) {
	return s.listKeys(ctx, s.db, o)
}

func (s *sqlStore) listKeys(ctx context.Context, q querier, o ListOptions) ([]*Key, string, error) {
	limit := o.Limit
	switch {
	case limit == 0:
		limit = 100
	case limit < 0 || limit > MaxPageSize:
		return nil, "", kgerr.Invalid("limit must be between 1 and " + strconv.Itoa(MaxPageSize))
	}
	var (
		where []string
		args  []any
	)
	if o.Provider != "" {
		where, args = append(where, "provider = ?"), append(args, o.Provider)
	}
	if o.State != "" {
		where, args = append(where, "state = ?"), append(args, string(o.State))
	}
	if o.PublishedJWKS {
		where, args = append(where, "publish_jwks = ?"), append(args, true)
	}
	if !o.DeletionDue.IsZero() {
		where, args = append(where, "deletion_date <= ?"), append(args, nanos(o.DeletionDue))
	}
	if !o.RotationDue.IsZero() {
		where, args = append(where, "next_rotation_at <= ?"), append(args, nanos(o.RotationDue))
	}
	if o.PageToken != "" {
		after, err := decodePageToken(o.PageToken)
		if err != nil {
			return nil, "", err
		}
		where, args = append(where, "id > ?"), append(args, after)
	}
	query := `SELECT ` + keyColumns + ` FROM keys`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY id LIMIT " + strconv.Itoa(limit+1)
	rows, err := q.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, "", s.fail("list keys", err)
	}
	defer rows.Close()
	var keys []*Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, "", s.fail("list keys", err)
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, "", s.fail("list keys", err)
	}
	rows.Close()
	next := ""
	if len(keys) > limit {
		keys = keys[:limit]
		next = encodePageToken(keys[limit-1].ID)
	}
	if err := s.loadVersions(ctx, q, keys); err != nil {
		return nil, "", err
	}
	return keys, next, nil
}

// notFoundOrConflict tells, after a compare-and-swap matched no row, whether
// the key is gone or was changed.
func (s *sqlStore) notFoundOrConflict(ctx context.Context, tx *sql.Tx, id string) error {
	var n int
	if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM keys WHERE id = ?`), id).Scan(&n); err != nil {
		return s.fail("compare", err)
	}
	if n == 0 {
		return kgerr.New(kgerr.KindKeyNotFound, fmt.Sprintf("key %q not found", id))
	}
	return kgerr.New(kgerr.KindConflict, "the key was changed by another request; retry")
}

func (s *sqlStore) UpdateKey(ctx context.Context, k *Key) error {
	tx, err := s.d.beginWrite(ctx, s.db)
	if err != nil {
		return s.fail("begin", err)
	}
	defer tx.Rollback()
	// The compare-and-swap: the row is written only if its revision is
	// still the one k was read at. A concurrent writer holds the row lock
	// until it commits; then this statement sees its new revision and
	// matches nothing.
	res, err := tx.ExecContext(ctx, s.q(`UPDATE keys SET algorithm = ?, usage = ?, state = ?, metadata = ?,
		updated_at = ?, expires_at = ?, publish_jwks = ?, description = ?, deletion_date = ?, rotation_period = ?, next_rotation_at = ?,
		min_decrypt_version = ?, revision = revision + 1 WHERE id = ? AND revision = ?`),
		k.Algorithm, encodeJSON(k.Usage), string(k.State), encodeJSON(k.Metadata), nanos(k.UpdatedAt), nullNanos(k.ExpiresAt),
		k.PublishJWKS, k.Description, nullNanos(k.DeletionDate), int64(k.RotationPeriod), nullNanos(k.NextRotationAt), k.MinDecryptVersion,
		k.ID, k.Revision)
	if err != nil {
		return s.fail("update key", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return s.fail("update key", err)
	} else if n == 0 {
		return s.notFoundOrConflict(ctx, tx, k.ID)
	}
	if err := s.writeVersions(ctx, tx, k); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return s.fail("commit", err)
	}
	k.Revision++
	return nil
}

func (s *sqlStore) DeleteKey(ctx context.Context, id string, revision int64) error {
	tx, err := s.d.beginWrite(ctx, s.db)
	if err != nil {
		return s.fail("begin", err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, s.q(`DELETE FROM keys WHERE id = ? AND revision = ?`), id, revision)
	if err != nil {
		return s.fail("delete key", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return s.fail("delete key", err)
	} else if n == 0 {
		return s.notFoundOrConflict(ctx, tx, id)
	}
	if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM key_versions WHERE key_id = ?`), id); err != nil {
		return s.fail("delete key versions", err)
	}
	if err := tx.Commit(); err != nil {
		return s.fail("commit", err)
	}
	return nil
}

// exportPage is how many keys Export reads per query (a variable for the
// tests, which make an export span several pages).
var exportPage = 500

// Export calls fn with every key, in id order, all read in one read-only
// transaction: one snapshot of the store, whatever is written meanwhile.
func (s *sqlStore) Export(ctx context.Context, fn func(*Key) error) error {
	tx, err := s.d.beginSnapshot(ctx, s.db)
	if err != nil {
		return s.fail("begin snapshot", err)
	}
	defer tx.Rollback()
	token := ""
	for {
		keys, next, err := s.listKeys(ctx, tx, ListOptions{Limit: exportPage, PageToken: token})
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := fn(k); err != nil {
				return err
			}
		}
		if next == "" {
			break
		}
		token = next
	}
	if err := tx.Commit(); err != nil {
		return s.fail("end snapshot", err)
	}
	return nil
}

// Import inserts keys, as they are (ids, states, revisions), in one
// transaction: all of them or none. See Snapshotter.
func (s *sqlStore) Import(ctx context.Context, o ImportOptions, next func() (*Key, error)) (int, error) {
	tx, err := s.d.beginWrite(ctx, s.db)
	if err != nil {
		return 0, s.fail("begin", err)
	}
	defer tx.Rollback()
	if s.d.lockImport != "" {
		if _, err := tx.ExecContext(ctx, s.d.lockImport); err != nil {
			return 0, s.fail("import lock", err)
		}
	}
	if o.Replace {
		for _, q := range []string{`DELETE FROM key_versions`, `DELETE FROM keys`} {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return 0, s.fail("clear", err)
			}
		}
	} else {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM keys`).Scan(&n); err != nil {
			return 0, s.fail("count keys", err)
		}
		if n > 0 {
			return 0, &NotEmptyError{Keys: n}
		}
	}
	count := 0
	for {
		k, err := next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, err
		}
		if err := validateImported(k); err != nil {
			return 0, err
		}
		if k.Revision < 1 {
			k.Revision = 1
		}
		if err := s.insertKey(ctx, tx, k); err != nil {
			return 0, fmt.Errorf("key %s (%s): %w", k.ID, k.Name, err)
		}
		count++
	}
	if o.Audit != nil {
		if err := s.importAudit(ctx, tx, o.Audit()); err != nil {
			return 0, err
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, s.fail("commit", err)
	}
	return count, nil
}

func (s *sqlStore) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return s.fail("ping", err)
	}
	return nil
}

func (s *sqlStore) Close() error {
	if s.getStmt != nil {
		s.getStmt.Close()
	}
	return s.db.Close()
}
