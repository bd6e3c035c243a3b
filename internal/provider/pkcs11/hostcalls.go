package pkcs11

import (
	"time"

	"github.com/miekg/pkcs11"
)

// The methods of cryptoki on a host: each encodes its arguments, makes one
// round trip and decodes the results (serveCall in hostwire.go is the other
// half). c.do clears every request frame after its call: a PIN, a
// template with key material or plaintext does not outlive it.

func (c *hostClient) GetInfo() (i pkcs11.Info, err error) {
	err = c.do(newReq(hopGetInfo), func(r *rbuf) {
		i = pkcs11.Info{CryptokiVersion: r.version(), ManufacturerID: r.str(), Flags: r.uint(), LibraryDescription: r.str(), LibraryVersion: r.version()}
	})
	return i, err
}

func (c *hostClient) GetSlotList(present bool) (s []uint, err error) {
	w := newReq(hopGetSlotList)
	w.bool(present)
	err = c.do(w, func(r *rbuf) { s = r.uints() })
	return s, err
}

func (c *hostClient) GetTokenInfo(slot uint) (t pkcs11.TokenInfo, err error) {
	w := newReq(hopGetTokenInfo)
	w.uint(slot)
	err = c.do(w, func(r *rbuf) { t = r.tokenInfo() })
	return t, err
}

func (c *hostClient) GetMechanismList(slot uint) (ms []*pkcs11.Mechanism, err error) {
	w := newReq(hopGetMechanismList)
	w.uint(slot)
	err = c.do(w, func(r *rbuf) { ms = r.mechs() })
	return ms, err
}

func (c *hostClient) GetMechanismInfo(slot uint, ms []*pkcs11.Mechanism) (i pkcs11.MechanismInfo, err error) {
	w := newReq(hopGetMechanismInfo)
	w.uint(slot)
	w.mechs(ms)
	err = c.do(w, func(r *rbuf) { i = pkcs11.MechanismInfo{MinKeySize: r.uint(), MaxKeySize: r.uint(), Flags: r.uint()} })
	return i, err
}

func (c *hostClient) OpenSession(slot, flags uint) (h pkcs11.SessionHandle, err error) {
	w := newReq(hopOpenSession)
	w.uint(slot)
	w.uint(flags)
	err = c.do(w, func(r *rbuf) { h = pkcs11.SessionHandle(r.uint()) })
	return h, err
}

// onSession starts a request frame of op on session sh, with the
// deadline of the call that has sh (if any).
func (c *hostClient) onSession(op byte, sh pkcs11.SessionHandle) *wbuf {
	w := newReq(op)
	w.uint(uint(sh))
	if d, ok := c.deadlines.Load(sh); ok {
		w.deadline = d.(time.Time)
	}
	return w
}

func (c *hostClient) CloseSession(sh pkcs11.SessionHandle) error {
	return c.do(c.onSession(hopCloseSession, sh), nil)
}

func (c *hostClient) GetSessionInfo(sh pkcs11.SessionHandle) (i pkcs11.SessionInfo, err error) {
	err = c.do(c.onSession(hopGetSessionInfo, sh), func(r *rbuf) {
		if v := r.uints(); len(v) == 4 {
			i = pkcs11.SessionInfo{SlotID: v[0], State: v[1], Flags: v[2], DeviceError: v[3]}
		} else {
			r.err = errBadFrame
		}
	})
	return i, err
}

// Login sends the PIN over the socket: it is in no argument and no
// environment variable of the host.
func (c *hostClient) Login(sh pkcs11.SessionHandle, user uint, pin string) error {
	w := c.onSession(hopLogin, sh)
	w.uint(user)
	w.str(pin)
	return c.do(w, nil) // do clears the frame
}

func (c *hostClient) Logout(sh pkcs11.SessionHandle) error {
	return c.do(c.onSession(hopLogout, sh), nil)
}

func (c *hostClient) GenerateKey(sh pkcs11.SessionHandle, ms []*pkcs11.Mechanism, t []*pkcs11.Attribute) (h pkcs11.ObjectHandle, err error) {
	w := c.onSession(hopGenerateKey, sh)
	w.mechs(ms)
	w.attrs(t)
	err = c.do(w, func(r *rbuf) { h = pkcs11.ObjectHandle(r.uint()) })
	return h, err
}

func (c *hostClient) GenerateKeyPair(sh pkcs11.SessionHandle, ms []*pkcs11.Mechanism, pub, priv []*pkcs11.Attribute) (a, b pkcs11.ObjectHandle, err error) {
	w := c.onSession(hopGenerateKeyPair, sh)
	w.mechs(ms)
	w.attrs(pub)
	w.attrs(priv)
	err = c.do(w, func(r *rbuf) { a, b = pkcs11.ObjectHandle(r.uint()), pkcs11.ObjectHandle(r.uint()) })
	return a, b, err
}

func (c *hostClient) CreateObject(sh pkcs11.SessionHandle, t []*pkcs11.Attribute) (h pkcs11.ObjectHandle, err error) {
	w := c.onSession(hopCreateObject, sh)
	w.attrs(t)
	err = c.do(w, func(r *rbuf) { h = pkcs11.ObjectHandle(r.uint()) })
	return h, err
}

func (c *hostClient) DestroyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error {
	w := c.onSession(hopDestroyObject, sh)
	w.uint(uint(o))
	return c.do(w, nil)
}

func (c *hostClient) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, t []*pkcs11.Attribute) (as []*pkcs11.Attribute, err error) {
	w := c.onSession(hopGetAttributeValue, sh)
	w.uint(uint(o))
	w.attrs(t)
	err = c.do(w, func(r *rbuf) { as = r.attrs() })
	return as, err
}

func (c *hostClient) GenerateRandom(sh pkcs11.SessionHandle, n int) (b []byte, err error) {
	w := c.onSession(hopGenerateRandom, sh)
	w.uint(uint(n))
	err = c.do(w, func(r *rbuf) { b = r.bytes() })
	return b, err
}

func (c *hostClient) WrapKey(sh pkcs11.SessionHandle, ms []*pkcs11.Mechanism, kek, key pkcs11.ObjectHandle) (b []byte, err error) {
	w := c.onSession(hopWrapKey, sh)
	w.mechs(ms)
	w.uint(uint(kek))
	w.uint(uint(key))
	err = c.do(w, func(r *rbuf) { b = r.bytes() })
	return b, err
}

func (c *hostClient) UnwrapKey(sh pkcs11.SessionHandle, ms []*pkcs11.Mechanism, kek pkcs11.ObjectHandle, wrapped []byte, t []*pkcs11.Attribute) (h pkcs11.ObjectHandle, err error) {
	w := c.onSession(hopUnwrapKey, sh)
	w.mechs(ms)
	w.uint(uint(kek))
	w.bytes(wrapped)
	w.attrs(t)
	err = c.do(w, func(r *rbuf) { h = pkcs11.ObjectHandle(r.uint()) })
	return h, err
}

func (c *hostClient) Finalize() error   { return c.do(newReq(hopFinalize), nil) }
func (c *hostClient) Initialize() error { return c.do(newReq(hopInitialize), nil) }

func (c *hostClient) Crypt(sh pkcs11.SessionHandle, u use, m callMech, key pkcs11.ObjectHandle, in []byte) (out, iv []byte, err error) {
	w := c.onSession(hopCrypt, sh)
	w.uint(uint(u))
	w.callMech(m)
	w.uint(uint(key))
	w.bytes(in)
	err = c.do(w, func(r *rbuf) { out, iv = r.bytes(), r.bytes() })
	return out, iv, err
}

func (c *hostClient) FindAll(sh pkcs11.SessionHandle, t []*pkcs11.Attribute) (hs []pkcs11.ObjectHandle, err error) {
	w := c.onSession(hopFindAll, sh)
	w.attrs(t)
	err = c.do(w, func(r *rbuf) {
		n := r.count()
		for i := uint(0); i < n && r.err == nil; i++ {
			hs = append(hs, pkcs11.ObjectHandle(r.uint()))
		}
	})
	return hs, err
}
