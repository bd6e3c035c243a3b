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
	"net/http"
	"net/url"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// WrappingKey returns a provider's import wrapping key.
func (c *Client) WrappingKey(ctx context.Context, provider string) (*apitypes.WrappingKeyResponse, error) {
	var out apitypes.WrappingKeyResponse
	return &out, c.do(ctx, http.MethodGet, "/api/v1/providers/"+url.PathEscape(provider)+"/wrapping-key", nil, &out)
}

// ImportKey imports key material the caller has wrapped already.
func (c *Client) ImportKey(ctx context.Context, req apitypes.ImportKeyRequest) (*apitypes.Key, error) {
	var out apitypes.Key
	return &out, c.do(ctx, http.MethodPost, "/api/v1/keys/import", req, &out)
}

// Import imports key material, wrapping it here, on the client, under the
// provider's wrapping key with the scheme the wrapping key names
// (RSA_AES_KEY_WRAP_SHA_256, or RSA_AES_KEY_WRAP_SHA_1 on a token whose
// RSA-OAEP is SHA-1 only): the material never leaves the process unwrapped. key is a crypto.Signer private key
// (*rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey) or the raw bytes
// of an AES or HMAC key. The key_spec's type, size and curve are filled
// from the key when empty.
func (c *Client) Import(ctx context.Context, provider, name string, spec apitypes.KeySpec, key any) (*apitypes.Key, error) {
	material, pubPEM, err := ImportMaterial(&spec, key)
	if err != nil {
		return nil, err
	}
	defer clear(material)
	wk, err := c.WrappingKey(ctx, provider)
	if err != nil {
		return nil, err
	}
	wrapped, err := WrapForImportWith(wk.Algorithm, wk.PublicKey, material)
	if err != nil {
		return nil, err
	}
	return c.ImportKey(ctx, apitypes.ImportKeyRequest{Provider: provider, Name: name, KeySpec: spec,
		WrappedKey: wrapped, WrappingKeyID: wk.ID, WrappingAlgorithm: wk.Algorithm, PublicKey: pubPEM})
}

// ImportKeyVersion imports material the caller has wrapped already as the
// key's new current version.
func (c *Client) ImportKeyVersion(ctx context.Context, key string, req apitypes.ImportVersionRequest) (*apitypes.Key, error) {
	var out apitypes.Key
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/import-version"), req, &out)
}

// ImportVersion imports key material as the new current version of key,
// wrapping it here under the wrapping key of the key's provider, as Import.
func (c *Client) ImportVersion(ctx context.Context, key string, material any) (*apitypes.Key, error) {
	k, err := c.GetKey(ctx, key)
	if err != nil {
		return nil, err
	}
	spec := apitypes.KeySpec{KeyType: k.KeyType, KeySize: k.KeySize, Curve: k.Curve}
	raw, pubPEM, err := ImportMaterial(&spec, material)
	if err != nil {
		return nil, err
	}
	defer clear(raw)
	wk, err := c.WrappingKey(ctx, k.Provider)
	if err != nil {
		return nil, err
	}
	wrapped, err := WrapForImportWith(wk.Algorithm, wk.PublicKey, raw)
	if err != nil {
		return nil, err
	}
	return c.ImportKeyVersion(ctx, k.ID, apitypes.ImportVersionRequest{WrappedKey: wrapped, WrappingKeyID: wk.ID,
		WrappingAlgorithm: wk.Algorithm, PublicKey: pubPEM})
}

// ImportMaterial returns what is transported for key (PKCS#8 for private
// keys, the bytes for secret keys) and its public key PEM, completing spec.
func ImportMaterial(spec *apitypes.KeySpec, key any) (material []byte, pubPEM string, err error) {
	if raw, ok := key.([]byte); ok {
		if spec.KeyType == "" {
			return nil, "", errors.New("the key type (AES or HMAC) of raw key material must be given")
		}
		if spec.KeySize == 0 {
			spec.KeySize = 8 * len(raw)
		}
		return append([]byte(nil), raw...), "", nil
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, "", fmt.Errorf("cannot import a %T", key)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		spec.KeyType = "RSA"
		if spec.KeySize == 0 {
			spec.KeySize = k.N.BitLen()
		}
	case *ecdsa.PrivateKey:
		spec.KeyType = "EC"
		if spec.Curve == "" {
			spec.Curve = k.Curve.Params().Name
		}
	case ed25519.PrivateKey:
		spec.KeyType = "Ed25519"
	}
	material, err = x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, "", err
	}
	spki, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, "", err
	}
	return material, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})), nil
}

// WrapForImport wraps material under a wrapping key (PEM) with
// RSA_AES_KEY_WRAP_SHA_256.
func WrapForImport(wrappingKeyPEM string, material []byte) ([]byte, error) {
	return WrapForImportWith(alg.RSAAESKeyWrapSHA256, wrappingKeyPEM, material)
}

// WrapForImportWith wraps material under a wrapping key (PEM) with a scheme
// (the algorithm of a wrapping-key answer).
func WrapForImportWith(scheme, wrappingKeyPEM string, material []byte) ([]byte, error) {
	b, _ := pem.Decode([]byte(wrappingKeyPEM))
	if b == nil {
		return nil, errors.New("the wrapping key is not PEM")
	}
	pub, err := alg.ParseWrappingPublicKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	return alg.WrapRSAAESWith(scheme, pub, material)
}

// Export asks for a key's material wrapped for the holder of publicKeyPEM.
func (c *Client) Export(ctx context.Context, key string, req apitypes.ExportKeyRequest) (*apitypes.ExportKeyResponse, error) {
	var out apitypes.ExportKeyResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/export"), req, &out)
}

// DataKey makes a data key encrypted under key.
func (c *Client) DataKey(ctx context.Context, key string, req apitypes.DataKeyRequest) (*apitypes.DataKeyResponse, error) {
	var out apitypes.DataKeyResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/datakey"), req, &out)
}

// Rewrap encrypts a ciphertext again under the key's newest version.
func (c *Client) Rewrap(ctx context.Context, key string, req apitypes.RewrapRequest) (*apitypes.EncryptResponse, error) {
	var out apitypes.EncryptResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/rewrap"), req, &out)
}

// MAC computes an HMAC.
func (c *Client) MAC(ctx context.Context, key string, req apitypes.MACRequest) (*apitypes.MACResponse, error) {
	var out apitypes.MACResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/mac"), req, &out)
}

// VerifyMAC checks an HMAC.
func (c *Client) VerifyMAC(ctx context.Context, key string, req apitypes.VerifyMACRequest) (*apitypes.VerifyResponse, error) {
	var out apitypes.VerifyResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/verify-mac"), req, &out)
}

// Random returns random bytes from a provider's generator.
func (c *Client) Random(ctx context.Context, req apitypes.RandomRequest) ([]byte, error) {
	var out apitypes.RandomResponse
	if err := c.do(ctx, http.MethodPost, "/api/v1/random", req, &out); err != nil {
		return nil, err
	}
	return out.Random, nil
}

// Batch sends items (each with "op", "key" and the single request's
// fields) in one request; each result is the single response or an
// apitypes.BatchError.
func (c *Client) Batch(ctx context.Context, req apitypes.BatchRequest) (*apitypes.BatchResponse, error) {
	var out apitypes.BatchResponse
	return &out, c.do(ctx, http.MethodPost, "/api/v1/batch", req, &out)
}
