package service

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/metrics"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// withFloors lowers the deletion window's and the rotation period's floors
// (keys.min_deletion_window, keys.min_rotation_period).
func withFloors(minDeletion, minRotation time.Duration) fixtureOption {
	return func(_ *fixture, o *Options) { o.MinDeletionWindow, o.MinRotationPeriod = minDeletion, minRotation }
}

// peer is a second gateway on the fixture's store: its own store instance
// on the same SQLite file, the same keystore, its own audit log.
type peer struct {
	svc       *Service
	auditPath string
}

func (f *fixture) peer(opts ...fixtureOption) *peer {
	f.t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(f.dir, "meta.db"))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { st.Close() })
	p := &peer{auditPath: filepath.Join(f.dir, fmt.Sprintf("audit-peer-%d.log", time.Now().UnixNano()))}
	al, err := audit.Open(p.auditPath)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { al.Close() })
	o := Options{Store: st, Providers: []provider.Provider{f.soft}, Audit: al, Metrics: metrics.New("peer"),
		Logger: slog.New(slog.NewTextHandler(f.logs, nil)), Now: f.clock.Now}
	for _, opt := range opts {
		opt(f, &o)
	}
	if p.svc, err = New(o); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// recordsOf reads an audit log file.
func (f *fixture) recordsOf(path string) []audit.Event {
	f.t.Helper()
	saved := f.auditPath
	defer func() { f.auditPath = saved }()
	f.auditPath = path
	return f.records()
}

// count returns how many records of op there are, by key id.
func count(recs []audit.Event, op, outcome string) map[string]int {
	out := map[string]int{}
	for _, r := range recs {
		if r.Operation == op && r.Outcome == outcome {
			out[r.KeyID]++
		}
	}
	return out
}

// TestScheduleDeletion checks the window (default, explicit, floor, 30
// days), that a pending key refuses every operation but stays visible, and
// that a second schedule is refused.
func TestScheduleDeletion(t *testing.T) {
	f := newFixture(t)
	for name, spec := range map[string]KeySpec{"ec": specP256, "aes": specAES256, "kek": specKEK} {
		f.create(name, spec)
	}
	var in cryptoOps
	in.prepare(t, f)
	ec := f.stored("ec")

	t.Run("fail windows out of range change nothing", func(t *testing.T) {
		for _, w := range []time.Duration{time.Second, DefaultMinDeletionWindow - time.Second, MaxDeletionWindow + time.Second, -time.Hour} {
			_, err := f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: "ec", PendingWindow: w})
			wantErr(t, err, kgerr.ErrInvalidInput)
		}
		if s := f.stored("ec"); s.Revision != ec.Revision || s.State != store.StateActive {
			t.Fatalf("a refused schedule changed %+v", s)
		}
	})

	now := f.clock.Now()
	k, err := f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: "ec", PendingWindow: 7 * 24 * time.Hour})
	wantErr(t, err, nil)
	if k.State != "pending_deletion" || k.DeletionDate == nil || !k.DeletionDate.Equal(now.Add(7*24*time.Hour)) {
		t.Fatalf("scheduled %+v", k)
	}
	for _, name := range []string{"aes", "kek"} {
		k, err := f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: name})
		wantErr(t, err, nil)
		if !k.DeletionDate.Equal(now.Add(30 * 24 * time.Hour)) {
			t.Fatalf("default window: deletion date %v, want 30 days out", k.DeletionDate)
		}
	}

	t.Run("every operation refused", func(t *testing.T) {
		for op, err := range in.run(f) {
			if !errorsIs(err, kgerr.ErrKeyPendingDeletion) {
				t.Errorf("%s while pending deletion: %v, want KEY_PENDING_DELETION", op, err)
			}
		}
		for name, run := range map[string]func() error{
			"activate":   func() error { _, err := f.svc.ActivateKey(f.admin(), "ec"); return err },
			"deactivate": func() error { _, err := f.svc.DeactivateKey(f.admin(), "ec"); return err },
			"rotate":     func() error { _, err := f.svc.RotateKey(f.admin(), "ec"); return err },
			"update": func() error {
				_, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "ec", Description: Set("x")})
				return err
			},
			"delete again": func() error {
				_, err := f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: "ec"})
				return err
			},
		} {
			if err := run(); !errorsIs(err, kgerr.ErrKeyPendingDeletion) {
				t.Errorf("%s while pending deletion: %v, want KEY_PENDING_DELETION", name, err)
			}
		}
		if s := f.stored("ec"); s.Revision != ec.Revision+1 || !s.DeletionDate.Equal(now.Add(7*24*time.Hour)) {
			t.Fatalf("refused operations changed %+v", s)
		}
	})
	t.Run("still visible", func(t *testing.T) {
		g, err := f.svc.GetKey(as(auditorP), "ec")
		if err != nil || g.State != "pending_deletion" || g.DeletionDate == nil {
			t.Fatalf("get: %+v %v", g, err)
		}
		if _, err := f.svc.PublicKey(as(auditorP), "ec", 0); err != nil {
			t.Fatalf("public key: %v", err)
		}
		l, err := f.svc.ListKeys(as(auditorP), ListOptions{State: "pending_deletion"})
		if err != nil || len(l.Keys) != 3 {
			t.Fatalf("list pending_deletion: %+v %v", l, err)
		}
	})
	t.Run("a key being destroyed cannot be scheduled or cancelled", func(t *testing.T) {
		s := f.stored("kek")
		s.State = store.StateDeleting
		if err := f.store.UpdateKey(context.Background(), s); err != nil {
			t.Fatal(err)
		}
		_, err := f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: "kek"})
		wantErr(t, err, kgerr.ErrKeyPendingDeletion)
		_, err = f.svc.CancelDeletion(f.admin(), "kek")
		wantErr(t, err, kgerr.ErrKeyPendingDeletion)
	})
}

// TestLoweredDeletionFloor: with keys.min_deletion_window lowered, a window
// of seconds is accepted, and the key is destroyed once it has passed.
func TestLoweredDeletionFloor(t *testing.T) {
	f := newFixture(t, withFloors(time.Second, 0))
	k := f.create("quick", specAES256)
	obj := f.stored(k.ID).Versions[0].ObjectID
	_, err := f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: "quick", PendingWindow: 500 * time.Millisecond})
	wantErr(t, err, kgerr.ErrInvalidInput)
	d, err := f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: "quick", PendingWindow: 2 * time.Second})
	wantErr(t, err, nil)
	if !d.DeletionDate.Equal(f.clock.Now().Add(2 * time.Second)) {
		t.Fatalf("deletion date %v", d.DeletionDate)
	}
	f.clock.Advance(time.Second)
	wantErr(t, f.svc.Sweep(context.Background()), nil)
	if !f.material(obj) {
		t.Fatal("destroyed a second early")
	}
	f.clock.Advance(time.Second)
	wantErr(t, f.svc.Sweep(context.Background()), nil)
	f.gone(k.ID)
	if f.material(obj) || f.keyFiles() != 0 {
		t.Fatal("the software keystore still holds the key")
	}
}

// TestCancelDeletion: a cancelled deletion leaves the key inactive, out of
// the sweeper's reach; activated, it signs with the same key as before.
func TestCancelDeletion(t *testing.T) {
	f := newFixture(t)
	k := f.create("keep", specP256)
	pub, err := f.svc.PublicKey(f.admin(), "keep", 0)
	wantErr(t, err, nil)
	_, err = f.svc.CancelDeletion(f.admin(), "keep")
	wantErr(t, err, kgerr.ErrConflict) // not pending deletion
	_, err = f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: "keep"})
	wantErr(t, err, nil)
	c, err := f.svc.CancelDeletion(f.admin(), "keep")
	wantErr(t, err, nil)
	if c.State != "inactive" || c.DeletionDate != nil {
		t.Fatalf("after cancel %+v, want inactive without a date", c)
	}
	wantRecord(t, f.last(), audit.Event{Operation: "deletion_cancelled", Outcome: audit.OutcomeSuccess, KeyID: k.ID, Principal: adminP.Name})
	_, err = f.svc.Sign(as(operatorP), SignRequest{Key: "keep", Data: []byte("d")})
	wantErr(t, err, kgerr.ErrKeyInactive)

	f.clock.Advance(MaxDeletionWindow + time.Hour)
	wantErr(t, f.svc.Sweep(context.Background()), nil)
	if s := f.stored(k.ID); s.State != store.StateInactive || !f.material(s.Versions[0].ObjectID) {
		t.Fatalf("the sweeper touched a cancelled key: %+v", s)
	}
	_, err = f.svc.ActivateKey(f.admin(), "keep")
	wantErr(t, err, nil)
	data := []byte("signed after a cancelled deletion")
	s, err := f.svc.Sign(as(operatorP), SignRequest{Key: "keep", Data: data})
	wantErr(t, err, nil)
	// The public key from before the deletion verifies it (independently
	// of the service).
	independentVerify(t, pub.Key, "ES256", data, s.Signature)
}

// TestSweepOnTwoGateways: two gateways on one store sweep at once, again
// and again: every due key is destroyed once, with one key_destroyed
// record in all the audit logs together, and no failure.
func TestSweepOnTwoGateways(t *testing.T) {
	f := newFixture(t)
	p := f.peer()
	var ids []string
	for i := range 10 {
		k := f.create(fmt.Sprintf("due-%d", i), specP256)
		_, err := f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: k.Name})
		wantErr(t, err, nil)
		ids = append(ids, k.ID)
	}
	f.clock.Advance(MaxDeletionWindow)
	var wg sync.WaitGroup
	for _, svc := range []*Service{f.svc, p.svc, f.svc, p.svc} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				if err := svc.Sweep(context.Background()); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	all := append(f.records(), f.recordsOf(p.auditPath)...)
	ok, failed := count(all, "key_destroyed", audit.OutcomeSuccess), count(all, "key_destroyed", audit.OutcomeFailure)
	for _, id := range ids {
		f.gone(id)
		if ok[id] != 1 {
			t.Errorf("key %s: %d key_destroyed records, want 1", id, ok[id])
		}
	}
	if len(failed) != 0 || f.keyFiles() != 0 {
		t.Fatalf("failed destructions %v; %d key files left", failed, f.keyFiles())
	}
}

// TestDestructionCutShort: a gateway that claimed a key and destroyed its
// material died before removing the record. The record stays deleting and
// refuses every use; once it is older than the grace period the reconciler
// of any gateway claims it again and finishes it, audited once.
func TestDestructionCutShort(t *testing.T) {
	f := newFixture(t)
	p := f.peer()
	k := f.create("cut", specP256)
	sk := f.stored(k.ID)
	// What the dead gateway did: the claim, then the provider's delete.
	sk.State, sk.UpdatedAt = store.StateDeleting, f.clock.Now()
	if err := f.store.UpdateKey(context.Background(), sk); err != nil {
		t.Fatal(err)
	}
	if err := f.soft.DeleteKey(context.Background(), sk.Versions[0].ProviderRef); err != nil {
		t.Fatal(err)
	}
	_, err := f.svc.Sign(as(operatorP), SignRequest{Key: "cut", Data: []byte("d")})
	wantErr(t, err, kgerr.ErrKeyPendingDeletion)
	wantErr(t, f.svc.Reconcile(context.Background()), nil)
	if s := f.stored(k.ID); s.State != store.StateDeleting {
		t.Fatalf("reconciled within the grace period: %+v", s)
	}
	f.clock.Advance(grace + time.Second)
	var wg sync.WaitGroup
	for _, svc := range []*Service{f.svc, p.svc} {
		wg.Add(1)
		go func() { defer wg.Done(); wantErr(t, svc.Reconcile(context.Background()), nil) }()
	}
	wg.Wait()
	f.gone(k.ID)
	all := append(f.records(), f.recordsOf(p.auditPath)...)
	if n := count(all, "key_destroyed", audit.OutcomeSuccess)[k.ID]; n != 1 {
		t.Fatalf("%d key_destroyed records, want 1", n)
	}
	if k2 := f.create("cut", specP256); k2.ID == k.ID {
		t.Fatal("the name was not freed")
	}
}

// TestPendingWithoutADate: a record pending deletion without a date (made
// by hand in the store) is refused like any pending key, with a message
// that says the date is unknown, and the sweeper leaves it.
func TestPendingWithoutADate(t *testing.T) {
	f := newFixture(t)
	k := f.create("undated", specP256)
	s := f.stored(k.ID)
	s.State = store.StatePendingDeletion
	if err := f.store.UpdateKey(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	_, err := f.svc.Sign(as(operatorP), SignRequest{Key: "undated", Data: []byte("d")})
	wantErr(t, err, kgerr.ErrKeyPendingDeletion)
	if m := kgerr.Classify(err).Message; !strings.Contains(m, "an unknown date") {
		t.Fatalf("message %q", m)
	}
	_, err = f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: "undated"})
	wantErr(t, err, kgerr.ErrKeyPendingDeletion)
	f.clock.Advance(MaxDeletionWindow)
	wantErr(t, f.svc.Sweep(context.Background()), nil)
	if c, err := f.svc.CancelDeletion(f.admin(), "undated"); err != nil || c.State != "inactive" {
		t.Fatalf("cancel: %+v %v", c, err)
	}
}
