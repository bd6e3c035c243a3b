// Package providertest is the conformance suite every provider.Provider must
// pass: the software provider always, the PKCS#11 provider against a fresh
// SoftHSM2 token.
//
// The suite derives what it tests from the provider's Capabilities: every key
// spec it lists is created once and used with every listed algorithm that
// applies to it (alg.Compatible). Keys are reused across subtests so that the
// suite stays fast; at most one key of each listed spec (so at most one
// RSA-4096 key) is generated for the operation tests, and only cheap keys
// (EC, Ed25519, AES) are made for the create/delete and concurrency tests.
//
// Signatures, decryptions and public keys are checked independently with
// Go's crypto/rsa, crypto/ecdsa, crypto/ed25519 and crypto/x509.
//
// The rule "a provider never advertises what it cannot do" is checked both
// ways: every listed algorithm is performed and its result checked
// (Advertised), and every algorithm of package alg the provider does not list
// is refused by each of its operations with UNSUPPORTED_ALGORITHM, before the
// key is looked at (NotAdvertised).
package providertest

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// Run runs the conformance suite. open must return a fresh, open provider
// each time it is called (the suite calls it twice: once for most tests, once
// for a provider it closes). The suite closes every provider open returns
// (in a t.Cleanup), so open must not; open may register its own cleanups for
// what lies behind the provider (token directories, processes), which run
// after the provider is closed.
func Run(t *testing.T, open func(t *testing.T) provider.Provider) {
	t.Helper()
	p := open(t)
	t.Cleanup(func() { p.Close() })
	s := &suite{p: p, caps: p.Capabilities(), keys: map[string]testKey{}}
	s.specs = specsOf(t, s.caps)
	if len(s.specs) == 0 {
		t.Fatal("the provider lists no key types in Capabilities().KeyTypes")
	}
	for _, a := range s.caps.Algorithms {
		info, err := alg.Lookup(string(a))
		if err != nil {
			t.Fatalf("Capabilities().Algorithms lists %q, which package alg does not know: %v", a, err)
		}
		s.algs = append(s.algs, info)
	}

	t.Run("Identity", s.testIdentity)
	t.Run("Capabilities", s.testCapabilities)
	t.Run("CreateKey", s.testCreateKey)
	t.Run("UnsupportedSpec", s.testUnsupportedSpec)
	t.Run("FindKey", s.testFindKey)
	t.Run("Advertised", s.testAdvertised)
	t.Run("NotAdvertised", s.testNotAdvertised)
	t.Run("Sign", s.testSign)
	t.Run("SignDigestLength", s.testSignDigestLength)
	t.Run("SignWrongAlgorithm", s.testSignWrongAlgorithm)
	t.Run("DecryptOAEP", s.testDecryptOAEP)
	t.Run("AESGCM", s.testAESGCM)
	t.Run("WrapUnwrap", s.testWrapUnwrap)
	t.Run("MAC", s.testMAC)
	t.Run("Random", s.testRandom)
	t.Run("Import", s.testImport)
	t.Run("Export", s.testExport)
	t.Run("DeleteKey", s.testDeleteKey)
	t.Run("CheckHealth", s.testCheckHealth)
	t.Run("Concurrency", s.testConcurrency)
	t.Run("Close", func(t *testing.T) { s.testClose(t, open) })
}

type suite struct {
	p     provider.Provider
	caps  provider.Capabilities
	specs []alg.Spec
	algs  []alg.Info

	mu   sync.Mutex
	keys map[string]testKey // fixture keys by fixture name
}

// testKey is a key the suite made.
type testKey struct {
	objectID string
	spec     alg.Spec
	ref      string
	der      []byte           // DER SubjectPublicKeyInfo from CreateKey; nil for AES
	pub      crypto.PublicKey // parsed der; nil for AES
}

// NewObjectID returns a random object id: 32 lowercase hex characters, as
// the key service makes them.
func NewObjectID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// specName names a spec in subtest names: RSA-2048, EC-P-256, Ed25519, AES-256.
func specName(s alg.Spec) string {
	if s.Type == alg.EC {
		return "EC-" + s.Curve
	}
	return s.String()
}

// specsOf lists the key specs the capabilities promise.
func specsOf(t *testing.T, c provider.Capabilities) []alg.Spec {
	t.Helper()
	var out []alg.Spec
	add := func(typ alg.KeyType, size int, curve string) {
		s, err := alg.NewSpec(string(typ), size, curve)
		if err != nil {
			t.Errorf("Capabilities lists %s size %d curve %q, which is not a valid key spec: %v", typ, size, curve, err)
			return
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, kt := range c.KeyTypes {
		switch kt.Type {
		case alg.EC:
			for _, cv := range kt.Curves {
				add(alg.EC, 0, cv)
			}
		case alg.Ed25519:
			add(alg.Ed25519, 0, "")
		default:
			sizes := kt.Sizes
			if len(sizes) == 0 { // any size: test the common ones
				sizes = map[alg.KeyType][]int{alg.RSA: {2048}, alg.AES: {128, 256}}[kt.Type]
			}
			for _, n := range sizes {
				add(kt.Type, n, "")
			}
		}
	}
	return out
}

// algsFor lists the provider's algorithms of a kind that apply to spec.
func (s *suite) algsFor(spec alg.Spec, kind alg.Kind) []alg.Info {
	var out []alg.Info
	for _, a := range s.algs {
		if a.Kind == kind && alg.Compatible(spec, a) == nil {
			out = append(out, a)
		}
	}
	return out
}

func (s *suite) specsOfType(typ alg.KeyType) []alg.Spec {
	var out []alg.Spec
	for _, sp := range s.specs {
		if sp.Type == typ {
			out = append(out, sp)
		}
	}
	return out
}

// cheapSpec is the listed spec quickest to generate (EC, Ed25519, AES, then
// the smallest RSA) that the suite can use, for tests that create and delete
// keys; asymmetric leaves out AES.
func (s *suite) cheapSpec(asymmetric bool) (alg.Spec, bool) {
	order := []alg.KeyType{alg.EC, alg.Ed25519, alg.AES, alg.RSA}
	if asymmetric {
		order = []alg.KeyType{alg.EC, alg.Ed25519, alg.RSA}
	}
	for _, typ := range order {
		specs := s.specsOfType(typ)
		slices.SortFunc(specs, func(a, b alg.Spec) int { return a.Size - b.Size })
		for _, sp := range specs {
			if s.usable(sp) {
				return sp, true
			}
		}
	}
	return alg.Spec{}, false
}

// usable reports whether the provider lists an algorithm for spec that
// exercise can use.
func (s *suite) usable(spec alg.Spec) bool {
	return len(s.algsFor(spec, alg.KindSign)) > 0 || len(s.algsFor(spec, alg.KindEncrypt)) > 0 ||
		len(s.algsFor(spec, alg.KindWrap)) > 0 || len(s.algsFor(spec, alg.KindMAC)) > 0
}

func usagesFor(t alg.KeyType) []alg.Usage {
	switch t {
	case alg.RSA:
		return []alg.Usage{alg.UsageSign, alg.UsageVerify, alg.UsageEncrypt, alg.UsageDecrypt}
	case alg.AES:
		return []alg.Usage{alg.UsageEncrypt, alg.UsageDecrypt, alg.UsageWrap, alg.UsageUnwrap}
	}
	return []alg.Usage{alg.UsageSign, alg.UsageVerify}
}

// createKey makes a key of spec under a new object id.
func (s *suite) createKey(ctx context.Context, p provider.Provider, spec alg.Spec) (testKey, error) {
	k := testKey{objectID: NewObjectID(), spec: spec}
	created, err := p.CreateKey(ctx, provider.CreateKeyRequest{
		ObjectID: k.objectID, Label: "providertest-" + specName(spec), Spec: spec, Usage: usagesFor(spec.Type),
	})
	if err != nil {
		return k, err
	}
	k.ref, k.der = created.Ref, created.PublicKey
	if !alg.Secret(spec.Type) {
		if k.pub, err = x509.ParsePKIXPublicKey(k.der); err != nil {
			return k, fmt.Errorf("CreateKey returned a public key that x509.ParsePKIXPublicKey refuses: %w", err)
		}
	}
	return k, nil
}

// mustCreate is createKey that deletes the key at the end of the test.
func (s *suite) mustCreate(t *testing.T, spec alg.Spec) testKey {
	t.Helper()
	k, err := s.createKey(t.Context(), s.p, spec)
	if err != nil {
		t.Fatalf("CreateKey %s: %v", specName(spec), err)
	}
	t.Cleanup(func() { s.p.DeleteKey(context.Background(), k.ref) })
	return k
}

// fixture returns the suite's shared key called name of spec, creating it
// on first use. Shared keys live as long as the suite's provider.
func (s *suite) fixture(t *testing.T, name string, spec alg.Spec) testKey {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if k, ok := s.keys[name]; ok {
		return k
	}
	k, err := s.createKey(t.Context(), s.p, spec)
	if err != nil {
		t.Fatalf("CreateKey %s: %v", specName(spec), err)
	}
	s.keys[name] = k
	return k
}

// key is the shared key of spec.
func (s *suite) key(t *testing.T, spec alg.Spec) testKey {
	t.Helper()
	return s.fixture(t, specName(spec), spec)
}

// signInput is what Sign takes for msg: the digest, or the message for EdDSA.
func signInput(a alg.Info, msg []byte) []byte {
	if a.Hash == 0 {
		return msg
	}
	return alg.Digest(a, msg)
}

// checkSignature verifies sig (as Sign returns it) over input with alg.Verify
// and, independently, with the standard library directly.
func checkSignature(k testKey, a alg.Info, input, sig []byte) error {
	verifySig := sig
	switch pub := k.pub.(type) {
	case *ecdsa.PublicKey:
		n := alg.CurveByteLen(k.spec.Curve)
		if len(sig) != 2*n {
			return fmt.Errorf("ECDSA signature is %d bytes, want fixed-width r‖s of %d", len(sig), 2*n)
		}
		r, ss := new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])
		if !ecdsa.Verify(pub, input, r, ss) {
			return errors.New("crypto/ecdsa.Verify refuses the signature")
		}
		der, err := alg.ECDSARawToDER(sig)
		if err != nil {
			return fmt.Errorf("ECDSARawToDER: %w", err)
		}
		if !ecdsa.VerifyASN1(pub, input, der) {
			return errors.New("crypto/ecdsa.VerifyASN1 refuses the DER signature")
		}
		verifySig = der
	case *rsa.PublicKey:
		if len(sig) != pub.Size() {
			return fmt.Errorf("RSA signature is %d bytes, want %d", len(sig), pub.Size())
		}
		var err error
		if a.PSS {
			err = rsa.VerifyPSS(pub, a.Hash, input, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: a.Hash})
		} else {
			err = rsa.VerifyPKCS1v15(pub, a.Hash, input, sig)
		}
		if err != nil {
			return fmt.Errorf("crypto/rsa refuses the signature: %w", err)
		}
	case ed25519.PublicKey:
		if !ed25519.Verify(pub, input, sig) {
			return errors.New("crypto/ed25519.Verify refuses the signature")
		}
	default:
		return fmt.Errorf("cannot verify with a %T", k.pub)
	}
	ok, err := alg.Verify(k.pub, a, input, verifySig)
	if err != nil || !ok {
		return fmt.Errorf("alg.Verify = %v, %v; want true", ok, err)
	}
	// The check must be able to fail: the same signature over other input.
	other := signInput(a, []byte("some other message"))
	if ok, _ := alg.Verify(k.pub, a, other, verifySig); ok {
		return errors.New("the signature also verifies over another message")
	}
	return nil
}

// exercise performs one operation with k (with the first listed algorithm
// that applies to it: a signature, an encryption, a key wrap) and checks its
// result. It returns the provider's error as is, or an error describing a
// wrong result.
func (s *suite) exercise(ctx context.Context, p provider.Provider, k testKey) error {
	for _, kind := range []alg.Kind{alg.KindSign, alg.KindEncrypt, alg.KindWrap, alg.KindMAC} {
		if as := s.algsFor(k.spec, kind); len(as) > 0 {
			return perform(ctx, p, k, as[0])
		}
	}
	return fmt.Errorf("the provider lists no algorithm for %s", specName(k.spec))
}

// perform does what algorithm a does with k and checks the result
// independently where it can: a signature with Go's crypto and the public
// key, an RSA-OAEP decryption of what Go encrypted with the public key, an
// AES-GCM or AES-KWP round trip that must also refuse a tampered input. It
// returns the provider's error as is, or an error describing a wrong result.
func perform(ctx context.Context, p provider.Provider, k testKey, a alg.Info) error {
	switch {
	case a.Kind == alg.KindSign:
		in := signInput(a, []byte("perform "+string(a.Name)))
		sig, err := p.Sign(ctx, provider.SignRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Input: in})
		if err != nil {
			return err
		}
		return checkSignature(k, a, in, sig)
	case a.Kind == alg.KindEncrypt && a.KeyType == alg.RSA:
		msg := []byte("perform " + string(a.Name))
		ct, err := rsa.EncryptOAEP(a.Hash.New(), rand.Reader, k.pub.(*rsa.PublicKey), msg, nil)
		if err != nil {
			return err
		}
		got, err := p.Decrypt(ctx, provider.DecryptRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Ciphertext: ct})
		if err != nil {
			return err
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("%s decryption of Go's ciphertext returned %x, want %x", a.Name, got, msg)
		}
		return nil
	case a.Kind == alg.KindEncrypt:
		msg, aad := []byte("perform "+string(a.Name)), []byte("aad")
		r, err := p.Encrypt(ctx, provider.EncryptRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Plaintext: msg, AAD: aad})
		if err != nil {
			return err
		}
		if len(r.Nonce) != 12 || len(r.Ciphertext) != len(msg)+16 {
			return fmt.Errorf("%s: nonce of %d bytes and ciphertext of %d for %d of plaintext; want 12 and %d",
				a.Name, len(r.Nonce), len(r.Ciphertext), len(msg), len(msg)+16)
		}
		got, err := p.Decrypt(ctx, provider.DecryptRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Ciphertext: r.Ciphertext, Nonce: r.Nonce, AAD: aad})
		if err != nil {
			return err
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("%s round trip returned %x, want %x", a.Name, got, msg)
		}
		tampered := bytes.Clone(r.Ciphertext)
		tampered[len(tampered)-1] ^= 1
		if _, err := p.Decrypt(ctx, provider.DecryptRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Ciphertext: tampered, Nonce: r.Nonce, AAD: aad}); !errors.Is(err, kgerr.ErrDecryptionFailed) {
			return fmt.Errorf("%s decryption of a tampered ciphertext: %v, want DECRYPTION_FAILED", a.Name, err)
		}
		return nil
	case a.Kind == alg.KindWrap:
		msg := bytes.Repeat([]byte("kwp!"), 8) // a multiple of 8 bytes: exact on every token
		w, err := p.WrapKey(ctx, provider.WrapRequest{Ref: k.ref, Spec: k.spec, KeyMaterial: msg})
		if err != nil {
			return err
		}
		if len(w) != len(msg)+8 {
			return fmt.Errorf("wrapped key is %d bytes, want %d", len(w), len(msg)+8)
		}
		got, err := p.UnwrapKey(ctx, provider.UnwrapRequest{Ref: k.ref, Spec: k.spec, Wrapped: w})
		if err != nil {
			return err
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("wrap round trip returned %x, want %x", got, msg)
		}
		w[0] ^= 1
		if _, err := p.UnwrapKey(ctx, provider.UnwrapRequest{Ref: k.ref, Spec: k.spec, Wrapped: w}); !errors.Is(err, kgerr.ErrDecryptionFailed) {
			return fmt.Errorf("unwrap of a tampered wrapped key: %v, want DECRYPTION_FAILED", err)
		}
		return nil
	case a.Kind == alg.KindMAC:
		return performMAC(ctx, p, k, a)
	}
	return fmt.Errorf("the suite does not know how to perform %s", a.Name)
}

// noPanic runs f, turning a panic into a test error.
func noPanic(t *testing.T, what string, f func() error) (err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("%s panicked: %v", what, r)
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return f()
}

// wantErr fails t unless err matches one of targets with errors.Is.
func wantErr(t *testing.T, what string, err error, targets ...error) {
	t.Helper()
	for _, target := range targets {
		if errors.Is(err, target) {
			return
		}
	}
	var codes []string
	for _, target := range targets {
		codes = append(codes, string(kgerr.KindOf(target)))
	}
	t.Errorf("%s: error %v (code %q), want one of %v", what, err, kgerr.KindOf(err), codes)
}

// notApplicable are the errors a provider returns for an algorithm, spec or
// operation that does not fit a key.
var notApplicable = []error{kgerr.ErrUnsupportedAlgorithm, kgerr.ErrInvalidInput}

func (s *suite) testIdentity(t *testing.T) {
	if s.p.Name() == "" {
		t.Error("Name() is empty")
	}
	if s.p.Type() == "" {
		t.Error("Type() is empty")
	}
}

func (s *suite) testCapabilities(t *testing.T) {
	for _, sp := range s.specs {
		if err := s.caps.CheckSpec(sp); err != nil {
			t.Errorf("CheckSpec(%s) refuses a spec Capabilities lists: %v", sp, err)
		}
	}
	for _, a := range s.algs {
		if err := s.caps.CheckAlgorithm(a.Name); err != nil {
			t.Errorf("CheckAlgorithm(%s) refuses an algorithm Capabilities lists: %v", a.Name, err)
		}
		if !slices.ContainsFunc(s.specs, func(sp alg.Spec) bool { return alg.Compatible(sp, a) == nil }) {
			t.Errorf("Capabilities lists %s, but no listed key spec can use it", a.Name)
		}
		if _, ok := s.caps.Missing[a.Name]; ok {
			t.Errorf("Capabilities lists %s both as supported and as missing", a.Name)
		}
	}
	for i, a := range s.caps.Algorithms {
		if slices.Contains(s.caps.Algorithms[:i], a) {
			t.Errorf("Capabilities lists %s twice", a)
		}
	}
	// A provider does not list keys it cannot use.
	for _, sp := range s.specs {
		if !s.usable(sp) {
			t.Errorf("Capabilities lists %s keys, but no listed algorithm applies to them", specName(sp))
		}
	}
	if _, ok := s.p.(provider.MACer); !ok && slices.ContainsFunc(s.algs, func(a alg.Info) bool { return a.Kind == alg.KindMAC }) {
		t.Error("Capabilities lists an HMAC algorithm, but the provider does not implement provider.MACer")
	}
	if !capsEqual(s.caps, s.p.Capabilities()) {
		t.Error("Capabilities() changed while the provider is open")
	}
}

func capsEqual(a, b provider.Capabilities) bool {
	if !slices.Equal(a.Algorithms, b.Algorithms) || len(a.KeyTypes) != len(b.KeyTypes) {
		return false
	}
	for i := range a.KeyTypes {
		x, y := a.KeyTypes[i], b.KeyTypes[i]
		if x.Type != y.Type || !slices.Equal(x.Sizes, y.Sizes) || !slices.Equal(x.Curves, y.Curves) {
			return false
		}
	}
	return true
}

func (s *suite) testCreateKey(t *testing.T) {
	for _, sp := range s.specs {
		t.Run("ok "+specName(sp), func(t *testing.T) {
			k := s.key(t, sp)
			if k.ref == "" {
				t.Fatal("CreateKey returned an empty Ref")
			}
			ctx := t.Context()
			if alg.Secret(sp.Type) {
				if len(k.der) != 0 {
					t.Errorf("CreateKey returned a public key for a secret key: %x", k.der)
				}
				_, err := publicKey(t, s.p, k.ref)
				wantErr(t, "PublicKey of a secret key", err, notApplicable...)
				return
			}
			got, err := alg.SpecOf(k.pub)
			if err != nil || got != sp {
				t.Errorf("public key spec = %+v, %v; want %+v", got, err, sp)
			}
			der, err := s.p.PublicKey(ctx, k.ref)
			if err != nil {
				t.Fatalf("PublicKey: %v", err)
			}
			if !bytes.Equal(der, k.der) {
				t.Errorf("PublicKey(ref) = %x, CreateKey returned %x", der, k.der)
			}
		})
	}
}

// publicKey calls p.PublicKey, turning a panic into a test error.
func publicKey(t *testing.T, p provider.Provider, ref string) (der []byte, err error) {
	t.Helper()
	err = noPanic(t, "PublicKey", func() error {
		var e error
		der, e = p.PublicKey(t.Context(), ref)
		return e
	})
	return der, err
}

func (s *suite) testUnsupportedSpec(t *testing.T) {
	cases := []struct {
		name string
		spec alg.Spec
	}{
		{"fail RSA-1024", alg.Spec{Type: alg.RSA, Size: 1024}},
		{"fail AES-192", alg.Spec{Type: alg.AES, Size: 192}},
		{"fail EC-P-224", alg.Spec{Type: alg.EC, Size: 224, Curve: "P-224"}},
		{"fail unknown type", alg.Spec{Type: "DSA", Size: 2048}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, "CheckSpec", s.caps.CheckSpec(tc.spec), notApplicable...)
			id := NewObjectID()
			var created provider.CreatedKey
			err := noPanic(t, "CreateKey", func() error {
				var e error
				created, e = s.p.CreateKey(t.Context(), provider.CreateKeyRequest{ObjectID: id, Label: "providertest-unsupported",
					Spec: tc.spec, Usage: usagesFor(tc.spec.Type)})
				return e
			})
			wantErr(t, "CreateKey", err, notApplicable...)
			if err == nil {
				s.p.DeleteKey(context.Background(), created.Ref)
			}
			if _, found, err := s.p.FindKey(t.Context(), id); err != nil || found {
				t.Errorf("FindKey after a refused create = found %v, %v; want false, nil", found, err)
			}
		})
	}
}

func (s *suite) testFindKey(t *testing.T) {
	ctx := t.Context()
	for _, sp := range s.specs {
		t.Run("ok found "+specName(sp), func(t *testing.T) {
			k := s.key(t, sp)
			ref, found, err := s.p.FindKey(ctx, k.objectID)
			if err != nil || !found || ref != k.ref {
				t.Errorf("FindKey = %q, %v, %v; want %q, true, nil", ref, found, err, k.ref)
			}
		})
	}
	t.Run("ok not found unknown id", func(t *testing.T) {
		ref, found, err := s.p.FindKey(ctx, NewObjectID())
		if err != nil || found || ref != "" {
			t.Errorf("FindKey = %q, %v, %v; want \"\", false, nil", ref, found, err)
		}
	})
}

// testAdvertised performs every listed algorithm with a key of a listed
// spec it applies to, and checks the result independently (perform): a
// provider never lists an algorithm it cannot perform.
func (s *suite) testAdvertised(t *testing.T) {
	for _, a := range s.algs {
		t.Run("ok "+string(a.Name), func(t *testing.T) {
			sp, ok := s.cheapestFor(a)
			if !ok {
				t.Fatalf("Capabilities lists %s, but no listed key spec can use it", a.Name)
			}
			if err := perform(t.Context(), s.p, s.key(t, sp), a); err != nil {
				t.Errorf("%s with a %s key: %v", a.Name, specName(sp), err)
			}
		})
	}
}

// cheapestFor is the listed spec quickest to generate that a applies to.
func (s *suite) cheapestFor(a alg.Info) (alg.Spec, bool) {
	var specs []alg.Spec
	for _, sp := range s.specs {
		if alg.Compatible(sp, a) == nil {
			specs = append(specs, sp)
		}
	}
	if len(specs) == 0 {
		return alg.Spec{}, false
	}
	return slices.MinFunc(specs, func(x, y alg.Spec) int { return x.Size - y.Size }), true
}

// specFor is a key spec algorithm a applies to.
func specFor(a alg.Info) alg.Spec {
	switch {
	case a.Curve != "":
		sp, _ := alg.NewSpec(string(alg.EC), 0, a.Curve)
		return sp
	case a.KeyType == alg.Ed25519:
		return alg.Spec{Type: alg.Ed25519, Size: 256}
	case a.KeyType == alg.AES:
		return alg.Spec{Type: alg.AES, Size: cmp.Or(a.KeySize, 256)}
	case a.KeyType == alg.HMAC:
		return alg.Spec{Type: alg.HMAC, Size: cmp.Or(a.KeySize, 256)}
	}
	return alg.Spec{Type: a.KeyType, Size: 2048}
}

// testNotAdvertised asks for every algorithm of package alg the provider
// does not list: CheckAlgorithm and every operation of the algorithm must
// refuse it with UNSUPPORTED_ALGORITHM (not another error, and no result).
// The key is one of a listed spec the algorithm applies to when there is
// one (the refusal must come from the algorithm, not from the key), else
// another key of the provider's, with a spec the algorithm applies to (the
// refusal must come before the key is looked at).
func (s *suite) testNotAdvertised(t *testing.T) {
	n := 0
	for _, name := range alg.All() {
		if slices.Contains(s.caps.Algorithms, name) {
			continue
		}
		n++
		a, _ := alg.Lookup(string(name))
		t.Run("fail "+string(name), func(t *testing.T) {
			err := s.caps.CheckAlgorithm(name)
			if !errors.Is(err, kgerr.ErrUnsupportedAlgorithm) {
				t.Errorf("CheckAlgorithm(%s) = %v, want UNSUPPORTED_ALGORITHM", name, err)
			}
			var k testKey
			if sp, ok := s.cheapestFor(a); ok {
				k = s.key(t, sp)
			} else if sp, ok := s.cheapSpec(false); ok {
				k = s.key(t, sp)
				k.spec = specFor(a)
			} else {
				t.Skip("the provider lists no usable key spec")
			}
			for op, call := range refusedCalls(k, a) {
				var out []byte
				err := noPanic(t, op, func() error {
					var e error
					out, e = call(t.Context(), s.p)
					return e
				})
				if !errors.Is(err, kgerr.ErrUnsupportedAlgorithm) {
					t.Errorf("%s with %s, which the provider does not list, on a %s key: %v (code %q), want UNSUPPORTED_ALGORITHM",
						op, name, specName(k.spec), err, kgerr.KindOf(err))
				}
				if len(out) != 0 {
					t.Errorf("%s returned %d bytes with its error", op, len(out))
				}
			}
		})
	}
	if n == 0 {
		t.Logf("the provider lists every algorithm of package alg")
	}
}

// refusedCalls are the operations of algorithm a with key k, each with
// well-formed input so that only the algorithm can be refused.
func refusedCalls(k testKey, a alg.Info) map[string]func(context.Context, provider.Provider) ([]byte, error) {
	msg := bytes.Repeat([]byte("refused!"), 4)
	switch {
	case a.Kind == alg.KindSign:
		return map[string]func(context.Context, provider.Provider) ([]byte, error){
			"Sign": func(ctx context.Context, p provider.Provider) ([]byte, error) {
				return p.Sign(ctx, provider.SignRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Input: signInput(a, msg)})
			},
		}
	case a.Kind == alg.KindEncrypt && a.KeyType == alg.RSA:
		ct := make([]byte, 256)
		if pub, ok := k.pub.(*rsa.PublicKey); ok {
			ct, _ = rsa.EncryptOAEP(a.Hash.New(), rand.Reader, pub, msg, nil)
		}
		return map[string]func(context.Context, provider.Provider) ([]byte, error){
			"Decrypt": func(ctx context.Context, p provider.Provider) ([]byte, error) {
				return p.Decrypt(ctx, provider.DecryptRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Ciphertext: ct})
			},
		}
	case a.Kind == alg.KindEncrypt:
		return map[string]func(context.Context, provider.Provider) ([]byte, error){
			"Encrypt": func(ctx context.Context, p provider.Provider) ([]byte, error) {
				r, err := p.Encrypt(ctx, provider.EncryptRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Plaintext: msg})
				return append(r.Nonce, r.Ciphertext...), err
			},
			"Decrypt": func(ctx context.Context, p provider.Provider) ([]byte, error) {
				return p.Decrypt(ctx, provider.DecryptRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Ciphertext: slices.Concat(msg, msg[:16]), Nonce: msg[:12]})
			},
		}
	case a.Kind == alg.KindMAC:
		return map[string]func(context.Context, provider.Provider) ([]byte, error){
			"MAC": func(ctx context.Context, p provider.Provider) ([]byte, error) {
				m, ok := p.(provider.MACer)
				if !ok { // no MACer: nothing to call, the refusal is the missing interface
					return nil, kgerr.ErrUnsupportedAlgorithm
				}
				return m.MAC(ctx, provider.MACRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Data: msg})
			},
		}
	}
	return map[string]func(context.Context, provider.Provider) ([]byte, error){
		"WrapKey": func(ctx context.Context, p provider.Provider) ([]byte, error) {
			return p.WrapKey(ctx, provider.WrapRequest{Ref: k.ref, Spec: k.spec, KeyMaterial: msg})
		},
		"UnwrapKey": func(ctx context.Context, p provider.Provider) ([]byte, error) {
			return p.UnwrapKey(ctx, provider.UnwrapRequest{Ref: k.ref, Spec: k.spec, Wrapped: slices.Concat(msg, msg[:8])})
		},
	}
}

// testSignDigestLength signs, with every listed algorithm that signs a
// digest, input that is not a digest of its hash: INVALID_INPUT, no
// signature.
func (s *suite) testSignDigestLength(t *testing.T) {
	for _, a := range s.algs {
		if a.Kind != alg.KindSign || a.Hash == 0 {
			continue
		}
		sp, ok := s.cheapestFor(a)
		if !ok {
			continue
		}
		for _, n := range []int{0, a.Hash.Size() - 1, a.Hash.Size() + 1} {
			t.Run(fmt.Sprintf("fail %s %s %d-byte digest", specName(sp), a.Name, n), func(t *testing.T) {
				k := s.key(t, sp)
				var sig []byte
				err := noPanic(t, "Sign", func() error {
					var e error
					sig, e = s.p.Sign(t.Context(), provider.SignRequest{Ref: k.ref, Spec: sp, Algorithm: a, Input: make([]byte, n)})
					return e
				})
				wantErr(t, "Sign", err, kgerr.ErrInvalidInput)
				if len(sig) != 0 {
					t.Errorf("Sign returned a signature with an error: %x", sig)
				}
			})
		}
	}
}

func (s *suite) testSign(t *testing.T) {
	msg := []byte("The quick brown fox jumps over the lazy dog")
	n := 0
	for _, sp := range s.specs {
		for _, a := range s.algsFor(sp, alg.KindSign) {
			n++
			t.Run("ok "+specName(sp)+" "+string(a.Name), func(t *testing.T) {
				k := s.key(t, sp)
				in := signInput(a, msg)
				sig, err := s.p.Sign(t.Context(), provider.SignRequest{Ref: k.ref, Spec: sp, Algorithm: a, Input: in})
				if err != nil {
					t.Fatalf("Sign: %v", err)
				}
				if err := checkSignature(k, a, in, sig); err != nil {
					t.Error(err)
				}
			})
		}
	}
	if n == 0 && slices.ContainsFunc(s.algs, func(a alg.Info) bool { return a.Kind == alg.KindSign }) {
		t.Error("the provider lists signature algorithms but no key spec they apply to")
	}
}

// testSignWrongAlgorithm signs with algorithms that do not apply to the key:
// of another key type, or not signature algorithms.
func (s *suite) testSignWrongAlgorithm(t *testing.T) {
	var signAlgs []alg.Info
	for _, a := range alg.All() {
		if i, _ := alg.Lookup(string(a)); i.Kind == alg.KindSign {
			signAlgs = append(signAlgs, i)
		}
	}
	msg := []byte("wrong algorithm")
	for _, sp := range s.specs {
		var wrong []alg.Info
		seen := map[alg.KeyType]bool{sp.Type: true}
		for _, a := range signAlgs {
			if !seen[a.KeyType] {
				seen[a.KeyType] = true
				wrong = append(wrong, a)
			}
		}
		for _, a := range s.algs {
			if a.Kind != alg.KindSign && a.KeyType == sp.Type {
				wrong = append(wrong, a)
				break
			}
		}
		for _, a := range wrong {
			t.Run("fail "+specName(sp)+" "+string(a.Name), func(t *testing.T) {
				k := s.key(t, sp)
				var sig []byte
				err := noPanic(t, "Sign", func() error {
					var e error
					sig, e = s.p.Sign(t.Context(), provider.SignRequest{Ref: k.ref, Spec: sp, Algorithm: a, Input: signInput(a, msg)})
					return e
				})
				wantErr(t, "Sign with "+string(a.Name), err, notApplicable...)
				if len(sig) != 0 {
					t.Errorf("Sign returned a signature with an error: %x", sig)
				}
			})
		}
	}
}

func (s *suite) testDecryptOAEP(t *testing.T) {
	for _, sp := range s.specsOfType(alg.RSA) {
		oaep := s.algsFor(sp, alg.KindEncrypt)
		for _, a := range oaep {
			prefix := specName(sp) + " " + string(a.Name)
			encrypt := func(t *testing.T, k testKey, h crypto.Hash, msg []byte) []byte {
				t.Helper()
				ct, err := rsa.EncryptOAEP(h.New(), rand.Reader, k.pub.(*rsa.PublicKey), msg, nil)
				if err != nil {
					t.Fatalf("rsa.EncryptOAEP: %v", err)
				}
				return ct
			}
			decrypt := func(t *testing.T, k testKey, ct []byte) ([]byte, error) {
				return s.p.Decrypt(t.Context(), provider.DecryptRequest{Ref: k.ref, Spec: sp, Algorithm: a, Ciphertext: ct})
			}
			t.Run("ok "+prefix, func(t *testing.T) {
				k := s.key(t, sp)
				for _, n := range []int{1, 32, k.pub.(*rsa.PublicKey).Size() - 2*a.Hash.Size() - 2} {
					msg := make([]byte, n)
					rand.Read(msg)
					got, err := decrypt(t, k, encrypt(t, k, a.Hash, msg))
					if err != nil {
						t.Fatalf("Decrypt of %d bytes: %v", n, err)
					}
					if !bytes.Equal(got, msg) {
						t.Errorf("Decrypt of %d bytes = %x, want %x", n, got, msg)
					}
				}
			})
			t.Run("fail "+prefix+" corrupted ciphertext", func(t *testing.T) {
				k := s.key(t, sp)
				ct := encrypt(t, k, a.Hash, []byte("secret"))
				ct[len(ct)-1] ^= 0x01
				got, err := decrypt(t, k, ct)
				wantErr(t, "Decrypt", err, kgerr.ErrDecryptionFailed)
				if len(got) != 0 {
					t.Errorf("Decrypt returned plaintext with an error: %x", got)
				}
			})
			for _, b := range oaep {
				if b.Hash == a.Hash {
					continue
				}
				t.Run("fail "+prefix+" ciphertext of "+string(b.Name), func(t *testing.T) {
					k := s.key(t, sp)
					_, err := decrypt(t, k, encrypt(t, k, b.Hash, []byte("secret")))
					wantErr(t, "Decrypt", err, kgerr.ErrDecryptionFailed)
				})
			}
		}
	}
}

func (s *suite) testAESGCM(t *testing.T) {
	for _, sp := range s.specsOfType(alg.AES) {
		for _, a := range s.algsFor(sp, alg.KindEncrypt) {
			prefix := specName(sp) + " " + string(a.Name)
			encrypt := func(t *testing.T, k testKey, pt, aad []byte) provider.EncryptResult {
				t.Helper()
				r, err := s.p.Encrypt(t.Context(), provider.EncryptRequest{Ref: k.ref, Spec: sp, Algorithm: a, Plaintext: pt, AAD: aad})
				if err != nil {
					t.Fatalf("Encrypt: %v", err)
				}
				if len(r.Nonce) != 12 {
					t.Errorf("nonce is %d bytes, want 12", len(r.Nonce))
				}
				if len(r.Ciphertext) != len(pt)+16 {
					t.Errorf("ciphertext is %d bytes for %d of plaintext, want %d", len(r.Ciphertext), len(pt), len(pt)+16)
				}
				return r
			}
			decrypt := func(t *testing.T, k testKey, nonce, ct, aad []byte) ([]byte, error) {
				return s.p.Decrypt(t.Context(), provider.DecryptRequest{Ref: k.ref, Spec: sp, Algorithm: a, Ciphertext: ct, Nonce: nonce, AAD: aad})
			}
			plain := bytes.Repeat([]byte("plaintext "), 10)
			aad := []byte("additional data")
			for _, tc := range []struct {
				name    string
				pt, aad []byte
			}{
				{"with aad", plain, aad},
				{"nil aad", plain, nil},
				{"empty plaintext", []byte{}, aad},
				{"nil plaintext nil aad", nil, nil},
				{"one byte", []byte{0}, aad},
				{"64 KiB", make([]byte, 64<<10), aad},
			} {
				t.Run("ok "+prefix+" "+tc.name, func(t *testing.T) {
					k := s.key(t, sp)
					r := encrypt(t, k, tc.pt, tc.aad)
					got, err := decrypt(t, k, r.Nonce, r.Ciphertext, tc.aad)
					if err != nil {
						t.Fatalf("Decrypt: %v", err)
					}
					if !bytes.Equal(got, tc.pt) {
						t.Errorf("Decrypt = %x, want %x", got, tc.pt)
					}
				})
			}
			t.Run("ok "+prefix+" encryptions differ", func(t *testing.T) {
				k := s.key(t, sp)
				r1, r2 := encrypt(t, k, plain, aad), encrypt(t, k, plain, aad)
				if bytes.Equal(r1.Nonce, r2.Nonce) {
					t.Errorf("two encryptions used the same nonce %x", r1.Nonce)
				}
				if bytes.Equal(r1.Ciphertext, r2.Ciphertext) {
					t.Error("two encryptions of one plaintext gave the same ciphertext")
				}
			})
			flip := func(b []byte, i int) []byte {
				b = bytes.Clone(b)
				b[(i+len(b))%len(b)] ^= 0x80
				return b
			}
			for _, tc := range []struct {
				name string
				// change returns what to decrypt: nonce, ciphertext, aad.
				change func(r provider.EncryptResult) ([]byte, []byte, []byte)
				// otherKey decrypts with another key of the same spec.
				otherKey bool
			}{
				{name: "wrong aad", change: func(r provider.EncryptResult) ([]byte, []byte, []byte) {
					return r.Nonce, r.Ciphertext, []byte("additional dat4")
				}},
				{name: "missing aad", change: func(r provider.EncryptResult) ([]byte, []byte, []byte) {
					return r.Nonce, r.Ciphertext, nil
				}},
				{name: "flipped ciphertext byte", change: func(r provider.EncryptResult) ([]byte, []byte, []byte) {
					return r.Nonce, flip(r.Ciphertext, 0), aad
				}},
				{name: "flipped tag byte", change: func(r provider.EncryptResult) ([]byte, []byte, []byte) {
					return r.Nonce, flip(r.Ciphertext, -1), aad
				}},
				{name: "flipped nonce byte", change: func(r provider.EncryptResult) ([]byte, []byte, []byte) {
					return flip(r.Nonce, 5), r.Ciphertext, aad
				}},
				{name: "truncated ciphertext", change: func(r provider.EncryptResult) ([]byte, []byte, []byte) {
					return r.Nonce, r.Ciphertext[:len(r.Ciphertext)-1], aad
				}},
				{name: "other key", otherKey: true, change: func(r provider.EncryptResult) ([]byte, []byte, []byte) {
					return r.Nonce, r.Ciphertext, aad
				}},
			} {
				t.Run("fail "+prefix+" "+tc.name, func(t *testing.T) {
					k := s.key(t, sp)
					r := encrypt(t, k, plain, aad)
					dk := k
					if tc.otherKey {
						dk = s.fixture(t, "second "+specName(sp), sp)
					}
					nonce, ct, ad := tc.change(r)
					got, err := decrypt(t, dk, nonce, ct, ad)
					wantErr(t, "Decrypt", err, kgerr.ErrDecryptionFailed)
					if len(got) != 0 {
						t.Errorf("Decrypt returned plaintext with an error: %x", got)
					}
				})
			}
		}
	}
	// AES-GCM on a key that is not an AES key.
	var gcm []alg.Info
	for _, a := range s.algs {
		if a.KeyType == alg.AES && a.Kind == alg.KindEncrypt {
			gcm = append(gcm, a)
		}
	}
	if len(gcm) == 0 {
		return
	}
	for _, sp := range s.specs {
		if sp.Type == alg.AES {
			continue
		}
		t.Run("fail "+specName(sp)+" "+string(gcm[0].Name), func(t *testing.T) {
			k := s.key(t, sp)
			err := noPanic(t, "Encrypt", func() error {
				_, e := s.p.Encrypt(t.Context(), provider.EncryptRequest{Ref: k.ref, Spec: sp, Algorithm: gcm[0], Plaintext: []byte("x")})
				return e
			})
			wantErr(t, "Encrypt", err, notApplicable...)
		})
	}
}

func (s *suite) testWrapUnwrap(t *testing.T) {
	if !slices.Contains(s.caps.Algorithms, alg.AESKWP) {
		t.Skip("the provider does not list AES-KWP")
	}
	kwp, _ := alg.Lookup(string(alg.AESKWP))
	for _, sp := range s.specsOfType(alg.AES) {
		if alg.Compatible(sp, kwp) != nil {
			continue
		}
		prefix := specName(sp) + " " + string(kwp.Name)
		wrap := func(t *testing.T, k testKey, m []byte) []byte {
			t.Helper()
			w, err := s.p.WrapKey(t.Context(), provider.WrapRequest{Ref: k.ref, Spec: sp, KeyMaterial: m})
			if err != nil {
				t.Fatalf("WrapKey of %d bytes: %v", len(m), err)
			}
			return w
		}
		unwrap := func(t *testing.T, k testKey, w []byte) ([]byte, error) {
			return s.p.UnwrapKey(t.Context(), provider.UnwrapRequest{Ref: k.ref, Spec: sp, Wrapped: w})
		}
		for _, n := range []int{1, 7, 8, 9, 16, 24, 32, 33, 64} {
			if s.caps.WrapMultipleOf8 && n%8 != 0 {
				t.Run(fmt.Sprintf("fail %s %d bytes on a token exact only for multiples of 8", prefix, n), func(t *testing.T) {
					k := s.key(t, sp)
					w, err := s.p.WrapKey(t.Context(), provider.WrapRequest{Ref: k.ref, Spec: sp, KeyMaterial: make([]byte, n)})
					wantErr(t, "WrapKey", err, kgerr.ErrUnsupportedAlgorithm)
					if len(w) != 0 {
						t.Errorf("WrapKey returned %d bytes with its error", len(w))
					}
				})
				continue
			}
			t.Run(fmt.Sprintf("ok %s %d bytes", prefix, n), func(t *testing.T) {
				k := s.key(t, sp)
				m := make([]byte, n)
				rand.Read(m)
				w := wrap(t, k, m)
				if want := (n+7)/8*8 + 8; len(w) != want {
					t.Errorf("wrapped key is %d bytes, want %d", len(w), want)
				}
				if bytes.Contains(w, m) && n >= 8 {
					t.Error("the wrapped key contains the key material")
				}
				got, err := unwrap(t, k, w)
				if err != nil {
					t.Fatalf("UnwrapKey: %v", err)
				}
				if !bytes.Equal(got, m) {
					t.Errorf("UnwrapKey = %x, want %x", got, m)
				}
			})
		}
		for _, tc := range []struct {
			name     string
			change   func(w []byte) []byte
			otherKey bool
		}{
			{name: "tampered first byte", change: func(w []byte) []byte { w[0] ^= 1; return w }},
			{name: "tampered middle byte", change: func(w []byte) []byte { w[len(w)/2] ^= 0x40; return w }},
			{name: "tampered last byte", change: func(w []byte) []byte { w[len(w)-1] ^= 0x80; return w }},
			{name: "truncated by one block", change: func(w []byte) []byte { return w[:len(w)-8] }},
			{name: "other key", otherKey: true, change: func(w []byte) []byte { return w }},
		} {
			t.Run("fail "+prefix+" "+tc.name, func(t *testing.T) {
				k := s.key(t, sp)
				m := make([]byte, 32)
				rand.Read(m)
				w := tc.change(wrap(t, k, m))
				uk := k
				if tc.otherKey {
					uk = s.fixture(t, "second "+specName(sp), sp)
				}
				got, err := unwrap(t, uk, w)
				wantErr(t, "UnwrapKey", err, kgerr.ErrDecryptionFailed)
				if len(got) != 0 {
					t.Errorf("UnwrapKey returned key material with an error: %x", got)
				}
			})
		}
	}
}

func (s *suite) testDeleteKey(t *testing.T) {
	var specs []alg.Spec
	if sp, ok := s.cheapSpec(true); ok {
		specs = append(specs, sp)
	}
	for _, sp := range s.specsOfType(alg.AES) {
		if s.usable(sp) {
			specs = append(specs, sp)
			break
		}
	}
	for _, sp := range specs {
		t.Run("ok "+specName(sp), func(t *testing.T) {
			ctx := t.Context()
			k, err := s.createKey(ctx, s.p, sp)
			if err != nil {
				t.Fatalf("CreateKey: %v", err)
			}
			if err := s.exercise(ctx, s.p, k); err != nil {
				t.Fatalf("the new key does not work: %v", err)
			}
			if err := s.p.DeleteKey(ctx, k.ref); err != nil {
				t.Fatalf("DeleteKey: %v", err)
			}
			if ref, found, err := s.p.FindKey(ctx, k.objectID); err != nil || found {
				t.Errorf("FindKey after delete = %q, %v, %v; want not found", ref, found, err)
			}
			err = noPanic(t, "operation after delete", func() error { return s.exercise(ctx, s.p, k) })
			wantErr(t, "operation after delete", err, kgerr.ErrKeyNotFound)
			if !alg.Secret(sp.Type) {
				_, err := publicKey(t, s.p, k.ref)
				wantErr(t, "PublicKey after delete", err, kgerr.ErrKeyNotFound)
			}
			if err := s.p.DeleteKey(ctx, k.ref); err != nil {
				t.Errorf("second DeleteKey: %v; want nil (idempotent)", err)
			}
		})
	}
}

func (s *suite) testCheckHealth(t *testing.T) {
	if err := s.p.CheckHealth(t.Context()); err != nil {
		t.Errorf("CheckHealth on a healthy provider: %v", err)
	}
}

func (s *suite) testConcurrency(t *testing.T) {
	type signer struct {
		k testKey
		a alg.Info
	}
	var signers []signer
	for _, typ := range []alg.KeyType{alg.EC, alg.RSA, alg.Ed25519} {
		specs := s.specsOfType(typ)
		slices.SortFunc(specs, func(a, b alg.Spec) int { return a.Size - b.Size })
		for _, sp := range specs {
			if as := s.algsFor(sp, alg.KindSign); len(as) > 0 {
				signers = append(signers, signer{s.key(t, sp), as[0]})
				break
			}
		}
	}
	churn, canChurn := s.cheapSpec(false)
	const goroutines, rounds = 8, 4
	ctx := t.Context()
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range rounds {
				for _, sg := range signers {
					in := signInput(sg.a, fmt.Appendf(nil, "goroutine %d round %d", g, i))
					sig, err := s.p.Sign(ctx, provider.SignRequest{Ref: sg.k.ref, Spec: sg.k.spec, Algorithm: sg.a, Input: in})
					if err != nil {
						t.Errorf("goroutine %d: Sign %s %s: %v", g, specName(sg.k.spec), sg.a.Name, err)
						continue
					}
					if err := checkSignature(sg.k, sg.a, in, sig); err != nil {
						t.Errorf("goroutine %d: %s %s: %v", g, specName(sg.k.spec), sg.a.Name, err)
					}
				}
				if !canChurn {
					continue
				}
				k, err := s.createKey(ctx, s.p, churn)
				if err != nil {
					t.Errorf("goroutine %d: CreateKey: %v", g, err)
					continue
				}
				if err := s.exercise(ctx, s.p, k); err != nil {
					t.Errorf("goroutine %d: new key: %v", g, err)
				}
				if _, found, err := s.p.FindKey(ctx, k.objectID); err != nil || !found {
					t.Errorf("goroutine %d: FindKey = %v, %v", g, found, err)
				}
				if err := s.p.DeleteKey(ctx, k.ref); err != nil {
					t.Errorf("goroutine %d: DeleteKey: %v", g, err)
				}
				if err := s.exercise(ctx, s.p, k); !errors.Is(err, kgerr.ErrKeyNotFound) {
					t.Errorf("goroutine %d: operation after delete: %v, want KEY_NOT_FOUND", g, err)
				}
			}
		})
	}
	wg.Wait()
}

// testClose closes a second provider and checks that every operation then
// fails with SERVICE_UNAVAILABLE, without a panic.
func (s *suite) testClose(t *testing.T, open func(t *testing.T) provider.Provider) {
	p := open(t)
	t.Cleanup(func() { p.Close() })
	ctx := t.Context()
	var keys []testKey
	if sp, ok := s.cheapSpec(true); ok {
		k, err := s.createKey(ctx, p, sp)
		if err != nil {
			t.Fatalf("CreateKey: %v", err)
		}
		keys = append(keys, k)
	}
	for _, sp := range s.specsOfType(alg.AES) {
		if s.usable(sp) {
			k, err := s.createKey(ctx, p, sp)
			if err != nil {
				t.Fatalf("CreateKey: %v", err)
			}
			keys = append(keys, k)
			break
		}
	}
	for _, k := range keys {
		if err := s.exercise(ctx, p, k); err != nil {
			t.Fatalf("%s before Close: %v", specName(k.spec), err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	closed := []error{kgerr.ErrServiceUnavailable}
	sp, _ := s.cheapSpec(false)
	t.Run("fail CreateKey", func(t *testing.T) {
		err := noPanic(t, "CreateKey", func() error {
			_, e := p.CreateKey(ctx, provider.CreateKeyRequest{ObjectID: NewObjectID(), Label: "providertest-closed", Spec: sp, Usage: usagesFor(sp.Type)})
			return e
		})
		wantErr(t, "CreateKey after Close", err, closed...)
	})
	t.Run("fail CheckHealth", func(t *testing.T) {
		wantErr(t, "CheckHealth after Close", noPanic(t, "CheckHealth", func() error { return p.CheckHealth(ctx) }), closed...)
	})
	for _, k := range keys {
		t.Run("fail FindKey "+specName(k.spec), func(t *testing.T) {
			var found bool
			err := noPanic(t, "FindKey", func() error {
				var e error
				_, found, e = p.FindKey(ctx, k.objectID)
				return e
			})
			wantErr(t, "FindKey after Close", err, closed...)
			if found {
				t.Error("FindKey after Close reports found")
			}
		})
		t.Run("fail operation "+specName(k.spec), func(t *testing.T) {
			err := noPanic(t, "operation", func() error { return s.exercise(ctx, p, k) })
			wantErr(t, "operation after Close", err, closed...)
		})
		if !alg.Secret(k.spec.Type) {
			t.Run("fail PublicKey "+specName(k.spec), func(t *testing.T) {
				_, err := publicKey(t, p, k.ref)
				wantErr(t, "PublicKey after Close", err, closed...)
			})
		}
		t.Run("fail DeleteKey "+specName(k.spec), func(t *testing.T) {
			wantErr(t, "DeleteKey after Close", noPanic(t, "DeleteKey", func() error { return p.DeleteKey(ctx, k.ref) }), closed...)
		})
	}
	t.Run("ok Close twice", func(t *testing.T) {
		if err := noPanic(t, "second Close", p.Close); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
}
