package service

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// TestAutomaticRotation: with a 2-second period (the floor lowered), the
// rotator rotates a key each time its date comes, like a manual rotation
// (audited as one); ciphertexts of every version decrypt until
// min_decrypt_version passes them; a period of 0 turns rotation off.
func TestAutomaticRotation(t *testing.T) {
	f := newFixture(t, withFloors(0, time.Second))
	ctx := as(operatorP)
	k := f.create("auto", specAES256)
	pt := []byte("made under version 1")
	ct1, err := f.svc.Encrypt(ctx, EncryptRequest{Key: "auto", Plaintext: pt, Format: testFormat{}})
	wantErr(t, err, nil)
	_, err = f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "auto", RotationPeriod: Set(500 * time.Millisecond)})
	wantErr(t, err, kgerr.ErrInvalidInput) // below the lowered floor still
	u, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "auto", RotationPeriod: Set(2 * time.Second)})
	wantErr(t, err, nil)
	if !u.NextRotationAt.Equal(f.clock.Now().Add(2 * time.Second)) {
		t.Fatalf("next rotation %v", u.NextRotationAt)
	}

	wantErr(t, f.svc.RotateDue(context.Background()), nil)
	if g, _ := f.svc.GetKey(f.admin(), "auto"); g.Version != 1 {
		t.Fatalf("rotated before its date: version %d", g.Version)
	}
	f.clock.Advance(2 * time.Second)
	mark := f.mark()
	wantErr(t, f.svc.RotateDue(context.Background()), nil)
	g, _ := f.svc.GetKey(f.admin(), "auto")
	if g.Version != 2 || len(g.Versions) != 2 || !g.NextRotationAt.Equal(f.clock.Now().Add(2*time.Second)) {
		t.Fatalf("after the first automatic rotation: %+v", g)
	}
	recs := f.since(mark)
	if len(recs) != 1 {
		t.Fatalf("audit records %+v, want one rotate", recs)
	}
	wantRecord(t, recs[0], audit.Event{Operation: "rotate", Outcome: audit.OutcomeSuccess, KeyID: k.ID, KeyVersion: 2, Principal: "system:rotation", Algorithm: "A256GCM"})
	ct2, err := f.svc.Encrypt(ctx, EncryptRequest{Key: "auto", Plaintext: pt, Format: testFormat{}})
	wantErr(t, err, nil)
	if ct2.KeyVersion != 2 {
		t.Fatalf("encrypt after rotation used version %d", ct2.KeyVersion)
	}
	f.clock.Advance(2 * time.Second)
	wantErr(t, f.svc.RotateDue(context.Background()), nil)
	if g, _ := f.svc.GetKey(f.admin(), "auto"); g.Version != 3 {
		t.Fatalf("second automatic rotation: version %d", g.Version)
	}

	decrypt := func(r *EncryptResult) error {
		d, err := f.svc.Decrypt(ctx, DecryptRequest{Key: "auto", Ciphertext: testFormat{}.seal(r), Format: testFormat{}})
		if err == nil && string(d.Plaintext) != string(pt) {
			t.Fatalf("version %d decrypted to %q", r.KeyVersion, d.Plaintext)
		}
		return err
	}
	wantErr(t, decrypt(ct1), nil)
	wantErr(t, decrypt(ct2), nil)
	_, err = f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "auto", MinDecryptVersion: Set(2)})
	wantErr(t, err, nil)
	wantErr(t, decrypt(ct1), kgerr.ErrKeyVersionDisabled)
	wantErr(t, decrypt(ct2), nil)
	wantRecord(t, f.last(), audit.Event{Operation: "decrypt", Outcome: audit.OutcomeSuccess, KeyVersion: 2})
	// Lowering the floor again enables version 1 (its material stayed).
	_, err = f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "auto", MinDecryptVersion: Set(0)})
	wantErr(t, err, nil)
	wantErr(t, decrypt(ct1), nil)

	// Off: no more rotations.
	_, err = f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "auto", RotationPeriod: Set(time.Duration(0))})
	wantErr(t, err, nil)
	f.clock.Advance(time.Hour)
	wantErr(t, f.svc.RotateDue(context.Background()), nil)
	if g, _ := f.svc.GetKey(f.admin(), "auto"); g.Version != 3 || g.NextRotationAt != nil {
		t.Fatalf("rotated with rotation off: %+v", g)
	}
}

// TestMinDecryptVersion: decrypt, unwrap and verify with a version below
// the floor are refused with KEY_VERSION_DISABLED (a signature of a
// disabled version too, when no version is named); sign, encrypt and wrap
// use the newest version.
func TestMinDecryptVersion(t *testing.T) {
	f := newFixture(t)
	ctx := as(operatorP)
	for name, spec := range map[string]KeySpec{"ec": specP256, "rsa": specRSAEnc, "kek": specKEK} {
		f.create(name, spec)
	}
	data, material := []byte("signed by v1"), []byte("0123456789abcdef")
	sig1, err := f.svc.Sign(ctx, SignRequest{Key: "ec", Data: data})
	wantErr(t, err, nil)
	oaep1, err := f.svc.Encrypt(ctx, EncryptRequest{Key: "rsa", Plaintext: data})
	wantErr(t, err, nil)
	w1, err := f.svc.Wrap(ctx, WrapRequest{Key: "kek", KeyMaterial: material})
	wantErr(t, err, nil)
	for _, name := range []string{"ec", "rsa", "kek"} {
		if _, err := f.svc.RotateKey(f.admin(), name); err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: name, MinDecryptVersion: Set(2)}); err != nil {
			t.Fatal(err)
		}
	}
	sig2, err := f.svc.Sign(ctx, SignRequest{Key: "ec", Data: data})
	wantErr(t, err, nil)
	if sig2.KeyVersion != 2 {
		t.Fatalf("signed with version %d", sig2.KeyVersion)
	}
	for _, c := range []struct {
		name string
		run  func() error
		want error
	}{
		{"fail verify v1 signature", func() error {
			_, err := f.svc.Verify(ctx, VerifyRequest{Key: "ec", Data: data, Signature: sig1.Signature})
			return err
		}, kgerr.ErrKeyVersionDisabled},
		{"fail verify naming version 1", func() error {
			_, err := f.svc.Verify(ctx, VerifyRequest{Key: "ec", Data: data, Signature: sig1.Signature, KeyVersion: 1})
			return err
		}, kgerr.ErrKeyVersionDisabled},
		{"ok verify v2 signature", func() error {
			v, err := f.svc.Verify(ctx, VerifyRequest{Key: "ec", Data: data, Signature: sig2.Signature})
			if err == nil && (!v.Valid || v.KeyVersion != 2) {
				return errors.New("v2 signature not valid")
			}
			return err
		}, nil},
		{"ok a bad signature is still invalid, not disabled", func() error {
			bad := append([]byte{}, sig2.Signature...)
			bad[len(bad)-1] ^= 1
			v, err := f.svc.Verify(ctx, VerifyRequest{Key: "ec", Data: data, Signature: bad})
			if err == nil && v.Valid {
				return errors.New("a bad signature verified")
			}
			return err
		}, nil},
		{"fail decrypt RSA-OAEP with version 1", func() error {
			_, err := f.svc.Decrypt(ctx, DecryptRequest{Key: "rsa", Ciphertext: oaep1.Ciphertext, KeyVersion: 1})
			return err
		}, kgerr.ErrKeyVersionDisabled},
		{"fail unwrap with version 1", func() error {
			_, err := f.svc.Unwrap(ctx, UnwrapRequest{Key: "kek", WrappedKey: w1.WrappedKey, KeyVersion: 1})
			return err
		}, kgerr.ErrKeyVersionDisabled},
		{"ok wrap uses version 2", func() error {
			w, err := f.svc.Wrap(ctx, WrapRequest{Key: "kek", KeyMaterial: material})
			if err == nil && w.KeyVersion != 2 {
				return errors.New("wrapped with an old version")
			}
			return err
		}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			mark := f.mark()
			wantErr(t, c.run(), c.want)
			if c.want != nil {
				wantRecord(t, f.last(), audit.Event{Operation: f.since(mark)[0].Operation, Outcome: audit.OutcomeFailure,
					ErrorCode: string(kgerr.KindKeyVersionDisabled), KeyVersion: 1})
			}
		})
	}
}

// TestRotationOnTwoGateways: two gateways on one store run the rotator at
// once on keys that are due: each key rotates once, with one rotate record
// in the two audit logs together.
func TestRotationOnTwoGateways(t *testing.T) {
	f := newFixture(t, withFloors(0, time.Second))
	p := f.peer(withFloors(0, time.Second))
	var ids []string
	for _, name := range []string{"r1", "r2", "r3", "r4"} {
		k := f.create(name, specP256)
		if _, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: name, RotationPeriod: Set(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, k.ID)
	}
	f.clock.Advance(time.Hour)
	var wg sync.WaitGroup
	for _, svc := range []*Service{f.svc, p.svc, f.svc, p.svc} {
		wg.Add(1)
		go func() { defer wg.Done(); wantErr(t, svc.RotateDue(context.Background()), nil) }()
	}
	wg.Wait()
	all := append(f.records(), f.recordsOf(p.auditPath)...)
	rotations := count(all, "rotate", audit.OutcomeSuccess)
	for _, id := range ids {
		if s := f.stored(id); len(s.Versions) != 2 || rotations[id] != 1 {
			t.Fatalf("key %s: %d versions, %d rotate records; want 2 and 1", s.Name, len(s.Versions), rotations[id])
		}
	}
	if failed := count(all, "rotate", audit.OutcomeFailure); len(failed) != 0 {
		t.Fatalf("failed rotations %v", failed)
	}
}

// TestAutomaticRotationRetries: a rotation whose material cannot be made
// leaves no version behind and is due again at the next run; inactive and
// expired keys are not rotated; a manual rotation moves the schedule.
func TestAutomaticRotationRetries(t *testing.T) {
	var fp *faultProvider
	f := newFixture(t, func(f *fixture, o *Options) {
		fp = &faultProvider{Provider: f.soft}
		o.Providers = []provider.Provider{fp}
	})
	k := f.create("flaky", specP256)
	if _, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "flaky", RotationPeriod: Set(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Hour)
	due := *f.stored(k.ID).NextRotationAt
	fp.set(func(p *faultProvider) { p.createErr = kgerr.New(kgerr.KindUnavailable, "the HSM is away") })
	wantErr(t, f.svc.RotateDue(context.Background()), kgerr.ErrServiceUnavailable)
	s := f.stored(k.ID)
	if len(s.Versions) != 1 || s.NextRotationAt == nil || !s.NextRotationAt.Equal(due) {
		t.Fatalf("after a failed rotation: %+v, want one version and the same due date", s)
	}
	wantRecord(t, f.last(), audit.Event{Operation: "rotate", Outcome: audit.OutcomeFailure, ErrorCode: string(kgerr.KindUnavailable), KeyID: k.ID})
	fp.set(func(p *faultProvider) { p.createErr = nil })
	wantErr(t, f.svc.RotateDue(context.Background()), nil)
	if s := f.stored(k.ID); len(s.Versions) != 2 || s.Current().Version != 2 {
		t.Fatalf("the retry did not rotate: %+v", s)
	}

	// A manual rotation moves the next one a period on.
	f.clock.Advance(30 * time.Minute)
	r, err := f.svc.RotateKey(f.admin(), "flaky")
	wantErr(t, err, nil)
	if !r.NextRotationAt.Equal(f.clock.Now().Add(time.Hour)) {
		t.Fatalf("next rotation after a manual one: %v", r.NextRotationAt)
	}

	// Inactive and expired keys wait.
	idle := f.create("idle", specP256)
	exp := f.clock.Now().Add(time.Minute)
	gone := f.create("expiring", specP256)
	for _, name := range []string{"idle", "expiring"} {
		req := UpdateKeyRequest{Key: name, RotationPeriod: Set(time.Hour)}
		if name == "expiring" {
			req.ExpiresAt = Set(&exp)
		}
		if _, err := f.svc.UpdateKey(f.admin(), req); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.svc.DeactivateKey(f.admin(), "idle"); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Hour)
	wantErr(t, f.svc.RotateDue(context.Background()), nil)
	for _, id := range []string{idle.ID, gone.ID} {
		if s := f.stored(id); len(s.Versions) != 1 {
			t.Fatalf("%s rotated: %+v", s.Name, s)
		}
	}
}

// TestMinDecryptVersionMACAndRewrap: a MAC of a version below the floor no
// longer verifies (named: KEY_VERSION_DISABLED; unnamed: not valid), and a
// ciphertext below it cannot be rewrapped.
func TestMinDecryptVersionMACAndRewrap(t *testing.T) {
	f := newFixture(t)
	ctx := as(operatorP)
	f.create("mac", KeySpec{KeyType: "HMAC", KeySize: 256})
	f.create("dek", specAES256)
	data := []byte("authenticated by v1")
	m1, err := f.svc.MAC(ctx, MACRequest{Key: "mac", Data: data})
	wantErr(t, err, nil)
	ct1, err := f.svc.Encrypt(ctx, EncryptRequest{Key: "dek", Plaintext: data, Format: testFormat{}})
	wantErr(t, err, nil)
	for _, name := range []string{"mac", "dek"} {
		if _, err := f.svc.RotateKey(f.admin(), name); err != nil {
			t.Fatal(err)
		}
	}
	_, err = f.svc.Rewrap(ctx, RewrapRequest{Key: "dek", Ciphertext: testFormat{}.seal(ct1), Format: testFormat{}})
	wantErr(t, err, nil) // below no floor yet
	for _, name := range []string{"mac", "dek"} {
		if _, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: name, MinDecryptVersion: Set(2)}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = f.svc.VerifyMAC(ctx, VerifyMACRequest{Key: "mac", Data: data, MAC: m1.MAC, KeyVersion: 1})
	wantErr(t, err, kgerr.ErrKeyVersionDisabled)
	v, err := f.svc.VerifyMAC(ctx, VerifyMACRequest{Key: "mac", Data: data, MAC: m1.MAC})
	wantErr(t, err, nil)
	if v.Valid {
		t.Fatal("a MAC of a disabled version verified")
	}
	m2, err := f.svc.MAC(ctx, MACRequest{Key: "mac", Data: data})
	wantErr(t, err, nil)
	if v, err := f.svc.VerifyMAC(ctx, VerifyMACRequest{Key: "mac", Data: data, MAC: m2.MAC}); err != nil || !v.Valid || v.KeyVersion != 2 {
		t.Fatalf("a MAC of the current version: %+v %v", v, err)
	}
	_, err = f.svc.Rewrap(ctx, RewrapRequest{Key: "dek", Ciphertext: testFormat{}.seal(ct1), Format: testFormat{}})
	wantErr(t, err, kgerr.ErrKeyVersionDisabled)
}
