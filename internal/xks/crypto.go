package xks

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// AES-GCM as XKS wants it. The provider encrypts with a 12-byte IV it makes
// (the HSM's own where the HSM insists: CloudHSM) and the additional data
//
//	uint16_be(len aad) ‖ aad ‖ uint8(len cm) ‖ cm
//
// where aad is the request's additionalAuthenticatedData and cm the
// ciphertextMetadata this proxy returns: 'K' 'G' 0x01 ‖ key version
// (uint32, big-endian). So the tag covers the version, and a rotated key
// still decrypts what an older version encrypted; a changed, missing or
// added AAD or metadata fails the tag like a changed IV, tag or ciphertext.

const (
	cmMagic0, cmMagic1, cmFormat = 'K', 'G', 1
	cmLen                        = 7
)

// ciphertextMetadata records the key version of a ciphertext.
func ciphertextMetadata(version int) []byte {
	b := []byte{cmMagic0, cmMagic1, cmFormat, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[3:], uint32(version))
	return b
}

// parseCiphertextMetadata returns the key version ciphertextMetadata
// records. Anything this proxy did not make is an invalid ciphertext.
func parseCiphertextMetadata(b []byte) (int, error) {
	if len(b) != cmLen || b[0] != cmMagic0 || b[1] != cmMagic1 || b[2] != cmFormat {
		return 0, kgerr.New(kgerr.KindDecryptionFailed, "ciphertextMetadata is not this proxy's")
	}
	v := binary.BigEndian.Uint32(b[3:])
	if v == 0 || v > 1<<31-1 {
		return 0, kgerr.New(kgerr.KindDecryptionFailed, "ciphertextMetadata names no key version")
	}
	return int(v), nil
}

// hsmAAD is the additional data the provider authenticates.
func hsmAAD(aad, cm []byte) []byte {
	out := make([]byte, 0, 3+len(aad)+len(cm))
	out = binary.BigEndian.AppendUint16(out, uint16(len(aad)))
	out = append(append(out, aad...), byte(len(cm)))
	return append(out, cm...)
}

// format is the service.CiphertextFormat of XKS encryption: the service
// calls AAD with the version it encrypts under. XKS passes a ciphertext's
// parts apart, so there is nothing to parse.
type format struct{}

var _ service.CiphertextFormat = format{}

func (format) AAD(version int, aad []byte) []byte { return hsmAAD(aad, ciphertextMetadata(version)) }

func (format) Parse([]byte) (int, []byte, []byte, []byte, error) {
	return 0, nil, nil, nil, kgerr.New(kgerr.KindDecryptionFailed, "XKS ciphertexts come in parts")
}

// CDIV is the ciphertextDataIntegrityValue of the specification's Appendix
// C: SHA-256 over aad ‖ ciphertextMetadata ‖ IV ‖ ciphertext ‖ tag (no
// lengths; absent fields are empty).
func CDIV(aad, cm, iv, ciphertext, tag []byte) []byte {
	h := sha256.New()
	for _, b := range [][]byte{aad, cm, iv, ciphertext, tag} {
		h.Write(b)
	}
	return h.Sum(nil)
}

// gcmAlgorithm is the AES-GCM algorithm of a key's size.
func gcmAlgorithm(k *service.Key) string {
	if k.KeySize == 128 {
		return "A128GCM"
	}
	return "A256GCM"
}

func (h *Handler) encrypt(ctx context.Context, c *call, k *service.Key) (any, error) {
	req := c.req
	if req.cdiv && !slices.Contains(k.Usage, "decrypt") {
		// The integrity value promises a decrypt that this key refuses.
		return nil, kgerr.New(kgerr.KindUsageNotPermitted, fmt.Sprintf(
			"key %s may not decrypt, so no ciphertextDataIntegrityValue can be vouched for", k.Name))
	}
	c.audited = true // the service audits from here
	r, err := h.svc.Encrypt(ctx, service.EncryptRequest{Key: k.ID, Algorithm: gcmAlgorithm(k), Plaintext: req.plaintext,
		AAD: req.aad, Format: format{}})
	if err != nil {
		return nil, err
	}
	if len(r.Ciphertext) != len(req.plaintext) || len(r.Tag) != 16 || len(r.Nonce) != 12 {
		return nil, kgerr.New(kgerr.KindInternal, "the provider's AES-GCM output has unexpected lengths")
	}
	resp := &encryptResponse{Ciphertext: r.Ciphertext, CiphertextMetadata: ciphertextMetadata(r.KeyVersion),
		InitializationVector: r.Nonce, AuthenticationTag: r.Tag}
	if !req.cdiv {
		return resp, nil
	}
	// Appendix C: the value first, over what is returned, then a decrypt
	// of exactly that.
	resp.CiphertextDataIntegrityValue = CDIV(req.aad, resp.CiphertextMetadata, resp.InitializationVector, resp.Ciphertext, resp.AuthenticationTag)
	d, err := h.svc.Decrypt(ctx, service.DecryptRequest{Key: k.ID, Algorithm: gcmAlgorithm(k), KeyVersion: r.KeyVersion,
		Ciphertext: resp.Ciphertext, Nonce: resp.InitializationVector, Tag: resp.AuthenticationTag,
		AAD: hsmAAD(req.aad, resp.CiphertextMetadata)})
	switch {
	case kgerr.KindOf(err) == kgerr.KindDecryptionFailed:
		return nil, kgerr.Wrap(kgerr.KindInternal, err, "the ciphertext just made does not decrypt; nothing was returned")
	case err != nil:
		return nil, err
	case !bytes.Equal(d.Plaintext, req.plaintext):
		return nil, kgerr.New(kgerr.KindInternal, "the ciphertext just made decrypts to other bytes; nothing was returned")
	}
	return resp, nil
}

func (h *Handler) decrypt(ctx context.Context, c *call, k *service.Key) (any, error) {
	req := c.req
	if !req.hasCM {
		return nil, kgerr.New(kgerr.KindDecryptionFailed, "ciphertextMetadata is missing (this proxy returns it with every ciphertext)")
	}
	v, err := parseCiphertextMetadata(req.cm)
	if err != nil {
		return nil, err
	}
	c.audited = true // the service audits from here
	d, err := h.svc.Decrypt(ctx, service.DecryptRequest{Key: k.ID, Algorithm: gcmAlgorithm(k), KeyVersion: v,
		Ciphertext: req.ciphertext, Nonce: req.iv, Tag: req.tag, AAD: hsmAAD(req.aad, req.cm)})
	if err != nil {
		return nil, err
	}
	if len(d.Plaintext) != len(req.ciphertext) {
		return nil, kgerr.New(kgerr.KindInternal, "the provider's plaintext is not as long as the ciphertext")
	}
	return &decryptResponse{Plaintext: d.Plaintext}, nil
}

// metadataOf is a key's GetKeyMetadata answer.
func metadataOf(k *service.Key, now time.Time) *metadataResponse {
	m := &metadataResponse{}
	m.KeySpec, m.KeyUsage, m.KeyStatus = KeyMetadata(k.KeySize, k.Usage, k.State, k.ExpiresAt, now)
	return m
}

// KeyMetadata is what GetKeyMetadata says of a gateway AES key: its spec
// (AES_256, AES_128), its usages in XKS's words, and its status: ENABLED
// while the key is active and not expired (an expired key still decrypts
// what it encrypted, but encrypts no more), DISABLED otherwise.
func KeyMetadata(size int, usage []string, state string, expiresAt *time.Time, now time.Time) (keySpec string, keyUsage []string, keyStatus string) {
	keyUsage = []string{}
	for _, u := range []struct{ gateway, xks string }{{"encrypt", "ENCRYPT"}, {"decrypt", "DECRYPT"}, {"wrap", "WRAP"}, {"unwrap", "UNWRAP"}} {
		if slices.Contains(usage, u.gateway) {
			keyUsage = append(keyUsage, u.xks)
		}
	}
	keyStatus = "DISABLED"
	if state == "active" && (expiresAt == nil || now.Before(*expiresAt)) {
		keyStatus = "ENABLED"
	}
	return fmt.Sprintf("AES_%d", size), keyUsage, keyStatus
}
