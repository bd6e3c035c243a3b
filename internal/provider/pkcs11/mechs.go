package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"fmt"
	"hash"
	"math/big"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// Mechanisms and key types of PKCS#11 v3.0 that miekg/pkcs11 lacks.
const (
	ckkECEdwards           = 0x40
	ckmECEdwardsKeyPairGen = 0x1055
	ckmEdDSA               = 0x1057
)

// discover reads the token's mechanisms (C_GetMechanismList and
// C_GetMechanismInfo) and probes what the list cannot say, to build the
// capabilities: a request for what the token cannot do is refused before any
// HSM call.
func (p *Provider) discover(ctx context.Context) error {
	p.mechs = map[uint]pkcs11.MechanismInfo{}
	err := p.run(ctx, true, opOther, func(sh pkcs11.SessionHandle) error {
		c, slot := p.mod.ctx, uint(p.slot.Load())
		list, err := c.GetMechanismList(slot)
		if err != nil {
			return err
		}
		for _, m := range list {
			info, err := c.GetMechanismInfo(slot, []*pkcs11.Mechanism{m})
			if err != nil {
				continue // ask one at a time: one bad answer must not hide the rest
			}
			p.mechs[m.Mechanism] = info
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reading the token's mechanisms: %w", err)
	}
	caps := provider.Capabilities{Missing: map[alg.Algorithm]string{}}
	has := func(m uint, flags uint) bool {
		i, ok := p.mechs[m]
		return ok && i.Flags&flags == flags
	}
	within := func(m uint, n uint) bool {
		i := p.mechs[m]
		return (i.MinKeySize == 0 || n >= i.MinKeySize) && (i.MaxKeySize == 0 || n <= i.MaxKeySize)
	}
	missing := func(why string, algs ...alg.Algorithm) {
		for _, a := range algs {
			caps.Missing[a] = why
		}
	}
	add := func(algs ...alg.Algorithm) { caps.Algorithms = append(caps.Algorithms, algs...) }

	if has(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR) {
		kt := provider.KeyTypeCaps{Type: alg.RSA}
		for _, n := range []int{2048, 3072, 4096} {
			if within(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, uint(n)) {
				kt.Sizes = append(kt.Sizes, n)
			}
		}
		caps.KeyTypes = append(caps.KeyTypes, kt)
		if has(pkcs11.CKM_RSA_PKCS, pkcs11.CKF_SIGN) {
			add(alg.RS256, alg.RS384, alg.RS512)
		} else {
			missing("token lacks CKM_RSA_PKCS for signing", alg.RS256, alg.RS384, alg.RS512)
		}
		if has(pkcs11.CKM_RSA_PKCS_PSS, pkcs11.CKF_SIGN) {
			add(alg.PS256, alg.PS384, alg.PS512)
		} else {
			missing("token lacks CKM_RSA_PKCS_PSS", alg.PS256, alg.PS384, alg.PS512)
		}
		if has(pkcs11.CKM_RSA_PKCS_OAEP, pkcs11.CKF_DECRYPT) {
			for _, o := range []struct {
				a    alg.Algorithm
				name string
			}{{alg.RSAOAEP, "SHA-1"}, {alg.RSAOAEP256, "SHA-256"}} {
				if ok, why := p.probeOAEP(ctx, o.a); ok {
					add(o.a)
				} else {
					missing(fmt.Sprintf("token lacks CKM_RSA_PKCS_OAEP with %s (%s)", o.name, why), o.a)
				}
			}
		} else {
			missing("token lacks CKM_RSA_PKCS_OAEP for decryption", alg.RSAOAEP, alg.RSAOAEP256)
		}
	} else {
		missing("token lacks CKM_RSA_PKCS_KEY_PAIR_GEN", alg.RS256, alg.RS384, alg.RS512, alg.PS256, alg.PS384, alg.PS512, alg.RSAOAEP, alg.RSAOAEP256)
	}

	if has(pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR) {
		kt := provider.KeyTypeCaps{Type: alg.EC}
		for _, c := range []struct {
			curve string
			bits  uint
			a     alg.Algorithm
		}{{"P-256", 256, alg.ES256}, {"P-384", 384, alg.ES384}, {"P-521", 521, alg.ES512}} {
			if !within(pkcs11.CKM_EC_KEY_PAIR_GEN, c.bits) {
				missing("token does not make "+c.curve+" keys", c.a)
				continue
			}
			if !has(pkcs11.CKM_ECDSA, pkcs11.CKF_SIGN) {
				missing("token lacks CKM_ECDSA", c.a)
			} else if why := p.probeECDSA(ctx, c.curve, c.a); why != "" {
				missing("token's "+c.curve+" keys do not work: "+why, c.a)
			} else {
				kt.Curves = append(kt.Curves, c.curve)
				add(c.a)
			}
		}
		caps.KeyTypes = append(caps.KeyTypes, kt)
	} else {
		missing("token lacks CKM_EC_KEY_PAIR_GEN", alg.ES256, alg.ES384, alg.ES512)
	}

	if has(ckmECEdwardsKeyPairGen, pkcs11.CKF_GENERATE_KEY_PAIR) && has(ckmEdDSA, pkcs11.CKF_SIGN) {
		caps.KeyTypes = append(caps.KeyTypes, provider.KeyTypeCaps{Type: alg.Ed25519})
		add(alg.EdDSA)
	} else {
		missing("token lacks CKM_EC_EDWARDS_KEY_PAIR_GEN or CKM_EDDSA", alg.EdDSA)
	}

	if has(pkcs11.CKM_AES_KEY_GEN, pkcs11.CKF_GENERATE) {
		kt := provider.KeyTypeCaps{Type: alg.AES}
		info := p.mechs[pkcs11.CKM_AES_KEY_GEN]
		for _, n := range []int{128, 256} {
			size := uint(n / 8) // AES sizes are in bytes (PKCS#11 §2.8) …
			if info.MaxKeySize > 64 {
				size = uint(n) // … but some modules report bits
			}
			if within(pkcs11.CKM_AES_KEY_GEN, size) {
				kt.Sizes = append(kt.Sizes, n)
			}
		}
		caps.KeyTypes = append(caps.KeyTypes, kt)
		if has(pkcs11.CKM_AES_GCM, pkcs11.CKF_ENCRYPT|pkcs11.CKF_DECRYPT) {
			add(alg.A128GCM, alg.A256GCM)
		} else {
			missing("token lacks CKM_AES_GCM", alg.A128GCM, alg.A256GCM)
		}
		if has(pkcs11.CKM_AES_KEY_WRAP_PAD, pkcs11.CKF_WRAP|pkcs11.CKF_UNWRAP) {
			add(alg.AESKWP)
			caps.WrapMultipleOf8 = !p.probeKWP(ctx)
		} else {
			missing("token lacks CKM_AES_KEY_WRAP_PAD", alg.AESKWP)
		}
	} else {
		missing("token lacks CKM_AES_KEY_GEN", alg.A128GCM, alg.A256GCM, alg.AESKWP)
	}
	caps.KeyTypes = usableKeyTypes(caps)
	p.caps = caps
	return nil
}

// probeOAEP checks, with a session key pair, whether the token decrypts
// RSA-OAEP with the hash of a (SoftHSM2 does SHA-1 only). The mechanism list
// cannot tell this.
func (p *Provider) probeOAEP(ctx context.Context, a alg.Algorithm) (bool, string) {
	info, _ := alg.Lookup(string(a))
	bits := uint(1024)
	if m := p.mechs[pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN]; m.MinKeySize > bits {
		bits = m.MinKeySize
	}
	var why string
	err := p.run(ctx, false, opOther, func(sh pkcs11.SessionHandle) error {
		c := p.mod.ctx
		pub, priv, destroy, err := p.probeKeyPair(sh, bits)
		if err != nil {
			return err
		}
		defer destroy()
		attrs, err := c.GetAttributeValue(sh, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil)})
		if err != nil {
			return err
		}
		key := &rsa.PublicKey{N: new(big.Int).SetBytes(attrs[0].Value), E: 65537}
		var h hash.Hash = sha1.New()
		if info.Hash.Size() == sha256.Size {
			h = sha256.New()
		}
		msg := []byte("keygrid oaep probe")
		ct, err := rsa.EncryptOAEP(h, rand.Reader, key, msg, nil)
		if err != nil {
			return err
		}
		pt, err := p.decryptOAEP(sh, priv, info, ct)
		switch {
		case err != nil:
			code, _ := ckrCode(err)
			why = ckrName(code)
			return nil // refused: the session is fine (the operation never started)
		case !bytes.Equal(pt, msg):
			why = "wrong plaintext"
		}
		return nil
	})
	if err != nil {
		return false, "probe failed: " + toError(err, opOther).Error()
	}
	return why == "", why
}

// probeKWP checks whether the token's CKM_AES_KEY_WRAP_PAD follows RFC 5649
// for key material that is not a multiple of 8 bytes, by wrapping a 7-byte
// secret under a session KEK of known value and comparing with Go's
// implementation. SoftHSM2 2.6 pads the material first and records the
// padded length, so its unwrap cannot give the original back. If the probe
// cannot run (a module that refuses imported session keys), the module is
// trusted.
func (p *Provider) probeKWP(ctx context.Context) bool {
	kek := make([]byte, 32)
	secret := []byte("7 bytes")
	rand.Read(kek)
	var got []byte
	err := p.run(ctx, false, opOther, func(sh pkcs11.SessionHandle) error {
		c := p.mod.ctx
		k, err := c.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_VALUE, kek),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true)})
		if err != nil {
			return nil
		}
		defer c.DestroyObject(sh, k)
		got, err = p.wrapBytes(sh, k, secret)
		if err != nil {
			got = nil
		}
		return nil
	})
	if err != nil || got == nil {
		return true
	}
	want, err := alg.WrapKWP(kek, secret)
	return err == nil && bytes.Equal(got, want)
}
