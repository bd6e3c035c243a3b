package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// Reading the log back: the recent records (newest first, filtered) for
// the operator console, and an incremental check of the live file's chain.
// Both only read the files; the writer (Log) is not involved, so a reader
// never holds up a record.

// Record is one line of the log as read back: the event with its place in
// the chain.
type Record struct {
	Seq uint64 `json:"seq"`
	Event
	PrevHash string `json:"prev_hash"`
	Hash     string `json:"hash"`
}

// DefaultReadBudget is how many bytes ReadRecent reads at most when given
// no budget.
const DefaultReadBudget = 8 << 20

// readChunk is the size of one backwards read.
const readChunk = 64 << 10

// ReadRecent returns up to n records, newest first, that keep accepts (nil:
// every record), from the log at path and then from its rotated files
// (path.<UTC time>, newest first). It reads backwards from the end and stops
// after maxBytes (0: DefaultReadBudget) or n records, so that a large log
// costs a bounded read; a line that is not a record (torn, or changed) is
// skipped. A missing log is no records, not an error.
func ReadRecent(path string, n int, maxBytes int64, keep func(*Record) bool) ([]Record, error) {
	if n <= 0 {
		return nil, nil
	}
	if maxBytes <= 0 {
		maxBytes = DefaultReadBudget
	}
	files := append([]string{path}, rotatedFiles(path)...)
	var out []Record
	for _, f := range files {
		read, err := readBackwards(f, maxBytes, func(line []byte) bool {
			var r Record
			if json.Unmarshal(line, &r) != nil || len(r.Hash) != 64 {
				return true
			}
			if keep == nil || keep(&r) {
				out = append(out, r)
			}
			return len(out) < n
		})
		if err != nil {
			return out, err
		}
		if maxBytes -= read; maxBytes <= 0 || len(out) >= n {
			break
		}
	}
	return out, nil
}

// rotatedFiles lists the rotated files of the log at path, newest first
// (their names end in a sortable UTC time).
func rotatedFiles(path string) []string {
	m, _ := filepath.Glob(path + ".[0-9]*")
	sort.Sort(sort.Reverse(sort.StringSlice(m)))
	return m
}

// readBackwards calls fn with the complete lines of the file, last first,
// until fn returns false or budget bytes were read. It returns the bytes
// read.
func readBackwards(path string, budget int64, fn func(line []byte) bool) (int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("audit log: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("audit log: %w", err)
	}
	end := st.Size()
	var read int64
	var carry []byte // the start of a line whose beginning is not read yet
	first := true
	for end > 0 && read < budget {
		size := min(int64(readChunk), end, budget-read)
		buf := make([]byte, size, int(size)+len(carry))
		if _, err := f.ReadAt(buf, end-size); err != nil && !errors.Is(err, io.EOF) {
			return read, fmt.Errorf("audit log: %w", err)
		}
		end -= size
		read += size
		buf = append(buf, carry...)
		if first {
			// What follows the last newline is a line being written.
			if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
				buf = buf[:i+1]
			} else if end > 0 {
				carry = buf
				continue
			} else {
				return read, nil
			}
			first = false
		}
		lines := bytes.Split(bytes.TrimRight(buf, "\n"), []byte("\n"))
		// The first piece may be the end of a line that begins earlier.
		carry = nil
		if end > 0 {
			carry = append([]byte(nil), lines[0]...)
			carry = append(carry, '\n')
			lines = lines[1:]
		}
		for i := len(lines) - 1; i >= 0; i-- {
			if len(lines[i]) == 0 {
				continue
			}
			if !fn(lines[i]) {
				return read, nil
			}
		}
	}
	return read, nil
}

// ChainStatus is what a ChainCheck found.
type ChainStatus struct {
	Path string
	// Lines and LastSeq, LastHash: the complete lines of the live file
	// verified so far and the last of them.
	Lines    int
	LastSeq  uint64
	LastHash string
	// Complete: every complete line of the file was verified (false when a
	// check stopped at its budget; the next one goes on).
	Complete bool
	// Problem is the first break found (a *Problem naming the line), or an
	// error reading the file; nil: the chain holds so far.
	Problem   error
	CheckedAt time.Time
}

// ChainCheck verifies the chain of a live log file incrementally: each
// Check verifies only the complete lines appended since the previous one
// (at most a budget of bytes per call), continuing from the last hash it
// verified. A rotation (another file at the path) starts it over on the
// new file, which begins with its audit_rotate record. A break, once
// found, is reported until the file is replaced. It is safe for
// concurrent use.
type ChainCheck struct {
	path   string
	budget int64

	mu     sync.Mutex
	file   os.FileInfo // the file verified so far
	offset int64
	st     ChainStatus
}

// NewChainCheck returns a check of the log at path that reads at most
// budget bytes per Check (0: 64 MiB).
func NewChainCheck(path string, budget int64) *ChainCheck {
	if budget <= 0 {
		budget = 64 << 20
	}
	return &ChainCheck{path: path, budget: budget, st: ChainStatus{Path: path}}
}

// Check verifies what was appended since the last call and returns the
// status.
func (c *ChainCheck) Check() ChainStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st.CheckedAt = time.Now().UTC()
	f, err := os.Open(c.path)
	if errors.Is(err, os.ErrNotExist) {
		c.file, c.offset, c.st = nil, 0, ChainStatus{Path: c.path, Complete: true, CheckedAt: c.st.CheckedAt}
		return c.st
	}
	if err != nil {
		c.st.Problem = fmt.Errorf("audit log: %w", err)
		return c.st
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		c.st.Problem = fmt.Errorf("audit log: %w", err)
		return c.st
	}
	if c.file == nil || !os.SameFile(c.file, fi) || fi.Size() < c.offset {
		c.file, c.offset, c.st = fi, 0, ChainStatus{Path: c.path, CheckedAt: c.st.CheckedAt}
	}
	var pr *Problem
	if errors.As(c.st.Problem, &pr) {
		return c.st // a break stays reported
	}
	c.st.Problem = nil
	remaining := fi.Size() - c.offset
	size := min(remaining, c.budget)
	buf := make([]byte, size)
	if _, err := f.ReadAt(buf, c.offset); err != nil && !errors.Is(err, io.EOF) {
		c.st.Problem = fmt.Errorf("audit log: %w", err)
		return c.st
	}
	i := bytes.LastIndexByte(buf, '\n')
	buf = buf[:i+1] // complete lines only
	if len(buf) > 0 {
		n, last, err := Verify(bytes.NewReader(buf), c.st.LastHash)
		if err != nil {
			if errors.As(err, &pr) {
				pr.File, pr.Line = c.path, pr.Line+c.st.Lines
			}
			c.st.Problem = err
			return c.st
		}
		c.st.Lines += n
		c.st.LastHash = last
		c.offset += int64(len(buf))
		lastLine := bytes.TrimRight(buf, "\n")
		var tail struct {
			Seq uint64 `json:"seq"`
		}
		if json.Unmarshal(lastLine[bytes.LastIndexByte(lastLine, '\n')+1:], &tail) == nil {
			c.st.LastSeq = tail.Seq
		}
	}
	// Read to the end: what is left is at most a line being written.
	c.st.Complete = size == remaining
	return c.st
}
