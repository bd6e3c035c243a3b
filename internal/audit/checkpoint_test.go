package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// checkpointBed is one replica's log with signed checkpoints: records,
// a checkpoint, a rotation with its checkpoint, more records, a last
// checkpoint, more records.
type checkpointBed struct {
	dir, live, rotated string
	cps                []Checkpoint
	pub                crypto.PublicKey
}

func newCheckpointBed(t *testing.T, replica string) *checkpointBed {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sign := func(_ context.Context, d []byte) ([]byte, error) { return ecdsa.SignASN1(rand.Reader, key, d) }
	b := &checkpointBed{dir: t.TempDir(), pub: &key.PublicKey}
	b.live = filepath.Join(b.dir, "audit.log")
	l, err := Open(b.live)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rec := func(n int) {
		for i := range n {
			if err := l.Record(ctx, Event{Time: time.Now(), Operation: "sign", KeyName: "k", Outcome: OutcomeSuccess, DurationMS: float64(i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkpoint := func(file string) {
		seq, head := l.Head()
		c, err := Sign(ctx, Checkpoint{Replica: replica, File: file, Seq: seq, Head: head, Time: time.Now(), KeyRef: "software/audit"}, sign)
		if err != nil {
			t.Fatal(err)
		}
		b.cps = append(b.cps, c)
		if err := l.Record(ctx, CheckpointEvent(c)); err != nil {
			t.Fatal(err)
		}
	}
	rec(5)
	checkpoint("audit.log")
	rec(3)
	checkpoint("audit.log")
	if b.rotated, err = l.Rotate(); err != nil {
		t.Fatal(err)
	}
	rec(4)
	checkpoint("audit.log")
	rec(2)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *checkpointBed) files() []string { return []string{b.rotated, b.live} }

func fileLines(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.SplitAfter(strings.TrimSuffix(string(raw), "\n"), "\n")
}

// rehash rewrites path from its first line on with one record edited and
// every hash recomputed, the first line chained to start (""; its own
// prev_hash): a chain that verifies on its own. It returns the last hash.
func rehash(t *testing.T, path, start string) string {
	t.Helper()
	var out bytes.Buffer
	prev := ""
	sc := bufio.NewScanner(strings.NewReader(strings.Join(fileLines(t, path), "")))
	for i := 0; sc.Scan(); i++ {
		var rec struct {
			Seq      uint64 `json:"seq"`
			PrevHash string `json:"prev_hash"`
		}
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			prev = rec.PrevHash
			if start != "" {
				prev = start
			}
		}
		if i == 1 {
			e.Outcome = OutcomeFailure // the edit
		}
		l, h, err := line(rec.Seq, prev, e)
		if err != nil {
			t.Fatal(err)
		}
		out.Write(l)
		prev = h
	}
	if err := os.WriteFile(path, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return prev
}

func TestCheckpointsDetectWhatTheChainCannot(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tamper  func(t *testing.T, b *checkpointBed) []string
		wantErr error // nil: verifies
	}{
		{"intact", func(t *testing.T, b *checkpointBed) []string { return b.files() }, nil},
		{"tail cut after the last checkpoint", func(t *testing.T, b *checkpointBed) []string {
			ls := fileLines(t, b.live)
			os.WriteFile(b.live, []byte(strings.Join(ls[:3], "")), 0o600) // the rotation record and two signs
			return b.files()
		}, ErrTailCut},
		{"live file emptied", func(t *testing.T, b *checkpointBed) []string {
			os.WriteFile(b.live, nil, 0o600)
			return b.files()
		}, ErrEmptyFile},
		{"rotated file emptied", func(t *testing.T, b *checkpointBed) []string {
			os.WriteFile(b.rotated, nil, 0o600)
			return b.files()
		}, ErrEmptyFile},
		{"whole chain re-hashed", func(t *testing.T, b *checkpointBed) []string {
			rehash(t, b.live, rehash(t, b.rotated, "")) // the live file continues the re-hashed one
			if _, err := VerifyFiles(b.files(), ""); err != nil {
				t.Fatalf("the re-hashed chain should verify on its own: %v", err)
			}
			return b.files()
		}, ErrRehashed},
		{"rotated file deleted", func(t *testing.T, b *checkpointBed) []string {
			os.Remove(b.rotated)
			return []string{b.live}
		}, ErrMissingFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newCheckpointBed(t, "replica-a")
			paths := tc.tamper(t, b)
			_, err := VerifyCheckpoints(paths, "replica-a", b.cps, b.pub)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestCheckpointsSeparateReplicasAndKeys(t *testing.T) {
	a, b := newCheckpointBed(t, "replica-a"), newCheckpointBed(t, "replica-b")
	both := append(append([]Checkpoint{}, a.cps...), b.cps...)
	// Two replicas' checkpoints in one shared store: each log verifies
	// against its own.
	if _, err := VerifyCheckpoints(a.files(), "replica-a", both, a.pub); err != nil {
		t.Fatalf("a's log with every replica's checkpoints: %v", err)
	}
	if _, err := VerifyCheckpoints(a.files(), "replica-a", a.cps, a.pub); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyCheckpoints(b.files(), "replica-b", b.cps, b.pub); err != nil {
		t.Fatal(err)
	}
	// A's log passed off as B's.
	if _, err := VerifyCheckpoints(a.files(), "replica-b", b.cps, b.pub); !errors.Is(err, ErrOtherReplica) {
		t.Fatalf("another replica's log: %v", err)
	}
	// A checkpoint signed by another key.
	if _, err := VerifyCheckpoints(a.files(), "replica-a", a.cps, b.pub); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("wrong key: %v", err)
	}
	// A key nobody knows.
	if _, err := VerifyLog(VerifyOptions{Paths: a.files(), Replica: "replica-a", Checkpoints: a.cps, Keys: KeySet{"hsm/other": a.pub}}); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown key: %v", err)
	}
	// No checkpoint at all.
	if _, err := VerifyCheckpoints(a.files(), "replica-a", nil, a.pub); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("no checkpoints: %v", err)
	}
	// A checkpoint whose signed content was changed.
	forged := append([]Checkpoint{}, a.cps...)
	forged[0].Seq++
	if _, err := VerifyCheckpoints(a.files(), "replica-a", forged, a.pub); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("altered checkpoint: %v", err)
	}
}

// A rotated file deleted from the middle of three: the chain breaks at the
// file after it, and the verifier names the file that is missing.
func TestCheckpointsMiddleFileDeleted(t *testing.T) {
	b := newCheckpointBed(t, "replica-a")
	l, err := Open(b.live)
	if err != nil {
		t.Fatal(err)
	}
	second, err := l.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Record(context.Background(), Event{Operation: "sign", Outcome: OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	files, err := LogFiles(b.live)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{b.rotated, second, b.live}; !slices.Equal(files, want) {
		t.Fatalf("LogFiles: %v, want %v", files, want)
	}
	if _, err := VerifyCheckpoints(files, "replica-a", b.cps, b.pub); err != nil {
		t.Fatal(err)
	}
	os.Remove(second)
	_, err = VerifyCheckpoints([]string{b.rotated, b.live}, "replica-a", b.cps, b.pub)
	var fp *FileProblem
	if !errors.Is(err, ErrMissingFile) || !errors.As(err, &fp) || fp.File != b.live || !strings.Contains(fp.Reason, filepath.Base(second)) {
		t.Fatalf("middle file deleted: %v", err)
	}
}
