package service

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// signKeys makes one key of each signing spec: rsa (2048), p256, p384,
// p521, ed.
func signKeys(f *fixture) map[string]*Key {
	return map[string]*Key{
		"rsa": f.create("rsa", specRSA), "p256": f.create("p256", specP256), "p384": f.create("p384", specP384),
		"p521": f.create("p521", specP521), "ed": f.create("ed", specEd25519),
	}
}

// independentVerify checks a signature with Go's crypto directly, not
// through the service or package alg.
func independentVerify(t *testing.T, pub crypto.PublicKey, algorithm string, data, sig []byte) {
	t.Helper()
	var h crypto.Hash
	switch algorithm[2:] {
	case "256":
		h = crypto.SHA256
	case "384":
		h = crypto.SHA384
	case "512":
		h = crypto.SHA512
	}
	var digest []byte
	if h != 0 {
		hh := h.New()
		hh.Write(data)
		digest = hh.Sum(nil)
	}
	ok := false
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if algorithm[0] == 'P' {
			ok = rsa.VerifyPSS(k, h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
		} else {
			ok = rsa.VerifyPKCS1v15(k, h, digest, sig) == nil
		}
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(k, digest, sig)
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, data, sig)
	}
	if !ok {
		t.Fatalf("%s signature does not verify with Go's crypto", algorithm)
	}
}

// TestSignVerifyEveryAlgorithm signs data and its digest with every
// signature algorithm, checks the signatures with Go's crypto, verifies
// them through the service, and tampers with them.
func TestSignVerifyEveryAlgorithm(t *testing.T) {
	f := newFixture(t)
	keys := signKeys(f)
	data := []byte("a message of some length to sign")
	cases := []struct {
		key, algorithm string
		want           string // the algorithm reported (and audited)
	}{
		{"rsa", "", "PS256"}, {"rsa", "RS256", "RS256"}, {"rsa", "RS384", "RS384"}, {"rsa", "RS512", "RS512"},
		{"rsa", "PS256", "PS256"}, {"rsa", "ps384", "PS384"}, {"rsa", "PS512", "PS512"},
		{"p256", "", "ES256"}, {"p384", "ES384", "ES384"}, {"p521", "", "ES512"}, {"ed", "", "EdDSA"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("ok %s %s", tc.key, tc.want), func(t *testing.T) {
			ctx := as(operatorP)
			k := keys[tc.key]
			pk, err := f.svc.PublicKey(ctx, k.Name, 0)
			wantErr(t, err, nil)
			res, err := f.svc.Sign(ctx, SignRequest{Key: k.Name, Algorithm: tc.algorithm, Data: data})
			wantErr(t, err, nil)
			if res.Algorithm != tc.want || res.KeyID != k.ID || res.KeyVersion != 1 {
				t.Fatalf("sign result %+v", res)
			}
			independentVerify(t, pk.Key, tc.want, data, res.Signature)
			wantRecord(t, f.last(), audit.Event{Operation: "sign", Outcome: audit.OutcomeSuccess, KeyID: k.ID, KeyName: k.Name,
				KeyVersion: 1, Provider: "software", Algorithm: tc.want, Principal: operatorP.Name})

			v, err := f.svc.Verify(ctx, VerifyRequest{Key: k.ID, Algorithm: tc.algorithm, Data: data, Signature: res.Signature})
			wantErr(t, err, nil)
			if !v.Valid || v.KeyVersion != 1 || v.KeyID != k.ID {
				t.Fatalf("verify %+v", v)
			}
			wantRecord(t, f.last(), audit.Event{Operation: "verify", Outcome: audit.OutcomeSuccess, KeyID: k.ID, KeyVersion: 1, Algorithm: tc.want})

			// A tampered signature or message is a result, not an error.
			bad := bytes.Clone(res.Signature)
			bad[len(bad)/2] ^= 0x01
			if v, err := f.svc.Verify(ctx, VerifyRequest{Key: k.ID, Algorithm: tc.algorithm, Data: data, Signature: bad}); err != nil || v.Valid || v.KeyVersion != 1 {
				t.Fatalf("tampered signature: %+v, %v", v, err)
			}
			if v, err := f.svc.Verify(ctx, VerifyRequest{Key: k.ID, Algorithm: tc.algorithm, Data: []byte("another message"), Signature: res.Signature}); err != nil || v.Valid {
				t.Fatalf("other message: %+v, %v", v, err)
			}
			if tc.want == "EdDSA" {
				// EdDSA signs the message: a digest is refused.
				_, err := f.svc.Sign(ctx, SignRequest{Key: k.Name, Digest: make([]byte, 32)})
				wantErr(t, err, kgerr.ErrInvalidInput)
				return
			}
			// A digest signs like its data, and the signature verifies
			// against the data.
			a, _ := alg.Lookup(tc.want)
			digest := alg.Digest(a, data)
			dres, err := f.svc.Sign(ctx, SignRequest{Key: k.Name, Algorithm: tc.algorithm, Digest: digest})
			wantErr(t, err, nil)
			independentVerify(t, pk.Key, tc.want, data, dres.Signature)
			if v, err := f.svc.Verify(ctx, VerifyRequest{Key: k.Name, Algorithm: tc.algorithm, Digest: digest, Signature: dres.Signature}); err != nil || !v.Valid {
				t.Fatalf("verify by digest: %+v, %v", v, err)
			}
			_, err = f.svc.Sign(ctx, SignRequest{Key: k.Name, Algorithm: tc.algorithm, Digest: digest[1:]})
			wantErr(t, err, kgerr.ErrInvalidInput)
			_, err = f.svc.Verify(ctx, VerifyRequest{Key: k.Name, Algorithm: tc.algorithm, Digest: append(digest, 0), Signature: dres.Signature})
			wantErr(t, err, kgerr.ErrInvalidInput)
		})
	}
}

// TestSignVerifyRefused checks the inputs sign and verify refuse, and the
// ECDSA signature encodings.
func TestSignVerifyRefused(t *testing.T) {
	f := newFixture(t)
	keys := signKeys(f)
	ctx := as(operatorP)
	data := []byte("data")
	digest := sha256.Sum256(data)
	sig, err := f.svc.Sign(ctx, SignRequest{Key: "p256", Data: data})
	wantErr(t, err, nil)
	cases := []struct {
		name string
		sign *SignRequest
		ver  *VerifyRequest
		want error
	}{
		{name: "fail sign both data and digest", sign: &SignRequest{Key: "p256", Data: data, Digest: digest[:]}, want: kgerr.ErrInvalidInput},
		{name: "fail sign neither data nor digest", sign: &SignRequest{Key: "p256"}, want: kgerr.ErrInvalidInput},
		{name: "fail verify both data and digest", ver: &VerifyRequest{Key: "p256", Data: data, Digest: digest[:], Signature: sig.Signature}, want: kgerr.ErrInvalidInput},
		{name: "fail verify neither", ver: &VerifyRequest{Key: "p256", Signature: sig.Signature}, want: kgerr.ErrInvalidInput},
		{name: "fail verify without signature", ver: &VerifyRequest{Key: "p256", Data: data}, want: kgerr.ErrInvalidInput},
		{name: "fail sign data too large", sign: &SignRequest{Key: "p256", Data: make([]byte, MaxDataBytes+1)}, want: kgerr.ErrPayloadTooLarge},
		{name: "fail verify data too large", ver: &VerifyRequest{Key: "p256", Data: make([]byte, MaxDataBytes+1), Signature: sig.Signature}, want: kgerr.ErrPayloadTooLarge},
		{name: "fail sign unknown format", sign: &SignRequest{Key: "p256", Data: data, Format: "pem"}, want: kgerr.ErrInvalidInput},
		{name: "fail verify unknown format", ver: &VerifyRequest{Key: "p256", Data: data, Signature: sig.Signature, Format: "jws"}, want: kgerr.ErrInvalidInput},
		{name: "fail sign unknown algorithm", sign: &SignRequest{Key: "p256", Algorithm: "ES257", Data: data}, want: kgerr.ErrUnsupportedAlgorithm},
		{name: "fail sign ES384 with P-256", sign: &SignRequest{Key: "p256", Algorithm: "ES384", Data: data}, want: kgerr.ErrUnsupportedAlgorithm},
		{name: "fail sign RS256 with EC", sign: &SignRequest{Key: "p256", Algorithm: "RS256", Data: data}, want: kgerr.ErrUnsupportedAlgorithm},
		{name: "fail sign with an encryption algorithm", sign: &SignRequest{Key: "rsa", Algorithm: "RSA-OAEP-256", Data: data}, want: kgerr.ErrUnsupportedAlgorithm},
		{name: "fail sign no key", sign: &SignRequest{Data: data}, want: kgerr.ErrInvalidInput},
		{name: "fail sign missing key", sign: &SignRequest{Key: "nope", Data: data}, want: kgerr.ErrKeyNotFound},
		{name: "fail verify missing version", ver: &VerifyRequest{Key: "p256", Data: data, Signature: sig.Signature, KeyVersion: 2}, want: kgerr.ErrKeyNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			op := "sign"
			if tc.sign != nil {
				var r *SignResult
				r, err = f.svc.Sign(ctx, *tc.sign)
				if r != nil {
					t.Fatalf("result %+v with error %v", r, err)
				}
			} else {
				op = "verify"
				var r *VerifyResult
				r, err = f.svc.Verify(ctx, *tc.ver)
				if r != nil {
					t.Fatalf("result %+v with error %v", r, err)
				}
			}
			wantErr(t, err, tc.want)
			wantRecord(t, f.last(), audit.Event{Operation: op, Outcome: audit.OutcomeFailure, ErrorCode: string(kgerr.KindOf(tc.want))})
		})
	}

	// Unknown algorithm names are not written to the audit log as given.
	_, err = f.svc.Sign(ctx, SignRequest{Key: "p256", Algorithm: "<script>", Data: data})
	wantErr(t, err, kgerr.ErrUnsupportedAlgorithm)
	if r := f.last(); r.Algorithm != "" {
		t.Fatalf("audited algorithm %q", r.Algorithm)
	}

	for _, k := range []string{"p256", "p384", "p521"} {
		t.Run("ecdsa encodings "+k, func(t *testing.T) {
			n := alg.CurveByteLen(keys[k].Curve)
			der, err := f.svc.Sign(ctx, SignRequest{Key: k, Data: data, Format: SignatureDER})
			wantErr(t, err, nil)
			raw, err := f.svc.Sign(ctx, SignRequest{Key: k, Data: data, Format: SignatureRaw})
			wantErr(t, err, nil)
			if len(raw.Signature) != 2*n || der.Signature[0] != 0x30 {
				t.Fatalf("raw signature of %d bytes (want %d), DER starts %#x", len(raw.Signature), 2*n, der.Signature[0])
			}
			conv, err := alg.ECDSADERToRaw(der.Signature, keys[k].Curve)
			if err != nil || len(conv) != 2*n {
				t.Fatalf("DER signature does not convert to raw: %v", err)
			}
			pk, _ := f.svc.PublicKey(ctx, k, 0)
			independentVerify(t, pk.Key, raw.Algorithm, data, der.Signature)
			for _, c := range []struct {
				name   string
				sig    []byte
				format SignatureFormat
				valid  bool
			}{
				{"der as default", der.Signature, SignatureDefault, true},
				{"der as der", der.Signature, SignatureDER, true},
				{"raw as raw", raw.Signature, SignatureRaw, true},
				{"raw as default", raw.Signature, SignatureDefault, true},
				{"raw as der", raw.Signature, SignatureDER, false},
				{"der as raw", der.Signature, SignatureRaw, false},
				{"raw of the wrong length", raw.Signature[1:], SignatureRaw, false},
				{"raw all zero", make([]byte, 2*n), SignatureRaw, false},
			} {
				v, err := f.svc.Verify(ctx, VerifyRequest{Key: k, Data: data, Signature: c.sig, Format: c.format})
				if err != nil || v.Valid != c.valid {
					t.Fatalf("%s: %+v, %v; want valid=%v", c.name, v, err, c.valid)
				}
			}
		})
	}

	t.Run("other key types ignore the format", func(t *testing.T) {
		for _, k := range []string{"rsa", "ed"} {
			r, err := f.svc.Sign(ctx, SignRequest{Key: k, Data: data, Format: SignatureRaw})
			wantErr(t, err, nil)
			if v, err := f.svc.Verify(ctx, VerifyRequest{Key: k, Data: data, Signature: r.Signature, Format: SignatureDER}); err != nil || !v.Valid {
				t.Fatalf("%s: %+v, %v", k, v, err)
			}
		}
	})
}

// TestVerifyAcrossVersions rotates signing keys and checks that signatures
// of older versions still verify, by default and with their version.
func TestVerifyAcrossVersions(t *testing.T) {
	f := newFixture(t)
	ctx := as(operatorP)
	data := []byte("signed before and after a rotation")
	for _, spec := range []KeySpec{specP256, specEd25519, specRSA} {
		t.Run(spec.KeyType, func(t *testing.T) {
			k := f.create("v-"+spec.KeyType, spec)
			s1, err := f.svc.Sign(ctx, SignRequest{Key: k.Name, Data: data})
			wantErr(t, err, nil)
			r, err := f.svc.RotateKey(f.admin(), k.Name)
			wantErr(t, err, nil)
			if r.Version != 2 || len(r.Versions) != 2 {
				t.Fatalf("rotated %+v", r)
			}
			s2, err := f.svc.Sign(ctx, SignRequest{Key: k.Name, Data: data})
			wantErr(t, err, nil)
			if s2.KeyVersion != 2 {
				t.Fatalf("signed with version %d after rotation", s2.KeyVersion)
			}
			for _, c := range []struct {
				name        string
				sig         []byte
				version     int
				valid       bool
				wantVersion int
			}{
				{"v1 signature, any version", s1.Signature, 0, true, 1},
				{"v2 signature, any version", s2.Signature, 0, true, 2},
				{"v1 signature, version 1", s1.Signature, 1, true, 1},
				{"v1 signature, version 2", s1.Signature, 2, false, 2},
				{"v2 signature, version 1", s2.Signature, 1, false, 1},
			} {
				v, err := f.svc.Verify(ctx, VerifyRequest{Key: k.Name, Data: data, Signature: c.sig, KeyVersion: c.version})
				if err != nil || v.Valid != c.valid || v.KeyVersion != c.wantVersion {
					t.Fatalf("%s: %+v, %v", c.name, v, err)
				}
				if c.valid {
					wantRecord(t, f.last(), audit.Event{Operation: "verify", Outcome: audit.OutcomeSuccess, KeyVersion: c.wantVersion})
				}
			}
			// An invalid signature reports the current version.
			if v, err := f.svc.Verify(ctx, VerifyRequest{Key: k.Name, Data: []byte("x"), Signature: s1.Signature}); err != nil || v.Valid || v.KeyVersion != 2 {
				t.Fatalf("invalid: %+v, %v", v, err)
			}
		})
	}
}

// testFormat is a CiphertextFormat of the test's own:
//
//	version (uint16 BE) | nonce length | nonce | ciphertext ‖ tag
//
// with "test-format v<N>|" bound into the AAD before the caller's.
type testFormat struct{}

func (testFormat) AAD(version int, aad []byte) []byte {
	return append([]byte(fmt.Sprintf("test-format v%d|", version)), aad...)
}

func (testFormat) Parse(b []byte) (int, []byte, []byte, []byte, error) {
	if len(b) < 3 {
		return 0, nil, nil, nil, kgerr.New(kgerr.KindDecryptionFailed, "too short")
	}
	v, n := int(binary.BigEndian.Uint16(b)), int(b[2])
	rest := b[3:]
	if len(rest) < n+gcmTagLen {
		return 0, nil, nil, nil, kgerr.New(kgerr.KindDecryptionFailed, "truncated")
	}
	cut := len(rest) - gcmTagLen
	return v, rest[:n], rest[n:cut], rest[cut:], nil
}

func (testFormat) seal(r *EncryptResult) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(r.KeyVersion))
	b = append(b, byte(len(r.Nonce)))
	return append(append(append(b, r.Nonce...), r.Ciphertext...), r.Tag...)
}

// TestEncryptDecryptAESGCM covers AES-GCM with the nonce and tag given
// apart and with a ciphertext format: round trips with and without AAD,
// tampering with every part, lengths, and versions.
func TestEncryptDecryptAESGCM(t *testing.T) {
	f := newFixture(t)
	ctx := as(operatorP)
	secret := []byte("TOP-SECRET-PLAINTEXT-7f3a")
	for _, spec := range []KeySpec{specAES128, specAES256} {
		k := f.create(fmt.Sprintf("aes-%d", spec.KeySize), spec)
		t.Run(k.Name, func(t *testing.T) {
			for _, aad := range [][]byte{nil, []byte("context: invoice 42")} {
				r, err := f.svc.Encrypt(ctx, EncryptRequest{Key: k.Name, Plaintext: secret, AAD: aad})
				wantErr(t, err, nil)
				if len(r.Nonce) != 12 || len(r.Tag) != 16 || len(r.Ciphertext) != len(secret) || r.KeyVersion != 1 ||
					r.Algorithm != k.Algorithm || bytes.Contains(r.Ciphertext, secret[:8]) {
					t.Fatalf("encrypt result %+v", r)
				}
				wantRecord(t, f.last(), audit.Event{Operation: "encrypt", Outcome: audit.OutcomeSuccess, KeyID: k.ID, KeyVersion: 1, Algorithm: k.Algorithm})
				d, err := f.svc.Decrypt(ctx, DecryptRequest{Key: k.Name, Ciphertext: r.Ciphertext, Nonce: r.Nonce, Tag: r.Tag, AAD: aad})
				wantErr(t, err, nil)
				if !bytes.Equal(d.Plaintext, secret) || d.KeyVersion != 1 || d.KeyID != k.ID {
					t.Fatalf("decrypt %+v", d)
				}
				flip := func(b []byte) []byte { c := bytes.Clone(b); c[0] ^= 0x80; return c }
				otherAAD := []byte("other")
				if aad != nil {
					otherAAD = flip(aad)
				}
				for _, c := range []struct {
					name string
					req  DecryptRequest
					want error
				}{
					{"fail ciphertext tampered", DecryptRequest{Ciphertext: flip(r.Ciphertext), Nonce: r.Nonce, Tag: r.Tag, AAD: aad}, kgerr.ErrDecryptionFailed},
					{"fail tag tampered", DecryptRequest{Ciphertext: r.Ciphertext, Nonce: r.Nonce, Tag: flip(r.Tag), AAD: aad}, kgerr.ErrDecryptionFailed},
					{"fail nonce tampered", DecryptRequest{Ciphertext: r.Ciphertext, Nonce: flip(r.Nonce), Tag: r.Tag, AAD: aad}, kgerr.ErrDecryptionFailed},
					{"fail aad changed", DecryptRequest{Ciphertext: r.Ciphertext, Nonce: r.Nonce, Tag: r.Tag, AAD: otherAAD}, kgerr.ErrDecryptionFailed},
					{"fail nonce of 11 bytes", DecryptRequest{Ciphertext: r.Ciphertext, Nonce: r.Nonce[:11], Tag: r.Tag, AAD: aad}, kgerr.ErrInvalidInput},
					{"fail nonce of 17 bytes", DecryptRequest{Ciphertext: r.Ciphertext, Nonce: make([]byte, 17), Tag: r.Tag, AAD: aad}, kgerr.ErrInvalidInput},
					{"fail nonce of 16 bytes the key did not use", DecryptRequest{Ciphertext: r.Ciphertext, Nonce: make([]byte, 16), Tag: r.Tag, AAD: aad}, kgerr.ErrDecryptionFailed},
					{"fail tag of 15 bytes", DecryptRequest{Ciphertext: r.Ciphertext, Nonce: r.Nonce, Tag: r.Tag[:15], AAD: aad}, kgerr.ErrInvalidInput},
					{"fail no tag", DecryptRequest{Ciphertext: r.Ciphertext, Nonce: r.Nonce, AAD: aad}, kgerr.ErrInvalidInput},
					{"fail version the key does not have", DecryptRequest{KeyVersion: 3, Ciphertext: r.Ciphertext, Nonce: r.Nonce, Tag: r.Tag, AAD: aad}, kgerr.ErrDecryptionFailed},
					{"fail no ciphertext", DecryptRequest{Nonce: r.Nonce, AAD: aad}, kgerr.ErrInvalidInput},
					{"fail RSA-OAEP on an AES key", DecryptRequest{Algorithm: "RSA-OAEP", Ciphertext: r.Ciphertext, Nonce: r.Nonce, Tag: r.Tag}, kgerr.ErrUnsupportedAlgorithm},
				} {
					c.req.Key = k.Name
					d, err := f.svc.Decrypt(ctx, c.req)
					if d != nil {
						t.Fatalf("%s: decrypted %+v", c.name, d)
					}
					if !errorsIs(err, c.want) {
						t.Fatalf("%s: %v, want kind %s", c.name, err, kgerr.KindOf(c.want))
					}
					wantRecord(t, f.last(), audit.Event{Operation: "decrypt", Outcome: audit.OutcomeFailure, ErrorCode: string(kgerr.KindOf(c.want)), KeyID: k.ID})
				}
			}
		})
	}

	t.Run("empty plaintext round trip", func(t *testing.T) {
		r, err := f.svc.Encrypt(ctx, EncryptRequest{Key: "aes-256", Plaintext: []byte{}})
		wantErr(t, err, nil)
		if len(r.Ciphertext) != 0 || len(r.Tag) != 16 {
			t.Fatalf("encrypt result %+v", r)
		}
		d, err := f.svc.Decrypt(ctx, DecryptRequest{Key: "aes-256", Ciphertext: r.Ciphertext, Nonce: r.Nonce, Tag: r.Tag})
		wantErr(t, err, nil)
		if len(d.Plaintext) != 0 {
			t.Fatalf("decrypted %q", d.Plaintext)
		}
	})

	t.Run("encrypt refusals", func(t *testing.T) {
		for _, c := range []struct {
			name string
			req  EncryptRequest
			want error
		}{
			{"fail no plaintext", EncryptRequest{Key: "aes-256"}, kgerr.ErrInvalidInput},
			{"fail plaintext too large", EncryptRequest{Key: "aes-256", Plaintext: make([]byte, MaxDataBytes+1)}, kgerr.ErrPayloadTooLarge},
			{"fail A256GCM with aes-128", EncryptRequest{Key: "aes-128", Algorithm: "A256GCM", Plaintext: secret}, kgerr.ErrUnsupportedAlgorithm},
			{"fail AES-KWP is not encryption", EncryptRequest{Key: "aes-256", Algorithm: "AES-KWP", Plaintext: secret}, kgerr.ErrUnsupportedAlgorithm},
		} {
			r, err := f.svc.Encrypt(ctx, c.req)
			if r != nil || !errorsIs(err, c.want) {
				t.Fatalf("%s: %+v, %v", c.name, r, err)
			}
		}
	})

	t.Run("ciphertext format", func(t *testing.T) {
		var tf testFormat
		k := f.create("aes-format", specAES256)
		aad := []byte("caller aad")
		r1, err := f.svc.Encrypt(ctx, EncryptRequest{Key: k.Name, Plaintext: secret, AAD: aad, Format: tf})
		wantErr(t, err, nil)
		env1 := tf.seal(r1)
		// The format's AAD was used: the parts do not decrypt with the
		// caller's AAD alone.
		_, err = f.svc.Decrypt(ctx, DecryptRequest{Key: k.Name, Ciphertext: r1.Ciphertext, Nonce: r1.Nonce, Tag: r1.Tag, AAD: aad})
		wantErr(t, err, kgerr.ErrDecryptionFailed)
		d, err := f.svc.Decrypt(ctx, DecryptRequest{Key: k.Name, Ciphertext: env1, AAD: aad, Format: tf})
		wantErr(t, err, nil)
		if !bytes.Equal(d.Plaintext, secret) || d.KeyVersion != 1 {
			t.Fatalf("decrypt %+v", d)
		}
		if _, err := f.svc.RotateKey(f.admin(), k.Name); err != nil {
			t.Fatal(err)
		}
		r2, err := f.svc.Encrypt(ctx, EncryptRequest{Key: k.Name, Plaintext: secret, Format: tf})
		wantErr(t, err, nil)
		if r2.KeyVersion != 2 {
			t.Fatalf("encrypted with version %d after rotation", r2.KeyVersion)
		}
		env2 := tf.seal(r2)
		// Each envelope names its version; both decrypt.
		for _, c := range []struct {
			env     []byte
			aad     []byte
			version int
		}{{env1, aad, 1}, {env2, nil, 2}} {
			d, err := f.svc.Decrypt(ctx, DecryptRequest{Key: k.Name, Ciphertext: c.env, AAD: c.aad, Format: tf})
			if err != nil || d.KeyVersion != c.version || !bytes.Equal(d.Plaintext, secret) {
				t.Fatalf("version %d: %+v, %v", c.version, d, err)
			}
			wantRecord(t, f.last(), audit.Event{Operation: "decrypt", Outcome: audit.OutcomeSuccess, KeyVersion: c.version})
		}
		relabel := bytes.Clone(env2)
		binary.BigEndian.PutUint16(relabel, 1)
		for _, c := range []struct {
			name string
			req  DecryptRequest
			want error
		}{
			{"fail key_version disagrees with the envelope", DecryptRequest{KeyVersion: 2, Ciphertext: env1, AAD: aad}, kgerr.ErrInvalidInput},
			{"ok key_version agrees with the envelope", DecryptRequest{KeyVersion: 1, Ciphertext: env1, AAD: aad}, nil},
			{"fail envelope relabelled to version 1", DecryptRequest{Ciphertext: relabel}, kgerr.ErrDecryptionFailed},
			{"fail envelope names version 9", DecryptRequest{Ciphertext: append([]byte{0, 9}, env1[2:]...), AAD: aad}, kgerr.ErrDecryptionFailed},
			{"fail envelope malformed", DecryptRequest{Ciphertext: []byte{0, 1}}, kgerr.ErrDecryptionFailed},
			{"fail envelope truncated", DecryptRequest{Ciphertext: env1[:20]}, kgerr.ErrDecryptionFailed},
			{"fail aad missing", DecryptRequest{Ciphertext: env1}, kgerr.ErrDecryptionFailed},
		} {
			c.req.Key, c.req.Format = k.Name, tf
			d, err := f.svc.Decrypt(ctx, c.req)
			if !errorsIs(err, c.want) || (c.want == nil && !bytes.Equal(d.Plaintext, secret)) {
				t.Fatalf("%s: %+v, %v", c.name, d, err)
			}
			if c.want != nil {
				wantRecord(t, f.last(), audit.Event{Operation: "decrypt", Outcome: audit.OutcomeFailure, ErrorCode: string(kgerr.KindOf(c.want)), KeyID: k.ID})
			}
		}
	})

	t.Run("no plaintext in the logs", func(t *testing.T) { f.noSecrets(secret) })
}

// errorsIs is wantErr's test without failing the test: nil wants nil.
func errorsIs(err, want error) bool {
	if want == nil {
		return err == nil
	}
	return errors.Is(err, want)
}

// TestEncryptDecryptRSAOAEP covers RSA-OAEP: the service's encryption and
// Go's own both decrypt in the provider, across versions; AAD is refused.
func TestEncryptDecryptRSAOAEP(t *testing.T) {
	f := newFixture(t)
	ctx := as(operatorP)
	k := f.create("rsa-enc", specRSAEnc)
	secret := []byte("TOP-SECRET-RSA-PLAINTEXT")
	pk, err := f.svc.PublicKey(ctx, k.Name, 0)
	wantErr(t, err, nil)
	pub := pk.Key.(*rsa.PublicKey)
	for _, c := range []struct {
		algorithm string
		hash      func() crypto.Hash
	}{{"", func() crypto.Hash { return crypto.SHA256 }}, {"RSA-OAEP-256", func() crypto.Hash { return crypto.SHA256 }}, {"RSA-OAEP", func() crypto.Hash { return crypto.SHA1 }}} {
		t.Run("ok "+c.algorithm, func(t *testing.T) {
			r, err := f.svc.Encrypt(ctx, EncryptRequest{Key: k.Name, Algorithm: c.algorithm, Plaintext: secret})
			wantErr(t, err, nil)
			if len(r.Ciphertext) != 256 || r.Nonce != nil || r.Tag != nil || r.KeyVersion != 1 {
				t.Fatalf("encrypt result %+v", r)
			}
			d, err := f.svc.Decrypt(ctx, DecryptRequest{Key: k.Name, Algorithm: c.algorithm, Ciphertext: r.Ciphertext})
			wantErr(t, err, nil)
			if !bytes.Equal(d.Plaintext, secret) {
				t.Fatalf("decrypted %q", d.Plaintext)
			}
			// Go's RSA-OAEP (independent of the service) decrypts too.
			ct, err := rsa.EncryptOAEP(c.hash().New(), rand.Reader, pub, secret, nil)
			if err != nil {
				t.Fatal(err)
			}
			d, err = f.svc.Decrypt(ctx, DecryptRequest{Key: k.Name, Algorithm: c.algorithm, Ciphertext: ct})
			if err != nil || !bytes.Equal(d.Plaintext, secret) {
				t.Fatalf("Go's ciphertext: %+v, %v", d, err)
			}
			ct[10] ^= 1
			_, err = f.svc.Decrypt(ctx, DecryptRequest{Key: k.Name, Algorithm: c.algorithm, Ciphertext: ct})
			wantErr(t, err, kgerr.ErrDecryptionFailed)
		})
	}
	oaep, err := f.svc.Encrypt(ctx, EncryptRequest{Key: k.Name, Plaintext: secret})
	wantErr(t, err, nil)
	for _, c := range []struct {
		name string
		run  func() error
		want error
	}{
		{"fail encrypt with aad", func() error {
			_, err := f.svc.Encrypt(ctx, EncryptRequest{Key: k.Name, Plaintext: secret, AAD: []byte("a")})
			return err
		}, kgerr.ErrInvalidInput},
		{"fail decrypt with aad", func() error {
			_, err := f.svc.Decrypt(ctx, DecryptRequest{Key: k.Name, Ciphertext: oaep.Ciphertext, AAD: []byte("a")})
			return err
		}, kgerr.ErrInvalidInput},
		{"fail decrypt SHA-1 OAEP of a SHA-256 ciphertext", func() error {
			_, err := f.svc.Decrypt(ctx, DecryptRequest{Key: k.Name, Algorithm: "RSA-OAEP", Ciphertext: oaep.Ciphertext})
			return err
		}, kgerr.ErrDecryptionFailed},
		{"fail plaintext too long for the key", func() error {
			_, err := f.svc.Encrypt(ctx, EncryptRequest{Key: k.Name, Plaintext: make([]byte, 256-2*32-1)})
			return err
		}, kgerr.ErrInvalidInput},
		{"fail A256GCM on an RSA key", func() error {
			_, err := f.svc.Encrypt(ctx, EncryptRequest{Key: k.Name, Algorithm: "A256GCM", Plaintext: secret})
			return err
		}, kgerr.ErrUnsupportedAlgorithm},
		{"fail sign with an encrypt-only key", func() error {
			_, err := f.svc.Sign(ctx, SignRequest{Key: k.Name, Data: secret})
			return err
		}, kgerr.ErrUsageNotPermitted},
		{"fail decrypt version 2 before rotation", func() error {
			_, err := f.svc.Decrypt(ctx, DecryptRequest{Key: k.Name, KeyVersion: 2, Ciphertext: oaep.Ciphertext})
			return err
		}, kgerr.ErrKeyNotFound},
	} {
		t.Run(c.name, func(t *testing.T) { wantErr(t, c.run(), c.want) })
	}

	t.Run("across versions", func(t *testing.T) {
		if _, err := f.svc.RotateKey(f.admin(), k.Name); err != nil {
			t.Fatal(err)
		}
		r2, err := f.svc.Encrypt(ctx, EncryptRequest{Key: k.Name, Plaintext: secret})
		wantErr(t, err, nil)
		if r2.KeyVersion != 2 {
			t.Fatalf("version %d", r2.KeyVersion)
		}
		for _, c := range []struct {
			name    string
			ct      []byte
			version int
			want    error
		}{
			{"ok v2 by default", r2.Ciphertext, 0, nil},
			{"ok v1 by version", oaep.Ciphertext, 1, nil},
			{"fail v1 with the current version", oaep.Ciphertext, 0, kgerr.ErrDecryptionFailed},
			{"fail v2 with version 1", r2.Ciphertext, 1, kgerr.ErrDecryptionFailed},
		} {
			d, err := f.svc.Decrypt(ctx, DecryptRequest{Key: k.Name, KeyVersion: c.version, Ciphertext: c.ct})
			if !errorsIs(err, c.want) || (c.want == nil && !bytes.Equal(d.Plaintext, secret)) {
				t.Fatalf("%s: %+v, %v", c.name, d, err)
			}
		}
	})
	f.noSecrets(secret)
}

// TestWrapUnwrap covers AES key wrap: round trips of several lengths,
// length checks, tampering and versions.
func TestWrapUnwrap(t *testing.T) {
	f := newFixture(t)
	ctx := as(operatorP)
	kek := f.create("kek", specKEK)
	for _, n := range []int{1, 5, 8, 16, 32, 33, MaxKeyMaterialBytes} {
		t.Run(fmt.Sprintf("ok %d bytes", n), func(t *testing.T) {
			m := make([]byte, n)
			rand.Read(m)
			w, err := f.svc.Wrap(ctx, WrapRequest{Key: kek.Name, KeyMaterial: m})
			wantErr(t, err, nil)
			if want := (n+7)/8*8 + 8; len(w.WrappedKey) != want || w.Algorithm != "AES-KWP" || w.KeyVersion != 1 || w.KeyID != kek.ID {
				t.Fatalf("wrapped %d bytes into %d (want %d), %+v", n, len(w.WrappedKey), want, w.Algorithm)
			}
			wantRecord(t, f.last(), audit.Event{Operation: "wrap", Outcome: audit.OutcomeSuccess, KeyID: kek.ID, KeyVersion: 1, Algorithm: "AES-KWP"})
			u, err := f.svc.Unwrap(ctx, UnwrapRequest{Key: kek.Name, WrappedKey: w.WrappedKey})
			wantErr(t, err, nil)
			if !bytes.Equal(u.KeyMaterial, m) || u.KeyVersion != 1 {
				t.Fatal("unwrapped material differs")
			}
			bad := bytes.Clone(w.WrappedKey)
			bad[len(bad)-1] ^= 1
			_, err = f.svc.Unwrap(ctx, UnwrapRequest{Key: kek.Name, WrappedKey: bad})
			wantErr(t, err, kgerr.ErrDecryptionFailed)
		})
	}
	for _, c := range []struct {
		name string
		run  func() error
		want error
	}{
		{"fail wrap nothing", func() error { _, err := f.svc.Wrap(ctx, WrapRequest{Key: kek.Name}); return err }, kgerr.ErrInvalidInput},
		{"fail wrap too much", func() error {
			_, err := f.svc.Wrap(ctx, WrapRequest{Key: kek.Name, KeyMaterial: make([]byte, MaxKeyMaterialBytes+1)})
			return err
		}, kgerr.ErrPayloadTooLarge},
		{"fail unwrap 8 bytes", func() error {
			_, err := f.svc.Unwrap(ctx, UnwrapRequest{Key: kek.Name, WrappedKey: make([]byte, 8)})
			return err
		}, kgerr.ErrInvalidInput},
		{"fail unwrap 17 bytes", func() error {
			_, err := f.svc.Unwrap(ctx, UnwrapRequest{Key: kek.Name, WrappedKey: make([]byte, 17)})
			return err
		}, kgerr.ErrInvalidInput},
		{"fail unwrap too long", func() error {
			_, err := f.svc.Unwrap(ctx, UnwrapRequest{Key: kek.Name, WrappedKey: make([]byte, MaxKeyMaterialBytes+24)})
			return err
		}, kgerr.ErrInvalidInput},
		{"fail unwrap 24 bytes of nothing", func() error {
			_, err := f.svc.Unwrap(ctx, UnwrapRequest{Key: kek.Name, WrappedKey: make([]byte, 24)})
			return err
		}, kgerr.ErrDecryptionFailed},
		{"fail unwrap a version the key lacks", func() error {
			_, err := f.svc.Unwrap(ctx, UnwrapRequest{Key: kek.Name, KeyVersion: 4, WrappedKey: make([]byte, 24)})
			return err
		}, kgerr.ErrKeyNotFound},
		{"fail encrypt with a wrap-only key", func() error {
			_, err := f.svc.Encrypt(ctx, EncryptRequest{Key: kek.Name, Plaintext: []byte("x")})
			return err
		}, kgerr.ErrUsageNotPermitted},
		{"fail wrap with an encryption algorithm", func() error {
			_, err := f.svc.Wrap(ctx, WrapRequest{Key: kek.Name, Algorithm: "A256GCM", KeyMaterial: []byte("x")})
			return err
		}, kgerr.ErrUnsupportedAlgorithm},
	} {
		t.Run(c.name, func(t *testing.T) { wantErr(t, c.run(), c.want) })
	}

	t.Run("an encryption key with wrap usage wraps with AES-KWP", func(t *testing.T) {
		k := f.create("enc-and-wrap", KeySpec{KeyType: "AES", KeySize: 128, Usage: []string{"encrypt", "decrypt", "wrap", "unwrap"}})
		w, err := f.svc.Wrap(ctx, WrapRequest{Key: k.Name, KeyMaterial: []byte("0123456789abcdef")})
		wantErr(t, err, nil)
		if w.Algorithm != "AES-KWP" {
			t.Fatalf("algorithm %s", w.Algorithm)
		}
		e, err := f.svc.Encrypt(ctx, EncryptRequest{Key: k.Name, Plaintext: []byte("x")})
		wantErr(t, err, nil)
		if e.Algorithm != "A128GCM" {
			t.Fatalf("algorithm %s", e.Algorithm)
		}
	})

	t.Run("across versions", func(t *testing.T) {
		m := []byte("a data key of 32 bytes, exactly!")
		w1, err := f.svc.Wrap(ctx, WrapRequest{Key: kek.Name, KeyMaterial: m})
		wantErr(t, err, nil)
		if _, err := f.svc.RotateKey(f.admin(), kek.Name); err != nil {
			t.Fatal(err)
		}
		w2, err := f.svc.Wrap(ctx, WrapRequest{Key: kek.Name, KeyMaterial: m})
		wantErr(t, err, nil)
		if w2.KeyVersion != 2 || bytes.Equal(w1.WrappedKey, w2.WrappedKey) {
			t.Fatalf("wrapped with version %d", w2.KeyVersion)
		}
		if u, err := f.svc.Unwrap(ctx, UnwrapRequest{Key: kek.Name, KeyVersion: 1, WrappedKey: w1.WrappedKey}); err != nil || !bytes.Equal(u.KeyMaterial, m) {
			t.Fatalf("v1: %v", err)
		}
		_, err = f.svc.Unwrap(ctx, UnwrapRequest{Key: kek.Name, WrappedKey: w1.WrappedKey})
		wantErr(t, err, kgerr.ErrDecryptionFailed)
		if u, err := f.svc.Unwrap(ctx, UnwrapRequest{Key: kek.Name, WrappedKey: w2.WrappedKey}); err != nil || u.KeyVersion != 2 || !bytes.Equal(u.KeyMaterial, m) {
			t.Fatalf("v2: %v", err)
		}
	})
}
