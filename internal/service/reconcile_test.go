package service

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

const grace = 2 * time.Minute // the default ReconcileGrace

// TestReconcile leaves what crashes leave behind — pending keys and
// versions with and without material, interrupted deletes, records of
// another gateway's provider, records still young — and checks what one
// Reconcile makes of each.
func TestReconcile(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	p256, ed, aes := algSpec(t, specP256), algSpec(t, specEd25519), algSpec(t, specAES256)
	old := grace + time.Second

	noMat, _ := f.pending("no-material", p256, false, old)
	withMat, withMatCreated := f.pending("with-material", ed, true, old)
	aesMat, _ := f.pending("aes-material", aes, true, old)
	young, youngCreated := f.pending("young", p256, true, grace-time.Second)
	youngEmpty, _ := f.pending("young-empty", p256, false, 0)
	foreign, _ := f.pendingOn("hsm-elsewhere", "foreign", p256, false, old)

	// An active key whose rotation was cut short, with and without the new
	// version's material.
	rotMat := f.create("rotated-with-material", specP256)
	rotEmpty := f.create("rotated-without-material", specP256)
	var rotMatObj, rotEmptyObj string
	for _, c := range []struct {
		k   *Key
		mat bool
		obj *string
	}{{rotMat, true, &rotMatObj}, {rotEmpty, false, &rotEmptyObj}} {
		sk := f.stored(c.k.ID)
		*c.obj = newObjectID()
		sk.Versions = append(sk.Versions, store.Version{Version: 2, ObjectID: *c.obj, State: store.StatePending, CreatedAt: f.clock.Now()})
		if err := f.store.UpdateKey(ctx, sk); err != nil {
			t.Fatal(err)
		}
		if c.mat {
			f.makeMaterial(sk, *c.obj)
		}
	}

	// An interrupted delete: marked deleting, material of version 1 still
	// there, and a pending version 2 whose material was made.
	del := f.create("deleting", specP256)
	sdel := f.stored(del.ID)
	delObj2 := newObjectID()
	sdel.State = store.StateDeleting
	sdel.Versions = append(sdel.Versions, store.Version{Version: 2, ObjectID: delObj2, State: store.StatePending, CreatedAt: f.clock.Now()})
	if err := f.store.UpdateKey(ctx, sdel); err != nil {
		t.Fatal(err)
	}
	f.makeMaterial(sdel, delObj2)

	f.clock.Advance(old)
	// young's record is now older than the grace too: make it young again
	// relative to the clock by touching it.
	sy := f.stored(young.ID)
	sy.UpdatedAt = f.clock.Now().Add(-grace + time.Second)
	if err := f.store.UpdateKey(ctx, sy); err != nil {
		t.Fatal(err)
	}
	sye := f.stored(youngEmpty.ID)
	sye.UpdatedAt = f.clock.Now()
	if err := f.store.UpdateKey(ctx, sye); err != nil {
		t.Fatal(err)
	}

	if err := f.svc.Reconcile(ctx); err != nil {
		t.Fatalf("reconcile: %v", err)
	}

	t.Run("pending without material is removed", func(t *testing.T) { f.gone(noMat.ID) })
	t.Run("pending with material is completed and usable", func(t *testing.T) {
		k := f.stored(withMat.ID)
		v := k.Versions[0]
		if k.State != store.StateActive || v.State != store.StateActive || v.ProviderRef != withMatCreated.Ref || string(v.PublicKey) != string(withMatCreated.PublicKey) {
			t.Fatalf("completed %+v", k)
		}
		s, err := f.svc.Sign(as(operatorP), SignRequest{Key: withMat.Name, Data: []byte("d")})
		wantErr(t, err, nil)
		if v, err := f.svc.Verify(as(operatorP), VerifyRequest{Key: withMat.Name, Data: []byte("d"), Signature: s.Signature}); err != nil || !v.Valid {
			t.Fatalf("verify: %+v, %v", v, err)
		}
		if a := f.stored(aesMat.ID); a.State != store.StateActive || a.Versions[0].PublicKey != nil || a.Versions[0].ProviderRef == "" {
			t.Fatalf("aes completed %+v", a)
		}
		if _, err := f.svc.Encrypt(as(operatorP), EncryptRequest{Key: aesMat.Name, Plaintext: []byte("p")}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("records within the grace period are left alone", func(t *testing.T) {
		for _, k := range []*store.Key{young, youngEmpty} {
			if s := f.stored(k.ID); s.State != store.StatePending || s.Versions[0].State != store.StatePending {
				t.Fatalf("%s: %+v", k.Name, s)
			}
		}
		if !f.material(youngCreated.Ref) {
			t.Fatal("a young create's material was destroyed")
		}
	})
	t.Run("another gateway's provider is left alone", func(t *testing.T) {
		if s := f.stored(foreign.ID); s.State != store.StatePending {
			t.Fatalf("%+v", s)
		}
	})
	t.Run("interrupted rotations", func(t *testing.T) {
		k := f.stored(rotMat.ID)
		if len(k.Versions) != 2 || k.Versions[1].State != store.StateActive || k.Versions[1].ProviderRef != rotMatObj || k.Current().Version != 2 {
			t.Fatalf("with material: %+v", k.Versions)
		}
		k = f.stored(rotEmpty.ID)
		if len(k.Versions) != 1 || k.State != store.StateActive || k.Versions[0].Version != 1 {
			t.Fatalf("without material: %+v", k.Versions)
		}
		if f.material(rotEmptyObj) {
			t.Fatal("material appeared")
		}
	})
	t.Run("interrupted delete is finished", func(t *testing.T) {
		f.gone(del.ID)
		if f.material(sdel.Versions[0].ObjectID) || f.material(delObj2) {
			t.Fatal("the deleted key's material survived")
		}
	})
	t.Run("a second reconcile changes nothing", func(t *testing.T) {
		before := f.storedKeys()
		if err := f.svc.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		after := f.storedKeys()
		if len(after) != len(before) {
			t.Fatalf("%d keys, %d before", len(after), len(before))
		}
		for i := range after {
			if after[i].Revision != before[i].Revision {
				t.Fatalf("%s changed", after[i].Name)
			}
		}
	})
}

// TestReconcilePaging reconciles more keys than fit one store page.
func TestReconcilePaging(t *testing.T) {
	if testing.Short() {
		t.Skip("writes over a thousand records")
	}
	f := newFixture(t)
	ctx := context.Background()
	p256 := algSpec(t, specP256)
	n := store.MaxPageSize + 5
	var last *store.Key
	for i := range n {
		last, _ = f.pending("p-"+newObjectID()[:8]+"-"+string(rune('a'+i%26)), p256, false, grace+time.Second)
	}
	if err := f.svc.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if keys := f.storedKeys(); len(keys) != 0 {
		t.Fatalf("%d pending keys left", len(keys))
	}
	f.gone(last.ID)
}

// TestReconcileIncompleteAndErrors checks a key pair cut short (its remains
// destroyed, its record removed) and a provider that cannot answer (the
// record stays and the error names the key).
func TestReconcileIncompleteAndErrors(t *testing.T) {
	var fp *faultProvider
	f := newFixture(t, func(f *fixture, o *Options) {
		fp = &faultProvider{Provider: f.soft}
		o.Providers = []provider.Provider{fp}
	})
	ctx := context.Background()
	k, c := f.pending("half", algSpec(t, specP256), true, grace+time.Second)
	fp.set(func(p *faultProvider) { p.incomplete = true })
	if err := f.svc.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	f.gone(k.ID)
	if f.material(c.Ref) {
		t.Fatal("the remains of the interrupted generation survived")
	}
	fp.set(func(p *faultProvider) { p.incomplete = false })

	// The destruction of a key whose pending version is incomplete
	// destroys the remains too.
	k2, c2 := f.pending("half-deleted", algSpec(t, specP256), true, 0)
	dueForDeletion(t, f, k2.ID)
	fp.set(func(p *faultProvider) { p.incomplete = true })
	wantErr(t, f.svc.Sweep(ctx), nil)
	fp.set(func(p *faultProvider) { p.incomplete = false })
	f.gone(k2.ID)
	if f.material(c2.Ref) {
		t.Fatal("the remains survived the delete")
	}

	// The provider closed: FindKey fails; the records stay, the error
	// names each key and keeps its kind.
	k3, _ := f.pending("unknown-1", algSpec(t, specP256), false, grace+time.Second)
	k4, _ := f.pending("unknown-2", algSpec(t, specP256), false, grace+time.Second)
	f.soft.Close()
	err := f.svc.Reconcile(ctx)
	if !errors.Is(err, kgerr.ErrServiceUnavailable) {
		t.Fatalf("reconcile with a closed provider: %v", err)
	}
	for _, k := range []*store.Key{k3, k4} {
		if s := f.stored(k.ID); s.State != store.StatePending {
			t.Fatalf("%s: %+v", k.Name, s)
		}
	}
	// A destruction that cannot look for a pending version's material
	// fails, is audited as failed, and leaves the record marked deleting
	// (for the reconciler).
	dueForDeletion(t, f, k3.ID)
	mark := f.mark()
	wantErr(t, f.svc.Sweep(ctx), kgerr.ErrServiceUnavailable)
	if s := f.stored(k3.ID); s.State != store.StateDeleting {
		t.Fatalf("state %s", s.State)
	}
	recs := f.since(mark)
	if len(recs) != 1 {
		t.Fatalf("audit records %+v, want one failed key_destroyed", recs)
	}
	wantRecord(t, recs[0], audit.Event{Operation: "key_destroyed", Outcome: audit.OutcomeFailure, ErrorCode: string(kgerr.KindUnavailable), KeyID: k3.ID})
}

// dueForDeletion marks a stored key pending deletion with a date that has
// passed (what a DELETE and the window's passing leave).
func dueForDeletion(t *testing.T, f *fixture, id string) {
	t.Helper()
	k := f.stored(id)
	past := f.clock.Now().Add(-time.Second)
	k.State, k.DeletionDate = store.StatePendingDeletion, &past
	if err := f.store.UpdateKey(context.Background(), k); err != nil {
		t.Fatal(err)
	}
}

// TestRunReconciler runs the background reconciler: it reconciles at once,
// then every interval, and returns when its context ends.
func TestRunReconciler(t *testing.T) {
	f := newFixture(t)
	k1, _ := f.pending("first", algSpec(t, specP256), false, grace+time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		f.svc.RunReconciler(ctx, 20*time.Millisecond)
		close(done)
	}()
	waitFor(t, "the first reconcile", func() bool {
		_, err := f.store.GetKey(context.Background(), k1.ID)
		return errors.Is(err, kgerr.ErrKeyNotFound)
	})
	// A record that ages while the reconciler runs goes at a later tick.
	k2, _ := f.pending("second", algSpec(t, specP256), false, 0)
	f.clock.Advance(grace + time.Second)
	waitFor(t, "a later reconcile", func() bool {
		_, err := f.store.GetKey(context.Background(), k2.ID)
		return errors.Is(err, kgerr.ErrKeyNotFound)
	})
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("RunReconciler did not return after its context ended")
	}
	// A failing reconcile is logged, and the loop goes on.
	ctx2, cancel2 := context.WithCancel(context.Background())
	f.pending("stuck", algSpec(t, specP256), false, grace+time.Second)
	f.soft.Close()
	done2 := make(chan struct{})
	go func() {
		f.svc.RunReconciler(ctx2, 10*time.Millisecond)
		close(done2)
	}()
	waitFor(t, "a logged reconcile failure", func() bool {
		return strings.Contains(f.logs.String(), "msg=reconcile") && strings.Contains(f.logs.String(), "SERVICE_UNAVAILABLE")
	})
	cancel2()
	<-done2
}

// waitFor polls cond with a generous deadline (the machine is shared).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCreateProtocolFaults injects provider failures into creates and
// rotations: material made despite the error is found and used; a create
// that made nothing leaves nothing.
func TestCreateProtocolFaults(t *testing.T) {
	var fp *faultProvider
	f := newFixture(t, func(f *fixture, o *Options) {
		fp = &faultProvider{Provider: f.soft}
		o.Providers = []provider.Provider{fp}
	})
	hsmDown := kgerr.New(kgerr.KindTimeout, "the HSM did not answer")

	t.Run("create fails but made the material", func(t *testing.T) {
		fp.set(func(p *faultProvider) { p.createErr, p.createAnyway = hsmDown, true })
		defer fp.set(func(p *faultProvider) { p.createErr, p.createAnyway = nil, false })
		k, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: "made-anyway", Spec: specP256})
		wantErr(t, err, nil)
		sk := f.stored(k.ID)
		if sk.State != store.StateActive || len(sk.Versions[0].PublicKey) == 0 || !f.material(sk.Versions[0].ObjectID) {
			t.Fatalf("stored %+v", sk)
		}
		if _, err := f.svc.Sign(as(operatorP), SignRequest{Key: k.Name, Data: []byte("d")}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("create fails and made nothing", func(t *testing.T) {
		fp.set(func(p *faultProvider) { p.createErr = hsmDown })
		files := f.keyFiles()
		k, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: "made-nothing", Spec: specP256})
		fp.set(func(p *faultProvider) { p.createErr = nil })
		wantErr(t, err, kgerr.ErrTimeout)
		if k != nil {
			t.Fatalf("returned %+v", k)
		}
		f.gone("made-nothing")
		if f.keyFiles() != files {
			t.Fatal("the keystore changed")
		}
		wantRecord(t, f.last(), audit.Event{Operation: "create", Outcome: audit.OutcomeFailure, ErrorCode: string(kgerr.KindTimeout), KeyName: "made-nothing"})
		// The name is free.
		f.create("made-nothing", specP256)
	})
	t.Run("rotate fails and made nothing", func(t *testing.T) {
		k := f.create("rot-fault", specP256)
		fp.set(func(p *faultProvider) { p.createErr = hsmDown })
		_, err := f.svc.RotateKey(f.admin(), k.Name)
		fp.set(func(p *faultProvider) { p.createErr = nil })
		wantErr(t, err, kgerr.ErrTimeout)
		if sk := f.stored(k.ID); len(sk.Versions) != 1 || sk.State != store.StateActive {
			t.Fatalf("after a failed rotation: %+v", sk.Versions)
		}
		r, err := f.svc.RotateKey(f.admin(), k.Name)
		wantErr(t, err, nil)
		if r.Version != 2 {
			t.Fatalf("version %d", r.Version)
		}
	})
	t.Run("rotate fails but made the material", func(t *testing.T) {
		k := f.create("rot-anyway", specAES256)
		fp.set(func(p *faultProvider) { p.createErr, p.createAnyway = hsmDown, true })
		r, err := f.svc.RotateKey(f.admin(), k.Name)
		fp.set(func(p *faultProvider) { p.createErr, p.createAnyway = nil, false })
		wantErr(t, err, nil)
		if r.Version != 2 || f.stored(k.ID).Versions[1].State != store.StateActive {
			t.Fatalf("rotated %+v", r)
		}
	})
}

// TestCompleteVersion drives the protocol's last step directly: after a
// concurrent delete the material is destroyed and the caller gets a
// conflict (or not found).
func TestCompleteVersion(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	p256 := algSpec(t, specP256)

	t.Run("record deleted meanwhile", func(t *testing.T) {
		k, c := f.pending("gone-meanwhile", p256, true, 0)
		if err := f.store.DeleteKey(ctx, k.ID, k.Revision); err != nil {
			t.Fatal(err)
		}
		out, err := f.svc.completeVersion(ctx, f.soft, k.ID, 1, c)
		wantErr(t, err, kgerr.ErrKeyNotFound)
		if out != nil || f.material(c.Ref) {
			t.Fatalf("returned %+v; material left: %v", out, f.material(c.Ref))
		}
	})
	t.Run("record marked deleting meanwhile", func(t *testing.T) {
		k, c := f.pending("deleting-meanwhile", p256, true, 0)
		sk := f.stored(k.ID)
		sk.State = store.StateDeleting
		if err := f.store.UpdateKey(ctx, sk); err != nil {
			t.Fatal(err)
		}
		_, err := f.svc.completeVersion(ctx, f.soft, k.ID, 1, c)
		wantErr(t, err, kgerr.ErrConflict)
		if f.material(c.Ref) {
			t.Fatal("material left")
		}
		if s := f.stored(k.ID); s.State != store.StateDeleting || s.Versions[0].ProviderRef != "" {
			t.Fatalf("record %+v", s)
		}
	})
	t.Run("version removed meanwhile", func(t *testing.T) {
		k := f.create("version-gone", specP256)
		c := f.makeMaterial(f.stored(k.ID), newObjectID())
		_, err := f.svc.completeVersion(ctx, f.soft, k.ID, 2, c)
		wantErr(t, err, kgerr.ErrConflict)
		if f.material(c.Ref) {
			t.Fatal("material left")
		}
	})
	t.Run("cancelled client", func(t *testing.T) {
		k, c := f.pending("cancelled", p256, true, 0)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		out, err := f.svc.completeVersion(cctx, f.soft, k.ID, 1, c)
		wantErr(t, err, nil)
		if out.State != store.StateActive || f.stored(k.ID).State != store.StateActive {
			t.Fatalf("completed %+v", out)
		}
	})
}

// TestAbandonPending drives the undo of a failed create directly.
func TestAbandonPending(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	p256 := algSpec(t, specP256)

	t.Run("no material: the record goes", func(t *testing.T) {
		k, _ := f.pending("abandon-empty", p256, false, 0)
		f.svc.abandonPending(ctx, f.soft, k, 1)
		f.gone(k.ID)
	})
	t.Run("material exists: the record stays for the reconciler", func(t *testing.T) {
		k, c := f.pending("abandon-made", p256, true, 0)
		f.svc.abandonPending(ctx, f.soft, k, 1)
		if s := f.stored(k.ID); s.State != store.StatePending || !f.material(c.Ref) {
			t.Fatalf("record %+v", s)
		}
		if !strings.Contains(f.logs.String(), "left pending for reconciliation") {
			t.Fatal("not logged")
		}
	})
	t.Run("a second version goes, the key stays", func(t *testing.T) {
		k := f.create("abandon-v2", specP256)
		sk := f.stored(k.ID)
		sk.Versions = append(sk.Versions, store.Version{Version: 2, ObjectID: newObjectID(), State: store.StatePending, CreatedAt: f.clock.Now()})
		if err := f.store.UpdateKey(ctx, sk); err != nil {
			t.Fatal(err)
		}
		f.clock.Advance(time.Second)
		f.svc.abandonPending(ctx, f.soft, sk, 2)
		s := f.stored(k.ID)
		if len(s.Versions) != 1 || s.State != store.StateActive || !s.UpdatedAt.Equal(f.clock.Now()) {
			t.Fatalf("record %+v", s)
		}
	})
	t.Run("record already gone", func(t *testing.T) {
		k, _ := f.pending("abandon-gone", p256, false, 0)
		if err := f.store.DeleteKey(ctx, k.ID, k.Revision); err != nil {
			t.Fatal(err)
		}
		before := f.logs.String()
		f.svc.abandonPending(ctx, f.soft, k, 1)
		if strings.Contains(f.logs.String()[len(before):], "could not remove") {
			t.Fatal("a record already gone was logged as a failure")
		}
	})
}

// stateAtRecord is a recorder that notes, for each record of a key, the
// key's state in the store when the record is written.
type stateAtRecord struct {
	*audit.Log
	st store.Store
	mu sync.Mutex
	at map[string]store.State // operation/key name -> state when recorded
}

func (r *stateAtRecord) Record(ctx context.Context, e audit.Event) error {
	if e.KeyName != "" {
		state := store.State("absent")
		if k, err := r.st.GetKey(context.Background(), e.KeyName); err == nil {
			state = k.State
		}
		r.mu.Lock()
		r.at[e.Operation+"/"+e.KeyName] = state
		r.mu.Unlock()
	}
	return r.Log.Record(ctx, e)
}

// The attack: a key usable without its audit record (kill -9 between the
// two). A create and a rotation are recorded while the key or version is
// still pending, and every reconciler decision is recorded before it is
// carried out; when the reconciler cannot record, it changes nothing.
func TestActiveOnlyAfterAudit(t *testing.T) {
	var rec *stateAtRecord
	f := newFixture(t, func(f *fixture, o *Options) {
		rec = &stateAtRecord{Log: f.audit, st: f.store, at: map[string]store.State{}}
		o.Audit = rec
		o.ReconcileGrace = time.Minute
	})
	f.create("made", specP256)
	if got := rec.at["create/made"]; got != store.StatePending {
		t.Fatalf("create recorded when the key was %s, want pending", got)
	}
	if _, err := f.svc.RotateKey(f.admin(), "made"); err != nil {
		t.Fatal(err)
	}
	if v := f.stored("made").Version(2); v == nil || v.State != store.StateActive {
		t.Fatalf("version 2: %+v", v)
	}

	spec := alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}
	withMat, _ := f.pending("crashed-after-material", spec, true, time.Hour)
	noMat, _ := f.pending("crashed-before-material", spec, false, time.Hour)
	mark := f.mark()
	if err := f.svc.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rec.at["reconcile_activate/crashed-after-material"]; got != store.StatePending {
		t.Fatalf("activation recorded when the key was %s, want pending", got)
	}
	if f.stored(withMat.ID).State != store.StateActive {
		t.Fatal("the reconciler did not complete the create")
	}
	f.gone(noMat.ID)
	want := map[string]string{withMat.ID: "reconcile_activate", noMat.ID: "reconcile_abandon"}
	for _, e := range f.since(mark) {
		if op, ok := want[e.KeyID]; ok && e.Operation == op && e.Principal == "keygrid-reconciler" && e.KeyVersion == 1 {
			delete(want, e.KeyID)
		}
	}
	if len(want) != 0 {
		t.Fatalf("decisions not audited: %v", want)
	}
}

// A reconciler that cannot audit carries nothing out.
func TestReconcilerWithoutAuditChangesNothing(t *testing.T) {
	var fr *faultRecorder
	f := newFixture(t, func(f *fixture, o *Options) {
		fr = &faultRecorder{Log: f.audit}
		o.Audit = fr
		o.ReconcileGrace = time.Minute
	})
	spec := alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}
	withMat, created := f.pending("p1", spec, true, time.Hour)
	noMat, _ := f.pending("p2", spec, false, time.Hour)
	fr.set(errDiskFull, nil)
	if err := f.svc.Reconcile(context.Background()); !errors.Is(err, kgerr.ErrServiceUnavailable) {
		t.Fatalf("Reconcile: %v", err)
	}
	if f.stored(withMat.ID).State != store.StatePending || f.stored(noMat.ID).State != store.StatePending {
		t.Fatal("the reconciler changed keys it could not audit")
	}
	if _, found, _ := f.soft.FindKey(context.Background(), withMat.Versions[0].ObjectID); !found || created.Ref == "" {
		t.Fatal("material destroyed")
	}
	fr.set(nil, nil)
	if err := f.svc.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if f.stored(withMat.ID).State != store.StateActive {
		t.Fatal("not completed once the log works")
	}
}
