package service

import (
	"context"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// Limits on operation inputs.
const (
	// MaxDataBytes caps data to sign or verify and plaintext to encrypt.
	MaxDataBytes = 512 * 1024
	// MaxKeyMaterialBytes caps key material to wrap.
	MaxKeyMaterialBytes = 16 * 1024
)

// use is what an operation needs of a key.
type use struct {
	usage alg.Usage
	kind  alg.Kind
	// creates is true for operations that make new protected output (sign,
	// encrypt, wrap), which an expired key refuses; verify, decrypt and
	// unwrap still work after expiry.
	creates bool
}

var (
	useSign    = use{alg.UsageSign, alg.KindSign, true}
	useVerify  = use{alg.UsageVerify, alg.KindSign, false}
	useEncrypt = use{alg.UsageEncrypt, alg.KindEncrypt, true}
	useDecrypt = use{alg.UsageDecrypt, alg.KindEncrypt, false}
	useWrap    = use{alg.UsageWrap, alg.KindWrap, true}
	useUnwrap  = use{alg.UsageUnwrap, alg.KindWrap, false}
)

// prepare loads a key for an operation and checks state, usage, expiry and
// the algorithm (requested, or the key's own). It returns the key, the
// algorithm and the provider.
func (s *Service) prepare(ctx context.Context, o *op, ref string, u use, algorithm string) (*store.Key, alg.Info, provider.Provider, error) {
	k, err := s.getKey(ctx, ref, auth.Action(o.name))
	o.key = k
	if err != nil {
		return nil, alg.Info{}, nil, err
	}
	o.algorithm = algorithm
	switch k.State {
	case store.StateActive:
	case store.StateInactive:
		return nil, alg.Info{}, nil, kgerr.New(kgerr.ErrKeyInactive.Code, fmt.Sprintf("key %q is inactive", k.Name))
	default:
		return nil, alg.Info{}, nil, kgerr.New(kgerr.ErrKeyInactive.Code, fmt.Sprintf("key %q is %s", k.Name, k.State))
	}
	if !slices.Contains(k.Usage, string(u.usage)) {
		return nil, alg.Info{}, nil, kgerr.New(kgerr.ErrUsageNotPermitted.Code,
			fmt.Sprintf("key %q may not %s (usage: %v)", k.Name, u.usage, k.Usage))
	}
	if u.creates && expired(k, s.now()) {
		return nil, alg.Info{}, nil, kgerr.New(kgerr.ErrKeyExpired.Code,
			fmt.Sprintf("key %q expired at %s; it may still verify, decrypt and unwrap", k.Name, k.ExpiresAt.Format("2006-01-02T15:04:05Z07:00")))
	}
	if algorithm == "" {
		algorithm = k.Algorithm
		if a, err := alg.Lookup(algorithm); err != nil || a.Kind != u.kind {
			// The key's own algorithm is of another kind (an RSA key with
			// both usages): use the default of this kind.
			algorithm = string(alg.Default(specOf(k), []alg.Usage{u.usage}))
		}
	}
	o.algorithm = algorithm
	a, err := alg.Lookup(algorithm)
	if err != nil {
		return nil, alg.Info{}, nil, err
	}
	if err := alg.Compatible(specOf(k), a); err != nil {
		return nil, alg.Info{}, nil, err
	}
	if a.Kind != u.kind {
		return nil, alg.Info{}, nil, kgerr.New(kgerr.ErrUnsupportedAlgorithm.Code, fmt.Sprintf("algorithm %s cannot %s", a.Name, u.usage))
	}
	p, err := s.providerFor(k)
	if err != nil {
		return nil, alg.Info{}, nil, err
	}
	if err := p.Capabilities().CheckAlgorithm(a.Name); err != nil {
		return nil, alg.Info{}, nil, err
	}
	return k, a, p, nil
}

// version picks version n of k (0: current) for an operation.
func version(k *store.Key, n int) (*store.Version, error) {
	if n == 0 {
		if v := k.Current(); v != nil {
			return v, nil
		}
		return nil, kgerr.New(kgerr.ErrKeyInactive.Code, fmt.Sprintf("key %q has no active version", k.Name))
	}
	v := k.Version(n)
	if v == nil || v.State != store.StateActive {
		return nil, kgerr.New(kgerr.ErrKeyNotFound.Code, fmt.Sprintf("key %q has no version %d", k.Name, n))
	}
	return v, nil
}

// signInput returns what the provider signs: the digest (given, whose length
// is checked, or computed from data) or, for EdDSA, the message.
func signInput(a alg.Info, data, digest []byte) ([]byte, error) {
	switch {
	case data != nil && digest != nil:
		return nil, kgerr.Invalid("send data or digest, not both")
	case data == nil && digest == nil:
		return nil, kgerr.Invalid("data or digest is required")
	case len(data) > MaxDataBytes:
		return nil, kgerr.New(kgerr.ErrPayloadTooLarge.Code, fmt.Sprintf("data is larger than %d bytes; send a digest instead", MaxDataBytes))
	case digest != nil:
		if err := alg.CheckDigest(a, digest); err != nil {
			return nil, err
		}
		return digest, nil
	case a.Hash == 0: // EdDSA signs the message
		return data, nil
	}
	return alg.Digest(a, data), nil
}

func checkSignatureFormat(f string) error {
	switch f {
	case "", "der", "raw":
		return nil
	}
	return kgerr.Invalid(fmt.Sprintf("signature_format %q is not der or raw", f))
}

// Sign signs data or a digest with the current version of a key.
func (s *Service) Sign(ctx context.Context, ref string, req apitypes.SignRequest) (_ *apitypes.SignResponse, err error) {
	o := s.begin("sign")
	defer s.finish(ctx, o, &err)
	k, a, p, err := s.prepare(ctx, o, ref, useSign, req.Algorithm)
	if err != nil {
		return nil, err
	}
	if err := checkSignatureFormat(req.SignatureFormat); err != nil {
		return nil, err
	}
	in, err := signInput(a, req.Data, req.Digest)
	if err != nil {
		return nil, err
	}
	v, err := version(k, 0)
	if err != nil {
		return nil, err
	}
	o.version = v.Version
	sig, err := p.Sign(ctx, provider.SignRequest{Ref: v.ProviderRef, Spec: specOf(k), Algorithm: a, Input: in})
	if err != nil {
		return nil, err
	}
	if a.KeyType == alg.EC && req.SignatureFormat != "raw" {
		if sig, err = alg.ECDSARawToDER(sig); err != nil {
			return nil, err
		}
	}
	return &apitypes.SignResponse{Signature: sig, Algorithm: string(a.Name), KeyID: k.ID, KeyVersion: v.Version}, nil
}

// Verify checks a signature with the public key of a version (default:
// current). A signature that does not verify is a result, not an error.
func (s *Service) Verify(ctx context.Context, ref string, req apitypes.VerifyRequest) (_ *apitypes.VerifyResponse, err error) {
	o := s.begin("verify")
	defer s.finish(ctx, o, &err)
	k, a, _, err := s.prepare(ctx, o, ref, useVerify, req.Algorithm)
	if err != nil {
		return nil, err
	}
	if err := checkSignatureFormat(req.SignatureFormat); err != nil {
		return nil, err
	}
	if len(req.Signature) == 0 {
		return nil, kgerr.Invalid("signature is required")
	}
	in, err := signInput(a, req.Data, req.Digest)
	if err != nil {
		return nil, err
	}
	// With a key_version, that version; without one, every active version,
	// newest first, so that signatures made before a rotation still verify.
	candidates := []*store.Version{}
	if req.KeyVersion != 0 {
		v, err := version(k, req.KeyVersion)
		if err != nil {
			return nil, err
		}
		candidates = append(candidates, v)
	} else {
		for i := len(k.Versions) - 1; i >= 0; i-- {
			if k.Versions[i].State == store.StateActive {
				candidates = append(candidates, &k.Versions[i])
			}
		}
		if len(candidates) == 0 {
			return nil, kgerr.New(kgerr.ErrKeyInactive.Code, fmt.Sprintf("key %q has no active version", k.Name))
		}
	}
	for _, v := range candidates {
		pub, err := s.publicKey(v)
		if err != nil {
			return nil, err
		}
		ok, err := verifySignature(pub, a, k.Curve, in, req.Signature, req.SignatureFormat)
		if err != nil {
			return nil, err
		}
		if ok {
			o.version = v.Version
			return &apitypes.VerifyResponse{Valid: true, KeyID: k.ID, KeyVersion: v.Version}, nil
		}
	}
	o.version = candidates[0].Version
	return &apitypes.VerifyResponse{Valid: false, KeyID: k.ID, KeyVersion: candidates[0].Version}, nil
}

// verifySignature checks sig. ECDSA signatures are DER, or raw r‖s when
// format is "raw"; with no format, a signature that is not valid DER and has
// the raw length is tried as raw.
func verifySignature(pub crypto.PublicKey, a alg.Info, curve string, in, sig []byte, format string) (bool, error) {
	if a.KeyType != alg.EC {
		return alg.Verify(pub, a, in, sig)
	}
	n := alg.CurveByteLen(curve)
	if format != "raw" {
		if ok, err := alg.Verify(pub, a, in, sig); ok || err != nil || format == "der" || len(sig) != 2*n {
			return ok, err
		}
	}
	if len(sig) != 2*n {
		return false, nil
	}
	der, err := alg.ECDSARawToDER(sig)
	if err != nil {
		return false, nil
	}
	return alg.Verify(pub, a, in, der)
}

// The AES-GCM ciphertext envelope:
//
//	'K' 'G' 0x01 | key version (uint32 BE) | nonce length (1 byte) | nonce | ciphertext ‖ tag
//
// The first 7 bytes are bound into the GCM additional data before the
// caller's AAD, so the recorded version cannot be changed.
const (
	envelopeMagic0, envelopeMagic1, envelopeFormat = 'K', 'G', 1
	envelopePrefixLen                              = 7
)

func envelopePrefix(version int) []byte {
	b := []byte{envelopeMagic0, envelopeMagic1, envelopeFormat, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[3:], uint32(version))
	return b
}

// ParseEnvelope splits an AES-GCM envelope into version, nonce and
// ciphertext.
func ParseEnvelope(b []byte) (version int, nonce, ct []byte, err error) {
	if len(b) < envelopePrefixLen+1 || b[0] != envelopeMagic0 || b[1] != envelopeMagic1 || b[2] != envelopeFormat {
		return 0, nil, nil, kgerr.New(kgerr.ErrDecryptionFailed.Code, "ciphertext is not a KeyGrid AES-GCM envelope")
	}
	version = int(binary.BigEndian.Uint32(b[3:7]))
	n := int(b[7])
	rest := b[envelopePrefixLen+1:]
	if version < 1 || n < 12 || n > 16 || len(rest) < n+16 {
		return 0, nil, nil, kgerr.New(kgerr.ErrDecryptionFailed.Code, "ciphertext envelope is malformed")
	}
	return version, rest[:n], rest[n:], nil
}

func envelopeAAD(version int, aad []byte) []byte {
	return append(envelopePrefix(version), aad...)
}

// Encrypt encrypts with the current version: AES-GCM in the provider (into
// an envelope), RSA-OAEP with the public key.
func (s *Service) Encrypt(ctx context.Context, ref string, req apitypes.EncryptRequest) (_ *apitypes.EncryptResponse, err error) {
	o := s.begin("encrypt")
	defer s.finish(ctx, o, &err)
	k, a, p, err := s.prepare(ctx, o, ref, useEncrypt, req.Algorithm)
	if err != nil {
		return nil, err
	}
	pt := req.Plaintext
	switch {
	case pt != nil && req.Data != nil:
		return nil, kgerr.Invalid("send plaintext or data (its alias), not both")
	case pt == nil:
		pt = req.Data
	}
	if pt == nil {
		return nil, kgerr.Invalid("plaintext is required")
	}
	if len(pt) > MaxDataBytes {
		return nil, kgerr.New(kgerr.ErrPayloadTooLarge.Code, fmt.Sprintf("plaintext is larger than %d bytes", MaxDataBytes))
	}
	v, err := version(k, 0)
	if err != nil {
		return nil, err
	}
	o.version = v.Version
	resp := &apitypes.EncryptResponse{Algorithm: string(a.Name), KeyID: k.ID, KeyVersion: v.Version}
	if a.KeyType == alg.RSA {
		if req.AAD != nil {
			return nil, kgerr.Invalid("RSA-OAEP takes no aad")
		}
		pub, err := s.publicKey(v)
		if err != nil {
			return nil, err
		}
		if resp.Ciphertext, err = alg.EncryptOAEP(pub, a, pt); err != nil {
			return nil, err
		}
		return resp, nil
	}
	r, err := p.Encrypt(ctx, provider.EncryptRequest{Ref: v.ProviderRef, Spec: specOf(k), Algorithm: a,
		Plaintext: pt, AAD: envelopeAAD(v.Version, req.AAD)})
	if err != nil {
		return nil, err
	}
	env := make([]byte, 0, envelopePrefixLen+1+len(r.Nonce)+len(r.Ciphertext))
	env = append(append(env, envelopePrefix(v.Version)...), byte(len(r.Nonce)))
	resp.Ciphertext = append(append(env, r.Nonce...), r.Ciphertext...)
	return resp, nil
}

// Decrypt decrypts an AES-GCM envelope (with the version it records) or an
// RSA-OAEP ciphertext (with key_version, default current).
func (s *Service) Decrypt(ctx context.Context, ref string, req apitypes.DecryptRequest) (_ *apitypes.DecryptResponse, err error) {
	o := s.begin("decrypt")
	defer s.finish(ctx, o, &err)
	k, a, p, err := s.prepare(ctx, o, ref, useDecrypt, req.Algorithm)
	if err != nil {
		return nil, err
	}
	if len(req.Ciphertext) == 0 {
		return nil, kgerr.Invalid("ciphertext is required")
	}
	dr := provider.DecryptRequest{Spec: specOf(k), Algorithm: a, Ciphertext: req.Ciphertext}
	n := req.KeyVersion
	if a.KeyType == alg.AES {
		var ev int
		if ev, dr.Nonce, dr.Ciphertext, err = ParseEnvelope(req.Ciphertext); err != nil {
			return nil, err
		}
		if n != 0 && n != ev {
			return nil, kgerr.Invalid(fmt.Sprintf("key_version %d does not match the ciphertext's version %d", n, ev))
		}
		n, dr.AAD = ev, envelopeAAD(ev, req.AAD)
	} else if req.AAD != nil {
		return nil, kgerr.Invalid("RSA-OAEP takes no aad")
	}
	v, err := version(k, n)
	if err != nil {
		if a.KeyType == alg.AES && errors.Is(err, kgerr.ErrKeyNotFound) {
			// The version came from the envelope: a version the key does
			// not have means the ciphertext is not one of this key's.
			return nil, kgerr.Wrap(kgerr.ErrDecryptionFailed.Code, err, "ciphertext names a key version this key does not have")
		}
		return nil, err
	}
	o.version, dr.Ref = v.Version, v.ProviderRef
	pt, err := p.Decrypt(ctx, dr)
	if err != nil {
		return nil, err
	}
	return &apitypes.DecryptResponse{Plaintext: pt, KeyID: k.ID, KeyVersion: v.Version}, nil
}

// Wrap wraps key material under the current version of a key-encryption
// key (RFC 5649, AES key wrap with padding).
func (s *Service) Wrap(ctx context.Context, ref string, req apitypes.WrapRequest) (_ *apitypes.WrapResponse, err error) {
	o := s.begin("wrap")
	defer s.finish(ctx, o, &err)
	k, a, p, err := s.prepare(ctx, o, ref, useWrap, req.Algorithm)
	if err != nil {
		return nil, err
	}
	if len(req.KeyMaterial) == 0 {
		return nil, kgerr.Invalid("key_material is required")
	}
	if len(req.KeyMaterial) > MaxKeyMaterialBytes {
		return nil, kgerr.New(kgerr.ErrPayloadTooLarge.Code, fmt.Sprintf("key_material is larger than %d bytes", MaxKeyMaterialBytes))
	}
	v, err := version(k, 0)
	if err != nil {
		return nil, err
	}
	o.version = v.Version
	w, err := p.WrapKey(ctx, provider.WrapRequest{Ref: v.ProviderRef, Spec: specOf(k), KeyMaterial: req.KeyMaterial})
	if err != nil {
		return nil, err
	}
	return &apitypes.WrapResponse{WrappedKey: w, Algorithm: string(a.Name), KeyID: k.ID, KeyVersion: v.Version}, nil
}

// Unwrap unwraps key material with a version (default current) of a
// key-encryption key.
func (s *Service) Unwrap(ctx context.Context, ref string, req apitypes.UnwrapRequest) (_ *apitypes.UnwrapResponse, err error) {
	o := s.begin("unwrap")
	defer s.finish(ctx, o, &err)
	k, _, p, err := s.prepare(ctx, o, ref, useUnwrap, req.Algorithm)
	if err != nil {
		return nil, err
	}
	if len(req.WrappedKey) < 16 || len(req.WrappedKey)%8 != 0 || len(req.WrappedKey) > MaxKeyMaterialBytes+16 {
		return nil, kgerr.Invalid("wrapped_key must be a multiple of 8 bytes, at least 16")
	}
	v, err := version(k, req.KeyVersion)
	if err != nil {
		return nil, err
	}
	o.version = v.Version
	m, err := p.UnwrapKey(ctx, provider.UnwrapRequest{Ref: v.ProviderRef, Spec: specOf(k), Wrapped: req.WrappedKey})
	if err != nil {
		return nil, err
	}
	return &apitypes.UnwrapResponse{KeyMaterial: m, KeyID: k.ID, KeyVersion: v.Version}, nil
}

// PublicKey returns the public key of a version (default current) as PEM
// and JWK. It needs no usage: public keys are public.
func (s *Service) PublicKey(ctx context.Context, ref string, n int) (_ *apitypes.PublicKey, err error) {
	o := s.begin("public_key")
	defer s.finish(ctx, o, &err)
	k, err := s.getKey(ctx, ref, auth.ActionPublicKey)
	o.key = k
	if err != nil {
		return nil, err
	}
	if k.KeyType == string(alg.AES) {
		return nil, kgerr.Invalid(fmt.Sprintf("key %q is a secret key: it has no public key", k.Name))
	}
	v, err := version(k, n)
	if err != nil {
		return nil, err
	}
	o.version = v.Version
	pub, err := s.publicKey(v)
	if err != nil {
		return nil, err
	}
	jwk, err := alg.JWK(pub, fmt.Sprintf("%s.%d", k.ID, v.Version), alg.Algorithm(k.Algorithm))
	if err != nil {
		return nil, err
	}
	return &apitypes.PublicKey{KeyID: k.ID, KeyVersion: v.Version, PublicKey: alg.PublicKeyPEM(v.PublicKey), JWK: jwk,
		KeyType: k.KeyType, Algorithm: k.Algorithm, KeySize: k.KeySize}, nil
}
