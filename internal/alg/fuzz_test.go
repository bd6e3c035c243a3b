package alg_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"math/big"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// fuzzKEKs are the key-encryption keys the fuzz targets choose from: the
// RFC 5649 one (AES-192), and AES-128 and AES-256 ones.
func fuzzKEKs(t testing.TB) [][]byte {
	return [][]byte{
		unhex(t, rfc5649KEK),
		unhex(t, "000102030405060708090a0b0c0d0e0f"),
		unhex(t, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"),
	}
}

// FuzzUnwrapKWP checks that UnwrapKWP never panics, fails only with
// ErrUnwrap, and that what it accepts is exactly what WrapKWP makes; and that
// WrapKWP of any input unwraps back to it.
func FuzzUnwrapKWP(f *testing.F) {
	keks := fuzzKEKs(f)
	for _, v := range rfc5649Vectors {
		f.Add(uint8(0), unhex(f, v.wrapped))
		f.Add(uint8(0), unhex(f, v.key))
	}
	for i, n := range []int{1, 8, 9, 16, 33} {
		m := make([]byte, n)
		rand.Read(m)
		w, err := alg.WrapKWP(keks[i%len(keks)], m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), w)
	}
	f.Add(uint8(1), []byte{})
	f.Add(uint8(2), make([]byte, 16))
	f.Add(uint8(2), make([]byte, 24))
	f.Fuzz(func(t *testing.T, sel uint8, data []byte) {
		kek := keks[int(sel)%len(keks)]
		out, err := alg.UnwrapKWP(kek, data)
		if err != nil {
			if !errors.Is(err, alg.ErrUnwrap) {
				t.Fatalf("UnwrapKWP error %v is not ErrUnwrap", err)
			}
			if out != nil {
				t.Fatalf("UnwrapKWP returned %x with an error", out)
			}
		} else {
			if len(out) == 0 || len(out) <= len(data)-16 || len(out) > len(data)-8 {
				t.Fatalf("UnwrapKWP of %d bytes returned %d bytes", len(data), len(out))
			}
			again, err := alg.WrapKWP(kek, out)
			if err != nil || !bytes.Equal(again, data) {
				t.Fatalf("WrapKWP(UnwrapKWP(%x)) = %x, %v", data, again, err)
			}
		}
		if len(data) == 0 {
			return
		}
		w, err := alg.WrapKWP(kek, data)
		if err != nil {
			t.Fatalf("WrapKWP of %d bytes: %v", len(data), err)
		}
		if len(w) != (len(data)+7)/8*8+8 {
			t.Fatalf("WrapKWP of %d bytes returned %d bytes", len(data), len(w))
		}
		back, err := alg.UnwrapKWP(kek, w)
		if err != nil || !bytes.Equal(back, data) {
			t.Fatalf("UnwrapKWP(WrapKWP(%x)) = %x, %v", data, back, err)
		}
	})
}

// FuzzECDSADERToRaw checks that ECDSADERToRaw never panics, fails only with
// INVALID_INPUT, and accepts only canonical DER: what it accepts converts
// back to the same bytes.
func FuzzECDSADERToRaw(f *testing.F) {
	curves := []string{"P-256", "P-384", "P-521", "P-192"}
	for i, c := range curves[:3] {
		key, err := ecdsa.GenerateKey(alg.Curve(c), rand.Reader)
		if err != nil {
			f.Fatal(err)
		}
		der, err := ecdsa.SignASN1(rand.Reader, key, make([]byte, 32))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der, uint8(i))
	}
	one, _ := alg.ECDSARawToDER(fixedRS(32, []byte{1}, []byte{1}))
	f.Add(one, uint8(0))
	f.Add(append(one, 0), uint8(0))
	f.Add([]byte{0x30, 0x00}, uint8(1))
	f.Add([]byte{0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02}, uint8(2))
	f.Add([]byte{}, uint8(3))
	f.Fuzz(func(t *testing.T, der []byte, sel uint8) {
		curve := curves[int(sel)%len(curves)]
		raw, err := alg.ECDSADERToRaw(der, curve)
		if err != nil {
			if !errors.Is(err, kgerr.ErrInvalidInput) {
				t.Fatalf("ECDSADERToRaw error %v is not INVALID_INPUT", err)
			}
			return
		}
		n := alg.CurveByteLen(curve)
		if n == 0 || len(raw) != 2*n {
			t.Fatalf("ECDSADERToRaw(%x, %s) returned %d bytes", der, curve, len(raw))
		}
		if new(big.Int).SetBytes(raw[:n]).Sign() == 0 || new(big.Int).SetBytes(raw[n:]).Sign() == 0 {
			t.Fatalf("ECDSADERToRaw(%x) accepted a zero r or s", der)
		}
		back, err := alg.ECDSARawToDER(raw)
		if err != nil {
			t.Fatalf("ECDSARawToDER(%x): %v", raw, err)
		}
		if !bytes.Equal(back, der) {
			t.Fatalf("ECDSADERToRaw accepted non-canonical %x (canonical: %x)", der, back)
		}
	})
}

// FuzzECDSARawToDERMatchesASN1 holds the hand-written DER encoder to
// encoding/asn1's encoding of the same two integers.
func FuzzECDSARawToDERMatchesASN1(f *testing.F) {
	for _, s := range [][]byte{fixedRS(32, []byte{1}, []byte{1}), fixedRS(32, []byte{0x80}, []byte{0, 0x7f}), bytes.Repeat([]byte{0xff}, 132), make([]byte, 64), {0, 0}} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := alg.ECDSARawToDER(raw)
		if len(raw) == 0 || len(raw)%2 != 0 {
			if err == nil {
				t.Fatalf("ECDSARawToDER(%x) accepted an odd length", raw)
			}
			return
		}
		n := len(raw) / 2
		want, werr := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(raw[:n]), new(big.Int).SetBytes(raw[n:])})
		if err != nil || werr != nil || !bytes.Equal(got, want) {
			t.Fatalf("ECDSARawToDER(%x) = %x, %v; encoding/asn1: %x, %v", raw, got, err, want, werr)
		}
	})
}
