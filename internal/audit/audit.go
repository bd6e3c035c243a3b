// Package audit writes the tamper-evident audit log: one JSON object per
// line, each line carrying the SHA-256 of the previous line (prev_hash) and
// its own hash over everything before it (hash), so that a changed, removed,
// inserted or reordered line breaks the chain at a line the verifier names.
//
// Line format: {"seq":N,...event fields...,"prev_hash":"<hex>","hash":"<hex>"}
// where hash = SHA-256 of the line up to (not including) `,"hash":` followed
// by `}`. The first line's prev_hash anchors the chain: 64 zeros for a new
// log, or the last hash of the file it continues after rotation.
//
// Record returns only after the line is written and fsynced; the caller
// refuses the operation when it fails (fail closed).
package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Event is one audit record. It never carries plaintext, signatures, key
// bytes, PINs or tokens.
type Event struct {
	Time       time.Time `json:"time"`
	RequestID  string    `json:"request_id,omitempty"`
	Principal  string    `json:"principal,omitempty"`
	ClientAddr string    `json:"client_addr,omitempty"`
	Operation  string    `json:"operation"`
	KeyID      string    `json:"key_id,omitempty"`
	KeyName    string    `json:"key_name,omitempty"`
	KeyVersion int       `json:"key_version,omitempty"`
	Provider   string    `json:"provider,omitempty"`
	Algorithm  string    `json:"algorithm,omitempty"`
	Outcome    string    `json:"outcome"`
	ErrorCode  string    `json:"error_code,omitempty"`
	DurationMS float64   `json:"duration_ms"`
	Detail     string    `json:"detail,omitempty"`
}

// Outcomes.
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
	OutcomeDenied  = "denied"
)

// Recorder records audit events.
type Recorder interface {
	Record(ctx context.Context, e Event) error
}

// ZeroHash anchors a new chain.
var ZeroHash = hex.EncodeToString(make([]byte, sha256.Size))

// ErrUnavailable wraps every failure to write the log.
var ErrUnavailable = errors.New("audit log unavailable")

// Log is a hash-chained JSON-lines audit file.
type Log struct {
	path string

	mu       sync.Mutex
	f        *os.File
	seq      uint64
	lastHash string
}

// Open opens (creating if needed) the audit log at path and continues its
// chain.
func Open(path string) (*Log, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	l := &Log{path: path, lastHash: ZeroHash}
	if err := l.resume(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	l.f = f
	return l, nil
}

// resume reads the last line of an existing log to continue its chain.
func (l *Log) resume() error {
	f, err := os.Open(l.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	var last []byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) > 0 {
			last = append(last[:0], sc.Bytes()...)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("audit log %s: %w", l.path, err)
	}
	if last == nil {
		return nil
	}
	var tail struct {
		Seq  uint64 `json:"seq"`
		Hash string `json:"hash"`
	}
	if err := json.Unmarshal(last, &tail); err != nil || len(tail.Hash) != 64 {
		return fmt.Errorf("audit log %s: last line is not an audit record; run `keygrid-hsm audit verify`", l.path)
	}
	l.seq, l.lastHash = tail.Seq, tail.Hash
	return nil
}

// line builds the chained line for e.
func line(seq uint64, prev string, e Event) ([]byte, string, error) {
	body, err := json.Marshal(e)
	if err != nil {
		return nil, "", err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"seq":%d,`, seq)
	b.Write(body[1 : len(body)-1])
	fmt.Fprintf(&b, `,"prev_hash":%q`, prev)
	sum := sha256.Sum256(append(b.Bytes(), '}'))
	h := hex.EncodeToString(sum[:])
	fmt.Fprintf(&b, `,"hash":%q}`+"\n", h)
	return b.Bytes(), h, nil
}

// Record appends e and fsyncs. An error means the event is not durable and
// the caller must not report success.
func (l *Log) Record(_ context.Context, e Event) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return fmt.Errorf("%w: closed", ErrUnavailable)
	}
	b, h, err := line(l.seq+1, l.lastHash, e)
	if err != nil {
		return err
	}
	if _, err := l.f.Write(b); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	l.seq++
	l.lastHash = h
	return nil
}

// Close closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// Problem is the first break in a chain.
type Problem struct {
	Line   int // 1-based line number in the file
	Reason string
}

func (p *Problem) Error() string { return fmt.Sprintf("line %d: %s", p.Line, p.Reason) }

// Verify checks a log's chain. anchor, if not empty, is the prev_hash the
// first line must carry. It returns the number of lines checked, the last
// hash, and a *Problem for the first line that breaks the chain.
func Verify(r io.Reader, anchor string) (int, string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	n := 0
	prev := anchor
	var prevSeq uint64
	for sc.Scan() {
		n++
		raw := sc.Bytes()
		var rec struct {
			Seq      *uint64 `json:"seq"`
			PrevHash string  `json:"prev_hash"`
			Hash     string  `json:"hash"`
		}
		if err := json.Unmarshal(raw, &rec); err != nil || rec.Seq == nil || len(rec.Hash) != 64 {
			return n, prev, &Problem{n, "not an audit record (changed or inserted)"}
		}
		suffix := []byte(`,"hash":"` + rec.Hash + `"}`)
		if !bytes.HasSuffix(raw, suffix) {
			return n, prev, &Problem{n, "hash is not the last field (changed)"}
		}
		content := append(append([]byte(nil), raw[:len(raw)-len(suffix)]...), '}')
		sum := sha256.Sum256(content)
		if hex.EncodeToString(sum[:]) != rec.Hash {
			return n, prev, &Problem{n, "content does not match its hash (changed)"}
		}
		if prev != "" && rec.PrevHash != prev {
			reason := "prev_hash does not match the previous line (a line was removed, inserted or reordered before it)"
			if n > 1 && *rec.Seq != prevSeq+1 {
				reason = fmt.Sprintf("sequence %d follows %d: a line was removed, inserted or reordered before it", *rec.Seq, prevSeq)
			}
			return n, prev, &Problem{n, reason}
		}
		prev, prevSeq = rec.Hash, *rec.Seq
	}
	if err := sc.Err(); err != nil {
		return n, prev, err
	}
	return n, prev, nil
}
