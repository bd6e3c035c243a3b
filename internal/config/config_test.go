package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The seed's CloudHSM block (DESIGN.md §4) must load as written.
const seed = `
providers:
  aws-cloudhsm:
    enabled: true
    config:
      region: "us-west-2"
      cluster_id: "cluster-123456789abcdef0"
      pkcs11:
        library_path: "/opt/cloudhsm/lib/libcloudhsm_pkcs11.so"
        slot_id: 0
        token_label: "keygrid-partition"
        pin_env: "CLOUDHSM_PIN"
`

func write(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keygrid.yaml")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSeedCloudHSMBlockLoads(t *testing.T) {
	c, err := Load(write(t, seed), Flags{})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.ProviderType("aws-cloudhsm"); got != "aws-cloudhsm" {
		t.Fatalf("type %q", got)
	}
	var pc struct {
		Region    string `yaml:"region"`
		ClusterID string `yaml:"cluster_id"`
		PKCS11    struct {
			LibraryPath string `yaml:"library_path"`
			SlotID      *int   `yaml:"slot_id"`
			TokenLabel  string `yaml:"token_label"`
			PinEnv      string `yaml:"pin_env"`
		} `yaml:"pkcs11"`
	}
	if err := c.DecodeProviderConfig("aws-cloudhsm", &pc); err != nil {
		t.Fatal(err)
	}
	if pc.PKCS11.LibraryPath != "/opt/cloudhsm/lib/libcloudhsm_pkcs11.so" || pc.PKCS11.SlotID == nil || *pc.PKCS11.SlotID != 0 ||
		pc.PKCS11.PinEnv != "CLOUDHSM_PIN" || pc.ClusterID != "cluster-123456789abcdef0" {
		t.Fatalf("decoded %+v", pc)
	}
	// A build without that provider type says so, naming it.
	err = c.Validate([]string{"software"})
	var ce *Error
	if !errors.As(err, &ce) || ce.Field != "providers.aws-cloudhsm.type" {
		t.Fatalf("validate without the type: %v", err)
	}
	if err := c.Validate([]string{"software", "aws-cloudhsm"}); err != nil {
		t.Fatalf("validate with the type: %v", err)
	}
}

func TestEmbeddedDefault(t *testing.T) {
	c, err := Load("", Flags{})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Embedded || c.Server.Listen != "127.0.0.1:8080" || c.DataDir != "./data" || c.Storage.Driver != "sqlite" ||
		c.Storage.Path != filepath.Join("data", "keygrid.db") || len(c.EnabledProviders()) != 1 {
		t.Fatalf("embedded default: %+v", c)
	}
	if err := c.Validate([]string{"software"}); err != nil {
		t.Fatal(err)
	}
}

func TestEnvOverrides(t *testing.T) {
	t.Setenv("KEYGRID_LISTEN", "127.0.0.1:9999")
	t.Setenv("KEYGRID_DATA_DIR", "/tmp/kg")
	t.Setenv("KEYGRID_SERVER_REQUEST_TIMEOUT", "7s")
	t.Setenv("KEYGRID_PROVIDERS_AWS_CLOUDHSM_CONFIG_PKCS11_SLOT_ID", "3")
	t.Setenv("KEYGRID_PROVIDERS_AWS_CLOUDHSM_ENABLED", "false")
	c, err := Load(write(t, seed), Flags{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Server.Listen != "127.0.0.1:9999" || c.DataDir != "/tmp/kg" || c.Server.RequestTimeout.D().Seconds() != 7 {
		t.Fatalf("overrides: %+v", c.Server)
	}
	if c.Providers["aws-cloudhsm"].IsEnabled() {
		t.Fatal("enabled override not applied")
	}
	slot := c.Providers["aws-cloudhsm"].Config["pkcs11"].(map[string]any)["slot_id"]
	if slot != 3 {
		t.Fatalf("slot_id override: %#v", slot)
	}
	t.Setenv("KEYGRID_SERVER_MAX_BODY_BYTES", "lots")
	var ce *Error
	if _, err := Load(write(t, seed), Flags{}); !errors.As(err, &ce) || ce.Field != "KEYGRID_SERVER_MAX_BODY_BYTES" {
		t.Fatalf("bad env value: %v", err)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	for name, tc := range map[string]struct{ yaml, field string }{
		"unknown field":                   {"server:\n  lisen: x\n", ""},
		"bad listen":                      {"server:\n  listen: nope\nproviders:\n  software: {}\n", "server.listen"},
		"bad driver":                      {"storage:\n  driver: mysql\nproviders:\n  software: {}\n", "storage.driver"},
		"postgres no dsn":                 {"storage:\n  driver: postgres\nproviders:\n  software: {}\n", "storage.dsn"},
		"no providers":                    {"server:\n  listen: 127.0.0.1:1\n", "providers"},
		"bad default":                     {"default_provider: hsm\nproviders:\n  software: {}\n", "default_provider"},
		"bad log level":                   {"log:\n  level: loud\nproviders:\n  software: {}\n", "log.level"},
		"deletion window below the floor": {"keys:\n  deletion_window: 48h\nproviders:\n  software: {}\n", "keys.deletion_window"},
		"deletion window over 30 days":    {"keys:\n  deletion_window: 721h\nproviders:\n  software: {}\n", "keys.deletion_window"},
		"negative deletion floor":         {"keys:\n  min_deletion_window: -1s\nproviders:\n  software: {}\n", "keys.min_deletion_window"},
		"deletion floor over 30 days":     {"keys:\n  min_deletion_window: 800h\n  deletion_window: 720h\nproviders:\n  software: {}\n", "keys.min_deletion_window"},
		"negative sweep interval":         {"keys:\n  deletion_sweep_interval: -1m\nproviders:\n  software: {}\n", "keys.deletion_sweep_interval"},
		"negative rotation floor":         {"keys:\n  min_rotation_period: -1h\nproviders:\n  software: {}\n", "keys.min_rotation_period"},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := Load(write(t, tc.yaml), Flags{})
			if tc.field == "" {
				if err == nil {
					t.Fatal("want a load error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var ce *Error
			if err := c.Validate([]string{"software"}); !errors.As(err, &ce) || ce.Field != tc.field {
				t.Fatalf("got %v, want field %s", err, tc.field)
			}
		})
	}
}

func TestFlagsWin(t *testing.T) {
	t.Setenv("KEYGRID_LISTEN", "127.0.0.1:9999")
	c, err := Load("", Flags{Listen: "127.0.0.1:7000", DataDir: "/srv/kg"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Server.Listen != "127.0.0.1:7000" || c.Storage.Path != "/srv/kg/keygrid.db" || c.Audit.Path != "/srv/kg/audit.log" {
		t.Fatalf("flags: listen %s, store %s, audit %s", c.Server.Listen, c.Storage.Path, c.Audit.Path)
	}
}

func TestPprofAndCacheTTLValidation(t *testing.T) {
	for name, tc := range map[string]struct{ yaml, field string }{
		"pprof on all interfaces": {"debug:\n  pprof_listen: 0.0.0.0:6060\nproviders:\n  software: {}\n", "debug.pprof_listen"},
		"pprof not host:port":     {"debug:\n  pprof_listen: nope\nproviders:\n  software: {}\n", "debug.pprof_listen"},
		"negative cache ttl":      {"storage:\n  cache_ttl: -1s\nproviders:\n  software: {}\n", "storage.cache_ttl"},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := Load(write(t, tc.yaml), Flags{})
			if err != nil {
				t.Fatal(err)
			}
			var ce *Error
			if err := c.Validate([]string{"software"}); !errors.As(err, &ce) || ce.Field != tc.field {
				t.Fatalf("got %v, want field %s", err, tc.field)
			}
		})
	}
	c, err := Load(write(t, "debug:\n  pprof_listen: 127.0.0.1:6060\nproviders:\n  software: {}\n"), Flags{})
	if err != nil || c.Validate([]string{"software"}) != nil {
		t.Fatalf("loopback pprof refused: %v", err)
	}
}

// The key lifecycle settings: defaults, lowered floors from the file and
// the environment.
func TestKeysLifecycle(t *testing.T) {
	c, err := Load("", Flags{})
	if err != nil {
		t.Fatal(err)
	}
	k := c.Keys
	if k.DeletionWindow.D() != 720*time.Hour || k.MinDeletionWindow.D() != 168*time.Hour ||
		k.DeletionSweepInterval.D() != time.Minute || k.MinRotationPeriod.D() != time.Hour {
		t.Fatalf("defaults %+v", k)
	}
	if err := c.Validate([]string{"software"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYGRID_KEYS_MIN_ROTATION_PERIOD", "2s")
	c, err = Load(write(t, "keys:\n  min_deletion_window: 1s\n  deletion_window: 10s\n  deletion_sweep_interval: 200ms\nproviders:\n  software: {}\n"), Flags{})
	if err != nil {
		t.Fatal(err)
	}
	k = c.Keys
	if k.MinDeletionWindow.D() != time.Second || k.DeletionWindow.D() != 10*time.Second ||
		k.DeletionSweepInterval.D() != 200*time.Millisecond || k.MinRotationPeriod.D() != 2*time.Second {
		t.Fatalf("lowered %+v", k)
	}
	if err := c.Validate([]string{"software"}); err != nil {
		t.Fatal(err)
	}
}

// The attack: a secret pasted into the wrong KEYGRID_* variable must not be
// printed by the error that refuses it, whether parsing or validation
// refuses it.
func TestEnvErrorsNeverPrintTheValue(t *testing.T) {
	const secret = "SECRET-IN-ENV"
	for name, tc := range map[string]struct{ env, want string }{
		"duration":  {"KEYGRID_SERVER_REQUEST_TIMEOUT", "KEYGRID_SERVER_REQUEST_TIMEOUT"},
		"integer":   {"KEYGRID_SERVER_MAX_BODY_BYTES", "KEYGRID_SERVER_MAX_BODY_BYTES"},
		"boolean":   {"KEYGRID_PROVIDERS_SOFTWARE_ENABLED", "KEYGRID_PROVIDERS_SOFTWARE_ENABLED"},
		"listen":    {"KEYGRID_LISTEN", "KEYGRID_LISTEN"},
		"log level": {"KEYGRID_LOG_LEVEL", "KEYGRID_LOG_LEVEL"},
		"default":   {"KEYGRID_DEFAULT_PROVIDER", "KEYGRID_DEFAULT_PROVIDER"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(tc.env, secret)
			c, err := Load(write(t, "providers:\n  software: {}\n"), Flags{})
			if err == nil {
				err = c.Validate([]string{"software"})
			}
			if err == nil {
				t.Fatal("a bad value was accepted")
			}
			if strings.Contains(err.Error(), "SECRET") {
				t.Fatalf("the error prints the value: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("the error does not name the variable %s: %v", tc.want, err)
			}
		})
	}
}

func TestProviderConfigErrorHidesEnvValue(t *testing.T) {
	t.Setenv("KEYGRID_PROVIDERS_HSM_CONFIG_SLOT_ID", "SECRET-IN-ENV")
	c, err := Load(write(t, "providers:\n  hsm:\n    type: pkcs11\n    config:\n      slot_id: \"one\"\n"), Flags{})
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		SlotID int `yaml:"slot_id"`
	}
	err = c.DecodeProviderConfig("hsm", &out)
	if err == nil || strings.Contains(err.Error(), "SECRET") || !strings.Contains(err.Error(), "KEYGRID_PROVIDERS_HSM_CONFIG_SLOT_ID") {
		t.Fatalf("got %v", err)
	}
}
