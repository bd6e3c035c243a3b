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
	for {
		err := syscall.Fdatasync(int(of.Fd()))
		if err != syscall.EINTR {
			if err != nil {
				return &os.PathError{Op: "fdatasync", Path: of.Name(), Err: err}
			}
			return nil
		}
	}
}
