package config

import (
	"errors"
	"testing"
	"time"
)

func TestAuditSigningKeyDefaultsToAnHSM(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"embedded default", "", "software/keygrid-audit"},
		{"software only", "providers:\n  software: {}\n", "software/keygrid-audit"},
		{"an HSM beside software", "providers:\n  software: {}\n  hsm:\n    type: pkcs11\n", "hsm/keygrid-audit"},
		{"cloudhsm", "providers:\n  aws-cloudhsm: {}\n  software: {}\n", "aws-cloudhsm/keygrid-audit"},
		{"set", "providers:\n  software: {}\naudit:\n  signing_key: software/mine\n", "software/mine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.yaml != "" {
				path = write(t, tc.yaml)
			}
			c, err := Load(path, Flags{DataDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			if c.Audit.SigningKey != tc.want || c.Audit.CheckpointInterval.D() != time.Minute {
				t.Fatalf("signing key %q, interval %s; want %q, 1m", c.Audit.SigningKey, c.Audit.CheckpointInterval.D(), tc.want)
			}
			if err := c.Validate([]string{"software", "pkcs11", "aws-cloudhsm"}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestAuditCheckpointSettingsFromEnvAndRefused(t *testing.T) {
	t.Setenv("KEYGRID_AUDIT_CHECKPOINT_INTERVAL", "15s")
	t.Setenv("KEYGRID_AUDIT_SIGNING_KEY", "software/from-env")
	c, err := Load(write(t, "providers:\n  software: {}\n"), Flags{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if c.Audit.CheckpointInterval.D() != 15*time.Second || c.Audit.SigningKey != "software/from-env" {
		t.Fatalf("from the environment: %s, %q", c.Audit.CheckpointInterval.D(), c.Audit.SigningKey)
	}
	for _, tc := range []struct{ key, interval, field string }{
		{"nohsm/k", "1m", "audit.signing_key"},
		{"software", "1m", "audit.signing_key"},
		{"software/bad name", "1m", "audit.signing_key"},
		{"software/k", "10ms", "audit.checkpoint_interval"},
	} {
		t.Setenv("KEYGRID_AUDIT_SIGNING_KEY", tc.key)
		t.Setenv("KEYGRID_AUDIT_CHECKPOINT_INTERVAL", tc.interval)
		c, err := Load(write(t, "providers:\n  software: {}\n"), Flags{DataDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		var ce *Error
		if err := c.Validate([]string{"software"}); !errors.As(err, &ce) || ce.Field != tc.field {
			t.Fatalf("%s, %s: %v, want an error on %s", tc.key, tc.interval, err, tc.field)
		}
	}
	t.Setenv("KEYGRID_AUDIT_SIGNING_KEY", "off")
	t.Setenv("KEYGRID_AUDIT_CHECKPOINT_INTERVAL", "1m")
	c, _ = Load(write(t, "providers:\n  software: {}\n"), Flags{DataDir: t.TempDir()})
	if _, _, on := c.Audit.AuditSigningKey(); on || c.Validate([]string{"software"}) != nil {
		t.Fatal("signing_key off: checkpoints should be off and the configuration valid")
	}
}
