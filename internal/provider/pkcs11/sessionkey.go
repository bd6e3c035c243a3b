package pkcs11

import (
	"crypto/ecdsa"
	"crypto/rand"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
)

// sessionP256 makes a P-256 key pair as session objects (they vanish with
// the session that made them) and reads its public key: the temporary key
// of the health checker's canary.
func sessionP256(c cryptoki, sh pkcs11.SessionHandle, label string) (pub, priv pkcs11.ObjectHandle, key *ecdsa.PublicKey, err error) {
	return ecKeyPair(c, sh, "P-256", label, nil)
}

// ecKeyPair makes a signing key pair on curve and reads its public key:
// session objects when id is nil, token objects with CKA_ID id otherwise.
func ecKeyPair(c cryptoki, sh pkcs11.SessionHandle, curve, label string, id []byte) (pub, priv pkcs11.ObjectHandle, key *ecdsa.PublicKey, err error) {
	token := id != nil
	pubT := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, token), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, curveOIDs[curve]), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}
	privT := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, token), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}
	if token {
		pubT = append(pubT, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
		privT = append(privT, pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true))
	}
	pub, priv, err = c.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pubT, privT)
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

// scratchEC makes a temporary signing key pair on curve: session objects,
// or, on a token that refuses them (tpm2-pkcs11 makes token objects only),
// token objects under label with a random CKA_ID (token is then true).
// destroy removes the pair on the session given; the caller calls it before
// sh closes, or, for token objects, on another session later.
func scratchEC(c cryptoki, sh pkcs11.SessionHandle, curve, label string) (priv pkcs11.ObjectHandle, key *ecdsa.PublicKey, token bool,
	destroy func(pkcs11.SessionHandle), err error) {
	pub, priv, key, err := ecKeyPair(c, sh, curve, label, nil)
	if err != nil && refusedAttribute(err) {
		id := make([]byte, 16)
		rand.Read(id)
		token = true
		pub, priv, key, err = ecKeyPair(c, sh, curve, label, id)
	}
	if err != nil {
		return 0, nil, false, nil, err
	}
	return priv, key, token, func(on pkcs11.SessionHandle) { destroyObjects(c, on, pub, priv) }, nil
}

// destroyObjects destroys objects on sh. A token object that sh cannot
// destroy is tried once more on a session of its own.
func destroyObjects(c cryptoki, sh pkcs11.SessionHandle, hs ...pkcs11.ObjectHandle) {
	var left []pkcs11.ObjectHandle
	for _, h := range hs {
		if err := c.DestroyObject(sh, h); err != nil {
			left = append(left, h)
		}
	}
	if len(left) == 0 {
		return
	}
	info, err := c.GetSessionInfo(sh)
	if err != nil {
		return
	}
	other, err := c.OpenSession(info.SlotID, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return
	}
	defer c.CloseSession(other)
	for _, h := range left {
		c.DestroyObject(other, h)
	}
}

// signECDSA signs digest with priv on sh (CKM_ECDSA) and reports whether
// the signature verifies with key in Go; err is the token's failure.
func signECDSA(c cryptoki, sh pkcs11.SessionHandle, priv pkcs11.ObjectHandle, key *ecdsa.PublicKey, digest []byte) (bool, error) {
	raw, _, err := c.Crypt(sh, useSign, callMech{Code: pkcs11.CKM_ECDSA}, priv, digest)
	if err != nil {
		return false, err
	}
	der, err := alg.ECDSARawToDER(raw)
	return err == nil && ecdsa.VerifyASN1(key, digest, der), nil
}
