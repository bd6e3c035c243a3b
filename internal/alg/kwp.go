package alg

import (
	"crypto/aes"
	"crypto/subtle"
	"encoding/binary"
	"errors"
)

// ErrUnwrap is returned when a wrapped key fails its integrity check.
var ErrUnwrap = errors.New("key unwrap: integrity check failed")

var kwpMagic = []byte{0xA6, 0x59, 0x59, 0xA6}

// WrapKWP wraps key material with AES Key Wrap with Padding (RFC 5649).
func WrapKWP(kek, plaintext []byte) ([]byte, error) {
	if len(plaintext) == 0 {
		return nil, errors.New("key wrap: empty input")
	}
	if uint64(len(plaintext)) > 0xffffffff {
		return nil, errors.New("key wrap: input too long")
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	var aiv [8]byte
	copy(aiv[:4], kwpMagic)
	binary.BigEndian.PutUint32(aiv[4:], uint32(len(plaintext)))
	padded := make([]byte, (len(plaintext)+7)/8*8)
	copy(padded, plaintext)
	n := len(padded) / 8
	if n == 1 {
		out := make([]byte, 16)
		copy(out, aiv[:])
		copy(out[8:], padded)
		block.Encrypt(out, out)
		return out, nil
	}
	// RFC 3394 §2.2.1 wrapping process with the alternative IV.
	out := make([]byte, 8+len(padded))
	copy(out[8:], padded)
	a := aiv
	var b [16]byte
	for j := 0; j < 6; j++ {
		for i := 1; i <= n; i++ {
			copy(b[:8], a[:])
			copy(b[8:], out[8*i:8*i+8])
			block.Encrypt(b[:], b[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(b[:8])^t)
			copy(out[8*i:], b[8:])
		}
	}
	copy(out[:8], a[:])
	return out, nil
}

// UnwrapKWP unwraps key material wrapped with RFC 5649. Any integrity
// failure returns ErrUnwrap.
func UnwrapKWP(kek, wrapped []byte) ([]byte, error) {
	if len(wrapped) < 16 || len(wrapped)%8 != 0 {
		return nil, ErrUnwrap
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	n := len(wrapped)/8 - 1
	var a [8]byte
	p := make([]byte, 8*n)
	if n == 1 {
		var b [16]byte
		block.Decrypt(b[:], wrapped)
		copy(a[:], b[:8])
		copy(p, b[8:])
	} else {
		copy(a[:], wrapped[:8])
		copy(p, wrapped[8:])
		var b [16]byte
		for j := 5; j >= 0; j-- {
			for i := n; i >= 1; i-- {
				t := uint64(n*j + i)
				binary.BigEndian.PutUint64(b[:8], binary.BigEndian.Uint64(a[:])^t)
				copy(b[8:], p[8*(i-1):8*i])
				block.Decrypt(b[:], b[:])
				copy(a[:], b[:8])
				copy(p[8*(i-1):], b[8:])
			}
		}
	}
	if subtle.ConstantTimeCompare(a[:4], kwpMagic) != 1 {
		return nil, ErrUnwrap
	}
	mli := int(binary.BigEndian.Uint32(a[4:]))
	if mli <= 8*(n-1) || mli > 8*n {
		return nil, ErrUnwrap
	}
	var pad byte
	for _, c := range p[mli:] {
		pad |= c
	}
	if pad != 0 {
		return nil, ErrUnwrap
	}
	return p[:mli], nil
}
