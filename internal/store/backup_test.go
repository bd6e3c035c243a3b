package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/store/storetest"
)

func openSQLiteT(t *testing.T) store.Store {
	t.Helper()
	s, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// backupOf fills a store with keys and returns the store and its backup.
func backupOf(t *testing.T) (store.Store, []byte) {
	t.Helper()
	ctx := context.Background()
	s := openSQLiteT(t)
	for _, name := range []string{"bk-a", "bk-b", "bk-c"} {
		k := storetest.NewKey(name, "hsm")
		if name == "bk-c" {
			storetest.WithLifecycle(k)
		}
		if err := s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		if name == "bk-b" {
			k.Versions = append(k.Versions, store.Version{Version: 2, ObjectID: "000000000000000000000000000bb002",
				ProviderRef: "ref-b2", PublicKey: []byte{9, 9}, State: store.StateActive, CreatedAt: time.Now().UTC()})
			k.State = store.StateInactive
			if err := s.UpdateKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
	}
	var buf bytes.Buffer
	n, err := store.WriteBackup(ctx, s.(store.Snapshotter), &buf, store.BackupHeader{Driver: "sqlite", SchemaVersion: 1, Software: "test"})
	if err != nil || n != 3 {
		t.Fatalf("backup: %d keys, %v", n, err)
	}
	return s, buf.Bytes()
}

func TestBackupRestoreRoundTrip(t *testing.T) {
	ctx := context.Background()
	src, b := backupOf(t)
	if lines := strings.Count(string(b), "\n"); lines != 5 {
		t.Fatalf("backup has %d lines, want header, 3 keys and trailer", lines)
	}
	dst := openSQLiteT(t)
	h, n, err := store.ReadBackup(ctx, dst.(store.Snapshotter), bytes.NewReader(b), store.ImportOptions{})
	if err != nil || n != 3 || h.Driver != "sqlite" || h.FormatVersion != store.BackupFormatVersion {
		t.Fatalf("restore: %+v %d %v", h, n, err)
	}
	for _, name := range []string{"bk-a", "bk-b", "bk-c"} {
		want, _ := src.GetKey(ctx, name)
		got, err := dst.GetKey(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != want.ID || got.State != want.State || got.Revision != want.Revision || len(got.Versions) != len(want.Versions) ||
			!got.CreatedAt.Equal(want.CreatedAt) || !bytes.Equal(got.Versions[0].PublicKey, want.Versions[0].PublicKey) ||
			got.Versions[len(got.Versions)-1].ProviderRef != want.Versions[len(want.Versions)-1].ProviderRef {
			t.Fatalf("restored %+v, want %+v", got, want)
		}
		if !storetest.SameLifecycle(got, want) {
			t.Fatalf("restored lifecycle fields %+v, want %+v", got, want)
		}
	}
	// A second restore into the now full store is refused; --force replaces.
	_, _, err = store.ReadBackup(ctx, dst.(store.Snapshotter), bytes.NewReader(b), store.ImportOptions{})
	var ne *store.NotEmptyError
	if !errors.As(err, &ne) {
		t.Fatalf("restore into a full store: %v, want *NotEmptyError", err)
	}
	if _, n, err := store.ReadBackup(ctx, dst.(store.Snapshotter), bytes.NewReader(b), store.ImportOptions{Replace: true}); err != nil || n != 3 {
		t.Fatalf("restore with replace: %d, %v", n, err)
	}
}

// A damaged backup is refused as a whole: nothing is restored.
func TestRestoreRefusesDamagedBackups(t *testing.T) {
	ctx := context.Background()
	_, b := backupOf(t)
	lines := strings.SplitAfter(string(b), "\n")
	cases := map[string]string{
		"truncated":       strings.Join(lines[:3], ""),
		"no trailer":      strings.Join(lines[:4], ""),
		"altered key":     strings.Replace(string(b), `"name":"bk-b"`, `"name":"bk-x"`, 1),
		"dropped key":     lines[0] + lines[1] + lines[3] + lines[4],
		"extra after end": string(b) + lines[1],
		"unknown field":   strings.Replace(string(b), `"name":"bk-a"`, `"name":"bk-a","private_key":"AAAA"`, 1),
		"newer format":    strings.Replace(string(b), fmt.Sprintf(`"format_version":%d`, store.BackupFormatVersion), `"format_version":99`, 1),
		"not a backup":    "{\"hello\":1}\n",
		"empty":           "",
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			dst := openSQLiteT(t)
			_, _, err := store.ReadBackup(ctx, dst.(store.Snapshotter), strings.NewReader(data), store.ImportOptions{})
			if !errors.Is(err, store.ErrBadBackup) {
				t.Fatalf("restore: %v, want ErrBadBackup", err)
			}
			if keys, _, _ := dst.ListKeys(ctx, store.ListOptions{}); len(keys) != 0 {
				t.Fatalf("a refused restore left %d keys", len(keys))
			}
		})
	}
}

// A backup of format version 1 (before the lifecycle fields) restores: its
// keys have no description, deletion date, rotation or version floor.
func TestRestoreFormatVersion1(t *testing.T) {
	ctx := context.Background()
	k := storetest.NewKey("old", "hsm")
	src := openSQLiteT(t)
	if err := src.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := store.WriteBackup(ctx, src.(store.Snapshotter), &buf, store.BackupHeader{}); err != nil {
		t.Fatal(err)
	}
	// The key line of this key is the same in both versions (no lifecycle
	// field is set); only the header differs, and the trailer's hash
	// covers key lines only.
	v1 := strings.Replace(buf.String(), fmt.Sprintf(`"format_version":%d`, store.BackupFormatVersion), `"format_version":1`, 1)
	dst := openSQLiteT(t)
	h, n, err := store.ReadBackup(ctx, dst.(store.Snapshotter), strings.NewReader(v1), store.ImportOptions{})
	if err != nil || n != 1 || h.FormatVersion != 1 {
		t.Fatalf("restore of a version 1 backup: %+v %d %v", h, n, err)
	}
	got, err := dst.GetKey(ctx, "old")
	if err != nil || got.DeletionDate != nil || got.RotationPeriod != 0 || got.NextRotationAt != nil || got.MinDecryptVersion != 0 || got.Description != "" || got.Origin != store.OriginGenerated {
		t.Fatalf("restored %+v, %v", got, err)
	}
}
