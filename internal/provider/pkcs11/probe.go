package pkcs11

import (
	"context"
	"crypto/rand"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// probeLabel is the CKA_LABEL of the token objects a probe makes on a token
// that refuses session objects; they are destroyed when the probe ends.
const probeLabel = "keygrid-probe"

// probeKeyPair makes the RSA key pair a capability probe decrypts with: a
// session key pair, or, when the token refuses session objects
// (tpm2-pkcs11 takes CKA_TOKEN=true only), a token key pair of its own,
// labelled probeLabel. destroy removes whichever was made.
func (p *Provider) probeKeyPair(sh pkcs11.SessionHandle, bits uint) (pub, priv pkcs11.ObjectHandle, destroy func(), err error) {
	c := p.mod.ctx
	gen := func(token bool, extra ...*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
		pubT := append([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, token), pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, bits), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1})}, extra...)
		privT := append([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, token), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true)}, extra...)
		return c.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)}, pubT, privT)
	}
	pub, priv, err = gen(false)
	if err != nil {
		if !refusedAttribute(err) {
			return 0, 0, nil, err
		}
		id := make([]byte, 16)
		rand.Read(id)
		unlock := p.lockChanges(true)
		pub, priv, err = gen(true, pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_LABEL, probeLabel))
		unlock()
		if err != nil {
			return 0, 0, nil, err
		}
	}
	return pub, priv, func() {
		defer p.lockChanges(true)()
		destroyObjects(c, sh, pub, priv)
	}, nil
}

// refusedAttribute reports whether a call failed on an attribute of its
// template: the codes a module gives for an attribute or value it does not
// take (tpm2-pkcs11 answers CKA_TOKEN=false with CKR_ATTRIBUTE_VALUE_INVALID).
func refusedAttribute(err error) bool {
	code, _ := ckrCode(err)
	switch code {
	case pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, pkcs11.CKR_TEMPLATE_INCONSISTENT,
		pkcs11.CKR_TEMPLATE_INCOMPLETE:
		return true
	}
	return false
}

// refusedTemplate reports whether a key generation may have failed on its
// template: refusedAttribute, or CKR_GENERAL_ERROR, which tpm2-pkcs11
// answers to a usage attribute the TPM cannot honour as given.
func refusedTemplate(err error) bool {
	code, _ := ckrCode(err)
	return refusedAttribute(err) || code == pkcs11.CKR_GENERAL_ERROR
}

// usableKeyTypes drops the key types the token makes but no listed
// algorithm uses (tpm2-pkcs11 lists CKM_AES_KEY_GEN, has neither AES-GCM
// nor AES key wrap, and does not implement C_GenerateKey): a key the
// provider could do nothing with is not offered.
func usableKeyTypes(c provider.Capabilities) []provider.KeyTypeCaps {
	used := map[alg.KeyType]bool{}
	for _, a := range c.Algorithms {
		if i, err := alg.Lookup(string(a)); err == nil {
			used[i.KeyType] = true
		}
	}
	var out []provider.KeyTypeCaps
	for _, kt := range c.KeyTypes {
		if used[kt.Type] {
			out = append(out, kt)
		}
	}
	return out
}

// probeECDSA makes a temporary key on curve, reads its public key, signs
// and verifies the signature in Go: the mechanism list says which key sizes
// CKM_ECDSA takes, not whether every curve works. tpm2-pkcs11 makes P-521
// keys but encodes their CKA_EC_POINT against DER (a one-byte length for
// the 133-byte point); it cannot read that itself, fails their signatures
// with CKR_HOST_MEMORY and, after such a failure, keeps the key busy so
// that it cannot be destroyed until the module is finalized. The public key
// is therefore checked before any signature. It returns "" when all works,
// else why not.
func (p *Provider) probeECDSA(ctx context.Context, curve string, a alg.Algorithm) string {
	info, _ := alg.Lookup(string(a))
	digest := alg.Digest(info, []byte("keygrid ecdsa probe"))
	var valid bool
	var leftover func(pkcs11.SessionHandle)
	stage := ""
	err := p.run(ctx, false, opOther, func(sh pkcs11.SessionHandle) error {
		defer p.lockChanges(true)()
		priv, key, token, destroy, err := scratchEC(p.mod.ctx, sh, curve, probeLabel)
		if _, isCKR := ckrCode(err); err != nil && !isCKR {
			stage = "its public key (CKA_EC_POINT) does not decode"
			return nil // the objects are destroyed; the session is fine
		} else if err != nil {
			stage = "key generation"
			return err
		}
		if valid, err = signECDSA(p.mod.ctx, sh, priv, key, digest); err != nil {
			stage = "signing"
			// The failed call closes sh: tpm2-pkcs11 keeps a failed
			// C_Sign's operation, and the key busy, until its session
			// ends, and refuses to destroy the key meanwhile.
			if token {
				leftover = destroy
			}
			return err
		}
		destroy(sh)
		return nil
	})
	if leftover != nil {
		p.run(ctx, false, opOther, func(sh pkcs11.SessionHandle) error {
			defer p.lockChanges(true)()
			leftover(sh)
			return nil
		})
	}
	switch {
	case err != nil:
		if code, ok := ckrCode(err); ok {
			return stage + ": " + ckrName(code)
		}
		return stage + ": " + err.Error()
	case stage != "":
		return stage
	case !valid:
		return "the signature does not verify"
	}
	return ""
}
