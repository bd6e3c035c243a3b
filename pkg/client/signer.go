package client

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// Signer is a crypto.Signer (and, for RSA keys, a crypto.Decrypter) whose
// private key stays in the gateway. It is bound to the key version that was
// current when it was made: after the key is rotated, Sign fails with
// ErrKeyRotated (the signature would not match Public); make a new Signer.
type Signer struct {
	c       *Client
	key     string
	version int
	pub     crypto.PublicKey
	ctx     context.Context
}

// ErrKeyRotated is returned by Signer.Sign after the key was rotated.
var ErrKeyRotated = errors.New("client: the key was rotated since this Signer was made; make a new one")

// Signer returns a crypto.Signer for key. ctx is used for every call the
// signer makes (crypto.Signer has no context of its own).
func (c *Client) Signer(ctx context.Context, key string) (*Signer, error) {
	pk, err := c.PublicKey(ctx, key, 0)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode([]byte(pk.PublicKey))
	if block == nil {
		return nil, errors.New("client: server sent no PEM public key")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("client: public key: %w", err)
	}
	return &Signer{c: c, key: key, version: pk.KeyVersion, pub: pub, ctx: ctx}, nil
}

// Public implements crypto.Signer.
func (s *Signer) Public() crypto.PublicKey { return s.pub }

var hashSuffix = map[crypto.Hash]string{crypto.SHA256: "256", crypto.SHA384: "384", crypto.SHA512: "512"}

// algorithmFor maps Go's signer options to the gateway's algorithm names.
func algorithmFor(pub crypto.PublicKey, opts crypto.SignerOpts) (string, error) {
	h := opts.HashFunc()
	switch pub.(type) {
	case ed25519.PublicKey:
		if h != 0 {
			return "", errors.New("client: Ed25519 signs the message; pass crypto.Hash(0)")
		}
		return "EdDSA", nil
	}
	suffix, ok := hashSuffix[h]
	if !ok {
		return "", fmt.Errorf("client: hash %v is not supported (SHA-256, SHA-384, SHA-512)", h)
	}
	switch pub.(type) {
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			if pss.SaltLength != rsa.PSSSaltLengthEqualsHash && pss.SaltLength != rsa.PSSSaltLengthAuto && pss.SaltLength != h.Size() {
				return "", errors.New("client: the gateway signs PSS with salt length = hash length")
			}
			return "PS" + suffix, nil
		}
		return "RS" + suffix, nil
	case *ecdsa.PublicKey:
		return "ES" + suffix, nil
	}
	return "", fmt.Errorf("client: unsupported public key %T", pub)
}

// Sign implements crypto.Signer: digest is the hash (or, for Ed25519, the
// message). ECDSA signatures are ASN.1 DER, as crypto/ecdsa makes them.
func (s *Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	a, err := algorithmFor(s.pub, opts)
	if err != nil {
		return nil, err
	}
	req := apitypes.SignRequest{Algorithm: a}
	if a == "EdDSA" {
		req.Data = digest
	} else {
		req.Digest = digest
	}
	resp, err := s.c.Sign(s.ctx, s.key, req)
	if err != nil {
		return nil, err
	}
	if resp.KeyVersion != s.version {
		return nil, ErrKeyRotated
	}
	return resp.Signature, nil
}

// Decrypt implements crypto.Decrypter for RSA-OAEP keys (SHA-1 or SHA-256,
// no label).
func (s *Signer) Decrypt(_ io.Reader, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	o, ok := opts.(*rsa.OAEPOptions)
	if !ok {
		return nil, errors.New("client: only RSA-OAEP decryption is supported (pass *rsa.OAEPOptions)")
	}
	if len(o.Label) != 0 {
		return nil, errors.New("client: RSA-OAEP labels are not supported")
	}
	if o.MGFHash != 0 && o.MGFHash != o.Hash {
		return nil, errors.New("client: MGF1 must use the OAEP hash")
	}
	var a string
	switch o.Hash {
	case crypto.SHA1:
		a = "RSA-OAEP"
	case crypto.SHA256:
		a = "RSA-OAEP-256"
	default:
		return nil, fmt.Errorf("client: OAEP hash %v is not supported", o.Hash)
	}
	resp, err := s.c.Decrypt(s.ctx, s.key, apitypes.DecryptRequest{Ciphertext: ciphertext, Algorithm: a, KeyVersion: s.version})
	if err != nil {
		return nil, err
	}
	return resp.Plaintext, nil
}

var (
	_ crypto.Signer    = (*Signer)(nil)
	_ crypto.Decrypter = (*Signer)(nil)
)
