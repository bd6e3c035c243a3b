package service

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"slices"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/store"
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
	k, err := s.getKey(ctx, ref, o.op.action)
	o.key = k
	if err != nil {
		return nil, alg.Info{}, nil, err
	}
	o.algorithm = algorithm
	if k.State != store.StateActive {
		return nil, alg.Info{}, nil, refuseUnusable(k, "use")
	}
	if !slices.Contains(k.Usage, string(u.usage)) {
		return nil, alg.Info{}, nil, kgerr.New(kgerr.KindUsageNotPermitted,
			fmt.Sprintf("key %q may not %s (usage: %v)", k.Name, u.usage, k.Usage))
	}
	if u.creates && expired(k, s.now()) {
		return nil, alg.Info{}, nil, kgerr.New(kgerr.KindKeyExpired,
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
		return nil, alg.Info{}, nil, kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("algorithm %s cannot %s", a.Name, u.usage))
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

// enabled refuses a version below the key's min_decrypt_version: decrypt,
// unwrap and verify with it are disabled (its material stays).
func enabled(k *store.Key, v *store.Version) error {
	if v.Version < k.MinDecryptVersion {
		return kgerr.New(kgerr.KindKeyVersionDisabled, fmt.Sprintf("version %d of key %q is below its min_decrypt_version %d",
			v.Version, k.Name, k.MinDecryptVersion))
	}
	return nil
}

// version picks version n of k (0: current) for an operation.
func version(k *store.Key, n int) (*store.Version, error) {
	if n == 0 {
		if v := k.Current(); v != nil {
			return v, nil
		}
		return nil, kgerr.New(kgerr.KindKeyInactive, fmt.Sprintf("key %q has no active version", k.Name))
	}
	v := k.Version(n)
	if v == nil || v.State != store.StateActive {
		return nil, kgerr.New(kgerr.KindKeyNotFound, fmt.Sprintf("key %q has no version %d", k.Name, n))
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
		return nil, kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("data is larger than %d bytes; send a digest instead", MaxDataBytes))
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

func checkSignatureFormat(f SignatureFormat) error {
	switch f {
	case SignatureDefault, SignatureDER, SignatureRaw:
		return nil
	}
	return kgerr.Invalid(fmt.Sprintf("signature_format %s is not der or raw", kgerr.Quote(string(f))))
}

// Sign signs data or a digest with the current version of a key.
func (s *Service) Sign(ctx context.Context, req SignRequest) (out *SignResult, err error) {
	o := s.begin(opSign)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, a, p, err := s.prepare(ctx, o, req.Key, useSign, req.Algorithm)
	if err != nil {
		return nil, err
	}
	if err := checkSignatureFormat(req.Format); err != nil {
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
	if a.KeyType == alg.EC && req.Format != SignatureRaw {
		if sig, err = alg.ECDSARawToDER(sig); err != nil {
			return nil, err
		}
	}
	return &SignResult{Signature: sig, Algorithm: string(a.Name), KeyID: k.ID, KeyVersion: v.Version}, nil
}

// Verify checks a signature with the public key of a version (default:
// every active one, newest first). A signature that does not verify is a
// result, not an error.
func (s *Service) Verify(ctx context.Context, req VerifyRequest) (out *VerifyResult, err error) {
	o := s.begin(opVerify)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, a, _, err := s.prepare(ctx, o, req.Key, useVerify, req.Algorithm)
	if err != nil {
		return nil, err
	}
	if err := checkSignatureFormat(req.Format); err != nil {
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
	// newest first, so that signatures made before a rotation still verify
	// (down to min_decrypt_version).
	candidates, disabled := []*store.Version{}, []*store.Version{}
	if req.KeyVersion != 0 {
		v, err := version(k, req.KeyVersion)
		if err != nil {
			return nil, err
		}
		if err := enabled(k, v); err != nil {
			o.version = v.Version
			return nil, err
		}
		candidates = append(candidates, v)
	} else {
		for i := len(k.Versions) - 1; i >= 0; i-- {
			v := &k.Versions[i]
			switch {
			case v.State != store.StateActive:
			case enabled(k, v) != nil:
				disabled = append(disabled, v)
			default:
				candidates = append(candidates, v)
			}
		}
		if len(candidates) == 0 {
			return nil, kgerr.New(kgerr.KindKeyInactive, fmt.Sprintf("key %q has no active version", k.Name))
		}
	}
	res := &VerifyResult{Algorithm: string(a.Name), KeyID: k.ID}
	v, err := s.verifiedBy(k, a, in, req, candidates)
	if err != nil {
		return nil, err
	}
	if v != nil {
		o.version, res.Valid, res.KeyVersion = v.Version, true, v.Version
		return res, nil
	}
	// Not valid under an enabled version: a signature of a disabled one is
	// refused as such rather than reported invalid.
	if v, err := s.verifiedBy(k, a, in, req, disabled); err != nil || v != nil {
		if err == nil {
			o.version, err = v.Version, enabled(k, v)
		}
		return nil, err
	}
	o.version, res.KeyVersion = candidates[0].Version, candidates[0].Version
	return res, nil
}

// verifiedBy returns the first of versions whose public key verifies the
// signature, or nil.
func (s *Service) verifiedBy(k *store.Key, a alg.Info, in []byte, req VerifyRequest, versions []*store.Version) (*store.Version, error) {
	for _, v := range versions {
		pub, err := s.publicKey(v)
		if err != nil {
			return nil, err
		}
		ok, err := verifySignature(pub, a, k.Curve, in, req.Signature, req.Format)
		if err != nil {
			return nil, err
		}
		if ok {
			return v, nil
		}
	}
	return nil, nil
}

// verifySignature checks sig. ECDSA signatures are DER, or raw r‖s when
// format is "raw"; with no format, a signature that is not valid DER and has
// the raw length is tried as raw.
func verifySignature(pub crypto.PublicKey, a alg.Info, curve string, in, sig []byte, format SignatureFormat) (bool, error) {
	if a.KeyType != alg.EC {
		return alg.Verify(pub, a, in, sig)
	}
	n := alg.CurveByteLen(curve)
	if format != SignatureRaw {
		if ok, err := alg.Verify(pub, a, in, sig); ok || err != nil || format == SignatureDER || len(sig) != 2*n {
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

// gcmTagLen is the length of the AES-GCM tags the service makes and takes.
const gcmTagLen = 16

// Encrypt encrypts with the current version: AES-GCM in the provider,
// RSA-OAEP with the public key.
func (s *Service) Encrypt(ctx context.Context, req EncryptRequest) (out *EncryptResult, err error) {
	o := s.begin(opEncrypt)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	return s.encrypt(ctx, o, req)
}

// encrypt is Encrypt within operation o.
func (s *Service) encrypt(ctx context.Context, o *op, req EncryptRequest) (*EncryptResult, error) {
	k, a, p, err := s.prepare(ctx, o, req.Key, useEncrypt, req.Algorithm)
	if err != nil {
		return nil, err
	}
	pt := req.Plaintext
	if pt == nil {
		return nil, kgerr.Invalid("plaintext is required")
	}
	if len(pt) > MaxDataBytes {
		return nil, kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("plaintext is larger than %d bytes", MaxDataBytes))
	}
	v, err := version(k, 0)
	if err != nil {
		return nil, err
	}
	o.version = v.Version
	res := &EncryptResult{Algorithm: string(a.Name), KeyID: k.ID, KeyVersion: v.Version}
	if a.KeyType == alg.RSA {
		if req.AAD != nil {
			return nil, kgerr.Invalid("RSA-OAEP takes no aad")
		}
		pub, err := s.publicKey(v)
		if err != nil {
			return nil, err
		}
		if res.Ciphertext, err = alg.EncryptOAEP(pub, a, pt); err != nil {
			return nil, err
		}
		return res, nil
	}
	aad := req.AAD
	if req.Format != nil {
		aad = req.Format.AAD(v.Version, req.AAD)
	}
	r, err := p.Encrypt(ctx, provider.EncryptRequest{Ref: v.ProviderRef, Spec: specOf(k), Algorithm: a, Plaintext: pt, AAD: aad})
	if err != nil {
		return nil, err
	}
	if len(r.Ciphertext) < gcmTagLen {
		return nil, kgerr.New(kgerr.KindInternal, "the provider returned a ciphertext without a tag")
	}
	cut := len(r.Ciphertext) - gcmTagLen
	res.Ciphertext, res.Tag, res.Nonce = r.Ciphertext[:cut:cut], r.Ciphertext[cut:], r.Nonce
	return res, nil
}

// Decrypt decrypts AES-GCM (with the version the request or its format
// names) or RSA-OAEP (with KeyVersion, default current).
func (s *Service) Decrypt(ctx context.Context, req DecryptRequest) (out *DecryptResult, err error) {
	o := s.begin(opDecrypt)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	return s.decrypt(ctx, o, req)
}

// decrypt is Decrypt within operation o.
func (s *Service) decrypt(ctx context.Context, o *op, req DecryptRequest) (*DecryptResult, error) {
	k, a, p, err := s.prepare(ctx, o, req.Key, useDecrypt, req.Algorithm)
	if err != nil {
		return nil, err
	}
	// AES-GCM given apart may have an empty ciphertext (an empty plaintext):
	// the tag authenticates it.
	if len(req.Ciphertext) == 0 && (a.KeyType != alg.AES || req.Format != nil) {
		return nil, kgerr.Invalid("ciphertext is required")
	}
	dr := provider.DecryptRequest{Spec: specOf(k), Algorithm: a, Ciphertext: req.Ciphertext}
	n := req.KeyVersion
	if a.KeyType == alg.AES {
		if n, dr, err = gcmInput(req, dr); err != nil {
			return nil, err
		}
	} else if req.AAD != nil {
		return nil, kgerr.Invalid("RSA-OAEP takes no aad")
	}
	v, err := version(k, n)
	if err != nil {
		if a.KeyType == alg.AES && errors.Is(err, kgerr.ErrKeyNotFound) {
			// A version the key does not have: the ciphertext is not one
			// of this key's.
			return nil, kgerr.Wrap(kgerr.KindDecryptionFailed, err, "ciphertext names a key version this key does not have")
		}
		return nil, err
	}
	o.version, dr.Ref = v.Version, v.ProviderRef
	if err := enabled(k, v); err != nil {
		return nil, err
	}
	pt, err := p.Decrypt(ctx, dr)
	if err != nil {
		return nil, err
	}
	return &DecryptResult{Plaintext: pt, Algorithm: string(a.Name), KeyID: k.ID, KeyVersion: v.Version}, nil
}

// gcmInput fills the provider's AES-GCM input from a request: nonce, tag
// and version given apart, or taken from the front end's format.
func gcmInput(req DecryptRequest, dr provider.DecryptRequest) (int, provider.DecryptRequest, error) {
	n, nonce, ct, tag, aad := req.KeyVersion, req.Nonce, req.Ciphertext, req.Tag, req.AAD
	if req.Format != nil {
		ev, fn, fct, ftag, err := req.Format.Parse(req.Ciphertext)
		if err != nil {
			return 0, dr, err
		}
		if n != 0 && n != ev {
			return 0, dr, kgerr.Invalid(fmt.Sprintf("key_version %d does not match the ciphertext's version %d", n, ev))
		}
		n, nonce, ct, tag, aad = ev, fn, fct, ftag, req.Format.AAD(ev, req.AAD)
	}
	if len(nonce) < 12 || len(nonce) > 16 {
		return 0, dr, kgerr.Invalid("the AES-GCM nonce must be 12 to 16 bytes")
	}
	if len(tag) != gcmTagLen {
		return 0, dr, kgerr.Invalid(fmt.Sprintf("the AES-GCM tag must be %d bytes", gcmTagLen))
	}
	dr.Nonce, dr.AAD = nonce, aad
	dr.Ciphertext = append(append(make([]byte, 0, len(ct)+len(tag)), ct...), tag...)
	return n, dr, nil
}

// Wrap wraps key material under the current version of a key-encryption
// key (RFC 5649, AES key wrap with padding).
func (s *Service) Wrap(ctx context.Context, req WrapRequest) (out *WrapResult, err error) {
	o := s.begin(opWrap)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, a, p, err := s.prepare(ctx, o, req.Key, useWrap, req.Algorithm)
	if err != nil {
		return nil, err
	}
	if len(req.KeyMaterial) == 0 {
		return nil, kgerr.Invalid("key_material is required")
	}
	if len(req.KeyMaterial) > MaxKeyMaterialBytes {
		return nil, kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("key_material is larger than %d bytes", MaxKeyMaterialBytes))
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
	return &WrapResult{WrappedKey: w, Algorithm: string(a.Name), KeyID: k.ID, KeyVersion: v.Version}, nil
}

// Unwrap unwraps key material with a version (default current) of a
// key-encryption key.
func (s *Service) Unwrap(ctx context.Context, req UnwrapRequest) (out *UnwrapResult, err error) {
	o := s.begin(opUnwrap)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, _, p, err := s.prepare(ctx, o, req.Key, useUnwrap, req.Algorithm)
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
	if err := enabled(k, v); err != nil {
		return nil, err
	}
	m, err := p.UnwrapKey(ctx, provider.UnwrapRequest{Ref: v.ProviderRef, Spec: specOf(k), Wrapped: req.WrappedKey})
	if err != nil {
		return nil, err
	}
	return &UnwrapResult{KeyMaterial: m, KeyID: k.ID, KeyVersion: v.Version}, nil
}

// PublicKey returns the public key of a version (default current). It
// needs no usage: public keys are public.
func (s *Service) PublicKey(ctx context.Context, ref string, n int) (out *PublicKeyInfo, err error) {
	o := s.begin(opPublicKey)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, err := s.getKey(ctx, ref, opPublicKey.action)
	o.key = k
	if err != nil {
		return nil, err
	}
	if alg.Secret(alg.KeyType(k.KeyType)) {
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
	return &PublicKeyInfo{KeyID: k.ID, KeyVersion: v.Version, DER: v.PublicKey, Key: pub,
		KeyType: k.KeyType, Algorithm: k.Algorithm, KeySize: k.KeySize}, nil
}
