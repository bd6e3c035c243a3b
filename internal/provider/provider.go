// Package provider is the contract between the key service and the places
// key material lives: the software keystore and PKCS#11 tokens.
//
// A provider knows nothing of names, states, versions or policy; the service
// keeps those. It creates key material for an object id the service chooses
// (so that a create can be looked for again after a crash), returns an opaque
// reference the service stores, and performs private- and secret-key
// operations by reference. Public-key operations (verify, RSA encryption) run
// in the service from the public key a provider returns.
//
// Errors are *kgerr.Error: KEY_NOT_FOUND for a reference that names nothing,
// UNSUPPORTED_ALGORITHM for what the provider cannot do, DECRYPTION_FAILED for
// ciphertext that does not authenticate, SERVICE_UNAVAILABLE / HSM_TIMEOUT
// when the backend is away.
package provider

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// Provider holds key material and performs operations with it. Every method
// is safe for concurrent use.
type Provider interface {
	// Name is the instance name from configuration; Type its type.
	Name() string
	Type() string
	// Capabilities tells which key specs and algorithms this provider
	// supports. It does not change while the provider is open.
	Capabilities() Capabilities

	// CreateKey makes new key material for ObjectID. The service never
	// reuses an ObjectID, and a provider need not search for one (that
	// costs O(objects) on an HSM); after a failure that may have made the
	// material anyway, the provider or the service looks with FindKey
	// before making it again.
	CreateKey(ctx context.Context, req CreateKeyRequest) (CreatedKey, error)
	// FindKey looks for key material by the object id it was created with;
	// found is false when there is none. When only part of it exists (a
	// key pair whose generation was cut short: one half on the token), the
	// error is an *IncompleteKeyError naming what is there.
	FindKey(ctx context.Context, objectID string) (ref string, found bool, err error)
	// DeleteKey destroys key material. Deleting what does not exist succeeds.
	DeleteKey(ctx context.Context, ref string) error
	// PublicKey returns the DER SubjectPublicKeyInfo of an asymmetric key.
	PublicKey(ctx context.Context, ref string) ([]byte, error)

	// Sign signs Input: the digest for hashed algorithms, the message for
	// EdDSA. ECDSA signatures are returned as fixed-width r‖s.
	Sign(ctx context.Context, req SignRequest) ([]byte, error)
	// Encrypt encrypts with a secret key (AES-GCM).
	Encrypt(ctx context.Context, req EncryptRequest) (EncryptResult, error)
	// Decrypt decrypts with a private key (RSA-OAEP) or a secret key (AES-GCM).
	Decrypt(ctx context.Context, req DecryptRequest) ([]byte, error)
	// WrapKey wraps key material with a key-encryption key (RFC 5649).
	WrapKey(ctx context.Context, req WrapRequest) ([]byte, error)
	// UnwrapKey reverses WrapKey.
	UnwrapKey(ctx context.Context, req UnwrapRequest) ([]byte, error)

	// CheckHealth makes a cheap call to the backend and reports whether it
	// answers.
	CheckHealth(ctx context.Context) error
	// Close releases the provider. Calls after Close fail.
	Close() error
}

// IncompleteKeyError is FindKey's answer when only part of a key's material
// exists: a key pair whose generation was interrupted (a process killed
// between the HSM storing the public and the private object). The material
// is unusable; Ref names it for DeleteKey.
type IncompleteKeyError struct {
	Ref     string
	Missing string // what is missing, e.g. "private key"
}

func (e *IncompleteKeyError) Error() string {
	return "the key material is incomplete: its " + e.Missing + " is missing"
}

// StatsReporter is implemented by providers with a session pool and
// recovery (PKCS#11): the numbers feed the health endpoint and metrics.
type StatsReporter interface {
	Stats() Stats
}

// Stats is a snapshot of a provider's sessions, waits, resets and errors.
type Stats struct {
	SessionsInUse int
	SessionsIdle  int
	SessionsMax   int
	// SessionsOpen counts the sessions of the current module generation
	// that are open (in use, idle and the login session).
	SessionsOpen int
	// Waits counts acquisitions that had to wait for a session; WaitSeconds
	// is their total wait; WaitTimeouts those whose deadline passed first.
	Waits        uint64
	WaitSeconds  float64
	WaitTimeouts uint64
	// Resets counts module resets (C_Finalize + C_Initialize); LastReset is
	// the time of the last successful one.
	Resets    uint64
	LastReset time.Time
	// ModuleHost is set when the module runs in a host process of its own
	// (pkcs11 isolation: process); ModuleHostRestarts counts the hosts
	// replaced after a hang, a crash or a lost HSM.
	ModuleHost         bool
	ModuleHostRestarts uint64
	// Up is false while the provider is recovering from a lost HSM.
	Up bool
	// Errors counts failures by PKCS#11 return code name.
	Errors map[string]uint64
	// Info is descriptive (token label, serial, slot, library).
	Info map[string]any
}

// CreateKeyRequest asks for new key material.
type CreateKeyRequest struct {
	// ObjectID is chosen by the service, unique, 32 hex characters; it
	// becomes the PKCS#11 CKA_ID.
	ObjectID    string
	Label       string
	Spec        alg.Spec
	Usage       []alg.Usage
	Extractable bool
}

// CreatedKey is the result of CreateKey.
type CreatedKey struct {
	Ref       string
	PublicKey []byte // DER SubjectPublicKeyInfo; nil for secret keys
}

// SignRequest asks for a signature.
type SignRequest struct {
	Ref       string
	Spec      alg.Spec
	Algorithm alg.Info
	Input     []byte
}

// EncryptRequest asks for AES-GCM encryption.
type EncryptRequest struct {
	Ref       string
	Spec      alg.Spec
	Algorithm alg.Info
	Plaintext []byte
	AAD       []byte
}

// EncryptResult is a 12-byte nonce and the ciphertext with its 16-byte tag.
type EncryptResult struct {
	Nonce      []byte
	Ciphertext []byte
}

// DecryptRequest asks for decryption. Nonce and AAD apply to AES-GCM.
type DecryptRequest struct {
	Ref        string
	Spec       alg.Spec
	Algorithm  alg.Info
	Ciphertext []byte
	Nonce      []byte
	AAD        []byte
}

// WrapRequest asks to wrap key material.
type WrapRequest struct {
	Ref         string
	Spec        alg.Spec
	KeyMaterial []byte
}

// UnwrapRequest asks to unwrap key material.
type UnwrapRequest struct {
	Ref     string
	Spec    alg.Spec
	Wrapped []byte
}

// KeyTypeCaps lists the sizes (or curves) of one key type a provider makes.
type KeyTypeCaps struct {
	Type   alg.KeyType
	Sizes  []int
	Curves []string
}

// Capabilities is what a provider can do. A provider derives them from the
// table of how it performs each algorithm (and, for an HSM, from what the
// token reports): it lists only what it performs, and every operation refuses
// an algorithm it does not list with UNSUPPORTED_ALGORITHM before it looks
// at the key.
type Capabilities struct {
	// KeyTypes lists the key specs the provider makes; only specs some
	// listed algorithm applies to.
	KeyTypes   []KeyTypeCaps
	Algorithms []alg.Algorithm
	// Missing explains, per algorithm the provider lacks, why (for example
	// "token lacks CKM_RSA_PKCS_OAEP with SHA-256").
	Missing map[alg.Algorithm]string
	// WrapMultipleOf8 is set when AES-KWP is exact only for key material
	// whose length is a multiple of 8 bytes (SoftHSM2 2.6); WrapKey refuses
	// other lengths with UNSUPPORTED_ALGORITHM.
	WrapMultipleOf8 bool
}

// CheckSpec returns UNSUPPORTED_ALGORITHM unless the provider makes keys of
// spec s.
func (c Capabilities) CheckSpec(s alg.Spec) error {
	for _, kt := range c.KeyTypes {
		if kt.Type != s.Type {
			continue
		}
		switch {
		case s.Type == alg.EC && slices.Contains(kt.Curves, s.Curve):
			return nil
		case s.Type != alg.EC && (len(kt.Sizes) == 0 || slices.Contains(kt.Sizes, s.Size)):
			return nil
		}
	}
	// When the provider lists no algorithm for such keys, that is why.
	msg := fmt.Sprintf("this provider cannot make %s keys", s)
	var whys []string
	for _, a := range alg.All() {
		i, _ := alg.Lookup(string(a))
		if alg.Compatible(s, i) != nil {
			continue
		}
		if slices.Contains(c.Algorithms, a) {
			whys = nil
			break
		}
		if c.Missing[a] != "" {
			whys = append(whys, fmt.Sprintf("%s: %s", a, c.Missing[a]))
		}
	}
	if len(whys) > 0 {
		msg += ": it performs no algorithm for them (" + strings.Join(whys, "; ") + ")"
	}
	return kgerr.New(kgerr.KindUnsupportedAlgorithm, msg)
}

// Makes reports whether a key spec the capabilities list can be used with
// algorithm a.
func (c Capabilities) Makes(a alg.Info) bool {
	for _, kt := range c.KeyTypes {
		if kt.Type != a.KeyType {
			continue
		}
		switch {
		case a.Curve != "" && slices.Contains(kt.Curves, a.Curve):
			return true
		case a.Curve == "" && (a.KeySize == 0 || len(kt.Sizes) == 0 || slices.Contains(kt.Sizes, a.KeySize)):
			return true
		}
	}
	return false
}

// Prune drops from KeyTypes the sizes and curves that no algorithm in
// Algorithms applies to, and the key types left with none: a provider does
// not advertise keys it cannot use.
func (c *Capabilities) Prune() {
	var infos []alg.Info
	for _, a := range c.Algorithms {
		if i, err := alg.Lookup(string(a)); err == nil {
			infos = append(infos, i)
		}
	}
	applies := func(s alg.Spec) bool {
		return slices.ContainsFunc(infos, func(a alg.Info) bool { return alg.Compatible(s, a) == nil })
	}
	kept := c.KeyTypes[:0]
	for _, kt := range c.KeyTypes {
		switch {
		case kt.Type == alg.EC:
			kt.Curves = slices.DeleteFunc(slices.Clone(kt.Curves), func(cv string) bool {
				return !applies(alg.Spec{Type: alg.EC, Curve: cv})
			})
			if len(kt.Curves) == 0 {
				continue
			}
		case len(kt.Sizes) > 0:
			kt.Sizes = slices.DeleteFunc(slices.Clone(kt.Sizes), func(n int) bool {
				return !applies(alg.Spec{Type: kt.Type, Size: n})
			})
			if len(kt.Sizes) == 0 {
				continue
			}
		case !slices.ContainsFunc(infos, func(a alg.Info) bool { return a.KeyType == kt.Type }):
			continue
		}
		kept = append(kept, kt)
	}
	c.KeyTypes = kept
}

// CheckAlgorithm returns UNSUPPORTED_ALGORITHM unless the provider supports
// algorithm a.
func (c Capabilities) CheckAlgorithm(a alg.Algorithm) error {
	if slices.Contains(c.Algorithms, a) {
		return nil
	}
	if why, ok := c.Missing[a]; ok {
		return kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("this provider does not support %s: %s", a, why))
	}
	return kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("this provider does not support %s", a))
}

// Alternatives lists the algorithms the provider performs that do what a
// does (same key type, same kind of operation), in the table's order: what
// to suggest when a is missing.
func (c Capabilities) Alternatives(a alg.Algorithm) []alg.Algorithm {
	want, err := alg.Lookup(string(a))
	if err != nil {
		return nil
	}
	var out []alg.Algorithm
	for _, b := range alg.All() {
		i, _ := alg.Lookup(string(b))
		if b != a && i.KeyType == want.KeyType && i.Kind == want.Kind && slices.Contains(c.Algorithms, b) {
			out = append(out, b)
		}
	}
	return out
}

// Strings lists the capabilities as words for the API: operations, key specs
// and algorithms.
func (c Capabilities) Strings() []string {
	ops := map[string]bool{}
	var specs, algs []string
	for _, a := range c.Algorithms {
		algs = append(algs, string(a))
		i, err := alg.Lookup(string(a))
		if err != nil {
			continue
		}
		switch i.Kind {
		case alg.KindSign:
			ops["sign"], ops["verify"] = true, true
		case alg.KindEncrypt:
			ops["encrypt"], ops["decrypt"] = true, true
		case alg.KindWrap:
			ops["wrap"], ops["unwrap"] = true, true
		}
	}
	for _, kt := range c.KeyTypes {
		switch {
		case kt.Type == alg.EC:
			for _, cv := range kt.Curves {
				specs = append(specs, "EC-"+cv)
			}
		case len(kt.Sizes) == 0:
			specs = append(specs, string(kt.Type))
		default:
			for _, n := range kt.Sizes {
				specs = append(specs, fmt.Sprintf("%s-%d", kt.Type, n))
			}
		}
	}
	out := make([]string, 0, len(ops)+len(specs)+len(algs))
	for op := range ops {
		out = append(out, op)
	}
	sort.Strings(out)
	return append(append(out, specs...), algs...)
}

// Params is what a factory gets to build a provider instance.
type Params struct {
	Name    string
	Type    string
	DataDir string
	// Embedded is true on the zero-configuration default.
	Embedded bool
	// Decode decodes the instance's `config` block into out, refusing
	// unknown fields.
	Decode func(out any) error
	Logger *slog.Logger
}

// Factory builds a provider instance.
type Factory func(ctx context.Context, p Params) (Provider, error)

// Registry maps provider types to factories. It is filled by the binary's
// wiring, not by init functions.
type Registry map[string]Factory

// Types lists the registered types, sorted.
func (r Registry) Types() []string {
	out := make([]string, 0, len(r))
	for t := range r {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// The optional capabilities below are separate interfaces, found by type
// assertion: a provider that cannot do one does not implement it, and the
// service refuses the operation with UNSUPPORTED_ALGORITHM naming the
// provider.

// MACer computes HMACs with secret keys of type alg.HMAC. Checking a MAC is
// the service's (a constant-time comparison with MAC's result).
type MACer interface {
	MAC(ctx context.Context, req MACRequest) ([]byte, error)
}

// MACRequest asks for the MAC of Data.
type MACRequest struct {
	Ref       string
	Spec      alg.Spec
	Algorithm alg.Info
	Data      []byte
}

// Randomer returns bytes from the provider's random number generator
// (C_GenerateRandom on a token).
type Randomer interface {
	Random(ctx context.Context, n int) ([]byte, error)
}

// WrappingKey is the public half of a provider's import wrapping key.
type WrappingKey struct {
	// ID names the key; an import names the ID it was wrapped for.
	ID string
	// PublicKey is the DER SubjectPublicKeyInfo of an RSA-4096 key.
	PublicKey []byte
	// Algorithm is the key-transport scheme the key takes:
	// alg.RSAAESKeyWrapSHA256 (also when empty) or alg.RSAAESKeyWrapSHA1
	// on a token whose RSA-OAEP unwraps with SHA-1 only.
	Algorithm string
}

// Importer takes key material wrapped under its wrapping key with the
// scheme the wrapping key names (alg.RSAAESKeyWrapSHA256 or _SHA_1). It
// opens the material inside the provider (on a token: C_UnwrapKey, so the material never exists in the gateway's memory in the
// clear), checks it is of the spec asked for and, for key pairs, that the
// public key given belongs to it; on any failure nothing is left behind.
type Importer interface {
	// WrappingKey returns the wrapping key, making it on first use and
	// keeping it afterwards.
	WrappingKey(ctx context.Context) (WrappingKey, error)
	// ImportKey stores the material under ObjectID. Errors: INVALID_INPUT
	// for a wrong wrapping key id, wrapping that does not open, material of
	// another spec, or a public key that does not match.
	ImportKey(ctx context.Context, req ImportKeyRequest) (CreatedKey, error)
}

// ImportKeyRequest asks to import wrapped key material.
type ImportKeyRequest struct {
	ObjectID      string
	Label         string
	Spec          alg.Spec
	Usage         []alg.Usage
	Extractable   bool
	WrappingKeyID string
	Wrapped       []byte
	// PublicKey is the DER SubjectPublicKeyInfo the caller says belongs to
	// the private key (required for key pairs, nil for secret keys).
	PublicKey []byte
}

// Exporter wraps the material of an extractable key for the holder of an
// RSA public key with alg.RSAAESKeyWrapSHA256. The service checks that the
// key is extractable and the caller allowed; the provider refuses material
// it holds as not extractable.
type Exporter interface {
	ExportKey(ctx context.Context, req ExportKeyRequest) ([]byte, error)
}

// ExportKeyRequest asks to export the material of Ref.
type ExportKeyRequest struct {
	Ref  string
	Spec alg.Spec
	// WrappingKey is the DER SubjectPublicKeyInfo of an RSA key of at
	// least 2048 bits.
	WrappingKey []byte
}
