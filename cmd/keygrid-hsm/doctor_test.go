package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// `keygrid-hsm doctor` on a real SoftHSM2 token: every check passes with the
// right settings; a wrong PIN, a missing token and a wrong library path each
// give one clear FAIL line and a non-zero exit, and the PIN is never printed.
func TestDoctor(t *testing.T) {
	testbed.Require(t, "softhsm2-util", testbed.SoftHSMModule)
	dir := t.TempDir()
	const pin = "doctor-pin-9876"
	soft, err := testbed.NewSoftHSM(dir, "keygrid-doctor", pin)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", soft.Conf)
	write := func(library, label, pinEnv string) string {
		return testbed.WriteConfig(t, "data_dir: "+filepath.Join(dir, "data")+"\n"+
			testbed.Providers(testbed.PKCS11Provider{Library: library, TokenLabel: label, PinEnv: pinEnv}))
	}
	t.Setenv("DOCTOR_PIN", pin)
	t.Setenv("DOCTOR_WRONG_PIN", "not-"+pin)
	for _, c := range []struct {
		name, library, label, pinEnv string
		failCheck                    string // "" = all pass
	}{
		{"ok", testbed.SoftHSMModule, "keygrid-doctor", "DOCTOR_PIN", ""},
		{"fail wrong pin", testbed.SoftHSMModule, "keygrid-doctor", "DOCTOR_WRONG_PIN", "login"},
		{"fail missing token", testbed.SoftHSMModule, "no-such-token", "DOCTOR_PIN", "token"},
		{"fail wrong library path", "/nonexistent/libpkcs11.so", "keygrid-doctor", "DOCTOR_PIN", "module"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, _ := cliRun("", "doctor", "--config", write(c.library, c.label, c.pinEnv))
			if strings.Contains(out, pin) {
				t.Fatalf("the PIN was printed:\n%s", out)
			}
			fails := []string{}
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "FAIL") {
					fails = append(fails, l)
				}
			}
			if c.failCheck == "" {
				for _, check := range []string{"module", "slots", "token", "login", "mechanisms", "sign/verify"} {
					if !strings.Contains(out, "PASS  "+check) {
						t.Errorf("no PASS line for %s:\n%s", check, out)
					}
				}
				if code != 0 || len(fails) != 0 {
					t.Fatalf("exit %d with failures:\n%s", code, out)
				}
				return
			}
			if code == 0 || len(fails) != 1 || !strings.HasPrefix(fails[0], "FAIL  "+c.failCheck) {
				t.Fatalf("exit %d; want exactly one FAIL line for %s:\n%s", code, c.failCheck, out)
			}
		})
	}
}
