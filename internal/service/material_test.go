package service

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"strconv"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// Import, export, data keys, rewrap, HMAC and random at the service level,
// on the software provider, with openssl on the other side: it makes the
// keys, wraps them for import, checks signatures, MACs and wraps with the
// original material, and opens exports.

// wrappingPEM fetches the default provider's wrapping key as PEM.
func (f *fixture) wrappingPEM() (*WrappingKeyInfo, string) {
	f.t.Helper()
	wk, err := f.svc.WrappingKey(f.admin(), "")
	if err != nil {
		f.t.Fatalf("WrappingKey: %v", err)
	}
	return wk, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: wk.PublicKey}))
}

func derOfPEM(t *testing.T, s string) []byte {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatal("not PEM")
	}
	return b.Bytes
}

func TestImportOpenSSLMaterial(t *testing.T) {
	f := newFixture(t)
	wk, wpem := f.wrappingPEM()
	if wk.Algorithm != alg.RSAAESKeyWrapSHA256 {
		t.Errorf("algorithm %q", wk.Algorithm)
	}
	if again, _ := f.wrappingPEM(); again.ID != wk.ID {
		t.Errorf("the wrapping key changed between calls: %s, %s", wk.ID, again.ID)
	}
	ctx := f.admin()
	data := []byte("signed after import")
	for _, c := range []struct {
		name, openssl string
		bits          int
		curve, alg    string
		spec          KeySpec
	}{
		{"RSA-2048", "RSA", 2048, "", "PS256", KeySpec{KeyType: "RSA", KeySize: 2048}},
		{"EC P-256", "EC", 0, "P-256", "ES256", KeySpec{KeyType: "EC", Curve: "P-256"}},
		{"EC P-384", "EC", 0, "P-384", "ES384", KeySpec{KeyType: "EC", Curve: "P-384"}},
		{"Ed25519", "ED25519", 0, "", "EdDSA", KeySpec{KeyType: "Ed25519"}},
	} {
		t.Run("ok "+c.name, func(t *testing.T) {
			pkcs8, pubPEM := testbed.OpenSSLGenKey(t, c.openssl, c.bits, c.curve)
			wrapped := testbed.OpenSSLWrapRSAAES(t, wpem, pkcs8)
			name := "imported-" + strings.ReplaceAll(strings.ToLower(c.name), " ", "-")
			k, err := f.svc.ImportKey(ctx, ImportKeyRequest{CreateKeyRequest: CreateKeyRequest{Name: name, Spec: c.spec},
				WrappingKeyID: wk.ID, WrappedKey: wrapped, PublicKey: derOfPEM(t, pubPEM)})
			if err != nil {
				t.Fatalf("ImportKey: %v", err)
			}
			if k.State != "active" || k.Extractable {
				t.Errorf("imported key is %s, extractable %v; want active, not extractable", k.State, k.Extractable)
			}
			if r := f.last(); r.Operation != "import" || r.Outcome != audit.OutcomeSuccess || r.KeyID != k.ID {
				t.Errorf("audit record %+v", r)
			}
			sig, err := f.svc.Sign(ctx, SignRequest{Key: name, Algorithm: c.alg, Data: data})
			if err != nil {
				t.Fatal(err)
			}
			testbed.OpenSSLVerify(t, pubPEM, c.alg, data, sig.Signature)
			f.noSecrets(pkcs8, wrapped)
		})
	}
	t.Run("ok AES-256 checked by openssl unwrapping a gateway wrap", func(t *testing.T) {
		raw := bytes.Repeat([]byte{0x5a, 0xc3}, 16)
		k, err := f.svc.ImportKey(ctx, ImportKeyRequest{CreateKeyRequest: CreateKeyRequest{Name: "imported-kek", Spec: specKEK},
			WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAES(t, wpem, raw)})
		if err != nil {
			t.Fatalf("ImportKey: %v", err)
		}
		secret := []byte("twenty-four byte secret!")
		w, err := f.svc.Wrap(ctx, WrapRequest{Key: k.ID, KeyMaterial: secret})
		if err != nil {
			t.Fatal(err)
		}
		if got := testbed.OpenSSLUnwrapKWP(t, raw, w.WrappedKey); !bytes.Equal(got, secret) {
			t.Errorf("openssl unwraps %x, want %x", got, secret)
		}
		f.noSecrets(raw)
	})
	t.Run("ok HMAC-256 checked against openssl dgst -hmac", func(t *testing.T) {
		raw := bytes.Repeat([]byte{0x17, 0x71}, 16)
		_, err := f.svc.ImportKey(ctx, ImportKeyRequest{CreateKeyRequest: CreateKeyRequest{Name: "imported-hmac", Spec: KeySpec{KeyType: "HMAC", KeySize: 256}},
			WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAES(t, wpem, raw)})
		if err != nil {
			t.Fatalf("ImportKey: %v", err)
		}
		m, err := f.svc.MAC(ctx, MACRequest{Key: "imported-hmac", Data: data})
		if err != nil {
			t.Fatal(err)
		}
		if want := testbed.OpenSSLHMAC(t, "sha256", raw, data); !bytes.Equal(m.MAC, want) || m.Algorithm != "HS256" {
			t.Errorf("MAC %x (%s), openssl says %x", m.MAC, m.Algorithm, want)
		}
		f.noSecrets(raw)
	})
}

// Every bad import is INVALID_INPUT (or the right refusal) and leaves no
// record, no key file, and the name free.
func TestImportRefused(t *testing.T) {
	f := newFixture(t)
	wk, wpem := f.wrappingPEM()
	ctx := f.admin()
	ec, ecPub := testbed.OpenSSLGenKey(t, "EC", 0, "P-256")
	_, otherPub := testbed.OpenSSLGenKey(t, "EC", 0, "P-256")
	wEC := testbed.OpenSSLWrapRSAAES(t, wpem, ec)
	aes := bytes.Repeat([]byte{1}, 32)
	wAES := testbed.OpenSSLWrapRSAAES(t, wpem, aes)
	corrupt := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 1; return c }
	p256 := KeySpec{KeyType: "EC", Curve: "P-256"}
	cases := []struct {
		name string
		req  ImportKeyRequest
		want error
	}{
		{"wrong wrapping key id", ImportKeyRequest{WrappingKeyID: "00ff", WrappedKey: wAES, CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}, kgerr.ErrInvalidInput},
		{"no wrapping key id", ImportKeyRequest{WrappedKey: wAES, CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}, kgerr.ErrInvalidInput},
		{"no wrapped key", ImportKeyRequest{WrappingKeyID: wk.ID, CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}, kgerr.ErrInvalidInput},
		{"corrupt RSA part", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: corrupt(wAES, 3), CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}, kgerr.ErrInvalidInput},
		{"corrupt KWP part", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: corrupt(wAES, len(wAES)-2), CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}, kgerr.ErrInvalidInput},
		{"truncated", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wAES[:len(wAES)-8], CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}, kgerr.ErrInvalidInput},
		{"AES-256 material as AES-128", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wAES, CreateKeyRequest: CreateKeyRequest{Spec: KeySpec{KeyType: "AES", KeySize: 128}}}, kgerr.ErrInvalidInput},
		{"public key on a secret key", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wAES, PublicKey: derOfPEM(t, ecPub), CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}, kgerr.ErrInvalidInput},
		{"public key of another key", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wEC, PublicKey: derOfPEM(t, otherPub), CreateKeyRequest: CreateKeyRequest{Spec: p256}}, kgerr.ErrInvalidInput},
		{"no public key", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wEC, CreateKeyRequest: CreateKeyRequest{Spec: p256}}, kgerr.ErrInvalidInput},
		{"P-256 material as P-384", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wEC, PublicKey: derOfPEM(t, ecPub), CreateKeyRequest: CreateKeyRequest{Spec: KeySpec{KeyType: "EC", Curve: "P-384"}}}, kgerr.ErrInvalidInput},
		{"EC material as RSA", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wEC, PublicKey: derOfPEM(t, ecPub), CreateKeyRequest: CreateKeyRequest{Spec: KeySpec{KeyType: "RSA", KeySize: 2048}}}, kgerr.ErrInvalidInput},
		{"secret material as EC", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wAES, PublicKey: derOfPEM(t, ecPub), CreateKeyRequest: CreateKeyRequest{Spec: p256}}, kgerr.ErrInvalidInput},
	}
	files := f.keyFiles()
	for _, c := range cases {
		t.Run("fail "+c.name, func(t *testing.T) {
			c.req.Name = "refused"
			k, err := f.svc.ImportKey(ctx, c.req)
			if k != nil || !errorsIs(err, c.want) {
				t.Fatalf("ImportKey = %+v, %v; want %v", k, err, c.want)
			}
			if n := len(f.storedKeys()); n != 0 {
				t.Errorf("%d records after a refused import", n)
			}
			if n := f.keyFiles(); n != files {
				t.Errorf("%d key files after a refused import, want %d", n, files)
			}
			if r := f.last(); r.Operation != "import" || r.Outcome == audit.OutcomeSuccess {
				t.Errorf("audit record %+v", r)
			}
		})
	}
	t.Run("fail operator may not import", func(t *testing.T) {
		_, err := f.svc.ImportKey(as(operatorP), ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wAES, CreateKeyRequest: CreateKeyRequest{Name: "x", Spec: specAES256}})
		wantErr(t, err, kgerr.ErrAuthorizationFailed)
		_, err = f.svc.WrappingKey(as(operatorP), "")
		wantErr(t, err, kgerr.ErrAuthorizationFailed)
	})
	f.noSecrets(aes, ec)
}

// An extractable imported key exported under openssl's RSA key and opened
// by openssl is the same key; keys not extractable and callers not allowed
// are refused.
func TestExport(t *testing.T) {
	f := newFixture(t)
	wk, wpem := f.wrappingPEM()
	ctx := f.admin()
	ec, ecPub := testbed.OpenSSLGenKey(t, "EC", 0, "P-256")
	_, err := f.svc.ImportKey(ctx, ImportKeyRequest{CreateKeyRequest: CreateKeyRequest{Name: "exportable", Spec: KeySpec{KeyType: "EC", Curve: "P-256", Extractable: true}},
		WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAES(t, wpem, ec), PublicKey: derOfPEM(t, ecPub)})
	if err != nil {
		t.Fatal(err)
	}
	recv, recvPub := testbed.OpenSSLGenKey(t, "RSA", 2048, "")
	recvPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: recv}))
	t.Run("ok openssl opens the export", func(t *testing.T) {
		r, err := f.svc.ExportKey(ctx, ExportKeyRequest{Key: "exportable", PublicKey: derOfPEM(t, recvPub)})
		if err != nil {
			t.Fatalf("ExportKey: %v", err)
		}
		if r.Algorithm != alg.RSAAESKeyWrapSHA256 || r.KeyVersion != 1 {
			t.Errorf("export %s v%d", r.Algorithm, r.KeyVersion)
		}
		got := testbed.OpenSSLUnwrapRSAAES(t, recvPEM, 256, r.WrappedKey)
		k, err := x509.ParsePKCS8PrivateKey(got)
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := x509.MarshalPKIXPublicKey(k.(crypto.Signer).Public())
		if !bytes.Equal(pub, derOfPEM(t, ecPub)) {
			t.Error("the exported key's public key is not the imported one")
		}
		if rec := f.last(); rec.Operation != "export" || rec.Outcome != audit.OutcomeSuccess {
			t.Errorf("audit record %+v", rec)
		}
		f.noSecrets(ec, got)
	})
	created := f.create("made-here", KeySpec{KeyType: "EC", KeySize: 256})
	t.Run("fail not extractable", func(t *testing.T) {
		_, err := f.svc.ExportKey(ctx, ExportKeyRequest{Key: created.ID, PublicKey: derOfPEM(t, recvPub)})
		wantErr(t, err, kgerr.New(kgerr.KindKeyNotExtractable, ""))
	})
	t.Run("fail operator may not export", func(t *testing.T) {
		_, err := f.svc.ExportKey(as(operatorP), ExportKeyRequest{Key: "exportable", PublicKey: derOfPEM(t, recvPub)})
		wantErr(t, err, kgerr.ErrAuthorizationFailed)
	})
	t.Run("fail wrapping key not RSA", func(t *testing.T) {
		_, err := f.svc.ExportKey(ctx, ExportKeyRequest{Key: "exportable", PublicKey: derOfPEM(t, ecPub)})
		wantErr(t, err, kgerr.ErrInvalidInput)
	})
}

func TestDataKeyAndRewrap(t *testing.T) {
	f := newFixture(t)
	ctx := f.admin()
	var tf testFormat
	f.create("dek-kek", specAES256)
	dk, err := f.svc.GenerateDataKey(ctx, DataKeyRequest{Key: "dek-kek", KeySize: 256, IncludePlaintext: true, AAD: []byte("ctx"), Format: tf})
	if err != nil {
		t.Fatal(err)
	}
	if len(dk.Plaintext) != 32 || dk.KeyVersion != 1 {
		t.Fatalf("data key of %d bytes under v%d", len(dk.Plaintext), dk.KeyVersion)
	}
	env := tf.seal(&dk.EncryptResult)
	d, err := f.svc.Decrypt(ctx, DecryptRequest{Key: "dek-kek", Ciphertext: env, AAD: []byte("ctx"), Format: tf})
	if err != nil || !bytes.Equal(d.Plaintext, dk.Plaintext) {
		t.Fatalf("the data key's ciphertext decrypts to %x (%v)", d, err)
	}
	if r := f.last(); r.Operation != "decrypt" {
		t.Errorf("audit %+v", r)
	}
	noPT, err := f.svc.GenerateDataKey(ctx, DataKeyRequest{Key: "dek-kek", KeySize: 128, Format: tf})
	if err != nil || noPT.Plaintext != nil {
		t.Fatalf("include_plaintext false: %+v, %v", noPT, err)
	}
	_, err = f.svc.GenerateDataKey(ctx, DataKeyRequest{Key: "dek-kek", KeySize: 192, Format: tf})
	wantErr(t, err, kgerr.ErrInvalidInput)

	if _, err := f.svc.RotateKey(ctx, "dek-kek"); err != nil {
		t.Fatal(err)
	}
	rw, err := f.svc.Rewrap(ctx, RewrapRequest{Key: "dek-kek", Ciphertext: env, AAD: []byte("ctx"), Format: tf})
	if err != nil {
		t.Fatal(err)
	}
	if rw.KeyVersion != 2 {
		t.Errorf("rewrapped under v%d, want 2", rw.KeyVersion)
	}
	if r := f.last(); r.Operation != "rewrap" || r.Outcome != audit.OutcomeSuccess {
		t.Errorf("audit %+v", r)
	}
	d2, err := f.svc.Decrypt(ctx, DecryptRequest{Key: "dek-kek", Ciphertext: tf.seal(rw), AAD: []byte("ctx"), Format: tf})
	if err != nil || !bytes.Equal(d2.Plaintext, dk.Plaintext) {
		t.Fatalf("rewrapped ciphertext decrypts to %v (%v)", d2, err)
	}
	_, err = f.svc.Rewrap(ctx, RewrapRequest{Key: "dek-kek", Ciphertext: env, AAD: []byte("other"), Format: tf})
	wantErr(t, err, kgerr.ErrDecryptionFailed)
	f.noSecrets(dk.Plaintext)
}

func TestHMACKeys(t *testing.T) {
	f := newFixture(t)
	ctx := f.admin()
	for _, n := range []int{256, 384, 512} {
		k := f.create("mac-"+strconv.Itoa(n), KeySpec{KeyType: "HMAC", KeySize: n})
		if want := map[int]string{256: "HS256", 384: "HS384", 512: "HS512"}[n]; k.Algorithm != want {
			t.Errorf("HMAC-%d algorithm %s, want %s", n, k.Algorithm, want)
		}
		m, err := f.svc.MAC(ctx, MACRequest{Key: k.ID, Data: []byte("data")})
		if err != nil || len(m.MAC) != n/8 {
			t.Fatalf("MAC: %v, %v", m, err)
		}
		v, err := f.svc.VerifyMAC(ctx, VerifyMACRequest{Key: k.ID, Data: []byte("data"), MAC: m.MAC})
		if err != nil || !v.Valid {
			t.Fatalf("VerifyMAC of its own MAC: %+v, %v", v, err)
		}
		bad := bytes.Clone(m.MAC)
		bad[0] ^= 1
		if v, err := f.svc.VerifyMAC(ctx, VerifyMACRequest{Key: k.ID, Data: []byte("data"), MAC: bad}); err != nil || v.Valid {
			t.Errorf("VerifyMAC of a changed MAC: %+v, %v", v, err)
		}
	}
	_, err := f.svc.MAC(ctx, MACRequest{Key: "mac-256", Algorithm: "HS512", Data: []byte("x")})
	wantErr(t, err, kgerr.ErrUnsupportedAlgorithm)
	f.create("not-mac", specAES256)
	_, err = f.svc.MAC(ctx, MACRequest{Key: "not-mac", Data: []byte("x")})
	wantErr(t, err, kgerr.ErrUsageNotPermitted)
	_, err = f.svc.CreateKey(ctx, CreateKeyRequest{Name: "mac-bad", Spec: KeySpec{KeyType: "HMAC", KeySize: 128}})
	wantErr(t, err, kgerr.ErrInvalidInput)
}

func TestRandom(t *testing.T) {
	f := newFixture(t)
	a, err := f.svc.Random(as(operatorP), RandomRequest{Bytes: 1024})
	if err != nil || len(a) != 1024 {
		t.Fatalf("Random: %d bytes, %v", len(a), err)
	}
	for _, n := range []int{0, -1, 1025} {
		_, err := f.svc.Random(f.admin(), RandomRequest{Bytes: n})
		wantErr(t, err, kgerr.ErrInvalidInput)
	}
	_, err = f.svc.Random(f.admin(), RandomRequest{Bytes: 8, Provider: "nope"})
	wantErr(t, err, kgerr.ErrProviderNotFound)
	_, err = f.svc.Random(as(auditorP), RandomRequest{Bytes: 8})
	wantErr(t, err, kgerr.ErrAuthorizationFailed)
}
