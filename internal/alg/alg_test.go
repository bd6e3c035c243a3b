package alg_test

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/asn1"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// RFC 5649 §6.
const rfc5649KEK = "5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8"

var rfc5649Vectors = []struct {
	name, key, wrapped string
}{
	{"20-byte key", "c37b7e6492584340bed12207808941155068f738", "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"},
	{"7-byte key", "466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"},
}

func TestKWPVectors(t *testing.T) {
	kek := unhex(t, rfc5649KEK)
	for _, v := range rfc5649Vectors {
		t.Run("ok "+v.name, func(t *testing.T) {
			key, want := unhex(t, v.key), unhex(t, v.wrapped)
			got, err := alg.WrapKWP(kek, key)
			if err != nil {
				t.Fatalf("WrapKWP: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("WrapKWP = %x, want %x", got, want)
			}
			un, err := alg.UnwrapKWP(kek, want)
			if err != nil {
				t.Fatalf("UnwrapKWP: %v", err)
			}
			if !bytes.Equal(un, key) {
				t.Errorf("UnwrapKWP = %x, want %x", un, key)
			}
		})
	}
}

// wrapRaw is the RFC 3394 §2.2.1 wrapping process with any initial value
// and any (already padded) plaintext, to craft wrapped keys whose integrity
// check UnwrapKWP must refuse after the AES layer opens correctly.
func wrapRaw(t *testing.T, kek []byte, aiv [8]byte, padded []byte) []byte {
	t.Helper()
	block, err := aes.NewCipher(kek)
	if err != nil {
		t.Fatal(err)
	}
	n := len(padded) / 8
	if n == 1 {
		out := append(aiv[:], padded...)
		block.Encrypt(out, out)
		return out
	}
	out := append(make([]byte, 8), padded...)
	a := aiv
	var b [16]byte
	for j := range 6 {
		for i := 1; i <= n; i++ {
			copy(b[:8], a[:])
			copy(b[8:], out[8*i:8*i+8])
			block.Encrypt(b[:], b[:])
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(b[:8])^uint64(n*j+i))
			copy(out[8*i:], b[8:])
		}
	}
	copy(out, a[:])
	return out
}

func aivFor(magic []byte, mli uint32) [8]byte {
	var a [8]byte
	copy(a[:4], magic)
	binary.BigEndian.PutUint32(a[4:], mli)
	return a
}

func TestUnwrapKWPRefuses(t *testing.T) {
	kek := unhex(t, rfc5649KEK)
	magic := []byte{0xA6, 0x59, 0x59, 0xA6}
	good20 := unhex(t, rfc5649Vectors[0].wrapped)
	good7 := unhex(t, rfc5649Vectors[1].wrapped)
	otherKEK := bytes.Clone(kek)
	otherKEK[0] ^= 1

	type tc struct {
		name    string
		kek     []byte
		wrapped []byte
	}
	cases := []tc{
		{"fail empty", kek, nil},
		{"fail 8 bytes", kek, good7[:8]},
		{"fail not a multiple of 8", kek, append(bytes.Clone(good20), 0)},
		{"fail truncated by a block", kek, good20[:len(good20)-8]},
		{"fail extended by a block", kek, append(bytes.Clone(good20), make([]byte, 8)...)},
		{"fail other kek", otherKEK, good20},
		{"fail one-block mli 0", kek, wrapRaw(t, kek, aivFor(magic, 0), make([]byte, 8))},
		{"fail one-block mli 9", kek, wrapRaw(t, kek, aivFor(magic, 9), make([]byte, 8))},
		{"fail one-block nonzero padding", kek, wrapRaw(t, kek, aivFor(magic, 5), []byte{1, 2, 3, 4, 5, 0, 1, 0})},
		{"fail two-block mli 8", kek, wrapRaw(t, kek, aivFor(magic, 8), make([]byte, 16))},
		{"fail two-block mli 17", kek, wrapRaw(t, kek, aivFor(magic, 17), make([]byte, 16))},
		{"fail two-block nonzero padding", kek, wrapRaw(t, kek, aivFor(magic, 9), append(make([]byte, 15), 1))},
		{"fail RFC 3394 default IV", kek, wrapRaw(t, kek, [8]byte{0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6}, make([]byte, 16))},
		{"fail huge mli", kek, wrapRaw(t, kek, aivFor(magic, 0xffffffff), make([]byte, 16))},
	}
	for _, good := range [][]byte{good20, good7} {
		for i := range good {
			w := bytes.Clone(good)
			w[i] ^= 0x01
			cases = append(cases, tc{fmt.Sprintf("fail %d-byte wrap flipped byte %d", len(good), i), kek, w})
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := alg.UnwrapKWP(c.kek, c.wrapped)
			if !errors.Is(err, alg.ErrUnwrap) {
				t.Errorf("UnwrapKWP = %x, %v; want ErrUnwrap", out, err)
			}
			if out != nil {
				t.Errorf("UnwrapKWP returned %x with an error", out)
			}
		})
	}
	// The crafting helper must be able to make what UnwrapKWP accepts,
	// or the cases above prove nothing.
	t.Run("ok crafted valid", func(t *testing.T) {
		for _, m := range [][]byte{{1, 2, 3, 4, 5}, bytes.Repeat([]byte{7}, 9), bytes.Repeat([]byte{9}, 16)} {
			padded := make([]byte, (len(m)+7)/8*8)
			copy(padded, m)
			out, err := alg.UnwrapKWP(kek, wrapRaw(t, kek, aivFor(magic, uint32(len(m))), padded))
			if err != nil || !bytes.Equal(out, m) {
				t.Errorf("UnwrapKWP of crafted %x = %x, %v", m, out, err)
			}
		}
	})
}

func TestKWPRoundTrip(t *testing.T) {
	for _, kekLen := range []int{16, 24, 32} {
		kek := make([]byte, kekLen)
		rand.Read(kek)
		for n := 1; n <= 80; n++ {
			m := make([]byte, n)
			rand.Read(m)
			w, err := alg.WrapKWP(kek, m)
			if err != nil {
				t.Fatalf("AES-%d WrapKWP %d bytes: %v", kekLen*8, n, err)
			}
			if want := (n+7)/8*8 + 8; len(w) != want {
				t.Errorf("AES-%d WrapKWP %d bytes: %d bytes out, want %d", kekLen*8, n, len(w), want)
			}
			got, err := alg.UnwrapKWP(kek, w)
			if err != nil || !bytes.Equal(got, m) {
				t.Errorf("AES-%d round trip of %d bytes = %x, %v; want %x", kekLen*8, n, got, err, m)
			}
		}
	}
}

func TestWrapKWPRefuses(t *testing.T) {
	cases := []struct {
		name     string
		kek, key []byte
	}{
		{"fail empty key material", make([]byte, 32), nil},
		{"fail 20-byte kek", make([]byte, 20), []byte("key")},
		{"fail no kek", nil, []byte("key")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if w, err := alg.WrapKWP(c.kek, c.key); err == nil {
				t.Errorf("WrapKWP = %x, want an error", w)
			}
		})
	}
}

func TestDigestInfo(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("DigestInfo")
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		hh := h.New()
		hh.Write(msg)
		d := hh.Sum(nil)
		t.Run("ok "+h.String(), func(t *testing.T) {
			di, err := alg.DigestInfo(h, d)
			if err != nil {
				t.Fatalf("DigestInfo: %v", err)
			}
			raw, err := rsa.SignPKCS1v15(nil, key, 0, di) // CKM_RSA_PKCS: pads what it is given
			if err != nil {
				t.Fatal(err)
			}
			want, err := rsa.SignPKCS1v15(nil, key, h, d)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(raw, want) {
				t.Error("a raw PKCS#1 v1.5 signature over DigestInfo differs from rsa.SignPKCS1v15 with the hash")
			}
			if err := rsa.VerifyPKCS1v15(&key.PublicKey, h, d, raw); err != nil {
				t.Errorf("VerifyPKCS1v15: %v", err)
			}
		})
		for _, bad := range []struct {
			name string
			d    []byte
		}{
			{"short", d[:len(d)-1]},
			{"long", append(bytes.Clone(d), 0)},
			{"empty", nil},
		} {
			t.Run("fail "+h.String()+" digest "+bad.name, func(t *testing.T) {
				di, err := alg.DigestInfo(h, bad.d)
				if !errors.Is(err, kgerr.ErrInvalidInput) {
					t.Errorf("DigestInfo = %x, %v; want INVALID_INPUT", di, err)
				}
			})
		}
	}
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.MD5, crypto.SHA224, 0} {
		t.Run(fmt.Sprintf("fail hash %v", h), func(t *testing.T) {
			size := 20
			if h.Available() {
				size = h.Size()
			}
			di, err := alg.DigestInfo(h, make([]byte, size))
			if !errors.Is(err, kgerr.ErrInvalidInput) {
				t.Errorf("DigestInfo = %x, %v; want INVALID_INPUT", di, err)
			}
		})
	}
}

func TestCheckDigest(t *testing.T) {
	cases := []struct {
		name    string
		a       alg.Algorithm
		n       int
		wantErr bool
	}{
		{"ok ES256 32", alg.ES256, 32, false},
		{"ok PS384 48", alg.PS384, 48, false},
		{"ok RS512 64", alg.RS512, 64, false},
		{"fail ES256 31", alg.ES256, 31, true},
		{"fail ES512 32", alg.ES512, 32, true},
		{"fail EdDSA digest", alg.EdDSA, 32, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := alg.Lookup(string(c.a))
			if err != nil {
				t.Fatal(err)
			}
			err = alg.CheckDigest(a, make([]byte, c.n))
			if c.wantErr != (err != nil) || (err != nil && !errors.Is(err, kgerr.ErrInvalidInput)) {
				t.Errorf("CheckDigest = %v, want error %v (INVALID_INPUT)", err, c.wantErr)
			}
		})
	}
}

var curves = []string{"P-256", "P-384", "P-521"}

// fixedRS builds a fixed-width r‖s from big-endian byte strings.
func fixedRS(n int, r, s []byte) []byte {
	out := make([]byte, 2*n)
	copy(out[n-len(r):n], r)
	copy(out[2*n-len(s):], s)
	return out
}

func TestECDSAEncodings(t *testing.T) {
	for _, curve := range curves {
		n := alg.CurveByteLen(curve)
		if n == 0 {
			t.Fatalf("CurveByteLen(%s) = 0", curve)
		}
		ff := bytes.Repeat([]byte{0xff}, n)
		if curve == "P-521" {
			ff[0] = 0x01 // 521 bits
		}
		cases := []struct {
			name string
			raw  []byte
		}{
			{"r=1 s=1", fixedRS(n, []byte{1}, []byte{1})},
			{"r leading zero byte", fixedRS(n, bytes.Repeat([]byte{0x42}, n-1), bytes.Repeat([]byte{0x42}, n))},
			{"s leading zero bytes", fixedRS(n, bytes.Repeat([]byte{0x42}, n), bytes.Repeat([]byte{0x42}, n-3))},
			{"r high bit after zero byte", fixedRS(n, append([]byte{0x80}, make([]byte, n-2)...), []byte{5})},
			{"r and s high bit", fixedRS(n, ff, ff)},
		}
		for _, c := range cases {
			t.Run("ok "+curve+" "+c.name, func(t *testing.T) {
				der, err := alg.ECDSARawToDER(c.raw)
				if err != nil {
					t.Fatalf("ECDSARawToDER: %v", err)
				}
				var sig struct{ R, S *big.Int }
				if rest, err := asn1.Unmarshal(der, &sig); err != nil || len(rest) != 0 {
					t.Fatalf("ECDSARawToDER output is not one DER SEQUENCE: %v, %d bytes left", err, len(rest))
				}
				if sig.R.Cmp(new(big.Int).SetBytes(c.raw[:n])) != 0 || sig.S.Cmp(new(big.Int).SetBytes(c.raw[n:])) != 0 {
					t.Errorf("DER holds r=%x s=%x, want %x", sig.R, sig.S, c.raw)
				}
				raw, err := alg.ECDSADERToRaw(der, curve)
				if err != nil {
					t.Fatalf("ECDSADERToRaw: %v", err)
				}
				if !bytes.Equal(raw, c.raw) {
					t.Errorf("round trip = %x, want %x", raw, c.raw)
				}
			})
		}
		t.Run("ok "+curve+" real signatures", func(t *testing.T) {
			key, err := ecdsa.GenerateKey(alg.Curve(curve), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			digest := make([]byte, 32)
			for i := range 8 {
				rand.Read(digest)
				der, err := ecdsa.SignASN1(rand.Reader, key, digest)
				if err != nil {
					t.Fatal(err)
				}
				raw, err := alg.ECDSADERToRaw(der, curve)
				if err != nil || len(raw) != 2*n {
					t.Fatalf("ECDSADERToRaw #%d = %d bytes, %v; want %d", i, len(raw), err, 2*n)
				}
				r, s := new(big.Int).SetBytes(raw[:n]), new(big.Int).SetBytes(raw[n:])
				if !ecdsa.Verify(&key.PublicKey, digest, r, s) {
					t.Errorf("raw signature #%d does not verify", i)
				}
				back, err := alg.ECDSARawToDER(raw)
				if err != nil || !bytes.Equal(back, der) {
					t.Errorf("ECDSARawToDER(ECDSADERToRaw(der)) = %x, %v; want %x", back, err, der)
				}
			}
		})
	}

	p256 := fixedRS(32, []byte{1}, []byte{2})
	der256, _ := alg.ECDSARawToDER(p256)
	mustMarshal := func(v any) []byte {
		b, err := asn1.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	big33 := new(big.Int).Lsh(big.NewInt(1), 256) // 257 bits: too large for P-256
	fail := []struct {
		name  string
		der   []byte
		curve string
	}{
		{"empty", nil, "P-256"},
		{"garbage", []byte("not a signature"), "P-256"},
		{"trailing data", append(bytes.Clone(der256), 0), "P-256"},
		{"truncated", der256[:len(der256)-1], "P-256"},
		{"r zero", mustMarshal(struct{ R, S *big.Int }{big.NewInt(0), big.NewInt(1)}), "P-256"},
		{"s negative", mustMarshal(struct{ R, S *big.Int }{big.NewInt(1), big.NewInt(-1)}), "P-256"},
		{"r too large for curve", mustMarshal(struct{ R, S *big.Int }{big33, big.NewInt(1)}), "P-256"},
		{"P-384 signature on P-256", mustMarshal(struct{ R, S *big.Int }{new(big.Int).Lsh(big.NewInt(1), 383), big.NewInt(1)}), "P-256"},
		{"unknown curve", der256, "P-192"},
		{"extra integer in sequence", mustMarshal(struct{ R, S, T *big.Int }{big.NewInt(1), big.NewInt(2), big.NewInt(3)}), "P-256"},
		{"only one integer", mustMarshal(struct{ R *big.Int }{big.NewInt(1)}), "P-256"},
		{"BER long-form length", []byte{0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02}, "P-256"},
		{"non-minimal integer", []byte{0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x02}, "P-256"},
	}
	for _, c := range fail {
		t.Run("fail DERToRaw "+c.name, func(t *testing.T) {
			raw, err := alg.ECDSADERToRaw(c.der, c.curve)
			if !errors.Is(err, kgerr.ErrInvalidInput) {
				t.Errorf("ECDSADERToRaw = %x, %v; want INVALID_INPUT", raw, err)
			}
		})
	}
	for _, c := range []struct {
		name string
		raw  []byte
	}{{"empty", nil}, {"odd length", make([]byte, 63)}} {
		t.Run("fail RawToDER "+c.name, func(t *testing.T) {
			der, err := alg.ECDSARawToDER(c.raw)
			if !errors.Is(err, kgerr.ErrInvalidInput) {
				t.Errorf("ECDSARawToDER = %x, %v; want INVALID_INPUT", der, err)
			}
		})
	}
}

func TestNewSpec(t *testing.T) {
	cases := []struct {
		name        string
		typ         string
		size        int
		curve       string
		want        alg.Spec
		wantErr     error
		wantErrElse error // a second acceptable error, if any
	}{
		{name: "ok RSA 2048", typ: "RSA", size: 2048, want: alg.Spec{Type: alg.RSA, Size: 2048}},
		{name: "ok rsa 3072 lower case", typ: "rsa", size: 3072, want: alg.Spec{Type: alg.RSA, Size: 3072}},
		{name: "ok RSA 4096", typ: "RSA", size: 4096, want: alg.Spec{Type: alg.RSA, Size: 4096}},
		{name: "ok EC size 256", typ: "EC", size: 256, want: alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}},
		{name: "ok EC curve P-384", typ: "EC", curve: "P-384", want: alg.Spec{Type: alg.EC, Size: 384, Curve: "P-384"}},
		{name: "ok ECDSA secp521r1 521", typ: "ECDSA", size: 521, curve: "secp521r1", want: alg.Spec{Type: alg.EC, Size: 521, Curve: "P-521"}},
		{name: "ok EC prime256v1", typ: "ec", curve: "prime256v1", want: alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}},
		{name: "ok Ed25519", typ: "Ed25519", want: alg.Spec{Type: alg.Ed25519, Size: 256}},
		{name: "ok ed25519 256 curve Ed25519", typ: "ed25519", size: 256, curve: "Ed25519", want: alg.Spec{Type: alg.Ed25519, Size: 256}},
		{name: "ok OKP", typ: "OKP", want: alg.Spec{Type: alg.Ed25519, Size: 256}},
		{name: "ok AES 128", typ: "AES", size: 128, want: alg.Spec{Type: alg.AES, Size: 128}},
		{name: "ok aes 256", typ: "aes", size: 256, want: alg.Spec{Type: alg.AES, Size: 256}},

		{name: "fail RSA 1024", typ: "RSA", size: 1024, wantErr: kgerr.ErrInvalidInput},
		{name: "fail RSA no size", typ: "RSA", wantErr: kgerr.ErrInvalidInput},
		{name: "fail RSA with curve", typ: "RSA", size: 2048, curve: "P-256", wantErr: kgerr.ErrInvalidInput},
		{name: "fail AES 192", typ: "AES", size: 192, wantErr: kgerr.ErrInvalidInput},
		{name: "fail AES no size", typ: "AES", wantErr: kgerr.ErrInvalidInput},
		{name: "fail AES with curve", typ: "AES", size: 256, curve: "P-256", wantErr: kgerr.ErrInvalidInput},
		{name: "fail EC size curve mismatch", typ: "EC", size: 256, curve: "P-384", wantErr: kgerr.ErrInvalidInput},
		{name: "fail EC size 512", typ: "EC", size: 512, wantErr: kgerr.ErrInvalidInput},
		{name: "fail EC no size no curve", typ: "EC", wantErr: kgerr.ErrInvalidInput},
		{name: "fail EC curve P-192", typ: "EC", curve: "P-192", wantErr: kgerr.ErrUnsupportedAlgorithm},
		{name: "fail EC curve secp256k1", typ: "EC", curve: "secp256k1", wantErr: kgerr.ErrUnsupportedAlgorithm},
		{name: "fail Ed25519 size 255", typ: "Ed25519", size: 255, wantErr: kgerr.ErrInvalidInput},
		{name: "fail Ed25519 curve X25519", typ: "Ed25519", curve: "X25519", wantErr: kgerr.ErrInvalidInput},
		{name: "fail unknown type DSA", typ: "DSA", size: 2048, wantErr: kgerr.ErrUnsupportedAlgorithm},
		{name: "fail empty type", typ: "", size: 2048, wantErr: kgerr.ErrInvalidInput},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := alg.NewSpec(c.typ, c.size, c.curve)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Errorf("NewSpec = %+v, %v; want %s", got, err, kgerr.KindOf(c.wantErr))
				}
				return
			}
			if err != nil || got != c.want {
				t.Errorf("NewSpec = %+v, %v; want %+v", got, err, c.want)
			}
		})
	}
}

func b64url(t *testing.T, m map[string]any, field string) []byte {
	t.Helper()
	s, ok := m[field].(string)
	if !ok {
		t.Fatalf("JWK field %q is %T, want a string", field, m[field])
	}
	if strings.ContainsAny(s, "=+/") {
		t.Errorf("JWK field %q = %q is not unpadded base64url", field, s)
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("JWK field %q: %v", field, err)
	}
	return b
}

func TestJWK(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("ok RSA", func(t *testing.T) {
		m, err := alg.JWK(&rsaKey.PublicKey, "kid-1", alg.PS256)
		if err != nil {
			t.Fatal(err)
		}
		if m["kty"] != "RSA" || m["kid"] != "kid-1" || m["alg"] != "PS256" {
			t.Errorf("kty, kid, alg = %v, %v, %v", m["kty"], m["kid"], m["alg"])
		}
		if _, ok := m["crv"]; ok {
			t.Error("an RSA JWK has crv")
		}
		n := new(big.Int).SetBytes(b64url(t, m, "n"))
		e := new(big.Int).SetBytes(b64url(t, m, "e"))
		if n.Cmp(rsaKey.N) != 0 || !e.IsInt64() || e.Int64() != int64(rsaKey.E) {
			t.Error("n, e do not decode to the key")
		}
		if got := b64url(t, m, "e"); !bytes.Equal(got, []byte{1, 0, 1}) {
			t.Errorf("e = %x, want 010001", got)
		}
	})
	for _, curve := range curves {
		t.Run("ok EC "+curve, func(t *testing.T) {
			for range 4 {
				key, err := ecdsa.GenerateKey(alg.Curve(curve), rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				m, err := alg.JWK(&key.PublicKey, "k", alg.ES256)
				if err != nil {
					t.Fatal(err)
				}
				if m["kty"] != "EC" || m["crv"] != curve {
					t.Errorf("kty, crv = %v, %v; want EC, %s", m["kty"], m["crv"], curve)
				}
				x, y := b64url(t, m, "x"), b64url(t, m, "y")
				n := alg.CurveByteLen(curve)
				if len(x) != n || len(y) != n {
					t.Fatalf("x, y are %d, %d bytes; want %d each (RFC 7518 §6.2.1.2)", len(x), len(y), n)
				}
				pub, err := ecdsa.ParseUncompressedPublicKey(alg.Curve(curve), append(append([]byte{4}, x...), y...))
				if err != nil {
					t.Fatalf("x, y are not a point on %s: %v", curve, err)
				}
				if !pub.Equal(&key.PublicKey) {
					t.Error("x, y decode to another key")
				}
			}
		})
	}
	t.Run("ok Ed25519 no alg", func(t *testing.T) {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		m, err := alg.JWK(pub, "k", "")
		if err != nil {
			t.Fatal(err)
		}
		if m["kty"] != "OKP" || m["crv"] != "Ed25519" {
			t.Errorf("kty, crv = %v, %v; want OKP, Ed25519", m["kty"], m["crv"])
		}
		if _, ok := m["alg"]; ok {
			t.Error("alg present although none was given")
		}
		if x := b64url(t, m, "x"); !bytes.Equal(x, pub) {
			t.Errorf("x = %x, want %x", x, []byte(pub))
		}
	})
	t.Run("fail X25519", func(t *testing.T) {
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if m, err := alg.JWK(k.PublicKey(), "k", ""); err == nil {
			t.Errorf("JWK of an X25519 key = %v, want an error", m)
		}
	})
}

func TestSpecOf(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(alg.Curve("P-521"), rand.Reader)
	ed, _, _ := ed25519.GenerateKey(rand.Reader)
	for _, c := range []struct {
		name string
		pub  crypto.PublicKey
		want alg.Spec
	}{
		{"ok EC P-521", &ec.PublicKey, alg.Spec{Type: alg.EC, Size: 521, Curve: "P-521"}},
		{"ok Ed25519", ed, alg.Spec{Type: alg.Ed25519, Size: 256}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := alg.SpecOf(c.pub)
			if err != nil || got != c.want {
				t.Errorf("SpecOf = %+v, %v; want %+v", got, err, c.want)
			}
			// SpecOf must agree with NewSpec, which makes the specs keys are created with.
			if ns, err := alg.NewSpec(string(c.want.Type), c.want.Size, c.want.Curve); err != nil || ns != got {
				t.Errorf("NewSpec = %+v, %v; SpecOf = %+v", ns, err, got)
			}
		})
	}
}
