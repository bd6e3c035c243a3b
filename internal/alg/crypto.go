package alg

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// Digest hashes data with the algorithm's hash.
func Digest(a Info, data []byte) []byte {
	h := a.Hash.New()
	h.Write(data)
	return h.Sum(nil)
}

// CheckDigest returns an INVALID_INPUT error unless d has the length of the
// algorithm's hash.
func CheckDigest(a Info, d []byte) error {
	if a.Hash == 0 {
		return kgerr.Invalid(fmt.Sprintf("algorithm %s signs the message itself: send data, not a digest", a.Name))
	}
	if len(d) != a.Hash.Size() {
		return kgerr.Invalid(fmt.Sprintf("digest is %d bytes, %s needs %d", len(d), a.Name, a.Hash.Size()))
	}
	return nil
}

// digestInfoPrefixes are the DER prefixes of a PKCS#1 v1.5 DigestInfo
// (RFC 8017 §9.2, note 1).
var digestInfoPrefixes = map[crypto.Hash][]byte{
	crypto.SHA256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30},
	crypto.SHA512: {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40},
}

// DigestInfo returns the DER DigestInfo of a digest, the input of a raw
// PKCS#1 v1.5 signature (CKM_RSA_PKCS).
func DigestInfo(h crypto.Hash, digest []byte) ([]byte, error) {
	p, ok := digestInfoPrefixes[h]
	if !ok || len(digest) != h.Size() {
		return nil, kgerr.Invalid("digest does not match the algorithm's hash")
	}
	out := make([]byte, 0, len(p)+len(digest))
	return append(append(out, p...), digest...), nil
}

// CurveByteLen is the length of one coordinate (and of r or s) on a curve.
func CurveByteLen(curve string) int {
	switch curve {
	case "P-256":
		return 32
	case "P-384":
		return 48
	case "P-521":
		return 66
	}
	return 0
}

type ecdsaSig struct{ R, S *big.Int }

// ECDSARawToDER converts a fixed-width r‖s signature to ASN.1 DER.
func ECDSARawToDER(raw []byte) ([]byte, error) {
	if len(raw) == 0 || len(raw)%2 != 0 {
		return nil, kgerr.Invalid("raw ECDSA signature has an odd length")
	}
	n := len(raw) / 2
	if n > 120 { // no curve has such coordinates (the length would need two bytes): asn1 takes them
		return asn1.Marshal(ecdsaSig{new(big.Int).SetBytes(raw[:n]), new(big.Int).SetBytes(raw[n:])})
	}
	// SEQUENCE { INTEGER r, INTEGER s }, by hand: this runs once per
	// signature, and encoding/asn1 costs a dozen allocations of reflection.
	r, s := derUint(raw[:n]), derUint(raw[n:])
	body := 4 + len(r) + len(s) + pad(r) + pad(s)
	out := make([]byte, 0, 3+body)
	out = append(out, 0x30)
	if body >= 0x80 {
		out = append(out, 0x81)
	}
	out = append(out, byte(body))
	for _, v := range [2][]byte{r, s} {
		out = append(out, 0x02, byte(len(v)+pad(v)))
		if pad(v) == 1 {
			out = append(out, 0)
		}
		out = append(out, v...)
	}
	return out, nil
}

// derUint is the big-endian unsigned b without leading zeros (at least one
// byte); pad says whether DER needs a zero before it to keep it positive.
func derUint(b []byte) []byte {
	for len(b) > 1 && b[0] == 0 {
		b = b[1:]
	}
	return b
}

func pad(v []byte) int {
	if v[0]&0x80 != 0 {
		return 1
	}
	return 0
}

// ECDSADERToRaw converts an ASN.1 DER signature to fixed-width r‖s.
func ECDSADERToRaw(der []byte, curve string) ([]byte, error) {
	var sig ecdsaSig
	rest, err := asn1.Unmarshal(der, &sig)
	if err != nil || len(rest) != 0 || sig.R == nil || sig.S == nil || sig.R.Sign() <= 0 || sig.S.Sign() <= 0 {
		return nil, kgerr.Invalid("signature is not a DER ECDSA signature")
	}
	// encoding/asn1 ignores whatever follows the last field inside the
	// SEQUENCE: accept only the one canonical encoding of r and s.
	if canon, err := asn1.Marshal(sig); err != nil || !bytes.Equal(canon, der) {
		return nil, kgerr.Invalid("signature is not a DER ECDSA signature")
	}
	n := CurveByteLen(curve)
	if sig.R.BitLen() > 8*n || sig.S.BitLen() > 8*n {
		return nil, kgerr.Invalid("signature does not fit the curve")
	}
	out := make([]byte, 2*n)
	sig.R.FillBytes(out[:n])
	sig.S.FillBytes(out[n:])
	return out, nil
}

// Verify checks a signature with a public key. For EdDSA msg is the message;
// for the others it is the digest. ECDSA signatures are DER. It returns false
// for a signature that does not verify and an error only for bad input.
func Verify(pub crypto.PublicKey, a Info, msg, sig []byte) (bool, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if a.PSS {
			return rsa.VerifyPSS(k, a.Hash, msg, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: a.Hash}) == nil, nil
		}
		return rsa.VerifyPKCS1v15(k, a.Hash, msg, sig) == nil, nil
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(k, msg, sig), nil
	case ed25519.PublicKey:
		return ed25519.Verify(k, msg, sig), nil
	}
	return false, kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("algorithm %s cannot verify with this key", a.Name))
}

// EncryptOAEP encrypts with RSA-OAEP (MGF1 with the same hash, empty label).
func EncryptOAEP(pub crypto.PublicKey, a Info, plaintext []byte) ([]byte, error) {
	k, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, kgerr.New(kgerr.KindUnsupportedAlgorithm, "RSA-OAEP needs an RSA key")
	}
	ct, err := rsa.EncryptOAEP(a.Hash.New(), rand.Reader, k, plaintext, nil)
	if errors.Is(err, rsa.ErrMessageTooLong) {
		return nil, kgerr.Invalid(fmt.Sprintf("plaintext is too long for %s with a %d-bit key (at most %d bytes)",
			a.Name, k.N.BitLen(), k.Size()-2*a.Hash.Size()-2))
	}
	return ct, err
}

// ParsePublicKey parses a DER SubjectPublicKeyInfo.
func ParsePublicKey(der []byte) (crypto.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	return pub, nil
}

// PublicKeyPEM encodes a DER SubjectPublicKeyInfo as PEM.
func PublicKeyPEM(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// SpecOf returns the spec of a public key.
func SpecOf(pub crypto.PublicKey) (Spec, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return Spec{Type: RSA, Size: k.N.BitLen()}, nil
	case *ecdsa.PublicKey:
		name := k.Curve.Params().Name
		if curveSizes[name] == 0 {
			return Spec{}, fmt.Errorf("unsupported curve %s", name)
		}
		return Spec{Type: EC, Size: curveSizes[name], Curve: name}, nil
	case ed25519.PublicKey:
		return Spec{Type: Ed25519, Size: 256}, nil
	}
	return Spec{}, fmt.Errorf("unsupported public key type %T", pub)
}

// Curve returns the elliptic curve of a curve name.
func Curve(name string) elliptic.Curve {
	switch name {
	case "P-256":
		return elliptic.P256()
	case "P-384":
		return elliptic.P384()
	case "P-521":
		return elliptic.P521()
	}
	return nil
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// JWK returns the RFC 7517 JSON Web Key of a public key.
func JWK(pub crypto.PublicKey, kid string, a Algorithm) (map[string]any, error) {
	m := map[string]any{"kid": kid}
	if a != "" {
		m["alg"] = string(a)
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		m["kty"] = "RSA"
		m["n"] = b64url(k.N.Bytes())
		m["e"] = b64url(big.NewInt(int64(k.E)).Bytes())
	case *ecdsa.PublicKey:
		name := k.Curve.Params().Name
		n := CurveByteLen(name)
		if n == 0 {
			return nil, fmt.Errorf("unsupported curve %s", name)
		}
		raw, err := k.Bytes() // uncompressed point 0x04 ‖ X ‖ Y
		if err != nil {
			return nil, err
		}
		m["kty"] = "EC"
		m["crv"] = name
		m["x"] = b64url(raw[1 : 1+n])
		m["y"] = b64url(raw[1+n:])
	case ed25519.PublicKey:
		m["kty"] = "OKP"
		m["crv"] = "Ed25519"
		m["x"] = b64url(k)
	default:
		return nil, fmt.Errorf("unsupported public key type %T", pub)
	}
	return m, nil
}
