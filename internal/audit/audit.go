// Package audit writes the tamper-evident audit log: one JSON object per
// line, each line carrying the SHA-256 of the previous line (prev_hash) and
// its own hash over everything before it (hash), so that a changed, removed,
// inserted or reordered line breaks the chain at a line the verifier names.
//
// Line format: {"seq":N,...event fields...,"prev_hash":"<hex>","hash":"<hex>"}
// where hash = SHA-256 of the line up to (not including) `,"hash":` followed
// by `}`. The first line's prev_hash anchors the chain: 64 zeros for a new
// log (seq 1), or, in a file made by rotation, the last hash of the file
// before it; such a file begins with an "audit_rotate" record.
//
// The contract of Record: it returns nil only after the line is written and
// fdatasync'd (durable: its bytes and the file size, what is needed to read
// it back after a power loss) — concurrent records share one write and one
// sync (group commit), and a lone record leads its own batch at once; with
// Options.SyncInterval the sync comes within the interval instead. On any error the line is not in the log (a partly
// written line is cut off before the next record) and the caller must refuse
// the operation (fail closed). The next Record tries the file again, so the
// server serves again as soon as the disk takes writes.
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
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/fsutil"
)

// Event is one audit record. It never carries plaintext, signatures, key
// bytes, PINs or tokens.
type Event struct {
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id,omitempty"`
	// ClientRequestID is the id the client sent (X-Request-Id), kept only
	// when it is at most 64 characters of [A-Za-z0-9._:-]; RequestID is
	// always the server's.
	ClientRequestID string  `json:"client_request_id,omitempty"`
	Principal       string  `json:"principal,omitempty"`
	ClientAddr      string  `json:"client_addr,omitempty"`
	Operation       string  `json:"operation"`
	KeyID           string  `json:"key_id,omitempty"`
	KeyName         string  `json:"key_name,omitempty"`
	KeyVersion      int     `json:"key_version,omitempty"`
	Provider        string  `json:"provider,omitempty"`
	Algorithm       string  `json:"algorithm,omitempty"`
	Outcome         string  `json:"outcome"`
	ErrorCode       string  `json:"error_code,omitempty"`
	DurationMS      float64 `json:"duration_ms"`
	Detail          string  `json:"detail,omitempty"`
	// ErrorName is a failed request's error in the vocabulary of the
	// front end that served it (the XKS proxy's errorName), beside
	// ErrorCode, the domain's kind.
	ErrorName string `json:"error_name,omitempty"`
	// Attributes are facts a front end adds in its own protocol's terms
	// (the XKS proxy: store, kmsRequestId, kmsOperation, …).
	Attributes map[string]string `json:"attributes,omitempty"`
}

// Outcomes.
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
	// OutcomeDenied: refused for want of a credential or a permission.
	OutcomeDenied = "denied"
)

// OpRotate is the operation of the record that begins a rotated file.
const OpRotate = "audit_rotate"

// Recorder records audit events.
type Recorder interface {
	// Record writes e durably before it returns nil.
	Record(ctx context.Context, e Event) error
}

// ZeroHash anchors a new chain.
var ZeroHash = hex.EncodeToString(make([]byte, sha256.Size))

// ErrUnavailable wraps every failure to write the log.
var ErrUnavailable = errors.New("audit log unavailable")

// file is what the log needs of its file (a seam for fault tests).
type file interface {
	io.Writer
	Sync() error
	Truncate(size int64) error
	Close() error
}

// Options configure a Log.
type Options struct {
	// MaxBytes rotates the file once it reaches this size (0: never by
	// size).
	MaxBytes int64
	// Logger receives the chain head at rotation and close, and repair
	// notes (default: discarded).
	Logger *slog.Logger
	// SyncInterval, when positive, fsyncs the file every SyncInterval
	// instead of before each Record returns: a record is then written to
	// the operating system (it survives the process being killed) before
	// Record returns, and on disk within SyncInterval (an OS crash or power
	// loss may lose that much). 0, the default, fsyncs every batch.
	SyncInterval time.Duration
	// OnRotate, when set, is called after each rotation with the old
	// file's new name and its last record's sequence number and hash
	// (where the server signs a checkpoint of the file it closed): before
	// Rotate returns, or, for a rotation by size, on a goroutine of its
	// own. It may Record.
	OnRotate func(old string, lastSeq uint64, lastHash string)
}

// Log is a hash-chained JSON-lines audit file. It is safe for concurrent
// use; records are written one at a time, in order.
type Log struct {
	path string
	opts Options
	open func(path string) (file, error)

	// qmu guards queue, the records waiting for the next batch, and
	// flushing, set while a caller leads.
	qmu      sync.Mutex
	queue    []*pending
	flushing bool

	mu       sync.Mutex
	f        file
	size     int64 // bytes of durable, complete lines
	seq      uint64
	lastHash string
	// dirty is set when a write or fsync failed: the file may end with
	// part of a line, which must be cut off before the next record.
	dirty bool
	// unsynced is set, with Options.SyncInterval, when records were
	// written since the last fsync; syncErr when that fsync failed (records
	// are refused until one succeeds).
	unsynced bool
	syncErr  error
	// buf is the batch buffer, reused from batch to batch.
	buf     []byte
	stop    chan struct{}
	stopped chan struct{}
}

// syncLoop makes written records durable every SyncInterval. The
// fdatasync runs outside l.mu, so that records appended meanwhile do not
// wait for it; they stay unsynced until a sync that began after them. A
// rotation or Close meanwhile syncs the file itself (unsynced is still
// set) and the loop's result for the old file is dropped.
func (l *Log) syncLoop() {
	defer close(l.stopped)
	t := time.NewTicker(l.opts.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		l.mu.Lock()
		f, seq := l.f, l.seq
		need := f != nil && (l.unsynced || l.syncErr != nil)
		l.mu.Unlock()
		if !need {
			continue
		}
		err := datasync(f)
		l.mu.Lock()
		if l.f == f {
			l.syncErr = err
			if err != nil {
				l.opts.Logger.Error("audit log fsync failed; refusing operations until it works", "path", l.path, "err", err)
			} else if l.seq == seq {
				l.unsynced = false
			}
		}
		l.mu.Unlock()
	}
}

func openFile(path string) (file, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
}

// Open opens (creating if needed) the audit log at path and continues its
// chain.
func Open(path string) (*Log, error) { return OpenWith(path, Options{}) }

// OpenWith is Open with options.
func OpenWith(path string, o Options) (*Log, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	l := &Log{path: path, opts: o, open: openFile, lastHash: ZeroHash}
	if err := l.finishRotation(); err != nil {
		return nil, err
	}
	if err := l.resume(); err != nil {
		return nil, err
	}
	f, err := l.open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	l.f = f
	if o.SyncInterval > 0 {
		l.stop = make(chan struct{})
		l.stopped = make(chan struct{})
		go l.syncLoop()
	}
	return l, nil
}

// finishRotation completes a rotation a crash interrupted: the new file is
// made complete as path+".next" before the old one is renamed away.
func (l *Log) finishRotation() error {
	next := l.path + ".next"
	if _, err := os.Stat(next); err != nil {
		return nil
	}
	if _, err := os.Stat(l.path); err == nil {
		// The old file was not renamed yet: the rotation did not happen.
		return os.Remove(next)
	}
	l.opts.Logger.Warn("audit log: finishing a rotation interrupted by a crash", "path", l.path)
	if err := os.Rename(next, l.path); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(l.path))
}

// maxLine bounds one audit line (for resume and Verify).
const maxLine = 1 << 20

// resume reads the last line of an existing log to continue its chain. A
// torn last line (no newline: the process died before its fsync returned,
// so it was never acknowledged) is cut off.
func (l *Log) resume() error {
	f, err := os.OpenFile(l.path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	from := max(0, size-2*maxLine)
	buf := make([]byte, size-from)
	if _, err := f.ReadAt(buf, from); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if n := bytes.LastIndexByte(buf, '\n'); n != len(buf)-1 {
		l.opts.Logger.Warn("audit log: cutting off a torn last line", "path", l.path, "bytes", len(buf)-n-1)
		if err := f.Truncate(from + int64(n+1)); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		buf = buf[:n+1]
		size = from + int64(n+1)
	}
	l.size = size
	buf = bytes.TrimRight(buf, "\n")
	if len(buf) == 0 {
		return nil
	}
	last := buf[bytes.LastIndexByte(buf, '\n')+1:]
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

// line builds the chained line for e (appendLine, encode.go).
func line(seq uint64, prev string, e Event) ([]byte, string, error) {
	return appendLine(nil, seq, prev, e)
}

// pending is a record waiting for its batch. It receives exactly one
// message: its batch's outcome, or the word that it now leads.
type pending struct {
	e    Event
	done chan outcome
}

type outcome struct {
	err  error
	lead bool
}

// Record appends e and makes it durable: fsynced (with SyncInterval > 0:
// written to the operating system, fsynced within the interval). An error
// means the event is not in the log and the caller must not report success.
//
// Group commit: concurrent records are written and fsynced together. One
// caller at a time leads: it takes every record queued so far, writes them
// with one write and one fsync, answers each, and hands the lead to the
// oldest record that queued meanwhile. The others only wait for their
// answer. Each record is still durable before Record returns.
func (l *Log) Record(_ context.Context, e Event) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	p := &pending{e: e, done: make(chan outcome, 1)}
	l.qmu.Lock()
	l.queue = append(l.queue, p)
	lead := !l.flushing
	l.flushing = true
	l.qmu.Unlock()
	if !lead {
		o := <-p.done
		if !o.lead {
			return o.err
		}
	}
	return l.flush(p)
}

// flush writes the queued records (p's among them) as one batch, then hands
// the lead on or gives it up.
func (l *Log) flush(p *pending) error {
	l.qmu.Lock()
	batch := l.queue
	l.queue = nil
	l.qmu.Unlock()

	l.mu.Lock()
	err := l.appendBatchLocked(batch)
	if err == nil && l.opts.MaxBytes > 0 && l.size >= l.opts.MaxBytes {
		// The records are durable: a failed rotation is not the callers'
		// failure. The next record tries again.
		seq, head := l.seq, l.lastHash
		if old, rerr := l.rotateLocked(); rerr != nil {
			l.opts.Logger.Error("audit log rotation failed; continuing in the current file", "path", l.path, "err", rerr)
		} else if hook := l.opts.OnRotate; hook != nil {
			go hook(old, seq, head)
		}
	}
	l.mu.Unlock()

	l.qmu.Lock()
	if len(l.queue) > 0 {
		next := l.queue[0] // stays queued: it writes itself
		l.qmu.Unlock()
		next.done <- outcome{lead: true}
	} else {
		l.flushing = false
		l.qmu.Unlock()
	}
	for _, b := range batch {
		if b != p {
			b.done <- outcome{err: err}
		}
	}
	return err
}

// MinFreeBytes is the free space Ready wants on the log's file system.
const MinFreeBytes = 64 << 10

// Preflighter is a Recorder that can tell, before a state change is made,
// whether a record could be written now.
type Preflighter interface {
	Ready() error
}

// Ready reports whether the log can take a record now: what a failed write
// left is cut off, and the file system has at least MinFreeBytes free.
// The key service asks before it changes state (create, activate, rotate,
// delete, …), so that a change is not made that then cannot be audited.
// An operation that changes nothing needs no preflight: its result is
// withheld when its record fails.
func (l *Log) Ready() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return fmt.Errorf("%w: closed", ErrUnavailable)
	}
	if l.dirty {
		if err := l.f.Truncate(l.size); err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if err := l.f.Sync(); err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		l.dirty = false
	}
	if free, ok := freeBytes(filepath.Dir(l.path)); ok && free < MinFreeBytes {
		return fmt.Errorf("%w: %d bytes free on its file system", ErrUnavailable, free)
	}
	return nil
}

// appendBatchLocked writes records to the current file with one write and
// one fsync. On failure nothing of the batch counts: the chain head stays
// where it was and what was written is cut off before the next record.
func (l *Log) appendBatchLocked(batch []*pending) error {
	if l.f == nil {
		return fmt.Errorf("%w: closed", ErrUnavailable)
	}
	if l.dirty {
		// Cut off whatever a failed write left; refuse until that works.
		if err := l.f.Truncate(l.size); err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if err := l.f.Sync(); err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		l.dirty = false
	}
	seq, head := l.seq, l.lastHash
	buf := l.buf[:0]
	for _, p := range batch {
		var h string
		var err error
		if buf, h, err = appendLine(buf, seq+1, head, p.e); err != nil {
			return err
		}
		seq, head = seq+1, h
	}
	if cap(buf) <= 64<<10 {
		l.buf = buf // reused by the next batch (l.mu is held)
	}
	if l.syncErr != nil {
		if l.syncErr = l.f.Sync(); l.syncErr != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, l.syncErr)
		}
	}
	if _, err := l.f.Write(buf); err != nil {
		l.dirty = true
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if l.opts.SyncInterval > 0 {
		l.unsynced = true
	} else if err := datasync(l.f); err != nil {
		l.dirty = true
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	l.seq, l.lastHash = seq, head
	l.size += int64(len(buf))
	return nil
}

// Rotate closes the current file under a new name (path + "." + UTC time)
// and starts a new one at path whose first record, an audit_rotate record,
// continues the chain from the last hash of the old file. It returns the
// old file's new name.
func (l *Log) Rotate() (string, error) {
	l.mu.Lock()
	seq, head := l.seq, l.lastHash
	old, err := l.rotateLocked()
	l.mu.Unlock()
	if hook := l.opts.OnRotate; err == nil && hook != nil {
		hook(old, seq, head)
	}
	return old, err
}

func (l *Log) rotateLocked() (string, error) {
	if l.f == nil {
		return "", fmt.Errorf("%w: closed", ErrUnavailable)
	}
	if l.dirty {
		return "", fmt.Errorf("%w: the current file has a failed write", ErrUnavailable)
	}
	if l.unsynced || l.syncErr != nil {
		// The old file is complete on disk before the chain moves on.
		if l.syncErr = l.f.Sync(); l.syncErr != nil {
			return "", fmt.Errorf("%w: %v", ErrUnavailable, l.syncErr)
		}
		l.unsynced = false
	}
	old := l.path + "." + time.Now().UTC().Format("20060102T150405.000000000Z")
	for i := 1; ; i++ {
		if _, err := os.Lstat(old); errors.Is(err, os.ErrNotExist) {
			break
		}
		old = fmt.Sprintf("%s.%d", old, i)
	}
	// The new file is complete (rotate record and its name durable) before
	// the old one moves, so that a crash leaves either the old file or both.
	next := l.path + ".next"
	b, h, err := line(l.seq+1, l.lastHash, Event{Time: time.Now().UTC(), Operation: OpRotate, Outcome: OutcomeSuccess,
		Detail: "continues " + filepath.Base(old)})
	if err == nil {
		err = fsutil.WriteFile(next, b, 0o600)
	}
	var nf file
	if err == nil {
		nf, err = l.open(next)
	}
	if err != nil {
		os.Remove(next)
		return "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if err := os.Rename(l.path, old); err != nil {
		nf.Close()
		os.Remove(next)
		return "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if err := os.Rename(next, l.path); err != nil {
		// Open finishes this rename after a restart; until then the new
		// file takes the records under its temporary name.
		l.opts.Logger.Error("audit log: new file left as "+next, "err", err)
	}
	if err := fsutil.SyncDir(filepath.Dir(l.path)); err != nil {
		// The rotation has happened (both files are complete and the chain
		// continues in the new one); only the two renames may not survive a
		// power loss yet. The file fsyncs of the next records fail too when
		// the disk is failing, and refuse them; the operator must know.
		l.opts.Logger.Error("audit log: syncing the directory after rotation failed", "path", l.path, "err", err)
	}
	l.f.Close()
	l.opts.Logger.Info("audit log rotated", "old", old, "last_seq", l.seq, "last_hash", l.lastHash)
	l.f, l.size, l.seq, l.lastHash = nf, int64(len(b)), l.seq+1, h
	return old, nil
}

// Head returns the sequence number and hash of the last record.
func (l *Log) Head() (uint64, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq, l.lastHash
}

// Close closes the file and logs the chain head (keep it elsewhere to
// detect a truncated or rewritten log).
func (l *Log) Close() error {
	if l.stop != nil {
		close(l.stop)
		<-l.stopped
		l.stop = nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Sync()
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
	l.opts.Logger.Info("audit log closed", "path", l.path, "last_seq", l.seq, "last_hash", l.lastHash)
	return err
}

// Problem is the first break in a chain.
type Problem struct {
	File   string // set by VerifyFiles
	Line   int    // 1-based line number in the file
	Reason string
}

func (p *Problem) Error() string {
	if p.File != "" {
		return fmt.Sprintf("%s: line %d: %s", p.File, p.Line, p.Reason)
	}
	return fmt.Sprintf("line %d: %s", p.Line, p.Reason)
}

// Verify checks a log's chain. anchor, if not empty, is the prev_hash the
// first line must carry. With no anchor the first line must begin a chain:
// seq 1 with the zero hash, or an audit_rotate record (which continues a
// file not given). It returns the number of lines checked, the last hash,
// and a *Problem for the first line that breaks the chain.
func Verify(r io.Reader, anchor string) (int, string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), maxLine)
	n := 0
	prev := anchor
	var prevSeq uint64
	for sc.Scan() {
		n++
		raw := sc.Bytes()
		var rec struct {
			Seq       *uint64 `json:"seq"`
			Operation string  `json:"operation"`
			PrevHash  string  `json:"prev_hash"`
			Hash      string  `json:"hash"`
		}
		if err := json.Unmarshal(raw, &rec); err != nil || rec.Seq == nil || len(rec.Hash) != 64 {
			return n, prev, &Problem{Line: n, Reason: "not an audit record (changed or inserted)"}
		}
		suffix := []byte(`,"hash":"` + rec.Hash + `"}`)
		if !bytes.HasSuffix(raw, suffix) {
			return n, prev, &Problem{Line: n, Reason: "hash is not the last field (changed)"}
		}
		content := append(append([]byte(nil), raw[:len(raw)-len(suffix)]...), '}')
		sum := sha256.Sum256(content)
		if hex.EncodeToString(sum[:]) != rec.Hash {
			return n, prev, &Problem{Line: n, Reason: "content does not match its hash (changed)"}
		}
		switch {
		case n == 1 && prev == "":
			if *rec.Seq == 1 && rec.PrevHash != ZeroHash {
				return n, prev, &Problem{Line: n, Reason: "the first record of a log does not carry the zero hash (changed)"}
			}
			if *rec.Seq != 1 && rec.Operation != OpRotate {
				return n, prev, &Problem{Line: n, Reason: fmt.Sprintf("the file begins at sequence %d without a rotation record: lines before it were removed", *rec.Seq)}
			}
		case rec.PrevHash != prev:
			reason := "prev_hash does not match the previous line (a line was removed, inserted or reordered before it)"
			switch {
			case n == 1:
				reason = "prev_hash does not match the last hash of the file before it (lines were removed, or files are out of order)"
			case *rec.Seq != prevSeq+1:
				reason = fmt.Sprintf("sequence %d follows %d: a line was removed, inserted or reordered before it", *rec.Seq, prevSeq)
			}
			return n, prev, &Problem{Line: n, Reason: reason}
		case n > 1 && *rec.Seq != prevSeq+1:
			// Unreachable unless SHA-256 collides; kept as a check.
			return n, prev, &Problem{Line: n, Reason: fmt.Sprintf("sequence %d follows %d", *rec.Seq, prevSeq)}
		}
		prev, prevSeq = rec.Hash, *rec.Seq
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return n + 1, prev, &Problem{Line: n + 1, Reason: fmt.Sprintf("line longer than %d bytes (not an audit record)", maxLine)}
		}
		return n, prev, err
	}
	return n, prev, nil
}

// Summary is what VerifyFiles checked.
type Summary struct {
	Files    int
	Lines    int
	LastHash string
}

// VerifyFiles checks files given in rotation order (oldest first, the live
// file last) as one chain: each file must continue from the last hash of
// the one before it. anchor is as for Verify, for the first file.
func VerifyFiles(paths []string, anchor string) (Summary, error) {
	var s Summary
	prev := anchor
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return s, err
		}
		n, last, err := Verify(f, prev)
		f.Close()
		s.Lines += n
		if err != nil {
			var pr *Problem
			if errors.As(err, &pr) {
				pr.File = p
			}
			return s, err
		}
		if n == 0 && prev != "" {
			last = prev // an empty file continues nothing and breaks nothing
		}
		s.Files++
		s.LastHash, prev = last, last
	}
	return s, nil
}
