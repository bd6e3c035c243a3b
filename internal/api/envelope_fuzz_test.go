package api

import (
	"bytes"
	"errors"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// FuzzParseEnvelope feeds arbitrary ciphertext to the AES-GCM envelope
// parser: it never panics, fails only with DECRYPTION_FAILED, and what it
// accepts is exactly prefix ‖ nonce length ‖ nonce ‖ ciphertext with a
// version of at least 1, a 12- to 16-byte nonce and at least a tag.
func FuzzParseEnvelope(f *testing.F) {
	good := append(append(envelopePrefix(1), 12), make([]byte, 12+16+5)...)
	f.Add(good)
	f.Add(append(append(envelopePrefix(7), 16), make([]byte, 32)...))
	f.Add(envelopePrefix(1))
	f.Add([]byte("KG"))
	f.Add([]byte{})
	f.Add(append(append(envelopePrefix(0), 12), make([]byte, 28)...))
	f.Add(append(append(envelopePrefix(1<<31), 255), make([]byte, 40)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, nonce, ct, err := parseEnvelope(b)
		if err != nil {
			if !errors.Is(err, kgerr.ErrDecryptionFailed) || nonce != nil || ct != nil {
				t.Fatalf("parseEnvelope(%x): %v (nonce %x, ct %x)", b, err, nonce, ct)
			}
			return
		}
		if v < 1 || len(nonce) < 12 || len(nonce) > 16 || len(ct) < 16 {
			t.Fatalf("parseEnvelope(%x) accepted version %d, nonce %d bytes, ciphertext %d bytes", b, v, len(nonce), len(ct))
		}
		again := append(append(append(envelopePrefix(v), byte(len(nonce))), nonce...), ct...)
		if !bytes.Equal(again, b) {
			t.Fatalf("parseEnvelope(%x) does not rebuild: %x", b, again)
		}
		// The service's view of it: ciphertext and tag apart, sealed again
		// to the same bytes.
		pv, pn, pct, tag, err := envelope{}.Parse(b)
		if err != nil || pv != v || len(tag) != gcmTagLen {
			t.Fatalf("Parse(%x): %v", b, err)
		}
		if sealed := sealEnvelope(&service.EncryptResult{KeyVersion: pv, Nonce: pn, Ciphertext: pct, Tag: tag}); !bytes.Equal(sealed, b) {
			t.Fatalf("sealEnvelope(Parse(%x)) = %x", b, sealed)
		}
	})
}
