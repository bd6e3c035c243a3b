package software

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"math/big"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
)

// signECDSA's cut of SignASN1's DER gives r‖s that verify, on every curve
// and across many signatures (short r and s included: 1 in 256 has a
// leading zero byte).
func TestSignECDSARawVerifies(t *testing.T) {
	for curve, c := range map[string]elliptic.Curve{"P-256": elliptic.P256(), "P-384": elliptic.P384(), "P-521": elliptic.P521()} {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		n := alg.CurveByteLen(curve)
		for i := range 600 {
			d := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
			raw, err := signECDSA(k, alg.Info{}, alg.Spec{Curve: curve}, d[:])
			if err != nil || len(raw) != 2*n {
				t.Fatalf("%s: %d bytes, %v", curve, len(raw), err)
			}
			r, s := new(big.Int).SetBytes(raw[:n]), new(big.Int).SetBytes(raw[n:])
			if !ecdsa.Verify(&k.PublicKey, d[:], r, s) {
				t.Fatalf("%s: signature %d does not verify", curve, i)
			}
		}
	}
	if _, ok := derInt([]byte{0x30, 0x03, 0x02, 0x01, 0x80}, make([]byte, 32)); ok {
		t.Fatal("a negative INTEGER was read")
	}
}
