package config

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/duration"
)

// SigningKeyOff as audit.signing_key turns signed checkpoints off.
const SigningKeyOff = "off"

// DefaultAuditKeyName is the key name of the default audit.signing_key.
const DefaultAuditKeyName = "keygrid-audit"

// defaultCheckpointInterval is audit.checkpoint_interval's default.
const defaultCheckpointInterval = time.Minute

var auditKeyName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// setAuditDefaults fills the checkpoint settings: the interval, and the
// signing key on the first enabled HSM provider (pkcs11, aws-cloudhsm),
// else on the first enabled provider (the software one by default).
func (c *Config) setAuditDefaults() {
	if c.Audit.CheckpointInterval == 0 {
		c.Audit.CheckpointInterval = duration.Duration(defaultCheckpointInterval)
	}
	if c.Audit.SigningKey != "" {
		return
	}
	enabled := c.EnabledProviders()
	for _, n := range enabled {
		if t := c.ProviderType(n); t == "pkcs11" || t == "aws-cloudhsm" {
			c.Audit.SigningKey = n + "/" + DefaultAuditKeyName
			return
		}
	}
	if len(enabled) > 0 {
		c.Audit.SigningKey = enabled[0] + "/" + DefaultAuditKeyName
	}
}

// AuditSigningKey splits audit.signing_key into provider and key name; ok
// is false when checkpoints are off.
func (a Audit) AuditSigningKey() (providerName, keyName string, ok bool) {
	if a.SigningKey == "" || a.SigningKey == SigningKeyOff {
		return "", "", false
	}
	p, k, _ := strings.Cut(a.SigningKey, "/")
	return p, k, true
}

func (c *Config) validateAudit() error {
	if c.Audit.CheckpointInterval < duration.Duration(100*time.Millisecond) {
		return &Error{"audit.checkpoint_interval", "must be at least 100ms"}
	}
	if c.Audit.ReplicaID != "" && !auditKeyName.MatchString(c.Audit.ReplicaID) {
		return &Error{"audit.replica_id", "is 1 to 64 letters, digits, '.', '_' and '-'"}
	}
	p, k, ok := c.Audit.AuditSigningKey()
	if !ok {
		return nil
	}
	if p == "" || !auditKeyName.MatchString(k) {
		return &Error{"audit.signing_key", fmt.Sprintf("%q is not provider/key-name (or %q)", c.Audit.SigningKey, SigningKeyOff)}
	}
	if pc, found := c.Providers[p]; !found || !pc.IsEnabled() {
		return &Error{"audit.signing_key", fmt.Sprintf("provider %q is not an enabled provider", p)}
	}
	return nil
}
