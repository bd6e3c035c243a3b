package api

import (
	"encoding/binary"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// The REST API's AES-GCM ciphertext envelope:
//
//	'K' 'G' 0x01 | key version (uint32 BE) | nonce length (1 byte) | nonce | ciphertext ‖ tag
//
// The first 7 bytes are bound into the GCM additional data before the
// caller's AAD, so the recorded version cannot be changed. The service sees
// it only through service.CiphertextFormat.
const (
	envelopeMagic0, envelopeMagic1, envelopeFormat = 'K', 'G', 1
	envelopePrefixLen                              = 7
	gcmTagLen                                      = 16
)

// envelope is the REST API's service.CiphertextFormat.
type envelope struct{}

var _ service.CiphertextFormat = envelope{}

func envelopePrefix(version int) []byte {
	b := []byte{envelopeMagic0, envelopeMagic1, envelopeFormat, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[3:], uint32(version))
	return b
}

// AAD binds the envelope's prefix (and so the version) before the caller's
// additional data.
func (envelope) AAD(version int, aad []byte) []byte {
	return append(envelopePrefix(version), aad...)
}

// Parse splits an envelope into version, nonce, ciphertext and tag.
func (envelope) Parse(b []byte) (version int, nonce, ct, tag []byte, err error) {
	version, nonce, sealed, err := parseEnvelope(b)
	if err != nil {
		return 0, nil, nil, nil, err
	}
	cut := len(sealed) - gcmTagLen
	return version, nonce, sealed[:cut:cut], sealed[cut:], nil
}

// parseEnvelope splits an envelope into version, nonce and ciphertext ‖ tag.
func parseEnvelope(b []byte) (version int, nonce, sealed []byte, err error) {
	if len(b) < envelopePrefixLen+1 || b[0] != envelopeMagic0 || b[1] != envelopeMagic1 || b[2] != envelopeFormat {
		return 0, nil, nil, kgerr.New(kgerr.KindDecryptionFailed, "ciphertext is not a KeyGrid AES-GCM envelope")
	}
	version = int(binary.BigEndian.Uint32(b[3:7]))
	n := int(b[7])
	rest := b[envelopePrefixLen+1:]
	if version < 1 || n < 12 || n > 16 || len(rest) < n+gcmTagLen {
		return 0, nil, nil, kgerr.New(kgerr.KindDecryptionFailed, "ciphertext envelope is malformed")
	}
	return version, rest[:n], rest[n:], nil
}

// sealEnvelope packs an AES-GCM result.
func sealEnvelope(r *service.EncryptResult) []byte {
	env := make([]byte, 0, envelopePrefixLen+1+len(r.Nonce)+len(r.Ciphertext)+len(r.Tag))
	env = append(append(env, envelopePrefix(r.KeyVersion)...), byte(len(r.Nonce)))
	return append(append(append(env, r.Nonce...), r.Ciphertext...), r.Tag...)
}
