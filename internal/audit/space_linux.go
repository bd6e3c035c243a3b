package audit

import "syscall"

// freeBytes returns the bytes available to unprivileged writers on the
// file system holding dir (ok false when unknown).
func freeBytes(dir string) (uint64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return st.Bavail * uint64(st.Bsize), true
}
