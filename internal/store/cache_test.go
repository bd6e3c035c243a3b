package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/store/storetest"
)

func TestCacheSeesOwnWritesAtOnceOthersWithinTTL(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "meta.db")
	under, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer under.Close()
	other, err := store.OpenSQLite(ctx, path) // another process on the same database
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	const ttl = 300 * time.Millisecond
	c := store.WithCache(under, ttl)

	k := storetest.NewKey("cached", "software")
	if err := c.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetKey(ctx, "cached")
	if err != nil || got.State != store.StateActive {
		t.Fatalf("get: %+v %v", got, err)
	}
	// Callers may change what they get without changing the cache.
	got.State = store.StateDeleting
	if again, _ := c.GetKey(ctx, "cached"); again.State != store.StateActive {
		t.Fatal("a caller's change reached the cache")
	}
	// Own write: seen at once.
	got.State = store.StateInactive
	if err := c.UpdateKey(ctx, got); err != nil {
		t.Fatal(err)
	}
	if again, _ := c.GetKey(ctx, "cached"); again.State != store.StateInactive {
		t.Fatalf("own write not seen at once: %s", again.State)
	}
	// Another process's write: seen within the TTL, not necessarily at once.
	fresh, _ := other.GetKey(ctx, k.ID)
	fresh.State = store.StateActive
	if err := other.UpdateKey(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	time.Sleep(ttl + 50*time.Millisecond)
	if again, _ := c.GetKey(ctx, "cached"); again.State != store.StateActive {
		t.Fatalf("another process's write not seen after the TTL: %s", again.State)
	}
	// A delete is seen at once, by id and by name.
	cur, _ := c.GetKey(ctx, k.ID)
	if err := c.DeleteKey(ctx, cur.ID, cur.Revision); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{k.ID, "cached"} {
		if _, err := c.GetKey(ctx, ref); !errors.Is(err, kgerr.ErrKeyNotFound) {
			t.Fatalf("get %s after delete: %v", ref, err)
		}
	}
}

func TestZeroTTLIsNoCache(t *testing.T) {
	s, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if store.WithCache(s, 0) != s {
		t.Fatal("a zero TTL must leave the store as it is")
	}
}
