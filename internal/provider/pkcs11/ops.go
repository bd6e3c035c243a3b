package pkcs11

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

var (
	hashMech = map[crypto.Hash]uint{crypto.SHA1: pkcs11.CKM_SHA_1, crypto.SHA256: pkcs11.CKM_SHA256,
		crypto.SHA384: pkcs11.CKM_SHA384, crypto.SHA512: pkcs11.CKM_SHA512}
	mgfMech = map[crypto.Hash]uint{crypto.SHA1: pkcs11.CKG_MGF1_SHA1, crypto.SHA256: pkcs11.CKG_MGF1_SHA256,
		crypto.SHA384: pkcs11.CKG_MGF1_SHA384, crypto.SHA512: pkcs11.CKG_MGF1_SHA512}
)

// check refuses, before any HSM call, an algorithm the token lacks or one
// that does not fit the key.
func (p *Provider) check(spec alg.Spec, a alg.Info) error {
	if err := p.caps.CheckAlgorithm(a.Name); err != nil {
		return err
	}
	return alg.Compatible(spec, a)
}

// signMechanism returns the mechanism and the bytes the token signs.
func signMechanism(a alg.Info, input []byte) (*pkcs11.Mechanism, []byte, error) {
	switch {
	case a.KeyType == alg.RSA && a.PSS:
		return pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS,
			pkcs11.NewPSSParams(hashMech[a.Hash], mgfMech[a.Hash], uint(a.Hash.Size()))), input, nil
	case a.KeyType == alg.RSA && a.Kind == alg.KindSign:
		// CKM_RSA_PKCS signs what it is given: build the DigestInfo.
		di, err := alg.DigestInfo(a.Hash, input)
		if err != nil {
			return nil, nil, err
		}
		return pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil), di, nil
	case a.KeyType == alg.EC:
		if len(input) != a.Hash.Size() {
			return nil, nil, kgerr.Invalid("digest does not match the algorithm's hash")
		}
		return pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil), input, nil
	case a.Name == alg.EdDSA:
		return pkcs11.NewMechanism(ckmEdDSA, nil), input, nil
	}
	return nil, nil, kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("algorithm %s cannot sign", a.Name))
}

// Sign implements provider.Provider. CKM_ECDSA returns raw r‖s, as the
// contract wants.
func (p *Provider) Sign(ctx context.Context, req provider.SignRequest) ([]byte, error) {
	if err := p.check(req.Spec, req.Algorithm); err != nil {
		return nil, err
	}
	m, in, err := signMechanism(req.Algorithm, req.Input)
	if err != nil {
		return nil, err
	}
	var sig []byte
	err = p.withKey(ctx, req.Ref, pkcs11.CKO_PRIVATE_KEY, true, opOther, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		if err := p.mod.ctx.SignInit(sh, []*pkcs11.Mechanism{m}, h); err != nil {
			return err
		}
		var err error
		sig, err = p.mod.ctx.Sign(sh, in)
		return err
	})
	return sig, err
}

func (p *Provider) decryptOAEP(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, a alg.Info, ct []byte) ([]byte, error) {
	params := pkcs11.NewOAEPParams(hashMech[a.Hash], mgfMech[a.Hash], pkcs11.CKZ_DATA_SPECIFIED, nil)
	if err := p.mod.ctx.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, params)}, h); err != nil {
		return nil, err
	}
	return p.mod.ctx.Decrypt(sh, ct)
}

const gcmTagBits = 128

// Encrypt implements provider.Provider: AES-GCM with a random 96-bit IV.
// Some modules (CloudHSM) ignore the IV they are given and write their own
// into the parameters: the IV is read back after the call.
func (p *Provider) Encrypt(ctx context.Context, req provider.EncryptRequest) (provider.EncryptResult, error) {
	a := req.Algorithm
	if a.KeyType != alg.AES || a.Kind != alg.KindEncrypt {
		return provider.EncryptResult{}, kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("algorithm %s does not encrypt here", a.Name))
	}
	if err := p.check(req.Spec, a); err != nil {
		return provider.EncryptResult{}, err
	}
	if err := p.checkGCMSize(len(req.Plaintext)); err != nil {
		return provider.EncryptResult{}, err
	}
	var out provider.EncryptResult
	err := p.withKey(ctx, req.Ref, pkcs11.CKO_SECRET_KEY, true, opOther, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		iv := make([]byte, 12)
		if _, err := rand.Read(iv); err != nil {
			return err
		}
		params := pkcs11.NewGCMParams(iv, req.AAD, gcmTagBits)
		defer params.Free()
		if err := p.mod.ctx.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
			return err
		}
		ct, err := p.mod.ctx.Encrypt(sh, req.Plaintext)
		if err != nil {
			return err
		}
		out = provider.EncryptResult{Nonce: gcmNonce(iv, params.IV()), Ciphertext: ct}
		return nil
	})
	return out, err
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

// checkGCMSize refuses AES-GCM input the module cannot take in one call.
func (p *Provider) checkGCMSize(n int) error {
	if p.cfg.maxGCMBytes > 0 && n > p.cfg.maxGCMBytes {
		return kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("this HSM takes at most %d bytes per AES-GCM call", p.cfg.maxGCMBytes))
	}
	return nil
}

// Decrypt implements provider.Provider: RSA-OAEP with the private key, or
// AES-GCM with the secret key.
func (p *Provider) Decrypt(ctx context.Context, req provider.DecryptRequest) ([]byte, error) {
	a := req.Algorithm
	if err := p.check(req.Spec, a); err != nil {
		return nil, err
	}
	var pt []byte
	switch {
	case a.KeyType == alg.RSA && a.Kind == alg.KindEncrypt:
		err := p.withKey(ctx, req.Ref, pkcs11.CKO_PRIVATE_KEY, true, opDecrypt, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
			var err error
			pt, err = p.decryptOAEP(sh, h, a, req.Ciphertext)
			return err
		})
		return pt, err
	case a.KeyType == alg.AES && a.Kind == alg.KindEncrypt:
		if len(req.Nonce) != 12 {
			return nil, kgerr.ErrDecryptionFailed
		}
		if err := p.checkGCMSize(len(req.Ciphertext)); err != nil {
			return nil, err
		}
		err := p.withKey(ctx, req.Ref, pkcs11.CKO_SECRET_KEY, true, opDecrypt, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
			params := pkcs11.NewGCMParams(req.Nonce, req.AAD, gcmTagBits)
			defer params.Free()
			if err := p.mod.ctx.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
				return err
			}
			var err error
			pt, err = p.mod.ctx.Decrypt(sh, req.Ciphertext)
			return err
		})
		return pt, err
	}
	return nil, kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("algorithm %s does not decrypt here", a.Name))
}

var kwpInfo, _ = alg.Lookup(string(alg.AESKWP))

var kwpMech = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}

// wrapBytes wraps key material with a KEK: the material becomes a session
// generic-secret object for the length of the call (C_WrapKey wraps
// objects, not bytes).
func (p *Provider) wrapBytes(sh pkcs11.SessionHandle, kek pkcs11.ObjectHandle, material []byte) ([]byte, error) {
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
	return c.WrapKey(sh, kwpMech, kek, obj)
}

// errKWPLength refuses what SoftHSM2's broken AES-KWP cannot do exactly.
var errKWPLength = kgerr.New(kgerr.KindUnsupportedAlgorithm,
	"this token's AES-KWP (CKM_AES_KEY_WRAP_PAD) is exact only for key material whose length is a multiple of 8 bytes")

// WrapKey implements provider.Provider.
func (p *Provider) WrapKey(ctx context.Context, req provider.WrapRequest) ([]byte, error) {
	if err := p.check(req.Spec, kwpInfo); err != nil {
		return nil, err
	}
	if p.caps.WrapMultipleOf8 && len(req.KeyMaterial)%8 != 0 {
		return nil, errKWPLength
	}
	var out []byte
	err := p.withKey(ctx, req.Ref, pkcs11.CKO_SECRET_KEY, true, opOther, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		var err error
		out, err = p.wrapBytes(sh, h, req.KeyMaterial)
		return err
	})
	return out, err
}

// UnwrapKey implements provider.Provider: the material is unwrapped into a
// session generic-secret object, read, and destroyed.
func (p *Provider) UnwrapKey(ctx context.Context, req provider.UnwrapRequest) ([]byte, error) {
	if err := p.check(req.Spec, kwpInfo); err != nil {
		return nil, err
	}
	var out []byte
	err := p.withKey(ctx, req.Ref, pkcs11.CKO_SECRET_KEY, true, opUnwrap, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		c := p.mod.ctx
		obj, err := c.UnwrapKey(sh, kwpMech, h, req.Wrapped, []*pkcs11.Attribute{
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
			again, err := p.wrapBytes(sh, h, out)
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
	return out, err
}
