package service

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// cryptoOps runs every cryptographic operation on the keys of
// lifecycleKeys, with valid inputs made while they were active.
type cryptoOps struct {
	sig     []byte
	ct      *EncryptResult
	wrapped []byte
}

func (c *cryptoOps) prepare(t *testing.T, f *fixture) {
	t.Helper()
	ctx := as(operatorP)
	s, err := f.svc.Sign(ctx, SignRequest{Key: "ec", Data: []byte("d")})
	wantErr(t, err, nil)
	e, err := f.svc.Encrypt(ctx, EncryptRequest{Key: "aes", Plaintext: []byte("p")})
	wantErr(t, err, nil)
	w, err := f.svc.Wrap(ctx, WrapRequest{Key: "kek", KeyMaterial: []byte("0123456789abcdef")})
	wantErr(t, err, nil)
	c.sig, c.ct, c.wrapped = s.Signature, e, w.WrappedKey
}

// run returns each operation's error by name.
func (c *cryptoOps) run(f *fixture) map[string]error {
	ctx := as(operatorP)
	out := map[string]error{}
	_, out["sign"] = f.svc.Sign(ctx, SignRequest{Key: "ec", Data: []byte("d")})
	_, out["verify"] = f.svc.Verify(ctx, VerifyRequest{Key: "ec", Data: []byte("d"), Signature: c.sig})
	_, out["encrypt"] = f.svc.Encrypt(ctx, EncryptRequest{Key: "aes", Plaintext: []byte("p")})
	_, out["decrypt"] = f.svc.Decrypt(ctx, DecryptRequest{Key: "aes", Ciphertext: c.ct.Ciphertext, Nonce: c.ct.Nonce, Tag: c.ct.Tag})
	_, out["wrap"] = f.svc.Wrap(ctx, WrapRequest{Key: "kek", KeyMaterial: []byte("0123456789abcdef")})
	_, out["unwrap"] = f.svc.Unwrap(ctx, UnwrapRequest{Key: "kek", WrappedKey: c.wrapped})
	return out
}

// TestDeactivateActivate checks that an inactive key refuses every
// cryptographic operation, that (de)activating twice changes nothing, and
// that activation restores the key.
func TestDeactivateActivate(t *testing.T) {
	f := newFixture(t)
	for name, spec := range map[string]KeySpec{"ec": specP256, "aes": specAES256, "kek": specKEK} {
		f.create(name, spec)
	}
	var ops cryptoOps
	ops.prepare(t, f)
	for op, err := range ops.run(f) {
		if err != nil {
			t.Fatalf("%s of an active key: %v", op, err)
		}
	}
	for _, name := range []string{"ec", "aes", "kek"} {
		f.clock.Advance(time.Minute)
		k, err := f.svc.DeactivateKey(f.admin(), name)
		wantErr(t, err, nil)
		if k.State != "inactive" || !k.UpdatedAt.Equal(f.clock.Now()) {
			t.Fatalf("deactivated %+v", k)
		}
		wantRecord(t, f.last(), audit.Event{Operation: "deactivate", Outcome: audit.OutcomeSuccess, KeyID: k.ID, KeyName: name, Principal: adminP.Name})
		if sk := f.stored(name); sk.State != store.StateInactive {
			t.Fatalf("stored state %s", sk.State)
		}
	}
	mark := f.mark()
	for op, err := range ops.run(f) {
		if !errorsIs(err, kgerr.ErrKeyInactive) {
			t.Fatalf("%s of an inactive key: %v", op, err)
		}
	}
	for _, r := range f.since(mark) {
		if r.Outcome != audit.OutcomeFailure || r.ErrorCode != string(kgerr.KindKeyInactive) {
			t.Fatalf("audit record %+v", r)
		}
	}
	// Its public key is still public, and rotation is refused.
	if _, err := f.svc.PublicKey(as(auditorP), "ec", 0); err != nil {
		t.Fatal(err)
	}
	_, err := f.svc.RotateKey(f.admin(), "ec")
	wantErr(t, err, kgerr.ErrKeyInactive)
	if sk := f.stored("ec"); len(sk.Versions) != 1 {
		t.Fatalf("a refused rotation left %d versions", len(sk.Versions))
	}

	// Deactivating an inactive key changes nothing.
	rev := f.stored("ec").Revision
	k, err := f.svc.DeactivateKey(f.admin(), "ec")
	wantErr(t, err, nil)
	if k.State != "inactive" || f.stored("ec").Revision != rev {
		t.Fatalf("second deactivate: %+v, revision %d → %d", k, rev, f.stored("ec").Revision)
	}
	for _, name := range []string{"ec", "aes", "kek"} {
		k, err := f.svc.ActivateKey(f.admin(), name)
		wantErr(t, err, nil)
		if k.State != "active" || f.stored(name).State != store.StateActive {
			t.Fatalf("activated %+v", k)
		}
		wantRecord(t, f.last(), audit.Event{Operation: "activate", Outcome: audit.OutcomeSuccess, KeyName: name})
	}
	for op, err := range ops.run(f) {
		if err != nil {
			t.Fatalf("%s after activation: %v", op, err)
		}
	}
	rev = f.stored("ec").Revision
	if _, err := f.svc.ActivateKey(f.admin(), "ec"); err != nil || f.stored("ec").Revision != rev {
		t.Fatalf("activating an active key: %v, revision %d → %d", err, rev, f.stored("ec").Revision)
	}
	_, err = f.svc.ActivateKey(f.admin(), "missing")
	wantErr(t, err, kgerr.ErrKeyNotFound)
	wantRecord(t, f.last(), audit.Event{Operation: "activate", Outcome: audit.OutcomeFailure, ErrorCode: string(kgerr.KindKeyNotFound)})
}

// TestPendingAndDeletingKeys checks that a pending or deleting key refuses
// use and state changes.
func TestPendingAndDeletingKeys(t *testing.T) {
	f := newFixture(t)
	ec := f.create("ec", specP256)
	p, _ := f.pending("pend", algSpec(t, specP256), false, 0)
	sk := f.stored(ec.ID)
	sk.State = store.StateDeleting
	if err := f.store.UpdateKey(context.Background(), sk); err != nil {
		t.Fatal(err)
	}
	// A pending key is not active yet; a key being destroyed is pending
	// deletion, past the point of cancelling.
	for name, want := range map[string]error{p.Name: kgerr.ErrKeyInactive, "ec": kgerr.ErrKeyPendingDeletion} {
		ctx := as(operatorP)
		_, err := f.svc.Sign(ctx, SignRequest{Key: name, Data: []byte("d")})
		wantErr(t, err, want)
		_, err = f.svc.Verify(ctx, VerifyRequest{Key: name, Data: []byte("d"), Signature: []byte{1}})
		wantErr(t, err, want)
		_, err = f.svc.ActivateKey(f.admin(), name)
		wantErr(t, err, want)
		_, err = f.svc.DeactivateKey(f.admin(), name)
		wantErr(t, err, want)
		_, err = f.svc.RotateKey(f.admin(), name)
		wantErr(t, err, want)
	}
	// A pending key has no version to show.
	_, err := f.svc.PublicKey(f.admin(), p.Name, 0)
	wantErr(t, err, kgerr.ErrKeyInactive)
	g, err := f.svc.GetKey(f.admin(), p.Name)
	wantErr(t, err, nil)
	if g.State != "pending" || g.Version != 0 || len(g.Versions) != 0 {
		t.Fatalf("pending key viewed as %+v", g)
	}
}

// algSpec is a KeySpec of the tests as the provider's spec.
func algSpec(t *testing.T, s KeySpec) alg.Spec {
	t.Helper()
	out, err := alg.NewSpec(s.KeyType, s.KeySize, s.Curve)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestExpiry moves the clock past a key's expiry: sign, encrypt and wrap
// are refused; verify, decrypt and unwrap still work.
func TestExpiry(t *testing.T) {
	f := newFixture(t)
	exp := f.clock.Now().Add(time.Hour)
	for name, spec := range map[string]KeySpec{"ec": specP256, "aes": specAES256, "kek": specKEK} {
		if _, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: name, Spec: spec, ExpiresAt: &exp}); err != nil {
			t.Fatal(err)
		}
	}
	var ops cryptoOps
	ops.prepare(t, f)
	f.clock.Advance(time.Hour - time.Nanosecond)
	for op, err := range ops.run(f) {
		if err != nil {
			t.Fatalf("%s just before expiry: %v", op, err)
		}
	}
	f.clock.Advance(time.Nanosecond) // at expires_at: expired
	for op, err := range ops.run(f) {
		switch op {
		case "sign", "encrypt", "wrap":
			if !errorsIs(err, kgerr.ErrKeyExpired) {
				t.Fatalf("%s after expiry: %v", op, err)
			}
		default:
			if err != nil {
				t.Fatalf("%s after expiry: %v", op, err)
			}
		}
	}
	wantRecord(t, f.records()[len(f.records())-6], audit.Event{Operation: "sign", Outcome: audit.OutcomeFailure, ErrorCode: string(kgerr.KindKeyExpired)})
	// Rotating an expired key makes a version under the key's expiry: it
	// does not sign either.
	if _, err := f.svc.RotateKey(f.admin(), "ec"); err != nil {
		t.Fatal(err)
	}
	_, err := f.svc.Sign(as(operatorP), SignRequest{Key: "ec", Data: []byte("d")})
	wantErr(t, err, kgerr.ErrKeyExpired)
}

// TestUsageNotPermitted checks that a key does only what its usage says.
func TestUsageNotPermitted(t *testing.T) {
	f := newFixture(t)
	f.create("verify-only", KeySpec{KeyType: "EC", Curve: "P-256", Usage: []string{"verify"}})
	f.create("encrypt-only", KeySpec{KeyType: "AES", KeySize: 256, Usage: []string{"encrypt"}})
	f.create("sign-only", KeySpec{KeyType: "RSA", KeySize: 2048, Usage: []string{"sign"}})
	f.create("unwrap-only", KeySpec{KeyType: "AES", KeySize: 256, Usage: []string{"unwrap"}})
	ctx := as(operatorP)
	cases := []struct {
		name string
		run  func() error
		want error
	}{
		{"fail sign with verify-only", func() error {
			_, err := f.svc.Sign(ctx, SignRequest{Key: "verify-only", Data: []byte("d")})
			return err
		}, kgerr.ErrUsageNotPermitted},
		{"ok verify with verify-only", func() error {
			_, err := f.svc.Verify(ctx, VerifyRequest{Key: "verify-only", Data: []byte("d"), Signature: []byte{0x30, 0}})
			return err
		}, nil},
		{"fail decrypt with encrypt-only", func() error {
			_, err := f.svc.Decrypt(ctx, DecryptRequest{Key: "encrypt-only", Ciphertext: []byte("c"), Nonce: make([]byte, 12), Tag: make([]byte, 16)})
			return err
		}, kgerr.ErrUsageNotPermitted},
		{"ok encrypt with encrypt-only", func() error {
			_, err := f.svc.Encrypt(ctx, EncryptRequest{Key: "encrypt-only", Plaintext: []byte("p")})
			return err
		}, nil},
		{"fail wrap with encrypt-only", func() error {
			_, err := f.svc.Wrap(ctx, WrapRequest{Key: "encrypt-only", KeyMaterial: []byte("m")})
			return err
		}, kgerr.ErrUsageNotPermitted},
		{"fail verify with sign-only", func() error {
			_, err := f.svc.Verify(ctx, VerifyRequest{Key: "sign-only", Data: []byte("d"), Signature: []byte{1}})
			return err
		}, kgerr.ErrUsageNotPermitted},
		{"fail encrypt with sign-only", func() error {
			_, err := f.svc.Encrypt(ctx, EncryptRequest{Key: "sign-only", Plaintext: []byte("p")})
			return err
		}, kgerr.ErrUsageNotPermitted},
		{"fail wrap with unwrap-only", func() error {
			_, err := f.svc.Wrap(ctx, WrapRequest{Key: "unwrap-only", KeyMaterial: []byte("m")})
			return err
		}, kgerr.ErrUsageNotPermitted},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantErr(t, c.run(), c.want)
			if c.want != nil {
				wantRecord(t, f.last(), audit.Event{Operation: f.last().Operation, Outcome: audit.OutcomeFailure, ErrorCode: string(kgerr.KindUsageNotPermitted)})
			}
		})
	}
}

// TestRotateAndPublicKeys rotates keys and checks versions, the public key
// of each version, and what the store and the keystore hold.
func TestRotateAndPublicKeys(t *testing.T) {
	f := newFixture(t)
	ctx := as(auditorP)
	for _, spec := range []KeySpec{specP384, specEd25519, specRSA} {
		t.Run(spec.KeyType, func(t *testing.T) {
			k := f.create("rot-"+spec.KeyType, spec)
			var ders [][]byte
			for v := 2; v <= 3; v++ {
				f.clock.Advance(time.Minute)
				r, err := f.svc.RotateKey(f.admin(), k.Name)
				wantErr(t, err, nil)
				if r.Version != v || len(r.Versions) != v || r.Versions[v-1].Version != v || !r.Versions[v-1].CreatedAt.Equal(f.clock.Now()) {
					t.Fatalf("rotation %d: %+v", v, r)
				}
				wantRecord(t, f.last(), audit.Event{Operation: "rotate", Outcome: audit.OutcomeSuccess, KeyID: k.ID, KeyVersion: v, Algorithm: k.Algorithm})
			}
			sk := f.stored(k.ID)
			objects := map[string]bool{}
			for i, v := range sk.Versions {
				if v.Version != i+1 || v.State != store.StateActive || !f.material(v.ObjectID) || objects[v.ObjectID] {
					t.Fatalf("stored version %+v", v)
				}
				objects[v.ObjectID] = true
				pk, err := f.svc.PublicKey(ctx, k.ID, v.Version)
				wantErr(t, err, nil)
				if pk.KeyVersion != v.Version || !bytes.Equal(pk.DER, v.PublicKey) || pk.KeyType != k.KeyType || pk.Algorithm != k.Algorithm || pk.KeySize != k.KeySize {
					t.Fatalf("public key of version %d: %+v", v.Version, pk)
				}
				if _, err := x509.ParsePKIXPublicKey(pk.DER); err != nil {
					t.Fatal(err)
				}
				for _, d := range ders {
					if bytes.Equal(d, pk.DER) {
						t.Fatalf("version %d has the public key of an earlier version", v.Version)
					}
				}
				ders = append(ders, pk.DER)
				wantRecord(t, f.last(), audit.Event{Operation: "public_key", Outcome: audit.OutcomeSuccess, KeyVersion: v.Version, Principal: auditorP.Name})
			}
			cur, err := f.svc.PublicKey(ctx, k.Name, 0)
			wantErr(t, err, nil)
			if cur.KeyVersion != 3 || !bytes.Equal(cur.DER, ders[2]) {
				t.Fatalf("current public key is version %d", cur.KeyVersion)
			}
			_, err = f.svc.PublicKey(ctx, k.Name, 4)
			wantErr(t, err, kgerr.ErrKeyNotFound)
		})
	}
	t.Run("aes has no public key", func(t *testing.T) {
		k := f.create("secret", specAES256)
		_, err := f.svc.PublicKey(ctx, k.Name, 0)
		wantErr(t, err, kgerr.ErrInvalidInput)
		wantRecord(t, f.last(), audit.Event{Operation: "public_key", Outcome: audit.OutcomeFailure, ErrorCode: string(kgerr.KindInvalidInput), KeyID: k.ID})
		r, err := f.svc.RotateKey(f.admin(), k.Name)
		wantErr(t, err, nil)
		if sk := f.stored(k.ID); len(sk.Versions) != 2 || sk.Versions[1].PublicKey != nil || !f.material(sk.Versions[1].ObjectID) || r.Version != 2 {
			t.Fatalf("rotated aes key %+v", sk)
		}
	})
	t.Run("missing key", func(t *testing.T) {
		_, err := f.svc.PublicKey(ctx, "nope", 0)
		wantErr(t, err, kgerr.ErrKeyNotFound)
		_, err = f.svc.RotateKey(f.admin(), "nope")
		wantErr(t, err, kgerr.ErrKeyNotFound)
	})
}

// TestDeleteKey checks the scheduled deletion end to end: the delete marks
// the key pending deletion with the default window; once the date has
// passed the sweeper destroys every version's material and the record; a
// key being created cannot be scheduled; a key of a provider this gateway
// lacks waits for a gateway that has it.
func TestDeleteKey(t *testing.T) {
	f := newFixture(t)
	k := f.create("doomed", specP256)
	if _, err := f.svc.RotateKey(f.admin(), k.Name); err != nil {
		t.Fatal(err)
	}
	sk := f.stored(k.ID)
	sig, err := f.svc.Sign(as(operatorP), SignRequest{Key: k.Name, Data: []byte("d")})
	wantErr(t, err, nil)
	d, err := f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: k.Name})
	wantErr(t, err, nil)
	if d.State != "pending_deletion" || d.DeletionDate == nil || !d.DeletionDate.Equal(f.clock.Now().Add(MaxDeletionWindow)) {
		t.Fatalf("scheduled %+v, want pending_deletion 30 days out", d)
	}
	wantRecord(t, f.last(), audit.Event{Operation: "deletion_scheduled", Outcome: audit.OutcomeSuccess, KeyID: k.ID, KeyName: "doomed", Principal: adminP.Name})
	_, err = f.svc.Verify(as(operatorP), VerifyRequest{Key: k.ID, Data: []byte("d"), Signature: sig.Signature})
	wantErr(t, err, kgerr.ErrKeyPendingDeletion)
	wantErr(t, f.svc.Sweep(context.Background()), nil)
	if s := f.stored(k.ID); s.State != store.StatePendingDeletion {
		t.Fatalf("swept before its date: %+v", s)
	}
	f.clock.Advance(MaxDeletionWindow)
	mark := f.mark()
	wantErr(t, f.svc.Sweep(context.Background()), nil)
	f.gone(k.ID)
	for _, v := range sk.Versions {
		if f.material(v.ObjectID) {
			t.Fatalf("version %d's material survived the deletion", v.Version)
		}
	}
	recs := f.since(mark)
	if len(recs) != 1 {
		t.Fatalf("sweep audited %+v, want one key_destroyed", recs)
	}
	wantRecord(t, recs[0], audit.Event{Operation: "key_destroyed", Outcome: audit.OutcomeSuccess, KeyID: k.ID, KeyName: "doomed", Principal: "system:deletion"})
	_, err = f.svc.Verify(as(operatorP), VerifyRequest{Key: k.ID, Data: []byte("d"), Signature: sig.Signature})
	wantErr(t, err, kgerr.ErrKeyNotFound)
	_, err = f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: k.Name})
	wantErr(t, err, kgerr.ErrKeyNotFound)
	_, err = f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: ""})
	wantErr(t, err, kgerr.ErrInvalidInput)
	// The name is free again.
	if k2 := f.create("doomed", specP256); k2.ID == k.ID {
		t.Fatal("a new key got the deleted key's id")
	}

	t.Run("a key being created", func(t *testing.T) {
		p, c := f.pending("pend-del", algSpec(t, specP256), true, 0)
		_, err := f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: p.ID})
		wantErr(t, err, kgerr.ErrConflict)
		if s := f.stored(p.ID); s.State != store.StatePending || s.Revision != p.Revision || !f.material(c.Ref) {
			t.Fatalf("a refused delete changed %+v", s)
		}
	})

	t.Run("a key of a provider not configured here", func(t *testing.T) {
		p, _ := f.pendingOn("hsm-b", "elsewhere", algSpec(t, specP256), false, 0)
		sp := f.stored(p.ID)
		sp.State = store.StateActive
		sp.Versions[0].State, sp.Versions[0].ProviderRef = store.StateActive, "pkcs11:id=x"
		if err := f.store.UpdateKey(context.Background(), sp); err != nil {
			t.Fatal(err)
		}
		_, err := f.svc.Sign(as(operatorP), SignRequest{Key: p.ID, Data: []byte("d")})
		wantErr(t, err, kgerr.ErrServiceUnavailable)
		_, err = f.svc.RotateKey(f.admin(), p.ID)
		wantErr(t, err, kgerr.ErrServiceUnavailable)
		// The schedule is metadata only; the destruction cannot reach the
		// material: the sweeper leaves the record for a gateway that has
		// the provider.
		_, err = f.svc.DeleteKey(f.admin(), DeleteKeyRequest{Key: p.ID})
		wantErr(t, err, nil)
		f.clock.Advance(MaxDeletionWindow)
		wantErr(t, f.svc.Sweep(context.Background()), nil)
		if st := f.stored(p.ID).State; st != store.StatePendingDeletion {
			t.Fatalf("state %s", st)
		}
	})
}

// TestGetAndListKeys checks lookups by id and name and listing with
// filters and pages.
func TestGetAndListKeys(t *testing.T) {
	vault := openSoftware(t, "vault")
	f := newFixture(t, withProvider(vault))
	var all []*Key
	for i := range 7 {
		req := CreateKeyRequest{Name: fmt.Sprintf("k%d", i), Spec: specP256, Metadata: map[string]string{"i": fmt.Sprint(i)}}
		if i%3 == 0 {
			req.Provider = "vault"
		}
		k, err := f.svc.CreateKey(f.admin(), req)
		wantErr(t, err, nil)
		all = append(all, k)
	}
	if _, err := f.svc.DeactivateKey(f.admin(), "k1"); err != nil {
		t.Fatal(err)
	}
	ctx := as(auditorP)
	mark := f.mark()
	for _, ref := range []string{all[2].ID, all[2].Name} {
		g, err := f.svc.GetKey(ctx, ref)
		wantErr(t, err, nil)
		if g.ID != all[2].ID || g.Name != "k2" || g.Metadata["i"] != "2" || g.Version != 1 || g.Versions[0].ProviderRef == "" {
			t.Fatalf("get %s: %+v", ref, g)
		}
	}
	_, err := f.svc.GetKey(ctx, "nope")
	wantErr(t, err, kgerr.ErrKeyNotFound)
	_, err = f.svc.GetKey(ctx, "")
	wantErr(t, err, kgerr.ErrInvalidInput)
	// Reading metadata is not audited unless it is denied.
	if n := len(f.since(mark)); n != 0 {
		t.Fatalf("%d audit records for reads", n)
	}

	names := func(l *KeyList) []string {
		var out []string
		for _, k := range l.Keys {
			out = append(out, k.Name)
		}
		return out
	}
	for _, c := range []struct {
		name string
		o    ListOptions
		want []string
	}{
		{"all", ListOptions{}, []string{"k0", "k1", "k2", "k3", "k4", "k5", "k6"}},
		{"provider vault", ListOptions{Provider: "vault"}, []string{"k0", "k3", "k6"}},
		{"provider software", ListOptions{Provider: "software"}, []string{"k1", "k2", "k4", "k5"}},
		{"inactive", ListOptions{State: "inactive"}, []string{"k1"}},
		{"active on software", ListOptions{State: "active", Provider: "software"}, []string{"k2", "k4", "k5"}},
		{"pending", ListOptions{State: "pending"}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := f.svc.ListKeys(ctx, c.o)
			wantErr(t, err, nil)
			if got := names(l); !slices.Equal(got, c.want) || l.NextPageToken != "" {
				t.Fatalf("got %v (next %q), want %v", got, l.NextPageToken, c.want)
			}
		})
	}
	// A provider neither configured nor named by a key is a mistake, not
	// an empty list; so is a page size beyond the store's.
	for _, o := range []ListOptions{{Provider: "nope"}, {Limit: -1}, {Limit: MaxListLimit + 1}} {
		_, err := f.svc.ListKeys(ctx, o)
		wantErr(t, err, kgerr.ErrInvalidInput)
	}
	t.Run("pages", func(t *testing.T) {
		var got []string
		token := ""
		for pages := 1; ; pages++ {
			l, err := f.svc.ListKeys(ctx, ListOptions{Limit: 3, PageToken: token})
			wantErr(t, err, nil)
			got = append(got, names(l)...)
			if token = l.NextPageToken; token == "" {
				if pages != 3 {
					t.Fatalf("%d pages", pages)
				}
				break
			}
		}
		if !slices.Equal(got, []string{"k0", "k1", "k2", "k3", "k4", "k5", "k6"}) {
			t.Fatalf("paged %v", got)
		}
	})
	for _, c := range []struct {
		name string
		o    ListOptions
	}{
		{"fail bad state", ListOptions{State: "dead"}},
		{"fail negative limit", ListOptions{Limit: -1}},
		{"fail limit too large", ListOptions{Limit: store.MaxPageSize + 1}},
		{"fail bad page token", ListOptions{PageToken: "!!"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := f.svc.ListKeys(ctx, c.o)
			if l != nil {
				t.Fatalf("listed %+v", l)
			}
			wantErr(t, err, kgerr.ErrInvalidInput)
		})
	}
}

// TestMetrics checks that operations move the counters and histograms by
// operation, provider, algorithm and outcome.
func TestMetrics(t *testing.T) {
	f := newFixture(t)
	f.create("ec", specP256)
	ctx := as(operatorP)
	for range 3 {
		if _, err := f.svc.Sign(ctx, SignRequest{Key: "ec", Data: []byte("d")}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := f.svc.Sign(ctx, SignRequest{Key: "ec", Digest: []byte("short")})
	wantErr(t, err, kgerr.ErrInvalidInput)
	_, err = f.svc.Sign(ctx, SignRequest{Key: "ec", Algorithm: "no-such", Data: []byte("d")})
	wantErr(t, err, kgerr.ErrUnsupportedAlgorithm)
	sign := map[string]string{"operation": "sign", "provider": "software", "algorithm": "ES256"}
	with := func(m map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for a, b := range m {
			out[a] = b
		}
		return out
	}
	for _, c := range []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"keygrid_operations_total", with(sign, "outcome", "success"), 3},
		{"keygrid_operations_total", with(sign, "outcome", "failure"), 1},
		{"keygrid_operation_errors_total", with(sign, "code", "INVALID_INPUT"), 1},
		// An unknown algorithm is not a label value.
		{"keygrid_operation_errors_total", map[string]string{"operation": "sign", "algorithm": "", "code": "UNSUPPORTED_ALGORITHM"}, 1},
		{"keygrid_operations_total", map[string]string{"operation": "create", "provider": "software", "algorithm": "ES256", "outcome": "success"}, 1},
		{"keygrid_operation_duration_seconds", sign, 4},
		{"keygrid_audit_write_failures_total", nil, 0},
	} {
		if got := f.metric(c.metric, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.metric, c.labels, got, c.want)
		}
	}
}
