package software

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/fsutil"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// This file holds the optional capabilities of the software provider: HMAC,
// random bytes, import under its wrapping key and wrapped export.

var (
	_ provider.MACer    = (*Provider)(nil)
	_ provider.Randomer = (*Provider)(nil)
	_ provider.Importer = (*Provider)(nil)
	_ provider.Exporter = (*Provider)(nil)
)

// MAC implements provider.MACer.
func (p *Provider) MAC(_ context.Context, req provider.MACRequest) ([]byte, error) {
	f, err := p.performerFor(req.Spec, req.Algorithm, useMAC)
	if err != nil {
		return nil, err
	}
	k, err := p.load(req.Ref, req.Spec)
	if err != nil {
		return nil, err
	}
	mk, ok := k.(macKey)
	if !ok {
		return nil, wrongKey(req.Algorithm.Name)
	}
	return f.mac(mk, req.Algorithm, req.Data), nil
}

// Random implements provider.Randomer with crypto/rand.
func (p *Provider) Random(_ context.Context, n int) ([]byte, error) {
	p.mu.RLock()
	err := p.checkOpen()
	p.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return b, nil
}

// wrappingFile is the keystore file of the wrapping key.
const wrappingFile = "import-wrapping-key.sealed"

var wrappingAAD = []byte("keygrid software wrapping key v1")

// wrappingKeyBits is the size of the import wrapping key.
const wrappingKeyBits = 4096

// WrappingKey implements provider.Importer: an RSA-4096 key sealed under the
// master key in the keystore, made on first use.
func (p *Provider) WrappingKey(context.Context) (provider.WrappingKey, error) {
	k, err := p.wrappingKey()
	if err != nil {
		return provider.WrappingKey{}, err
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return provider.WrappingKey{}, err
	}
	return provider.WrappingKey{ID: wrappingKeyID(der), PublicKey: der}, nil
}

// wrappingKeyID names a wrapping key by its public key: the first 16 bytes
// of the SHA-256 of its SubjectPublicKeyInfo, in hex.
func wrappingKeyID(spki []byte) string {
	h := sha256.Sum256(spki)
	return hex.EncodeToString(h[:16])
}

// wrappingKey loads the wrapping key, making and storing it the first time.
// Makers are serialised by wrapMu, so two first calls make one key.
func (p *Provider) wrappingKey() (*rsa.PrivateKey, error) {
	p.wrapMu.Lock()
	defer p.wrapMu.Unlock()
	if p.wrapping != nil {
		return p.wrapping, nil
	}
	path := filepath.Join(p.dir, wrappingFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		var f keyFile
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("software provider %q: the wrapping key file is corrupt", p.name)
		}
		raw, err := p.open(f.Sealed, wrappingAAD)
		if err != nil {
			return nil, fmt.Errorf("software provider %q: the wrapping key does not open under the master key", p.name)
		}
		defer clear(raw)
		k, err := x509.ParsePKCS1PrivateKey(raw)
		if err != nil {
			return nil, fmt.Errorf("software provider %q: the wrapping key file is corrupt", p.name)
		}
		p.wrapping = k
		return k, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("software provider %q: wrapping key: %w", p.name, err)
	}
	k, err := rsa.GenerateKey(rand.Reader, wrappingKeyBits)
	if err != nil {
		return nil, err
	}
	raw := x509.MarshalPKCS1PrivateKey(k)
	defer clear(raw)
	sealed, err := p.seal(raw, wrappingAAD)
	if err != nil {
		return nil, err
	}
	b, err = json.Marshal(keyFile{Version: 1, Spec: "RSA-4096", Sealed: sealed})
	if err != nil {
		return nil, err
	}
	if err := fsutil.CreateFile(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("software provider %q: write wrapping key: %w", p.name, err)
	}
	p.wrapping = k
	return k, nil
}

// ImportKey implements provider.Importer: the material is opened in memory,
// checked, sealed at once and its plaintext cleared.
func (p *Provider) ImportKey(ctx context.Context, req provider.ImportKeyRequest) (provider.CreatedKey, error) {
	if !objectIDPattern.MatchString(req.ObjectID) {
		return provider.CreatedKey{}, kgerr.Invalid("object id must be 32 lowercase hex characters")
	}
	if err := p.caps.CheckSpec(req.Spec); err != nil {
		return provider.CreatedKey{}, err
	}
	wk, err := p.wrappingKey()
	if err != nil {
		return provider.CreatedKey{}, err
	}
	if id := p.mustWrappingID(wk); req.WrappingKeyID != id {
		return provider.CreatedKey{}, kgerr.Invalid("wrapping_key_id does not name this provider's wrapping key (fetch it again)")
	}
	raw, err := alg.UnwrapRSAAES(wk, req.Wrapped)
	if err != nil {
		return provider.CreatedKey{}, kgerr.Wrap(kgerr.KindInvalidInput, err, "wrapped_key does not open under the wrapping key: wrong wrapping key, or corrupt wrapping")
	}
	defer clear(raw)
	priv, pub, err := checkMaterial(req.Spec, raw, req.PublicKey)
	if err != nil {
		return provider.CreatedKey{}, err
	}
	if err := p.storeKey(ctx, req.ObjectID, req.Spec, req.Extractable, raw, priv); err != nil {
		return provider.CreatedKey{}, err
	}
	return provider.CreatedKey{Ref: req.ObjectID, PublicKey: pub}, nil
}

func (p *Provider) mustWrappingID(k *rsa.PrivateKey) string {
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return ""
	}
	return wrappingKeyID(der)
}

// checkMaterial checks imported material against the spec and, for a
// private key, against the public key the caller gave (equal keys, and a
// test signature by the private key that the given public key verifies).
// It returns the parsed private key and its public key's DER.
func checkMaterial(spec alg.Spec, raw, givenPub []byte) (any, []byte, error) {
	if alg.Secret(spec.Type) {
		if givenPub != nil {
			return nil, nil, kgerr.Invalid("public_key does not apply to secret keys")
		}
		if len(raw) != spec.Size/8 {
			return nil, nil, kgerr.Invalid(fmt.Sprintf("the key material is %d bytes; a %s key is %d", len(raw), spec, spec.Size/8))
		}
		return nil, nil, nil
	}
	if givenPub == nil {
		return nil, nil, kgerr.Invalid("public_key is required to import a private key")
	}
	priv, err := x509.ParsePKCS8PrivateKey(raw)
	if err != nil {
		return nil, nil, kgerr.Invalid("the key material is not a PKCS#8 private key")
	}
	if err := alg.CheckPrivateSpec(spec, priv); err != nil {
		return nil, nil, err
	}
	given, err := x509.ParsePKIXPublicKey(givenPub)
	if err != nil {
		return nil, nil, kgerr.Invalid("public_key is not a SubjectPublicKeyInfo")
	}
	signer := priv.(crypto.Signer)
	if err := testSignature(signer, given); err != nil {
		return nil, nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, nil, err
	}
	if !bytes.Equal(pub, givenPub) {
		return nil, nil, kgerr.Invalid("public_key does not belong to the imported private key")
	}
	return priv, pub, nil
}

// testSignature signs a fixed message with priv and verifies it with pub.
func testSignature(priv crypto.Signer, pub crypto.PublicKey) error {
	msg := []byte("keygrid import check")
	digest := sha256.Sum256(msg)
	mismatch := kgerr.Invalid("public_key does not belong to the imported private key")
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		sig, err := rsa.SignPSS(rand.Reader, k, crypto.SHA256, digest[:], nil)
		if pk, ok := pub.(*rsa.PublicKey); err != nil || !ok || rsa.VerifyPSS(pk, crypto.SHA256, digest[:], sig, nil) != nil {
			return mismatch
		}
	case *ecdsa.PrivateKey:
		sig, err := ecdsa.SignASN1(rand.Reader, k, digest[:])
		if pk, ok := pub.(*ecdsa.PublicKey); err != nil || !ok || !ecdsa.VerifyASN1(pk, digest[:], sig) {
			return mismatch
		}
	case ed25519.PrivateKey:
		sig := ed25519.Sign(k, msg)
		if pk, ok := pub.(ed25519.PublicKey); !ok || !ed25519.Verify(pk, msg, sig) {
			return mismatch
		}
	default:
		return mismatch
	}
	return nil
}

// ExportKey implements provider.Exporter: only keys stored extractable.
func (p *Provider) ExportKey(_ context.Context, req provider.ExportKeyRequest) ([]byte, error) {
	pub, err := alg.ParseWrappingPublicKey(req.WrappingKey)
	if err != nil {
		return nil, err
	}
	f, err := p.readKeyFile(req.Ref)
	if err != nil {
		return nil, err
	}
	if !f.Extractable {
		return nil, kgerr.New(kgerr.KindKeyNotExtractable, "the key material is not extractable")
	}
	k, err := p.load(req.Ref, req.Spec)
	if err != nil {
		return nil, err
	}
	var raw []byte
	switch k := k.(type) {
	case *aesKey:
		raw = bytes.Clone(k.raw)
	case macKey:
		raw = bytes.Clone(k)
	default:
		if raw, err = x509.MarshalPKCS8PrivateKey(k); err != nil {
			return nil, err
		}
	}
	defer clear(raw)
	return alg.WrapRSAAES(pub, raw)
}
