package pkcs11

import (
	"crypto/ecdsa"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
)

// sessionP256 makes a P-256 key pair as session objects (they vanish with
// the session that made them) and reads its public key: the temporary key
// of doctor's sign/verify check and of the health checker's canary.
func sessionP256(c *pkcs11.Ctx, sh pkcs11.SessionHandle, label string) (pub, priv pkcs11.ObjectHandle, key *ecdsa.PublicKey, err error) {
	pub, priv, err = c.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, curveOIDs["P-256"]), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)})
	if err != nil {
		return 0, 0, nil, err
	}
	k, err := publicKeyFromAttrs(pkcs11.CKK_EC, func(t uint) ([]byte, error) {
		a, err := c.GetAttributeValue(sh, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(t, nil)})
		if err != nil {
			return nil, err
		}
		return a[0].Value, nil
	})
	if err != nil {
		c.DestroyObject(sh, priv)
		c.DestroyObject(sh, pub)
		return 0, 0, nil, err
	}
	return pub, priv, k.(*ecdsa.PublicKey), nil
}

// signES256 signs digest with priv on sh (CKM_ECDSA) and reports whether
// the signature verifies with key in Go; err is the token's failure.
func signES256(c *pkcs11.Ctx, sh pkcs11.SessionHandle, priv pkcs11.ObjectHandle, key *ecdsa.PublicKey, digest []byte) (bool, error) {
	if err := c.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, priv); err != nil {
		return false, err
	}
	raw, err := c.Sign(sh, digest)
	if err != nil {
		return false, err
	}
	der, err := alg.ECDSARawToDER(raw)
	return err == nil && ecdsa.VerifyASN1(key, digest, der), nil
}
