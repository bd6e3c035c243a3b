package audit

import (
	"os"
	"syscall"
)

// datasync makes what was appended to f durable with fdatasync(2): the
// data and the metadata needed to read it back (the new file size, the
// blocks), without the timestamps fsync(2) also flushes. A file that is
// not an *os.File (a test's fault-injecting wrapper) is Synced.
func datasync(f file) error {
	of, ok := f.(*os.File)
	if !ok {
		return f.Sync()
	}
	rc, err := of.SyscallConn()
	if err != nil {
		return err
	}
	// Control holds the descriptor for the length of the call: a Close
	// meanwhile (a rotation) waits, and the number is never another file's.
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for serr = syscall.Fdatasync(int(fd)); serr == syscall.EINTR; serr = syscall.Fdatasync(int(fd)) {
		}
	}); err != nil {
		return &os.PathError{Op: "fdatasync", Path: of.Name(), Err: err}
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: of.Name(), Err: serr}
	}
	return nil
}
