package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
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

// CheckpointProblem is what a checkpoint shows to be wrong with a log.
type CheckpointProblem struct {
	Checkpoint Checkpoint
	Reason     string
	Err        error // the cause, when one (ErrBadSignature)
}

func (p *CheckpointProblem) Unwrap() error { return p.Err }

func (p *CheckpointProblem) Error() string {
	return fmt.Sprintf("checkpoint of replica %s at seq %d (%s, file %s): %s", p.Checkpoint.Replica, p.Checkpoint.Seq,
		p.Checkpoint.Time.UTC().Format(time.RFC3339), p.Checkpoint.File, p.Reason)
}

// chainRecord is what the checkpoint check reads of a line.
type chainRecord struct {
	Seq        uint64            `json:"seq"`
	Operation  string            `json:"operation"`
	Hash       string            `json:"hash"`
	Attributes map[string]string `json:"attributes"`
}

// VerifyCheckpoints checks the files of replica's log (in rotation order,
// oldest first, the live file last) as VerifyFiles does, then against the
// signed checkpoints of that replica (others are ignored): each must
// verify with pub and match the record of its sequence number. It names
// the first problem: a bad signature, a record cut off after a checkpoint
// (the log ends before it, or is empty), a re-hashed chain (the record is
// there with another hash), a missing rotated file (the checkpoint's
// record is before the first file given, or in a gap), or a log of
// another replica (its checkpoint lines name another replica, or no
// checkpoint of replica matches it).
func VerifyCheckpoints(paths []string, replica string, cps []Checkpoint, pub crypto.PublicKey) (Summary, error) {
	sum, err := VerifyFiles(paths, "")
	if err != nil {
		return sum, err
	}
	bySeq, first, last, err := readChain(paths)
	if err != nil {
		return sum, err
	}
	for seq, r := range bySeq {
		if r.Operation == OpCheckpoint && r.Attributes["replica"] != "" && r.Attributes["replica"] != replica {
			return sum, fmt.Errorf("the log holds checkpoints of replica %q at seq %d: it is not replica %q's log", r.Attributes["replica"], seq, replica)
		}
	}
	var mine []Checkpoint
	for _, c := range cps {
		if c.Replica == replica {
			mine = append(mine, c)
		}
	}
	if len(mine) == 0 {
		return sum, fmt.Errorf("no checkpoint of replica %q: nothing vouches for this log", replica)
	}
	sort.Slice(mine, func(i, j int) bool { return mine[i].Seq < mine[j].Seq })
	for _, c := range mine {
		if err := c.VerifySignature(pub); err != nil {
			return sum, &CheckpointProblem{Checkpoint: c, Reason: err.Error(), Err: err}
		}
		r, ok := bySeq[c.Seq]
		switch {
		case ok && r.Hash == c.Head:
			continue
		case ok:
			return sum, &CheckpointProblem{Checkpoint: c, Reason: "the record at this sequence has another hash: the chain was re-hashed (or the log is another replica's)"}
		case len(bySeq) == 0 || c.Seq > last:
			return sum, &CheckpointProblem{Checkpoint: c, Reason: fmt.Sprintf("the log ends at seq %d: records after it were cut off (or the live file emptied)", last)}
		case c.Seq < first:
			return sum, &CheckpointProblem{Checkpoint: c, Reason: fmt.Sprintf("the log given begins at seq %d: the rotated file holding this record is missing", first)}
		default:
			return sum, &CheckpointProblem{Checkpoint: c, Reason: "no record with this sequence: a rotated file is missing or was emptied"}
		}
	}
	return sum, nil
}

// readChain reads the sequence numbers, hashes and checkpoint lines of
// files already verified.
func readChain(paths []string) (map[uint64]chainRecord, uint64, uint64, error) {
	out := map[uint64]chainRecord{}
	var first, last uint64
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, 0, 0, err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(make([]byte, 64*1024), maxLine)
		for sc.Scan() {
			var r chainRecord
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				return nil, 0, 0, fmt.Errorf("%s: %w", p, err)
			}
			out[r.Seq] = r
			if first == 0 || r.Seq < first {
				first = r.Seq
			}
			last = max(last, r.Seq)
		}
	}
	return out, first, last, nil
}

// CheckpointEvent is the log line that repeats a checkpoint (so that the
// log itself says which replica wrote it and when it was vouched for).
func CheckpointEvent(c Checkpoint) Event {
	return Event{Time: c.Time.UTC(), Operation: OpCheckpoint, Outcome: OutcomeSuccess,
		Detail:     fmt.Sprintf("signed checkpoint at seq %d", c.Seq),
		Attributes: map[string]string{"replica": c.Replica, "head": c.Head, "file": c.File, "key": c.KeyRef}}
}
