package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestReadRecentAndChainCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 300 {
		op := "sign"
		if i%3 == 0 {
			op = "rotate"
		}
		if err := l.Record(context.Background(), Event{Operation: op, KeyID: fmt.Sprintf("k%d", i%7), Outcome: OutcomeSuccess}); err != nil {
			t.Fatal(err)
		}
	}
	// Newest first, filtered, bounded in number; a small budget reads the
	// file in many chunks without losing or splitting a line.
	for _, budget := range []int64{0, 1 << 30} {
		recs, err := ReadRecent(path, 10, budget, func(r *Record) bool { return r.Operation == "rotate" && r.KeyID == "k3" })
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 10 {
			t.Fatalf("budget %d: %d records, want 10", budget, len(recs))
		}
		for i := 1; i < len(recs); i++ {
			if recs[i].Seq >= recs[i-1].Seq {
				t.Fatalf("not newest first: %d after %d", recs[i].Seq, recs[i-1].Seq)
			}
		}
		if recs[0].Seq != 298 || recs[0].Hash == "" { // i=297 is seq 298: 297%3==0, 297%7==3
			t.Fatalf("newest = %d", recs[0].Seq)
		}
	}
	// A tiny budget reads only the end.
	recs, _ := ReadRecent(path, 1000, 500, nil)
	if len(recs) == 0 || len(recs) > 5 {
		t.Fatalf("budget 500: %d records", len(recs))
	}
	all, _ := ReadRecent(path, 1000, 0, nil)
	if len(all) != 300 {
		t.Fatalf("%d records, want 300", len(all))
	}

	// The chain check verifies incrementally and finds a change.
	c := NewChainCheck(path, 4096)
	var st ChainStatus
	for range 100 {
		if st = c.Check(); st.Complete {
			break
		}
	}
	if st.Problem != nil || !st.Complete || st.Lines != 300 || st.LastSeq != 300 {
		t.Fatalf("status %+v", st)
	}
	if seq, h := l.Head(); seq != st.LastSeq || h != st.LastHash {
		t.Fatalf("head %d %s, checked %d %s", seq, h, st.LastSeq, st.LastHash)
	}
	l.Record(context.Background(), Event{Operation: "sign", Outcome: OutcomeSuccess})
	if st = c.Check(); st.Problem != nil || st.Lines != 301 {
		t.Fatalf("after one more: %+v", st)
	}
	b, _ := os.ReadFile(path)
	b[len(b)/2] ^= 1
	os.WriteFile(path+".tampered", b, 0o600)
	tc := NewChainCheck(path+".tampered", 0)
	var pr *Problem
	if st := tc.Check(); !errors.As(st.Problem, &pr) {
		t.Fatalf("tampered file: %+v", st)
	}
}
