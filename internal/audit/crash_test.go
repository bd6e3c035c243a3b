package audit

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The child of TestKill9MidAppend: it records from several goroutines into
// the log named by KEYGRID_AUDIT_CRASH_CHILD until it is killed, printing
// the request id of each record once Record has returned nil
// (acknowledged, as a response would be).
func TestMain(m *testing.M) {
	if p := os.Getenv("KEYGRID_AUDIT_CRASH_CHILD"); p != "" {
		os.Exit(crashChild(p))
	}
	os.Exit(m.Run())
}

func crashChild(path string) int {
	interval, _ := time.ParseDuration(os.Getenv("KEYGRID_AUDIT_CRASH_INTERVAL"))
	l, err := OpenWith(path, Options{MaxBytes: 32 << 10, SyncInterval: interval})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				// Some records are larger than a page, so that a batch can
				// be cut in the middle of a write.
				detail := strings.Repeat("d", (i%7)*1000)
				if err := l.Record(context.Background(), Event{RequestID: id, Operation: "sign", Outcome: OutcomeSuccess, Detail: detail}); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				mu.Lock()
				out.WriteString(id + "\n")
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return 0
}

// A process killed with SIGKILL while it appends under load loses no
// acknowledged record, in either mode: after a restart (Open cuts off what
// a cut write left) the files verify as one chain and hold every record
// the child acknowledged.
func TestKill9MidAppend(t *testing.T) {
	for _, mode := range []struct{ name, interval string }{{"durable", "0s"}, {"fsync_interval_10ms", "10ms"}} {
		t.Run(mode.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "audit.log")
			for round := range 3 { // each round continues the chain the last one left
				acked := killChild(t, path, mode.interval, 150+round*100)
				l, err := Open(path)
				if err != nil {
					t.Fatalf("round %d: reopening after kill -9: %v", round, err)
				}
				if err := l.Record(context.Background(), Event{RequestID: "after-restart-" + strconv.Itoa(round), Operation: "sign", Outcome: OutcomeSuccess}); err != nil {
					t.Fatal(err)
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				files := logFiles(t, path)
				sum, err := VerifyFiles(files, "")
				if err != nil {
					t.Fatalf("round %d: the log does not verify after kill -9: %v", round, err)
				}
				have := requestIDs(t, files)
				for _, id := range acked {
					if !have[id] {
						t.Fatalf("round %d: acknowledged record %s is not in the log (%d files, %d lines)", round, id, sum.Files, sum.Lines)
					}
				}
				if sum.Files < 2 {
					t.Fatalf("round %d: no rotation under load (%d files): the test must cover rotation", round, sum.Files)
				}
			}
		})
	}
}

// killChild starts the child on path, kills it with SIGKILL once it has
// acknowledged at least n records, and returns every id it acknowledged.
func killChild(t *testing.T, path, interval string, n int) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KEYGRID_AUDIT_CRASH_CHILD="+path, "KEYGRID_AUDIT_CRASH_INTERVAL="+interval)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acked []string
	sc := bufio.NewScanner(stdout)
	killed := false
	deadline := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	defer deadline.Stop()
	for sc.Scan() {
		acked = append(acked, sc.Text())
		if len(acked) == n && !killed {
			killed = true
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// What the child printed before it died was acknowledged; the pipe is
	// read to its end.
	err = cmd.Wait()
	if !killed || err == nil {
		t.Fatalf("child ended before it was killed (%d acknowledged): %v", len(acked), err)
	}
	return acked
}

// logFiles lists the rotated files of path, oldest first, then path.
func logFiles(t *testing.T, path string) []string {
	t.Helper()
	rotated, err := filepath.Glob(path + ".2*")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(rotated)
	return append(rotated, path)
}

func requestIDs(t *testing.T, files []string) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, ln := range lines(b) {
			if i := strings.Index(string(ln), `"request_id":"`); i >= 0 {
				rest := string(ln[i+len(`"request_id":"`):])
				ids[rest[:strings.IndexByte(rest, '"')]] = true
			}
		}
	}
	return ids
}
