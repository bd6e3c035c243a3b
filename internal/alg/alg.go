// Package alg is the table of key types, algorithms and usages that KeyGrid
// HSM knows, with the provider-independent pieces of cryptography around it:
// digests, DigestInfo prefixes, ECDSA signature encodings, verification and
// encryption with public keys, and public key encodings (PEM, JWK).
package alg

import (
	"crypto"
	"fmt"
	"slices"
	"strings"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// KeyType is the family of a key.
type KeyType string

// Key types.
const (
	RSA     KeyType = "RSA"
	EC      KeyType = "EC"
	Ed25519 KeyType = "Ed25519"
	AES     KeyType = "AES"
	// HMAC is a generic secret key for HMAC (PKCS#11 CKK_GENERIC_SECRET).
	HMAC KeyType = "HMAC"
)

// Usage is what a key may be used for.
type Usage string

// Usages.
const (
	UsageSign    Usage = "sign"
	UsageVerify  Usage = "verify"
	UsageEncrypt Usage = "encrypt"
	UsageDecrypt Usage = "decrypt"
	UsageWrap    Usage = "wrap"
	UsageUnwrap  Usage = "unwrap"
)

// Algorithm is a JOSE-style algorithm name (or AES-KWP for RFC 5649 key wrap).
type Algorithm string

// Algorithms.
const (
	RS256      Algorithm = "RS256"
	RS384      Algorithm = "RS384"
	RS512      Algorithm = "RS512"
	PS256      Algorithm = "PS256"
	PS384      Algorithm = "PS384"
	PS512      Algorithm = "PS512"
	ES256      Algorithm = "ES256"
	ES384      Algorithm = "ES384"
	ES512      Algorithm = "ES512"
	EdDSA      Algorithm = "EdDSA"
	RSAOAEP    Algorithm = "RSA-OAEP"
	RSAOAEP256 Algorithm = "RSA-OAEP-256"
	A128GCM    Algorithm = "A128GCM"
	A256GCM    Algorithm = "A256GCM"
	AESKWP     Algorithm = "AES-KWP"
	HS256      Algorithm = "HS256"
	HS384      Algorithm = "HS384"
	HS512      Algorithm = "HS512"
)

// Kind is what an algorithm does.
type Kind int

// Kinds of algorithm.
const (
	KindSign Kind = iota + 1
	KindEncrypt
	KindWrap
	// KindMAC computes and checks message authentication codes (HMAC).
	KindMAC
)

// Info describes an algorithm.
type Info struct {
	Name    Algorithm
	KeyType KeyType
	Kind    Kind
	// Hash is the digest of a signature algorithm (0 for EdDSA) or the OAEP
	// hash (MGF1 uses the same).
	Hash crypto.Hash
	// PSS is set for RSASSA-PSS (salt length = hash length).
	PSS bool
	// Curve is the curve an ECDSA algorithm belongs to.
	Curve string
	// KeySize is the key size in bits an AES-GCM or HMAC algorithm needs
	// (0: any).
	KeySize int
}

var table = map[Algorithm]Info{
	RS256:      {Name: RS256, KeyType: RSA, Kind: KindSign, Hash: crypto.SHA256},
	RS384:      {Name: RS384, KeyType: RSA, Kind: KindSign, Hash: crypto.SHA384},
	RS512:      {Name: RS512, KeyType: RSA, Kind: KindSign, Hash: crypto.SHA512},
	PS256:      {Name: PS256, KeyType: RSA, Kind: KindSign, Hash: crypto.SHA256, PSS: true},
	PS384:      {Name: PS384, KeyType: RSA, Kind: KindSign, Hash: crypto.SHA384, PSS: true},
	PS512:      {Name: PS512, KeyType: RSA, Kind: KindSign, Hash: crypto.SHA512, PSS: true},
	ES256:      {Name: ES256, KeyType: EC, Kind: KindSign, Hash: crypto.SHA256, Curve: "P-256"},
	ES384:      {Name: ES384, KeyType: EC, Kind: KindSign, Hash: crypto.SHA384, Curve: "P-384"},
	ES512:      {Name: ES512, KeyType: EC, Kind: KindSign, Hash: crypto.SHA512, Curve: "P-521"},
	EdDSA:      {Name: EdDSA, KeyType: Ed25519, Kind: KindSign},
	RSAOAEP:    {Name: RSAOAEP, KeyType: RSA, Kind: KindEncrypt, Hash: crypto.SHA1},
	RSAOAEP256: {Name: RSAOAEP256, KeyType: RSA, Kind: KindEncrypt, Hash: crypto.SHA256},
	A128GCM:    {Name: A128GCM, KeyType: AES, Kind: KindEncrypt, KeySize: 128},
	A256GCM:    {Name: A256GCM, KeyType: AES, Kind: KindEncrypt, KeySize: 256},
	AESKWP:     {Name: AESKWP, KeyType: AES, Kind: KindWrap},
	HS256:      {Name: HS256, KeyType: HMAC, Kind: KindMAC, Hash: crypto.SHA256, KeySize: 256},
	HS384:      {Name: HS384, KeyType: HMAC, Kind: KindMAC, Hash: crypto.SHA384, KeySize: 384},
	HS512:      {Name: HS512, KeyType: HMAC, Kind: KindMAC, Hash: crypto.SHA512, KeySize: 512},
}

// All returns every algorithm name, sorted.
func All() []Algorithm {
	out := make([]Algorithm, 0, len(table))
	for a := range table {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// Lookup returns the description of an algorithm, case-insensitively.
func Lookup(name string) (Info, error) {
	if i, ok := table[Algorithm(name)]; ok {
		return i, nil
	}
	for a, i := range table {
		if strings.EqualFold(string(a), name) {
			return i, nil
		}
	}
	return Info{}, kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("unknown algorithm %q", kgerr.Clip(name)))
}

// Spec is a key's shape: type, size in bits and curve.
type Spec struct {
	Type  KeyType
	Size  int
	Curve string
}

func (s Spec) String() string {
	switch s.Type {
	case EC:
		return "EC " + s.Curve
	case Ed25519:
		return "Ed25519"
	default:
		return fmt.Sprintf("%s-%d", s.Type, s.Size)
	}
}

var curveSizes = map[string]int{"P-256": 256, "P-384": 384, "P-521": 521}

// ParseKeyType normalises a key type name ("rsa", "ECDSA", "ed25519", …).
func ParseKeyType(s string) (KeyType, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "RSA":
		return RSA, nil
	case "EC", "ECDSA":
		return EC, nil
	case "ED25519", "EDDSA", "OKP":
		return Ed25519, nil
	case "AES":
		return AES, nil
	case "HMAC":
		return HMAC, nil
	case "":
		return "", kgerr.Invalid("key_spec.key_type is required (RSA, EC, Ed25519, AES or HMAC)")
	}
	return "", kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("unsupported key_type %q (RSA, EC, Ed25519, AES or HMAC)", kgerr.Clip(s)))
}

// ParseCurve normalises a curve name ("P-256", "p256", "secp256r1", "prime256v1").
func ParseCurve(s string) (string, bool) {
	switch strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), "_", "-")) {
	case "p-256", "p256", "secp256r1", "prime256v1":
		return "P-256", true
	case "p-384", "p384", "secp384r1":
		return "P-384", true
	case "p-521", "p521", "secp521r1":
		return "P-521", true
	}
	return "", false
}

// NewSpec validates and completes a key spec: the size of an EC key follows
// its curve and the reverse; Ed25519 is 256 bits.
func NewSpec(keyType string, size int, curve string) (Spec, error) {
	t, err := ParseKeyType(keyType)
	if err != nil {
		return Spec{}, err
	}
	s := Spec{Type: t, Size: size}
	switch t {
	case RSA:
		if curve != "" {
			return Spec{}, kgerr.Invalid("key_spec.curve does not apply to RSA keys")
		}
		if size == 0 {
			return Spec{}, kgerr.Invalid("key_spec.key_size is required for RSA keys (2048, 3072 or 4096)")
		}
		if size != 2048 && size != 3072 && size != 4096 {
			return Spec{}, kgerr.Invalid(fmt.Sprintf("key_spec.key_size %d is not allowed for RSA keys (2048, 3072 or 4096)", size))
		}
	case EC:
		if curve != "" {
			c, ok := ParseCurve(curve)
			if !ok {
				return Spec{}, kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("unsupported curve %q (P-256, P-384 or P-521)", kgerr.Clip(curve)))
			}
			if size != 0 && size != curveSizes[c] {
				return Spec{}, kgerr.Invalid(fmt.Sprintf("key_spec.key_size %d does not match curve %s", size, c))
			}
			s.Curve, s.Size = c, curveSizes[c]
			break
		}
		for c, n := range curveSizes {
			if n == size {
				s.Curve = c
			}
		}
		if s.Curve == "" {
			return Spec{}, kgerr.Invalid(fmt.Sprintf("key_spec.key_size %d is not an EC size (256, 384 or 521), or give key_spec.curve", size))
		}
	case Ed25519:
		if size != 0 && size != 256 {
			return Spec{}, kgerr.Invalid(fmt.Sprintf("key_spec.key_size %d is not allowed for Ed25519 keys", size))
		}
		if curve != "" && !strings.EqualFold(curve, "Ed25519") {
			return Spec{}, kgerr.Invalid(fmt.Sprintf("key_spec.curve %q does not apply to Ed25519 keys", kgerr.Clip(curve)))
		}
		s.Size, s.Curve = 256, ""
	case AES:
		if curve != "" {
			return Spec{}, kgerr.Invalid("key_spec.curve does not apply to AES keys")
		}
		if size != 128 && size != 256 {
			return Spec{}, kgerr.Invalid(fmt.Sprintf("key_spec.key_size %d is not allowed for AES keys (128 or 256)", size))
		}
	case HMAC:
		if curve != "" {
			return Spec{}, kgerr.Invalid("key_spec.curve does not apply to HMAC keys")
		}
		if size != 256 && size != 384 && size != 512 {
			return Spec{}, kgerr.Invalid(fmt.Sprintf("key_spec.key_size %d is not allowed for HMAC keys (256, 384 or 512)", size))
		}
	}
	return s, nil
}

// Secret reports whether keys of type t are secret keys (no public key).
func Secret(t KeyType) bool { return t == AES || t == HMAC }

// Compatible returns an error unless algorithm a can be used with a key of
// spec s.
func Compatible(s Spec, a Info) error {
	if a.KeyType != s.Type {
		return kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("algorithm %s does not apply to %s keys", a.Name, s))
	}
	if a.Curve != "" && a.Curve != s.Curve {
		return kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("algorithm %s needs curve %s, the key is %s", a.Name, a.Curve, s))
	}
	if a.KeySize != 0 && a.KeySize != s.Size {
		return kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("algorithm %s needs an %s-%d key, the key is %s", a.Name, a.KeyType, a.KeySize, s))
	}
	return nil
}

// Default returns the default algorithm for a key spec and usage.
func Default(s Spec, usage []Usage) Algorithm {
	switch s.Type {
	case RSA:
		if slices.Contains(usage, UsageEncrypt) || slices.Contains(usage, UsageDecrypt) {
			if !slices.Contains(usage, UsageSign) {
				return RSAOAEP256
			}
		}
		return PS256
	case EC:
		switch s.Curve {
		case "P-384":
			return ES384
		case "P-521":
			return ES512
		}
		return ES256
	case Ed25519:
		return EdDSA
	case AES:
		if (slices.Contains(usage, UsageWrap) || slices.Contains(usage, UsageUnwrap)) &&
			!slices.Contains(usage, UsageEncrypt) && !slices.Contains(usage, UsageDecrypt) {
			return AESKWP
		}
		if s.Size == 128 {
			return A128GCM
		}
		return A256GCM
	case HMAC:
		switch s.Size {
		case 384:
			return HS384
		case 512:
			return HS512
		}
		return HS256
	}
	return ""
}

// DefaultUsage returns the usage of a key when none is given: what its
// algorithm does.
func DefaultUsage(a Info) []Usage {
	switch a.Kind {
	case KindSign, KindMAC:
		return []Usage{UsageSign, UsageVerify}
	case KindWrap:
		return []Usage{UsageWrap, UsageUnwrap}
	default:
		return []Usage{UsageEncrypt, UsageDecrypt}
	}
}

// ParseUsage validates usages against a key type. Duplicates are removed.
func ParseUsage(t KeyType, in []string) ([]Usage, error) {
	allowed := map[KeyType][]Usage{
		RSA:     {UsageSign, UsageVerify, UsageEncrypt, UsageDecrypt},
		EC:      {UsageSign, UsageVerify},
		Ed25519: {UsageSign, UsageVerify},
		AES:     {UsageEncrypt, UsageDecrypt, UsageWrap, UsageUnwrap},
		HMAC:    {UsageSign, UsageVerify},
	}[t]
	var out []Usage
	for _, s := range in {
		u := Usage(strings.ToLower(strings.TrimSpace(s)))
		if !slices.Contains([]Usage{UsageSign, UsageVerify, UsageEncrypt, UsageDecrypt, UsageWrap, UsageUnwrap}, u) {
			return nil, kgerr.Invalid(fmt.Sprintf("unknown usage %q (sign, verify, encrypt, decrypt, wrap, unwrap)", kgerr.Clip(s)))
		}
		if !slices.Contains(allowed, u) {
			return nil, kgerr.Invalid(fmt.Sprintf("usage %q does not apply to %s keys", u, t))
		}
		if !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out, nil
}
