package fsutil

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// leftovers lists the files of dir other than want.
func leftovers(t *testing.T, dir string, want ...string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	keep := map[string]bool{}
	for _, w := range want {
		keep[w] = true
	}
	var extra []string
	for _, e := range ents {
		if !keep[e.Name()] {
			extra = append(extra, e.Name())
		}
	}
	return extra
}

func TestWriteFileReplacesContentAtomically(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	if err := WriteFile(p, []byte("first"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A reader holding the old file keeps reading the old content: the new
	// one is another inode renamed over the name, not a rewrite in place.
	old, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := WriteFile(p, []byte("second, longer"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "second, longer" {
		t.Fatalf("content %q", b)
	}
	if b, _ := io.ReadAll(old); string(b) != "first" {
		t.Fatalf("the old file was changed in place: %q", b)
	}
	if extra := leftovers(t, dir, "state"); len(extra) != 0 {
		t.Fatalf("temporary files left: %v", extra)
	}
}

func TestWriteFileKeepsPermissionsAsAsked(t *testing.T) {
	old := syscall.Umask(0o077) // a umask that would strip group and other bits
	defer syscall.Umask(old)
	dir := t.TempDir()
	for _, perm := range []fs.FileMode{0o600, 0o640, 0o644, 0o400} {
		p := filepath.Join(dir, perm.String())
		if err := WriteFile(p, []byte("x"), perm); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != perm {
			t.Fatalf("mode %v (%v), want %v", fi.Mode().Perm(), err, perm)
		}
	}
	// Replacing a file gives the mode asked now, not the old file's.
	p := filepath.Join(dir, "replaced")
	if err := WriteFile(p, []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("b"), 0o600); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("replaced file mode %v, want 0600", fi.Mode().Perm())
	}
}

// In a directory the process may not write, WriteFile and CreateFile fail
// with a permission error and the file there keeps its content. Root
// writes anywhere, so as root the checks run in a copy of this test binary
// as user nobody.
func TestWriteFileFailsInReadOnlyDirectory(t *testing.T) {
	// Not t.TempDir: its parent is private to this user, and the check may
	// run as another.
	base, err := os.MkdirTemp("", "fsutil-ro-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	dir := filepath.Join(base, "ro")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(filepath.Join(dir, "state"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o755) }) // runs before the RemoveAll
	if os.Geteuid() != 0 {
		checkReadOnlyDir(t, dir)
		return
	}
	// Let nobody reach the directory and run a copy of the test binary.
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "fsutil.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestReadOnlyDirAsNobody$", "-test.count=1", "-test.v")
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "FSUTIL_TEST_READONLY_DIR="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestReadOnlyDirAsNobody") {
		t.Fatalf("the checks as user nobody: %v\n%s", err, out)
	}
}

// TestReadOnlyDirAsNobody is TestWriteFileFailsInReadOnlyDirectory's check
// in a process without root (it runs only from there).
func TestReadOnlyDirAsNobody(t *testing.T) {
	dir := os.Getenv("FSUTIL_TEST_READONLY_DIR")
	if dir == "" {
		t.Skip("run by TestWriteFileFailsInReadOnlyDirectory")
	}
	if os.Geteuid() == 0 {
		t.Fatal("still root")
	}
	checkReadOnlyDir(t, dir)
}

func checkReadOnlyDir(t *testing.T, dir string) {
	t.Helper()
	p := filepath.Join(dir, "state")
	if err := WriteFile(p, []byte("new"), 0o644); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("WriteFile in a read-only directory: %v, want ErrPermission", err)
	}
	if err := WriteFileFunc(p, 0o644, func(w io.Writer) error { return nil }); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("WriteFileFunc in a read-only directory: %v, want ErrPermission", err)
	}
	if err := CreateFile(filepath.Join(dir, "other"), []byte("new"), 0o644); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("CreateFile in a read-only directory: %v, want ErrPermission", err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "kept" {
		t.Fatalf("content after the failed writes: %q %v", b, err)
	}
	if extra := leftovers(t, dir, "state"); len(extra) != 0 {
		t.Fatalf("files left: %v", extra)
	}
}

func TestWriteFileFuncErrorLeavesTargetUntouched(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "backup")
	if err := WriteFile(p, []byte("older backup"), 0o600); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("store read failed")
	err := WriteFileFunc(p, 0o600, func(w io.Writer) error {
		w.Write([]byte("half a backu"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("WriteFileFunc: %v, want the write error", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "older backup" {
		t.Fatalf("content after the failed write: %q", b)
	}
	if extra := leftovers(t, dir, "backup"); len(extra) != 0 {
		t.Fatalf("temporary files left: %v", extra)
	}
	if err := WriteFileFunc(p, 0o600, func(w io.Writer) error { _, err := w.Write([]byte("new backup")); return err }); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "new backup" {
		t.Fatalf("content %q", b)
	}
}

func TestCreateFileNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	if err := CreateFile(p, []byte("material"), 0o600); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
	if err := CreateFile(p, []byte("other"), 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("CreateFile over an existing file: %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(p); !bytes.Equal(b, []byte("material")) {
		t.Fatalf("content %q", b)
	}
	if extra := leftovers(t, dir, "key"); len(extra) != 0 {
		t.Fatalf("temporary files left: %v", extra)
	}
}

func TestSyncDirErrors(t *testing.T) {
	if err := SyncDir(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if err := SyncDir(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("SyncDir of a missing directory: %v", err)
	}
}
