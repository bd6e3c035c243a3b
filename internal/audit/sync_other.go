//go:build !linux

package audit

// datasync is Sync where fdatasync(2) is not used.
func datasync(f file) error { return f.Sync() }
