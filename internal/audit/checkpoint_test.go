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
		name   string
		tamper func(t *testing.T, b *checkpointBed) []string
		want   string // "" : verifies
	}{
		{"intact", func(t *testing.T, b *checkpointBed) []string { return b.files() }, ""},
		{"tail cut after the last checkpoint", func(t *testing.T, b *checkpointBed) []string {
			ls := fileLines(t, b.live)
			os.WriteFile(b.live, []byte(strings.Join(ls[:3], "")), 0o600) // the rotation record and two signs
			return b.files()
		}, "cut off"},
		{"live file emptied", func(t *testing.T, b *checkpointBed) []string {
			os.WriteFile(b.live, nil, 0o600)
			return b.files()
		}, "cut off"},
		{"whole chain re-hashed", func(t *testing.T, b *checkpointBed) []string {
			rehash(t, b.live, rehash(t, b.rotated, "")) // the live file continues the re-hashed one
			if _, err := VerifyFiles(b.files(), ""); err != nil {
				t.Fatalf("the re-hashed chain should verify on its own: %v", err)
			}
			return b.files()
		}, "re-hashed"},
		{"rotated file deleted", func(t *testing.T, b *checkpointBed) []string {
			os.Remove(b.rotated)
			return []string{b.live}
		}, "rotated file holding this record is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newCheckpointBed(t, "replica-a")
			paths := tc.tamper(t, b)
			_, err := VerifyCheckpoints(paths, "replica-a", b.cps, b.pub)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var cp *CheckpointProblem
			if !errors.As(err, &cp) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a checkpoint problem naming %q", err, tc.want)
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
	if _, err := VerifyCheckpoints(a.files(), "replica-b", b.cps, b.pub); err == nil || !strings.Contains(err.Error(), "not replica") {
		t.Fatalf("another replica's log: %v", err)
	}
	// A checkpoint signed by another key.
	if _, err := VerifyCheckpoints(a.files(), "replica-a", a.cps, b.pub); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("wrong key: %v", err)
	}
}
