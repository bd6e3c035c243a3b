package alg

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/x509"
	"fmt"

	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// RSAAESKeyWrapSHA256 is the one key-transport scheme of import and export
// (AWS KMS imports, Vault transit BYOK and PKCS#11's CKM_RSA_AES_KEY_WRAP):
// a fresh 256-bit AES key encrypted with RSA-OAEP (SHA-256, MGF1-SHA-256,
// no label), followed by the key material wrapped under that AES key with
// AES key wrap with padding (RFC 5649). The material is the raw key for AES
// and HMAC keys, PKCS#8 DER for private keys.
const RSAAESKeyWrapSHA256 = "RSA_AES_KEY_WRAP_SHA_256"

// RSAAESKeyWrapSHA1 is the same scheme with RSA-OAEP over SHA-1 (and
// MGF1-SHA-1), as AWS KMS also offers: the scheme of an HSM whose RSA-OAEP
// takes SHA-1 only (SoftHSM2 2.6). A provider says which of the two its
// wrapping key takes (provider.WrappingKey.Algorithm); clients wrap with
// what it says.
const RSAAESKeyWrapSHA1 = "RSA_AES_KEY_WRAP_SHA_1"

// TransportHash is the RSA-OAEP hash of a key-transport scheme.
func TransportHash(scheme string) (crypto.Hash, error) {
	switch scheme {
	case RSAAESKeyWrapSHA256, "":
		return crypto.SHA256, nil
	case RSAAESKeyWrapSHA1:
		return crypto.SHA1, nil
	}
	return 0, kgerr.Invalid(fmt.Sprintf("wrapping_algorithm %q is not %s or %s", kgerr.Clip(scheme), RSAAESKeyWrapSHA256, RSAAESKeyWrapSHA1))
}

// WrapRSAAESWith wraps material for the holder of pub with a scheme
// (RSAAESKeyWrapSHA256 or RSAAESKeyWrapSHA1).
func WrapRSAAESWith(scheme string, pub *rsa.PublicKey, material []byte) ([]byte, error) {
	h, err := TransportHash(scheme)
	if err != nil {
		return nil, err
	}
	return wrapRSAAES(h, pub, material)
}

// ErrTransport is returned when a transported key does not open: a wrong
// wrapping key, or corrupt or truncated wrapping.
var ErrTransport = errors.New("the wrapped key does not open under this wrapping key")

// WrapRSAAES wraps material for the holder of pub with RSA_AES_KEY_WRAP_SHA_256.
func WrapRSAAES(pub *rsa.PublicKey, material []byte) ([]byte, error) {
	return wrapRSAAES(crypto.SHA256, pub, material)
}

func wrapRSAAES(h crypto.Hash, pub *rsa.PublicKey, material []byte) ([]byte, error) {
	kek := make([]byte, 32)
	defer clear(kek)
	if _, err := rand.Read(kek); err != nil {
		return nil, err
	}
	head, err := rsa.EncryptOAEP(h.New(), rand.Reader, pub, kek, nil)
	if err != nil {
		return nil, err
	}
	tail, err := WrapKWP(kek, material)
	if err != nil {
		return nil, err
	}
	return append(head, tail...), nil
}

// SplitRSAAES cuts a transported key into its RSA-OAEP part (the modulus
// length of the wrapping key) and its RFC 5649 part.
func SplitRSAAES(modulusBytes int, wrapped []byte) (head, tail []byte, err error) {
	if len(wrapped) < modulusBytes+16 || (len(wrapped)-modulusBytes)%8 != 0 {
		return nil, nil, ErrTransport
	}
	return wrapped[:modulusBytes], wrapped[modulusBytes:], nil
}

// UnwrapRSAAES opens a key wrapped with RSA_AES_KEY_WRAP_SHA_256 with the
// wrapping key's private half. Every failure is ErrTransport.
func UnwrapRSAAES(priv *rsa.PrivateKey, wrapped []byte) ([]byte, error) {
	head, tail, err := SplitRSAAES(priv.Size(), wrapped)
	if err != nil {
		return nil, err
	}
	kek, err := rsa.DecryptOAEP(sha256.New(), nil, priv, head, nil)
	if err != nil || len(kek) != 32 {
		return nil, ErrTransport
	}
	defer clear(kek)
	m, err := UnwrapKWP(kek, tail)
	if err != nil {
		return nil, ErrTransport
	}
	return m, nil
}

// ParseWrappingPublicKey parses the DER SubjectPublicKeyInfo of an RSA key
// to wrap for: at least 2048 bits.
func ParseWrappingPublicKey(der []byte) (*rsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, kgerr.Invalid("public_key is not a SubjectPublicKeyInfo")
	}
	pub, ok := k.(*rsa.PublicKey)
	if !ok || pub.N.BitLen() < 2048 {
		return nil, kgerr.Invalid("public_key must be an RSA key of at least 2048 bits")
	}
	return pub, nil
}

// CheckPrivateSpec returns INVALID_INPUT unless priv (from PKCS#8) is a key
// of spec s.
func CheckPrivateSpec(s Spec, priv any) error {
	var got Spec
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		got = Spec{Type: RSA, Size: k.N.BitLen()}
	case *ecdsa.PrivateKey:
		c := k.Curve.Params().Name
		got = Spec{Type: EC, Size: curveSizes[c], Curve: c}
	case ed25519.PrivateKey:
		got = Spec{Type: Ed25519, Size: 256}
	default:
		return kgerr.Invalid("the key material is of a key type KeyGrid does not import")
	}
	if got != s {
		return kgerr.Invalid(fmt.Sprintf("the key material is a %s key, key_spec says %s", got, s))
	}
	return nil
}
