package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// slowSyncFile counts fsyncs and makes each take a while, as a disk does,
// so that records queue up behind it.
type slowSyncFile struct {
	file
	syncs atomic.Int64
	fail  atomic.Bool
}

func (f *slowSyncFile) Sync() error {
	f.syncs.Add(1)
	time.Sleep(3 * time.Millisecond)
	if f.fail.Load() {
		return errors.New("injected fsync failure")
	}
	return f.file.Sync()
}

// Concurrent records share fsyncs (group commit), every record is durable
// when Record returns (it is in the file), and the chain holds.
func TestGroupCommitSharesFsyncs(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	sf := &slowSyncFile{file: l.f}
	l.f = sf
	const workers, each = 16, 20
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := fmt.Sprintf("w%d-%d", w, i)
				if err := l.Record(context.Background(), Event{RequestID: id, Operation: "sign", Outcome: OutcomeSuccess}); err != nil {
					t.Error(err)
					return
				}
				// Durable before Record returned: the line is in the file
				// (checked now and then: reading the file is slow under
				// the race detector and would keep records from queuing).
				if i%5 == 0 {
					b, _ := os.ReadFile(p)
					if !bytes.Contains(b, []byte(`"request_id":"`+id+`"`)) {
						t.Errorf("record %s returned before it was in the file", id)
					}
				}
			}
		}()
	}
	wg.Wait()
	l.Close()
	b, _ := os.ReadFile(p)
	if n, _, err := Verify(bytes.NewReader(b), ZeroHash); err != nil || n != workers*each {
		t.Fatalf("chain: %d lines, %v", n, err)
	}
	if s := sf.syncs.Load(); s >= workers*each/2 {
		t.Fatalf("%d fsyncs for %d records: concurrent records did not share them", s, workers*each)
	}
	t.Logf("%d records, %d fsyncs", workers*each, sf.syncs.Load())
}

// A failed fsync fails every record of its batch; none of them counts in
// the chain, and the log takes records again afterwards.
func TestGroupCommitFailureFailsTheBatch(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	sf := &slowSyncFile{file: l.f}
	l.f = sf
	sf.fail.Store(true)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.Record(context.Background(), Event{RequestID: fmt.Sprint("lost-", w), Operation: "sign", Outcome: OutcomeSuccess}); errors.Is(err, ErrUnavailable) {
				failed.Add(1)
			} else {
				t.Errorf("record with a failing fsync: %v, want ErrUnavailable", err)
			}
		}()
	}
	wg.Wait()
	sf.fail.Store(false)
	if err := l.Record(context.Background(), Event{RequestID: "kept", Operation: "verify", Outcome: OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	b, _ := os.ReadFile(p)
	if n, _, err := Verify(bytes.NewReader(b), ZeroHash); err != nil || n != 1 || bytes.Contains(b, []byte("lost-")) {
		t.Fatalf("after the failed batch: %d lines, %v\n%s", n, err, b)
	}
}

// With a sync interval, records are in the file when Record returns and on
// disk within the interval; the chain holds and Close syncs the rest.
func TestSyncIntervalWritesNowSyncsLater(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.log")
	l, err := OpenWith(p, Options{SyncInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	sf := &slowSyncFile{file: l.f}
	l.f = sf
	l.mu.Unlock()
	for i := range 50 {
		if err := l.Record(context.Background(), Event{RequestID: fmt.Sprint("r", i), Operation: "sign", Outcome: OutcomeSuccess}); err != nil {
			t.Fatal(err)
		}
	}
	if s := sf.syncs.Load(); s > 5 {
		t.Fatalf("%d fsyncs for 50 quick records with a 20ms interval", s)
	}
	b, _ := os.ReadFile(p)
	if n, _, err := Verify(bytes.NewReader(b), ZeroHash); err != nil || n != 50 {
		t.Fatalf("records not in the file when Record returned: %d, %v", n, err)
	}
	time.Sleep(60 * time.Millisecond)
	if sf.syncs.Load() == 0 {
		t.Fatal("no fsync within the interval")
	}
	// A failed background fsync refuses records until one works again.
	sf.fail.Store(true)
	l.Record(context.Background(), Event{Operation: "sign", Outcome: OutcomeSuccess})
	time.Sleep(60 * time.Millisecond)
	if err := l.Record(context.Background(), Event{Operation: "sign", Outcome: OutcomeSuccess}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("record after a failed fsync: %v, want ErrUnavailable", err)
	}
	sf.fail.Store(false)
	time.Sleep(60 * time.Millisecond)
	if err := l.Record(context.Background(), Event{Operation: "verify", Outcome: OutcomeSuccess}); err != nil {
		t.Fatalf("record after fsync works again: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// gatedSyncFile's Sync waits until release is closed.
type gatedSyncFile struct {
	file
	entered chan struct{}
	release chan struct{}
	syncs   atomic.Int64
}

func (f *gatedSyncFile) Sync() error {
	f.syncs.Add(1)
	select {
	case f.entered <- struct{}{}:
	default:
	}
	<-f.release
	return f.file.Sync()
}

// With a sync interval, the background fsync does not hold up records, and
// a record appended while it runs is not counted synced by it: another
// sync follows.
func TestSyncIntervalSyncDoesNotBlockRecords(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.log")
	l, err := OpenWith(p, Options{SyncInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	gf := &gatedSyncFile{entered: make(chan struct{}, 1), release: make(chan struct{})}
	l.mu.Lock()
	gf.file, l.f = l.f, gf
	l.mu.Unlock()
	ctx := context.Background()
	if err := l.Record(ctx, Event{RequestID: "before", Operation: "sign", Outcome: OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gf.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("no background sync")
	}
	done := make(chan error, 1)
	go func() { done <- l.Record(ctx, Event{RequestID: "during", Operation: "sign", Outcome: OutcomeSuccess}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		close(gf.release)
		t.Fatal("a record waited for the background fsync")
	}
	close(gf.release)
	for deadline := time.Now().Add(5 * time.Second); gf.syncs.Load() < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the record appended during a sync was never synced")
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	if n, _, err := Verify(bytes.NewReader(b), ZeroHash); err != nil || n != 2 {
		t.Fatalf("%d records, %v", n, err)
	}
}
