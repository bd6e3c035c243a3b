// Package testbed starts the real parts the tests run against: SoftHSM2
// tokens, a p11-kit server in front of them (the network to the HSM), and
// PostgreSQL. When a part is missing, a test skips — or fails, when
// KEYGRID_REQUIRE_SOFTHSM=1 (as in CI).
package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// SoftHSMModule is Debian's SoftHSM2 PKCS#11 module.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// Required reports whether missing parts must fail tests (CI).
func Required() bool { return os.Getenv("KEYGRID_REQUIRE_SOFTHSM") == "1" }

// Missing returns a description of the first missing tool or file, or "".
func Missing(tools ...string) string {
	for _, t := range tools {
		if filepath.IsAbs(t) {
			if _, err := os.Stat(t); err != nil {
				return t
			}
			continue
		}
		if _, err := exec.LookPath(t); err != nil {
			return t
		}
	}
	return ""
}

// Require skips the test when a tool is missing, or fails it when parts are
// required.
func Require(tb testing.TB, tools ...string) {
	tb.Helper()
	if m := Missing(tools...); m != "" {
		if Required() {
			tb.Fatalf("%s is missing and KEYGRID_REQUIRE_SOFTHSM=1 (run scripts/test-deps.sh)", m)
		}
		tb.Skipf("%s is missing (run scripts/test-deps.sh)", m)
	}
}

// SoftHSM is a SoftHSM2 configuration with its own token directory.
type SoftHSM struct {
	Dir   string // token directory
	Conf  string // SOFTHSM2_CONF file
	Label string
	PIN   string
	SOPIN string
}

// NewSoftHSM writes a SoftHSM2 configuration under dir and initializes a
// token with label and user PIN.
func NewSoftHSM(dir, label, pin string) (*SoftHSM, error) {
	s := &SoftHSM{Dir: filepath.Join(dir, "tokens"), Conf: filepath.Join(dir, "softhsm2.conf"), Label: label, PIN: pin, SOPIN: "so-" + pin}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", s.Dir)
	if err := os.WriteFile(s.Conf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if err := s.AddToken(label, pin); err != nil {
		return nil, err
	}
	return s, nil
}

// AddToken initializes one more token in the same directory.
func (s *SoftHSM) AddToken(label, pin string) error {
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "so-"+pin, "--pin", pin)
	cmd.Env = s.Env()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("softhsm2-util --init-token: %v: %s", err, out)
	}
	return nil
}

// Env is the environment of a process using this SoftHSM2 configuration.
func (s *SoftHSM) Env() []string { return append(os.Environ(), "SOFTHSM2_CONF="+s.Conf) }

// Tool returns a pkcs11-tool command on this token, logged in.
func (s *SoftHSM) Tool(args ...string) *exec.Cmd {
	base := []string{"--module", SoftHSMModule, "--token-label", s.Label, "--login", "--pin", s.PIN}
	cmd := exec.Command("pkcs11-tool", append(base, args...)...)
	cmd.Env = s.Env()
	return cmd
}
