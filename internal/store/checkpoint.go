package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// The audit checkpoints: signed statements of how far each replica's audit
// log had come (see internal/audit), kept in the metadata store so that
// every replica and every backup has them, and the record of the key they
// are signed with. Both tables only grow: nothing the server does removes
// a checkpoint, and a restore adds the backup's to those already stored.

// checkpointMigration (4) adds the audit signing key and the checkpoints;
// blob is the dialect's binary type, text its bytewise-compared text type.
func checkpointMigration(text, blob string) string {
	return `CREATE TABLE audit_keys (
		ref        ` + text + ` PRIMARY KEY,
		object_id  TEXT NOT NULL,
		public_key ` + blob + `,
		created_at BIGINT NOT NULL
	);
	CREATE TABLE audit_checkpoints (
		id        ` + text + ` PRIMARY KEY,
		replica   ` + text + ` NOT NULL,
		file      TEXT NOT NULL,
		seq       BIGINT NOT NULL,
		head      TEXT NOT NULL,
		signed_at BIGINT NOT NULL,
		key_ref   TEXT NOT NULL,
		signature ` + blob + ` NOT NULL
	);
	CREATE INDEX audit_checkpoints_time ON audit_checkpoints (signed_at, id);
	CREATE INDEX audit_checkpoints_replica ON audit_checkpoints (replica, seq);`
}

// AuditKey is the record of an audit signing key: which configured key it
// is (Ref, provider/key-name), the object id its material was made under,
// and its public key (nil while the key is being made).
type AuditKey struct {
	Ref       string
	ObjectID  string
	PublicKey []byte // DER SubjectPublicKeyInfo
	CreatedAt time.Time
}

// Checkpoint is a stored audit checkpoint (internal/audit.Checkpoint).
type Checkpoint struct {
	// ID is unique per checkpoint; adding one whose ID is stored does
	// nothing.
	ID        string
	Replica   string
	File      string
	Seq       uint64
	Head      string
	Time      time.Time
	KeyRef    string
	Signature []byte
}

// CheckpointFilter selects checkpoints.
type CheckpointFilter struct {
	// Replica keeps one replica's ("": every replica's).
	Replica string
	// Limit is the page size: 100 when 0, at most MaxPageSize. A negative
	// limit means no limit (every checkpoint, for the verifier and
	// backups).
	Limit     int
	PageToken string
}

// CheckpointStore keeps audit checkpoints and the audit signing key's
// record. Both SQL stores implement it; find it with Checkpoints.
type CheckpointStore interface {
	// ClaimAuditKey inserts k unless a record for k.Ref exists. It returns
	// the stored record and whether it is k (this caller made the claim
	// and must make the key).
	ClaimAuditKey(ctx context.Context, k AuditKey) (AuditKey, bool, error)
	// CompleteAuditKey sets the public key of the record of ref made under
	// objectID, if it has none yet.
	CompleteAuditKey(ctx context.Context, ref, objectID string, publicKey []byte) error
	// ReplaceAuditKeyClaim moves an unfinished claim (no public key) of
	// ref from objectID to newObjectID, so that one caller takes over a
	// claim whose maker went away; false when the record changed meanwhile.
	ReplaceAuditKeyClaim(ctx context.Context, ref, objectID, newObjectID string) (bool, error)
	// AuditKeys lists every audit key record, by ref.
	AuditKeys(ctx context.Context) ([]AuditKey, error)
	// AddCheckpoint stores c (nothing when its ID is stored already).
	AddCheckpoint(ctx context.Context, c Checkpoint) error
	// ListCheckpoints lists checkpoints newest first (by time, then id);
	// the token is empty on the last page.
	ListCheckpoints(ctx context.Context, f CheckpointFilter) ([]Checkpoint, string, error)
}

// Checkpoints returns s's checkpoint store, looking under a cache.
func Checkpoints(s Store) (CheckpointStore, bool) {
	for {
		if cs, ok := s.(CheckpointStore); ok {
			return cs, true
		}
		u, ok := s.(interface{ Unwrap() Store })
		if !ok {
			return nil, false
		}
		s = u.Unwrap()
	}
}

var _ CheckpointStore = (*sqlStore)(nil)

func (s *sqlStore) ClaimAuditKey(ctx context.Context, k AuditKey) (AuditKey, bool, error) {
	if k.Ref == "" || k.ObjectID == "" {
		return AuditKey{}, false, errors.New("store: an audit key needs its ref and object id")
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = time.Now().UTC()
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO audit_keys (ref, object_id, public_key, created_at) VALUES (?, ?, ?, ?)`),
		k.Ref, k.ObjectID, k.PublicKey, nanos(k.CreatedAt))
	if err != nil && !s.d.isUnique(err) {
		return AuditKey{}, false, s.fail("claim audit key", err)
	}
	got, err := s.auditKey(ctx, k.Ref)
	if err != nil {
		return AuditKey{}, false, err
	}
	return got, got.ObjectID == k.ObjectID, nil
}

func (s *sqlStore) auditKey(ctx context.Context, ref string) (AuditKey, error) {
	var (
		k       AuditKey
		created int64
	)
	err := s.db.QueryRowContext(ctx, s.q(`SELECT ref, object_id, public_key, created_at FROM audit_keys WHERE ref = ?`), ref).
		Scan(&k.Ref, &k.ObjectID, &k.PublicKey, &created)
	if err != nil {
		return AuditKey{}, s.fail("audit key", err)
	}
	k.CreatedAt = fromNanos(created)
	return k, nil
}

func (s *sqlStore) CompleteAuditKey(ctx context.Context, ref, objectID string, publicKey []byte) error {
	if len(publicKey) == 0 {
		return errors.New("store: an audit key's public key is empty")
	}
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE audit_keys SET public_key = ? WHERE ref = ? AND object_id = ? AND public_key IS NULL`),
		publicKey, ref, objectID)
	if err != nil {
		return s.fail("complete audit key", err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return kgerr.Wrap(kgerr.KindConflict, fmt.Errorf("store: audit key %s: the claim under object %s is gone or complete", ref, objectID),
			"the audit key record changed")
	}
	return nil
}

func (s *sqlStore) ReplaceAuditKeyClaim(ctx context.Context, ref, objectID, newObjectID string) (bool, error) {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE audit_keys SET object_id = ?, created_at = ? WHERE ref = ? AND object_id = ? AND public_key IS NULL`),
		newObjectID, nanos(time.Now()), ref, objectID)
	if err != nil {
		return false, s.fail("replace audit key claim", err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

func (s *sqlStore) AuditKeys(ctx context.Context) ([]AuditKey, error) {
	return s.auditKeys(ctx, s.db)
}

func (s *sqlStore) auditKeys(ctx context.Context, q querier) ([]AuditKey, error) {
	rows, err := q.QueryContext(ctx, `SELECT ref, object_id, public_key, created_at FROM audit_keys ORDER BY ref`)
	if err != nil {
		return nil, s.fail("audit keys", err)
	}
	defer rows.Close()
	var out []AuditKey
	for rows.Next() {
		var (
			k       AuditKey
			created int64
		)
		if err := rows.Scan(&k.Ref, &k.ObjectID, &k.PublicKey, &created); err != nil {
			return nil, s.fail("audit keys", err)
		}
		k.CreatedAt = fromNanos(created)
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail("audit keys", err)
	}
	return out, nil
}

func validCheckpoint(c Checkpoint) error {
	if c.ID == "" || c.Replica == "" || c.Head == "" || c.KeyRef == "" || len(c.Signature) == 0 || c.Time.IsZero() {
		return errors.New("store: a checkpoint lacks its id, replica, head, key, signature or time")
	}
	if c.Seq > 1<<63-1 {
		return errors.New("store: a checkpoint's sequence number is out of range")
	}
	return nil
}

func (s *sqlStore) AddCheckpoint(ctx context.Context, c Checkpoint) error {
	return s.addCheckpoint(ctx, s.db, c)
}

func (s *sqlStore) addCheckpoint(ctx context.Context, q querier, c Checkpoint) error {
	if err := validCheckpoint(c); err != nil {
		return err
	}
	_, err := q.ExecContext(ctx, s.q(`INSERT INTO audit_checkpoints (id, replica, file, seq, head, signed_at, key_ref, signature)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`),
		c.ID, c.Replica, c.File, int64(c.Seq), c.Head, nanos(c.Time), c.KeyRef, c.Signature)
	if err != nil {
		return s.fail("add checkpoint", err)
	}
	return nil
}

// Checkpoint page tokens: base64 of "<signed_at>:<id>" of the page's last
// checkpoint.
func encodeCheckpointToken(c Checkpoint) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(nanos(c.Time), 10) + ":" + c.ID))
}

func decodeCheckpointToken(t string) (int64, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(t)
	bad := kgerr.Invalid("page_token is not valid")
	if err != nil || len(b) > 128 {
		return 0, "", bad
	}
	at, id, ok := strings.Cut(string(b), ":")
	n, err := strconv.ParseInt(at, 10, 64)
	if !ok || err != nil || id == "" {
		return 0, "", bad
	}
	return n, id, nil
}

func (s *sqlStore) ListCheckpoints(ctx context.Context, f CheckpointFilter) ([]Checkpoint, string, error) {
	return s.listCheckpoints(ctx, s.db, f)
}

func (s *sqlStore) listCheckpoints(ctx context.Context, q querier, f CheckpointFilter) ([]Checkpoint, string, error) {
	limit := f.Limit
	switch {
	case limit == 0:
		limit = 100
	case limit > MaxPageSize:
		return nil, "", kgerr.Invalid("limit must be between 1 and " + strconv.Itoa(MaxPageSize))
	}
	var (
		where []string
		args  []any
	)
	if f.Replica != "" {
		where, args = append(where, "replica = ?"), append(args, f.Replica)
	}
	if f.PageToken != "" {
		at, id, err := decodeCheckpointToken(f.PageToken)
		if err != nil {
			return nil, "", err
		}
		where, args = append(where, "(signed_at < ? OR (signed_at = ? AND id < ?))"), append(args, at, at, id)
	}
	query := `SELECT id, replica, file, seq, head, signed_at, key_ref, signature FROM audit_checkpoints`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY signed_at DESC, id DESC"
	if limit > 0 {
		query += " LIMIT " + strconv.Itoa(limit+1)
	}
	rows, err := q.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, "", s.fail("list checkpoints", err)
	}
	defer rows.Close()
	var out []Checkpoint
	for rows.Next() {
		var (
			c       Checkpoint
			seq, at int64
		)
		if err := rows.Scan(&c.ID, &c.Replica, &c.File, &seq, &c.Head, &at, &c.KeyRef, &c.Signature); err != nil {
			return nil, "", s.fail("list checkpoints", err)
		}
		c.Seq, c.Time = uint64(seq), fromNanos(at)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, "", s.fail("list checkpoints", err)
	}
	next := ""
	if limit > 0 && len(out) > limit {
		out = out[:limit]
		next = encodeCheckpointToken(out[limit-1])
	}
	return out, next, nil
}

// AuditRecords are the audit keys and checkpoints a backup carries.
type AuditRecords struct {
	Keys        []AuditKey
	Checkpoints []Checkpoint
}

// AuditExporter is a store whose audit records a backup carries (both SQL
// stores).
type AuditExporter interface {
	// ExportAudit reads every audit key and checkpoint, oldest checkpoint
	// first, from one snapshot.
	ExportAudit(ctx context.Context) (AuditRecords, error)
}

var _ AuditExporter = (*sqlStore)(nil)

func (s *sqlStore) ExportAudit(ctx context.Context) (AuditRecords, error) {
	tx, err := s.d.beginSnapshot(ctx, s.db)
	if err != nil {
		return AuditRecords{}, s.fail("begin snapshot", err)
	}
	defer tx.Rollback()
	r, err := s.exportAudit(ctx, tx)
	if err != nil {
		return AuditRecords{}, err
	}
	if err := tx.Commit(); err != nil {
		return AuditRecords{}, s.fail("end snapshot", err)
	}
	return r, nil
}

func (s *sqlStore) exportAudit(ctx context.Context, q querier) (AuditRecords, error) {
	keys, err := s.auditKeys(ctx, q)
	if err != nil {
		return AuditRecords{}, err
	}
	cps, _, err := s.listCheckpoints(ctx, q, CheckpointFilter{Limit: -1})
	if err != nil {
		return AuditRecords{}, err
	}
	for i, j := 0, len(cps)-1; i < j; i, j = i+1, j-1 {
		cps[i], cps[j] = cps[j], cps[i]
	}
	return AuditRecords{Keys: keys, Checkpoints: cps}, nil
}

// importAudit adds a backup's audit records to those stored: a checkpoint
// already stored is kept, an audit key record already stored wins.
func (s *sqlStore) importAudit(ctx context.Context, tx *sql.Tx, r AuditRecords) error {
	for _, k := range r.Keys {
		if k.Ref == "" || k.ObjectID == "" {
			return errors.New("store import: an audit key lacks its ref or object id")
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO audit_keys (ref, object_id, public_key, created_at) VALUES (?, ?, ?, ?)
			ON CONFLICT (ref) DO NOTHING`), k.Ref, k.ObjectID, k.PublicKey, nanos(k.CreatedAt)); err != nil {
			return s.fail("import audit key", err)
		}
	}
	for _, c := range r.Checkpoints {
		if err := s.addCheckpoint(ctx, tx, c); err != nil {
			return fmt.Errorf("store import: checkpoint %s: %w", c.ID, err)
		}
	}
	return nil
}
