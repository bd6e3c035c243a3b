package alg_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
)

// FuzzParsePublicKey feeds DER (and the same bytes as PEM) to the public
// key parser and everything the service does with a parsed key (spec, JWK,
// PEM): nothing panics; what parses re-encodes to a key that parses the
// same; a JWK has coordinates of its curve's size.
func FuzzParsePublicKey(f *testing.F) {
	rk, _ := rsa.GenerateKey(rand.Reader, 1024)
	for _, c := range []elliptic.Curve{elliptic.P224(), elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		k, _ := ecdsa.GenerateKey(c, rand.Reader)
		der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
		f.Add(der)
	}
	ek, _, _ := ed25519.GenerateKey(rand.Reader)
	for _, pub := range []any{&rk.PublicKey, ek} {
		der, _ := x509.MarshalPKIXPublicKey(pub)
		f.Add(der)
	}
	f.Add([]byte{})
	f.Add([]byte{0x30, 0x00})
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(der []byte) {
			pub, err := alg.ParsePublicKey(der)
			if err != nil {
				return
			}
			again, err := x509.MarshalPKIXPublicKey(pub)
			if err != nil {
				t.Fatalf("a parsed key does not re-encode: %v", err)
			}
			pub2, err := alg.ParsePublicKey(again)
			if err != nil || !pub2.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
				t.Fatalf("re-encoded key does not parse the same: %v", err)
			}
			_, specErr := alg.SpecOf(pub)
			jwk, err := alg.JWK(pub, "k.1", "")
			if (specErr == nil) != (err == nil) {
				t.Fatalf("SpecOf (%v) and JWK (%v) disagree on whether %T is supported", specErr, err, pub)
			}
			if err != nil {
				return
			}
			if k, ok := pub.(*ecdsa.PublicKey); ok {
				n := alg.CurveByteLen(k.Curve.Params().Name)
				for _, c := range []string{"x", "y"} {
					b, err := base64.RawURLEncoding.DecodeString(jwk[c].(string))
					if err != nil || len(b) != n || n == 0 {
						t.Fatalf("JWK %s of a %s key is %d bytes, want %d", c, k.Curve.Params().Name, len(b), n)
					}
				}
			}
			block, _ := pem.Decode([]byte(alg.PublicKeyPEM(der)))
			if block == nil || !bytes.Equal(block.Bytes, der) {
				t.Fatal("PEM of the key does not decode to its DER")
			}
		}
		check(data)
		if block, _ := pem.Decode(data); block != nil {
			check(block.Bytes)
		}
	})
}
