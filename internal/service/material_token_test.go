package service

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/pem"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/duration"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider/pkcs11"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// Import into a SoftHSM2 token, with openssl on the other side (it makes
// the keys, wraps them with the scheme the token's wrapping key names,
// checks signatures, wraps and MACs with the original material) and
// pkcs11-tool reading what landed on the token.

func openHSM(t *testing.T) *pkcs11.Provider {
	t.Helper()
	cfg := tokens[0].open(t)
	// The wrapping key's RSA-4096 generation and RSA key generation on a
	// loaded 2-core machine can pass the default 5 s.
	cfg.OperationTimeout = duration.Duration(time.Minute)
	p, err := pkcs11.Open(context.Background(), "hsm", pkcs11.TypePKCS11, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tokenObjects is pkcs11-tool's listing of the token's objects and their
// number.
func tokenObjects(t *testing.T) (string, int) {
	t.Helper()
	out, err := testbed.ProcessSoftHSM(t).Tool("--list-objects").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool --list-objects: %v\n%s", err, out)
	}
	return string(out), len(regexp.MustCompile(`(?m)^(Private|Public|Secret) Key Object`).FindAllString(string(out), -1))
}

// objectOf is pkcs11-tool's block of the object of class header ("Private
// Key Object") with the CKA_ID of a key's current version.
func objectOf(t *testing.T, f *fixture, k *Key, header string) string {
	t.Helper()
	rec, err := f.store.GetKey(context.Background(), k.ID)
	if err != nil {
		t.Fatal(err)
	}
	u, err := pkcs11.ParseURI(rec.Versions[len(rec.Versions)-1].ProviderRef)
	if err != nil {
		t.Fatal(err)
	}
	text, _ := tokenObjects(t)
	id := hex.EncodeToString(u.ID)
	for _, b := range regexp.MustCompile(`\n(?:Private|Public|Secret) Key Object`).Split("\n"+text, -1) {
		if strings.Contains(text, header+b) && strings.Contains(strings.ReplaceAll(b, " ", ""), "ID:"+id) {
			return header + b
		}
	}
	t.Fatalf("pkcs11-tool shows no %s with id %s:\n%s", header, id, text)
	return ""
}

// accessOf is the Access line of a pkcs11-tool block.
func accessOf(block string) string {
	for _, l := range strings.Split(block, "\n") {
		if s := strings.TrimSpace(l); strings.HasPrefix(s, "Access:") {
			return s
		}
	}
	return ""
}

// extractable reports whether pkcs11-tool's access line says the object is
// extractable ("never extractable" is not).
func extractable(access string) bool {
	return strings.Contains(strings.ReplaceAll(access, "never extractable", ""), "extractable")
}

func TestImportOpenSSLMaterialOnSoftHSM(t *testing.T) {
	testbed.Require(t, "openssl", "pkcs11-tool")
	f := newFixture(t, withProvider(openHSM(t)))
	ctx := f.admin()
	wk, err := f.svc.WrappingKey(ctx, "hsm")
	if err != nil {
		t.Fatalf("WrappingKey: %v", err)
	}
	// SoftHSM2 2.6's RSA-OAEP unwraps with SHA-1 only: the wrapping key
	// says so, and clients wrap with what it says.
	if wk.Algorithm != alg.RSAAESKeyWrapSHA1 {
		t.Fatalf("the token's wrapping key takes %s; SoftHSM2 2.6 can only do %s", wk.Algorithm, alg.RSAAESKeyWrapSHA1)
	}
	md := "sha1"
	wpem := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: wk.PublicKey}))
	t.Run("the wrapping key is kept: a new provider instance finds it", func(t *testing.T) {
		p2 := openHSM(t)
		defer p2.Close()
		again, err := p2.WrappingKey(context.Background())
		if err != nil || again.ID != wk.ID || !bytes.Equal(again.PublicKey, wk.PublicKey) {
			t.Fatalf("after a restart the wrapping key is %q (%v), want %q", again.ID, err, wk.ID)
		}
		text, _ := tokenObjects(t)
		if n := strings.Count(text, "label:      keygrid-import-wrapping-key"); n != 2 {
			t.Errorf("the token holds %d objects of the wrapping key, want 2 (one pair):\n%s", n, text)
		}
	})
	data := []byte("signed on the token after import")
	for _, c := range []struct {
		name, openssl string
		bits          int
		curve, alg    string
		spec          KeySpec
	}{
		{"RSA-2048", "RSA", 2048, "", "RS256", KeySpec{KeyType: "RSA", KeySize: 2048, Algorithm: "RS256"}},
		{"EC P-256", "EC", 0, "P-256", "ES256", KeySpec{KeyType: "EC", Curve: "P-256"}},
		{"EC P-384", "EC", 0, "P-384", "ES384", KeySpec{KeyType: "EC", Curve: "P-384"}},
	} {
		t.Run("ok "+c.name+" signatures verify with openssl", func(t *testing.T) {
			pkcs8, pubPEM := testbed.OpenSSLGenKey(t, c.openssl, c.bits, c.curve)
			wrapped := testbed.OpenSSLWrapRSAAESWith(t, md, wpem, pkcs8)
			name := "hsm-imported-" + strings.ReplaceAll(strings.ToLower(c.name), " ", "-")
			k, err := f.svc.ImportKey(ctx, ImportKeyRequest{CreateKeyRequest: CreateKeyRequest{Provider: "hsm", Name: name, Spec: c.spec},
				WrappingKeyID: wk.ID, WrappingAlgorithm: wk.Algorithm, WrappedKey: wrapped, PublicKey: derOfPEM(t, pubPEM)})
			if err != nil {
				t.Fatalf("ImportKey: %v", err)
			}
			if k.Origin != "imported" {
				t.Errorf("origin %q, want imported", k.Origin)
			}
			sig, err := f.svc.Sign(ctx, SignRequest{Key: name, Algorithm: c.alg, Data: data})
			if err != nil {
				t.Fatal(err)
			}
			testbed.OpenSSLVerify(t, pubPEM, c.alg, data, sig.Signature)
			pub, err := f.svc.PublicKey(ctx, name, 0)
			if err != nil || !bytes.Equal(pub.DER, derOfPEM(t, pubPEM)) {
				t.Errorf("the token's public key differs from openssl's (%v)", err)
			}
			access := accessOf(objectOf(t, f, k, "Private Key Object"))
			if !strings.Contains(access, "sensitive") || extractable(access) {
				t.Errorf("pkcs11-tool: imported private key %q; want sensitive, not extractable", access)
			}
			f.noSecrets(pkcs8)
		})
	}
	t.Run("ok AES-256 checked by openssl unwrapping a gateway wrap", func(t *testing.T) {
		raw := bytes.Repeat([]byte{0x3c, 0xa5}, 16)
		k, err := f.svc.ImportKey(ctx, ImportKeyRequest{CreateKeyRequest: CreateKeyRequest{Provider: "hsm", Name: "hsm-imported-kek", Spec: specKEK},
			WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAESWith(t, md, wpem, raw)})
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
		access := accessOf(objectOf(t, f, k, "Secret Key Object"))
		if !strings.Contains(access, "sensitive") || extractable(access) {
			t.Errorf("pkcs11-tool: imported secret key %q; want sensitive, not extractable", access)
		}
		f.noSecrets(raw)
	})
	for _, c := range []struct {
		size   int
		digest string
	}{{256, "sha256"}, {384, "sha384"}, {512, "sha512"}} {
		t.Run("ok HMAC-"+strconv.Itoa(c.size)+" checked against openssl dgst -hmac", func(t *testing.T) {
			raw := bytes.Repeat([]byte{0x17, 0x71}, c.size/16)
			name := "hsm-imported-hmac-" + strconv.Itoa(c.size)
			_, err := f.svc.ImportKey(ctx, ImportKeyRequest{CreateKeyRequest: CreateKeyRequest{Provider: "hsm", Name: name, Spec: KeySpec{KeyType: "HMAC", KeySize: c.size}},
				WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAESWith(t, md, wpem, raw)})
			if err != nil {
				t.Fatalf("ImportKey: %v", err)
			}
			m, err := f.svc.MAC(ctx, MACRequest{Key: name, Data: data})
			if err != nil {
				t.Fatal(err)
			}
			if want := testbed.OpenSSLHMAC(t, c.digest, raw, data); !bytes.Equal(m.MAC, want) {
				t.Errorf("MAC %x, openssl says %x", m.MAC, want)
			}
			f.noSecrets(raw)
		})
	}
	t.Run("ok import-version: the new material signs, the old verifies", func(t *testing.T) {
		old := bytes.Repeat([]byte{0x42}, 32)
		k, err := f.svc.ImportKey(ctx, ImportKeyRequest{CreateKeyRequest: CreateKeyRequest{Provider: "hsm", Name: "hsm-versioned-hmac", Spec: KeySpec{KeyType: "HMAC", KeySize: 256}},
			WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAESWith(t, md, wpem, old)})
		if err != nil {
			t.Fatal(err)
		}
		oldMAC, err := f.svc.MAC(ctx, MACRequest{Key: k.ID, Data: data})
		if err != nil {
			t.Fatal(err)
		}
		next := bytes.Repeat([]byte{0x24}, 32)
		k2, err := f.svc.ImportKeyVersion(ctx, ImportVersionRequest{Key: k.ID, WrappedMaterial: WrappedMaterial{
			WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAESWith(t, md, wpem, next)}})
		if err != nil {
			t.Fatalf("ImportKeyVersion: %v", err)
		}
		if k2.Version != 2 {
			t.Fatalf("current version %d after import-version, want 2", k2.Version)
		}
		m, err := f.svc.MAC(ctx, MACRequest{Key: k.ID, Data: data})
		if err != nil || m.KeyVersion != 2 || !bytes.Equal(m.MAC, testbed.OpenSSLHMAC(t, "sha256", next, data)) {
			t.Fatalf("MAC after import-version: v%d, %v; want version 2 with the new material", m.KeyVersion, err)
		}
		v, err := f.svc.VerifyMAC(ctx, VerifyMACRequest{Key: k.ID, Data: data, MAC: oldMAC.MAC})
		if err != nil || !v.Valid || v.KeyVersion != 1 {
			t.Fatalf("the old version's MAC: %+v, %v; want valid with version 1", v, err)
		}
	})
	t.Run("ok export of an extractable secret key, opened by openssl", func(t *testing.T) {
		raw := bytes.Repeat([]byte{0x99, 0x66}, 16)
		spec := specKEK
		spec.Extractable = true
		k, err := f.svc.ImportKey(ctx, ImportKeyRequest{CreateKeyRequest: CreateKeyRequest{Provider: "hsm", Name: "hsm-exportable", Spec: spec},
			WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAESWith(t, md, wpem, raw)})
		if err != nil {
			t.Fatal(err)
		}
		if access := accessOf(objectOf(t, f, k, "Secret Key Object")); !extractable(access) {
			t.Errorf("pkcs11-tool: a key imported extractable shows %q", access)
		}
		rsaKey, rsaPub := testbed.OpenSSLGenKey(t, "RSA", 2048, "")
		privPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsaKey}))
		out, err := f.svc.ExportKey(ctx, ExportKeyRequest{Key: k.ID, PublicKey: derOfPEM(t, rsaPub)})
		if err != nil {
			t.Fatalf("ExportKey: %v", err)
		}
		if got := testbed.OpenSSLUnwrapRSAAES(t, privPEM, 256, out.WrappedKey); !bytes.Equal(got, raw) {
			t.Errorf("openssl opens the export to %x, want %x", got, raw)
		}
	})
	t.Run("fail export of a private key on a token whose AES-KWP pads", func(t *testing.T) {
		pkcs8, pubPEM := testbed.OpenSSLGenKey(t, "EC", 0, "P-256")
		k, err := f.svc.ImportKey(ctx, ImportKeyRequest{CreateKeyRequest: CreateKeyRequest{Provider: "hsm", Name: "hsm-exportable-ec", Spec: KeySpec{KeyType: "EC", Curve: "P-256", Extractable: true}},
			WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAESWith(t, md, wpem, pkcs8), PublicKey: derOfPEM(t, pubPEM)})
		if err != nil {
			t.Fatal(err)
		}
		_, rsaPub := testbed.OpenSSLGenKey(t, "RSA", 2048, "")
		_, err = f.svc.ExportKey(ctx, ExportKeyRequest{Key: k.ID, PublicKey: derOfPEM(t, rsaPub)})
		wantErr(t, err, kgerr.ErrUnsupportedAlgorithm)
	})
}

// Every bad import into the token is INVALID_INPUT and leaves no record
// and no object on the token (counted by pkcs11-tool).
func TestImportRefusedOnSoftHSM(t *testing.T) {
	testbed.Require(t, "openssl", "pkcs11-tool")
	f := newFixture(t, withProvider(openHSM(t)))
	ctx := f.admin()
	wk, err := f.svc.WrappingKey(ctx, "hsm")
	if err != nil {
		t.Fatal(err)
	}
	wpem := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: wk.PublicKey}))
	wrap := func(m []byte) []byte { return testbed.OpenSSLWrapRSAAESWith(t, "sha1", wpem, m) }
	ec, ecPub := testbed.OpenSSLGenKey(t, "EC", 0, "P-256")
	_, otherPub := testbed.OpenSSLGenKey(t, "EC", 0, "P-256")
	rsaKey, rsaPub := testbed.OpenSSLGenKey(t, "RSA", 2048, "")
	_, otherWrapping := testbed.OpenSSLGenKey(t, "RSA", 4096, "")
	wEC, wRSA := wrap(ec), wrap(rsaKey)
	aes := bytes.Repeat([]byte{1}, 32)
	wAES := wrap(aes)
	corrupt := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 1; return c }
	p256, p384 := KeySpec{KeyType: "EC", Curve: "P-256"}, KeySpec{KeyType: "EC", Curve: "P-384"}
	hmac256 := KeySpec{KeyType: "HMAC", KeySize: 256}
	cases := []struct {
		name string
		req  ImportKeyRequest
	}{
		{"wrong wrapping key id", ImportKeyRequest{WrappingKeyID: "00ff", WrappedKey: wAES, CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}},
		{"wrapped for another wrapping key", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAESWith(t, "sha1", otherWrapping, aes), CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}},
		{"wrapped with SHA-256 for a SHA-1 token", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAESWith(t, "sha256", wpem, aes), CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}},
		{"names a wrapping algorithm the token does not take", ImportKeyRequest{WrappingKeyID: wk.ID, WrappingAlgorithm: alg.RSAAESKeyWrapSHA256, WrappedKey: wAES, CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}},
		{"corrupt RSA part", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: corrupt(wAES, 3), CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}},
		{"corrupt KWP part", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: corrupt(wAES, len(wAES)-2), CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}},
		{"corrupt KWP part of a private key", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: corrupt(wEC, len(wEC)-2), PublicKey: derOfPEM(t, ecPub), CreateKeyRequest: CreateKeyRequest{Spec: p256}}},
		{"truncated", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wAES[:len(wAES)-8], CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}},
		{"AES-256 material as AES-128", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wAES, CreateKeyRequest: CreateKeyRequest{Spec: KeySpec{KeyType: "AES", KeySize: 128}}}},
		{"28 bytes as HMAC-256 (padded by the token's KWP)", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wrap(bytes.Repeat([]byte{7}, 28)), CreateKeyRequest: CreateKeyRequest{Spec: hmac256}}},
		{"48 bytes as HMAC-256", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wrap(bytes.Repeat([]byte{7}, 48)), CreateKeyRequest: CreateKeyRequest{Spec: hmac256}}},
		{"public key on a secret key", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wAES, PublicKey: derOfPEM(t, ecPub), CreateKeyRequest: CreateKeyRequest{Spec: specAES256}}},
		{"public key of another key", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wEC, PublicKey: derOfPEM(t, otherPub), CreateKeyRequest: CreateKeyRequest{Spec: p256}}},
		{"RSA-2048 material with an RSA-4096 public key", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wRSA, PublicKey: derOfPEM(t, otherWrapping), CreateKeyRequest: CreateKeyRequest{Spec: KeySpec{KeyType: "RSA", KeySize: 4096}}}},
		{"no public key", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wEC, CreateKeyRequest: CreateKeyRequest{Spec: p256}}},
		{"P-256 material as P-384 with its public key", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wEC, PublicKey: derOfPEM(t, ecPub), CreateKeyRequest: CreateKeyRequest{Spec: p384}}},
		{"P-256 material and public key of a P-384", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wEC, PublicKey: derOfPEM(t, testbedP384(t)), CreateKeyRequest: CreateKeyRequest{Spec: p384}}},
		{"EC material as RSA", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wEC, PublicKey: derOfPEM(t, rsaPub), CreateKeyRequest: CreateKeyRequest{Spec: KeySpec{KeyType: "RSA", KeySize: 2048}}}},
		{"secret material as EC", ImportKeyRequest{WrappingKeyID: wk.ID, WrappedKey: wAES, PublicKey: derOfPEM(t, ecPub), CreateKeyRequest: CreateKeyRequest{Spec: p256}}},
	}
	_, before := tokenObjects(t)
	records := len(f.storedKeys())
	for _, c := range cases {
		t.Run("fail "+c.name, func(t *testing.T) {
			c.req.Name, c.req.Provider = "hsm-refused", "hsm"
			k, err := f.svc.ImportKey(ctx, c.req)
			if k != nil || !errorsIs(err, kgerr.ErrInvalidInput) {
				t.Fatalf("ImportKey = %+v, %v; want INVALID_INPUT", k, err)
			}
			if n := len(f.storedKeys()); n != records {
				t.Errorf("%d records after a refused import, want %d", n, records)
			}
			if text, n := tokenObjects(t); n != before {
				t.Errorf("%d objects on the token after a refused import, want %d:\n%s", n, before, text)
			}
		})
	}
}

// testbedP384 is the public key PEM of a fresh P-384 key.
func testbedP384(t *testing.T) string {
	_, pub := testbed.OpenSSLGenKey(t, "EC", 0, "P-384")
	return pub
}

// A key's origin is stored: generated for a create, imported for an import,
// as read back from the store; an imported version does not change it.
func TestOriginIsStored(t *testing.T) {
	f := newFixture(t)
	ctx := f.admin()
	wk, wpem := f.wrappingPEM()
	made, err := f.svc.CreateKey(ctx, CreateKeyRequest{Name: "origin-made", Spec: specAES256})
	if err != nil {
		t.Fatal(err)
	}
	brought, err := f.svc.ImportKey(ctx, ImportKeyRequest{CreateKeyRequest: CreateKeyRequest{Name: "origin-brought", Spec: specAES256},
		WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAES(t, wpem, bytes.Repeat([]byte{3}, 32))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.ImportKeyVersion(ctx, ImportVersionRequest{Key: made.ID, WrappedMaterial: WrappedMaterial{
		WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAES(t, wpem, bytes.Repeat([]byte{4}, 32))}}); err != nil {
		t.Fatalf("ImportKeyVersion: %v", err)
	}
	for id, want := range map[string]string{made.ID: store.OriginGenerated, brought.ID: store.OriginImported} {
		rec, err := f.store.GetKey(context.Background(), id)
		if err != nil || rec.Origin != want {
			t.Errorf("stored origin of %s: %q (%v), want %q", id, rec.Origin, err, want)
		}
		k, err := f.svc.GetKey(ctx, id)
		if err != nil || k.Origin != want {
			t.Errorf("origin of %s: %q (%v), want %q", id, k.Origin, err, want)
		}
	}
}

// An import-version is refused like an import (bad material: INVALID_INPUT,
// nothing added), and a key that is not active takes no version.
func TestImportVersionRefused(t *testing.T) {
	f := newFixture(t)
	ctx := f.admin()
	wk, wpem := f.wrappingPEM()
	k, err := f.svc.CreateKey(ctx, CreateKeyRequest{Name: "iv-target", Spec: specAES256})
	if err != nil {
		t.Fatal(err)
	}
	short := testbed.OpenSSLWrapRSAAES(t, wpem, bytes.Repeat([]byte{5}, 16))
	ec, ecPub := testbed.OpenSSLGenKey(t, "EC", 0, "P-256")
	for name, m := range map[string]WrappedMaterial{
		"material of another size":   {WrappingKeyID: wk.ID, WrappedKey: short},
		"material of another type":   {WrappingKeyID: wk.ID, WrappedKey: testbed.OpenSSLWrapRSAAES(t, wpem, ec)},
		"public key on a secret key": {WrappingKeyID: wk.ID, WrappedKey: short, PublicKey: derOfPEM(t, ecPub)},
		"wrong wrapping key id":      {WrappingKeyID: "00", WrappedKey: short},
		"unknown wrapping algorithm": {WrappingKeyID: wk.ID, WrappingAlgorithm: "RSA_AES_KEY_WRAP_MD5", WrappedKey: short},
	} {
		t.Run("fail "+name, func(t *testing.T) {
			_, err := f.svc.ImportKeyVersion(ctx, ImportVersionRequest{Key: k.ID, WrappedMaterial: m})
			wantErr(t, err, kgerr.ErrInvalidInput)
			rec, _ := f.store.GetKey(context.Background(), k.ID)
			if len(rec.Versions) != 1 {
				t.Errorf("%d versions after a refused import-version, want 1", len(rec.Versions))
			}
		})
	}
	t.Run("fail inactive key", func(t *testing.T) {
		if _, err := f.svc.DeactivateKey(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		_, err := f.svc.ImportKeyVersion(ctx, ImportVersionRequest{Key: k.ID, WrappedMaterial: WrappedMaterial{WrappingKeyID: wk.ID,
			WrappedKey: testbed.OpenSSLWrapRSAAES(t, wpem, bytes.Repeat([]byte{5}, 32))}})
		wantErr(t, err, kgerr.ErrKeyInactive)
	})
	t.Run("fail operator may not import a version", func(t *testing.T) {
		_, err := f.svc.ImportKeyVersion(as(operatorP), ImportVersionRequest{Key: k.ID, WrappedMaterial: WrappedMaterial{WrappingKeyID: wk.ID, WrappedKey: short}})
		wantErr(t, err, kgerr.ErrAuthorizationFailed)
	})
}
