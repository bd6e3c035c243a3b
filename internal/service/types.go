package service

import (
	"crypto"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// The service's own request and result types. Front ends (the REST API,
// the XKS proxy, …) translate their wire formats into these and back; the
// service knows no wire type, no base64 and no HTTP.

// operation is one thing the service does: its name in the audit log and
// the metrics, and the authorization action it needs.
type operation struct {
	name   string
	action auth.Action
}

// The operations, each with its action.
var (
	opCreate     = operation{"create", auth.ActionCreate}
	opGet        = operation{"get", auth.ActionGet}
	opList       = operation{"list", auth.ActionList}
	opPublicKey  = operation{"public_key", auth.ActionPublicKey}
	opActivate   = operation{"activate", auth.ActionActivate}
	opDeactivate = operation{"deactivate", auth.ActionDeactivate}
	opRotate     = operation{"rotate", auth.ActionRotate}
	// A DELETE schedules the deletion; the sweeper destroys the key when its
	// date has passed.
	opScheduleDeletion = operation{"deletion_scheduled", auth.ActionDelete}
	opCancelDeletion   = operation{"deletion_cancelled", auth.ActionCancelDeletion}
	opDestroy          = operation{"key_destroyed", auth.ActionDelete}
	opUpdate           = operation{"update", auth.ActionUpdate}
	opSign             = operation{"sign", auth.ActionSign}
	opVerify           = operation{"verify", auth.ActionVerify}
	opEncrypt          = operation{"encrypt", auth.ActionEncrypt}
	opDecrypt          = operation{"decrypt", auth.ActionDecrypt}
	opWrap             = operation{"wrap", auth.ActionWrap}
	opUnwrap           = operation{"unwrap", auth.ActionUnwrap}

	opWrappingKey = operation{"wrapping_key", auth.ActionImport}
	opImport      = operation{"import", auth.ActionImport}
	opImportVer   = operation{"import_version", auth.ActionImport}
	opExport      = operation{"export", auth.ActionExport}
	opMAC         = operation{"mac", auth.ActionSign}
	opVerifyMAC   = operation{"verify_mac", auth.ActionVerify}
	opDataKey     = operation{"generate_data_key", auth.ActionEncrypt}
	opRewrap      = operation{"rewrap", auth.ActionRewrap}
	opRandom      = operation{"random", auth.ActionRandom}

	opCSR              = operation{"csr", auth.ActionCSR}
	opIssueCertificate = operation{"issue_certificate", auth.ActionIssueCertificate}
	opAttachChain      = operation{"attach_certificate", auth.ActionAttachCertificate}
	opGetChain         = operation{"get_certificate", auth.ActionGetCertificate}
	opJWKS             = operation{"jwks", auth.ActionJWKS}
	opSignJWT          = operation{"sign_jwt", auth.ActionSignJWT}
	opSignJWS          = operation{"sign_jws", auth.ActionSignJWS}

	opAuditCheckpoints = operation{"audit_checkpoints", auth.ActionAuditCheckpoints}
)

// KeySpec describes the key to create. Sizes and curves follow alg.NewSpec;
// an empty Algorithm is the key type's default.
type KeySpec struct {
	KeyType     string
	KeySize     int
	Curve       string
	Algorithm   string
	Usage       []string
	Extractable bool
}

// CreateKeyRequest asks for a new key. An empty Provider is the default.
type CreateKeyRequest struct {
	Provider    string
	Name        string
	Spec        KeySpec
	Metadata    map[string]string
	ExpiresAt   *time.Time
	Description string
	// PublishJWKS lists the key's public versions in the unauthenticated
	// /.well-known/jwks.json.
	PublishJWKS bool
}

// Key is the service's view of a managed key.
type Key struct {
	ID          string
	Name        string
	Provider    string
	KeyType     string
	KeySize     int
	Curve       string
	Algorithm   string
	Usage       []string
	Extractable bool
	State       string
	// Version is the current version (0 while none is active).
	Version int
	// Versions are the active versions, oldest first.
	Versions    []KeyVersion
	Metadata    map[string]string
	Description string
	// Origin is "generated" or "imported".
	Origin    string
	CreatedAt time.Time
	UpdatedAt time.Time
	ExpiresAt *time.Time
	// DeletionDate is when a key pending deletion is destroyed.
	DeletionDate *time.Time
	// RotationPeriod is how often the key rotates by itself (0: never),
	// NextRotationAt when it next does.
	RotationPeriod time.Duration
	NextRotationAt *time.Time
	// MinDecryptVersion is the oldest version that still decrypts, unwraps
	// and verifies (0: all).
	MinDecryptVersion int
	// Revision is the record's revision: UpdateKeyRequest.Revision compares
	// it.
	Revision int64
	// PublishJWKS: the key is in /.well-known/jwks.json.
	PublishJWKS bool
}

// KeyVersion is one version of a key. ProviderRef names its material in
// the provider (for PKCS#11 an RFC 7512 URI).
type KeyVersion struct {
	Version     int
	CreatedAt   time.Time
	ProviderRef string
}

// ListOptions filter a listing. Offset skips that many keys first (the
// original KeyGrid API's paging); it does not go with a PageToken.
type ListOptions struct {
	Provider  string
	State     string
	Limit     int
	PageToken string
	Offset    int
}

// DeleteKeyRequest schedules the deletion of a key. PendingWindow is how
// long the key waits, refusing every operation, before it is destroyed (0:
// the configured default); it must lie between the configured floor and
// MaxDeletionWindow.
type DeleteKeyRequest struct {
	Key           string
	PendingWindow time.Duration
}

// Optional is a field of an update: changed only when Set.
type Optional[T any] struct {
	Set   bool
	Value T
}

// Set returns an Optional holding v.
func Set[T any](v T) Optional[T] { return Optional[T]{Set: true, Value: v} }

// UpdateKeyRequest changes what may change of a key after its creation.
// Metadata replaces the whole map; ExpiresAt nil removes the expiry;
// RotationPeriod 0 turns automatic rotation off; MinDecryptVersion 0 lets
// every version decrypt again; PublishJWKS puts the key in (or takes it out
// of) /.well-known/jwks.json. Revision, when not 0, is the revision the
// caller read: the update is refused (CONFLICT) if the key changed since.
type UpdateKeyRequest struct {
	Key               string
	Metadata          Optional[map[string]string]
	Description       Optional[string]
	ExpiresAt         Optional[*time.Time]
	RotationPeriod    Optional[time.Duration]
	MinDecryptVersion Optional[int]
	PublishJWKS       Optional[bool]
	Revision          int64
}

// KeyList is a page of keys.
type KeyList struct {
	Keys          []Key
	NextPageToken string
}

// PublicKeyInfo is the public key of one version.
type PublicKeyInfo struct {
	KeyID      string
	KeyVersion int
	// DER is the SubjectPublicKeyInfo; Key the same, parsed.
	DER       []byte
	Key       crypto.PublicKey
	KeyType   string
	Algorithm string
	KeySize   int
}

// SignatureFormat is how an ECDSA signature is encoded: DER (the default,
// X.509's) or raw r‖s (JWS's). Other key types ignore it.
type SignatureFormat string

// Signature formats.
const (
	SignatureDefault SignatureFormat = ""
	SignatureDER     SignatureFormat = "der"
	SignatureRaw     SignatureFormat = "raw"
)

// SignRequest signs Data, or a Digest of it, with the current version.
// Exactly one of Data and Digest is set (non-nil).
type SignRequest struct {
	Key       string
	Algorithm string
	Data      []byte
	Digest    []byte
	Format    SignatureFormat
}

// SignResult is a signature and what made it.
type SignResult struct {
	Signature  []byte
	Algorithm  string
	KeyID      string
	KeyVersion int
}

// VerifyRequest checks a signature. KeyVersion 0 tries every active
// version, newest first.
type VerifyRequest struct {
	Key        string
	Algorithm  string
	Data       []byte
	Digest     []byte
	Signature  []byte
	Format     SignatureFormat
	KeyVersion int
}

// VerifyResult tells whether the signature is valid, and under which
// version (the current one when it is not).
type VerifyResult struct {
	Valid      bool
	Algorithm  string
	KeyID      string
	KeyVersion int
}

// CiphertextFormat is how a front end packs an AES-GCM result into one
// ciphertext of its own (the REST API's envelope records the key version
// and the nonce, and binds the version into the additional data). The
// service calls it after the key has been checked, so that a malformed
// ciphertext is refused and audited like any other failed decrypt.
type CiphertextFormat interface {
	// AAD returns the additional data to authenticate under version,
	// given the caller's.
	AAD(version int, aad []byte) []byte
	// Parse takes a ciphertext apart. Its errors are the caller's fault
	// (kgerr.KindDecryptionFailed).
	Parse(b []byte) (version int, nonce, ciphertext, tag []byte, err error)
}

// EncryptRequest encrypts Plaintext with the current version: AES-GCM in
// the provider (with AAD, or Format.AAD when Format is set), RSA-OAEP with
// the public key (no AAD).
type EncryptRequest struct {
	Key       string
	Algorithm string
	Plaintext []byte
	AAD       []byte
	Format    CiphertextFormat
}

// EncryptResult is the ciphertext. For AES-GCM, Nonce and Tag are set
// apart from Ciphertext; for RSA-OAEP only Ciphertext is.
type EncryptResult struct {
	Ciphertext []byte
	Nonce      []byte
	Tag        []byte
	Algorithm  string
	KeyID      string
	KeyVersion int
}

// DecryptRequest decrypts with KeyVersion (0: current). For AES-GCM the
// Nonce and Tag are given apart from the Ciphertext, or Format takes the
// Ciphertext apart (and names the version).
type DecryptRequest struct {
	Key        string
	Algorithm  string
	KeyVersion int
	Ciphertext []byte
	Nonce      []byte
	Tag        []byte
	AAD        []byte
	Format     CiphertextFormat
}

// DecryptResult is the plaintext.
type DecryptResult struct {
	Plaintext  []byte
	Algorithm  string
	KeyID      string
	KeyVersion int
}

// WrapRequest wraps key material under the current version of a
// key-encryption key.
type WrapRequest struct {
	Key         string
	Algorithm   string
	KeyMaterial []byte
}

// WrapResult is the wrapped key.
type WrapResult struct {
	WrappedKey []byte
	Algorithm  string
	KeyID      string
	KeyVersion int
}

// UnwrapRequest unwraps with KeyVersion (0: current).
type UnwrapRequest struct {
	Key        string
	Algorithm  string
	KeyVersion int
	WrappedKey []byte
}

// UnwrapResult is the key material.
type UnwrapResult struct {
	KeyMaterial []byte
	KeyID       string
	KeyVersion  int
}

// ProviderInfo is a provider with what it can do and its cached health.
type ProviderInfo struct {
	Name         string
	Type         string
	Healthy      bool
	Capabilities provider.Capabilities
}

// ProviderHealth is a provider's health as the background checker last saw
// it, with the provider's own numbers (pool, recovery) in Details.
type ProviderHealth struct {
	Name    string
	Type    string
	State   string
	Healthy bool
	// Reasons says, for people, why the state is degraded (a slow check,
	// requests that gave up waiting for a session, a cluster at risk).
	Reasons []string
	// Cluster is the provider's view of its HSM cluster (aws-cloudhsm with
	// region and cluster_id); nil when it watches none.
	Cluster       *provider.ClusterStatus
	LastErrorKind kgerr.Kind
	LastError     string
	LastSuccess   *time.Time
	LastCheck     *time.Time
	Latency       time.Duration
	Details       map[string]any
}

// ProviderStatus is one line of readiness.
type ProviderStatus struct {
	Name    string
	Type    string
	Healthy bool
	State   string
}

// Subject is an X.509 distinguished name.
type Subject struct {
	CommonName         string
	Organization       []string
	OrganizationalUnit []string
	Country            []string
	Province           []string
	Locality           []string
	StreetAddress      []string
	PostalCode         []string
	SerialNumber       string
}

// AltNames are a certificate's subject alternative names, as text (the
// service parses and checks them).
type AltNames struct {
	DNSNames       []string
	IPAddresses    []string
	EmailAddresses []string
	URIs           []string
}

// CSRRequest asks for a PKCS#10 certificate signing request signed by the
// current version of a key (Algorithm: the key's default signature
// algorithm when empty).
type CSRRequest struct {
	Key       string
	Algorithm string
	Subject   Subject
	AltNames  AltNames
}

// CSRResult is the request, DER.
type CSRResult struct {
	CSR        []byte
	Algorithm  string
	KeyID      string
	KeyVersion int
}

// IssueCertificateRequest asks the key (the issuer) to sign a certificate.
// The subject and its public key come from CSR (DER, its signature
// checked) or from Subject, AltNames and PublicKey (DER
// SubjectPublicKeyInfo); with SelfSigned, the key certifies its own public
// key under Subject. Validity is a duration from now, or NotBefore (default
// now) and NotAfter.
type IssueCertificateRequest struct {
	Key        string
	Algorithm  string
	SelfSigned bool
	CSR        []byte
	Subject    *Subject
	AltNames   AltNames
	PublicKey  []byte
	Validity   time.Duration
	NotBefore  *time.Time
	NotAfter   *time.Time
	IsCA       bool
	// MaxPathLen constrains a CA certificate (nil: no constraint, or one
	// below the issuer's when the issuer has one).
	MaxPathLen            *int
	KeyUsage              []string
	ExtKeyUsage           []string
	CRLDistributionPoints []string
	OCSPServers           []string
}

// CertificateResult is an issued certificate, DER, and its serial number
// (lower-case hex).
type CertificateResult struct {
	Certificate []byte
	Serial      string
	Algorithm   string
	KeyID       string
	KeyVersion  int
}

// AttachChainRequest attaches a certificate chain (DER certificates, leaf
// first) to the current version of a key.
type AttachChainRequest struct {
	Key   string
	Chain [][]byte
}

// ChainResult is the chain of one version, DER certificates, leaf first.
type ChainResult struct {
	Chain      [][]byte
	KeyID      string
	KeyVersion int
}

// JWK is one public key of a JWKS: a version of a key.
type JWK struct {
	// KID is "<key id>.<version>".
	KID        string
	KeyID      string
	KeyVersion int
	Key        crypto.PublicKey
	// Algorithm is the JOSE algorithm; Use "sig" or "enc".
	Algorithm string
	Use       string
	// Chain is the version's certificate chain (DER, leaf first), if any.
	Chain [][]byte
}

// JWTRequest asks for a JWT signed by the current version of a key. With
// ExpiresIn, "iat" and "exp" are set (and must not be in Claims); with
// IssuedAt, "iat" is. Header adds protected header parameters ("typ"
// defaults to "JWT"; "alg", "kid" and "crit" are the gateway's).
type JWTRequest struct {
	Key       string
	Algorithm string
	Claims    map[string]any
	Header    map[string]any
	ExpiresIn time.Duration
	IssuedAt  bool
}

// JWSRequest asks for a compact JWS over Payload; Detached leaves the
// payload out of the serialization.
type JWSRequest struct {
	Key       string
	Algorithm string
	Payload   []byte
	Header    map[string]any
	Detached  bool
}

// TokenResult is a compact JWS (a JWT for JWTRequest).
type TokenResult struct {
	Token      string
	KID        string
	Algorithm  string
	KeyID      string
	KeyVersion int
}

// WrappingKeyInfo is a provider's import wrapping key.
type WrappingKeyInfo struct {
	Provider string
	ID       string
	// PublicKey is the DER SubjectPublicKeyInfo (RSA-4096).
	PublicKey []byte
	Algorithm string // alg.RSAAESKeyWrapSHA256
}

// ImportKeyRequest asks to import key material wrapped with
// RSA_AES_KEY_WRAP_SHA_256 under a provider's wrapping key as a new key.
// PublicKey (DER SubjectPublicKeyInfo) is required for key pairs.
type ImportKeyRequest struct {
	CreateKeyRequest
	WrappingKeyID     string
	WrappingAlgorithm string
	WrappedKey        []byte
	PublicKey         []byte
}

func (r ImportKeyRequest) material() WrappedMaterial {
	return WrappedMaterial{WrappingKeyID: r.WrappingKeyID, WrappingAlgorithm: r.WrappingAlgorithm, WrappedKey: r.WrappedKey, PublicKey: r.PublicKey}
}

// WrappedMaterial is imported key material: wrapped under the provider's
// wrapping key WrappingKeyID with WrappingAlgorithm (empty: the scheme the
// wrapping key takes; named, it must be that scheme) and, for key pairs,
// the public key (DER SubjectPublicKeyInfo) the caller says belongs to it.
type WrappedMaterial struct {
	WrappingKeyID     string
	WrappingAlgorithm string
	WrappedKey        []byte
	PublicKey         []byte
}

// ImportVersionRequest imports wrapped material as the new current version
// of an active key, of the key's spec.
type ImportVersionRequest struct {
	Key string
	WrappedMaterial
}

// ExportKeyRequest asks for a version (0: newest) of an extractable key,
// wrapped for the holder of PublicKey (DER SubjectPublicKeyInfo, RSA of at
// least 2048 bits).
type ExportKeyRequest struct {
	Key       string
	Version   int
	PublicKey []byte
}

// ExportResult is the wrapped material.
type ExportResult struct {
	WrappedKey []byte
	Algorithm  string
	KeyID      string
	KeyVersion int
}

// MACRequest computes an HMAC of Data with the current version.
type MACRequest struct {
	Key       string
	Algorithm string
	Data      []byte
}

// MACResult is the MAC.
type MACResult struct {
	MAC        []byte
	Algorithm  string
	KeyID      string
	KeyVersion int
}

// VerifyMACRequest checks a MAC with KeyVersion (0: every active version,
// newest first).
type VerifyMACRequest struct {
	Key        string
	Algorithm  string
	Data       []byte
	MAC        []byte
	KeyVersion int
}

// RandomRequest asks a provider (empty: the default) for Bytes random bytes.
type RandomRequest struct {
	Provider string
	Bytes    int
}

// DataKeyRequest asks for a fresh AES data key of KeySize bits (128 or
// 256), encrypted under the current version of Key like any Encrypt.
type DataKeyRequest struct {
	Key              string
	KeySize          int
	IncludePlaintext bool
	AAD              []byte
	Format           CiphertextFormat
}

// DataKeyResult is the data key encrypted, and in the clear when asked.
type DataKeyResult struct {
	Plaintext []byte
	EncryptResult
}

// RewrapRequest decrypts a ciphertext of Key and encrypts the plaintext
// again under the current version; the plaintext is never returned.
type RewrapRequest struct {
	Key        string
	Ciphertext []byte
	AAD        []byte
	Format     CiphertextFormat
}
