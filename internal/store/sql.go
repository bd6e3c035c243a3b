package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

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
}

// sqlStore implements Store over database/sql.
type sqlStore struct {
	db *sql.DB
	d  dialect
}

func (s *sqlStore) q(query string) string { return s.d.rebind(query) }

// migrate applies the migrations the database has not seen, each in its
// own transaction.
func (s *sqlStore) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("%s store: migrations table: %w", s.d.name, err)
	}
	for i, m := range s.d.migrations {
		v := i + 1
		tx, err := s.d.beginWrite(ctx, s.db)
		if err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM schema_migrations WHERE version = ?`), v).Scan(&n); err != nil {
			tx.Rollback()
			return err
		}
		if n > 0 {
			tx.Rollback()
			continue
		}
		if _, err := tx.ExecContext(ctx, m); err != nil {
			tx.Rollback()
			return fmt.Errorf("%s store: migration %d: %w", s.d.name, v, err)
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`), v, time.Now().UnixNano()); err != nil {
			tx.Rollback()
			if s.d.isUnique(err) { // another process migrated concurrently
				continue
			}
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

// SchemaVersion returns the highest migration applied.
func (s *sqlStore) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&v)
	return int(v.Int64), err
}

const keyColumns = `id, name, provider, key_type, key_size, curve, algorithm, usage, extractable, state, metadata, created_at, updated_at, expires_at, revision`

func nanos(t time.Time) int64 { return t.UnixNano() }

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

func encodeJSON(v any) string {
	b, _ := json.Marshal(v) // []string and map[string]string always marshal
	return string(b)
}

func (s *sqlStore) CreateKey(ctx context.Context, k *Key) error {
	tx, err := s.d.beginWrite(ctx, s.db)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	k.Revision = 1
	var exp sql.NullInt64
	if k.ExpiresAt != nil {
		exp = sql.NullInt64{Int64: nanos(*k.ExpiresAt), Valid: true}
	}
	_, err = tx.ExecContext(ctx, s.q(`INSERT INTO keys (`+keyColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		k.ID, k.Name, k.Provider, k.KeyType, k.KeySize, k.Curve, k.Algorithm, encodeJSON(k.Usage), k.Extractable,
		string(k.State), encodeJSON(k.Metadata), nanos(k.CreatedAt), nanos(k.UpdatedAt), exp, k.Revision)
	if err != nil {
		if s.d.isUnique(err) {
			return kgerr.New(kgerr.ErrKeyAlreadyExists.Code, fmt.Sprintf("a key named %q already exists", k.Name))
		}
		return fmt.Errorf("%s store: insert key: %w", s.d.name, err)
	}
	if err := s.writeVersions(ctx, tx, k); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *sqlStore) writeVersions(ctx context.Context, tx *sql.Tx, k *Key) error {
	for _, v := range k.Versions {
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO key_versions (key_id, version, object_id, provider_ref, public_key, state, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (key_id, version) DO UPDATE SET provider_ref = excluded.provider_ref,
				public_key = excluded.public_key, state = excluded.state`),
			k.ID, v.Version, v.ObjectID, v.ProviderRef, v.PublicKey, string(v.State), nanos(v.CreatedAt))
		if err != nil {
			return fmt.Errorf("%s store: write key version: %w", s.d.name, err)
		}
	}
	return nil
}

type rowScanner interface{ Scan(...any) error }

func scanKey(r rowScanner) (*Key, error) {
	var (
		k                  Key
		usage, meta, state string
		created, updated   int64
		exp                sql.NullInt64
		curve, algorithm   sql.NullString
		extractable        bool
	)
	if err := r.Scan(&k.ID, &k.Name, &k.Provider, &k.KeyType, &k.KeySize, &curve, &algorithm, &usage, &extractable,
		&state, &meta, &created, &updated, &exp, &k.Revision); err != nil {
		return nil, err
	}
	k.Curve, k.Algorithm, k.Extractable, k.State = curve.String, algorithm.String, extractable, State(state)
	k.CreatedAt, k.UpdatedAt = fromNanos(created), fromNanos(updated)
	if exp.Valid {
		t := fromNanos(exp.Int64)
		k.ExpiresAt = &t
	}
	if err := json.Unmarshal([]byte(usage), &k.Usage); err != nil {
		return nil, fmt.Errorf("key %s: usage column: %w", k.ID, err)
	}
	if err := json.Unmarshal([]byte(meta), &k.Metadata); err != nil {
		return nil, fmt.Errorf("key %s: metadata column: %w", k.ID, err)
	}
	return &k, nil
}

// loadVersions fills the versions of keys with one query.
func (s *sqlStore) loadVersions(ctx context.Context, keys []*Key) error {
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
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT key_id, version, object_id, provider_ref, public_key, state, created_at
		FROM key_versions WHERE key_id IN (`+strings.Join(marks, ",")+`) ORDER BY key_id, version`), args...)
	if err != nil {
		return fmt.Errorf("%s store: versions: %w", s.d.name, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id, state string
			v         Version
			created   int64
			ref       sql.NullString
		)
		if err := rows.Scan(&id, &v.Version, &v.ObjectID, &ref, &v.PublicKey, &state, &created); err != nil {
			return err
		}
		v.ProviderRef, v.State, v.CreatedAt = ref.String, State(state), fromNanos(created)
		if k := byID[id]; k != nil {
			k.Versions = append(k.Versions, v)
		}
	}
	return rows.Err()
}

func (s *sqlStore) GetKey(ctx context.Context, idOrName string) (*Key, error) {
	k, err := scanKey(s.db.QueryRowContext(ctx, s.q(`SELECT `+keyColumns+` FROM keys WHERE id = ?`), idOrName))
	if errors.Is(err, sql.ErrNoRows) {
		k, err = scanKey(s.db.QueryRowContext(ctx, s.q(`SELECT `+keyColumns+` FROM keys WHERE name = ?`), idOrName))
	}
	if errors.Is(err, sql.ErrNoRows) {
		return nil, kgerr.New(kgerr.ErrKeyNotFound.Code, fmt.Sprintf("key %q not found", idOrName))
	}
	if err != nil {
		return nil, fmt.Errorf("%s store: get key: %w", s.d.name, err)
	}
	if err := s.loadVersions(ctx, []*Key{k}); err != nil {
		return nil, err
	}
	return k, nil
}

// Page tokens are opaque to clients: base64 of the last id of the page.
func encodePageToken(id string) string { return base64.RawURLEncoding.EncodeToString([]byte(id)) }

func decodePageToken(t string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(t)
	if err != nil || len(b) == 0 || len(b) > 128 {
		return "", kgerr.Invalid("page_token is not valid")
	}
	return string(b), nil
}

// MaxPageSize caps ListOptions.Limit.
const MaxPageSize = 1000

func (s *sqlStore) ListKeys(ctx context.Context, o ListOptions) ([]*Key, string, error) {
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
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, "", fmt.Errorf("%s store: list keys: %w", s.d.name, err)
	}
	defer rows.Close()
	var keys []*Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, "", err
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	rows.Close()
	next := ""
	if len(keys) > limit {
		keys = keys[:limit]
		next = encodePageToken(keys[limit-1].ID)
	}
	if err := s.loadVersions(ctx, keys); err != nil {
		return nil, "", err
	}
	return keys, next, nil
}

// notFoundOrConflict tells, after a compare-and-swap matched no row, whether
// the key is gone or was changed.
func (s *sqlStore) notFoundOrConflict(ctx context.Context, tx *sql.Tx, id string) error {
	var n int
	if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM keys WHERE id = ?`), id).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return kgerr.New(kgerr.ErrKeyNotFound.Code, fmt.Sprintf("key %q not found", id))
	}
	return kgerr.New(kgerr.ErrConflict.Code, "the key was changed by another request; retry")
}

func (s *sqlStore) UpdateKey(ctx context.Context, k *Key) error {
	tx, err := s.d.beginWrite(ctx, s.db)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var exp sql.NullInt64
	if k.ExpiresAt != nil {
		exp = sql.NullInt64{Int64: nanos(*k.ExpiresAt), Valid: true}
	}
	res, err := tx.ExecContext(ctx, s.q(`UPDATE keys SET algorithm = ?, usage = ?, state = ?, metadata = ?,
		updated_at = ?, expires_at = ?, revision = revision + 1 WHERE id = ? AND revision = ?`),
		k.Algorithm, encodeJSON(k.Usage), string(k.State), encodeJSON(k.Metadata), nanos(k.UpdatedAt), exp, k.ID, k.Revision)
	if err != nil {
		return fmt.Errorf("%s store: update key: %w", s.d.name, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return s.notFoundOrConflict(ctx, tx, k.ID)
	}
	if err := s.writeVersions(ctx, tx, k); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	k.Revision++
	return nil
}

func (s *sqlStore) DeleteKey(ctx context.Context, id string, revision int64) error {
	tx, err := s.d.beginWrite(ctx, s.db)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, s.q(`DELETE FROM keys WHERE id = ? AND revision = ?`), id, revision)
	if err != nil {
		return fmt.Errorf("%s store: delete key: %w", s.d.name, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return s.notFoundOrConflict(ctx, tx, id)
	}
	if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM key_versions WHERE key_id = ?`), id); err != nil {
		return fmt.Errorf("%s store: delete key versions: %w", s.d.name, err)
	}
	return tx.Commit()
}

func (s *sqlStore) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

func (s *sqlStore) Close() error { return s.db.Close() }
