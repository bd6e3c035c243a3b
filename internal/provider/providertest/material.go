package providertest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// The optional capabilities: MAC, random bytes, import, export. A provider
// that does not implement one is checked not to advertise it (MAC) and the
// tests of the others skip.

// performMAC computes MACs with k: the hash's length, the same MAC for the
// same data, another for other data.
func performMAC(ctx context.Context, p provider.Provider, k testKey, a alg.Info) error {
	m, ok := p.(provider.MACer)
	if !ok {
		return fmt.Errorf("the provider lists %s but does not implement provider.MACer", a.Name)
	}
	data := []byte("perform " + string(a.Name))
	mac1, err := m.MAC(ctx, provider.MACRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Data: data})
	if err != nil {
		return err
	}
	if len(mac1) != a.Hash.Size() {
		return fmt.Errorf("%s MAC of %d bytes, want %d", a.Name, len(mac1), a.Hash.Size())
	}
	mac2, err := m.MAC(ctx, provider.MACRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Data: data})
	if err != nil {
		return err
	}
	other, err := m.MAC(ctx, provider.MACRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Data: []byte("other")})
	if err != nil {
		return err
	}
	if !bytes.Equal(mac1, mac2) || bytes.Equal(mac1, other) {
		return fmt.Errorf("%s MACs are not a function of the data", a.Name)
	}
	return nil
}

// testMAC refuses HMAC algorithms on keys of other types and of other sizes.
func (s *suite) testMAC(t *testing.T) {
	m, ok := s.p.(provider.MACer)
	if !ok {
		t.Skip("the provider does not implement provider.MACer")
	}
	for _, sp := range s.specs {
		for _, a := range s.algs {
			if a.Kind != alg.KindMAC || alg.Compatible(sp, a) == nil {
				continue
			}
			t.Run("fail "+specName(sp)+" "+string(a.Name), func(t *testing.T) {
				k := s.key(t, sp)
				var out []byte
				err := noPanic(t, "MAC", func() error {
					var e error
					out, e = m.MAC(t.Context(), provider.MACRequest{Ref: k.ref, Spec: sp, Algorithm: a, Data: []byte("x")})
					return e
				})
				wantErr(t, "MAC with a key it does not apply to", err, kgerr.ErrUnsupportedAlgorithm)
				if out != nil {
					t.Errorf("MAC returned %d bytes with its error", len(out))
				}
			})
			break
		}
	}
}

// testRandom asks for random bytes.
func (s *suite) testRandom(t *testing.T) {
	r, ok := s.p.(provider.Randomer)
	if !ok {
		t.Skip("the provider does not implement provider.Randomer")
	}
	a, err := r.Random(t.Context(), 1024)
	if err != nil {
		t.Fatalf("Random(1024): %v", err)
	}
	b, err := r.Random(t.Context(), 1024)
	if err != nil {
		t.Fatalf("Random(1024): %v", err)
	}
	if len(a) != 1024 || len(b) != 1024 || bytes.Equal(a, b) {
		t.Errorf("Random returned %d and %d bytes, equal: %v", len(a), len(b), bytes.Equal(a, b))
	}
}

// material is key material made by the suite, outside the provider.
type material struct {
	raw  []byte // what is transported: raw secret, or PKCS#8
	pub  crypto.PublicKey
	spki []byte
}

// makeMaterial makes material of spec with Go's crypto.
func makeMaterial(t *testing.T, sp alg.Spec) material {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch sp.Type {
	case alg.AES, alg.HMAC:
		raw := make([]byte, sp.Size/8)
		rand.Read(raw)
		return material{raw: raw}
	case alg.RSA:
		priv, err = rsa.GenerateKey(rand.Reader, sp.Size)
	case alg.EC:
		priv, err = ecdsa.GenerateKey(alg.Curve(sp.Curve), rand.Reader)
	case alg.Ed25519:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	raw, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return material{raw: raw, pub: priv.Public(), spki: spki}
}

// importSpecs are the listed specs the import tests use: every one but the
// RSA sizes above 2048 (slow to make, and no different to import).
func (s *suite) importSpecs() []alg.Spec {
	return slices.DeleteFunc(slices.Clone(s.specs), func(sp alg.Spec) bool {
		return (sp.Type == alg.RSA && sp.Size > 2048) || !s.usable(sp)
	})
}

// importer returns the provider's Importer and wrapping key, or skips.
func (s *suite) importer(t *testing.T) (provider.Importer, provider.WrappingKey, *rsa.PublicKey) {
	t.Helper()
	im, ok := s.p.(provider.Importer)
	if !ok {
		t.Skip("the provider does not implement provider.Importer")
	}
	wk, err := im.WrappingKey(t.Context())
	if errors.Is(err, kgerr.ErrUnsupportedAlgorithm) {
		// This backend lacks what imports need (a token without AES-KWP)
		// and says why.
		t.Skipf("the provider cannot import here: %v", err)
	}
	if err != nil {
		t.Fatalf("WrappingKey: %v", err)
	}
	pub, err := x509.ParsePKIXPublicKey(wk.PublicKey)
	rp, ok := pub.(*rsa.PublicKey)
	if err != nil || !ok || rp.N.BitLen() != 4096 || wk.ID == "" {
		t.Fatalf("WrappingKey = %q, a %T (%v); want an id and an RSA-4096 key", wk.ID, pub, err)
	}
	again, err := im.WrappingKey(t.Context())
	if err != nil || again.ID != wk.ID || !bytes.Equal(again.PublicKey, wk.PublicKey) {
		t.Fatalf("a second WrappingKey = %q (%v); want the same key as the first", again.ID, err)
	}
	return im, wk, rp
}

// importKey imports m as a key of spec sp (deleted at the end of the test).
func (s *suite) importKey(t *testing.T, im provider.Importer, req provider.ImportKeyRequest) (testKey, error) {
	t.Helper()
	if req.ObjectID == "" {
		req.ObjectID = NewObjectID()
	}
	req.Label, req.Usage = "providertest-import", usagesFor(req.Spec.Type)
	created, err := im.ImportKey(t.Context(), req)
	if err != nil {
		if ref, found, ferr := s.p.FindKey(context.WithoutCancel(t.Context()), req.ObjectID); ferr != nil || found {
			t.Errorf("a refused import left material behind: FindKey = %q, %v, %v", ref, found, ferr)
		}
		return testKey{}, err
	}
	t.Cleanup(func() { _ = s.p.DeleteKey(context.WithoutCancel(t.Context()), created.Ref) })
	k := testKey{objectID: req.ObjectID, spec: req.Spec, ref: created.Ref, der: created.PublicKey}
	if !alg.Secret(req.Spec.Type) && !bytes.Equal(created.PublicKey, req.PublicKey) {
		t.Errorf("ImportKey returned another public key than the one imported")
	}
	return k, nil
}

// testImport imports material the suite made and wrapped itself, uses it
// and checks the results against the original material; then every kind of
// bad import, each refused with INVALID_INPUT and leaving nothing behind.
func (s *suite) testImport(t *testing.T) {
	im, wk, wpub := s.importer(t)
	for _, sp := range s.importSpecs() {
		t.Run("ok "+specName(sp), func(t *testing.T) {
			m := makeMaterial(t, sp)
			w, err := alg.WrapRSAAESWith(wk.Algorithm, wpub, m.raw)
			if err != nil {
				t.Fatal(err)
			}
			k, err := s.importKey(t, im, provider.ImportKeyRequest{Spec: sp, WrappingKeyID: wk.ID, Wrapped: w, PublicKey: m.spki})
			if errors.Is(err, kgerr.ErrUnsupportedAlgorithm) {
				t.Skipf("the provider refuses to import %s keys: %v", specName(sp), err) // and said why
			}
			if err != nil {
				t.Fatalf("ImportKey %s: %v", specName(sp), err)
			}
			k.pub = m.pub // checks run against the original public key
			if err := s.exercise(t.Context(), s.p, k); err != nil {
				t.Fatalf("using the imported key: %v", err)
			}
			if alg.Secret(sp.Type) {
				if err := s.checkSecret(t.Context(), k, m.raw); err != nil {
					t.Error(err)
				}
			}
		})
	}
	s.testImportRefused(t, im, wk, wpub)
}

// checkSecret checks an imported secret key against its bytes: an HMAC
// against Go's, an AES-GCM encryption opened by Go, an AES-KWP wrap
// unwrapped by Go.
func (s *suite) checkSecret(ctx context.Context, k testKey, raw []byte) error {
	for _, a := range s.algs {
		if alg.Compatible(k.spec, a) != nil {
			continue
		}
		switch a.Kind {
		case alg.KindMAC:
			got, err := s.p.(provider.MACer).MAC(ctx, provider.MACRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Data: []byte("independent")})
			h := hmac.New(a.Hash.New, raw)
			h.Write([]byte("independent"))
			if err != nil || !hmac.Equal(got, h.Sum(nil)) {
				return fmt.Errorf("%s of the imported key (%v) differs from Go's HMAC with the material", a.Name, err)
			}
		case alg.KindEncrypt:
			r, err := s.p.Encrypt(ctx, provider.EncryptRequest{Ref: k.ref, Spec: k.spec, Algorithm: a, Plaintext: []byte("independent")})
			if err != nil {
				return err
			}
			b, _ := aes.NewCipher(raw)
			g, _ := cipher.NewGCM(b)
			if pt, err := g.Open(nil, r.Nonce, r.Ciphertext, nil); err != nil || string(pt) != "independent" {
				return fmt.Errorf("Go cannot open %s of the imported key with the material: %v", a.Name, err)
			}
		case alg.KindWrap:
			w, err := s.p.WrapKey(ctx, provider.WrapRequest{Ref: k.ref, Spec: k.spec, KeyMaterial: bytes.Repeat([]byte("kwp!"), 8)})
			if err != nil {
				return err
			}
			if got, err := alg.UnwrapKWP(raw, w); err != nil || !bytes.Equal(got, bytes.Repeat([]byte("kwp!"), 8)) {
				return fmt.Errorf("Go cannot unwrap the imported key's wrap with the material: %v", err)
			}
		}
	}
	return nil
}

func (s *suite) testImportRefused(t *testing.T, im provider.Importer, wk provider.WrappingKey, wpub *rsa.PublicKey) {
	specs := s.importSpecs()
	var asym, secret *alg.Spec
	for i := range specs {
		if alg.Secret(specs[i].Type) && secret == nil {
			secret = &specs[i]
		}
		if !alg.Secret(specs[i].Type) && specs[i].Type != alg.RSA && asym == nil {
			asym = &specs[i]
		}
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	type tc struct {
		name string
		req  func() provider.ImportKeyRequest
	}
	var cases []tc
	if secret != nil {
		sp := *secret
		m := makeMaterial(t, sp)
		w, _ := alg.WrapRSAAESWith(wk.Algorithm, wpub, m.raw)
		short := makeMaterial(t, alg.Spec{Type: sp.Type, Size: sp.Size - 64})
		ws, _ := alg.WrapRSAAESWith(wk.Algorithm, wpub, short.raw)
		wo, _ := alg.WrapRSAAESWith(wk.Algorithm, &other.PublicKey, m.raw)
		cases = append(cases,
			tc{"wrong wrapping key id", func() provider.ImportKeyRequest {
				return provider.ImportKeyRequest{Spec: sp, WrappingKeyID: "0123", Wrapped: w}
			}},
			tc{"wrapped for another key", func() provider.ImportKeyRequest {
				return provider.ImportKeyRequest{Spec: sp, WrappingKeyID: wk.ID, Wrapped: wo}
			}},
			tc{"corrupt RSA part", func() provider.ImportKeyRequest {
				c := bytes.Clone(w)
				c[10] ^= 1
				return provider.ImportKeyRequest{Spec: sp, WrappingKeyID: wk.ID, Wrapped: c}
			}},
			tc{"corrupt KWP part", func() provider.ImportKeyRequest {
				c := bytes.Clone(w)
				c[len(c)-1] ^= 1
				return provider.ImportKeyRequest{Spec: sp, WrappingKeyID: wk.ID, Wrapped: c}
			}},
			tc{"truncated", func() provider.ImportKeyRequest {
				return provider.ImportKeyRequest{Spec: sp, WrappingKeyID: wk.ID, Wrapped: w[:len(w)-8]}
			}},
			tc{"material shorter than the spec", func() provider.ImportKeyRequest {
				return provider.ImportKeyRequest{Spec: sp, WrappingKeyID: wk.ID, Wrapped: ws}
			}},
		)
	}
	if asym != nil {
		sp := *asym
		m := makeMaterial(t, sp)
		w, _ := alg.WrapRSAAESWith(wk.Algorithm, wpub, m.raw)
		mismatch := makeMaterial(t, sp)
		var wrongSpec alg.Spec
		if sp.Type == alg.EC && sp.Curve != "P-384" {
			wrongSpec, _ = alg.NewSpec("EC", 0, "P-384")
		} else {
			wrongSpec, _ = alg.NewSpec("EC", 0, "P-256")
		}
		cases = append(cases,
			tc{"public key of another key", func() provider.ImportKeyRequest {
				return provider.ImportKeyRequest{Spec: sp, WrappingKeyID: wk.ID, Wrapped: w, PublicKey: mismatch.spki}
			}},
			tc{"no public key", func() provider.ImportKeyRequest {
				return provider.ImportKeyRequest{Spec: sp, WrappingKeyID: wk.ID, Wrapped: w}
			}},
			tc{"spec contradicts the material", func() provider.ImportKeyRequest {
				return provider.ImportKeyRequest{Spec: wrongSpec, WrappingKeyID: wk.ID, Wrapped: w, PublicKey: m.spki}
			}},
		)
	}
	for _, c := range cases {
		t.Run("fail "+c.name, func(t *testing.T) {
			var err error
			noPanic(t, "ImportKey", func() error { _, err = s.importKey(t, im, c.req()); return err })
			if errors.Is(err, kgerr.ErrUnsupportedAlgorithm) && c.name == "spec contradicts the material" {
				return // the provider does not make keys of the other spec at all
			}
			wantErr(t, "ImportKey", err, kgerr.ErrInvalidInput)
		})
	}
}

// testExport exports an extractable imported key and opens the export with
// the suite's own RSA key; refuses material that is not extractable and
// wrapping keys that are not RSA of 2048 bits or more.
func (s *suite) testExport(t *testing.T) {
	ex, ok := s.p.(provider.Exporter)
	if !ok {
		t.Skip("the provider does not implement provider.Exporter")
	}
	im, wk, wpub := s.importer(t)
	mine, _ := rsa.GenerateKey(rand.Reader, 2048)
	mineDER, _ := x509.MarshalPKIXPublicKey(&mine.PublicKey)
	for _, sp := range s.importSpecs() {
		t.Run("ok "+specName(sp), func(t *testing.T) {
			m := makeMaterial(t, sp)
			w, _ := alg.WrapRSAAESWith(wk.Algorithm, wpub, m.raw)
			k, err := s.importKey(t, im, provider.ImportKeyRequest{Spec: sp, WrappingKeyID: wk.ID, Wrapped: w, PublicKey: m.spki, Extractable: true})
			if errors.Is(err, kgerr.ErrUnsupportedAlgorithm) {
				t.Skipf("the provider refuses to import %s keys: %v", specName(sp), err)
			}
			if err != nil {
				t.Fatal(err)
			}
			out, err := ex.ExportKey(t.Context(), provider.ExportKeyRequest{Ref: k.ref, Spec: sp, WrappingKey: mineDER})
			if errors.Is(err, kgerr.ErrUnsupportedAlgorithm) {
				t.Skipf("the provider refuses to export %s keys: %v", specName(sp), err)
			}
			if err != nil {
				t.Fatalf("ExportKey: %v", err)
			}
			got, err := alg.UnwrapRSAAES(mine, out)
			if err != nil {
				t.Fatalf("the export does not open with the suite's key: %v", err)
			}
			if !bytes.Equal(got, m.raw) {
				// PKCS#8 encodings may differ; the keys must not.
				if alg.Secret(sp.Type) || !samePrivate(got, m.pub) {
					t.Error("the exported material is not the material imported")
				}
			}
		})
	}
	if len(s.specs) == 0 {
		return
	}
	sp, ok := s.cheapSpec(false)
	if !ok {
		return
	}
	k := s.key(t, sp) // created, not extractable
	t.Run("fail not extractable", func(t *testing.T) {
		_, err := ex.ExportKey(t.Context(), provider.ExportKeyRequest{Ref: k.ref, Spec: sp, WrappingKey: mineDER})
		wantErr(t, "ExportKey of a key not made extractable", err, kgerr.New(kgerr.KindKeyNotExtractable, ""))
	})
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallDER, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	ec, _ := ecdsa.GenerateKey(alg.Curve("P-256"), rand.Reader)
	ecDER, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	for name, der := range map[string][]byte{"RSA-1024": smallDER, "EC": ecDER, "garbage": []byte("garbage")} {
		t.Run("fail wrapping key "+name, func(t *testing.T) {
			_, err := ex.ExportKey(t.Context(), provider.ExportKeyRequest{Ref: k.ref, Spec: sp, WrappingKey: der})
			wantErr(t, "ExportKey under "+name, err, kgerr.ErrInvalidInput)
		})
	}
}

// samePrivate reports whether PKCS#8 der holds the private half of pub.
func samePrivate(der []byte, pub crypto.PublicKey) bool {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return false
	}
	type eq interface{ Equal(crypto.PublicKey) bool }
	p, ok := k.(crypto.Signer).Public().(eq)
	return ok && p.Equal(pub)
}
