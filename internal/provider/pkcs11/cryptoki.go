package pkcs11

import (
	"fmt"

	"github.com/miekg/pkcs11"
)

// cryptoki is the narrow set of module-level calls the provider makes: the
// "module" it talks to. Two implementations: local, the library loaded in
// this process through miekg/pkcs11 (isolation: in-process), and
// hostClient, a child process of the gateway that loads the library and
// runs local for it (isolation: process, host.go). Every method is one
// round trip to a host; the whole operations (Crypt, FindAll) keep the hot
// path of an operation at one.
//
// Mechanisms given to the generic calls carry no parameters or raw
// parameter bytes only; parameters that hold pointers (AES-GCM, OAEP) go
// through Crypt as a callMech.
type cryptoki interface {
	GetInfo() (pkcs11.Info, error)
	GetSlotList(tokenPresent bool) ([]uint, error)
	GetTokenInfo(slot uint) (pkcs11.TokenInfo, error)
	GetMechanismList(slot uint) ([]*pkcs11.Mechanism, error)
	GetMechanismInfo(slot uint, m []*pkcs11.Mechanism) (pkcs11.MechanismInfo, error)
	OpenSession(slot, flags uint) (pkcs11.SessionHandle, error)
	CloseSession(sh pkcs11.SessionHandle) error
	GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error)
	Login(sh pkcs11.SessionHandle, userType uint, pin string) error
	Logout(sh pkcs11.SessionHandle) error
	GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, pub, priv []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error)
	CreateObject(sh pkcs11.SessionHandle, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	DestroyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error
	GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, t []*pkcs11.Attribute) ([]*pkcs11.Attribute, error)
	GenerateRandom(sh pkcs11.SessionHandle, n int) ([]byte, error)
	WrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, kek, key pkcs11.ObjectHandle) ([]byte, error)
	UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, kek pkcs11.ObjectHandle, wrapped []byte, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	// UnwrapKeyWith is UnwrapKey with a mechanism whose parameters hold
	// pointers (RSA-OAEP), as Crypt takes them (hostmaterial.go).
	UnwrapKeyWith(sh pkcs11.SessionHandle, m callMech, kek pkcs11.ObjectHandle, wrapped []byte, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	Finalize() error
	Initialize() error

	// Crypt is one single-part operation: C_SignInit + C_Sign,
	// C_EncryptInit + C_Encrypt or C_DecryptInit + C_Decrypt. After an
	// AES-GCM encryption it returns the IV found in the parameters.
	Crypt(sh pkcs11.SessionHandle, u use, m callMech, key pkcs11.ObjectHandle, in []byte) (out, iv []byte, err error)
	// FindAll is C_FindObjectsInit, C_FindObjects until none is left, and
	// C_FindObjectsFinal.
	FindAll(sh pkcs11.SessionHandle, t []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error)
}

// Kinds of mechanism parameters a callMech carries.
const (
	paramsNone uint8 = iota
	paramsRaw        // Raw: a C structure without pointers (CK_RSA_PKCS_PSS_PARAMS)
	paramsGCM        // IV, AAD, TagBits
	paramsOAEP       // Hash, MGF, Source, SourceData
)

// callMech is the mechanism of one operation, as data: it crosses the
// socket to a host, and each side builds the library's structure from it.
type callMech struct {
	Code       uint
	Kind       uint8
	Raw        []byte
	IV, AAD    []byte
	TagBits    uint
	Hash, MGF  uint
	Source     uint
	SourceData []byte
}

// pkcs11Mech builds the miekg/pkcs11 mechanism of m; free releases what
// the library's structure holds in C memory, gcm is set for AES-GCM (to
// read the IV back).
func (m callMech) pkcs11Mech() (mechs []*pkcs11.Mechanism, gcm *pkcs11.GCMParams, err error) {
	var params any
	switch m.Kind {
	case paramsNone:
	case paramsRaw:
		params = m.Raw
	case paramsGCM:
		gcm = pkcs11.NewGCMParams(m.IV, m.AAD, int(m.TagBits))
		params = gcm
	case paramsOAEP:
		params = pkcs11.NewOAEPParams(m.Hash, m.MGF, m.Source, m.SourceData)
	default:
		return nil, nil, fmt.Errorf("mechanism %#x: unknown parameter kind %d", m.Code, m.Kind)
	}
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(m.Code, params)}, gcm, nil
}

// local is the library loaded in this process.
type local struct {
	*pkcs11.Ctx
}

// Crypt implements cryptoki.
func (l local) Crypt(sh pkcs11.SessionHandle, u use, m callMech, key pkcs11.ObjectHandle, in []byte) (out, iv []byte, err error) {
	mechs, gcm, err := m.pkcs11Mech()
	if err != nil {
		return nil, nil, err
	}
	defer gcm.Free()
	switch u {
	case useSign:
		if err := l.SignInit(sh, mechs, key); err != nil {
			return nil, nil, err
		}
		out, err = l.Sign(sh, in)
	case useEncrypt:
		if err := l.EncryptInit(sh, mechs, key); err != nil {
			return nil, nil, err
		}
		if out, err = l.Encrypt(sh, in); err == nil && gcm != nil {
			iv = gcm.IV()
		}
	case useDecrypt:
		if err := l.DecryptInit(sh, mechs, key); err != nil {
			return nil, nil, err
		}
		out, err = l.Decrypt(sh, in)
	default:
		return nil, nil, fmt.Errorf("crypt: use %s is not a single-part operation", u)
	}
	return out, iv, err
}

// FindAll implements cryptoki.
func (l local) FindAll(sh pkcs11.SessionHandle, t []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := l.FindObjectsInit(sh, t); err != nil {
		return nil, err
	}
	var out []pkcs11.ObjectHandle
	for {
		hs, _, err := l.FindObjects(sh, 64)
		if err != nil {
			return nil, err // the session is closed by onSession: the search dies with it
		}
		if len(hs) == 0 {
			break
		}
		out = append(out, hs...)
	}
	return out, l.FindObjectsFinal(sh)
}

// plainMech is the library mechanism of m for the generic calls of
// cryptoki: parameters without pointers only.
func plainMech(m callMech) ([]*pkcs11.Mechanism, error) {
	switch m.Kind {
	case paramsNone:
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(m.Code, nil)}, nil
	case paramsRaw:
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(m.Code, m.Raw)}, nil
	}
	return nil, fmt.Errorf("mechanism %#x: its parameters need a whole operation (Crypt)", m.Code)
}

// Initialize implements cryptoki: C_Initialize with the library's defaults
// (it may create threads with the OS primitives).
func (l local) Initialize() error { return l.Ctx.Initialize() }
