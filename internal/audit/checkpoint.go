package audit

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// OpCheckpoint is the operation of the log line that repeats a signed
// checkpoint.
const OpCheckpoint = "audit_checkpoint"

// Checkpoint is a signed statement that the chain of one replica's log
// reached record Seq with hash Head at Time. Kept outside the log (in the
// metadata store, which every replica and a backup share) and signed with
// a key the log's writer cannot use on its own behalf, it shows what the
// chain alone cannot: lines cut off the end after it, a chain re-hashed
// from an edit onward, a rotated file deleted or emptied, a log passed off
// as another replica's.
type Checkpoint struct {
	Replica   string    `json:"replica"`
	File      string    `json:"file"` // the file's name when signed (informational)
	Seq       uint64    `json:"seq"`
	Head      string    `json:"head"`
	Time      time.Time `json:"time"`
	KeyRef    string    `json:"key"` // provider/key-name of the signing key
	Signature []byte    `json:"signature,omitempty"`
}

// Payload is what is signed: the checkpoint without its signature, as
// canonical JSON (fields in declaration order, UTC time).
func (c Checkpoint) Payload() []byte {
	c.Signature = nil
	c.Time = c.Time.UTC()
	b, _ := json.Marshal(c) // a struct of strings, numbers and a time: never fails
	return b
}

// Sign signs c's payload with sign, which receives the SHA-256 digest of
// the payload (what an HSM key signs).
func Sign(ctx context.Context, c Checkpoint, sign func(ctx context.Context, digest []byte) ([]byte, error)) (Checkpoint, error) {
	d := sha256.Sum256(c.Payload())
	sig, err := sign(ctx, d[:])
	if err != nil {
		return Checkpoint{}, err
	}
	c.Signature = sig
	return c, nil
}

// ErrBadSignature: a checkpoint's signature does not verify with the audit
// public key.
var ErrBadSignature = errors.New("checkpoint signature does not verify")

// VerifySignature checks c's signature with pub (ECDSA with SHA-256 and an
// ASN.1 signature, RSA PKCS #1 v1.5 with SHA-256, or Ed25519 over the
// digest).
func (c Checkpoint) VerifySignature(pub crypto.PublicKey) error {
	d := sha256.Sum256(c.Payload())
	ok := false
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(k, d[:], c.Signature)
	case *rsa.PublicKey:
		ok = rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], c.Signature) == nil
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, d[:], c.Signature)
	default:
		return fmt.Errorf("audit key of type %T is not supported", pub)
	}
	if !ok {
		return ErrBadSignature
	}
	return nil
}

// CheckpointEvent is the log line that repeats a checkpoint (so that the
// log itself says which replica wrote it and when it was vouched for).
func CheckpointEvent(c Checkpoint) Event {
	return Event{Time: c.Time.UTC(), Operation: OpCheckpoint, Outcome: OutcomeSuccess,
		Detail:     fmt.Sprintf("signed checkpoint at seq %d", c.Seq),
		Attributes: map[string]string{"replica": c.Replica, "head": c.Head, "file": c.File, "key": c.KeyRef}}
}

// ID names the checkpoint: the first 128 bits of the SHA-256 of its
// payload, in hex (the same checkpoint stored twice is stored once).
func (c Checkpoint) ID() string {
	d := sha256.Sum256(c.Payload())
	return hex.EncodeToString(d[:16])
}
