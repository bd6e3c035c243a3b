package service

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"fmt"
	"slices"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// Key material in and out (import, export, data keys, rewrap), HMAC and
// random bytes. Capabilities a provider may lack are its optional
// interfaces (provider.Importer, …): a provider without one is refused with
// UNSUPPORTED_ALGORITHM naming it.

// Limits.
const (
	// MaxRandomBytes caps one random request.
	MaxRandomBytes = 1024
	// maxWrappedKeyBytes caps an imported wrapped key (an RSA-4096 PKCS#8
	// key is about 2.4 KB, plus 512 of RSA and 8 of KWP).
	maxWrappedKeyBytes = MaxKeyMaterialBytes
)

var (
	useMAC       = use{alg.UsageSign, alg.KindMAC, true}
	useVerifyMAC = use{alg.UsageVerify, alg.KindMAC, false}
)

func lacks(p provider.Provider, what string) error {
	return kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("provider %q does not %s", p.Name(), what))
}

// namedProvider returns a configured provider (empty: the default) in the
// caller's scope.
func (s *Service) namedProvider(ctx context.Context, o *op, name string) (provider.Provider, error) {
	if name == "" {
		name = s.defProv
	}
	p, ok := s.providers[name]
	if !ok {
		return nil, kgerr.New(kgerr.KindProviderNotFound, fmt.Sprintf("provider %q is not configured", name))
	}
	o.provider = name
	if pr := CallerFrom(ctx).Auth; pr != nil && len(pr.Providers) > 0 && !slices.Contains(pr.Providers, name) {
		return nil, kgerr.New(kgerr.KindPermissionDenied, fmt.Sprintf("principal %q may not use provider %q", pr.Name, name))
	}
	return p, nil
}

// WrappingKey returns a provider's import wrapping key, made on first use.
func (s *Service) WrappingKey(ctx context.Context, providerName string) (out *WrappingKeyInfo, err error) {
	o := s.begin(opWrappingKey)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	if err := allow(ctx, o.op.action); err != nil {
		return nil, err
	}
	p, err := s.namedProvider(ctx, o, providerName)
	if err != nil {
		return nil, err
	}
	im, ok := p.(provider.Importer)
	if !ok {
		return nil, lacks(p, "import keys")
	}
	wk, err := im.WrappingKey(ctx)
	if err != nil {
		return nil, err
	}
	return &WrappingKeyInfo{Provider: p.Name(), ID: wk.ID, PublicKey: wk.PublicKey, Algorithm: schemeOf(wk)}, nil
}

// schemeOf is the key-transport scheme a wrapping key takes.
func schemeOf(wk provider.WrappingKey) string {
	if wk.Algorithm == "" {
		return alg.RSAAESKeyWrapSHA256
	}
	return wk.Algorithm
}

// ImportKey imports wrapped key material as a new key: the record is
// made pending (reserving the name), the provider opens and checks the
// material, the key becomes active; on any refusal nothing remains.
func (s *Service) ImportKey(ctx context.Context, req ImportKeyRequest) (out *Key, err error) {
	o := s.begin(opImport)
	o.algorithm = req.Spec.Algorithm
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, p, err := s.newRecord(ctx, o, req.CreateKeyRequest)
	if err != nil {
		return nil, err
	}
	k.Origin = store.OriginImported
	m := req.material()
	im, err := s.importerFor(ctx, p, k, m)
	if err != nil {
		return nil, err
	}
	return s.makeNew(ctx, o, p, k, func(v *store.Version) (provider.CreatedKey, error) {
		return importMaterial(ctx, p, im, k, v, m)
	})
}

// ImportKeyVersion imports wrapped material as the new current version of
// an active key (a rotation to material made elsewhere): the version is
// added pending, the provider opens and checks the material as for an
// import, the version becomes current; on any refusal the version is
// removed and nothing remains.
func (s *Service) ImportKeyVersion(ctx context.Context, req ImportVersionRequest) (out *Key, err error) {
	o := s.begin(opImportVer)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, err := s.getKey(ctx, req.Key, o.op.action)
	o.key = k
	if err != nil {
		return nil, err
	}
	o.algorithm = k.Algorithm
	if err := requireActive(k, "take a new version", "import a version of"); err != nil {
		return nil, err
	}
	p, err := s.providerFor(k)
	if err != nil {
		return nil, err
	}
	im, err := s.importerFor(ctx, p, k, req.WrappedMaterial)
	if err != nil {
		return nil, err
	}
	if err := s.auditReady(ctx); err != nil {
		return nil, err
	}
	if o.version, err = s.startRotation(ctx, k); err != nil {
		return nil, err
	}
	k, err = s.finishVersion(ctx, o, p, k, func(v *store.Version) (provider.CreatedKey, error) {
		return importMaterial(ctx, p, im, k, v, req.WrappedMaterial)
	})
	if err != nil {
		return nil, err
	}
	return s.view(k), nil
}

// importerFor checks the wrapped material's fields for a key of k's type
// and returns the provider's Importer; a named wrapping algorithm must be
// the one the provider's wrapping key takes.
func (s *Service) importerFor(ctx context.Context, p provider.Provider, k *store.Key, m WrappedMaterial) (provider.Importer, error) {
	im, ok := p.(provider.Importer)
	if !ok {
		return nil, lacks(p, "import keys")
	}
	secret := alg.Secret(alg.KeyType(k.KeyType))
	switch {
	case len(m.WrappedKey) == 0:
		return nil, kgerr.Invalid("wrapped_key is required")
	case len(m.WrappedKey) > maxWrappedKeyBytes:
		return nil, kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("wrapped_key is larger than %d bytes", maxWrappedKeyBytes))
	case m.WrappingKeyID == "":
		return nil, kgerr.Invalid("wrapping_key_id is required")
	case secret && m.PublicKey != nil:
		return nil, kgerr.Invalid("public_key does not apply to secret keys")
	case !secret && m.PublicKey == nil:
		return nil, kgerr.Invalid("public_key is required to import a private key")
	}
	if m.WrappingAlgorithm == "" {
		return im, nil
	}
	if _, err := alg.TransportHash(m.WrappingAlgorithm); err != nil {
		return nil, err
	}
	wk, err := im.WrappingKey(ctx)
	if err != nil {
		return nil, err
	}
	if want := schemeOf(wk); m.WrappingAlgorithm != want {
		return nil, kgerr.Invalid(fmt.Sprintf("provider %q takes %s wrapping (see its wrapping key), not %s", p.Name(), want, m.WrappingAlgorithm))
	}
	return im, nil
}

// importMaterial has the provider open and store the material of version v.
func importMaterial(ctx context.Context, p provider.Provider, im provider.Importer, k *store.Key, v *store.Version, m WrappedMaterial) (provider.CreatedKey, error) {
	created, err := im.ImportKey(ctx, provider.ImportKeyRequest{
		ObjectID: v.ObjectID, Label: versionLabel(k, v), Spec: specOf(k), Usage: usagesOf(k), Extractable: k.Extractable,
		WrappingKeyID: m.WrappingKeyID, Wrapped: m.WrappedKey, PublicKey: m.PublicKey,
	})
	if err != nil {
		return created, onProvider(p.Name(), err)
	}
	return created, nil
}

// ExportKey wraps a version of an extractable key for the holder of an RSA
// public key.
func (s *Service) ExportKey(ctx context.Context, req ExportKeyRequest) (out *ExportResult, err error) {
	o := s.begin(opExport)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, err := s.getKey(ctx, req.Key, o.op.action)
	o.key = k
	if err != nil {
		return nil, err
	}
	if !k.Extractable {
		return nil, kgerr.New(kgerr.KindKeyNotExtractable, fmt.Sprintf("key %q was not made extractable", k.Name))
	}
	if k.State != store.StateActive {
		return nil, refuseUnusable(k, "export")
	}
	if _, err := alg.ParseWrappingPublicKey(req.PublicKey); err != nil {
		return nil, err
	}
	p, err := s.providerFor(k)
	if err != nil {
		return nil, err
	}
	ex, ok := p.(provider.Exporter)
	if !ok {
		return nil, lacks(p, "export keys")
	}
	v, err := version(k, req.Version)
	if err != nil {
		return nil, err
	}
	o.version = v.Version
	w, err := ex.ExportKey(ctx, provider.ExportKeyRequest{Ref: v.ProviderRef, Spec: specOf(k), WrappingKey: req.PublicKey})
	if err != nil {
		return nil, err
	}
	return &ExportResult{WrappedKey: w, Algorithm: alg.RSAAESKeyWrapSHA256, KeyID: k.ID, KeyVersion: v.Version}, nil
}

// MAC computes an HMAC with the current version of an HMAC key.
func (s *Service) MAC(ctx context.Context, req MACRequest) (out *MACResult, err error) {
	o := s.begin(opMAC)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, a, p, err := s.prepare(ctx, o, req.Key, useMAC, req.Algorithm)
	if err != nil {
		return nil, err
	}
	v, err := version(k, 0)
	if err != nil {
		return nil, err
	}
	o.version = v.Version
	m, err := s.mac(ctx, p, k, v, a, req.Data)
	if err != nil {
		return nil, err
	}
	return &MACResult{MAC: m, Algorithm: string(a.Name), KeyID: k.ID, KeyVersion: v.Version}, nil
}

func (s *Service) mac(ctx context.Context, p provider.Provider, k *store.Key, v *store.Version, a alg.Info, data []byte) ([]byte, error) {
	if data == nil {
		return nil, kgerr.Invalid("data is required")
	}
	if len(data) > MaxDataBytes {
		return nil, kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("data is larger than %d bytes", MaxDataBytes))
	}
	m, ok := p.(provider.MACer)
	if !ok {
		return nil, lacks(p, "compute MACs")
	}
	return m.MAC(ctx, provider.MACRequest{Ref: v.ProviderRef, Spec: specOf(k), Algorithm: a, Data: data})
}

// VerifyMAC checks a MAC in constant time against a version (default: every
// active version, newest first). A MAC that does not match is a result.
func (s *Service) VerifyMAC(ctx context.Context, req VerifyMACRequest) (out *VerifyResult, err error) {
	o := s.begin(opVerifyMAC)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, a, p, err := s.prepare(ctx, o, req.Key, useVerifyMAC, req.Algorithm)
	if err != nil {
		return nil, err
	}
	if len(req.MAC) == 0 {
		return nil, kgerr.Invalid("mac is required")
	}
	candidates, err := candidateVersions(k, req.KeyVersion)
	if err != nil {
		return nil, err
	}
	// Versions below min_decrypt_version verify no more: named, refused;
	// otherwise left out (the current version never is).
	if req.KeyVersion != 0 {
		if err := enabled(k, candidates[0]); err != nil {
			o.version = candidates[0].Version
			return nil, err
		}
	}
	candidates = slices.DeleteFunc(candidates, func(v *store.Version) bool { return enabled(k, v) != nil })
	for _, v := range candidates {
		m, err := s.mac(ctx, p, k, v, a, req.Data)
		if err != nil {
			return nil, err
		}
		if hmac.Equal(m, req.MAC) {
			o.version = v.Version
			return &VerifyResult{Valid: true, KeyID: k.ID, KeyVersion: v.Version}, nil
		}
	}
	o.version = candidates[0].Version
	return &VerifyResult{Valid: false, KeyID: k.ID, KeyVersion: candidates[0].Version}, nil
}

// candidateVersions is version n, or with n = 0 every active version,
// newest first.
func candidateVersions(k *store.Key, n int) ([]*store.Version, error) {
	if n != 0 {
		v, err := version(k, n)
		if err != nil {
			return nil, err
		}
		return []*store.Version{v}, nil
	}
	var out []*store.Version
	for i := len(k.Versions) - 1; i >= 0; i-- {
		if k.Versions[i].State == store.StateActive {
			out = append(out, &k.Versions[i])
		}
	}
	if len(out) == 0 {
		return nil, kgerr.New(kgerr.KindKeyInactive, fmt.Sprintf("key %q has no active version", k.Name))
	}
	return out, nil
}

// Random returns random bytes from a provider's generator.
func (s *Service) Random(ctx context.Context, req RandomRequest) (out []byte, err error) {
	o := s.begin(opRandom)
	defer s.finish(ctx, o, &err)
	if err := allow(ctx, o.op.action); err != nil {
		return nil, err
	}
	if req.Bytes < 1 || req.Bytes > MaxRandomBytes {
		return nil, kgerr.Invalid(fmt.Sprintf("bytes must be 1 to %d", MaxRandomBytes))
	}
	p, err := s.namedProvider(ctx, o, req.Provider)
	if err != nil {
		return nil, err
	}
	r, ok := p.(provider.Randomer)
	if !ok {
		return nil, lacks(p, "generate random bytes")
	}
	b, err := r.Random(ctx, req.Bytes)
	if err != nil {
		return nil, err
	}
	if len(b) != req.Bytes {
		return nil, kgerr.New(kgerr.KindInternal, "the provider returned fewer random bytes than asked")
	}
	return b, nil
}

// GenerateDataKey makes a fresh AES data key and encrypts it under the
// current version of a key, as Encrypt would.
func (s *Service) GenerateDataKey(ctx context.Context, req DataKeyRequest) (out *DataKeyResult, err error) {
	o := s.begin(opDataKey)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	if req.KeySize != 128 && req.KeySize != 256 {
		return nil, kgerr.Invalid("key_size must be 128 or 256")
	}
	dk := make([]byte, req.KeySize/8)
	if _, err := rand.Read(dk); err != nil {
		return nil, err
	}
	res, err := s.encrypt(ctx, o, EncryptRequest{Key: req.Key, Plaintext: dk, AAD: req.AAD, Format: req.Format})
	if err != nil {
		clear(dk)
		return nil, err
	}
	out = &DataKeyResult{EncryptResult: *res}
	if req.IncludePlaintext {
		out.Plaintext = dk
	} else {
		clear(dk)
	}
	return out, nil
}

// Rewrap decrypts a ciphertext of a key and encrypts its plaintext again
// under the key's current version; the plaintext is cleared, never returned.
func (s *Service) Rewrap(ctx context.Context, req RewrapRequest) (out *EncryptResult, err error) {
	o := s.begin(opRewrap)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	pt, err := s.decrypt(ctx, o, DecryptRequest{Key: req.Key, Ciphertext: req.Ciphertext, AAD: req.AAD, Format: req.Format})
	if err != nil {
		return nil, err
	}
	defer clear(pt.Plaintext)
	return s.encrypt(ctx, o, EncryptRequest{Key: req.Key, Plaintext: pt.Plaintext, AAD: req.AAD, Format: req.Format})
}
