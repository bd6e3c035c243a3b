// Package storetest is the conformance suite every store.Store passes.
package storetest

import (
	"context"
	"errors"
	"fmt"
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
	if _, _, err := s.ListKeys(ctx, store.ListOptions{PageToken: "!!"}); !errors.Is(err, kgerr.ErrInvalidInput) {
		t.Fatalf("bad page token: %v, want INVALID_INPUT", err)
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
