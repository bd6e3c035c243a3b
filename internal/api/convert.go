package api

import (
	"fmt"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// The translation between the REST wire types (pkg/apitypes) and the
// service's own: the only place that knows both.

func createKeyRequest(r apitypes.CreateKeyRequest) service.CreateKeyRequest {
	return service.CreateKeyRequest{Provider: r.Provider, Name: r.Name, Metadata: r.Metadata, ExpiresAt: r.ExpiresAt, PublishJWKS: r.PublishJWKS,
		Spec: service.KeySpec{KeyType: r.KeySpec.KeyType, KeySize: r.KeySpec.KeySize, Curve: r.KeySpec.Curve,
			Algorithm: r.KeySpec.Algorithm, Usage: r.KeySpec.Usage, Extractable: r.KeySpec.Extractable}}
}

func keyOut(k *service.Key) *apitypes.Key {
	out := &apitypes.Key{
		ID: k.ID, Name: k.Name, Provider: k.Provider, KeyType: k.KeyType, KeySize: k.KeySize, Curve: k.Curve,
		Algorithm: k.Algorithm, Usage: k.Usage, Extractable: k.Extractable, State: k.State, Version: k.Version,
		Metadata: k.Metadata, CreatedAt: k.CreatedAt, UpdatedAt: k.UpdatedAt, ExpiresAt: k.ExpiresAt, PublishJWKS: k.PublishJWKS,
	}
	if out.Usage == nil {
		out.Usage = []string{}
	}
	for _, v := range k.Versions {
		out.Versions = append(out.Versions, apitypes.KeyVersion{Version: v.Version, CreatedAt: v.CreatedAt, ProviderRef: v.ProviderRef})
	}
	return out
}

func publicKeyOut(p *service.PublicKeyInfo) (*apitypes.PublicKey, error) {
	jwk, err := alg.JWK(p.Key, fmt.Sprintf("%s.%d", p.KeyID, p.KeyVersion), alg.Algorithm(p.Algorithm))
	if err != nil {
		return nil, err
	}
	return &apitypes.PublicKey{KeyID: p.KeyID, KeyVersion: p.KeyVersion, PublicKey: alg.PublicKeyPEM(p.DER), JWK: jwk,
		KeyType: p.KeyType, Algorithm: p.Algorithm, KeySize: p.KeySize}, nil
}

func signRequest(key string, r apitypes.SignRequest) (service.SignRequest, error) {
	return service.SignRequest{Key: key, Algorithm: r.Algorithm, Data: r.Data, Digest: r.Digest,
		Format: service.SignatureFormat(r.SignatureFormat)}, nil
}

func signOut(r *service.SignResult) apitypes.SignResponse {
	return apitypes.SignResponse{Signature: r.Signature, Algorithm: r.Algorithm, KeyID: r.KeyID, KeyVersion: r.KeyVersion}
}

func verifyRequest(key string, r apitypes.VerifyRequest) (service.VerifyRequest, error) {
	return service.VerifyRequest{Key: key, Algorithm: r.Algorithm, Data: r.Data, Digest: r.Digest, Signature: r.Signature,
		Format: service.SignatureFormat(r.SignatureFormat), KeyVersion: r.KeyVersion}, nil
}

func verifyOut(r *service.VerifyResult) apitypes.VerifyResponse {
	return apitypes.VerifyResponse{Valid: r.Valid, KeyID: r.KeyID, KeyVersion: r.KeyVersion}
}

// encryptRequest takes plaintext or its alias data; AES-GCM results are
// packed into the REST envelope.
func encryptRequest(key string, r apitypes.EncryptRequest) (service.EncryptRequest, error) {
	pt := r.Plaintext
	switch {
	case pt != nil && r.Data != nil:
		return service.EncryptRequest{}, kgerr.Invalid("send plaintext or data (its alias), not both")
	case pt == nil:
		pt = r.Data
	}
	return service.EncryptRequest{Key: key, Algorithm: r.Algorithm, Plaintext: pt, AAD: r.AAD, Format: envelope{}}, nil
}

func encryptOut(r *service.EncryptResult) apitypes.EncryptResponse {
	ct := r.Ciphertext
	if r.Nonce != nil { // AES-GCM
		ct = sealEnvelope(r)
	}
	return apitypes.EncryptResponse{Ciphertext: ct, Algorithm: r.Algorithm, KeyID: r.KeyID, KeyVersion: r.KeyVersion}
}

func decryptRequest(key string, r apitypes.DecryptRequest) (service.DecryptRequest, error) {
	return service.DecryptRequest{Key: key, Algorithm: r.Algorithm, KeyVersion: r.KeyVersion, Ciphertext: r.Ciphertext,
		AAD: r.AAD, Format: envelope{}}, nil
}

func decryptOut(r *service.DecryptResult) apitypes.DecryptResponse {
	return apitypes.DecryptResponse{Plaintext: r.Plaintext, KeyID: r.KeyID, KeyVersion: r.KeyVersion}
}

func wrapRequest(key string, r apitypes.WrapRequest) (service.WrapRequest, error) {
	return service.WrapRequest{Key: key, Algorithm: r.Algorithm, KeyMaterial: r.KeyMaterial}, nil
}

func wrapOut(r *service.WrapResult) apitypes.WrapResponse {
	return apitypes.WrapResponse{WrappedKey: r.WrappedKey, Algorithm: r.Algorithm, KeyID: r.KeyID, KeyVersion: r.KeyVersion}
}

func unwrapRequest(key string, r apitypes.UnwrapRequest) (service.UnwrapRequest, error) {
	return service.UnwrapRequest{Key: key, Algorithm: r.Algorithm, KeyVersion: r.KeyVersion, WrappedKey: r.WrappedKey}, nil
}

func unwrapOut(r *service.UnwrapResult) apitypes.UnwrapResponse {
	return apitypes.UnwrapResponse{KeyMaterial: r.KeyMaterial, KeyID: r.KeyID, KeyVersion: r.KeyVersion}
}

// providerInfo renders a provider's capabilities as the REST API lists them.
func providerInfo(p service.ProviderInfo) apitypes.ProviderInfo {
	caps := p.Capabilities
	info := apitypes.ProviderInfo{Name: p.Name, Type: p.Type, Healthy: p.Healthy, Capabilities: caps.Strings()}
	if caps.WrapMultipleOf8 {
		info.Details = map[string]any{"wrap_multiple_of_8": true}
	}
	for _, kt := range caps.KeyTypes {
		ki := apitypes.KeyTypeInfo{KeyType: string(kt.Type), Sizes: kt.Sizes, Curves: kt.Curves, Algorithms: []string{}}
		for _, a := range caps.Algorithms {
			if i, err := alg.Lookup(string(a)); err == nil && i.KeyType == kt.Type {
				ki.Algorithms = append(ki.Algorithms, string(a))
			}
		}
		info.KeyTypes = append(info.KeyTypes, ki)
	}
	return info
}

func providerHealth(h *service.ProviderHealth) apitypes.ProviderHealth {
	out := apitypes.ProviderHealth{Name: h.Name, Type: h.Type, State: h.State, Healthy: h.Healthy,
		LastError: h.LastError, LastSuccess: h.LastSuccess, LastCheck: h.LastCheck,
		LatencyMS: float64(h.Latency.Microseconds()) / 1000, Details: h.Details, Reasons: h.Reasons}
	if h.LastErrorKind != "" {
		out.LastErrorCode = string(rest(h.LastErrorKind).code)
	}
	if c := h.Cluster; c != nil {
		out.Cluster = &apitypes.ClusterHealth{ID: c.ID, Region: c.Region, State: c.State, HSMType: c.HSMType, HSMs: []apitypes.ClusterHSM{},
			Error: c.Error, ErrorCode: c.ErrorCode, ErrorSince: utcOrNil(c.ErrorSince), CheckedAt: utcOrNil(c.CheckedAt),
			LastSuccess: utcOrNil(c.DescribedAt)}
		for _, hsm := range c.HSMs {
			out.Cluster.HSMs = append(out.Cluster.HSMs, apitypes.ClusterHSM{ID: hsm.ID, AvailabilityZone: hsm.AvailabilityZone,
				State: hsm.State, ENIIP: hsm.ENIIP})
		}
	}
	return out
}

// utcOrNil is t in UTC, nil for the zero time.
func utcOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}
