package pkcs11

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// DER OIDs of the curves, the CKA_EC_PARAMS of EC keys.
var curveOIDs = map[string][]byte{
	"P-256":   {0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07},
	"P-384":   {0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22},
	"P-521":   {0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x23},
	"Ed25519": {0x06, 0x03, 0x2B, 0x65, 0x70},
}

// Classes found by FindKey (objectSet.has).
const (
	hasPriv uint8 = 1 << iota
	hasPub
	hasSec
)

func objectID(ref string) ([]byte, error) {
	u, err := ParseURI(ref)
	if err != nil {
		return nil, kgerr.New(kgerr.KindKeyNotFound, "the key reference is not a PKCS#11 URI of this provider")
	}
	return u.ID, nil
}

func (p *Provider) ref(id []byte, label string) string {
	tok := p.token.Load()
	return URI{Token: tok.label, ID: id, Object: label}.String()
}

func usageSet(u []alg.Usage) map[alg.Usage]bool {
	m := map[alg.Usage]bool{}
	for _, x := range u {
		m[x] = true
	}
	return m
}

// templates builds the public and private (or secret) templates of a key:
// token objects, private keys sensitive and extractable only on request,
// CKA_SIGN / CKA_DECRYPT / … set from the key's usage only. The private
// template never holds CKA_MODULUS_BITS or CKA_PUBLIC_EXPONENT.
func templates(req provider.CreateKeyRequest, id []byte) (mech uint, pub, priv []*pkcs11.Attribute, err error) {
	u := usageSet(req.Usage)
	common := func(class uint) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, req.Label),
		}
	}
	secretAttrs := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, req.Extractable),
	}
	switch req.Spec.Type {
	case alg.RSA:
		mech = pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN
		pub = append(common(pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, req.Spec.Size),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, u[alg.UsageVerify] || u[alg.UsageSign]),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, u[alg.UsageEncrypt] || u[alg.UsageDecrypt]),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false))
		priv = append(append(common(pkcs11.CKO_PRIVATE_KEY), secretAttrs...),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, u[alg.UsageSign]),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, u[alg.UsageDecrypt]),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false))
	case alg.EC, alg.Ed25519:
		mech, kt, curve := uint(pkcs11.CKM_EC_KEY_PAIR_GEN), uint(pkcs11.CKK_EC), req.Spec.Curve
		if req.Spec.Type == alg.Ed25519 {
			mech, kt, curve = ckmECEdwardsKeyPairGen, ckkECEdwards, "Ed25519"
		}
		pub = append(common(pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, kt),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, curveOIDs[curve]),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, u[alg.UsageVerify] || u[alg.UsageSign]),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false))
		priv = append(append(common(pkcs11.CKO_PRIVATE_KEY), secretAttrs...),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, kt),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, u[alg.UsageSign]),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false))
		return mech, pub, priv, nil
	case alg.AES:
		mech = pkcs11.CKM_AES_KEY_GEN
		priv = append(append(common(pkcs11.CKO_SECRET_KEY), secretAttrs...),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, req.Spec.Size/8),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, u[alg.UsageEncrypt]),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, u[alg.UsageDecrypt]),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, u[alg.UsageWrap]),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, u[alg.UsageUnwrap]),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false))
	case alg.HMAC:
		mech = pkcs11.CKM_GENERIC_SECRET_KEY_GEN
		priv = append(append(common(pkcs11.CKO_SECRET_KEY), secretAttrs...),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, req.Spec.Size/8),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, u[alg.UsageSign]),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, u[alg.UsageVerify]),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false))
	default:
		return 0, nil, nil, kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("cannot make %s keys", req.Spec))
	}
	return mech, pub, priv, nil
}

// CreateKey implements provider.Provider. The key's objects carry the
// object id as CKA_ID and the label as CKA_LABEL. It does not search the
// token for the id first (a C_FindObjects costs time in proportion to the
// objects on the token; the service never reuses an id).
//
// The templates state every usage, denials included (CKA_DECRYPT=false on a
// signing key). A module that refuses a denial the token cannot honour as
// given (tpm2-pkcs11: the TPM has one attribute for sign and encrypt, one for
// decrypt and verify, and fails a template that sets a pair two ways) gets
// the templates again with the denials left out, once; the module is then
// known to refuse them and later keys go without. The gateway enforces
// usage itself, whatever the token grants.
func (p *Provider) CreateKey(ctx context.Context, req provider.CreateKeyRequest) (provider.CreatedKey, error) {
	id, err := hex.DecodeString(req.ObjectID)
	if err != nil || len(id) != 16 {
		return provider.CreatedKey{}, kgerr.Invalid("object id must be 32 hex characters")
	}
	if err := p.caps.CheckSpec(req.Spec); err != nil {
		return provider.CreatedKey{}, err
	}
	mech, pubT, privT, err := templates(req, id)
	if err != nil {
		return provider.CreatedKey{}, err
	}
	if p.mod.refusesDenials.Load() {
		pubT, privT = grantsOnly(pubT), grantsOnly(privT)
	}
	err = p.generate(ctx, req.ObjectID, mech, pubT, privT)
	if err != nil && refusedTemplate(err) && hasDenials(pubT, privT) {
		if _, found, ferr := p.FindKey(ctx, req.ObjectID); ferr != nil || found {
			return provider.CreatedKey{}, err
		}
		if err = p.generate(ctx, req.ObjectID, mech, grantsOnly(pubT), grantsOnly(privT)); err == nil && !p.mod.refusesDenials.Swap(true) {
			p.log.Warn("the token refuses usage attributes set to false: keys are made with their usages only, "+
				"the token may grant more (the gateway enforces usage)", "library", p.cfg.LibraryPath)
		}
	}
	if err != nil {
		return provider.CreatedKey{}, err
	}
	ref := p.ref(id, req.Label)
	out := provider.CreatedKey{Ref: ref}
	if !alg.Secret(req.Spec.Type) {
		if out.PublicKey, err = p.PublicKey(ctx, ref); err != nil {
			return provider.CreatedKey{}, err
		}
	}
	return out, nil
}

// usageAttrs are the attributes that say what a key may do.
var usageAttrs = []uint{pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY,
	pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE}

// hasDenials reports whether a template holds a usage attribute set to
// false.
func hasDenials(ts ...[]*pkcs11.Attribute) bool {
	for _, t := range ts {
		if len(grantsOnly(t)) != len(t) {
			return true
		}
	}
	return false
}

// grantsOnly returns the template without its denials: the usage
// attributes set to false.
func grantsOnly(t []*pkcs11.Attribute) []*pkcs11.Attribute {
	var out []*pkcs11.Attribute
	for _, a := range t {
		if slices.Contains(usageAttrs, a.Type) && !slices.ContainsFunc(a.Value, func(b byte) bool { return b != 0 }) {
			continue
		}
		out = append(out, a)
	}
	return out
}

// generate makes the key's objects. If the HSM fails in a way that may have
// left the key made (a lost connection), it waits for recovery and looks
// for the CKA_ID before it generates again: a key is never made twice.
func (p *Provider) generate(ctx context.Context, objectID string, mech uint, pubT, privT []*pkcs11.Attribute) error {
	gen := func(sh pkcs11.SessionHandle) error {
		// Taken on the session, never while waiting for one: holders of
		// sessions wait for changeMu in their searches.
		defer p.lockChanges(true)()
		m := []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}
		if pubT == nil {
			_, err := p.mod.ctx.GenerateKey(sh, m, privT)
			return err
		}
		_, _, err := p.mod.ctx.GenerateKeyPair(sh, m, pubT, privT)
		return err
	}
	for attempt := 0; ; attempt++ {
		err := p.run(ctx, false, opCreate, gen)
		if err == nil {
			return nil
		}
		if attempt > 0 || !errors.Is(err, kgerr.ErrServiceUnavailable) {
			return err
		}
		// The generation may have reached the HSM before the failure: wait
		// for recovery, then look before generating again.
		wctx, cancel := context.WithTimeout(ctx, p.cfg.opTimeout)
		werr := p.state.waitUp(wctx)
		cancel()
		if werr != nil {
			return err
		}
		if _, found, ferr := p.FindKey(ctx, objectID); ferr != nil {
			return err
		} else if found {
			return nil
		}
	}
}

// findAll returns the handles of every object with CKA_ID id (any class).
// The caller holds lockChanges.
func (p *Provider) findAll(sh pkcs11.SessionHandle, id []byte, class *uint) ([]pkcs11.ObjectHandle, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id)}
	if class != nil {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_CLASS, *class))
	}
	return p.mod.ctx.FindAll(sh, tmpl)
}

// handle returns the handle of the object of class with CKA_ID id, from the
// cache of the current generation or by one C_FindObjects.
func (p *Provider) handle(sh pkcs11.SessionHandle, id []byte, class uint) (pkcs11.ObjectHandle, error) {
	gen := p.gen.Load()
	p.hmu.RLock()
	h, ok := p.handles[string(id)]
	p.hmu.RUnlock()
	if o := h.get(class); ok && h.gen == gen && o != 0 {
		return o, nil
	}
	unlock := p.lockChanges(false)
	found, err := p.findAll(sh, id, &class)
	unlock()
	if err != nil {
		return 0, err
	}
	if len(found) == 0 {
		return 0, kgerr.Wrap(kgerr.KindKeyNotFound, errObjectsMissing, "the key's objects are not on the token")
	}
	p.hmu.Lock()
	h = p.handles[string(id)]
	if h.gen != gen {
		h = objHandles{gen: gen}
	}
	h.set(class, found[0])
	p.handles[string(id)] = h
	p.hmu.Unlock()
	return found[0], nil
}

func (h *objHandles) get(class uint) pkcs11.ObjectHandle {
	switch class {
	case pkcs11.CKO_PRIVATE_KEY:
		return h.priv
	case pkcs11.CKO_PUBLIC_KEY:
		return h.pub
	}
	return h.sec
}

func (h *objHandles) set(class uint, o pkcs11.ObjectHandle) {
	switch class {
	case pkcs11.CKO_PRIVATE_KEY:
		h.priv = o
	case pkcs11.CKO_PUBLIC_KEY:
		h.pub = o
	default:
		h.sec = o
	}
}

func (p *Provider) forget(id []byte) {
	p.hmu.Lock()
	delete(p.handles, string(id))
	p.hmu.Unlock()
}

// withKey runs fn with the handle of a key's object of class. A handle that
// turns out stale is forgotten and looked up once more.
func (p *Provider) withKey(ctx context.Context, ref string, class uint, idempotent bool, kind opKind,
	fn func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error) error {
	id, err := objectID(ref)
	if err != nil {
		return err
	}
	forgot, rescanned := false, false
	for {
		start := time.Now()
		err := p.run(ctx, idempotent, kind, func(sh pkcs11.SessionHandle) error {
			h, err := p.handle(sh, id, class)
			if err != nil {
				return err
			}
			return fn(sh, h)
		})
		code, _ := ckrCode(err)
		if !forgot && (code == pkcs11.CKR_OBJECT_HANDLE_INVALID || code == pkcs11.CKR_KEY_HANDLE_INVALID) {
			forgot = true
			p.forget(id)
			continue
		}
		if !rescanned && errors.Is(err, errObjectsMissing) && p.rescanOnMiss() {
			// The module may not have seen an object another process made.
			rescanned = true
			if p.rescan(ctx, start) == nil {
				continue
			}
		}
		return err
	}
}

// FindKey implements provider.Provider.
func (p *Provider) FindKey(ctx context.Context, objectID string) (string, bool, error) {
	id, err := hex.DecodeString(objectID)
	if err != nil || len(id) == 0 {
		return "", false, nil
	}
	var set objectSet
	for rescanned := false; ; rescanned = true {
		start := time.Now()
		if set, err = p.findObjects(ctx, id); err != nil {
			return "", false, err
		}
		if set.has != 0 || rescanned || !p.rescanOnMiss() || p.rescan(ctx, start) != nil {
			break
		}
	}
	if set.has == 0 {
		return "", false, nil
	}
	ref := p.ref(id, set.label)
	// A key pair is two objects, stored one after the other; a process
	// killed between the two leaves one (SoftHSM2 stores the public key
	// first). That is no key: the caller destroys it.
	switch {
	case set.has&hasSec != 0, set.has&(hasPriv|hasPub) == hasPriv|hasPub:
		return ref, true, nil
	case set.has&hasPub != 0:
		return "", false, &provider.IncompleteKeyError{Ref: ref, Missing: "private key"}
	case set.has&hasPriv != 0:
		return "", false, &provider.IncompleteKeyError{Ref: ref, Missing: "public key"}
	}
	return "", false, &provider.IncompleteKeyError{Ref: ref, Missing: "key object"}
}

// objectSet describes the objects with one CKA_ID.
type objectSet struct {
	label string // of one of them
	has   uint8  // hasPriv | hasPub | hasSec; hasOther for any other class
}

// hasOther marks an object of another class with the CKA_ID.
const hasOther uint8 = 1 << 7

// findObjects finds the objects with CKA_ID id and their classes.
func (p *Provider) findObjects(ctx context.Context, id []byte) (objectSet, error) {
	var set objectSet
	err := p.run(ctx, true, opOther, func(sh pkcs11.SessionHandle) error {
		set = objectSet{}
		unlock := p.lockChanges(false)
		hs, err := p.findAll(sh, id, nil)
		unlock()
		if err != nil || len(hs) == 0 {
			return err
		}
		if a, err := p.mod.ctx.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)}); err == nil {
			set.label = string(a[0].Value)
		}
		for _, h := range hs {
			a, err := p.mod.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil)})
			if err != nil {
				return err
			}
			switch bytesToUint(a[0].Value) {
			case pkcs11.CKO_PRIVATE_KEY:
				set.has |= hasPriv
			case pkcs11.CKO_PUBLIC_KEY:
				set.has |= hasPub
			case pkcs11.CKO_SECRET_KEY:
				set.has |= hasSec
			default:
				set.has |= hasOther
			}
		}
		return nil
	})
	if err != nil {
		return objectSet{}, err // set may still be written by a call abandoned at its deadline
	}
	return set, nil
}

// DeleteKey implements provider.Provider: it destroys every object with the
// key's CKA_ID (private, public or secret).
func (p *Provider) DeleteKey(ctx context.Context, ref string) error {
	id, err := objectID(ref)
	if err != nil {
		return nil // nothing of ours to delete
	}
	p.forget(id)
	return p.run(ctx, true, opOther, func(sh pkcs11.SessionHandle) error {
		defer p.lockChanges(true)()
		hs, err := p.findAll(sh, id, nil)
		if err != nil {
			return err
		}
		for _, h := range hs {
			if err := p.mod.ctx.DestroyObject(sh, h); err != nil {
				if code, _ := ckrCode(err); code != pkcs11.CKR_OBJECT_HANDLE_INVALID {
					return err
				}
			}
		}
		return nil
	})
}

// PublicKey implements provider.Provider: it reads the public key object's
// attributes, one at a time (C_GetAttributeValue fails as a whole on some
// modules when one attribute is invalid).
func (p *Provider) PublicKey(ctx context.Context, ref string) ([]byte, error) {
	id, err := objectID(ref)
	if err != nil {
		return nil, err
	}
	var der []byte
	err = p.withKey(ctx, ref, pkcs11.CKO_PUBLIC_KEY, true, opOther, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		get := func(t uint) ([]byte, error) {
			a, err := p.mod.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(t, nil)})
			if err != nil {
				return nil, err
			}
			return a[0].Value, nil
		}
		kt, err := get(pkcs11.CKA_KEY_TYPE)
		if err != nil {
			return err
		}
		pub, err := publicKeyFromAttrs(bytesToUint(kt), get)
		if err != nil {
			return err
		}
		der, err = x509.MarshalPKIXPublicKey(pub)
		return err
	})
	if errors.Is(err, kgerr.ErrKeyNotFound) {
		// No public key object: is it a secret key?
		if _, found, ferr := p.FindKey(ctx, hex.EncodeToString(id)); ferr == nil && found {
			return nil, kgerr.Invalid("a secret key has no public key")
		}
	}
	if err != nil {
		return nil, err // der may still be written by a call abandoned at its deadline
	}
	return der, nil
}

func bytesToUint(b []byte) uint {
	// CK_ULONG in host (little-endian) order.
	var v uint
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint(b[i])
	}
	return v
}

// publicKeyFromAttrs builds a Go public key from a public key object.
func publicKeyFromAttrs(keyType uint, get func(uint) ([]byte, error)) (any, error) {
	switch keyType {
	case pkcs11.CKK_RSA:
		n, err := get(pkcs11.CKA_MODULUS)
		if err != nil {
			return nil, err
		}
		e, err := get(pkcs11.CKA_PUBLIC_EXPONENT)
		if err != nil {
			return nil, err
		}
		eb := new(big.Int).SetBytes(e)
		if !eb.IsInt64() || eb.Int64() > 1<<31-1 {
			return nil, errors.New("RSA public exponent out of range")
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(eb.Int64())}, nil
	case pkcs11.CKK_EC, ckkECEdwards:
		params, err := get(pkcs11.CKA_EC_PARAMS)
		if err != nil {
			return nil, err
		}
		point, err := get(pkcs11.CKA_EC_POINT)
		if err != nil {
			return nil, err
		}
		curve := ""
		for name, oid := range curveOIDs {
			if slices.Equal(oid, params) {
				curve = name
			}
		}
		if keyType == ckkECEdwards || curve == "Ed25519" {
			raw := ecPointBytes(point, ed25519.PublicKeySize)
			if len(raw) != ed25519.PublicKeySize {
				return nil, errors.New("Ed25519 public key has the wrong length")
			}
			return ed25519.PublicKey(raw), nil
		}
		c := alg.Curve(curve)
		if c == nil {
			return nil, fmt.Errorf("unsupported curve %x", params)
		}
		return ecdsa.ParseUncompressedPublicKey(c, ecPointBytes(point, 1+2*((c.Params().BitSize+7)/8)))
	}
	return nil, fmt.Errorf("unsupported key type %#x", keyType)
}

// ecPointBytes returns the point of a CKA_EC_POINT: a DER OCTET STRING, or,
// from a few modules, the raw point. A value of the raw point's length
// (rawLen) is the raw point: read as DER first, a raw point whose second
// byte happens to be its remaining length would be misread.
func ecPointBytes(point []byte, rawLen int) []byte {
	if len(point) == rawLen {
		return point
	}
	var raw []byte
	if rest, err := asn1.Unmarshal(point, &raw); err != nil || len(rest) != 0 {
		return point
	}
	return raw
}
