package api

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// The translation between the REST wire types (pkg/apitypes) and the
// service's own: the only place that knows both.

// createKeyRequest takes key_spec.usage or its original KeyGrid name
// key_usage; the request's config (the original API's provider settings)
// is ignored: providers are configured on the server only.
func createKeyRequest(r apitypes.CreateKeyRequest) (service.CreateKeyRequest, error) {
	usage := r.KeySpec.Usage
	switch {
	case usage == nil:
		usage = r.KeySpec.KeyUsage
	case r.KeySpec.KeyUsage != nil && !slices.Equal(usage, r.KeySpec.KeyUsage):
		return service.CreateKeyRequest{}, kgerr.Invalid("key_spec.usage and key_spec.key_usage (its alias) differ: send one")
	}
	return service.CreateKeyRequest{Provider: r.Provider, Name: r.Name, Metadata: r.Metadata, ExpiresAt: r.ExpiresAt,
		Description: r.Description, PublishJWKS: r.PublishJWKS,
		Spec: service.KeySpec{KeyType: r.KeySpec.KeyType, KeySize: r.KeySpec.KeySize, Curve: r.KeySpec.Curve,
			Algorithm: r.KeySpec.Algorithm, Usage: usage, Extractable: r.KeySpec.Extractable}}, nil
}

func keyOut(k *service.Key) *apitypes.Key {
	out := &apitypes.Key{
		ID: k.ID, Name: k.Name, Provider: k.Provider, ProviderID: k.Provider, KeyType: k.KeyType, KeySize: k.KeySize, Curve: k.Curve,
		Algorithm: k.Algorithm, Usage: k.Usage, Extractable: k.Extractable, State: k.State, Status: k.State, Version: k.Version,
		Metadata: k.Metadata, Description: k.Description, CreatedAt: k.CreatedAt, UpdatedAt: k.UpdatedAt, ExpiresAt: k.ExpiresAt,
		DeletionDate: k.DeletionDate, NextRotationAt: k.NextRotationAt, MinDecryptVersion: k.MinDecryptVersion, Revision: k.Revision,
		PublishJWKS: k.PublishJWKS, Origin: k.Origin,
	}
	if out.Usage == nil {
		out.Usage = []string{}
	}
	if k.RotationPeriod > 0 {
		out.RotationPeriod = k.RotationPeriod.String()
	}
	out.KeySpec = &apitypes.KeySpec{KeyType: k.KeyType, KeySize: k.KeySize, Curve: k.Curve, Algorithm: k.Algorithm,
		Usage: out.Usage, KeyUsage: out.Usage, Extractable: k.Extractable}
	for _, v := range k.Versions {
		out.Versions = append(out.Versions, apitypes.KeyVersion{Version: v.Version, CreatedAt: v.CreatedAt, ProviderRef: v.ProviderRef})
		if v.Version == k.Version {
			out.ProviderKeyID = v.ProviderRef
		}
	}
	return out
}

// keyOperation is a key with the original API's operation fields.
func keyOperation(k *service.Key, at time.Time, msg string) apitypes.KeyOperation {
	return apitypes.KeyOperation{Key: *keyOut(k), KeyID: k.ID, Timestamp: at.UTC(), Message: msg}
}

// updateKeyBody is the PATCH body as decoded: the request, and the fields
// of a key that never change after its creation, present only to be
// refused by name.
type updateKeyBody struct {
	apitypes.UpdateKeyRequest
	Name        json.RawMessage `json:"name"`
	Provider    json.RawMessage `json:"provider"`
	KeySpec     json.RawMessage `json:"key_spec"`
	KeyType     json.RawMessage `json:"key_type"`
	KeySize     json.RawMessage `json:"key_size"`
	Curve       json.RawMessage `json:"curve"`
	Algorithm   json.RawMessage `json:"algorithm"`
	Usage       json.RawMessage `json:"usage"`
	KeyUsage    json.RawMessage `json:"key_usage"`
	Extractable json.RawMessage `json:"extractable"`
	State       json.RawMessage `json:"state"`
	Status      json.RawMessage `json:"status"`
}

func updateKeyRequest(key string, b updateKeyBody) (service.UpdateKeyRequest, error) {
	for _, f := range []struct {
		name string
		raw  json.RawMessage
	}{{"name", b.Name}, {"provider", b.Provider}, {"key_spec", b.KeySpec}, {"key_type", b.KeyType}, {"key_size", b.KeySize},
		{"curve", b.Curve}, {"algorithm", b.Algorithm}, {"usage", b.Usage}, {"key_usage", b.KeyUsage}, {"extractable", b.Extractable}} {
		if f.raw != nil {
			return service.UpdateKeyRequest{}, kgerr.Invalid(fmt.Sprintf("%s cannot be changed after the key is created", f.name))
		}
	}
	if b.State != nil || b.Status != nil {
		return service.UpdateKeyRequest{}, kgerr.Invalid("state is changed with activate, deactivate, DELETE and cancel-deletion, not PATCH")
	}
	r := b.UpdateKeyRequest
	out := service.UpdateKeyRequest{Key: key, Revision: r.Revision}
	if r.Metadata != nil {
		m := *r.Metadata
		if m == nil {
			m = map[string]string{}
		}
		out.Metadata = service.Set(m)
	}
	if r.Description != nil {
		out.Description = service.Set(*r.Description)
	}
	if r.ExpiresAt.Set {
		var t *time.Time
		if r.ExpiresAt.Valid {
			t = &r.ExpiresAt.Value
		}
		out.ExpiresAt = service.Set(t)
	}
	if r.RotationPeriod.Set {
		var d time.Duration
		if r.RotationPeriod.Valid {
			var err error
			if d, err = time.ParseDuration(r.RotationPeriod.Value); err != nil {
				return service.UpdateKeyRequest{}, kgerr.Invalid(fmt.Sprintf("rotation_period %q is not a duration like 2160h or 0s", clip(r.RotationPeriod.Value)))
			}
		}
		out.RotationPeriod = service.Set(d)
	}
	if r.MinDecryptVersion != nil {
		out.MinDecryptVersion = service.Set(*r.MinDecryptVersion)
	}
	if r.PublishJWKS != nil {
		out.PublishJWKS = service.Set(*r.PublishJWKS)
	}
	return out, nil
}

// clip shortens a client's string for an error message.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
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
	return apitypes.VerifyResponse{Valid: r.Valid, Algorithm: r.Algorithm, KeyID: r.KeyID, KeyVersion: r.KeyVersion}
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
	return apitypes.DecryptResponse{Plaintext: r.Plaintext, Algorithm: r.Algorithm, KeyID: r.KeyID, KeyVersion: r.KeyVersion}
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
	info := apitypes.ProviderInfo{Name: p.Name, Provider: p.Name, Type: p.Type, Healthy: p.Healthy, Status: "active", Capabilities: caps.Strings()}
	if !p.Healthy {
		info.Status = "error"
	}
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
	out := apitypes.ProviderHealth{Name: h.Name, Provider: h.Name, Type: h.Type, State: h.State, Healthy: h.Healthy,
		Status: "healthy", ResponseTime: h.Latency.Round(time.Microsecond).String(), Error: h.LastError,
		LastError: h.LastError, LastSuccess: h.LastSuccess, LastCheck: h.LastCheck,
		LatencyMS: float64(h.Latency.Microseconds()) / 1000, Details: h.Details, Reasons: h.Reasons}
	if !h.Healthy {
		out.Status = "unhealthy"
	}
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
