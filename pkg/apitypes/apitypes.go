// Package apitypes holds the wire types of the KeyGrid HSM HTTP API v1: the
// JSON bodies of requests and responses and the error codes. Binary fields are
// []byte, which encoding/json renders as standard base64.
package apitypes

import (
	"encoding/json"
	"time"
)

// ErrorCode is the machine-readable code of an API error.
type ErrorCode string

// The KeyGrid error vocabulary. Each code has exactly one HTTP status (see
// internal/api).
const (
	CodeInvalidInput         ErrorCode = "INVALID_INPUT"
	CodeUnsupportedAlgorithm ErrorCode = "UNSUPPORTED_ALGORITHM"
	CodeKeyNotFound          ErrorCode = "KEY_NOT_FOUND"
	CodeProviderNotFound     ErrorCode = "PROVIDER_NOT_FOUND"
	CodeNotFound             ErrorCode = "NOT_FOUND"
	CodeKeyAlreadyExists     ErrorCode = "KEY_ALREADY_EXISTS"
	CodeKeyInactive          ErrorCode = "KEY_INACTIVE"
	CodeKeyExpired           ErrorCode = "KEY_EXPIRED"
	CodeKeyPendingDeletion   ErrorCode = "KEY_PENDING_DELETION"
	CodeKeyVersionDisabled   ErrorCode = "KEY_VERSION_DISABLED"
	CodeKeyNotExtractable    ErrorCode = "KEY_NOT_EXTRACTABLE"
	CodeUsageNotPermitted    ErrorCode = "USAGE_NOT_PERMITTED"
	CodeConflict             ErrorCode = "CONFLICT"
	CodeDecryptionFailed     ErrorCode = "DECRYPTION_FAILED"
	CodeAuthenticationFailed ErrorCode = "AUTHENTICATION_FAILED"
	CodeAuthorizationFailed  ErrorCode = "AUTHORIZATION_FAILED"
	CodePayloadTooLarge      ErrorCode = "PAYLOAD_TOO_LARGE"
	CodeMethodNotAllowed     ErrorCode = "METHOD_NOT_ALLOWED"
	CodeRateLimited          ErrorCode = "RATE_LIMITED"
	CodeServiceUnavailable   ErrorCode = "SERVICE_UNAVAILABLE"
	CodeHSMTimeout           ErrorCode = "HSM_TIMEOUT"
	CodeInternal             ErrorCode = "INTERNAL_ERROR"
)

// ErrorBody is the body of every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail describes one error. Message is for people and never carries
// secrets.
type ErrorDetail struct {
	Code      ErrorCode `json:"code"`
	Message   string    `json:"message"`
	RequestID string    `json:"request_id,omitempty"`
}

// Health is the body of GET /health. Timestamp is the original KeyGrid
// API's.
type Health struct {
	Status    string    `json:"status"`
	Version   string    `json:"version"`
	Timestamp time.Time `json:"timestamp"`
}

// Ready is the body of GET /ready. Timestamp is the original KeyGrid API's
// (whose providers field was a count; this one lists them).
type Ready struct {
	Status    string           `json:"status"`
	Timestamp time.Time        `json:"timestamp"`
	Providers []ProviderStatus `json:"providers"`
}

// ProviderStatus is one provider in /ready and /api/v1/providers.
type ProviderStatus struct {
	Name         string   `json:"name"`
	Type         string   `json:"type"`
	Healthy      bool     `json:"healthy"`
	State        string   `json:"state,omitempty"`
	Capabilities []string `json:"capabilities,omitempty"`
}

// ProviderList is the body of GET /api/v1/providers. Count is the original
// KeyGrid API's.
type ProviderList struct {
	Providers []ProviderInfo `json:"providers"`
	Count     int            `json:"count"`
}

// ProviderInfo describes a provider and what it can do: an item of
// GET /api/v1/providers and the body of GET /api/v1/providers/{name}/info.
// Provider (the name) and Status ("active", or "error" when unhealthy) are
// the original KeyGrid API's.
type ProviderInfo struct {
	Name         string         `json:"name"`
	Provider     string         `json:"provider"`
	Type         string         `json:"type"`
	Healthy      bool           `json:"healthy"`
	Status       string         `json:"status"`
	Capabilities []string       `json:"capabilities"`
	KeyTypes     []KeyTypeInfo  `json:"key_types,omitempty"`
	Details      map[string]any `json:"details,omitempty"`
}

// KeyTypeInfo lists the sizes or curves and algorithms a provider supports
// for one key type.
type KeyTypeInfo struct {
	KeyType    string   `json:"key_type"`
	Sizes      []int    `json:"sizes,omitempty"`
	Curves     []string `json:"curves,omitempty"`
	Algorithms []string `json:"algorithms"`
}

// ProviderHealth is the body of GET /api/v1/providers/{name}/health.
// Provider, Status ("healthy" or "unhealthy"), ResponseTime and Error are
// the original KeyGrid API's.
type ProviderHealth struct {
	Name         string `json:"name"`
	Provider     string `json:"provider"`
	Status       string `json:"status"`
	ResponseTime string `json:"response_time"`
	Error        string `json:"error,omitempty"`
	Type         string `json:"type"`
	State        string `json:"state"`
	Healthy      bool   `json:"healthy"`
	// Reasons says why the state is degraded.
	Reasons       []string       `json:"reasons,omitempty"`
	LastErrorCode string         `json:"last_error_code,omitempty"`
	LastError     string         `json:"last_error,omitempty"`
	LastSuccess   *time.Time     `json:"last_success,omitempty"`
	LastCheck     *time.Time     `json:"last_check,omitempty"`
	LatencyMS     float64        `json:"latency_ms"`
	Details       map[string]any `json:"details,omitempty"`
	// Cluster is the CloudHSM cluster an aws-cloudhsm provider watches.
	Cluster *ClusterHealth `json:"cluster,omitempty"`
}

// ClusterHealth is what the management API last said of a CloudHSM
// cluster. HSMs are those of the last successful describe (LastSuccess);
// Error, when set, is why the last describe (CheckedAt) failed, and
// ErrorSince when the failures began.
type ClusterHealth struct {
	ID          string       `json:"id"`
	Region      string       `json:"region"`
	State       string       `json:"state,omitempty"`
	HSMType     string       `json:"hsm_type,omitempty"`
	HSMs        []ClusterHSM `json:"hsms"`
	Error       string       `json:"error,omitempty"`
	ErrorCode   string       `json:"error_code,omitempty"`
	ErrorSince  *time.Time   `json:"error_since,omitempty"`
	CheckedAt   *time.Time   `json:"checked_at,omitempty"`
	LastSuccess *time.Time   `json:"last_success,omitempty"`
}

// ClusterHSM is one HSM of a CloudHSM cluster.
type ClusterHSM struct {
	ID               string `json:"id"`
	AvailabilityZone string `json:"availability_zone"`
	State            string `json:"state"`
	ENIIP            string `json:"eni_ip,omitempty"`
}

// KeySpec describes the key to create. KeyUsage is the original KeyGrid
// API's name of Usage: a request may use either (not both, unless equal);
// a key's key_spec carries both.
type KeySpec struct {
	KeyType     string   `json:"key_type"`
	KeySize     int      `json:"key_size,omitempty"`
	Curve       string   `json:"curve,omitempty"`
	Algorithm   string   `json:"algorithm,omitempty"`
	Usage       []string `json:"usage,omitempty"`
	KeyUsage    []string `json:"key_usage,omitempty"`
	Extractable bool     `json:"extractable,omitempty"`
}

// CreateKeyRequest is the body of POST /api/v1/keys. Config is accepted for
// the original KeyGrid API's requests and ignored: provider settings come
// only from the server's configuration.
type CreateKeyRequest struct {
	Provider    string            `json:"provider,omitempty"`
	Name        string            `json:"name"`
	KeySpec     KeySpec           `json:"key_spec"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Description string            `json:"description,omitempty"`
	ExpiresAt   *time.Time        `json:"expires_at,omitempty"`
	Config      map[string]any    `json:"config,omitempty"`
	// PublishJWKS lists the key in the unauthenticated
	// /.well-known/jwks.json.
	PublishJWKS bool `json:"publish_jwks,omitempty"`
}

// Key is the public view of a managed key. Status, ProviderID,
// ProviderKeyID and KeySpec repeat State, Provider, the current version's
// ProviderRef and the spec fields under the original KeyGrid API's names.
type Key struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Provider      string            `json:"provider"`
	ProviderID    string            `json:"provider_id"`
	ProviderKeyID string            `json:"provider_key_id,omitempty"`
	KeyType       string            `json:"key_type"`
	KeySize       int               `json:"key_size"`
	Curve         string            `json:"curve,omitempty"`
	Algorithm     string            `json:"algorithm"`
	Usage         []string          `json:"usage"`
	Extractable   bool              `json:"extractable"`
	KeySpec       *KeySpec          `json:"key_spec,omitempty"`
	State         string            `json:"state"`
	Status        string            `json:"status"`
	Version       int               `json:"version"`
	Versions      []KeyVersion      `json:"versions,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	Description   string            `json:"description,omitempty"`
	CreatedAt     time.Time         `json:"created_at"`
	UpdatedAt     time.Time         `json:"updated_at"`
	ExpiresAt     *time.Time        `json:"expires_at,omitempty"`
	PublishJWKS   bool              `json:"publish_jwks"`
	// Origin is how the key was made: "generated" or "imported".
	Origin string `json:"origin,omitempty"`
	// DeletionDate is when a key in state pending_deletion is destroyed.
	DeletionDate *time.Time `json:"deletion_date,omitempty"`
	// RotationPeriod is a Go duration ("2160h0m0s"); NextRotationAt when
	// the key next rotates by itself.
	RotationPeriod    string     `json:"rotation_period,omitempty"`
	NextRotationAt    *time.Time `json:"next_rotation_at,omitempty"`
	MinDecryptVersion int        `json:"min_decrypt_version,omitempty"`
	// Revision grows with every change; an update may name the revision it
	// read (UpdateKeyRequest.Revision).
	Revision int64 `json:"revision"`
}

// KeyOperation is the body of activate, deactivate, DELETE and
// cancel-deletion: the key, with the original KeyGrid API's operation
// fields (key_id, timestamp, message; status is the key's).
type KeyOperation struct {
	Key
	KeyID     string    `json:"key_id"`
	Timestamp time.Time `json:"timestamp"`
	Message   string    `json:"message"`
}

// Nullable is a field of a PATCH body that may be absent (not changed),
// null (cleared) or a value. The zero value is absent.
type Nullable[T any] struct {
	Set   bool // present in the body
	Valid bool // not null
	Value T
}

// Value returns a Nullable holding v.
func Value[T any](v T) Nullable[T] { return Nullable[T]{Set: true, Valid: true, Value: v} }

// Null returns a Nullable that clears its field.
func Null[T any]() Nullable[T] { return Nullable[T]{Set: true} }

// IsZero reports an absent field (for omitzero).
func (n Nullable[T]) IsZero() bool { return !n.Set }

// MarshalJSON writes the value or null.
func (n Nullable[T]) MarshalJSON() ([]byte, error) {
	if !n.Valid {
		return []byte("null"), nil
	}
	return json.Marshal(n.Value)
}

// UnmarshalJSON reads a value or null.
func (n *Nullable[T]) UnmarshalJSON(b []byte) error {
	n.Set, n.Valid = true, string(b) != "null"
	if !n.Valid {
		var zero T
		n.Value = zero
		return nil
	}
	return json.Unmarshal(b, &n.Value)
}

// UpdateKeyRequest is the body of PATCH /api/v1/keys/{key}. Absent fields
// are left as they are. Metadata replaces the whole map ({} empties it);
// expires_at null removes the expiry; rotation_period is a Go duration
// ("2160h"), "0s" or null turning automatic rotation off;
// min_decrypt_version 0 lets every version decrypt again. Revision, when
// set, is the revision the client read: the update is refused with 409
// CONFLICT if the key changed since.
type UpdateKeyRequest struct {
	Metadata          *map[string]string  `json:"metadata,omitempty"`
	Description       *string             `json:"description,omitempty"`
	ExpiresAt         Nullable[time.Time] `json:"expires_at,omitzero"`
	RotationPeriod    Nullable[string]    `json:"rotation_period,omitzero"`
	MinDecryptVersion *int                `json:"min_decrypt_version,omitempty"`
	PublishJWKS       *bool               `json:"publish_jwks,omitempty"`
	Revision          int64               `json:"revision,omitempty"`
}

// KeyVersion is one version of a key. ProviderRef names the key material in
// its provider (for PKCS#11, an RFC 7512 URI with the token label, CKA_ID
// and CKA_LABEL), so that operators can find it with their own tools.
type KeyVersion struct {
	Version     int       `json:"version"`
	CreatedAt   time.Time `json:"created_at"`
	ProviderRef string    `json:"provider_ref,omitempty"`
}

// KeyList is the body of GET /api/v1/keys. Count (the keys on this page),
// Limit and Offset are the original KeyGrid API's.
type KeyList struct {
	Keys          []Key  `json:"keys"`
	NextPageToken string `json:"next_page_token,omitempty"`
	Count         int    `json:"count"`
	Limit         int    `json:"limit"`
	Offset        int    `json:"offset"`
}

// PublicKey is the body of GET /api/v1/keys/{key}/public.
type PublicKey struct {
	KeyID      string         `json:"key_id"`
	KeyVersion int            `json:"key_version"`
	PublicKey  string         `json:"public_key"`
	JWK        map[string]any `json:"jwk"`
	KeyType    string         `json:"key_type"`
	Algorithm  string         `json:"algorithm"`
	KeySize    int            `json:"key_size"`
}

// SignRequest is the body of POST /api/v1/keys/{key}/sign. Exactly one of
// Data and Digest is set.
type SignRequest struct {
	Data            []byte `json:"data,omitempty"`
	Digest          []byte `json:"digest,omitempty"`
	Algorithm       string `json:"algorithm,omitempty"`
	SignatureFormat string `json:"signature_format,omitempty"`
}

// SignResponse is the result of a signature.
type SignResponse struct {
	Signature  []byte `json:"signature"`
	Algorithm  string `json:"algorithm"`
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
}

// VerifyRequest is the body of POST /api/v1/keys/{key}/verify.
type VerifyRequest struct {
	Data            []byte `json:"data,omitempty"`
	Digest          []byte `json:"digest,omitempty"`
	Signature       []byte `json:"signature"`
	Algorithm       string `json:"algorithm,omitempty"`
	SignatureFormat string `json:"signature_format,omitempty"`
	KeyVersion      int    `json:"key_version,omitempty"`
}

// VerifyResponse tells whether a signature is valid.
type VerifyResponse struct {
	Valid      bool   `json:"valid"`
	Algorithm  string `json:"algorithm"`
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
}

// EncryptRequest is the body of POST /api/v1/keys/{key}/encrypt. Data is an
// alias of Plaintext.
type EncryptRequest struct {
	Plaintext []byte `json:"plaintext,omitempty"`
	Data      []byte `json:"data,omitempty"`
	Algorithm string `json:"algorithm,omitempty"`
	AAD       []byte `json:"aad,omitempty"`
}

// EncryptResponse carries the ciphertext. For AES-GCM it is a self-describing
// envelope that records the key version and nonce.
type EncryptResponse struct {
	Ciphertext []byte `json:"ciphertext"`
	Algorithm  string `json:"algorithm"`
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
}

// DecryptRequest is the body of POST /api/v1/keys/{key}/decrypt.
type DecryptRequest struct {
	Ciphertext []byte `json:"ciphertext"`
	Algorithm  string `json:"algorithm,omitempty"`
	AAD        []byte `json:"aad,omitempty"`
	KeyVersion int    `json:"key_version,omitempty"`
}

// DecryptResponse carries the plaintext.
type DecryptResponse struct {
	Plaintext  []byte `json:"plaintext"`
	Algorithm  string `json:"algorithm"`
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
}

// WrapRequest is the body of POST /api/v1/keys/{key}/wrap: key material to
// wrap under the key-encryption key.
type WrapRequest struct {
	KeyMaterial []byte `json:"key_material"`
	Algorithm   string `json:"algorithm,omitempty"`
}

// WrapResponse carries the wrapped key.
type WrapResponse struct {
	WrappedKey []byte `json:"wrapped_key"`
	Algorithm  string `json:"algorithm"`
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
}

// UnwrapRequest is the body of POST /api/v1/keys/{key}/unwrap.
type UnwrapRequest struct {
	WrappedKey []byte `json:"wrapped_key"`
	Algorithm  string `json:"algorithm,omitempty"`
	KeyVersion int    `json:"key_version,omitempty"`
}

// UnwrapResponse carries the unwrapped key material.
type UnwrapResponse struct {
	KeyMaterial []byte `json:"key_material"`
	KeyID       string `json:"key_id"`
	KeyVersion  int    `json:"key_version"`
}

// Subject is an X.509 distinguished name.
type Subject struct {
	CommonName         string   `json:"common_name,omitempty"`
	Organization       []string `json:"organization,omitempty"`
	OrganizationalUnit []string `json:"organizational_unit,omitempty"`
	Country            []string `json:"country,omitempty"`
	Province           []string `json:"province,omitempty"`
	Locality           []string `json:"locality,omitempty"`
	StreetAddress      []string `json:"street_address,omitempty"`
	PostalCode         []string `json:"postal_code,omitempty"`
	SerialNumber       string   `json:"serial_number,omitempty"`
}

// CSRRequest is the body of POST /api/v1/keys/{key}/csr.
type CSRRequest struct {
	Subject        Subject  `json:"subject"`
	DNSNames       []string `json:"dns_names,omitempty"`
	IPAddresses    []string `json:"ip_addresses,omitempty"`
	EmailAddresses []string `json:"email_addresses,omitempty"`
	URIs           []string `json:"uris,omitempty"`
	Algorithm      string   `json:"algorithm,omitempty"`
}

// CSRResponse is a PEM certificate request.
type CSRResponse struct {
	CSR        string `json:"csr"`
	Algorithm  string `json:"algorithm"`
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
}

// IssueCertificateRequest is the body of POST
// /api/v1/keys/{key}/certificate/issue: a csr (PEM), or the subject fields
// and a public_key (PEM SubjectPublicKeyInfo), or self_signed; validity (a
// duration such as "720h") or not_before/not_after.
type IssueCertificateRequest struct {
	SelfSigned            bool       `json:"self_signed,omitempty"`
	CSR                   string     `json:"csr,omitempty"`
	Subject               *Subject   `json:"subject,omitempty"`
	DNSNames              []string   `json:"dns_names,omitempty"`
	IPAddresses           []string   `json:"ip_addresses,omitempty"`
	EmailAddresses        []string   `json:"email_addresses,omitempty"`
	URIs                  []string   `json:"uris,omitempty"`
	PublicKey             string     `json:"public_key,omitempty"`
	Validity              string     `json:"validity,omitempty"`
	NotBefore             *time.Time `json:"not_before,omitempty"`
	NotAfter              *time.Time `json:"not_after,omitempty"`
	IsCA                  bool       `json:"is_ca,omitempty"`
	MaxPathLen            *int       `json:"max_path_len,omitempty"`
	KeyUsage              []string   `json:"key_usage,omitempty"`
	ExtKeyUsage           []string   `json:"ext_key_usage,omitempty"`
	CRLDistributionPoints []string   `json:"crl_distribution_points,omitempty"`
	OCSPServers           []string   `json:"ocsp_servers,omitempty"`
	Algorithm             string     `json:"algorithm,omitempty"`
}

// CertificateResponse is an issued certificate (PEM) and its serial
// (lower-case hex).
type CertificateResponse struct {
	Certificate string `json:"certificate"`
	Serial      string `json:"serial"`
	Algorithm   string `json:"algorithm"`
	KeyID       string `json:"key_id"`
	KeyVersion  int    `json:"key_version"`
}

// AttachChainRequest is the body of PUT /api/v1/keys/{key}/certificate:
// PEM certificates, leaf first.
type AttachChainRequest struct {
	Chain string `json:"chain"`
}

// ChainResponse is the chain of a key version (PEM, leaf first).
type ChainResponse struct {
	Chain      string `json:"chain"`
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
}

// JWKS is a JSON Web Key Set (RFC 7517); each key has kid
// "<key id>.<version>", use and alg.
type JWKS struct {
	Keys []map[string]any `json:"keys"`
}

// JWTRequest is the body of POST /api/v1/keys/{key}/jwt. expires_in (such
// as "15m") sets iat and exp; issued_at sets iat.
type JWTRequest struct {
	Claims    map[string]any `json:"claims"`
	Header    map[string]any `json:"header,omitempty"`
	ExpiresIn string         `json:"expires_in,omitempty"`
	IssuedAt  bool           `json:"issued_at,omitempty"`
	Algorithm string         `json:"algorithm,omitempty"`
}

// JWSRequest is the body of POST /api/v1/keys/{key}/jws: a payload
// (base64) signed as a compact JWS, optionally detached.
type JWSRequest struct {
	Payload   []byte         `json:"payload"`
	Header    map[string]any `json:"header,omitempty"`
	Detached  bool           `json:"detached,omitempty"`
	Algorithm string         `json:"algorithm,omitempty"`
}

// TokenResponse is a compact JWS (or JWT).
type TokenResponse struct {
	Token      string `json:"token"`
	KID        string `json:"kid"`
	Algorithm  string `json:"algorithm"`
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
}

// WrappingKeyResponse is the body of GET /api/v1/providers/{name}/wrapping-key.
type WrappingKeyResponse struct {
	ID        string `json:"id"`
	Provider  string `json:"provider"`
	PublicKey string `json:"public_key"` // PEM SubjectPublicKeyInfo, RSA-4096
	// Algorithm is the scheme to wrap with: RSA_AES_KEY_WRAP_SHA_256, or
	// RSA_AES_KEY_WRAP_SHA_1 for a token whose RSA-OAEP is SHA-1 only.
	Algorithm string `json:"algorithm"`
}

// ImportKeyRequest is the body of POST /api/v1/keys/import: key material
// wrapped with RSA_AES_KEY_WRAP_SHA_256 under the provider's wrapping key.
type ImportKeyRequest struct {
	Provider      string            `json:"provider,omitempty"`
	Name          string            `json:"name"`
	KeySpec       KeySpec           `json:"key_spec"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	ExpiresAt     *time.Time        `json:"expires_at,omitempty"`
	WrappedKey    []byte            `json:"wrapped_key"`
	WrappingKeyID string            `json:"wrapping_key_id"`
	// WrappingAlgorithm, when given, must be the algorithm of the
	// provider's wrapping key (RSA_AES_KEY_WRAP_SHA_256, or
	// RSA_AES_KEY_WRAP_SHA_1 on a token whose RSA-OAEP is SHA-1 only).
	WrappingAlgorithm string `json:"wrapping_algorithm,omitempty"`
	// PublicKey (PEM) is required for RSA, EC and Ed25519 keys.
	PublicKey string `json:"public_key,omitempty"`
}

// ImportVersionRequest is the body of POST /api/v1/keys/{key}/import-version:
// material of the key's spec wrapped as for an import, to become the key's
// new current version. The answer is the key.
type ImportVersionRequest struct {
	WrappedKey        []byte `json:"wrapped_key"`
	WrappingKeyID     string `json:"wrapping_key_id"`
	WrappingAlgorithm string `json:"wrapping_algorithm,omitempty"`
	PublicKey         string `json:"public_key,omitempty"`
}

// ExportKeyRequest is the body of POST /api/v1/keys/{key}/export.
type ExportKeyRequest struct {
	PublicKey string `json:"public_key"` // PEM, RSA ≥ 2048
	Version   int    `json:"version,omitempty"`
}

// ExportKeyResponse is the wrapped key material.
type ExportKeyResponse struct {
	WrappedKey []byte `json:"wrapped_key"`
	Algorithm  string `json:"algorithm"`
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
}

// DataKeyRequest is the body of POST /api/v1/keys/{key}/datakey.
type DataKeyRequest struct {
	KeySize          int    `json:"key_size"`
	IncludePlaintext bool   `json:"include_plaintext,omitempty"`
	AAD              []byte `json:"aad,omitempty"`
}

// DataKeyResponse is a data key encrypted under the key, and in the clear
// when asked.
type DataKeyResponse struct {
	Plaintext  []byte `json:"plaintext,omitempty"`
	Ciphertext []byte `json:"ciphertext"`
	Algorithm  string `json:"algorithm"`
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
}

// RewrapRequest is the body of POST /api/v1/keys/{key}/rewrap; the answer
// is an EncryptResponse.
type RewrapRequest struct {
	Ciphertext []byte `json:"ciphertext"`
	AAD        []byte `json:"aad,omitempty"`
}

// MACRequest is the body of POST /api/v1/keys/{key}/mac.
type MACRequest struct {
	Data      []byte `json:"data"`
	Algorithm string `json:"algorithm,omitempty"`
}

// MACResponse is a MAC.
type MACResponse struct {
	MAC        []byte `json:"mac"`
	Algorithm  string `json:"algorithm"`
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
}

// VerifyMACRequest is the body of POST /api/v1/keys/{key}/verify-mac; the
// answer is a VerifyResponse.
type VerifyMACRequest struct {
	Data       []byte `json:"data"`
	MAC        []byte `json:"mac"`
	Algorithm  string `json:"algorithm,omitempty"`
	KeyVersion int    `json:"key_version,omitempty"`
}

// RandomRequest is the body of POST /api/v1/random.
type RandomRequest struct {
	Bytes    int    `json:"bytes"`
	Provider string `json:"provider,omitempty"`
}

// RandomResponse is random bytes.
type RandomResponse struct {
	Random []byte `json:"random"`
}

// BatchRequest is the body of POST /api/v1/batch: each item is an object
// with "op" (sign, verify, encrypt, decrypt, mac, verify-mac), "key" and the
// fields of that operation's single request.
type BatchRequest struct {
	Items []json.RawMessage `json:"items"`
}

// BatchResponse has one result per item, in order: the single operation's
// response, or a BatchError.
type BatchResponse struct {
	Results []json.RawMessage `json:"results"`
}

// BatchError is the result of an item that failed.
type BatchError struct {
	Error  ErrorDetail `json:"error"`
	Status int         `json:"status"`
}
