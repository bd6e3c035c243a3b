package pkcs11

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/cloudhsm"
	"github.com/keygrid/keygrid-hsm/internal/duration"
)

// Provider types.
const (
	TypePKCS11      = "pkcs11"
	TypeAWSCloudHSM = "aws-cloudhsm"
)

// CloudHSM defaults (Client SDK 5).
const (
	CloudHSMLibrary = "/opt/cloudhsm/lib/libcloudhsm_pkcs11.so"
	CloudHSMPinEnv  = "CLOUDHSM_PIN"
)

// Settings are the PKCS#11 settings of a provider instance. They may stand
// directly in the instance's `config` block or under its `pkcs11:` key (the
// shape of the seed's aws-cloudhsm block).
type Settings struct {
	LibraryPath string `yaml:"library_path"`
	// Token selection: a label is preferred (SoftHSM2 reassigns slot ids);
	// a serial or a slot id also work, and several may be combined.
	TokenLabel  string `yaml:"token_label"`
	TokenSerial string `yaml:"token_serial"`
	SlotID      *uint  `yaml:"slot_id"`
	// The user PIN comes from an environment variable or a file, never from
	// the YAML itself. CloudHSM's is CU_user:password.
	PinEnv  string `yaml:"pin_env"`
	PinFile string `yaml:"pin_file"`
	// MaxSessions caps the session pool (default 16, and never above the
	// token's MaxRwSessionCount).
	MaxSessions int `yaml:"max_sessions"`
}

// Config is the `config` block of a pkcs11 or aws-cloudhsm provider.
type Config struct {
	Settings `yaml:",inline"`
	PKCS11   *Settings `yaml:"pkcs11"`

	// Region and ClusterID name the CloudHSM cluster (aws-cloudhsm only).
	// With both set, the provider watches the cluster through the
	// management API (cloudhsmv2 DescribeClusters) for health and metrics;
	// the client library's own configuration still points it at the HSMs.
	// See cluster.go.
	Region    string `yaml:"region"`
	ClusterID string `yaml:"cluster_id"`
	// UseInstanceRole lets the AWS credential chain use the EC2 instance
	// role (the instance metadata service); otherwise it is not asked.
	UseInstanceRole bool `yaml:"use_instance_role"`
	// ClusterPollInterval is the time between two DescribeClusters
	// (default 60s).
	ClusterPollInterval duration.Duration `yaml:"cluster_poll_interval"`
	// CloudHSMEndpoint replaces the management API's regional endpoint (a
	// VPC endpoint).
	CloudHSMEndpoint string `yaml:"cloudhsm_endpoint"`

	// OperationTimeout bounds one HSM operation, waiting for a session
	// included (default 5s).
	OperationTimeout duration.Duration `yaml:"operation_timeout"`
	// BusyRetries is how often an idempotent operation is retried when the
	// HSM reports itself busy (CloudHSM's CKR_FUNCTION_FAILED; default 3 on
	// aws-cloudhsm, 0 elsewhere).
	BusyRetries *int `yaml:"busy_retries"`
	// SerializeKeyChanges makes key generation and deletion one at a time
	// in this process, and never beside an object search. SoftHSM2 fails
	// token object creation that runs beside another creation or a
	// C_FindObjects (CKR_GENERAL_ERROR, CKR_TEMPLATE_INCONSISTENT; SoftHSMv2
	// issue 573). Default true on pkcs11, false on aws-cloudhsm.
	SerializeKeyChanges *bool `yaml:"serialize_key_changes"`
	// SerializeCalls makes calls into the module one at a time, for a
	// module that is not safe for concurrent calls. p11-kit's client module
	// (0.24) is one: when its server dies under concurrent calls, a thread
	// can be left reading a closed and reused socket forever. Default
	// false.
	SerializeCalls bool `yaml:"serialize_calls"`
	// Isolation is where the module runs: "process" (the default) loads it
	// only in a child process of the gateway, one per module path, so that
	// a module that hangs or crashes is killed and restarted instead of
	// taking the gateway with it; "in-process" loads it into the gateway.
	Isolation string `yaml:"isolation"`
	// RescanOnMiss: when no object has a key's CKA_ID, make the module
	// re-read the token (C_Finalize + C_Initialize, at most once a second
	// per module) and look once more before answering KEY_NOT_FOUND.
	// SoftHSM2's file backend does not see an object another process made
	// when its own change to the token came right after (rescan.go).
	// Default: on when the module is SoftHSM2, off otherwise.
	RescanOnMiss *bool `yaml:"rescan_on_miss"`
}

// resolved is a validated configuration with the type's defaults applied.
type resolved struct {
	Settings
	typ              string
	pin              string
	opTimeout        time.Duration
	maxGCMBytes      int // CloudHSM: C_Encrypt/C_Decrypt buffers of AES-GCM are at most 16 KiB
	busyRetries      int
	serializeChanges bool
	serializeCalls   bool
	isolation        string            // IsolationProcess or IsolationInProcess
	rescanOnMiss     *bool             // nil: on for SoftHSM2
	firstSlotDefault bool              // CloudHSM: one token; take the first slot when no label matches
	cluster          *cloudhsm.Options // nil: no cluster to watch
}

// resolve merges the nested block, applies the defaults of typ and reads the
// PIN. Errors name the field and never carry the PIN.
func (c Config) resolve(typ, field string) (resolved, error) {
	r := resolved{Settings: c.Settings, typ: typ}
	if c.PKCS11 != nil {
		n := *c.PKCS11
		merge := func(dst *string, src, name string) error {
			if src == "" {
				return nil
			}
			if *dst != "" && *dst != src {
				return fmt.Errorf("%s: %s is set both at the top and under pkcs11", field, name)
			}
			*dst = src
			return nil
		}
		for _, m := range []struct {
			dst       *string
			src, name string
		}{{&r.LibraryPath, n.LibraryPath, "library_path"}, {&r.TokenLabel, n.TokenLabel, "token_label"},
			{&r.TokenSerial, n.TokenSerial, "token_serial"}, {&r.PinEnv, n.PinEnv, "pin_env"}, {&r.PinFile, n.PinFile, "pin_file"}} {
			if err := merge(m.dst, m.src, m.name); err != nil {
				return r, err
			}
		}
		if n.SlotID != nil {
			if r.SlotID != nil && *r.SlotID != *n.SlotID {
				return r, fmt.Errorf("%s: slot_id is set both at the top and under pkcs11", field)
			}
			r.SlotID = n.SlotID
		}
		if n.MaxSessions != 0 {
			if r.MaxSessions != 0 && r.MaxSessions != n.MaxSessions {
				return r, fmt.Errorf("%s: max_sessions is set both at the top and under pkcs11", field)
			}
			r.MaxSessions = n.MaxSessions
		}
	}
	cluster, err := c.clusterOptions(typ, field)
	if err != nil {
		return r, err
	}
	r.cluster = cluster
	cloud := typ == TypeAWSCloudHSM
	r.serializeChanges = !cloud
	r.serializeCalls = c.SerializeCalls
	switch c.Isolation {
	case "", IsolationProcess:
		r.isolation = IsolationProcess
	case IsolationInProcess:
		r.isolation = IsolationInProcess
	default:
		return r, fmt.Errorf("%s.isolation: must be %q or %q", field, IsolationProcess, IsolationInProcess)
	}
	if c.SerializeKeyChanges != nil {
		r.serializeChanges = *c.SerializeKeyChanges
	}
	r.rescanOnMiss = c.RescanOnMiss
	if cloud {
		if r.LibraryPath == "" {
			r.LibraryPath = CloudHSMLibrary
		}
		if r.PinEnv == "" && r.PinFile == "" {
			r.PinEnv = CloudHSMPinEnv
		}
		r.firstSlotDefault = true
		r.maxGCMBytes = 16 * 1024
		r.busyRetries = 3
	}
	if c.BusyRetries != nil {
		if *c.BusyRetries < 0 || *c.BusyRetries > 10 {
			return r, fmt.Errorf("%s.busy_retries: must be between 0 and 10", field)
		}
		r.busyRetries = *c.BusyRetries
	}
	if r.LibraryPath == "" {
		return r, fmt.Errorf("%s.library_path: required (the PKCS#11 module to load)", field)
	}
	if r.MaxSessions < 0 || r.MaxSessions > 1024 {
		return r, fmt.Errorf("%s.max_sessions: must be between 1 and 1024", field)
	}
	if r.MaxSessions == 0 {
		r.MaxSessions = 16
	}
	r.opTimeout = c.OperationTimeout.D()
	if r.opTimeout < 0 {
		return r, fmt.Errorf("%s.operation_timeout: must not be negative", field)
	}
	if r.opTimeout == 0 {
		r.opTimeout = 5 * time.Second
	}
	pin, err := readPIN(r.PinEnv, r.PinFile, field)
	if err != nil {
		return r, err
	}
	if cloud && !strings.Contains(pin, ":") {
		return r, fmt.Errorf("%s: the CloudHSM PIN must have the form CU_user:password (from %s)", field, pinSource(r.PinEnv, r.PinFile))
	}
	r.pin = pin
	return r, nil
}

func pinSource(env, file string) string {
	if env != "" {
		return "environment variable " + env
	}
	return "file " + file
}

// errNoPIN is returned when no PIN is configured or found.
var errNoPIN = errors.New("no PIN")

func readPIN(env, file, field string) (string, error) {
	switch {
	case env != "" && file != "":
		return "", fmt.Errorf("%s: set pin_env or pin_file, not both", field)
	case env != "":
		v, ok := os.LookupEnv(env)
		if !ok || v == "" {
			return "", fmt.Errorf("%s.pin_env: environment variable %s is empty or unset: %w", field, env, errNoPIN)
		}
		return v, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("%s.pin_file: %w", field, err)
		}
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" {
			return "", fmt.Errorf("%s.pin_file: %s is empty: %w", field, file, errNoPIN)
		}
		return v, nil
	}
	return "", fmt.Errorf("%s: pin_env or pin_file is required: %w", field, errNoPIN)
}

// tokenInfo is what slot selection needs of a slot.
type tokenInfo struct {
	slot   uint
	label  string
	serial string
}

// selectSlot picks the configured token among the slots that hold one. A
// label or serial (both must match when both are set) that matches exactly
// one token decides; slot_id narrows the choice only when it matches (a
// module's slot ids need not start at 0 or stay stable: SoftHSM2 has no
// slot 0). CloudHSM's first-slot fallback (firstSlotDefault) applies only
// when the module has a single token. Anything else is an error that lists
// the tokens present: a wrong token is never picked by listing order.
func selectSlot(tokens []tokenInfo, s Settings, firstSlotDefault bool) (tokenInfo, error) {
	if len(tokens) == 0 {
		return tokenInfo{}, errors.New("the module lists no slot with a token")
	}
	byName := s.TokenLabel != "" || s.TokenSerial != ""
	match := tokens
	if byName {
		match = nil
		for _, t := range tokens {
			if (s.TokenLabel == "" || t.label == s.TokenLabel) && (s.TokenSerial == "" || t.serial == s.TokenSerial) {
				match = append(match, t)
			}
		}
	}
	if s.SlotID != nil {
		var inSlot []tokenInfo
		for _, t := range match {
			if t.slot == *s.SlotID {
				inSlot = append(inSlot, t)
			}
		}
		if len(inSlot) > 0 || !byName {
			match = inSlot
		}
	}
	switch {
	case len(match) == 1:
		return match[0], nil
	case len(match) == 0 && firstSlotDefault && len(tokens) == 1:
		// CloudHSM has one token per cluster; its label is not the
		// partition name in every SDK version.
		return tokens[0], nil
	}
	var have []string
	for _, t := range tokens {
		have = append(have, fmt.Sprintf("%q (serial %s, slot %d)", t.label, t.serial, t.slot))
	}
	want := []string{}
	if s.TokenLabel != "" {
		want = append(want, "label "+s.TokenLabel)
	}
	if s.TokenSerial != "" {
		want = append(want, "serial "+s.TokenSerial)
	}
	if s.SlotID != nil {
		want = append(want, fmt.Sprintf("slot %d", *s.SlotID))
	}
	switch {
	case len(match) > 1 && len(want) == 0:
		return tokenInfo{}, fmt.Errorf("several tokens are present (%s); set token_label", strings.Join(have, ", "))
	case len(match) > 1:
		return tokenInfo{}, fmt.Errorf("%d tokens match %s; set token_serial to choose one; the module has %s",
			len(match), strings.Join(want, ", "), strings.Join(have, ", "))
	}
	return tokenInfo{}, fmt.Errorf("no token with %s; the module has %s", strings.Join(want, ", "), strings.Join(have, ", "))
}
