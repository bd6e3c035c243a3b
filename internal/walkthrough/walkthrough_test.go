// Package walkthrough runs the README's five-minute walkthrough, so that it
// stays true: every ```sh block between <!-- walkthrough:start --> and
// <!-- walkthrough:end --> runs, in order, with bash -euo pipefail, against
// the binary built from this checkout and a server on a free port (the
// walkthrough reads KEYGRID_ADDR). Each block must exit 0, and the checkout
// must be left as it was: the walkthrough writes only into its scratch
// directory.
package walkthrough

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

const (
	startMarker = "<!-- walkthrough:start -->"
	endMarker   = "<!-- walkthrough:end -->"
)

// block is one ```sh block and the README line it starts on.
type block struct {
	line int
	text string
}

// extract returns the ```sh blocks between the markers of readme.
func extract(readme []byte) ([]block, error) {
	var blocks []block
	var cur *strings.Builder
	inside, started, ended := false, false, false
	sc := bufio.NewScanner(bytes.NewReader(readme))
	start := 0
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == startMarker:
			if started {
				return nil, fmt.Errorf("line %d: a second %s", n, startMarker)
			}
			started, inside = true, true
		case strings.TrimSpace(line) == endMarker:
			if !inside || cur != nil {
				return nil, fmt.Errorf("line %d: %s outside the walkthrough or inside a block", n, endMarker)
			}
			inside, ended = false, true
		case !inside:
		case cur == nil && line == "```sh":
			cur, start = &strings.Builder{}, n
		case cur != nil && line == "```":
			blocks = append(blocks, block{start, cur.String()})
			cur = nil
		case cur != nil:
			cur.WriteString(line + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if !started || !ended {
		return nil, fmt.Errorf("README.md needs %s and %s around the walkthrough", startMarker, endMarker)
	}
	return blocks, nil
}

func TestExtract(t *testing.T) {
	md := "x\n```sh\nnot me\n```\n" + startMarker + "\n```sh\necho a\n```\n```\noutput\n```\n```json\n{}\n```\n```sh\necho b\necho c\n```\n" + endMarker + "\n```sh\nnor me\n```\n"
	got, err := extract([]byte(md))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].text != "echo a\n" || got[1].text != "echo b\necho c\n" || got[0].line != 6 {
		t.Fatalf("extract = %+v", got)
	}
	if _, err := extract([]byte("```sh\necho\n```\n")); err == nil {
		t.Fatal("a README without markers was accepted")
	}
}

// repoRoot is the checkout this test runs in.
func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("git rev-parse: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// checkoutState is what the walkthrough must not change: git's view of the
// checkout, ignored files included (./data, bin/ excepted: other tests and
// make build write the binary there).
func checkoutState(t *testing.T, root string) string {
	t.Helper()
	cmd := exec.Command("git", "status", "--porcelain", "--ignored", "--untracked-files=all")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git status: %v", err)
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" && !strings.HasPrefix(l[3:], "bin/") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func TestREADMEWalkthrough(t *testing.T) {
	testbed.Require(t, "bash", "curl", "jq", "openssl", "base64", "xxd", "timeout", "git", "go")
	root := repoRoot(t)
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := extract(readme)
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) < 10 {
		t.Fatalf("only %d sh blocks in the walkthrough", len(blocks))
	}

	tmp := t.TempDir()
	binDir := filepath.Join(tmp, "bin")
	if out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, "keygrid-hsm"), "github.com/keygrid/keygrid-hsm/cmd/keygrid-hsm").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	before := checkoutState(t, root)

	// Each block runs in its own bash; what it exports and where it cd'ed to
	// carry over to the next, as in one terminal.
	state, cwd := filepath.Join(tmp, "state.sh"), filepath.Join(tmp, "cwd")
	if err := os.WriteFile(state, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cwd, []byte(root), 0o600); err != nil {
		t.Fatal(err)
	}
	scratch := filepath.Join(tmp, "scratch")
	if err := os.Mkdir(scratch, 0o700); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"PATH=" + binDir + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + filepath.Join(tmp, "home"), "TMPDIR=" + scratch, "LANG=C.UTF-8",
		"KEYGRID_ADDR=http://" + testbed.FreeAddr(t),
	}
	t.Cleanup(func() { stopServer(t, scratch) })
	for i, b := range blocks {
		script := fmt.Sprintf("set -euo pipefail\n. %q\ncd \"$(cat %q)\"\n%s\nexport -p > %q\npwd > %q\n", state, cwd, b.text, state, cwd)
		cmd := exec.Command("bash", "-c", script)
		cmd.Env = env
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		err := cmd.Run()
		if err != nil {
			t.Fatalf("block %d (README.md line %d) failed: %v\n--- block\n%s--- output\n%s%s", i+1, b.line, err, b.text, out.String(), serverLog(scratch))
		}
		t.Logf("block %d (line %d): ok in %v", i+1, b.line, time.Since(start).Round(time.Millisecond))
	}
	if after := checkoutState(t, root); after != before {
		t.Errorf("the walkthrough changed the checkout:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if entries, _ := os.ReadDir(scratch); len(entries) != 1 {
		t.Errorf("the walkthrough's mktemp -d made %d directories in TMPDIR, want 1", len(entries))
	}
}

// stopServer kills a server the walkthrough left running (its serve.pid in
// the scratch directory), for a walkthrough that failed before its end.
func stopServer(t *testing.T, scratch string) {
	pids, _ := filepath.Glob(filepath.Join(scratch, "*", "serve.pid"))
	for _, p := range pids {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			if syscall.Kill(pid, syscall.SIGTERM) == nil {
				for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
					time.Sleep(100 * time.Millisecond)
				}
			}
		}
	}
}

func serverLog(scratch string) string {
	logs, _ := filepath.Glob(filepath.Join(scratch, "*", "serve.log"))
	var s strings.Builder
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		fmt.Fprintf(&s, "--- %s\n%s", l, b)
	}
	return s.String()
}

// TestCheckoutStateSeesStrayFiles: the cleanliness check notices a file the
// walkthrough would leave beside go.mod, also one git ignores, but not bin/.
func TestCheckoutStateSeesStrayFiles(t *testing.T) {
	testbed.Require(t, "git")
	dir := t.TempDir()
	run := func(args ...string) {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	run("init", "-q")
	if err := os.WriteFile(filepath.Join(dir, ".gitignore"), []byte("/data/\n/bin/\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := checkoutState(t, dir)
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "keygrid-hsm"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := checkoutState(t, dir); got != base {
		t.Fatalf("bin/ counted as a change: %q", got)
	}
	for _, f := range []string{"dek.bin", "data/admin.token"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := checkoutState(t, dir); got == base {
			t.Fatalf("%s not seen", f)
		}
		os.RemoveAll(filepath.Join(dir, strings.Split(f, "/")[0]))
	}
}
