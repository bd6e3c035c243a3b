package service

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// faultRecorder is the real audit log with injected faults: Record fails
// (a full or failing disk, injected) and Ready reports the log cannot take
// a record.
type faultRecorder struct {
	*audit.Log

	mu        sync.Mutex
	recordErr error
	readyErr  error
}

func (r *faultRecorder) Record(ctx context.Context, e audit.Event) error {
	r.mu.Lock()
	err := r.recordErr
	r.mu.Unlock()
	if err != nil {
		return err
	}
	return r.Log.Record(ctx, e)
}

func (r *faultRecorder) Ready() error {
	r.mu.Lock()
	err := r.readyErr
	r.mu.Unlock()
	if err != nil {
		return err
	}
	return r.Log.Ready()
}

func (r *faultRecorder) set(recordErr, readyErr error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recordErr, r.readyErr = recordErr, readyErr
}

// recordOnly is a Recorder without a preflight.
type recordOnly struct{ r audit.Recorder }

func (r recordOnly) Record(ctx context.Context, e audit.Event) error { return r.r.Record(ctx, e) }

var errDiskFull = errors.New("injected: no space left on device")

// TestAuditRecordFails checks that an operation whose record cannot be
// written is refused (a success becomes SERVICE_UNAVAILABLE, a failure
// keeps its kind) and counted.
func TestAuditRecordFails(t *testing.T) {
	var fr *faultRecorder
	f := newFixture(t, func(f *fixture, o *Options) {
		fr = &faultRecorder{Log: f.audit}
		o.Audit = fr
	})
	f.create("ec", specP256)
	f.create("aes", specAES256)
	sig, err := f.svc.Sign(as(operatorP), SignRequest{Key: "ec", Data: []byte("d")})
	wantErr(t, err, nil)
	fr.set(errDiskFull, nil)
	mark := len(f.records())
	ctx := as(operatorP)
	cases := []struct {
		name string
		run  func() (any, error)
		want error
	}{
		{"sign", func() (any, error) { return f.svc.Sign(ctx, SignRequest{Key: "ec", Data: []byte("d")}) }, kgerr.ErrServiceUnavailable},
		{"verify", func() (any, error) {
			return f.svc.Verify(ctx, VerifyRequest{Key: "ec", Data: []byte("d"), Signature: sig.Signature})
		}, kgerr.ErrServiceUnavailable},
		{"encrypt", func() (any, error) { return f.svc.Encrypt(ctx, EncryptRequest{Key: "aes", Plaintext: []byte("p")}) }, kgerr.ErrServiceUnavailable},
		{"public key", func() (any, error) { return f.svc.PublicKey(ctx, "ec", 0) }, kgerr.ErrServiceUnavailable},
		{"a failure keeps its kind", func() (any, error) { return f.svc.Sign(ctx, SignRequest{Key: "missing", Data: []byte("d")}) }, kgerr.ErrKeyNotFound},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := c.run()
			wantErr(t, err, c.want)
			if got := f.metric("keygrid_audit_write_failures_total", nil); got != float64(i+1) {
				t.Fatalf("audit failures %v, want %d", got, i+1)
			}
			if c.want == kgerr.ErrServiceUnavailable {
				// No part of a refused operation reaches the caller.
				if !reflect.ValueOf(r).IsNil() {
					t.Fatalf("result %+v returned with the refusal", r)
				}
				if !errors.Is(err, errDiskFull) {
					t.Fatalf("the cause is not kept: %v", err)
				}
			}
		})
	}
	// The refused operations are counted as failures.
	if got := f.metric("keygrid_operations_total", map[string]string{"operation": "sign", "outcome": "failure"}); got != 2 {
		t.Fatalf("sign failures %v", got)
	}
	if got := f.metric("keygrid_operation_errors_total", map[string]string{"operation": "sign", "code": "SERVICE_UNAVAILABLE"}); got != 1 {
		t.Fatalf("sign SERVICE_UNAVAILABLE %v", got)
	}
	// Authentication failures and provider events are counted too.
	f.svc.AuthenticationFailed(context.Background(), "bad token")
	f.svc.ProviderEvent("software", provider.Event{Kind: "reset"})
	if got := f.metric("keygrid_audit_write_failures_total", nil); got != float64(len(cases)+2) {
		t.Fatalf("audit failures %v", got)
	}
	if n := len(f.records()); n != mark {
		t.Fatalf("%d records written while the log failed", n-mark)
	}
	// The log takes records again: so does the service.
	fr.set(nil, nil)
	if _, err := f.svc.Sign(ctx, SignRequest{Key: "ec", Data: []byte("d")}); err != nil {
		t.Fatal(err)
	}
}

// TestAuditRecordFailsWithoutPreflight: a recorder without Ready is
// trusted, so a create runs as far as making the material; its record is
// written before the key becomes active, so when that fails the create is
// 503 and leaves nothing: no record, no material.
func TestAuditRecordFailsWithoutPreflight(t *testing.T) {
	var fr *faultRecorder
	f := newFixture(t, func(f *fixture, o *Options) {
		fr = &faultRecorder{Log: f.audit}
		o.Audit = recordOnly{fr}
	})
	fr.set(errDiskFull, errDiskFull) // Ready is not asked
	k, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: "made", Spec: specP256})
	wantErr(t, err, kgerr.ErrServiceUnavailable)
	if k != nil {
		t.Fatalf("returned %+v", k)
	}
	f.gone("made")
	if n := f.keyFiles(); n != 0 {
		t.Fatalf("%d keystore files after an unaudited create", n)
	}
}

// TestAuditPreflight checks that state changes are refused before they are
// made when the audit log cannot take a record: nothing changes, in the
// store or the keystore, and the refusal itself is audited when it can be.
func TestAuditPreflight(t *testing.T) {
	var fr *faultRecorder
	f := newFixture(t, func(f *fixture, o *Options) {
		fr = &faultRecorder{Log: f.audit}
		o.Audit = fr
	})
	f.create("ec", specP256)
	f.create("inactive", specP256)
	if _, err := f.svc.DeactivateKey(f.admin(), "inactive"); err != nil {
		t.Fatal(err)
	}
	f.create("doomed", specP256)
	if _, err := f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: "doomed"}); err != nil {
		t.Fatal(err)
	}
	f.create("rotating", specP256)
	if _, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "rotating", RotationPeriod: Set(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(MaxDeletionWindow + time.Hour) // doomed is due, and rotating
	fr.set(nil, audit.ErrUnavailable)
	before, files := f.storedKeys(), f.keyFiles()
	cases := []struct {
		op  string
		run func() error
	}{
		{"create", func() error {
			_, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: "new", Spec: specRSA})
			return err
		}},
		{"deactivate", func() error { _, err := f.svc.DeactivateKey(f.admin(), "ec"); return err }},
		{"activate", func() error { _, err := f.svc.ActivateKey(f.admin(), "inactive"); return err }},
		{"rotate", func() error { _, err := f.svc.RotateKey(f.admin(), "ec"); return err }},
		{"deletion_scheduled", func() error { _, err := f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: "ec"}); return err }},
		{"deletion_cancelled", func() error { _, err := f.svc.CancelDeletion(f.admin(), "doomed"); return err }},
		{"update", func() error {
			_, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "ec", Metadata: Set(map[string]string{"a": "b"})})
			return err
		}},
	}
	for _, c := range cases {
		t.Run(c.op, func(t *testing.T) {
			wantErr(t, c.run(), kgerr.ErrServiceUnavailable)
			after := f.storedKeys()
			if len(after) != len(before) || f.keyFiles() != files {
				t.Fatalf("%d keys and %d key files, %d and %d before", len(after), f.keyFiles(), len(before), files)
			}
			for i := range after {
				if after[i].Revision != before[i].Revision || after[i].State != before[i].State || len(after[i].Versions) != len(before[i].Versions) {
					t.Fatalf("%s changed: %+v", after[i].Name, after[i])
				}
			}
			wantRecord(t, f.last(), audit.Event{Operation: c.op, Outcome: audit.OutcomeFailure, ErrorCode: string(kgerr.KindUnavailable)})
		})
	}
	t.Run("background jobs wait", func(t *testing.T) {
		mark := f.mark()
		wantErr(t, f.svc.Sweep(context.Background()), kgerr.ErrServiceUnavailable)
		wantErr(t, f.svc.RotateDue(context.Background()), kgerr.ErrServiceUnavailable)
		if s := f.stored("doomed"); s.State != store.StatePendingDeletion || !f.material(s.Versions[0].ObjectID) {
			t.Fatalf("the sweeper acted without an audit log: %+v", s)
		}
		if s := f.stored("rotating"); len(s.Versions) != 1 {
			t.Fatalf("the rotator acted without an audit log: %+v", s)
		}
		if n := len(f.since(mark)); n != 0 {
			t.Fatalf("%d audit records of jobs that did nothing", n)
		}
	})
	t.Run("operations that change nothing go on", func(t *testing.T) {
		if _, err := f.svc.Sign(as(operatorP), SignRequest{Key: "ec", Data: []byte("d")}); err != nil {
			t.Fatal(err)
		}
		// Deactivating an inactive key changes nothing either, but goes
		// through the same path only when a change is needed.
		if _, err := f.svc.DeactivateKey(f.admin(), "inactive"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the real log, closed", func(t *testing.T) {
		fr.set(nil, nil)
		f.audit.Close() // Ready and Record both fail now
		_, err := f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: "ec"})
		wantErr(t, err, kgerr.ErrServiceUnavailable)
		if s := f.stored("ec"); s.State != store.StateActive || s.Revision != before[0].Revision {
			t.Fatalf("ec: %+v", s)
		}
		_, err = f.svc.Sign(as(operatorP), SignRequest{Key: "ec", Data: []byte("d")})
		wantErr(t, err, kgerr.ErrServiceUnavailable)
	})
}
