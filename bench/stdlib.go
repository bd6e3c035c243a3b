package main

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"flag"
	"fmt"

	"github.com/keygrid/keygrid-hsm/internal/alg"
)

// stdlibMain is the software provider's raw limit: Go's crypto packages on
// an in-memory key, doing the same work per operation (hash included).
func stdlibMain(args []string) (Result, error) {
	fs := flag.NewFlagSet("stdlib", flag.ContinueOnError)
	var c common
	c.register(fs)
	if err := fs.Parse(args); err != nil {
		return Result{}, err
	}
	a, err := alg.Lookup(c.alg)
	if err != nil {
		return Result{}, err
	}
	data := make([]byte, c.size)
	rand.Read(data)
	var op func() error
	switch {
	case a.Name == alg.EdDSA:
		_, k, _ := ed25519.GenerateKey(rand.Reader)
		op = func() error { ed25519.Sign(k, data); return nil }
	case a.KeyType == alg.EC:
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		op = func() error { _, _, err := ecdsa.Sign(rand.Reader, k, alg.Digest(a, data)); return err }
	case a.KeyType == alg.RSA:
		k, _ := rsa.GenerateKey(rand.Reader, 2048)
		op = func() error {
			d := alg.Digest(a, data)
			if a.PSS {
				_, err := rsa.SignPSS(rand.Reader, k, crypto.SHA256, d, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
				return err
			}
			_, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, d)
			return err
		}
	case a.KeyType == alg.AES:
		key := make([]byte, 32)
		rand.Read(key)
		b, _ := aes.NewCipher(key)
		g, _ := cipher.NewGCM(b)
		op = func() error {
			nonce := make([]byte, 12)
			rand.Read(nonce)
			g.Seal(nil, nonce, data, nil)
			return nil
		}
	default:
		return Result{}, fmt.Errorf("no stdlib loop for %s", c.alg)
	}
	return measure(c.concurrency, c.warmup, c.duration, func(int) error { return op() }), nil
}
