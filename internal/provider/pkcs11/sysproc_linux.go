package pkcs11

import "syscall"

// hostSysProcAttr: a host dies with the gateway (it is killed when the
// gateway's thread that started it ends: the gateway locks none, so in
// practice when the gateway exits) and is in its own process group, out of
// reach of a terminal's signals meant for the gateway.
func hostSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
