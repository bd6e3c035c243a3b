package software

import (
	"cmp"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"slices"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// This file is the one place that ties an algorithm of package alg to the
// Go crypto call that performs it here. The operations take the call from
// the table; the capabilities list exactly the algorithms of the table that
// apply to a key spec the provider makes. An algorithm of an existing kind
// is one more entry.

// performer is how the software provider performs one algorithm: the calls
// it makes for the operations it does with it (nil: not done).
type performer struct {
	sign    func(key any, a alg.Info, spec alg.Spec, digest []byte) ([]byte, error)
	encrypt func(k *aesKey, plaintext, aad []byte) (provider.EncryptResult, error)
	decrypt func(key any, a alg.Info, req provider.DecryptRequest) ([]byte, error)
	wrap    func(k *aesKey, material []byte) ([]byte, error)
	unwrap  func(k *aesKey, wrapped []byte) ([]byte, error)
	mac     func(k macKey, a alg.Info, data []byte) []byte
}

var performers = map[alg.Algorithm]performer{
	alg.RS256:      {sign: withKey(signPKCS1v15)},
	alg.RS384:      {sign: withKey(signPKCS1v15)},
	alg.RS512:      {sign: withKey(signPKCS1v15)},
	alg.PS256:      {sign: withKey(signPSS)},
	alg.PS384:      {sign: withKey(signPSS)},
	alg.PS512:      {sign: withKey(signPSS)},
	alg.ES256:      {sign: withKey(signECDSA)},
	alg.ES384:      {sign: withKey(signECDSA)},
	alg.ES512:      {sign: withKey(signECDSA)},
	alg.EdDSA:      {sign: withKey(signEd25519)},
	alg.RSAOAEP:    {decrypt: decryptOAEP},
	alg.RSAOAEP256: {decrypt: decryptOAEP},
	alg.A128GCM:    {encrypt: sealGCM, decrypt: openGCM},
	alg.A256GCM:    {encrypt: sealGCM, decrypt: openGCM},
	alg.AESKWP:     {wrap: wrapKWP, unwrap: unwrapKWP},
	alg.HS256:      {mac: macHMAC},
	alg.HS384:      {mac: macHMAC},
	alg.HS512:      {mac: macHMAC},
}

// notPerformed names the algorithms of package alg this provider does not
// perform, with the reason. Every algorithm is in performers or here.
var notPerformed = map[alg.Algorithm]string{}

// keyTypes are the key specs the provider makes.
var keyTypes = []provider.KeyTypeCaps{
	{Type: alg.RSA, Sizes: []int{2048, 3072, 4096}},
	{Type: alg.EC, Curves: []string{"P-256", "P-384", "P-521"}},
	{Type: alg.Ed25519},
	{Type: alg.AES, Sizes: []int{128, 256}},
	{Type: alg.HMAC, Sizes: []int{256, 384, 512}},
}

// capabilities derives the capabilities from keyTypes and a table (the
// package's performers, or a part of it in tests).
func capabilities(table map[alg.Algorithm]performer) provider.Capabilities {
	c := provider.Capabilities{KeyTypes: slices.Clone(keyTypes), Missing: map[alg.Algorithm]string{}}
	for _, a := range alg.All() {
		info, _ := alg.Lookup(string(a))
		_, ok := table[a]
		switch {
		case !ok:
			c.Missing[a] = cmp.Or(notPerformed[a], "this provider does not perform "+string(a))
		case !c.Makes(info):
			c.Missing[a] = "this provider makes no key for " + string(a)
		default:
			c.Algorithms = append(c.Algorithms, a)
		}
	}
	c.Prune()
	return c
}

// use is an operation the provider performs with an algorithm.
type use string

const (
	useSign    use = "sign"
	useEncrypt use = "encrypt"
	useDecrypt use = "decrypt"
	useWrap    use = "wrap"
	useUnwrap  use = "unwrap"
	useMAC     use = "mac"
)

// does reports whether the performer has a call for u.
func (f performer) does(u use) bool {
	switch u {
	case useSign:
		return f.sign != nil
	case useEncrypt:
		return f.encrypt != nil
	case useDecrypt:
		return f.decrypt != nil
	case useWrap:
		return f.wrap != nil
	case useUnwrap:
		return f.unwrap != nil
	case useMAC:
		return f.mac != nil
	}
	return false
}

// performerFor returns how the provider performs use u of a, refusing,
// before the key is read, an algorithm the provider does not list, one its
// entry has no call for u for, and one that does not fit the key.
func (p *Provider) performerFor(spec alg.Spec, a alg.Info, u use) (performer, error) {
	if err := p.caps.CheckAlgorithm(a.Name); err != nil {
		return performer{}, err
	}
	f := p.table[a.Name]
	if !f.does(u) {
		return performer{}, kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("this provider does not use %s to %s", a.Name, u))
	}
	if err := alg.Compatible(spec, a); err != nil {
		return performer{}, err
	}
	return f, nil
}

// withKey adapts a signing call on a key of type K: a key of another type
// is refused.
func withKey[K any](f func(k K, a alg.Info, spec alg.Spec, digest []byte) ([]byte, error)) func(any, alg.Info, alg.Spec, []byte) ([]byte, error) {
	return func(key any, a alg.Info, spec alg.Spec, in []byte) ([]byte, error) {
		k, ok := key.(K)
		if !ok {
			return nil, wrongKey(a.Name)
		}
		return f(k, a, spec, in)
	}
}

func signPKCS1v15(k *rsa.PrivateKey, a alg.Info, _ alg.Spec, digest []byte) ([]byte, error) {
	return rsa.SignPKCS1v15(rand.Reader, k, a.Hash, digest)
}

// signPSS: salt as long as the hash, MGF1 with the same hash.
func signPSS(k *rsa.PrivateKey, a alg.Info, _ alg.Spec, digest []byte) ([]byte, error) {
	return rsa.SignPSS(rand.Reader, k, a.Hash, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: a.Hash})
}

// signECDSA returns fixed-width r‖s, as the contract wants.
func signECDSA(k *ecdsa.PrivateKey, a alg.Info, spec alg.Spec, digest []byte) ([]byte, error) {
	n := alg.CurveByteLen(spec.Curve)
	// SignASN1 and a cut of its DER: ecdsa.Sign makes the same DER and
	// then parses it into two big.Ints.
	der, err := ecdsa.SignASN1(rand.Reader, k, digest)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 2*n)
	if rest, ok := derInt(der, out[:n]); ok {
		if rest, ok = derInt(rest, out[n:]); ok && len(rest) == 0 {
			return out, nil
		}
	}
	return nil, errors.New("software: ECDSA signature in an unexpected encoding")
}

// derInt reads one DER INTEGER (non-negative, at most len(dst) bytes of
// value) from the start of b, or from inside the SEQUENCE that b starts
// with, into dst, right-aligned; it returns what follows.
func derInt(b, dst []byte) ([]byte, bool) {
	if len(b) >= 2 && b[0] == 0x30 { // SEQUENCE: step inside
		switch {
		case b[1] < 0x80 && int(b[1]) == len(b)-2:
			b = b[2:]
		case b[1] == 0x81 && len(b) >= 3 && int(b[2]) == len(b)-3:
			b = b[3:]
		default:
			return nil, false
		}
	}
	if len(b) < 2 || b[0] != 0x02 || b[1] >= 0x80 || int(b[1]) > len(b)-2 || b[1] == 0 {
		return nil, false
	}
	v, rest := b[2:2+int(b[1])], b[2+int(b[1]):]
	if v[0]&0x80 != 0 {
		return nil, false
	}
	for len(v) > 1 && v[0] == 0 {
		v = v[1:]
	}
	if len(v) > len(dst) {
		return nil, false
	}
	copy(dst[len(dst)-len(v):], v)
	return rest, true
}

// signEd25519 signs the message itself.
func signEd25519(k ed25519.PrivateKey, _ alg.Info, _ alg.Spec, msg []byte) ([]byte, error) {
	return ed25519.Sign(k, msg), nil
}

// decryptOAEP: one hash for OAEP and MGF1, no label.
func decryptOAEP(key any, a alg.Info, req provider.DecryptRequest) ([]byte, error) {
	k, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, wrongKey(a.Name)
	}
	pt, err := rsa.DecryptOAEP(a.Hash.New(), nil, k, req.Ciphertext, nil)
	if err != nil {
		return nil, kgerr.ErrDecryptionFailed
	}
	return pt, nil
}

// sealGCM encrypts with a fresh random 96-bit nonce.
func sealGCM(k *aesKey, plaintext, aad []byte) (provider.EncryptResult, error) {
	nonce := make([]byte, k.gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return provider.EncryptResult{}, err
	}
	return provider.EncryptResult{Nonce: nonce, Ciphertext: k.gcm.Seal(nil, nonce, plaintext, aad)}, nil
}

func openGCM(key any, a alg.Info, req provider.DecryptRequest) ([]byte, error) {
	k, ok := key.(*aesKey)
	if !ok {
		return nil, wrongKey(a.Name)
	}
	if len(req.Nonce) != k.gcm.NonceSize() {
		return nil, kgerr.ErrDecryptionFailed
	}
	pt, err := k.gcm.Open(nil, req.Nonce, req.Ciphertext, req.AAD)
	if err != nil {
		return nil, kgerr.ErrDecryptionFailed
	}
	return pt, nil
}

// wrapKWP wraps with RFC 5649 (alg.WrapKWP).
func wrapKWP(k *aesKey, material []byte) ([]byte, error) {
	return alg.WrapKWP(k.raw, material)
}

func unwrapKWP(k *aesKey, wrapped []byte) ([]byte, error) {
	out, err := alg.UnwrapKWP(k.raw, wrapped)
	if err != nil {
		return nil, kgerr.Wrap(kgerr.KindDecryptionFailed, err, "unwrap failed: the wrapped key does not authenticate under this key")
	}
	return out, nil
}

// macKey is a cached HMAC key: its bytes.
type macKey []byte

// macHMAC computes the HMAC of data with the algorithm's hash.
func macHMAC(k macKey, a alg.Info, data []byte) []byte {
	m := hmac.New(a.Hash.New, k)
	m.Write(data)
	return m.Sum(nil)
}
