package service

// The service on real PKCS#11 tokens: SoftHSM2 and tpm2-pkcs11 (a software
// TPM), with what each can do discovered from the module. The rest of the
// package's tests run on the software provider; these run the lifecycle
// and every advertised algorithm through the service on each token.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/duration"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/pkcs11"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

const (
	softPIN = "kg-cu:service-pin-1234"
	tpmPIN  = "kg-service-tpm-9753"
)

func TestMain(m *testing.M) {
	os.Setenv("KEYGRID_SERVICE_SOFT_PIN", softPIN)
	os.Setenv("KEYGRID_SERVICE_TPM_PIN", tpmPIN)
	testbed.Main(m, testbed.WithSoftHSM("keygrid-service", softPIN), testbed.WithTPM2("keygrid-service-tpm", tpmPIN))
}

// tokens are the real PKCS#11 tokens of this binary, opened as provider
// "hsm" on demand.
var tokens = []struct {
	name string
	open func(t *testing.T) pkcs11.Config
}{
	{"softhsm2", func(t *testing.T) pkcs11.Config {
		h := testbed.ProcessSoftHSM(t)
		return pkcs11.Config{Settings: pkcs11.Settings{LibraryPath: testbed.SoftHSMModule, TokenLabel: h.Label,
			PinEnv: "KEYGRID_SERVICE_SOFT_PIN", MaxSessions: 4}}
	}},
	{"tpm2-pkcs11", func(t *testing.T) pkcs11.Config {
		b := testbed.ProcessTPM2(t)
		return pkcs11.Config{Settings: pkcs11.Settings{LibraryPath: b.Module, TokenLabel: b.Label,
			PinEnv: "KEYGRID_SERVICE_TPM_PIN", MaxSessions: 4}}
	}},
}

func TestServiceOnTokens(t *testing.T) {
	for _, tok := range tokens {
		t.Run(tok.name, func(t *testing.T) {
			cfg := tok.open(t)
			// RSA key generation on a loaded 2-core machine can pass the
			// default 5 s; these tests are about behaviour, not speed.
			cfg.OperationTimeout = duration.Duration(time.Minute)
			p, err := pkcs11.Open(context.Background(), "hsm", pkcs11.TypePKCS11, cfg, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			f := newFixture(t, withProvider(p))
			caps := p.Capabilities()
			t.Run("every advertised algorithm", func(t *testing.T) { tokenAlgorithms(t, f, caps) })
			t.Run("what the token lacks is refused up front", func(t *testing.T) { tokenRefusals(t, f, caps) })
			t.Run("rotate, deactivate, activate", func(t *testing.T) { tokenLifecycle(t, f, caps) })
			t.Run("reconciler completes a create cut short", func(t *testing.T) { tokenReconcile(t, f, p, caps) })
		})
	}
}

// onToken creates a key on the token as admin.
func onToken(t *testing.T, f *fixture, name string, spec KeySpec) *Key {
	t.Helper()
	k, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Provider: "hsm", Name: name, Spec: spec})
	if err != nil {
		t.Fatalf("create %s (%+v): %v", name, spec, err)
	}
	return k
}

// specFor is a key spec that serves algorithm a.
func specFor(a alg.Info) KeySpec {
	s := KeySpec{KeyType: string(a.KeyType), Algorithm: string(a.Name)}
	switch a.KeyType {
	case alg.RSA:
		s.KeySize = 2048
	case alg.EC:
		s.Curve = a.Curve
	case alg.AES:
		s.KeySize = 256
		if a.Name == alg.A128GCM {
			s.KeySize = 128
		}
	case alg.HMAC:
		s.KeySize = a.KeySize
	}
	switch a.Kind {
	case alg.KindEncrypt:
		s.Usage = []string{"encrypt", "decrypt"}
	case alg.KindWrap:
		s.Usage = []string{"wrap", "unwrap"}
	}
	return s
}

// tokenAlgorithms performs every algorithm the token advertises through
// the service, checked with Go's crypto from the public key alone.
func tokenAlgorithms(t *testing.T, f *fixture, caps provider.Capabilities) {
	ctx := f.admin()
	msg := []byte("the service on a real token")
	for _, name := range caps.Algorithms {
		a, err := alg.Lookup(string(name))
		if err != nil {
			t.Fatal(err)
		}
		k := onToken(t, f, "alg-"+string(name), specFor(a))
		switch a.Kind {
		case alg.KindSign:
			r, err := f.svc.Sign(ctx, SignRequest{Key: k.ID, Algorithm: string(name), Data: msg})
			if err != nil {
				t.Fatalf("%s: sign: %v", name, err)
			}
			pk, err := f.svc.PublicKey(ctx, k.ID, 0)
			if err != nil {
				t.Fatal(err)
			}
			if ok, err := alg.Verify(pk.Key, a, signedInput(a, msg), r.Signature); err != nil || !ok {
				t.Fatalf("%s: Go does not verify the token's signature: %v", name, err)
			}
			v, err := f.svc.Verify(ctx, VerifyRequest{Key: k.ID, Algorithm: string(name), Data: msg, Signature: r.Signature})
			if err != nil || !v.Valid {
				t.Fatalf("%s: verify: %+v %v", name, v, err)
			}
		case alg.KindEncrypt:
			if a.KeyType == alg.RSA {
				pk, err := f.svc.PublicKey(ctx, k.ID, 0)
				if err != nil {
					t.Fatal(err)
				}
				h := crypto.SHA1
				if a.Name == alg.RSAOAEP256 {
					h = crypto.SHA256
				}
				ct, err := rsa.EncryptOAEP(h.New(), rand.Reader, pk.Key.(*rsa.PublicKey), msg, nil)
				if err != nil {
					t.Fatal(err)
				}
				d, err := f.svc.Decrypt(ctx, DecryptRequest{Key: k.ID, Algorithm: string(name), Ciphertext: ct})
				if err != nil || string(d.Plaintext) != string(msg) {
					t.Fatalf("%s: decrypt of Go's OAEP ciphertext: %v", name, err)
				}
				continue
			}
			e, err := f.svc.Encrypt(ctx, EncryptRequest{Key: k.ID, Algorithm: string(name), Plaintext: msg, AAD: []byte("aad")})
			if err != nil {
				t.Fatalf("%s: encrypt: %v", name, err)
			}
			d, err := f.svc.Decrypt(ctx, DecryptRequest{Key: k.ID, Algorithm: string(name), KeyVersion: e.KeyVersion,
				Ciphertext: e.Ciphertext, Nonce: e.Nonce, Tag: e.Tag, AAD: []byte("aad")})
			if err != nil || string(d.Plaintext) != string(msg) {
				t.Fatalf("%s: decrypt: %v", name, err)
			}
			tag := slices.Clone(e.Tag)
			tag[0] ^= 1
			if _, err := f.svc.Decrypt(ctx, DecryptRequest{Key: k.ID, Algorithm: string(name), Ciphertext: e.Ciphertext,
				Nonce: e.Nonce, Tag: tag, AAD: []byte("aad")}); !kgerrIs(err, kgerr.ErrDecryptionFailed) {
				t.Fatalf("%s: a changed tag: %v, want DECRYPTION_FAILED", name, err)
			}
		case alg.KindWrap:
			secret := make([]byte, 32)
			rand.Read(secret)
			w, err := f.svc.Wrap(ctx, WrapRequest{Key: k.ID, KeyMaterial: secret})
			if err != nil {
				t.Fatalf("%s: wrap: %v", name, err)
			}
			u, err := f.svc.Unwrap(ctx, UnwrapRequest{Key: k.ID, WrappedKey: w.WrappedKey})
			if err != nil || string(u.KeyMaterial) != string(secret) {
				t.Fatalf("%s: unwrap: %v", name, err)
			}
		}
	}
}

// signedInput is what alg.Verify checks: the digest, or the message for
// EdDSA.
func signedInput(a alg.Info, msg []byte) []byte {
	if a.Hash == 0 {
		return msg
	}
	return alg.Digest(a, msg)
}

func kgerrIs(err, target error) bool {
	e := kgerr.Classify(err)
	return e != nil && e.Is(target)
}

// tokenRefusals: every algorithm of internal/alg the token does not
// advertise is refused at create with UNSUPPORTED_ALGORITHM naming the
// provider, and nothing is stored.
func tokenRefusals(t *testing.T, f *fixture, caps provider.Capabilities) {
	before := len(f.storedKeys())
	for _, name := range alg.All() {
		if slices.Contains(caps.Algorithms, name) {
			continue
		}
		a, err := alg.Lookup(string(name))
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.svc.CreateKey(f.admin(), CreateKeyRequest{Provider: "hsm", Name: "lacks-" + string(a.Name), Spec: specFor(a)})
		if !kgerrIs(err, kgerr.ErrUnsupportedAlgorithm) {
			t.Errorf("%s, which the token lacks: %v, want UNSUPPORTED_ALGORITHM", a.Name, err)
			continue
		}
		// The message says what is missing, why, and what the token does
		// instead.
		msg := kgerr.Classify(err).Message
		if caps.Missing[a.Name] != "" && !strings.Contains(msg, caps.Missing[a.Name]) {
			t.Errorf("%s refused with %q: it does not say why (%q)", a.Name, msg, caps.Missing[a.Name])
		}
		if caps.CheckSpec(algSpecOf(t, specFor(a))) != nil {
			continue // the token makes no such key at all: CheckSpec's message says why
		}
		if !strings.Contains(msg, string(a.Name)+" is not available on provider \"hsm\"") {
			t.Errorf("%s refused with %q: it does not say what is missing", a.Name, msg)
		}
		for _, b := range caps.Alternatives(a.Name) {
			if bi, _ := alg.Lookup(string(b)); alg.Compatible(algSpecOf(t, specFor(a)), bi) == nil && !strings.Contains(msg, string(b)) {
				t.Errorf("%s refused with %q: it does not suggest %s, which the token has", a.Name, msg, b)
			}
		}
	}
	if n := len(f.storedKeys()); n != before {
		t.Errorf("refused creates left %d records", n-before)
	}
	// An RSA key for encryption without an algorithm gets the default,
	// RSA-OAEP-256; where the token lacks it (SoftHSM2 has OAEP with SHA-1
	// only) the refusal says it was the default and names RSA-OAEP, which
	// then makes the key.
	if caps.CheckAlgorithm(alg.RSAOAEP256) == nil || caps.CheckAlgorithm(alg.RSAOAEP) != nil {
		return
	}
	enc := KeySpec{KeyType: "RSA", KeySize: 2048, Usage: []string{"encrypt", "decrypt"}}
	_, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Provider: "hsm", Name: "rsa-enc-default", Spec: enc})
	msg := kgerr.Classify(err).Message
	if !kgerrIs(err, kgerr.ErrUnsupportedAlgorithm) || !strings.Contains(msg, "RSA-OAEP-256 (the default algorithm for RSA-2048 keys") ||
		!strings.Contains(msg, "give key_spec.algorithm RSA-OAEP (available)") {
		t.Fatalf("RSA encrypt key with the default algorithm: %v", err)
	}
	enc.Algorithm = "RSA-OAEP"
	if k := onToken(t, f, "rsa-enc-oaep", enc); k.Algorithm != "RSA-OAEP" {
		t.Fatalf("with the suggested algorithm: %+v", k)
	}
}

// algSpecOf is the alg.Spec of a key spec.
func algSpecOf(t *testing.T, s KeySpec) alg.Spec {
	t.Helper()
	spec, err := alg.NewSpec(s.KeyType, s.KeySize, s.Curve)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// tokenLifecycle: a rotated key signs with its new version and still
// verifies the old version's signatures; a deactivated key refuses, and
// signs again once activated, with the same public key.
func tokenLifecycle(t *testing.T, f *fixture, caps provider.Capabilities) {
	if caps.CheckAlgorithm(alg.ES256) != nil {
		t.Fatalf("every token of the tests signs ES256; this one does not: %v", caps.Missing)
	}
	ctx := f.admin()
	k := onToken(t, f, "life-ec", specP256)
	msg := sha256.Sum256([]byte("before rotation"))
	old, err := f.svc.Sign(ctx, SignRequest{Key: k.Name, Digest: msg[:]})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.RotateKey(ctx, k.Name); err != nil {
		t.Fatal(err)
	}
	now, err := f.svc.Sign(ctx, SignRequest{Key: k.Name, Digest: msg[:]})
	if err != nil || now.KeyVersion != 2 {
		t.Fatalf("after rotation: %+v %v; want version 2", now, err)
	}
	v, err := f.svc.Verify(ctx, VerifyRequest{Key: k.Name, Digest: msg[:], Signature: old.Signature})
	if err != nil || !v.Valid || v.KeyVersion != 1 {
		t.Fatalf("the old version's signature after rotation: %+v %v", v, err)
	}
	pub1, _ := f.svc.PublicKey(ctx, k.Name, 2)
	if _, err := f.svc.DeactivateKey(ctx, k.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Sign(ctx, SignRequest{Key: k.Name, Digest: msg[:]}); !kgerrIs(err, kgerr.ErrKeyInactive) {
		t.Fatalf("sign with a deactivated key: %v, want KEY_INACTIVE", err)
	}
	if _, err := f.svc.ActivateKey(ctx, k.Name); err != nil {
		t.Fatal(err)
	}
	again, err := f.svc.Sign(ctx, SignRequest{Key: k.Name, Digest: msg[:]})
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub1.Key.(*ecdsa.PublicKey), msg[:], again.Signature) {
		t.Fatal("after activate the key signs with another key pair")
	}
}

// tokenReconcile: a create whose process died after the token made the
// material (the record still pending) is completed by the reconciler, and
// the key then signs.
func tokenReconcile(t *testing.T, f *fixture, p provider.Provider, caps provider.Capabilities) {
	k, _ := f.pendingOn("hsm", "cut-short", alg.Spec{Type: alg.EC, Curve: "P-256", Size: 256}, false, time.Hour)
	if _, err := p.CreateKey(context.Background(), provider.CreateKeyRequest{ObjectID: k.Versions[0].ObjectID, Label: k.Name,
		Spec: specOf(k), Usage: []alg.Usage{alg.UsageSign, alg.UsageVerify}}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := f.stored(k.ID); st.State != store.StateActive || st.Versions[0].ProviderRef == "" {
		t.Fatalf("after reconcile: state %s, ref %q; want active with the token's reference", st.State, st.Versions[0].ProviderRef)
	}
	if _, err := f.svc.Sign(f.admin(), SignRequest{Key: k.Name, Data: []byte("x")}); err != nil {
		t.Fatalf("sign with the reconciled key: %v", err)
	}
}
