package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// mechanism returns the table entry that performs use u of a, refusing
// before any HSM call an algorithm the provider does not advertise, one its
// entry does not use for u, and one that does not fit the key.
func (p *Provider) mechanism(spec alg.Spec, a alg.Info, u use) (mechanism, error) {
	if err := p.caps.CheckAlgorithm(a.Name); err != nil {
		return mechanism{}, err
	}
	m, ok := mechanismOf(a.Name)
	if !ok || m.uses&u != u {
		return mechanism{}, kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("this provider does not use %s for %s", a.Name, u))
	}
	if err := alg.Compatible(spec, a); err != nil {
		return mechanism{}, err
	}
	return m, nil
}

// perform does use c.u (sign, encrypt or decrypt) of algorithm a with the
// key of ref: the mechanism, its parameters and the shaping of the input
// come from the table. An encryption gets a fresh random IV on every
// attempt; it returns the IV the module used.
func (p *Provider) perform(ctx context.Context, ref string, spec alg.Spec, a alg.Info, c args, in []byte) (out, iv []byte, err error) {
	m, err := p.mechanism(spec, a, c.u)
	if err != nil {
		return nil, nil, err
	}
	if m.ivBytes > 0 && c.u == useDecrypt && len(c.iv) != m.ivBytes {
		return nil, nil, kgerr.ErrDecryptionFailed
	}
	if m.input != nil {
		if in, err = m.input(a, in); err != nil {
			return nil, nil, err
		}
	}
	if m.perCallLimit {
		if err := p.checkGCMSize(len(in)); err != nil {
			return nil, nil, err
		}
	}
	class := uint(pkcs11.CKO_PRIVATE_KEY)
	if alg.Secret(spec.Type) {
		class = pkcs11.CKO_SECRET_KEY
	}
	// A call abandoned at its deadline may return later (a killed module
	// host fails it): its results go to res, which is read only after a
	// success.
	var res struct{ out, iv []byte }
	err = p.withKey(ctx, ref, class, true, c.u.opKind(), func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		attempt := c
		if m.ivBytes > 0 && c.u == useEncrypt {
			attempt.iv = make([]byte, m.ivBytes)
			if _, err := rand.Read(attempt.iv); err != nil {
				return err
			}
		}
		out, iv, err := p.invoke(sh, h, m, a, attempt, in)
		res.out, res.iv = out, iv
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return res.out, res.iv, nil
}

// invoke makes one call of use c.u of m for a with key h on session sh
// (C_SignInit and C_Sign, C_EncryptInit and C_Encrypt, or C_DecryptInit and
// C_Decrypt) on input shaped already. After an encryption it returns the IV
// the module used.
func (p *Provider) invoke(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, m mechanism, a alg.Info, c args, in []byte) (out, iv []byte, err error) {
	out, after, err := p.mod.ctx.Crypt(sh, c.u, m.build(a, c), h, in)
	if err == nil && c.u == useEncrypt && m.ivBytes > 0 {
		iv = gcmNonce(c.iv, after)
	}
	return out, iv, err
}

// Sign implements provider.Provider.
func (p *Provider) Sign(ctx context.Context, req provider.SignRequest) ([]byte, error) {
	if req.Algorithm.Kind != alg.KindSign {
		return nil, kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("%s is not a signature algorithm", req.Algorithm.Name))
	}
	sig, _, err := p.perform(ctx, req.Ref, req.Spec, req.Algorithm, args{u: useSign}, req.Input)
	return sig, err
}

// Encrypt implements provider.Provider: AES-GCM with a random 96-bit IV.
// Some modules (CloudHSM) ignore the IV they are given and write their own
// into the parameters: the IV is read back after the call.
func (p *Provider) Encrypt(ctx context.Context, req provider.EncryptRequest) (provider.EncryptResult, error) {
	ct, iv, err := p.perform(ctx, req.Ref, req.Spec, req.Algorithm, args{u: useEncrypt, aad: req.AAD}, req.Plaintext)
	if err != nil {
		return provider.EncryptResult{}, err
	}
	return provider.EncryptResult{Nonce: iv, Ciphertext: ct}, nil
}

// Decrypt implements provider.Provider: RSA-OAEP with the private key, or
// AES-GCM with the secret key.
func (p *Provider) Decrypt(ctx context.Context, req provider.DecryptRequest) ([]byte, error) {
	pt, _, err := p.perform(ctx, req.Ref, req.Spec, req.Algorithm, args{u: useDecrypt, iv: req.Nonce, aad: req.AAD}, req.Ciphertext)
	return pt, err
}

// checkGCMSize refuses AES-GCM input the module cannot take in one call.
func (p *Provider) checkGCMSize(n int) error {
	if p.cfg.maxGCMBytes > 0 && n > p.cfg.maxGCMBytes {
		return kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("this HSM takes at most %d bytes per AES-GCM call", p.cfg.maxGCMBytes))
	}
	return nil
}

var kwpInfo, _ = alg.Lookup(string(alg.AESKWP))

// wrapBytes wraps key material with a KEK: the material becomes a session
// generic-secret object for the length of the call (C_WrapKey wraps
// objects, not bytes).
func (p *Provider) wrapBytes(sh pkcs11.SessionHandle, kek pkcs11.ObjectHandle, m mechanism, material []byte) ([]byte, error) {
	mechs, err := plainMech(m.build(kwpInfo, args{u: useWrap}))
	if err != nil {
		return nil, err
	}
	c := p.mod.ctx
	obj, err := c.CreateObject(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, material),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
	})
	if err != nil {
		return nil, err
	}
	defer c.DestroyObject(sh, obj)
	return c.WrapKey(sh, mechs, kek, obj)
}

// errKWPLength refuses what SoftHSM2's broken AES-KWP cannot do exactly.
var errKWPLength = kgerr.New(kgerr.KindUnsupportedAlgorithm,
	"this token's AES-KWP (CKM_AES_KEY_WRAP_PAD) is exact only for key material whose length is a multiple of 8 bytes")

// WrapKey implements provider.Provider.
func (p *Provider) WrapKey(ctx context.Context, req provider.WrapRequest) ([]byte, error) {
	m, err := p.mechanism(req.Spec, kwpInfo, useWrap)
	if err != nil {
		return nil, err
	}
	if p.caps.WrapMultipleOf8 && len(req.KeyMaterial)%8 != 0 {
		return nil, errKWPLength
	}
	var out []byte
	err = p.withKey(ctx, req.Ref, pkcs11.CKO_SECRET_KEY, true, useWrap.opKind(), func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		var err error
		out, err = p.wrapBytes(sh, h, m, req.KeyMaterial)
		return err
	})
	if err != nil {
		return nil, err // out may still be written by a call abandoned at its deadline
	}
	return out, nil
}

// UnwrapKey implements provider.Provider: the material is unwrapped into a
// session generic-secret object, read, and destroyed.
func (p *Provider) UnwrapKey(ctx context.Context, req provider.UnwrapRequest) ([]byte, error) {
	m, err := p.mechanism(req.Spec, kwpInfo, useUnwrap)
	if err != nil {
		return nil, err
	}
	var out []byte
	err = p.withKey(ctx, req.Ref, pkcs11.CKO_SECRET_KEY, true, useUnwrap.opKind(), func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		mechs, err := plainMech(m.build(kwpInfo, args{u: useUnwrap}))
		if err != nil {
			return err
		}
		c := p.mod.ctx
		obj, err := c.UnwrapKey(sh, mechs, h, req.Wrapped, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
		})
		if err != nil {
			return err
		}
		defer c.DestroyObject(sh, obj)
		a, err := c.GetAttributeValue(sh, obj, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			return err
		}
		out = a[0].Value
		if p.caps.WrapMultipleOf8 && len(out) > 0 && out[len(out)-1] == 0 {
			// The token ignores the recorded length: the material may have
			// been padded. KWP is deterministic, so wrapping the result
			// again gives the input back only if nothing was padded.
			again, err := p.wrapBytes(sh, h, m, out)
			if err != nil {
				return err
			}
			if !bytes.Equal(again, req.Wrapped) {
				out = nil
				return errKWPLength
			}
		}
		return nil
	})
	if err != nil {
		return nil, err // out may still be written by a call abandoned at its deadline
	}
	return out, nil
}
