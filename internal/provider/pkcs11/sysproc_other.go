//go:build !linux

package pkcs11

import "syscall"

func hostSysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
