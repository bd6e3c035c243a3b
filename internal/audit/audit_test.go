package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// writeLog records n events in a fresh log and returns its path and bytes.
func writeLog(t testing.TB, n int) (string, []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		e := Event{RequestID: fmt.Sprintf("r%d", i), Principal: "p", Operation: "sign", KeyID: "k", KeyVersion: 1,
			Outcome: OutcomeSuccess, DurationMS: float64(i)}
		if err := l.Record(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, b
}

func lines(b []byte) [][]byte {
	return bytes.SplitAfter(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
}

func problemLine(t *testing.T, b []byte) int {
	t.Helper()
	_, _, err := Verify(bytes.NewReader(b), "")
	var p *Problem
	if !errors.As(err, &p) {
		t.Fatalf("Verify: %v, want a *Problem", err)
	}
	return p.Line
}

func TestChainVerifies(t *testing.T) {
	_, b := writeLog(t, 5)
	n, last, err := Verify(bytes.NewReader(b), "")
	if err != nil || n != 5 || len(last) != 64 {
		t.Fatalf("Verify: %d lines, last %q, %v", n, last, err)
	}
	if n, _, err := Verify(bytes.NewReader(b), ZeroHash); err != nil || n != 5 {
		t.Fatalf("Verify with the zero anchor: %d, %v", n, err)
	}
}

// Editing any one byte of any line is found at that line.
func TestEveryByteEditDetected(t *testing.T) {
	_, b := writeLog(t, 4)
	ls := lines(b)
	off := 0
	for i, l := range ls {
		for j := range l {
			for _, c := range []byte{'x', '\n', '\r', ' ', '0', '"'} {
				if l[j] == c {
					continue
				}
				m := bytes.Clone(b)
				m[off+j] = c
				if got := problemLine(t, m); got != i+1 {
					t.Fatalf("byte %d of line %d set to %q: problem at line %d", j, i+1, c, got)
				}
			}
		}
		off += len(l)
	}
}

func TestRemovedSwappedInsertedDetected(t *testing.T) {
	_, b := writeLog(t, 5)
	ls := lines(b)
	join := func(xs ...[]byte) []byte { return bytes.Join(xs, nil) }
	tests := []struct {
		name string
		log  []byte
		line int
	}{
		{"remove first", join(ls[1:]...), 1},
		{"remove middle", join(ls[0], ls[1], ls[3], ls[4]), 3},
		{"swap 2 and 3", join(ls[0], ls[2], ls[1], ls[3], ls[4]), 2},
		{"swap first two", join(ls[1], ls[0], ls[2], ls[3], ls[4]), 1},
		{"duplicate line 2", join(ls[0], ls[1], ls[1], ls[2], ls[3], ls[4]), 3},
		{"insert blank", join(ls[0], []byte("\n"), ls[1], ls[2], ls[3], ls[4]), 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := problemLine(t, tc.log); got != tc.line {
				t.Fatalf("problem at line %d, want %d", got, tc.line)
			}
		})
	}
	// Removing the last line cannot be seen from the file alone; the chain
	// head (logged at rotation and close) shows it.
	if _, last, err := Verify(bytes.NewReader(join(ls[:4]...)), ""); err != nil || last == lastHashOf(t, b) {
		t.Fatalf("truncated log: %v, last hash unchanged: %v", err, last == lastHashOf(t, b))
	}
}

func lastHashOf(t *testing.T, b []byte) string {
	_, last, err := Verify(bytes.NewReader(b), "")
	if err != nil {
		t.Fatal(err)
	}
	return last
}

func TestResumeContinuesChainAndCutsTornLine(t *testing.T) {
	p, b := writeLog(t, 3)
	// A torn line: the process died inside a write, before fsync returned.
	if err := os.WriteFile(p, append(bytes.Clone(b), []byte(`{"seq":4,"time":"2026`)...), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Record(context.Background(), Event{Operation: "verify", Outcome: OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	got, _ := os.ReadFile(p)
	if n, _, err := Verify(bytes.NewReader(got), ZeroHash); err != nil || n != 4 {
		t.Fatalf("after resume: %d lines, %v", n, err)
	}
	// A complete last line that is not a record is refused (tampering).
	if err := os.WriteFile(p, append(got, []byte("garbage\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p); err == nil {
		t.Fatal("Open accepted a log whose last line is not a record")
	}
}

func TestRotationKeepsChain(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "audit.log")
	l, err := OpenWith(p, Options{MaxBytes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := l.Record(context.Background(), Event{RequestID: fmt.Sprint(i), Operation: "sign", Outcome: OutcomeSuccess}); err != nil {
			t.Fatal(err)
		}
	}
	old, err := l.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Record(context.Background(), Event{Operation: "sign", Outcome: OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	seq, head := l.Head()
	l.Close()
	rotated, _ := filepath.Glob(p + ".*")
	sort.Strings(rotated)
	if len(rotated) < 3 || rotated[len(rotated)-1] != old {
		t.Fatalf("rotated files %v (last should be %s)", rotated, old)
	}
	files := append(rotated, p)
	s, err := VerifyFiles(files, ZeroHash)
	if err != nil || s.Files != len(files) || s.LastHash != head {
		t.Fatalf("VerifyFiles: %+v, %v (head %d %s)", s, err, seq, head)
	}
	// Each rotated file starts with the last hash of the one before.
	first, _ := os.ReadFile(p)
	if !bytes.Contains(first, []byte(`"operation":"audit_rotate"`)) {
		t.Fatalf("new file does not begin with a rotation record: %s", first)
	}
	// One file alone verifies (it continues an earlier one) …
	if _, err := VerifyFiles([]string{p}, ""); err != nil {
		t.Fatalf("live file alone: %v", err)
	}
	// … but out of order, or with a file missing, the link breaks.
	var pr *Problem
	if _, err := VerifyFiles([]string{rotated[1], rotated[0], p}, ZeroHash); !errors.As(err, &pr) || pr.File != rotated[1] || pr.Line != 1 {
		t.Fatalf("out of order: %v", err)
	}
	if _, err := VerifyFiles(append([]string{rotated[0]}, files[2:]...), ZeroHash); !errors.As(err, &pr) || pr.File != files[2] || pr.Line != 1 {
		t.Fatalf("missing file: %v", err)
	}
	// Removing the rotation record is seen.
	b, _ := os.ReadFile(p)
	if got := problemLine(t, bytes.Join(lines(b)[1:], nil)); got != 1 {
		t.Fatalf("rotation record removed: problem at line %d", got)
	}
}

func TestCrashBetweenRotationRenames(t *testing.T) {
	p, _ := writeLog(t, 2)
	l, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Rotate(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	// Simulate the crash: the new file is still under its temporary name.
	if err := os.Rename(p, p+".next"); err != nil {
		t.Fatal(err)
	}
	l, err = Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Record(context.Background(), Event{Operation: "sign", Outcome: OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	rotated, _ := filepath.Glob(p + ".2*")
	if _, err := VerifyFiles(append(rotated, p), ZeroHash); err != nil || len(rotated) != 1 {
		t.Fatalf("after the interrupted rotation: %v (%v)", err, rotated)
	}
}

// faultyFile fails writes (after writing part of the line, as a full disk
// does) while failing is set.
type faultyFile struct {
	file
	mu      sync.Mutex
	failing bool
}

func (f *faultyFile) set(v bool) { f.mu.Lock(); f.failing = v; f.mu.Unlock() }

func (f *faultyFile) Write(b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing {
		n, _ := f.file.Write(b[:len(b)/2])
		return n, syscall.ENOSPC
	}
	return f.file.Write(b)
}

func TestFailedWriteRefusedThenRecovers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	ff := &faultyFile{file: l.f}
	l.f = ff
	ctx := context.Background()
	if err := l.Record(ctx, Event{Operation: "sign", Outcome: OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	ff.set(true)
	for range 3 {
		if err := l.Record(ctx, Event{Operation: "sign", Outcome: OutcomeSuccess}); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Record on a full disk: %v, want ErrUnavailable", err)
		}
	}
	if err := l.Ready(); err != nil {
		t.Fatalf("Ready after cutting off the failed write: %v", err)
	}
	ff.set(false)
	if err := l.Record(ctx, Event{Operation: "verify", Outcome: OutcomeSuccess}); err != nil {
		t.Fatalf("Record after the disk has room again: %v", err)
	}
	l.Close()
	b, _ := os.ReadFile(p)
	if n, _, err := Verify(bytes.NewReader(b), ZeroHash); err != nil || n != 2 {
		t.Fatalf("log after the failures: %d lines, %v\n%s", n, err, b)
	}
	if strings.Count(string(b), `"operation":"sign"`) != 1 {
		t.Fatalf("a refused record reached the log:\n%s", b)
	}
}

func TestConcurrentRecordsChain(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.log")
	l, err := OpenWith(p, Options{MaxBytes: 4000})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				if err := l.Record(context.Background(), Event{Time: time.Now(), RequestID: fmt.Sprintf("%d-%d", w, i), Operation: "sign", Outcome: OutcomeSuccess}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	l.Close()
	rotated, _ := filepath.Glob(p + ".*")
	sort.Strings(rotated)
	s, err := VerifyFiles(append(rotated, p), ZeroHash)
	if err != nil || s.Lines != 80+len(rotated) {
		t.Fatalf("%+v, %v", s, err)
	}
}
