package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// A database made by a binary of schema version 1, holding a key, migrates
// to the lifecycle schema: the key keeps everything and has no deletion
// date, rotation or version floor.
func TestSQLiteMigratesFromVersion1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "meta.db")
	old, err := openSQLite(ctx, path, false)
	if err != nil {
		t.Fatal(err)
	}
	old.d.migrations = old.d.migrations[:1]
	if v, err := old.Migrate(ctx); err != nil || v != 1 {
		t.Fatalf("migrate to version 1: %d, %v", v, err)
	}
	now := time.Now().UnixNano()
	if _, err := old.db.ExecContext(ctx, `INSERT INTO keys (id, name, provider, key_type, key_size, curve, algorithm, usage,
		extractable, state, metadata, created_at, updated_at, expires_at, revision)
		VALUES ('k1', 'old-key', 'software', 'EC', 256, 'P-256', 'ES256', '["sign"]', false, 'active', '{"a":"b"}', ?, ?, NULL, 3)`, now, now); err != nil {
		t.Fatal(err)
	}
	old.Close()

	s, err := openSQLite(ctx, path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.SchemaVersion(ctx); err != nil || v != s.LatestSchemaVersion() || v < 2 {
		t.Fatalf("schema version %d (%v), want %d", v, err, s.LatestSchemaVersion())
	}
	k, err := s.GetKey(ctx, "old-key")
	if err != nil {
		t.Fatal(err)
	}
	if k.ID != "k1" || k.Revision != 3 || k.Metadata["a"] != "b" || k.Description != "" || k.DeletionDate != nil ||
		k.RotationPeriod != 0 || k.NextRotationAt != nil || k.MinDecryptVersion != 0 {
		t.Fatalf("migrated key %+v", k)
	}
}
