package audit

import (
	"bufio"
	"bytes"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// What a verification against signed checkpoints finds wrong with a log.
// Each is matched with errors.Is; the error carrying it (a
// *CheckpointProblem or a *FileProblem) says where.
var (
	// ErrTailCut: the log ends before a checkpoint's record: lines after
	// it were cut off.
	ErrTailCut = errors.New("records were cut off the end of the log")
	// ErrRehashed: a checkpoint's record is there with another hash: the
	// chain was re-hashed (rewritten from an edit onward).
	ErrRehashed = errors.New("the chain was re-hashed: a record does not have the hash its checkpoint signed")
	// ErrMissingFile: a rotated file the chain needs is not among those
	// given (deleted).
	ErrMissingFile = errors.New("a rotated file of the log is missing")
	// ErrEmptyFile: a file of the log was emptied.
	ErrEmptyFile = errors.New("a file of the log is empty")
	// ErrOtherReplica: the log is another replica's.
	ErrOtherReplica = errors.New("the log is another replica's")
	// ErrNoCheckpoint: no checkpoint of the replica is stored, so nothing
	// vouches for the log.
	ErrNoCheckpoint = errors.New("no checkpoint vouches for the log")
	// ErrUnknownKey: a checkpoint is signed by a key whose public key is
	// not known.
	ErrUnknownKey = errors.New("a checkpoint's signing key is not known")
)

// CheckpointProblem is what a checkpoint shows to be wrong with a log. Err
// is one of the Err* kinds above (ErrBadSignature among them).
type CheckpointProblem struct {
	Checkpoint Checkpoint
	Reason     string
	Err        error
}

func (p *CheckpointProblem) Unwrap() error { return p.Err }

func (p *CheckpointProblem) Error() string {
	return fmt.Sprintf("checkpoint of replica %s at seq %d (%s, file %s): %s: %s", p.Checkpoint.Replica, p.Checkpoint.Seq,
		p.Checkpoint.Time.UTC().Format(time.RFC3339), p.Checkpoint.File, p.Err, p.Reason)
}

// FileProblem is a problem of one file of the log (Err: ErrEmptyFile,
// ErrMissingFile, ErrOtherReplica).
type FileProblem struct {
	File   string
	Reason string
	Err    error
}

func (p *FileProblem) Unwrap() error { return p.Err }

func (p *FileProblem) Error() string { return fmt.Sprintf("%s: %s: %s", p.File, p.Err, p.Reason) }

// KeySet holds the audit public keys by the key reference checkpoints
// name (provider/key-name).
type KeySet map[string]crypto.PublicKey

// VerifyOptions say what to verify.
type VerifyOptions struct {
	// Paths are the log's files in rotation order (oldest first, the live
	// file last); see LogFiles.
	Paths []string
	// Replica is the replica the log is claimed to be of.
	Replica string
	// Checkpoints are the stored checkpoints (any replica's; others are
	// ignored), in any order.
	Checkpoints []Checkpoint
	// Keys are the public keys of the audit signing keys.
	Keys KeySet
}

// Report is what a verification checked.
type Report struct {
	Summary
	// Checkpoints is the number of the replica's checkpoints that matched.
	Checkpoints int
	// Newest is the newest of them (by sequence number).
	Newest Checkpoint
	// Unvouched is the number of records after the newest checkpoint:
	// nothing shows yet whether records after them were cut.
	Unvouched uint64
}

// VerifyLog checks a replica's log: its hash chain (a *Problem names the
// first broken line), then every signed checkpoint of the replica, each of
// which must verify with its key and match the record of its sequence
// number. It names the first problem as a *CheckpointProblem or a
// *FileProblem carrying one of the Err* kinds: lines cut after a
// checkpoint (ErrTailCut), a re-hashed chain (ErrRehashed), a deleted or
// emptied rotated file (ErrMissingFile, ErrEmptyFile), a log of another
// replica (ErrOtherReplica), a forged or foreign checkpoint
// (ErrBadSignature, ErrUnknownKey), or none at all (ErrNoCheckpoint).
func VerifyLog(o VerifyOptions) (Report, error) {
	var rep Report
	var mine []Checkpoint
	for _, c := range o.Checkpoints {
		if c.Replica == o.Replica {
			mine = append(mine, c)
		}
	}
	sort.Slice(mine, func(i, j int) bool { return mine[i].Seq < mine[j].Seq })
	for _, p := range o.Paths {
		st, err := os.Stat(p)
		if err != nil {
			return rep, err
		}
		if st.Size() == 0 && len(mine) > 0 {
			return rep, &FileProblem{File: p, Reason: fmt.Sprintf("%d checkpoints of replica %s vouch for records that were in it", len(mine), o.Replica), Err: ErrEmptyFile}
		}
	}
	sum, err := VerifyFiles(o.Paths, "")
	rep.Summary = sum
	if err != nil {
		var pr *Problem
		if errors.As(err, &pr) && pr.Line == 1 {
			if fp := missingBefore(o.Paths, pr.File); fp != nil {
				return rep, fp
			}
		}
		return rep, err
	}
	bySeq, first, last, err := readChain(o.Paths)
	if err != nil {
		return rep, err
	}
	if len(bySeq) == 0 && len(mine) == 0 {
		return rep, nil // an empty log that nothing vouched for yet
	}
	for _, seq := range sortedSeqs(bySeq) {
		r := bySeq[seq]
		if r.Operation == OpCheckpoint && r.Attributes["replica"] != "" && r.Attributes["replica"] != o.Replica {
			return rep, &FileProblem{File: r.file, Reason: fmt.Sprintf("its checkpoint line at seq %d names replica %q, not %q", seq, r.Attributes["replica"], o.Replica), Err: ErrOtherReplica}
		}
	}
	if len(mine) == 0 {
		return rep, fmt.Errorf("%w: no checkpoint of replica %q is stored", ErrNoCheckpoint, o.Replica)
	}
	if first > 1 {
		if r := bySeq[first]; r.Operation == OpRotate && mine[0].Seq < first {
			return rep, &CheckpointProblem{Checkpoint: mine[0], Err: ErrMissingFile,
				Reason: fmt.Sprintf("the log given begins at seq %d (%s); the rotated file holding this record is missing", first, strings.TrimPrefix(r.Detail, "continues "))}
		}
	}
	for _, c := range mine {
		pub, ok := o.Keys[c.KeyRef]
		if !ok {
			return rep, &CheckpointProblem{Checkpoint: c, Err: ErrUnknownKey, Reason: fmt.Sprintf("no public key of %q", c.KeyRef)}
		}
		if err := c.VerifySignature(pub); err != nil {
			if !errors.Is(err, ErrBadSignature) {
				return rep, err
			}
			return rep, &CheckpointProblem{Checkpoint: c, Err: err, Reason: "forged, altered, or signed by another key"}
		}
		r, ok := bySeq[c.Seq]
		switch {
		case ok && r.Hash == c.Head:
			rep.Checkpoints++
			rep.Newest = c
			continue
		case ok:
			return rep, &CheckpointProblem{Checkpoint: c, Err: ErrRehashed, Reason: fmt.Sprintf("%s holds seq %d with hash %s, the checkpoint signed %s", r.file, c.Seq, short(r.Hash), short(c.Head))}
		case c.Seq > last:
			return rep, &CheckpointProblem{Checkpoint: c, Err: ErrTailCut, Reason: fmt.Sprintf("the log ends at seq %d, %d records short", last, c.Seq-last)}
		case c.Seq < first:
			return rep, &CheckpointProblem{Checkpoint: c, Err: ErrMissingFile, Reason: fmt.Sprintf("the log given begins at seq %d", first)}
		default:
			return rep, &CheckpointProblem{Checkpoint: c, Err: ErrMissingFile, Reason: "no record with this sequence number among the files given"}
		}
	}
	rep.Unvouched = last - rep.Newest.Seq
	return rep, nil
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}

// missingBefore explains a chain that breaks at the first line of file:
// when that line is a rotation record continuing a file that is not the
// one given before it, that file is missing.
func missingBefore(paths []string, file string) *FileProblem {
	i := slices.Index(paths, file)
	if i < 0 {
		return nil
	}
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), maxLine)
	if !sc.Scan() {
		return nil
	}
	var r struct {
		Operation string `json:"operation"`
		Detail    string `json:"detail"`
	}
	if json.Unmarshal(sc.Bytes(), &r) != nil || r.Operation != OpRotate {
		return nil
	}
	want := strings.TrimPrefix(r.Detail, "continues ")
	if i > 0 && filepath.Base(paths[i-1]) == want {
		return nil // the file before it is the one it continues: a real break
	}
	return &FileProblem{File: file, Err: ErrMissingFile, Reason: fmt.Sprintf("it continues %s, which is not among the files given", want)}
}

// chainRecord is what the checkpoint check reads of a line.
type chainRecord struct {
	Seq        uint64            `json:"seq"`
	Operation  string            `json:"operation"`
	Hash       string            `json:"hash"`
	Detail     string            `json:"detail"`
	Attributes map[string]string `json:"attributes"`
	file       string
}

func sortedSeqs(m map[uint64]chainRecord) []uint64 {
	out := make([]uint64, 0, len(m))
	for s := range m {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
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
			r.file = p
			out[r.Seq] = r
			if first == 0 || r.Seq < first {
				first = r.Seq
			}
			last = max(last, r.Seq)
		}
		if err := sc.Err(); err != nil {
			return nil, 0, 0, fmt.Errorf("%s: %w", p, err)
		}
	}
	return out, first, last, nil
}

// VerifyCheckpoints is VerifyLog with one public key for every
// checkpoint.
func VerifyCheckpoints(paths []string, replica string, cps []Checkpoint, pub crypto.PublicKey) (Summary, error) {
	keys := KeySet{}
	for _, c := range cps {
		keys[c.KeyRef] = pub
	}
	rep, err := VerifyLog(VerifyOptions{Paths: paths, Replica: replica, Checkpoints: cps, Keys: keys})
	return rep.Summary, err
}

// rotatedName matches the name Rotate gives a file: path.<UTC time>[.N].
var rotatedName = regexp.MustCompile(`^\.(\d{8}T\d{6}\.\d{9}Z)(?:\.(\d+))?$`)

// LogFiles lists the files of the log at path in rotation order: the
// rotated files (path.<time>[.N], oldest first), then path itself when it
// exists.
func LogFiles(path string) ([]string, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	type rotated struct {
		name, at string
		n        int
	}
	var rs []rotated
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, base) || e.IsDir() {
			continue
		}
		m := rotatedName.FindStringSubmatch(name[len(base):])
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[2])
		rs = append(rs, rotated{name, m[1], n})
	}
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].at != rs[j].at {
			return rs[i].at < rs[j].at
		}
		return rs[i].n < rs[j].n
	})
	var out []string
	for _, r := range rs {
		out = append(out, filepath.Join(dir, r.name))
	}
	if _, err := os.Stat(path); err == nil {
		out = append(out, path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no audit log at %s", path)
	}
	return out, nil
}

// ErrKeyMismatch: the audit public key the metadata store holds is not
// the provider's key (the store's copy was replaced).
var ErrKeyMismatch = errors.New("the stored audit public key is not the provider's")

// LogReplica returns the replica the checkpoint lines of a log name (the
// last one found); "" when the log has none.
func LogReplica(paths []string) (string, error) {
	bySeq, _, _, err := readChain(paths)
	if err != nil {
		return "", err
	}
	replica := ""
	for _, seq := range sortedSeqs(bySeq) {
		if r := bySeq[seq]; r.Operation == OpCheckpoint && r.Attributes["replica"] != "" {
			replica = r.Attributes["replica"]
		}
	}
	return replica, nil
}
