package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// discover reads the token's mechanisms (C_GetMechanismList and
// C_GetMechanismInfo) and derives the capabilities from them, the mechanism
// table (table.go) and the table's probes: a request for what the token
// cannot do is refused before any HSM call.
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
	p.caps = deriveCaps(p.mechs, func(m mechanism, a alg.Info, caps *provider.Capabilities) string {
		return m.probe(ctx, p, a, m, caps)
	})
	return nil
}

// probeOAEP checks, with a session key pair, whether the token decrypts
// RSA-OAEP with the hash of a (SoftHSM2 does SHA-1 only). The mechanism list
// cannot tell this.
func probeOAEP(ctx context.Context, p *Provider, a alg.Info, m mechanism, _ *provider.Capabilities) string {
	if ok, why := p.oaepWorks(ctx, a, m); !ok {
		return fmt.Sprintf("token lacks %s with %s (%s)", m.mech.name, a.Hash, why)
	}
	return ""
}

// oaepWorks decrypts with m and a session key pair; why names the refusal.
func (p *Provider) oaepWorks(ctx context.Context, info alg.Info, m mechanism) (ok bool, why string) {
	bits := uint(1024)
	if m := p.mechs[pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN]; m.MinKeySize > bits {
		bits = m.MinKeySize
	}
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
		msg := []byte("keygrid oaep probe")
		ct, err := rsa.EncryptOAEP(info.Hash.New(), rand.Reader, key, msg, nil)
		if err != nil {
			return err
		}
		pt, _, err := p.invoke(sh, priv, m, info, args{u: useDecrypt}, ct)
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

// probeKWP records in caps whether the token's AES-KWP is exact only for
// key material whose length is a multiple of 8 bytes; it never refuses.
// probeECDSA makes a key of the algorithm's curve and signs with it: a
// token may list a curve whose keys do not work (tpm2-pkcs11's P-521 public
// point is not valid DER).
func probeECDSA(ctx context.Context, p *Provider, a alg.Info, _ mechanism, _ *provider.Capabilities) string {
	if why := p.probeECDSA(ctx, a.Curve, a.Name); why != "" {
		return "token's " + a.Curve + " keys do not work: " + why
	}
	return ""
}

func probeKWP(ctx context.Context, p *Provider, _ alg.Info, m mechanism, caps *provider.Capabilities) string {
	caps.WrapMultipleOf8 = !p.kwpExact(ctx, m)
	return ""
}

// kwpExact checks whether the token's CKM_AES_KEY_WRAP_PAD follows RFC 5649
// for key material that is not a multiple of 8 bytes, by wrapping a 7-byte
// secret under a session KEK of known value and comparing with Go's
// implementation. SoftHSM2 2.6 pads the material first and records the
// padded length, so its unwrap cannot give the original back. If the probe
// cannot run (a module that refuses imported session keys), the module is
// trusted.
func (p *Provider) kwpExact(ctx context.Context, m mechanism) bool {
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
		got, err = p.wrapBytes(sh, k, m, secret)
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
