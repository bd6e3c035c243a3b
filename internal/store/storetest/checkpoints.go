package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

func checkpointStore(t *testing.T, s store.Store) store.CheckpointStore {
	t.Helper()
	cs, ok := store.Checkpoints(s)
	if !ok {
		t.Fatalf("%T keeps no audit checkpoints", s)
	}
	return cs
}

// NewCheckpoint returns a valid checkpoint for tests.
func NewCheckpoint(replica string, seq uint64, at time.Time) store.Checkpoint {
	return store.Checkpoint{ID: fmt.Sprintf("%s-%d", replica, seq), Replica: replica, File: "audit.log", Seq: seq,
		Head: fmt.Sprintf("%064x", seq), Time: at.UTC(), KeyRef: "software/keygrid-audit", Signature: []byte{1, 2, byte(seq)}}
}

// testCheckpoints: checkpoints are stored once per id, listed newest first
// with a filter by replica and pages, and read back as written.
func testCheckpoints(t *testing.T, s store.Store) {
	ctx := context.Background()
	cs := checkpointStore(t, s)
	base := time.Now().Add(-time.Hour).Truncate(time.Microsecond)
	for i := range 5 {
		for _, r := range []string{"replica-a", "replica-b"} {
			c := NewCheckpoint(r, uint64(10*(i+1)), base.Add(time.Duration(i)*time.Minute))
			if err := cs.AddCheckpoint(ctx, c); err != nil {
				t.Fatal(err)
			}
			if err := cs.AddCheckpoint(ctx, c); err != nil { // the same again: nothing
				t.Fatalf("adding a stored checkpoint again: %v", err)
			}
		}
	}
	all, next, err := cs.ListCheckpoints(ctx, store.CheckpointFilter{Limit: -1})
	if err != nil || next != "" || len(all) != 10 {
		t.Fatalf("list all: %d, %q, %v", len(all), next, err)
	}
	for i := 1; i < len(all); i++ {
		if all[i].Time.After(all[i-1].Time) {
			t.Fatalf("not newest first at %d: %v after %v", i, all[i].Time, all[i-1].Time)
		}
	}
	want := NewCheckpoint("replica-b", 50, base.Add(4*time.Minute))
	if got := all[0]; got.ID != want.ID || got.Seq != 50 || got.Head != want.Head || !got.Time.Equal(want.Time) ||
		got.KeyRef != want.KeyRef || got.File != want.File || !bytes.Equal(got.Signature, want.Signature) {
		t.Fatalf("newest checkpoint read back as %+v, want %+v", got, want)
	}
	var paged []store.Checkpoint
	token := ""
	for range 10 {
		page, next, err := cs.ListCheckpoints(ctx, store.CheckpointFilter{Replica: "replica-a", Limit: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		paged = append(paged, page...)
		if token = next; token == "" {
			break
		}
	}
	if len(paged) != 5 || paged[0].Seq != 50 || paged[4].Seq != 10 {
		t.Fatalf("replica-a by pages of 2: %+v", paged)
	}
	for _, c := range paged {
		if c.Replica != "replica-a" {
			t.Fatalf("filter by replica returned %s's", c.Replica)
		}
	}
	if _, _, err := cs.ListCheckpoints(ctx, store.CheckpointFilter{PageToken: "!!"}); !errors.Is(err, kgerr.ErrInvalidInput) {
		t.Fatalf("bad page token: %v", err)
	}
	if err := cs.AddCheckpoint(ctx, store.Checkpoint{ID: "x", Replica: "r"}); err == nil {
		t.Fatal("a checkpoint without head, key and signature was stored")
	}
}

// testAuditKeyClaim: of several makers of the audit key, exactly one claims
// it; the record is completed once; an unfinished claim can be taken over.
func testAuditKeyClaim(t *testing.T, a, b store.Store) {
	ctx := context.Background()
	stores := []store.CheckpointStore{checkpointStore(t, a), checkpointStore(t, b)}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins []string
	)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			oid := fmt.Sprintf("%032x", i+1)
			got, mine, err := stores[i%2].ClaimAuditKey(ctx, store.AuditKey{Ref: "hsm/audit", ObjectID: oid})
			if err != nil {
				t.Error(err)
				return
			}
			if mine != (got.ObjectID == oid) {
				t.Errorf("claim %s: mine %v but the record is %s's", oid, mine, got.ObjectID)
			}
			if mine {
				mu.Lock()
				wins = append(wins, oid)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(wins) != 1 {
		t.Fatalf("%d claims won, want 1: %v", len(wins), wins)
	}
	// Taking over an unfinished claim: only from the object id it has.
	if ok, err := stores[1].ReplaceAuditKeyClaim(ctx, "hsm/audit", "not-the-claim", fmt.Sprintf("%032x", 99)); err != nil || ok {
		t.Fatalf("take-over from a wrong object id: %v, %v", ok, err)
	}
	taken := fmt.Sprintf("%032x", 100)
	if ok, err := stores[1].ReplaceAuditKeyClaim(ctx, "hsm/audit", wins[0], taken); err != nil || !ok {
		t.Fatalf("take-over: %v, %v", ok, err)
	}
	if err := stores[0].CompleteAuditKey(ctx, "hsm/audit", wins[0], []byte{1}); !errors.Is(err, kgerr.ErrConflict) {
		t.Fatalf("completing a claim taken over: %v", err)
	}
	if err := stores[1].CompleteAuditKey(ctx, "hsm/audit", taken, []byte{0x30, 1}); err != nil {
		t.Fatal(err)
	}
	if err := stores[1].CompleteAuditKey(ctx, "hsm/audit", taken, []byte{0x30, 2}); !errors.Is(err, kgerr.ErrConflict) {
		t.Fatalf("completing twice: %v", err)
	}
	if ok, err := stores[0].ReplaceAuditKeyClaim(ctx, "hsm/audit", taken, fmt.Sprintf("%032x", 101)); err != nil || ok {
		t.Fatalf("take-over of a finished key: %v, %v", ok, err)
	}
	keys, err := stores[0].AuditKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].ObjectID != taken || !bytes.Equal(keys[0].PublicKey, []byte{0x30, 1}) {
		t.Fatalf("audit keys: %+v, %v", keys, err)
	}
	got, mine, err := stores[0].ClaimAuditKey(ctx, store.AuditKey{Ref: "hsm/audit", ObjectID: fmt.Sprintf("%032x", 102)})
	if err != nil || mine || got.ObjectID != taken || len(got.PublicKey) == 0 {
		t.Fatalf("claim of a finished key: %+v, %v, %v", got, mine, err)
	}
}

// testCheckpointsBackup: a backup carries the audit records; a restore
// adds them to what is stored, with --force too (evidence is never
// removed).
func testCheckpointsBackup(t *testing.T, src, dst store.Store) {
	ctx := context.Background()
	scs, dcs := checkpointStore(t, src), checkpointStore(t, dst)
	if _, _, err := scs.ClaimAuditKey(ctx, store.AuditKey{Ref: "software/audit", ObjectID: fmt.Sprintf("%032x", 7)}); err != nil {
		t.Fatal(err)
	}
	if err := scs.CompleteAuditKey(ctx, "software/audit", fmt.Sprintf("%032x", 7), []byte{0x30, 7}); err != nil {
		t.Fatal(err)
	}
	at := time.Now().Truncate(time.Microsecond)
	for i := range 3 {
		if err := scs.AddCheckpoint(ctx, NewCheckpoint("replica-a", uint64(i+1), at.Add(time.Duration(i)*time.Second))); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.CreateKey(ctx, NewKey("backed-up", "software")); err != nil {
		t.Fatal(err)
	}
	already := NewCheckpoint("replica-b", 9, at)
	if err := dcs.AddCheckpoint(ctx, already); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := store.WriteBackup(ctx, snapshotter(t, src), &buf, store.BackupHeader{}); err != nil {
		t.Fatal(err)
	}
	for range 2 { // twice: a second restore adds nothing
		if _, _, err := store.ReadBackup(ctx, snapshotter(t, dst), bytes.NewReader(buf.Bytes()), store.ImportOptions{Replace: true}); err != nil {
			t.Fatal(err)
		}
	}
	cps, _, err := dcs.ListCheckpoints(ctx, store.CheckpointFilter{Limit: -1})
	if err != nil || len(cps) != 4 {
		t.Fatalf("restored checkpoints: %d (%v), want the 3 backed up and the 1 stored", len(cps), err)
	}
	keys, err := dcs.AuditKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].Ref != "software/audit" || !bytes.Equal(keys[0].PublicKey, []byte{0x30, 7}) {
		t.Fatalf("restored audit keys: %+v, %v", keys, err)
	}
	// A checkpoint line changed in the file: the trailer refuses it.
	bad := bytes.Replace(buf.Bytes(), []byte(`"seq":2`), []byte(`"seq":5`), 1)
	if bytes.Equal(bad, buf.Bytes()) {
		t.Fatal("the backup has no checkpoint with seq 2")
	}
	if _, _, err := store.ReadBackup(ctx, snapshotter(t, dst), bytes.NewReader(bad), store.ImportOptions{Replace: true}); !errors.Is(err, store.ErrBadBackup) {
		t.Fatalf("altered checkpoint line: %v", err)
	}
}
