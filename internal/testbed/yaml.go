package testbed

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// ProviderEntry is one provider's entry under providers: in a gateway's
// YAML configuration.
type ProviderEntry interface {
	entryYAML() string
}

// Providers is the providers: block of a gateway's YAML configuration with
// the given entries, in order.
func Providers(entries ...ProviderEntry) string {
	var b strings.Builder
	b.WriteString("providers:\n")
	for _, e := range entries {
		b.WriteString(e.entryYAML())
	}
	return b.String()
}

// PKCS11Provider is a provider of type pkcs11 (a SoftHSM2 token, or one
// behind p11-kit's client module).
type PKCS11Provider struct {
	Name        string // "hsm" when empty
	Library     string // library_path; SoftHSMModule when empty
	TokenLabel  string
	PinEnv      string
	MaxSessions int // omitted when 0
	// Settings are more lines under config:, as "key: value" (or a
	// "# comment").
	Settings []string
}

func (p PKCS11Provider) entryYAML() string {
	name, lib := p.Name, p.Library
	if name == "" {
		name = "hsm"
	}
	if lib == "" {
		lib = SoftHSMModule
	}
	lines := []string{"library_path: " + lib, "token_label: " + p.TokenLabel, "pin_env: " + p.PinEnv}
	if p.MaxSessions != 0 {
		lines = append(lines, "max_sessions: "+strconv.Itoa(p.MaxSessions))
	}
	return entry(name, "pkcs11", append(lines, p.Settings...))
}

// SoftwareProvider is the software provider (named "software"), its master
// key from an environment variable or a file.
type SoftwareProvider struct {
	MasterKeyEnv  string
	MasterKeyFile string
}

func (p SoftwareProvider) entryYAML() string {
	var lines []string
	if p.MasterKeyEnv != "" {
		lines = append(lines, "master_key_env: "+p.MasterKeyEnv)
	}
	if p.MasterKeyFile != "" {
		lines = append(lines, "master_key_file: "+p.MasterKeyFile)
	}
	return entry("software", "", lines)
}

// entry is "  name:\n    type: typ\n    config:\n      line\n…" (no type
// line when typ is "": the type defaults to the name).
func entry(name, typ string, config []string) string {
	var b strings.Builder
	b.WriteString("  " + name + ":\n")
	if typ != "" {
		b.WriteString("    type: " + typ + "\n")
	}
	if len(config) == 0 {
		return b.String()
	}
	b.WriteString("    config:\n")
	for _, l := range config {
		b.WriteString("      " + l + "\n")
	}
	return b.String()
}

// WriteConfig writes yaml to keygrid.yaml in a fresh temporary directory
// (mode 0600) and returns its path.
func WriteConfig(tb testing.TB, yaml string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "keygrid.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}
