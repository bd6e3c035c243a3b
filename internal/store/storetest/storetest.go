// Package storetest is the conformance suite every store.Store passes.
package storetest

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// Run runs the suite. open returns a fresh, empty store each call.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("create get by id and name", func(t *testing.T) { testCreateGet(t, open(t)) })
	t.Run("duplicate name", func(t *testing.T) { testDuplicate(t, open(t)) })
	t.Run("update compare and swap", func(t *testing.T) { testUpdate(t, open(t)) })
	t.Run("delete", func(t *testing.T) { testDelete(t, open(t)) })
	t.Run("list filter and page", func(t *testing.T) { testList(t, open(t)) })
	t.Run("concurrent creates one name", func(t *testing.T) { testConcurrentCreate(t, open(t)) })
	t.Run("concurrent updates one winner", func(t *testing.T) { testConcurrentUpdate(t, open(t)) })
	t.Run("update removes dropped versions", func(t *testing.T) { testDropVersion(t, open(t)) })
	t.Run("export import round trip", func(t *testing.T) { testExportImport(t, open(t), open(t)) })
	t.Run("import refuses a non-empty store", func(t *testing.T) { testImportNotEmpty(t, open(t)) })
	t.Run("import is all or nothing", func(t *testing.T) { testImportAtomic(t, open(t)) })
	t.Run("export is one snapshot", func(t *testing.T) { testExportSnapshot(t, open(t)) })
	t.Run("lifecycle columns round trip", func(t *testing.T) { testLifecycleColumns(t, open(t)) })
	t.Run("origin", func(t *testing.T) { testOrigin(t, open(t)) })
	t.Run("list due for deletion and rotation", func(t *testing.T) { testListDue(t, open(t)) })
	t.Run("concurrent claims of due keys", func(t *testing.T) { testClaims(t, open(t), nil) })
	t.Run("certificate chains and published keys", func(t *testing.T) { testChainsPublished(t, open(t)) })
	t.Run("audit checkpoints", func(t *testing.T) { testCheckpoints(t, open(t)) })
	t.Run("audit key claimed once", func(t *testing.T) { s := open(t); testAuditKeyClaim(t, s, s) })
	t.Run("audit checkpoints backed up and restored", func(t *testing.T) { testCheckpointsBackup(t, open(t), open(t)) })
}

// RunShared runs the cases that need two store instances on one database,
// as two gateway processes have: open returns two separately opened stores
// (separate connection pools) on one fresh, empty database.
func RunShared(t *testing.T, open func(t *testing.T) (a, b store.Store)) {
	t.Run("shared creates one name", func(t *testing.T) { testSharedCreate(t, open) })
	t.Run("shared updates one winner", func(t *testing.T) { testSharedUpdate(t, open) })
	t.Run("shared rotate against delete", func(t *testing.T) { testSharedRotateDelete(t, open) })
	t.Run("shared change visible at once", func(t *testing.T) { testSharedVisible(t, open) })
	t.Run("shared claims of due keys once", func(t *testing.T) {
		a, b := open(t)
		testClaims(t, a, b)
	})
	t.Run("shared chain visible at once", func(t *testing.T) { testSharedChain(t, open) })
	t.Run("shared audit key claimed once", func(t *testing.T) {
		a, b := open(t)
		testAuditKeyClaim(t, a, b)
	})
}

// NewKey returns a valid key record for tests.
func NewKey(name, provider string) *store.Key {
	now := time.Now().UTC().Truncate(time.Microsecond)
	exp := now.Add(time.Hour)
	id, _ := uuid.NewV7()
	obj := uuid.New()
	return &store.Key{
		ID: id.String(), Name: name, Provider: provider, KeyType: "EC", KeySize: 256, Curve: "P-256",
		Algorithm: "ES256", Usage: []string{"sign", "verify"}, State: store.StateActive,
		Metadata:  map[string]string{"team": "payments"},
		CreatedAt: now, UpdatedAt: now, ExpiresAt: &exp,
		Versions: []store.Version{{Version: 1, ObjectID: fmt.Sprintf("%x", obj[:]), ProviderRef: "ref-" + name,
			PublicKey: []byte{1, 2, 3}, State: store.StateActive, CreatedAt: now}},
	}
}

func testCreateGet(t *testing.T, s store.Store) {
	ctx := context.Background()
	k := NewKey("alpha", "software")
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	if k.Revision != 1 {
		t.Fatalf("revision %d, want 1", k.Revision)
	}
	for _, ref := range []string{k.ID, k.Name} {
		got, err := s.GetKey(ctx, ref)
		if err != nil {
			t.Fatalf("get %s: %v", ref, err)
		}
		if got.ID != k.ID || got.Name != k.Name || got.Curve != "P-256" || got.Metadata["team"] != "payments" ||
			len(got.Usage) != 2 || got.ExpiresAt == nil || !got.ExpiresAt.Equal(*k.ExpiresAt) ||
			!got.CreatedAt.Equal(k.CreatedAt) || got.Revision != 1 {
			t.Fatalf("get %s = %+v, want %+v", ref, got, k)
		}
		if len(got.Versions) != 1 || got.Versions[0].ProviderRef != "ref-alpha" || string(got.Versions[0].PublicKey) != "\x01\x02\x03" {
			t.Fatalf("versions = %+v", got.Versions)
		}
	}
	if _, err := s.GetKey(ctx, "nope"); !errors.Is(err, kgerr.ErrKeyNotFound) {
		t.Fatalf("get missing: %v, want KEY_NOT_FOUND", err)
	}
}

func testDuplicate(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.CreateKey(ctx, NewKey("dup", "software")); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKey(ctx, NewKey("dup", "software")); !errors.Is(err, kgerr.ErrKeyAlreadyExists) {
		t.Fatalf("second create: %v, want KEY_ALREADY_EXISTS", err)
	}
	keys, _, err := s.ListKeys(ctx, store.ListOptions{})
	if err != nil || len(keys) != 1 {
		t.Fatalf("list after duplicate: %d keys, %v", len(keys), err)
	}
}

func testUpdate(t *testing.T, s store.Store) {
	ctx := context.Background()
	k := NewKey("upd", "software")
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	stale := k.Clone()
	k.State = store.StateInactive
	k.Versions = append(k.Versions, store.Version{Version: 2, ObjectID: "00000000000000000000000000000002", State: store.StatePending, CreatedAt: time.Now()})
	if err := s.UpdateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	if k.Revision != 2 {
		t.Fatalf("revision after update %d, want 2", k.Revision)
	}
	stale.State = store.StateActive
	if err := s.UpdateKey(ctx, stale); !errors.Is(err, kgerr.ErrConflict) {
		t.Fatalf("stale update: %v, want CONFLICT", err)
	}
	got, err := s.GetKey(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != store.StateInactive || len(got.Versions) != 2 || got.Versions[1].State != store.StatePending || got.Revision != 2 {
		t.Fatalf("after update: %+v", got)
	}
	got.Versions[1].State, got.Versions[1].ProviderRef = store.StateActive, "ref-v2"
	if err := s.UpdateKey(ctx, got); err != nil {
		t.Fatal(err)
	}
	again, _ := s.GetKey(ctx, k.ID)
	if c := again.Current(); c == nil || c.Version != 2 || c.ProviderRef != "ref-v2" {
		t.Fatalf("current after activating v2: %+v", c)
	}
}

func testDelete(t *testing.T, s store.Store) {
	ctx := context.Background()
	k := NewKey("del", "software")
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteKey(ctx, k.ID, 99); !errors.Is(err, kgerr.ErrConflict) {
		t.Fatalf("delete with stale revision: %v, want CONFLICT", err)
	}
	if err := s.DeleteKey(ctx, k.ID, k.Revision); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetKey(ctx, k.ID); !errors.Is(err, kgerr.ErrKeyNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if err := s.DeleteKey(ctx, k.ID, k.Revision); !errors.Is(err, kgerr.ErrKeyNotFound) {
		t.Fatalf("second delete: %v, want KEY_NOT_FOUND", err)
	}
	// The name and the object id are free again.
	k2 := NewKey("del", "software")
	k2.Versions[0].ObjectID = k.Versions[0].ObjectID
	if err := s.CreateKey(ctx, k2); err != nil {
		t.Fatalf("recreate after delete: %v", err)
	}
}

func testList(t *testing.T, s store.Store) {
	ctx := context.Background()
	var ids []string
	for i := 0; i < 7; i++ {
		p := "software"
		if i%2 == 1 {
			p = "hsm"
		}
		k := NewKey(fmt.Sprintf("k%d", i), p)
		if i == 3 {
			k.State = store.StateInactive
		}
		if err := s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, k.ID)
	}
	var got []string
	token := ""
	pages := 0
	for {
		keys, next, err := s.ListKeys(ctx, store.ListOptions{Limit: 3, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, k := range keys {
			got = append(got, k.ID)
			if len(k.Versions) != 1 {
				t.Fatalf("listed key %s without its version", k.Name)
			}
		}
		if next == "" {
			break
		}
		token = next
	}
	if pages != 3 || fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("paged listing: %d pages, %v, want 3 pages of %v", pages, got, ids)
	}
	hsm, _, err := s.ListKeys(ctx, store.ListOptions{Provider: "hsm"})
	if err != nil || len(hsm) != 3 {
		t.Fatalf("provider filter: %d keys, %v", len(hsm), err)
	}
	inactive, _, err := s.ListKeys(ctx, store.ListOptions{State: store.StateInactive})
	if err != nil || len(inactive) != 1 || inactive[0].Name != "k3" {
		t.Fatalf("state filter: %v, %v", inactive, err)
	}
	// Tokens the store did not make: not base64, base64 of no key id (the
	// "garbage" a user types), a key id in another spelling.
	for _, tok := range []string{"!!", "garbage", base64.RawURLEncoding.EncodeToString([]byte("not-a-key-id")),
		base64.RawURLEncoding.EncodeToString([]byte(strings.ToUpper(uuid.NewString())))} {
		if _, _, err := s.ListKeys(ctx, store.ListOptions{PageToken: tok}); !errors.Is(err, kgerr.ErrInvalidInput) {
			t.Fatalf("bad page token %q: %v, want INVALID_INPUT", tok, err)
		}
	}
	if _, _, err := s.ListKeys(ctx, store.ListOptions{Limit: store.MaxPageSize + 1}); !errors.Is(err, kgerr.ErrInvalidInput) {
		t.Fatalf("limit too large: %v, want INVALID_INPUT", err)
	}
}

func testConcurrentCreate(t *testing.T, s store.Store) {
	ctx := context.Background()
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = s.CreateKey(ctx, NewKey("race", "software"))
		}(i)
	}
	wg.Wait()
	ok, dup := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, kgerr.ErrKeyAlreadyExists):
			dup++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 || dup != n-1 {
		t.Fatalf("%d created, %d conflicts; want 1 and %d", ok, dup, n-1)
	}
}

func testConcurrentUpdate(t *testing.T, s store.Store) {
	ctx := context.Background()
	k := NewKey("cas", "software")
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := k.Clone()
			c.State = store.StateInactive
			errs[i] = s.UpdateKey(ctx, c)
		}(i)
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, kgerr.ErrConflict):
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d updates won, want exactly 1", ok)
	}
}

func testDropVersion(t *testing.T, s store.Store) {
	ctx := context.Background()
	k := NewKey("drop", "software")
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	k.Versions = append(k.Versions, store.Version{Version: 2, ObjectID: "0000000000000000000000000000d002", State: store.StatePending, CreatedAt: time.Now()})
	if err := s.UpdateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	// A rotation whose material was never made removes its pending version.
	k.Versions = k.Versions[:1]
	if err := s.UpdateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetKey(ctx, k.Name)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Versions) != 1 || got.Versions[0].Version != 1 {
		t.Fatalf("versions after dropping v2: %+v", got.Versions)
	}
	// Its object id is free again.
	k2 := NewKey("drop-2", "software")
	k2.Versions[0].ObjectID = "0000000000000000000000000000d002"
	if err := s.CreateKey(ctx, k2); err != nil {
		t.Fatalf("object id of a dropped version still taken: %v", err)
	}
}

func snapshotter(t *testing.T, s store.Store) store.Snapshotter {
	t.Helper()
	sn, ok := s.(store.Snapshotter)
	if !ok {
		t.Fatalf("%T does not implement store.Snapshotter", s)
	}
	return sn
}

func export(t *testing.T, s store.Store) []*store.Key {
	t.Helper()
	var out []*store.Key
	if err := snapshotter(t, s).Export(context.Background(), func(k *store.Key) error {
		out = append(out, k)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// feed returns a next function over keys.
func feed(keys []*store.Key) func() (*store.Key, error) {
	i := 0
	return func() (*store.Key, error) {
		if i == len(keys) {
			return nil, io.EOF
		}
		i++
		return keys[i-1].Clone(), nil
	}
}

// sample creates a few keys of different shapes and returns them as stored.
func sample(t *testing.T, s store.Store) []*store.Key {
	t.Helper()
	ctx := context.Background()
	a := NewKey("exp-a", "software")
	b := NewKey("exp-b", "hsm")
	b.ExpiresAt, b.Metadata, b.State = nil, nil, store.StateInactive
	c := NewKey("exp-c", "hsm")
	c.KeyType, c.KeySize, c.Curve, c.Algorithm, c.Usage = "AES", 256, "", "A256GCM", []string{"encrypt", "decrypt"}
	c.Versions[0].PublicKey = nil
	WithLifecycle(c)
	for _, k := range []*store.Key{a, b, c} {
		if err := s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	c.Versions = append(c.Versions, store.Version{Version: 2, ObjectID: "0000000000000000000000000000e002", ProviderRef: "ref-c2",
		State: store.StateActive, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)})
	if err := s.UpdateKey(ctx, c); err != nil {
		t.Fatal(err)
	}
	var out []*store.Key
	for _, k := range []*store.Key{a, b, c} {
		got, err := s.GetKey(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, got)
	}
	return out
}

func sameKey(a, b *store.Key) bool {
	return reflect.DeepEqual(normal(a), normal(b))
}

// normal makes nil and empty collections compare equal.
func normal(k *store.Key) *store.Key {
	c := k.Clone()
	if len(c.Metadata) == 0 {
		c.Metadata = nil
	}
	if len(c.Usage) == 0 {
		c.Usage = nil
	}
	for i := range c.Versions {
		if len(c.Versions[i].PublicKey) == 0 {
			c.Versions[i].PublicKey = nil
		}
	}
	return c
}

func testExportImport(t *testing.T, src, dst store.Store) {
	ctx := context.Background()
	want := sample(t, src)
	got := export(t, src)
	if len(got) != len(want) {
		t.Fatalf("exported %d keys, want %d", len(got), len(want))
	}
	for i := range want {
		if !sameKey(got[i], want[i]) {
			t.Fatalf("exported key %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	n, err := snapshotter(t, dst).Import(ctx, store.ImportOptions{}, feed(got))
	if err != nil || n != len(want) {
		t.Fatalf("import: %d, %v", n, err)
	}
	for _, w := range want {
		k, err := dst.GetKey(ctx, w.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !sameKey(k, w) {
			t.Fatalf("imported %+v, want %+v", k, w)
		}
	}
	// The imported revision is the one compared: a stale writer still loses.
	k, _ := dst.GetKey(ctx, want[2].ID)
	stale := k.Clone()
	stale.Revision--
	if err := dst.UpdateKey(ctx, stale); !errors.Is(err, kgerr.ErrConflict) {
		t.Fatalf("update at an older revision after import: %v, want CONFLICT", err)
	}
	if err := dst.UpdateKey(ctx, k); err != nil {
		t.Fatalf("update of an imported key: %v", err)
	}
}

func testImportNotEmpty(t *testing.T, s store.Store) {
	ctx := context.Background()
	keys := sample(t, s)
	other := NewKey("other", "software")
	_, err := snapshotter(t, s).Import(ctx, store.ImportOptions{}, feed([]*store.Key{other}))
	var ne *store.NotEmptyError
	if !errors.As(err, &ne) || ne.Keys != len(keys) {
		t.Fatalf("import into a store with %d keys: %v, want *NotEmptyError", len(keys), err)
	}
	if _, err := s.GetKey(ctx, "other"); !errors.Is(err, kgerr.ErrKeyNotFound) {
		t.Fatalf("a refused import wrote: %v", err)
	}
	n, err := snapshotter(t, s).Import(ctx, store.ImportOptions{Replace: true}, feed([]*store.Key{other}))
	if err != nil || n != 1 {
		t.Fatalf("import with replace: %d, %v", n, err)
	}
	all := export(t, s)
	if len(all) != 1 || all[0].Name != "other" {
		t.Fatalf("after replace the store holds %d keys, want only the imported one", len(all))
	}
}

func testImportAtomic(t *testing.T, s store.Store) {
	ctx := context.Background()
	boom := errors.New("truncated backup")
	good := NewKey("atomic-1", "software")
	i := 0
	_, err := snapshotter(t, s).Import(ctx, store.ImportOptions{}, func() (*store.Key, error) {
		i++
		if i == 1 {
			return good, nil
		}
		return nil, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("import whose source fails: %v, want the source's error", err)
	}
	dup := NewKey("atomic-2", "software")
	dup2 := NewKey("atomic-2", "software")
	if _, err := snapshotter(t, s).Import(ctx, store.ImportOptions{}, feed([]*store.Key{dup, dup2})); !errors.Is(err, kgerr.ErrKeyAlreadyExists) {
		t.Fatalf("import with a duplicate name: %v, want KEY_ALREADY_EXISTS", err)
	}
	bad := NewKey("atomic-3", "software")
	bad.State = "exploded"
	if _, err := snapshotter(t, s).Import(ctx, store.ImportOptions{}, feed([]*store.Key{bad})); err == nil {
		t.Fatal("import of a key in an unknown state succeeded")
	}
	undated := NewKey("atomic-4", "software")
	undated.State = store.StatePendingDeletion
	if _, err := snapshotter(t, s).Import(ctx, store.ImportOptions{}, feed([]*store.Key{undated})); err == nil {
		t.Fatal("import of a key pending deletion without a date succeeded")
	}
	if keys := export(t, s); len(keys) != 0 {
		t.Fatalf("failed imports left %d keys", len(keys))
	}
}

// testExportSnapshot changes the store while an export runs: the export
// sees the store as it was when it began.
func testExportSnapshot(t *testing.T, s store.Store) {
	ctx := context.Background()
	var made []*store.Key
	for i := 0; i < 5; i++ {
		k := NewKey(fmt.Sprintf("snap-%d", i), "software")
		if err := s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		made = append(made, k)
	}
	var got []*store.Key
	err := snapshotter(t, s).Export(ctx, func(k *store.Key) error {
		if len(got) == 0 {
			// Meanwhile, another request deactivates the last key, deletes
			// the fourth and creates one more.
			last := made[4].Clone()
			last.State = store.StateInactive
			if err := s.UpdateKey(ctx, last); err != nil {
				return err
			}
			if err := s.DeleteKey(ctx, made[3].ID, made[3].Revision); err != nil {
				return err
			}
			if err := s.CreateKey(ctx, NewKey("snap-late", "software")); err != nil {
				return err
			}
		}
		got = append(got, k)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 {
		t.Fatalf("export saw %d keys, want the 5 of its snapshot", len(got))
	}
	for i, k := range got {
		if k.ID != made[i].ID || k.State != store.StateActive {
			t.Fatalf("export key %d = %s %s, want %s active", i, k.Name, k.State, made[i].Name)
		}
	}
	if keys, _, _ := s.ListKeys(ctx, store.ListOptions{}); len(keys) != 5 {
		t.Fatalf("after the export the store holds %d keys, want 5", len(keys))
	}
}

func testSharedCreate(t *testing.T, open func(t *testing.T) (a, b store.Store)) {
	a, b := open(t)
	ctx := context.Background()
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = s.CreateKey(ctx, NewKey("shared-race", "software"))
		}(i)
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, kgerr.ErrKeyAlreadyExists):
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d creates of one name won across two instances, want 1", ok)
	}
}

func testSharedUpdate(t *testing.T, open func(t *testing.T) (a, b store.Store)) {
	a, b := open(t)
	ctx := context.Background()
	k := NewKey("shared-cas", "software")
	if err := a.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	const rounds, n = 5, 8
	for r := 0; r < rounds; r++ {
		base, err := a.GetKey(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := 0; i < n; i++ {
			s := a
			if i%2 == 1 {
				s = b
			}
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				c := base.Clone()
				c.Metadata = map[string]string{"writer": fmt.Sprint(i)}
				errs[i] = s.UpdateKey(ctx, c)
			}(i)
		}
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil:
				if won >= 0 {
					t.Fatalf("round %d: writers %d and %d both won", r, won, i)
				}
				won = i
			case errors.Is(err, kgerr.ErrConflict):
			default:
				t.Fatalf("round %d: unexpected error: %v", r, err)
			}
		}
		if won < 0 {
			t.Fatalf("round %d: no writer won", r)
		}
		got, err := b.GetKey(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Revision != base.Revision+1 || got.Metadata["writer"] != fmt.Sprint(won) {
			t.Fatalf("round %d: stored revision %d writer %q, want %d and the winner %d", r, got.Revision, got.Metadata["writer"], base.Revision+1, won)
		}
	}
}

// testSharedRotateDelete races a rotation (a new pending version) on one
// instance against a delete (the record marked deleting) on the other, both
// from the same revision: exactly one wins.
func testSharedRotateDelete(t *testing.T, open func(t *testing.T) (a, b store.Store)) {
	a, b := open(t)
	ctx := context.Background()
	for r := 0; r < 10; r++ {
		k := NewKey(fmt.Sprintf("rot-del-%d", r), "software")
		if err := a.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		rot, del := k.Clone(), k.Clone()
		rot.Versions = append(rot.Versions, store.Version{Version: 2, ObjectID: fmt.Sprintf("%030x%02x", r+1, 2), State: store.StatePending, CreatedAt: time.Now()})
		del.State = store.StateDeleting
		var wg sync.WaitGroup
		var rotErr, delErr error
		wg.Add(2)
		go func() { defer wg.Done(); rotErr = a.UpdateKey(ctx, rot) }()
		go func() { defer wg.Done(); delErr = b.UpdateKey(ctx, del) }()
		wg.Wait()
		if (rotErr == nil) == (delErr == nil) {
			t.Fatalf("round %d: rotate %v, delete %v: want exactly one to win", r, rotErr, delErr)
		}
		for _, err := range []error{rotErr, delErr} {
			if err != nil && !errors.Is(err, kgerr.ErrConflict) {
				t.Fatalf("round %d: the loser got %v, want CONFLICT", r, err)
			}
		}
		got, err := b.GetKey(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if rotErr == nil && (got.State != store.StateActive || len(got.Versions) != 2) ||
			delErr == nil && (got.State != store.StateDeleting || len(got.Versions) != 1) {
			t.Fatalf("round %d: stored %s with %d versions does not match the winner", r, got.State, len(got.Versions))
		}
	}
}

func testSharedVisible(t *testing.T, open func(t *testing.T) (a, b store.Store)) {
	a, b := open(t)
	ctx := context.Background()
	k := NewKey("shared-seen", "software")
	if err := a.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		s, other := a, b
		if i%2 == 1 {
			s, other = b, a
		}
		cur, err := s.GetKey(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := store.StateInactive
		if cur.State == store.StateInactive {
			want = store.StateActive
		}
		cur.State = want
		if err := s.UpdateKey(ctx, cur); err != nil {
			t.Fatal(err)
		}
		got, err := other.GetKey(ctx, k.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != want || got.Revision != cur.Revision {
			t.Fatalf("change %d: the other instance reads %s rev %d right after the write of %s rev %d", i, got.State, got.Revision, want, cur.Revision)
		}
	}
}

// WithLifecycle sets every lifecycle field of k (description, a deletion
// date in the state that has one, a rotation period with its next date, a
// version floor) and its origin (imported), and returns it.
func WithLifecycle(k *store.Key) *store.Key {
	now := time.Now().UTC()
	del, next := now.Add(7*24*time.Hour+123456789), now.Add(90*24*time.Hour+987654321)
	k.State, k.DeletionDate = store.StatePendingDeletion, &del
	k.Description = "the payments team's signing key: ünïcode, \"quotes\" and 'apostrophes'"
	k.RotationPeriod, k.NextRotationAt = 2160*time.Hour+1, &next
	k.MinDecryptVersion = 1
	k.Origin = store.OriginImported
	return k
}

// SameLifecycle reports whether a and b have equal lifecycle fields.
func SameLifecycle(a, b *store.Key) bool {
	same := func(x, y *time.Time) bool { return (x == nil) == (y == nil) && (x == nil || x.Equal(*y)) }
	return a.Description == b.Description && same(a.DeletionDate, b.DeletionDate) && a.RotationPeriod == b.RotationPeriod &&
		same(a.NextRotationAt, b.NextRotationAt) && a.MinDecryptVersion == b.MinDecryptVersion && a.Origin == b.Origin
}

// testOrigin: a key stored without an origin reads back generated; an
// imported key stays imported through an update.
func testOrigin(t *testing.T, s store.Store) {
	ctx := context.Background()
	g, i := NewKey("made", "software"), NewKey("brought", "software")
	i.Origin = store.OriginImported
	for _, k := range []*store.Key{g, i} {
		if err := s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	i.Description = "changed"
	if err := s.UpdateKey(ctx, i); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"made": store.OriginGenerated, "brought": store.OriginImported} {
		if got, err := s.GetKey(ctx, name); err != nil || got.Origin != want {
			t.Errorf("key %s: origin %q (%v), want %q", name, got.Origin, err, want)
		}
	}
}

// testLifecycleColumns writes every lifecycle field, reads it back by id, by
// name and in a listing, changes each, and clears each.
func testLifecycleColumns(t *testing.T, s store.Store) {
	ctx := context.Background()
	k := WithLifecycle(NewKey("life", "software"))
	want := k.Clone()
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	check := func(what string, want *store.Key) {
		t.Helper()
		for _, ref := range []string{want.ID, want.Name} {
			got, err := s.GetKey(ctx, ref)
			if err != nil {
				t.Fatal(err)
			}
			if got.State != want.State || !SameLifecycle(got, want) {
				t.Fatalf("%s: get %s = %+v, want %+v", what, ref, got, want)
			}
		}
		keys, _, err := s.ListKeys(ctx, store.ListOptions{})
		if err != nil || len(keys) != 1 || !SameLifecycle(keys[0], want) {
			t.Fatalf("%s: list = %+v, %v", what, keys, err)
		}
	}
	check("created", want)

	later := time.Now().UTC().Add(time.Hour + 42)
	k.State, k.DeletionDate = store.StateInactive, nil
	k.Description, k.RotationPeriod, k.NextRotationAt, k.MinDecryptVersion = "changed", time.Hour, &later, 3
	if err := s.UpdateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	check("changed", k)

	k.Description, k.RotationPeriod, k.NextRotationAt, k.MinDecryptVersion = "", 0, nil, 0
	if err := s.UpdateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	check("cleared", k)
	if got, _ := s.GetKey(ctx, k.ID); got.ExpiresAt == nil || !got.ExpiresAt.Equal(*want.ExpiresAt) {
		t.Fatalf("expiry lost in the lifecycle updates: %+v", got.ExpiresAt)
	}
}

// testListDue lists keys whose deletion date or next rotation has come,
// with the state filter and across pages.
func testListDue(t *testing.T, s store.Store) {
	ctx := context.Background()
	now := time.Now().UTC()
	at := func(d time.Duration) *time.Time { x := now.Add(d); return &x }
	var dueDel, dueRot []string
	for i := 0; i < 12; i++ {
		k := NewKey(fmt.Sprintf("due-%02d", i), "software")
		switch i % 4 {
		case 0: // deletion due (exactly now counts)
			k.State, k.DeletionDate = store.StatePendingDeletion, at(-time.Duration(i)*time.Second)
			dueDel = append(dueDel, k.Name)
		case 1: // deletion not yet due
			k.State, k.DeletionDate = store.StatePendingDeletion, at(time.Minute)
		case 2: // rotation due
			k.RotationPeriod, k.NextRotationAt = time.Hour, at(-time.Duration(i)*time.Second)
			dueRot = append(dueRot, k.Name)
		case 3: // rotation not yet due; another state
			k.RotationPeriod, k.NextRotationAt = time.Hour, at(time.Minute)
		}
		if err := s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	// An inactive key whose rotation is due: the state filter leaves it out.
	idle := NewKey("due-idle", "software")
	idle.State, idle.RotationPeriod, idle.NextRotationAt = store.StateInactive, time.Hour, at(-time.Hour)
	if err := s.CreateKey(ctx, idle); err != nil {
		t.Fatal(err)
	}
	list := func(o store.ListOptions) []string {
		t.Helper()
		var names []string
		o.Limit = 2
		for {
			keys, next, err := s.ListKeys(ctx, o)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range keys {
				names = append(names, k.Name)
			}
			if next == "" {
				return names
			}
			o.PageToken = next
		}
	}
	if got := list(store.ListOptions{State: store.StatePendingDeletion, DeletionDue: now}); fmt.Sprint(got) != fmt.Sprint(dueDel) {
		t.Fatalf("deletion due: %v, want %v", got, dueDel)
	}
	if got := list(store.ListOptions{State: store.StateActive, RotationDue: now}); fmt.Sprint(got) != fmt.Sprint(dueRot) {
		t.Fatalf("rotation due: %v, want %v", got, dueRot)
	}
	if got := list(store.ListOptions{RotationDue: now}); len(got) != len(dueRot)+1 {
		t.Fatalf("rotation due in any state: %v, want %v and due-idle", got, dueRot)
	}
}

// testClaims races sweepers for keys due for deletion and rotators for
// keys due for rotation, on one store instance or (b not nil) on two, as
// two gateways: each lists what is due and claims it with a compare-and-
// swap (deletion: pending_deletion → deleting; rotation: a new pending
// version and the next date). Every due key is claimed exactly once.
func testClaims(t *testing.T, a, b store.Store) {
	ctx := context.Background()
	if b == nil {
		b = a
	}
	now := time.Now().UTC()
	past := now.Add(-time.Second)
	const n = 8
	for i := 0; i < n; i++ {
		d := NewKey(fmt.Sprintf("claim-del-%d", i), "software")
		d.State, d.DeletionDate = store.StatePendingDeletion, &past
		r := NewKey(fmt.Sprintf("claim-rot-%d", i), "software")
		r.RotationPeriod, r.NextRotationAt = time.Hour, &past
		for _, k := range []*store.Key{d, r} {
			if err := a.CreateKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
	}
	var (
		mu      sync.Mutex
		claimed = map[string]int{}
		wg      sync.WaitGroup
	)
	worker := func(s store.Store, w int) {
		defer wg.Done()
		due, _, err := s.ListKeys(ctx, store.ListOptions{State: store.StatePendingDeletion, DeletionDue: now})
		if err != nil {
			t.Error(err)
			return
		}
		rot, _, err := s.ListKeys(ctx, store.ListOptions{State: store.StateActive, RotationDue: now})
		if err != nil {
			t.Error(err)
			return
		}
		for _, k := range append(due, rot...) {
			if k.State == store.StatePendingDeletion {
				k.State = store.StateDeleting
			} else {
				next := now.Add(k.RotationPeriod)
				k.NextRotationAt = &next
				k.Versions = append(k.Versions, store.Version{Version: 2, ObjectID: fmt.Sprintf("%x-w%d", k.Name, w), State: store.StatePending, CreatedAt: now})
			}
			switch err := s.UpdateKey(ctx, k); {
			case err == nil:
				mu.Lock()
				claimed[k.Name]++
				mu.Unlock()
			case errors.Is(err, kgerr.ErrConflict):
			default:
				t.Errorf("claim %s: %v", k.Name, err)
			}
		}
	}
	const workers = 6
	for w := 0; w < workers; w++ {
		wg.Add(1)
		s := a
		if w%2 == 1 {
			s = b
		}
		go worker(s, w)
	}
	wg.Wait()
	if len(claimed) != 2*n {
		t.Fatalf("%d keys claimed, want %d", len(claimed), 2*n)
	}
	for name, c := range claimed {
		if c != 1 {
			t.Fatalf("%s claimed %d times", name, c)
		}
	}
	for i := 0; i < n; i++ {
		d, err := b.GetKey(ctx, fmt.Sprintf("claim-del-%d", i))
		if err != nil || d.State != store.StateDeleting {
			t.Fatalf("deletion claim stored as %+v, %v", d, err)
		}
		r, err := b.GetKey(ctx, fmt.Sprintf("claim-rot-%d", i))
		if err != nil || len(r.Versions) != 2 || r.NextRotationAt == nil || !r.NextRotationAt.After(now) {
			t.Fatalf("rotation claim stored as %+v, %v", r, err)
		}
	}
	if due, _, _ := a.ListKeys(ctx, store.ListOptions{RotationDue: now}); len(due) != 0 {
		t.Fatalf("%d keys still due for rotation after the claims", len(due))
	}
}

// testChainsPublished: a chain is stored per version (a new version leaves
// the old one's chain), publish_jwks round trips and filters listings.
func testChainsPublished(t *testing.T, s store.Store) {
	ctx := context.Background()
	k := NewKey("chained", "software")
	k.PublishJWKS = true
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	other := NewKey("unpublished", "software")
	if err := s.CreateKey(ctx, other); err != nil {
		t.Fatal(err)
	}
	k.Versions[0].CertificateChain = []byte("chain of v1")
	k.Versions = append(k.Versions, store.Version{Version: 2, ObjectID: fmt.Sprintf("%x", uuid.New()), State: store.StateActive,
		CreatedAt: time.Now(), CertificateChain: []byte("chain of v2")})
	if err := s.UpdateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetKey(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !got.PublishJWKS || len(got.Versions) != 2 || string(got.Versions[0].CertificateChain) != "chain of v1" ||
		string(got.Versions[1].CertificateChain) != "chain of v2" {
		t.Fatalf("stored %+v", got)
	}
	if o, _ := s.GetKey(ctx, other.ID); o.PublishJWKS || o.Versions[0].CertificateChain != nil {
		t.Fatalf("unpublished key read back %+v", o)
	}
	keys, _, err := s.ListKeys(ctx, store.ListOptions{PublishedJWKS: true})
	if err != nil || len(keys) != 1 || keys[0].ID != k.ID || len(keys[0].Versions) != 2 ||
		string(keys[0].Versions[1].CertificateChain) != "chain of v2" {
		t.Fatalf("published listing: %+v, %v", keys, err)
	}
	got.PublishJWKS = false
	if err := s.UpdateKey(ctx, got); err != nil {
		t.Fatal(err)
	}
	if keys, _, err := s.ListKeys(ctx, store.ListOptions{PublishedJWKS: true}); err != nil || len(keys) != 0 {
		t.Fatalf("published listing after unpublishing: %d keys, %v", len(keys), err)
	}
}

// testSharedChain: a chain attached through one instance is read by the
// other at once.
func testSharedChain(t *testing.T, open func(t *testing.T) (a, b store.Store)) {
	a, b := open(t)
	ctx := context.Background()
	k := NewKey("shared-chain", "software")
	if err := a.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	k.Versions[0].CertificateChain = []byte("the chain")
	if err := a.UpdateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	got, err := b.GetKey(ctx, k.Name)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Versions[0].CertificateChain) != "the chain" {
		t.Fatalf("the other instance reads chain %q", got.Versions[0].CertificateChain)
	}
}
