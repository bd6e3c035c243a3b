package pkcs11

import (
	"context"
	"crypto"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// This file is the one place that ties an algorithm of package alg to how
// this provider performs it on a token: the mechanism, its parameters, the
// shaping of its input and what the token must offer. The operations
// (ops.go) take all of it from here, and discovery (mechs.go) advertises an
// algorithm exactly when the token has what its entry needs and the entry's
// probe passes. An algorithm of an existing kind is one more entry.

// Mechanisms and key types of PKCS#11 v3.0 that miekg/pkcs11 lacks.
const (
	ckkECEdwards           = 0x40
	ckmECEdwardsKeyPairGen = 0x1055
	ckmEdDSA               = 0x1057
)

// mech is a PKCS#11 mechanism and its name, for messages.
type mech struct {
	code uint
	name string
}

var (
	mRSAKeyGen  = mech{pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN"}
	mRSAPKCS    = mech{pkcs11.CKM_RSA_PKCS, "CKM_RSA_PKCS"}
	mRSAPSS     = mech{pkcs11.CKM_RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS"}
	mRSAOAEP    = mech{pkcs11.CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP"}
	mECKeyGen   = mech{pkcs11.CKM_EC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN"}
	mECDSA      = mech{pkcs11.CKM_ECDSA, "CKM_ECDSA"}
	mEdKeyGen   = mech{ckmECEdwardsKeyPairGen, "CKM_EC_EDWARDS_KEY_PAIR_GEN"}
	mEdDSA      = mech{ckmEdDSA, "CKM_EDDSA"}
	mAESKeyGen  = mech{pkcs11.CKM_AES_KEY_GEN, "CKM_AES_KEY_GEN"}
	mAESGCM     = mech{pkcs11.CKM_AES_GCM, "CKM_AES_GCM"}
	mAESKeyWrap = mech{pkcs11.CKM_AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD"}
	mGenericGen = mech{pkcs11.CKM_GENERIC_SECRET_KEY_GEN, "CKM_GENERIC_SECRET_KEY_GEN"}
	mHS256      = mech{pkcs11.CKM_SHA256_HMAC, "CKM_SHA256_HMAC"}
	mHS384      = mech{pkcs11.CKM_SHA384_HMAC, "CKM_SHA384_HMAC"}
	mHS512      = mech{pkcs11.CKM_SHA512_HMAC, "CKM_SHA512_HMAC"}
)

// use is an operation the provider performs with a mechanism.
type use uint8

const (
	useSign use = 1 << iota
	useEncrypt
	useDecrypt
	useWrap
	useUnwrap
)

// uses lists each use with the CKF_ flag C_GetMechanismInfo must report for
// it and its word in messages.
var uses = []struct {
	u    use
	flag uint
	word string
}{
	{useSign, pkcs11.CKF_SIGN, "signing"},
	{useEncrypt, pkcs11.CKF_ENCRYPT, "encryption"},
	{useDecrypt, pkcs11.CKF_DECRYPT, "decryption"},
	{useWrap, pkcs11.CKF_WRAP, "wrapping"},
	{useUnwrap, pkcs11.CKF_UNWRAP, "unwrapping"},
}

// flags are the mechanism flags the token must report for every use in u.
func (u use) flags() uint {
	var f uint
	for _, x := range uses {
		if u&x.u != 0 {
			f |= x.flag
		}
	}
	return f
}

func (u use) String() string {
	var words []string
	for _, x := range uses {
		if u&x.u != 0 {
			words = append(words, x.word)
		}
	}
	return strings.Join(words, " and ")
}

// opKind is how a failure of the use is classified (errors.go).
func (u use) opKind() opKind {
	switch u {
	case useDecrypt:
		return opDecrypt
	case useUnwrap:
		return opUnwrap
	}
	return opOther
}

// args are what one operation gives an entry's parameter builder.
type args struct {
	u   use
	iv  []byte // AES-GCM
	aad []byte // AES-GCM
}

// mechanism is how the provider performs one algorithm.
type mechanism struct {
	alg alg.Algorithm
	// mech is the mechanism of every use; the token must report it with
	// the flags of uses.
	mech mech
	uses use
	// params sets the mechanism parameters of one call (nil: none).
	params func(a alg.Info, c args, m *callMech)
	// input checks the request's bytes and shapes them into what the token
	// is given (nil: as they are).
	input func(a alg.Info, in []byte) ([]byte, error)
	// ivBytes is the length of the random IV the provider makes for each
	// encryption; decryption refuses an IV of another length.
	ivBytes int
	// perCallLimit: the module's per-call input limit (max_gcm_bytes,
	// CloudHSM's 16 KiB) applies.
	perCallLimit bool
	// probe, when set, asks the token what C_GetMechanismInfo cannot tell
	// and returns why the algorithm cannot be performed ("" when it can);
	// it may record a quirk in caps.
	probe func(ctx context.Context, p *Provider, a alg.Info, m mechanism, caps *provider.Capabilities) string
}

// mechanisms is the table, in the order capabilities list the algorithms.
var mechanisms = []mechanism{
	// CKM_RSA_PKCS signs what it is given: the DigestInfo of the digest.
	{alg: alg.RS256, mech: mRSAPKCS, uses: useSign, input: digestInfo},
	{alg: alg.RS384, mech: mRSAPKCS, uses: useSign, input: digestInfo},
	{alg: alg.RS512, mech: mRSAPKCS, uses: useSign, input: digestInfo},
	{alg: alg.PS256, mech: mRSAPSS, uses: useSign, params: pssParams, input: digest},
	{alg: alg.PS384, mech: mRSAPSS, uses: useSign, params: pssParams, input: digest},
	{alg: alg.PS512, mech: mRSAPSS, uses: useSign, params: pssParams, input: digest},
	// RSA-OAEP encryption is done with the public key, in the service. The
	// hashes a token's OAEP takes are not in its mechanism info: probed.
	{alg: alg.RSAOAEP, mech: mRSAOAEP, uses: useDecrypt, params: oaepParams, probe: probeOAEP},
	{alg: alg.RSAOAEP256, mech: mRSAOAEP, uses: useDecrypt, params: oaepParams, probe: probeOAEP},
	// CKM_ECDSA signs the digest and returns raw r‖s, as the contract wants;
	// each curve is probed (a token may list one whose keys do not work).
	{alg: alg.ES256, mech: mECDSA, uses: useSign, input: digest, probe: probeECDSA},
	{alg: alg.ES384, mech: mECDSA, uses: useSign, input: digest, probe: probeECDSA},
	{alg: alg.ES512, mech: mECDSA, uses: useSign, input: digest, probe: probeECDSA},
	// CKM_EDDSA signs the message itself.
	{alg: alg.EdDSA, mech: mEdDSA, uses: useSign},
	{alg: alg.A128GCM, mech: mAESGCM, uses: useEncrypt | useDecrypt, params: gcmParams, ivBytes: gcmIVBytes, perCallLimit: true},
	{alg: alg.A256GCM, mech: mAESGCM, uses: useEncrypt | useDecrypt, params: gcmParams, ivBytes: gcmIVBytes, perCallLimit: true},
	// SoftHSM2 2.6 pads key material that is not a multiple of 8 bytes and
	// cannot give it back: probed, and recorded as WrapMultipleOf8.
	{alg: alg.AESKWP, mech: mAESKeyWrap, uses: useWrap | useUnwrap, probe: probeKWP},
	// HMAC with CKK_GENERIC_SECRET keys: C_Sign of the data (provider.MACer;
	// the service checks MACs in constant time).
	{alg: alg.HS256, mech: mHS256, uses: useSign},
	{alg: alg.HS384, mech: mHS384, uses: useSign},
	{alg: alg.HS512, mech: mHS512, uses: useSign},
}

// notPerformed names the algorithms of package alg this provider does not
// perform, with the reason. Every algorithm is in mechanisms or here.
var notPerformed = map[alg.Algorithm]string{}

// byAlg indexes the table.
var byAlg = func() map[alg.Algorithm]mechanism {
	out := make(map[alg.Algorithm]mechanism, len(mechanisms))
	for _, m := range mechanisms {
		out[m.alg] = m
	}
	return out
}()

// mechanismOf returns the table entry of an algorithm.
func mechanismOf(a alg.Algorithm) (mechanism, bool) {
	m, ok := byAlg[a]
	return m, ok
}

// keyGen is how the provider makes keys of one type, and the sizes or
// curves it asks a token for.
type keyGen struct {
	typ    alg.KeyType
	mech   mech
	flag   uint
	sizes  []int    // RSA and AES, in bits
	curves []string // EC
}

var keyGens = []keyGen{
	{typ: alg.RSA, mech: mRSAKeyGen, flag: pkcs11.CKF_GENERATE_KEY_PAIR, sizes: []int{2048, 3072, 4096}},
	{typ: alg.EC, mech: mECKeyGen, flag: pkcs11.CKF_GENERATE_KEY_PAIR, curves: []string{"P-256", "P-384", "P-521"}},
	{typ: alg.Ed25519, mech: mEdKeyGen, flag: pkcs11.CKF_GENERATE_KEY_PAIR},
	{typ: alg.AES, mech: mAESKeyGen, flag: pkcs11.CKF_GENERATE, sizes: []int{128, 256}},
	{typ: alg.HMAC, mech: mGenericGen, flag: pkcs11.CKF_GENERATE, sizes: []int{256, 384, 512}},
}

// makes returns the sizes or curves of g the token's key generation info
// admits.
func (g keyGen) makes(info pkcs11.MechanismInfo) provider.KeyTypeCaps {
	within := func(n uint) bool {
		return (info.MinKeySize == 0 || n >= info.MinKeySize) && (info.MaxKeySize == 0 || n <= info.MaxKeySize)
	}
	kt := provider.KeyTypeCaps{Type: g.typ}
	for _, c := range g.curves {
		if within(uint(alg.Curve(c).Params().BitSize)) {
			kt.Curves = append(kt.Curves, c)
		}
	}
	for _, n := range g.sizes {
		size := uint(n)
		if g.typ == alg.AES && info.MaxKeySize <= 64 {
			size = uint(n / 8) // AES sizes are in bytes (PKCS#11 §2.8); some modules report bits
		}
		if within(size) {
			kt.Sizes = append(kt.Sizes, n)
		}
	}
	return kt
}

// usedMechanisms lists every mechanism the provider uses: for each key type
// its key generation, then the mechanisms of its algorithms.
func usedMechanisms() []mech {
	var out []mech
	add := func(m mech) {
		for _, x := range out {
			if x.code == m.code {
				return
			}
		}
		out = append(out, m)
	}
	for _, g := range keyGens {
		add(g.mech)
		for _, m := range mechanisms {
			if a, err := alg.Lookup(string(m.alg)); err == nil && a.KeyType == g.typ {
				add(m.mech)
			}
		}
	}
	return out
}

var (
	hashMech = map[crypto.Hash]uint{crypto.SHA1: pkcs11.CKM_SHA_1, crypto.SHA256: pkcs11.CKM_SHA256,
		crypto.SHA384: pkcs11.CKM_SHA384, crypto.SHA512: pkcs11.CKM_SHA512}
	mgfMech = map[crypto.Hash]uint{crypto.SHA1: pkcs11.CKG_MGF1_SHA1, crypto.SHA256: pkcs11.CKG_MGF1_SHA256,
		crypto.SHA384: pkcs11.CKG_MGF1_SHA384, crypto.SHA512: pkcs11.CKG_MGF1_SHA512}
)

// pssParams: the algorithm's hash, MGF1 with the same hash, salt as long as
// the hash.
func pssParams(a alg.Info, _ args, m *callMech) {
	m.Kind, m.Raw = paramsRaw, pkcs11.NewPSSParams(hashMech[a.Hash], mgfMech[a.Hash], uint(a.Hash.Size()))
}

// oaepParams: one hash for OAEP and MGF1, no label.
func oaepParams(a alg.Info, _ args, m *callMech) {
	m.Kind, m.Hash, m.MGF, m.Source = paramsOAEP, hashMech[a.Hash], mgfMech[a.Hash], pkcs11.CKZ_DATA_SPECIFIED
}

const (
	gcmIVBytes = 12
	gcmTagBits = 128
)

// gcmParams: the call's 96-bit IV, its AAD, a 128-bit tag.
func gcmParams(_ alg.Info, c args, m *callMech) {
	m.Kind, m.IV, m.AAD, m.TagBits = paramsGCM, c.iv, c.aad, gcmTagBits
}

// digest checks that the input is a digest of the algorithm's hash.
func digest(a alg.Info, in []byte) ([]byte, error) {
	if len(in) != a.Hash.Size() {
		return nil, kgerr.Invalid("digest does not match the algorithm's hash")
	}
	return in, nil
}

// digestInfo builds the PKCS#1 v1.5 DigestInfo of a digest.
func digestInfo(a alg.Info, in []byte) ([]byte, error) {
	return alg.DigestInfo(a.Hash, in)
}

// build makes the mechanism of one call of m for a.
func (m mechanism) build(a alg.Info, c args) callMech {
	cm := callMech{Code: m.mech.code}
	if m.params != nil {
		m.params(a, c, &cm)
	}
	return cm
}

// gcmNonce chooses the IV to record: the one in the parameters after the
// call (a module that writes its own, as CloudHSM does, put it there; a
// conforming module left the one it was sent).
func gcmNonce(sent, after []byte) []byte {
	if len(after) == len(sent) {
		return after
	}
	return sent
}

// deriveCaps builds what the provider advertises from the token's mechanism
// infos: the key specs its key generation makes, and every algorithm of the
// table whose mechanism the token reports with the flags of the entry's
// uses, that applies to a key spec the token makes, and whose probe (run by
// probe) passes. A key type no advertised algorithm applies to is not
// listed: a provider never advertises what it cannot do.
func deriveCaps(infos map[uint]pkcs11.MechanismInfo,
	probe func(m mechanism, a alg.Info, caps *provider.Capabilities) string) provider.Capabilities {
	caps := provider.Capabilities{Missing: map[alg.Algorithm]string{}}
	lacks := map[alg.KeyType]string{}
	for _, g := range keyGens {
		i, ok := infos[g.mech.code]
		if !ok || i.Flags&g.flag != g.flag {
			lacks[g.typ] = "token lacks " + g.mech.name
			continue
		}
		kt := g.makes(i)
		if len(kt.Sizes) < min(1, len(g.sizes)) || len(kt.Curves) < min(1, len(g.curves)) {
			lacks[g.typ] = fmt.Sprintf("token's %s makes none of the key sizes the gateway uses", g.mech.name)
			continue
		}
		caps.KeyTypes = append(caps.KeyTypes, kt)
	}
	for _, a := range alg.All() {
		if why, ok := notPerformed[a]; ok {
			caps.Missing[a] = why
		}
	}
	for _, m := range mechanisms {
		a, err := alg.Lookup(string(m.alg))
		if err != nil {
			continue
		}
		why := lacks[a.KeyType]
		if why == "" && !caps.Makes(a) {
			why = "token does not make " + keysFor(a) + " keys"
		}
		if i, ok := infos[m.mech.code]; why == "" && (!ok || i.Flags&m.uses.flags() != m.uses.flags()) {
			why = fmt.Sprintf("token lacks %s for %s", m.mech.name, m.uses)
		}
		if why == "" && m.probe != nil {
			why = probe(m, a, &caps)
		}
		if why != "" {
			caps.Missing[a.Name] = why
			continue
		}
		caps.Algorithms = append(caps.Algorithms, a.Name)
	}
	caps.Prune()
	return caps
}

// keysFor names the keys an algorithm needs: "P-384", "AES-128", "RSA".
func keysFor(a alg.Info) string {
	switch {
	case a.Curve != "":
		return a.Curve
	case a.KeySize != 0:
		return fmt.Sprintf("%s-%d", a.KeyType, a.KeySize)
	}
	return string(a.KeyType)
}
