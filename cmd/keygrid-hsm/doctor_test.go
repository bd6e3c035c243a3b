package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
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

// doctor on SoftHSM2 compares the token with the gateway's whole algorithm
// table: the mechanism list says nothing is missing (SoftHSM2 lists
// CKM_RSA_PKCS_OAEP), yet the token cannot do RSA-OAEP-256 (OAEP with SHA-1
// only), so the algorithms line names it, why, and RSA-OAEP instead; and
// the limit of its AES-KWP (whole multiples of 8 bytes) is stated.
func TestDoctorListsWhatTheTokenCannotDo(t *testing.T) {
	testbed.Require(t, "softhsm2-util", testbed.SoftHSMModule)
	dir := t.TempDir()
	const pin = "doctor-algs-2468"
	soft, err := testbed.NewSoftHSM(dir, "keygrid-doctor-algs", pin)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", soft.Conf)
	t.Setenv("DOCTOR_ALGS_PIN", pin)
	cfg := testbed.WriteConfig(t, "data_dir: "+filepath.Join(dir, "data")+"\n"+
		testbed.Providers(testbed.PKCS11Provider{Library: testbed.SoftHSMModule, TokenLabel: "keygrid-doctor-algs", PinEnv: "DOCTOR_ALGS_PIN"}))
	code, out, errOut := cliRun("", "doctor", "--config", cfg)
	if code != 0 {
		t.Fatalf("exit %d:\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		fmt.Sprintf(" of the gateway's %d; cannot do: RSA-OAEP-256", len(alg.All())),
		"PASS  algorithms   ",
		"      cannot       RSA-OAEP-256: token lacks CKM_RSA_PKCS_OAEP with SHA-256",
		"; available instead: RSA-OAEP\n",
		"INFO  aes-kwp      key material to wrap must be a multiple of 8 bytes, at most 16384 bytes",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "missing: none") {
		t.Errorf("doctor still says \"missing: none\":\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Errorf("doctor wrote its data directory: %v", err)
	}
}
