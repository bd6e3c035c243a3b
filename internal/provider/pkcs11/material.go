package pkcs11

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// Key material in and out of a token: the import wrapping key, import by
// C_UnwrapKey (the material never exists in the gateway's memory in the
// clear), wrapped export by C_WrapKey, and HMAC.
//
// An import is two unwraps inside the token: RSA-OAEP unwraps the
// transported AES key under the wrapping key as a session object, and
// AES-KWP (CKM_AES_KEY_WRAP_PAD) unwraps the material under it as the
// key's token object. The one-step CKM_RSA_AES_KEY_WRAP is not used: its
// parameters (CK_RSA_AES_KEY_WRAP_PARAMS, which point to OAEP parameters)
// are not in miekg/pkcs11, and SoftHSM2 2.6 lacks the mechanism, so no test
// here could drive it; the two steps are the same scheme.
//
// The scheme's OAEP hash is what the token's RSA-OAEP unwraps with,
// probed on the wrapping key itself when it is first used: SHA-256
// (alg.RSAAESKeyWrapSHA256) where the token can, SHA-1
// (alg.RSAAESKeyWrapSHA1) on SoftHSM2 2.6, whose OAEP takes SHA-1 only. The
// wrapping key says which (provider.WrappingKey.Algorithm) and clients wrap
// with it; a token that can do neither refuses imports.

var (
	_ provider.MACer    = (*Provider)(nil)
	_ provider.Importer = (*Provider)(nil)
	_ provider.Exporter = (*Provider)(nil)
)

const (
	// wrapLabel is the CKA_LABEL of the import wrapping key pair.
	wrapLabel = "keygrid-import-wrapping-key"
	wrapBits  = 4096
	// wrapGenTimeout bounds the wrapping key's generation: an RSA-4096
	// key takes seconds, more than an operation's deadline on a loaded
	// host.
	wrapGenTimeout = 2 * time.Minute
)

// wrapObjectID is the CKA_ID of the wrapping key pair (16 bytes, as the
// ids of keys are; no key id the service makes is printable ASCII).
var wrapObjectID = []byte("keygrid/import/1")

// wrapState is the wrapping key once found or made.
type wrapState struct {
	mu  sync.Mutex
	key *wrapKey
}

type wrapKey struct {
	info provider.WrappingKey
	pub  *rsa.PublicKey
	oaep callMech // the RSA-OAEP unwrap of the transported AES key
}

// MAC implements provider.MACer: C_Sign with CKM_SHA*_HMAC and a
// CKK_GENERIC_SECRET key.
func (p *Provider) MAC(ctx context.Context, req provider.MACRequest) ([]byte, error) {
	if req.Algorithm.Kind != alg.KindMAC {
		return nil, kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("%s is not a MAC algorithm", req.Algorithm.Name))
	}
	mac, _, err := p.perform(ctx, req.Ref, req.Spec, req.Algorithm, args{u: useSign}, req.Data)
	return mac, err
}

// canTransport returns UNSUPPORTED_ALGORITHM unless the token has what
// imports and exports need: AES-KWP, and RSA-OAEP unwrapping for imports.
func (p *Provider) canTransport(importing bool) error {
	if err := p.caps.CheckAlgorithm(alg.AESKWP); err != nil {
		return kgerr.Wrap(kgerr.KindUnsupportedAlgorithm, err, "this token cannot move key material in or out: it lacks AES-KWP (CKM_AES_KEY_WRAP_PAD)")
	}
	if i := p.mechs[pkcs11.CKM_RSA_PKCS_OAEP]; importing && i.Flags&pkcs11.CKF_UNWRAP == 0 {
		return kgerr.New(kgerr.KindUnsupportedAlgorithm, "this token cannot import keys: it lacks CKM_RSA_PKCS_OAEP for unwrapping")
	}
	return nil
}

// WrappingKey implements provider.Importer: an RSA-4096 token key pair
// whose private half may only unwrap, found by its CKA_ID or made on first
// use, and kept.
func (p *Provider) WrappingKey(ctx context.Context) (provider.WrappingKey, error) {
	k, err := p.wrappingKey(ctx)
	if err != nil {
		return provider.WrappingKey{}, err
	}
	return k.info, nil
}

func (p *Provider) wrappingKey(ctx context.Context) (*wrapKey, error) {
	if err := p.canTransport(true); err != nil {
		return nil, err
	}
	p.wrap.mu.Lock()
	defer p.wrap.mu.Unlock()
	if p.wrap.key != nil {
		return p.wrap.key, nil
	}
	pub, err := p.findWrappingKey(ctx)
	if err == nil && pub == nil {
		pub, err = p.makeWrappingKey(ctx)
	}
	if err != nil {
		return nil, err
	}
	scheme, oaep, err := p.probeTransport(ctx, pub)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	h := sha256.Sum256(der)
	p.wrap.key = &wrapKey{info: provider.WrappingKey{ID: hex.EncodeToString(h[:16]), PublicKey: der, Algorithm: scheme}, pub: pub, oaep: oaep}
	return p.wrap.key, nil
}

// findWrappingKey returns the public half of the wrapping key on the token,
// nil when there is none. Half a pair (a generation cut short) is
// destroyed: no wrapping key was ever given out for it.
func (p *Provider) findWrappingKey(ctx context.Context) (*rsa.PublicKey, error) {
	var found *rsa.PublicKey
	err := p.run(ctx, true, opOther, func(sh pkcs11.SessionHandle) error {
		found = nil
		priv, pub := uint(pkcs11.CKO_PRIVATE_KEY), uint(pkcs11.CKO_PUBLIC_KEY)
		unlock := p.lockChanges(false)
		privs, err := p.findAll(sh, wrapObjectID, &priv)
		var pubs []pkcs11.ObjectHandle
		if err == nil {
			pubs, err = p.findAll(sh, wrapObjectID, &pub)
		}
		unlock()
		switch {
		case err != nil:
			return err
		case len(privs) > 0 && len(pubs) > 0:
			k, err := rsaPublicOf(p.mod.ctx, sh, pubs[0])
			found = k
			return err
		case len(privs) > 0 || len(pubs) > 0:
			p.log.Warn("destroying half an import wrapping key pair (its generation was cut short)")
			defer p.lockChanges(true)()
			destroyObjects(p.mod.ctx, sh, append(privs, pubs...)...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("looking for the import wrapping key: %w", err)
	}
	return found, nil
}

// rsaPublicOf reads an RSA public key object.
func rsaPublicOf(c cryptoki, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (*rsa.PublicKey, error) {
	k, err := publicKeyFromAttrs(pkcs11.CKK_RSA, func(t uint) ([]byte, error) {
		a, err := c.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(t, nil)})
		if err != nil {
			return nil, err
		}
		return a[0].Value, nil
	})
	if err != nil {
		return nil, err
	}
	return k.(*rsa.PublicKey), nil
}

// makeWrappingKey generates the wrapping key pair on the token.
func (p *Provider) makeWrappingKey(ctx context.Context) (*rsa.PublicKey, error) {
	common := func(class uint) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_ID, wrapObjectID), pkcs11.NewAttribute(pkcs11.CKA_LABEL, wrapLabel),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA)}
	}
	pubT := append(common(pkcs11.CKO_PUBLIC_KEY), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, wrapBits), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false), pkcs11.NewAttribute(pkcs11.CKA_WRAP, false))
	privT := append(common(pkcs11.CKO_PRIVATE_KEY), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false), pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false))
	if p.mod.refusesDenials.Load() {
		pubT, privT = grantsOnly(pubT), grantsOnly(privT)
	}
	var pub *rsa.PublicKey
	err := p.runWithin(ctx, max(p.cfg.opTimeout, wrapGenTimeout), false, opCreate, func(sh pkcs11.SessionHandle) error {
		unlock := p.lockChanges(true)
		ph, _, err := p.mod.ctx.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)}, pubT, privT)
		unlock()
		if err != nil {
			return err
		}
		k, err := rsaPublicOf(p.mod.ctx, sh, ph)
		pub = k
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("making the import wrapping key: %w", err)
	}
	p.log.Info("made the import wrapping key", "label", wrapLabel, "bits", wrapBits)
	return pub, nil
}

// oaepUnwrap is the RSA-OAEP mechanism of a transport hash: MGF1 with the
// same hash, no label.
func oaepUnwrap(h crypto.Hash) callMech {
	return callMech{Code: pkcs11.CKM_RSA_PKCS_OAEP, Kind: paramsOAEP, Hash: hashMech[h], MGF: mgfMech[h], Source: pkcs11.CKZ_DATA_SPECIFIED}
}

// transportTemplate is the template of the transported AES key: a session
// object that only wraps and unwraps, never leaves the token.
func transportTemplate() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false), pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true), pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
	}
}

// probeTransport finds the OAEP hash the token unwraps with under the
// wrapping key: SHA-256, else SHA-1. A hash OAEP was not made with fails
// its decoding, so an unwrap that succeeds used the hash asked for.
func (p *Provider) probeTransport(ctx context.Context, pub *rsa.PublicKey) (string, callMech, error) {
	var whys []string
	for _, t := range []struct {
		scheme string
		hash   crypto.Hash
	}{{alg.RSAAESKeyWrapSHA256, crypto.SHA256}, {alg.RSAAESKeyWrapSHA1, crypto.SHA1}} {
		kek := make([]byte, 32)
		rand.Read(kek)
		head, err := rsa.EncryptOAEP(t.hash.New(), rand.Reader, pub, kek, nil)
		clear(kek)
		if err != nil {
			return "", callMech{}, err
		}
		m := oaepUnwrap(t.hash)
		refused := ""
		err = p.run(ctx, true, opOther, func(sh pkcs11.SessionHandle) error {
			wh, err := p.handle(sh, wrapObjectID, pkcs11.CKO_PRIVATE_KEY)
			if err != nil {
				return err
			}
			h, err := p.mod.ctx.UnwrapKeyWith(sh, m, wh, head, transportTemplate())
			if err != nil {
				if classify(err, false) == classOp {
					code, _ := ckrCode(err)
					refused = ckrName(code)
					return nil
				}
				return err
			}
			return p.mod.ctx.DestroyObject(sh, h)
		})
		if err != nil {
			return "", callMech{}, err
		}
		if refused == "" {
			return t.scheme, m, nil
		}
		whys = append(whys, fmt.Sprintf("%s: %s", t.hash, refused))
	}
	return "", callMech{}, kgerr.New(kgerr.KindUnsupportedAlgorithm,
		fmt.Sprintf("this token's RSA-OAEP unwraps with neither SHA-256 nor SHA-1 (%v): it cannot import keys", whys))
}

// errNotOpen is the refusal of wrapping that does not open.
func errNotOpen(cause error) error {
	return kgerr.Wrap(kgerr.KindInvalidInput, cause,
		"wrapped_key does not open under the wrapping key: wrong wrapping key or wrapping algorithm, corrupt wrapping, or material that is not a key of key_spec")
}

// refusedUnwrap turns the token's refusal of an unwrap (the input, not the
// token or the session) into errNotOpen.
func refusedUnwrap(err error) error {
	if err == nil || classify(err, false) != classOp {
		return err
	}
	if _, ok := ckrCode(err); !ok {
		return err
	}
	return errNotOpen(err)
}

var errMismatch = kgerr.Invalid("public_key does not belong to the imported private key")

// ImportKey implements provider.Importer. The key's objects are the
// unwrapped token object and, for a key pair, a public key object made
// from the public key given once the private key proved to belong to it by
// a test signature (or, for a decrypt-only RSA key, an RSA-OAEP round
// trip). A secret key is first unwrapped as a session object and checked
// (its length and, on a token whose AES-KWP pads, that it wraps back to
// the input). On any refusal the objects are destroyed: nothing is left.
func (p *Provider) ImportKey(ctx context.Context, req provider.ImportKeyRequest) (provider.CreatedKey, error) {
	id, err := hex.DecodeString(req.ObjectID)
	if err != nil || len(id) != 16 {
		return provider.CreatedKey{}, kgerr.Invalid("object id must be 32 hex characters")
	}
	if err := p.caps.CheckSpec(req.Spec); err != nil {
		return provider.CreatedKey{}, err
	}
	if req.Spec.Type == alg.Ed25519 {
		// SoftHSM2 2.6 fails C_UnwrapKey of an Ed25519 PKCS#8 key
		// (CKR_FUNCTION_FAILED), and no other token here can show that
		// one does it right.
		return provider.CreatedKey{}, kgerr.New(kgerr.KindUnsupportedAlgorithm, "this provider does not import Ed25519 keys into a token")
	}
	wk, err := p.wrappingKey(ctx)
	if err != nil {
		return provider.CreatedKey{}, err
	}
	if req.WrappingKeyID != wk.info.ID {
		return provider.CreatedKey{}, kgerr.Invalid("wrapping_key_id does not name this provider's wrapping key (fetch it again)")
	}
	given, err := givenPublicKey(req.Spec, req.PublicKey)
	if err != nil {
		return provider.CreatedKey{}, err
	}
	head, tail, err := alg.SplitRSAAES(wk.pub.Size(), req.Wrapped)
	if err != nil {
		return provider.CreatedKey{}, errNotOpen(err)
	}
	_, pubT, privT, err := templates(provider.CreateKeyRequest{Label: req.Label, Spec: req.Spec, Usage: req.Usage, Extractable: req.Extractable}, id)
	if err != nil {
		return provider.CreatedKey{}, err
	}
	privT = slices.DeleteFunc(privT, func(a *pkcs11.Attribute) bool { return a.Type == pkcs11.CKA_VALUE_LEN })
	if p.mod.refusesDenials.Load() {
		pubT, privT = grantsOnly(pubT), grantsOnly(privT)
	}
	in := unwrapIn{wk: wk, head: head, tail: tail, spec: req.Spec, usage: usageSet(req.Usage), privT: privT, pubT: pubT, given: given}
	attempt := 0
	err = p.run(ctx, false, opUnwrap, func(sh pkcs11.SessionHandle) error {
		if attempt++; attempt > 1 {
			// A retry on a fresh session: the first may have stored
			// objects before its session broke.
			if err := p.purge(sh, id); err != nil {
				return err
			}
		}
		return p.unwrapInto(sh, in)
	})
	if err != nil {
		// Also after a failure the objects could not be destroyed in (a
		// lost session); the service abandons the version as well.
		_ = p.DeleteKey(context.WithoutCancel(ctx), p.ref(id, req.Label))
		return provider.CreatedKey{}, err
	}
	return provider.CreatedKey{Ref: p.ref(id, req.Label), PublicKey: req.PublicKey}, nil
}

// unwrapIn is what one import unwraps and checks.
type unwrapIn struct {
	wk          *wrapKey
	head, tail  []byte
	spec        alg.Spec
	usage       map[alg.Usage]bool
	privT, pubT []*pkcs11.Attribute
	given       crypto.PublicKey // nil for a secret key
}

// purge destroys every object with CKA_ID id.
func (p *Provider) purge(sh pkcs11.SessionHandle, id []byte) error {
	defer p.lockChanges(true)()
	hs, err := p.findAll(sh, id, nil)
	if err != nil {
		return err
	}
	destroyObjects(p.mod.ctx, sh, hs...)
	return nil
}

// unwrapInto runs the two unwraps and the checks on one session.
func (p *Provider) unwrapInto(sh pkcs11.SessionHandle, in unwrapIn) error {
	c := p.mod.ctx
	wh, err := p.handle(sh, wrapObjectID, pkcs11.CKO_PRIVATE_KEY)
	if err != nil {
		return err
	}
	tk, err := c.UnwrapKeyWith(sh, in.wk.oaep, wh, in.head, transportTemplate())
	if err != nil {
		return refusedUnwrap(err)
	}
	defer c.DestroyObject(sh, tk)
	kwp, err := plainMech(callMech{Code: pkcs11.CKM_AES_KEY_WRAP_PAD})
	if err != nil {
		return err
	}
	secret := alg.Secret(in.spec.Type)
	if secret {
		if err := p.checkSecret(sh, tk, kwp, in); err != nil {
			return err
		}
	}
	unlock := p.lockChanges(true)
	h, err := c.UnwrapKey(sh, kwp, tk, in.tail, in.privT)
	unlock()
	if err != nil {
		return refusedUnwrap(err)
	}
	if secret {
		return nil
	}
	kept := false
	defer func() {
		if !kept {
			defer p.lockChanges(true)()
			c.DestroyObject(sh, h)
		}
	}()
	if err := p.checkPrivate(sh, h, in); err != nil {
		return err
	}
	pubT, err := publicTemplate(in.pubT, in.given)
	if err != nil {
		return err
	}
	unlock = p.lockChanges(true)
	_, err = c.CreateObject(sh, pubT)
	unlock()
	if err != nil {
		return err
	}
	kept = true
	return nil
}

// checkSecret unwraps a secret key as a session object and checks its
// length; on a token whose AES-KWP pads (SoftHSM2 2.6 ignores the length
// the wrapping records), the object must wrap back to the input, or the
// material was not of the length it looks.
func (p *Provider) checkSecret(sh pkcs11.SessionHandle, tk pkcs11.ObjectHandle, kwp []*pkcs11.Mechanism, in unwrapIn) error {
	c := p.mod.ctx
	kt := uint(pkcs11.CKK_AES)
	if in.spec.Type == alg.HMAC {
		kt = pkcs11.CKK_GENERIC_SECRET
	}
	h, err := c.UnwrapKey(sh, kwp, tk, in.tail, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, kt),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
	})
	if err != nil {
		return refusedUnwrap(err)
	}
	defer c.DestroyObject(sh, h)
	want := in.spec.Size / 8
	n := 0
	if a, err := c.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil)}); err == nil {
		n = int(bytesToUint(a[0].Value))
	}
	if p.caps.WrapMultipleOf8 {
		// The token keeps the padded material: it is the material only
		// if it wraps back to the input (KWP is deterministic), and then
		// its length is the wrapping's less the 8-byte integrity block.
		again, err := c.WrapKey(sh, kwp, tk, h)
		if err != nil {
			return err
		}
		if !bytes.Equal(again, in.tail) {
			return kgerr.Invalid(fmt.Sprintf("the key material is not %d bytes (a %s key)", want, in.spec))
		}
		n = len(in.tail) - 8
	}
	switch {
	case n == 0:
		return kgerr.New(kgerr.KindUnsupportedAlgorithm, "this token does not tell the length of an unwrapped secret key (CKA_VALUE_LEN): the import cannot be checked")
	case n != want:
		return kgerr.Invalid(fmt.Sprintf("the key material is %d bytes; a %s key is %d", n, in.spec, want))
	}
	return nil
}

// checkPrivate checks an unwrapped private key against the spec and the
// public key given: its modulus or curve, then a test signature (or an
// RSA-OAEP round trip for a key that only decrypts) checked in Go.
func (p *Provider) checkPrivate(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, in unwrapIn) error {
	get := func(t uint) ([]byte, error) {
		a, err := p.mod.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(t, nil)})
		if err != nil {
			return nil, err
		}
		return a[0].Value, nil
	}
	switch k := in.given.(type) {
	case *rsa.PublicKey:
		n, err := get(pkcs11.CKA_MODULUS)
		if err != nil {
			return err
		}
		if new(big.Int).SetBytes(n).Cmp(k.N) != 0 {
			return errMismatch
		}
	case *ecdsa.PublicKey:
		params, err := get(pkcs11.CKA_EC_PARAMS)
		if err != nil {
			return err
		}
		if !bytes.Equal(params, curveOIDs[in.spec.Curve]) {
			return kgerr.Invalid(fmt.Sprintf("the key material is not a %s key", in.spec))
		}
	}
	if in.usage[alg.UsageSign] {
		return p.testSignature(sh, h, in)
	}
	return p.testDecrypt(sh, h, in)
}

// testAlgorithms are the algorithms a test signature may use, by key type
// and curve, in order of preference.
func testAlgorithms(s alg.Spec) []alg.Algorithm {
	switch {
	case s.Type == alg.RSA:
		return []alg.Algorithm{alg.RS256, alg.PS256}
	case s.Type == alg.Ed25519:
		return []alg.Algorithm{alg.EdDSA}
	case s.Curve == "P-256":
		return []alg.Algorithm{alg.ES256}
	case s.Curve == "P-384":
		return []alg.Algorithm{alg.ES384}
	case s.Curve == "P-521":
		return []alg.Algorithm{alg.ES512}
	}
	return nil
}

var testMessage = []byte("keygrid import check")

// testSignature signs a fixed message with the imported key on the token
// and verifies the signature in Go with the public key given.
func (p *Provider) testSignature(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, in unwrapIn) error {
	for _, name := range testAlgorithms(in.spec) {
		if p.caps.CheckAlgorithm(name) != nil {
			continue
		}
		a, _ := alg.Lookup(string(name))
		m, _ := mechanismOf(name)
		msg := testMessage
		if a.Hash != 0 {
			msg = alg.Digest(a, testMessage)
		}
		input := msg
		if m.input != nil {
			var err error
			if input, err = m.input(a, msg); err != nil {
				return err
			}
		}
		sig, _, err := p.invoke(sh, h, m, a, args{u: useSign}, input)
		if err != nil {
			return err
		}
		if a.KeyType == alg.EC {
			if sig, err = alg.ECDSARawToDER(sig); err != nil {
				return errMismatch
			}
		}
		if ok, err := alg.Verify(in.given, a, msg, sig); err != nil || !ok {
			return errMismatch
		}
		return nil
	}
	return kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("this token signs with no algorithm of %s keys: the import cannot be checked", in.spec))
}

// testDecrypt encrypts a fixed message in Go with the public key given and
// decrypts it with the imported key on the token (RSA keys that only
// decrypt).
func (p *Provider) testDecrypt(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, in unwrapIn) error {
	pub, ok := in.given.(*rsa.PublicKey)
	if !ok || !in.usage[alg.UsageDecrypt] {
		return kgerr.Invalid(fmt.Sprintf("an imported %s key must be usable to sign or to decrypt, so that it can be checked", in.spec))
	}
	for _, name := range []alg.Algorithm{alg.RSAOAEP256, alg.RSAOAEP} {
		if p.caps.CheckAlgorithm(name) != nil {
			continue
		}
		a, _ := alg.Lookup(string(name))
		m, _ := mechanismOf(name)
		ct, err := rsa.EncryptOAEP(a.Hash.New(), rand.Reader, pub, testMessage, nil)
		if err != nil {
			return err
		}
		pt, _, err := p.invoke(sh, h, m, a, args{u: useDecrypt}, ct)
		if err != nil {
			if classify(err, false) == classOp {
				return errMismatch
			}
			return err
		}
		if !bytes.Equal(pt, testMessage) {
			return errMismatch
		}
		return nil
	}
	return kgerr.New(kgerr.KindUnsupportedAlgorithm, "this token decrypts with no RSA-OAEP: the import cannot be checked")
}

// givenPublicKey parses the public key given with an import of a key pair
// and checks it is of the spec.
func givenPublicKey(s alg.Spec, der []byte) (crypto.PublicKey, error) {
	if alg.Secret(s.Type) {
		if der != nil {
			return nil, kgerr.Invalid("public_key does not apply to secret keys")
		}
		return nil, nil
	}
	if der == nil {
		return nil, kgerr.Invalid("public_key is required to import a private key")
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, kgerr.Invalid("public_key is not a SubjectPublicKeyInfo")
	}
	var got alg.Spec
	switch k := k.(type) {
	case *rsa.PublicKey:
		got = alg.Spec{Type: alg.RSA, Size: k.N.BitLen()}
	case *ecdsa.PublicKey:
		got, _ = alg.NewSpec(string(alg.EC), 0, k.Curve.Params().Name)
	case ed25519.PublicKey:
		got, _ = alg.NewSpec(string(alg.Ed25519), 0, "")
	default:
		return nil, kgerr.Invalid("public_key is of a key type KeyGrid does not import")
	}
	if got != s {
		return nil, kgerr.Invalid(fmt.Sprintf("public_key is a %s key, key_spec says %s", got, s))
	}
	return k, nil
}

// publicTemplate completes the public template of a key pair with the
// values of the public key given.
func publicTemplate(t []*pkcs11.Attribute, pub crypto.PublicKey) ([]*pkcs11.Attribute, error) {
	t = slices.DeleteFunc(slices.Clone(t), func(a *pkcs11.Attribute) bool {
		return a.Type == pkcs11.CKA_MODULUS_BITS || a.Type == pkcs11.CKA_PUBLIC_EXPONENT
	})
	point := func(raw []byte) (*pkcs11.Attribute, error) {
		b, err := asn1.Marshal(raw)
		return pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, b), err
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return append(t, pkcs11.NewAttribute(pkcs11.CKA_MODULUS, k.N.Bytes()),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(k.E)).Bytes())), nil
	case *ecdsa.PublicKey:
		raw, err := k.Bytes()
		if err != nil {
			return nil, kgerr.Invalid("public_key is not a valid EC point")
		}
		a, err := point(raw)
		return append(t, a), err
	case ed25519.PublicKey:
		a, err := point(k)
		return append(t, a), err
	}
	return nil, kgerr.Invalid("public_key is of a key type KeyGrid does not import")
}

// ExportKey implements provider.Exporter: the key's object is wrapped
// inside the token with AES-KWP under a fresh transport key, which is
// RSA-OAEP-encrypted (SHA-256) for the holder of the wrapping key: the
// material never exists in the gateway's memory in the clear. On a token
// whose AES-KWP pads material that is not a multiple of 8 bytes (SoftHSM2
// 2.6), private keys (PKCS#8 encodings of any length) are refused: their
// export would not unwrap to the key (secret keys, of 16 to 64 bytes in
// steps of 8, export exactly).
func (p *Provider) ExportKey(ctx context.Context, req provider.ExportKeyRequest) ([]byte, error) {
	recipient, err := alg.ParseWrappingPublicKey(req.WrappingKey)
	if err != nil {
		return nil, err
	}
	if err := p.canTransport(false); err != nil {
		return nil, err
	}
	secret := alg.Secret(req.Spec.Type)
	class := uint(pkcs11.CKO_PRIVATE_KEY)
	if secret {
		class = pkcs11.CKO_SECRET_KEY
	}
	transport := make([]byte, 32)
	defer clear(transport)
	if _, err := rand.Read(transport); err != nil {
		return nil, err
	}
	var res struct{ tail []byte }
	err = p.withKey(ctx, req.Ref, class, true, opOther, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		c := p.mod.ctx
		a, err := c.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil)})
		if err != nil {
			return err
		}
		if bytesToUint(a[0].Value) == 0 {
			return kgerr.New(kgerr.KindKeyNotExtractable, "the key material is not extractable")
		}
		if !secret && p.caps.WrapMultipleOf8 {
			return kgerr.New(kgerr.KindUnsupportedAlgorithm,
				"this token's AES-KWP (CKM_AES_KEY_WRAP_PAD) pads material that is not a multiple of 8 bytes: it cannot export private keys exactly")
		}
		tk, err := c.CreateObject(sh, append(transportTemplate(), pkcs11.NewAttribute(pkcs11.CKA_VALUE, transport)))
		if err != nil {
			return err
		}
		defer c.DestroyObject(sh, tk)
		kwp, err := plainMech(callMech{Code: pkcs11.CKM_AES_KEY_WRAP_PAD})
		if err != nil {
			return err
		}
		tail, err := c.WrapKey(sh, kwp, tk, h)
		res.tail = tail
		return err
	})
	if err != nil {
		return nil, err
	}
	head, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, recipient, transport, nil)
	if err != nil {
		return nil, err
	}
	return append(head, res.tail...), nil
}
