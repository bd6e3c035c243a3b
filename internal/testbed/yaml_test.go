package testbed

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider/pkcs11"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
)

// The provider entries load as the gateway reads them: config.Load accepts
// them, and each provider's own decoder (unknown fields refused) finds
// every setting.
func TestProvidersYAMLLoads(t *testing.T) {
	yaml := "default_provider: hsm\n" + Providers(
		PKCS11Provider{TokenLabel: "tb-token", PinEnv: "TB_PIN", MaxSessions: 3, Settings: []string{
			"# a comment line", "operation_timeout: 2s", "serialize_calls: true"}},
		PKCS11Provider{Name: "other", Library: "/opt/lib.so", TokenLabel: "t2", PinEnv: "TB_PIN2"},
		SoftwareProvider{MasterKeyFile: "/run/master.key"},
	)
	path := WriteConfig(t, yaml)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 || filepath.Base(path) != "keygrid.yaml" {
		t.Fatalf("WriteConfig: %v %v", fi, err)
	}
	cfg, err := config.Load(path, config.Flags{DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("config.Load:\n%s\n%v", yaml, err)
	}
	if got := cfg.ProviderType("hsm"); got != "pkcs11" {
		t.Errorf("hsm type %q", got)
	}
	var hsm, other pkcs11.Config
	if err := cfg.DecodeProviderConfig("hsm", &hsm); err != nil {
		t.Fatal(err)
	}
	if hsm.LibraryPath != SoftHSMModule || hsm.TokenLabel != "tb-token" || hsm.PinEnv != "TB_PIN" || hsm.MaxSessions != 3 ||
		time.Duration(hsm.OperationTimeout) != 2*time.Second || !hsm.SerializeCalls {
		t.Errorf("hsm settings %+v", hsm)
	}
	if err := cfg.DecodeProviderConfig("other", &other); err != nil {
		t.Fatal(err)
	}
	if other.LibraryPath != "/opt/lib.so" || other.TokenLabel != "t2" || other.PinEnv != "TB_PIN2" || other.MaxSessions != 0 {
		t.Errorf("other settings %+v", other)
	}
	var sw software.Config
	if err := cfg.DecodeProviderConfig("software", &sw); err != nil {
		t.Fatal(err)
	}
	if cfg.ProviderType("software") != "software" || sw.MasterKeyFile != "/run/master.key" || sw.MasterKeyEnv != "" {
		t.Errorf("software settings %+v", sw)
	}
}

// LogBuffer keeps every write of many goroutines whole.
func TestLogBufferConcurrentWrites(t *testing.T) {
	var l LogBuffer
	log := JSONLogger(&l)
	done := make(chan struct{})
	for g := 0; g < 8; g++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := 0; i < 50; i++ {
				log.Debug("line", "g", g, "i", i)
			}
		}()
	}
	for g := 0; g < 8; g++ {
		<-done
	}
	lines := strings.Split(strings.TrimSuffix(l.String(), "\n"), "\n")
	if len(lines) != 400 {
		t.Fatalf("%d lines, want 400", len(lines))
	}
	for _, ln := range lines {
		if !strings.HasPrefix(ln, "{") || !strings.HasSuffix(ln, "}") || !strings.Contains(ln, `"level":"DEBUG"`) {
			t.Fatalf("torn or filtered line %q", ln)
		}
	}
	if b := l.Bytes(); len(b) != len(l.String()) {
		t.Fatal("Bytes and String differ")
	}
}
