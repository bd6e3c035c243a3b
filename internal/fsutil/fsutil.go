// Package fsutil writes whole files so that a crash or a full disk leaves
// either the old file or the complete new one, never a part: the content
// goes to a temporary file in the same directory, which is fsynced, then
// renamed (or linked) into place, and the directory is fsynced so that the
// new name survives a power loss. Every error is returned; on error the
// temporary file is removed and the target is untouched.
package fsutil

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile replaces path with data, atomically and durably. The file gets
// exactly perm (the umask does not apply).
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	return WriteFileFunc(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteFileFunc is WriteFile with the content written by write (a backup
// streamed from a store, say). When write fails, path is untouched.
func WriteFileFunc(path string, perm fs.FileMode, write func(io.Writer) error) error {
	tmp, err := writeTemp(path, perm, write)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// CreateFile is WriteFile that never replaces: it fails with an error
// matching fs.ErrExist when path exists (the complete file is linked into
// place, so a reader never sees it half written either).
func CreateFile(path string, data []byte, perm fs.FileMode) error {
	tmp, err := writeTemp(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	if err != nil {
		return err
	}
	lerr := os.Link(tmp, path)
	rerr := os.Remove(tmp)
	if lerr != nil {
		return lerr
	}
	if rerr != nil {
		return rerr
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir fsyncs a directory, making the names created, renamed or removed
// in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeTemp writes a complete, fsynced, closed temporary file beside path
// and returns its name.
func writeTemp(path string, perm fs.FileMode, write func(io.Writer) error) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", err
	}
	err = f.Chmod(perm)
	if err == nil {
		err = write(f)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}
