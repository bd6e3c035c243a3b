package apitypes

import "time"

// Checkpoint is a signed audit checkpoint: replica Replica's audit log had
// reached record Seq, whose hash is Head, in file File at Time. Signature
// is over the SHA-256 of the canonical JSON of the other fields (see
// internal/audit.Checkpoint.Payload), made with the audit signing key Key.
type Checkpoint struct {
	ID        string    `json:"id"`
	Replica   string    `json:"replica"`
	File      string    `json:"file"`
	Seq       uint64    `json:"seq"`
	Head      string    `json:"head"`
	Time      time.Time `json:"time"`
	Key       string    `json:"key"`
	Signature []byte    `json:"signature"`
}

// AuditSigningKey is the public half of an audit signing key.
type AuditSigningKey struct {
	Key       string `json:"key"`        // provider/key-name
	PublicKey string `json:"public_key"` // PEM SubjectPublicKeyInfo
}

// CheckpointList is the body of GET /api/v1/audit/checkpoints: newest
// first, and the public keys that verify them.
type CheckpointList struct {
	Checkpoints   []Checkpoint      `json:"checkpoints"`
	NextPageToken string            `json:"next_page_token,omitempty"`
	SigningKeys   []AuditSigningKey `json:"signing_keys"`
}
