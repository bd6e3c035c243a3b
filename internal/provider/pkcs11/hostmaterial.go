package pkcs11

import "github.com/miekg/pkcs11"

// The calls of key import (material.go) that carry a mechanism with
// pointer parameters (RSA-OAEP): C_UnwrapKey with a callMech, locally and
// on a host. Their host operations are numbered apart from the core ones
// (hostwire.go), so that either list grows without renumbering the other.

const (
	hopUnwrapKeyWith byte = 0x80 + iota
)

// UnwrapKeyWith implements cryptoki.
func (l local) UnwrapKeyWith(sh pkcs11.SessionHandle, m callMech, kek pkcs11.ObjectHandle, wrapped []byte, t []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	mechs, gcm, err := m.pkcs11Mech()
	if err != nil {
		return 0, err
	}
	defer gcm.Free()
	return l.UnwrapKey(sh, mechs, kek, wrapped, t)
}

// UnwrapKeyWith implements cryptoki.
func (c *hostClient) UnwrapKeyWith(sh pkcs11.SessionHandle, m callMech, kek pkcs11.ObjectHandle, wrapped []byte, t []*pkcs11.Attribute) (h pkcs11.ObjectHandle, err error) {
	w := c.onSession(hopUnwrapKeyWith, sh)
	w.callMech(m)
	w.uint(uint(kek))
	w.bytes(wrapped)
	w.attrs(t)
	err = c.do(w, func(r *rbuf) { h = pkcs11.ObjectHandle(r.uint()) })
	return h, err
}

// serveMaterial is serveCall for the operations of this file.
func serveMaterial(l local, op byte, r *rbuf, w *wbuf) error {
	switch op {
	case hopUnwrapKeyWith:
		s, m, kek, wrapped, t := pkcs11.SessionHandle(r.uint()), r.callMech(), pkcs11.ObjectHandle(r.uint()), r.bytes(), r.attrs()
		if err := r.done(); err != nil {
			return err
		}
		h, err := l.UnwrapKeyWith(s, m, kek, wrapped, t)
		w.uint(uint(h))
		return err
	}
	return errBadFrame
}
