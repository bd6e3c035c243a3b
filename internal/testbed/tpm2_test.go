package testbed

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// A bed starts with one token that an independent client (pkcs11-tool)
// logs into; bad PINs do not lock the TPM out (the dictionary-attack
// lockout is disabled); Stop leaves none of its processes running.
func TestTPM2BedLifecycle(t *testing.T) {
	const pin = "bed-pin-2468"
	b := NewTPM2(t, "kg-bed", pin)
	slots := exec.Command("pkcs11-tool", "--module", b.Module, "--list-token-slots")
	slots.Env = b.Env()
	out, err := slots.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "token label        : kg-bed") {
		t.Fatalf("pkcs11-tool --list-token-slots: %v\n%s", err, out)
	}
	for i := 0; i < 4; i++ {
		cmd := b.Tool("--list-objects")
		cmd.Args[len(cmd.Args)-2] = "wrong-pin" // the value of --pin
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "CKR_PIN_INCORRECT") {
			t.Fatalf("login with a wrong PIN: %v\n%s", err, out)
		}
	}
	if out, err := b.Tool("--list-objects").CombinedOutput(); err != nil {
		t.Fatalf("the right PIN after 4 wrong ones: %v\n%s", err, out)
	}
	var pids []int
	for _, p := range b.procs {
		pids = append(pids, p.cmd.Process.Pid)
	}
	if len(pids) != 3 {
		t.Fatalf("%d processes, want swtpm, dbus-daemon and tpm2-abrmd", len(pids))
	}
	b.Stop()
	for _, pid := range pids {
		// Reaped by Stop: the pid names no process of ours any more.
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("process %d still runs after Stop", pid)
		}
	}
	if out, err := b.Tool("--list-objects").CombinedOutput(); err == nil {
		t.Fatalf("the token still answers after Stop:\n%s", out)
	}
}
