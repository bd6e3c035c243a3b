// Package config loads the KeyGrid HSM configuration: a YAML file, then
// KEYGRID_* environment overrides, then defaults, then validation with
// errors that name the field.
//
// Every scalar field has an environment variable made of KEYGRID_ and its
// YAML path in upper case joined by '_' (server.listen → KEYGRID_SERVER_LISTEN,
// storage.dsn_env → KEYGRID_STORAGE_DSN_ENV). Providers' settings are
// overridable the same way for the keys the file sets
// (providers.hsm.config.pkcs11.slot_id → KEYGRID_PROVIDERS_HSM_CONFIG_PKCS11_SLOT_ID).
// KEYGRID_LISTEN and KEYGRID_DATA_DIR are short forms of the two most used.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/duration"
	"gopkg.in/yaml.v3"
)

// Config is the whole configuration.
type Config struct {
	DataDir         string                    `yaml:"data_dir"`
	Server          Server                    `yaml:"server"`
	Storage         Storage                   `yaml:"storage"`
	Providers       map[string]ProviderConfig `yaml:"providers"`
	DefaultProvider string                    `yaml:"default_provider"`
	Audit           Audit                     `yaml:"audit"`
	Log             Log                       `yaml:"log"`
	Reconcile       Reconcile                 `yaml:"reconcile"`
	Auth            Auth                      `yaml:"auth"`
	Limits          Limits                    `yaml:"limits"`
	Health          Health                    `yaml:"health"`
	Keys            Keys                      `yaml:"keys"`
	Debug           Debug                     `yaml:"debug"`
	XKS             XKS                       `yaml:"xks"`
	Console         Console                   `yaml:"console"`

	// Embedded is true when no file was given: the zero-configuration
	// default (software provider, SQLite, ./data, 127.0.0.1:8080).
	Embedded bool `yaml:"-"`

	// fromEnv maps each field set from the environment (its YAML path,
	// dotted) to its variable and value, so that an error about the field
	// names the variable and never prints the value.
	fromEnv map[string]envValue
}

type envValue struct{ name, value string }

// Server configures the HTTP listener.
type Server struct {
	Listen            string            `yaml:"listen"`
	ReadHeaderTimeout duration.Duration `yaml:"read_header_timeout"`
	ReadTimeout       duration.Duration `yaml:"read_timeout"`
	WriteTimeout      duration.Duration `yaml:"write_timeout"`
	IdleTimeout       duration.Duration `yaml:"idle_timeout"`
	ShutdownTimeout   duration.Duration `yaml:"shutdown_timeout"`
	// RequestTimeout bounds the work of one request (provider calls
	// included).
	RequestTimeout duration.Duration `yaml:"request_timeout"`
	MaxBodyBytes   int64             `yaml:"max_body_bytes"`
	TLS            TLS               `yaml:"tls"`
	// AllowInsecureHTTP lets the server listen on a non-loopback address
	// without TLS (with a warning).
	AllowInsecureHTTP bool `yaml:"allow_insecure_http"`
}

// Storage configures the metadata store.
type Storage struct {
	Driver string `yaml:"driver"` // sqlite | postgres
	Path   string `yaml:"path"`   // sqlite file, default <data_dir>/keygrid.db
	// DSN (or the environment variable DSNEnv names) is the PostgreSQL
	// connection string; see storage.go.
	DSN    string `yaml:"dsn"`
	DSNEnv string `yaml:"dsn_env"`
	// MigrateOnStart runs the schema migrations when the server starts
	// (default true); when false the schema must already be current.
	MigrateOnStart *bool `yaml:"migrate_on_start"`
	// MaxConns caps the PostgreSQL connection pool of this process
	// (default 16).
	MaxConns int `yaml:"max_conns"`
	// CacheTTL lets key lookups be answered from memory for this long: the
	// bound on how stale a key's state (active, inactive, deleted) written
	// by another process may be here. This process's own writes are seen at
	// once. Default 2s on SQLite (one gateway per database file), 0 on
	// PostgreSQL (every lookup reads the database, as replicas must).
	CacheTTL *duration.Duration `yaml:"cache_ttl"`
}

// CacheTTLOrDefault is the key cache's time to live.
func (s Storage) CacheTTLOrDefault() time.Duration {
	switch {
	case s.CacheTTL != nil:
		return s.CacheTTL.D()
	case s.Driver == "sqlite":
		return 2 * time.Second
	}
	return 0
}

// ProviderConfig is one provider instance.
type ProviderConfig struct {
	Enabled *bool  `yaml:"enabled"`
	Type    string `yaml:"type"` // default: the instance name
	// Config is the type-specific block, decoded by the provider.
	Config map[string]any `yaml:"config"`
}

// IsEnabled reports whether the instance is enabled (default true).
func (p ProviderConfig) IsEnabled() bool { return p.Enabled == nil || *p.Enabled }

// Audit configures the audit log.
type Audit struct {
	Path string `yaml:"path"` // default <data_dir>/audit.log
	// MaxBytes rotates the file when it grows past this size (0: only on
	// SIGHUP); the new file continues the hash chain.
	MaxBytes int64 `yaml:"max_bytes"`
	// FsyncInterval, 0 by default, fsyncs every record before the response
	// is sent. A positive interval trades that for throughput: records are
	// written to the operating system before the response (a killed
	// process loses none) and fsynced every interval (an OS crash or power
	// loss may lose that much). See docs/operations.md.
	FsyncInterval duration.Duration `yaml:"fsync_interval"`
	// SigningKey is the key that signs the audit checkpoints,
	// provider/key-name (see docs/security.md): made on the provider at
	// first start (sign only, never extractable). Default: keygrid-audit
	// on the first enabled pkcs11 or aws-cloudhsm provider, else on the
	// first enabled provider; "off" signs no checkpoints.
	SigningKey string `yaml:"signing_key"`
	// CheckpointInterval is how often a checkpoint is signed while records
	// were written (default 1m); one is also signed at every rotation and
	// at shutdown.
	CheckpointInterval duration.Duration `yaml:"checkpoint_interval"`
	// ReplicaID names this replica's log in its checkpoints. Default: the
	// id kept beside the log in <path>.replica, made from the host name at
	// first start.
	ReplicaID string `yaml:"replica_id"`
}

// Log configures the server log.
type Log struct {
	Level  string `yaml:"level"`  // debug | info | warn | error
	Format string `yaml:"format"` // text | json
}

// Reconcile configures the background repair of interrupted creates and
// deletes.
type Reconcile struct {
	Interval duration.Duration `yaml:"interval"`
	Grace    duration.Duration `yaml:"grace"`
}

// Health configures the background provider health checks that drive
// /ready and the provider health endpoint.
type Health struct {
	Interval duration.Duration `yaml:"interval"` // default 10s
	Timeout  duration.Duration `yaml:"timeout"`  // one check's deadline, default 3s
}

// Keys configures the key lifecycle: scheduled deletion and automatic
// rotation.
type Keys struct {
	// DeletionWindow is how long a deleted key waits, refusing every
	// operation, before it is destroyed, when the request names no window
	// (default 720h, 30 days; at most 30 days, at least
	// MinDeletionWindow).
	DeletionWindow duration.Duration `yaml:"deletion_window"`
	// MinDeletionWindow is the shortest window a request may ask for
	// (default 168h, 7 days). Lower it for development and tests only.
	MinDeletionWindow duration.Duration `yaml:"min_deletion_window"`
	// DeletionSweepInterval is how often the background job destroys keys
	// whose deletion date has passed and rotates keys whose rotation is
	// due (default 1m).
	DeletionSweepInterval duration.Duration `yaml:"deletion_sweep_interval"`
	// MinRotationPeriod is the shortest automatic rotation period a key may
	// have (default 1h). Lower it for development and tests only.
	MinRotationPeriod duration.Duration `yaml:"min_rotation_period"`
}

// Limits of the key lifecycle settings.
const (
	maxDeletionWindow        = 30 * 24 * time.Hour
	defaultMinDeletionWindow = 7 * 24 * time.Hour
	maxRotationFloor         = 10 * 365 * 24 * time.Hour
)

func (k Keys) validate() error {
	switch {
	case k.MinDeletionWindow <= 0 || k.MinDeletionWindow.D() > maxDeletionWindow:
		return &Error{"keys.min_deletion_window", fmt.Sprintf("%s is not between 0 (excluded) and 720h (30 days)", k.MinDeletionWindow.D())}
	case k.DeletionWindow.D() < k.MinDeletionWindow.D() || k.DeletionWindow.D() > maxDeletionWindow:
		return &Error{"keys.deletion_window", fmt.Sprintf("%s is not between keys.min_deletion_window (%s) and 720h (30 days)", k.DeletionWindow.D(), k.MinDeletionWindow.D())}
	case k.DeletionSweepInterval <= 0:
		return &Error{"keys.deletion_sweep_interval", "must be positive"}
	case k.MinRotationPeriod <= 0 || k.MinRotationPeriod.D() > maxRotationFloor:
		return &Error{"keys.min_rotation_period", fmt.Sprintf("%s is not between 0 (excluded) and 87600h (10 years)", k.MinRotationPeriod.D())}
	}
	return nil
}

// Debug configures diagnostics.
type Debug struct {
	// PprofListen, when set (e.g. 127.0.0.1:6060), serves Go's
	// /debug/pprof profiles on that separate, unauthenticated listener:
	// keep it on loopback.
	PprofListen string `yaml:"pprof_listen"`
}

// Error is a configuration error naming the field.
type Error struct {
	Field string
	Msg   string
}

func (e *Error) Error() string { return "config: " + e.Field + ": " + e.Msg }

// Flags are command-line settings; they win over the file and the
// environment.
type Flags struct {
	Listen  string
	DataDir string
}

// Load reads path (empty: the embedded default), applies the environment,
// the flags and the defaults. It does not validate; see Validate.
func Load(path string, flags Flags) (*Config, error) {
	c := &Config{}
	if path == "" {
		c.Embedded = true
		c.Providers = map[string]ProviderConfig{"software": {}}
	} else {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if err := applyEnv(c, os.LookupEnv); err != nil {
		return nil, err
	}
	if flags.Listen != "" {
		c.Server.Listen = flags.Listen
	}
	if flags.DataDir != "" {
		c.DataDir = flags.DataDir
	}
	c.setDefaults()
	return c, nil
}

func (c *Config) setDefaults() {
	if c.DataDir == "" {
		c.DataDir = "./data"
	}
	c.setSecurityDefaults()
	s := &c.Server
	if s.Listen == "" {
		s.Listen = "127.0.0.1:8080"
	}
	def := func(d *duration.Duration, v time.Duration) {
		if *d == 0 {
			*d = duration.Duration(v)
		}
	}
	def(&s.ReadHeaderTimeout, 5*time.Second)
	def(&s.ReadTimeout, 30*time.Second)
	def(&s.WriteTimeout, 60*time.Second)
	def(&s.IdleTimeout, 120*time.Second)
	def(&s.ShutdownTimeout, 20*time.Second)
	def(&s.RequestTimeout, 30*time.Second)
	if s.MaxBodyBytes == 0 {
		s.MaxBodyBytes = 1 << 20
	}
	if c.Storage.Driver == "" {
		c.Storage.Driver = "sqlite"
	}
	if c.Storage.Driver == "sqlite" && c.Storage.Path == "" {
		c.Storage.Path = filepath.Join(c.DataDir, "keygrid.db")
	}
	if c.Audit.Path == "" {
		c.Audit.Path = filepath.Join(c.DataDir, "audit.log")
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	def(&c.Reconcile.Interval, time.Minute)
	def(&c.Reconcile.Grace, 2*time.Minute)
	def(&c.Health.Interval, 10*time.Second)
	def(&c.Health.Timeout, 3*time.Second)
	def(&c.Keys.MinDeletionWindow, defaultMinDeletionWindow)
	def(&c.Keys.DeletionWindow, maxDeletionWindow)
	def(&c.Keys.DeletionSweepInterval, time.Minute)
	def(&c.Keys.MinRotationPeriod, time.Hour)
	c.Console.defaults()
	c.setAuditDefaults()
}

// ProviderType returns the type of a provider instance.
func (c *Config) ProviderType(name string) string {
	if t := c.Providers[name].Type; t != "" {
		return t
	}
	return name
}

// EnabledProviders lists enabled provider names, sorted.
func (c *Config) EnabledProviders() []string {
	var out []string
	for n, p := range c.Providers {
		if p.IsEnabled() {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

var providerName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// Validate checks the configuration. knownTypes are the provider types this
// binary has; an enabled provider of another type is an error naming it.
// An error about a field set from the environment names the variable and
// never shows its value (which may be a secret put in the wrong variable).
func (c *Config) Validate(knownTypes []string) error {
	err := c.validate(knownTypes)
	var ce *Error
	if !errors.As(err, &ce) {
		return err
	}
	if ev, ok := c.fromEnv[ce.Field]; ok {
		msg := strings.ReplaceAll(ce.Msg, strconv.Quote(ev.value), "the value of "+ev.name)
		if len(ev.value) >= 4 {
			msg = strings.ReplaceAll(msg, ev.value, "(value not shown)")
		}
		return &Error{ce.Field, "set by " + ev.name + ": " + msg}
	}
	return err
}

func (c *Config) validate(knownTypes []string) error {
	if _, _, err := net.SplitHostPort(c.Server.Listen); err != nil {
		return &Error{"server.listen", fmt.Sprintf("%q is not host:port", c.Server.Listen)}
	}
	if c.Debug.PprofListen != "" {
		host, _, err := net.SplitHostPort(c.Debug.PprofListen)
		if err != nil {
			return &Error{"debug.pprof_listen", fmt.Sprintf("%q is not host:port", c.Debug.PprofListen)}
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return &Error{"debug.pprof_listen", "profiles are served without authentication: listen on a loopback address"}
		}
	}
	if c.Storage.CacheTTL != nil && *c.Storage.CacheTTL < 0 {
		return &Error{"storage.cache_ttl", "must not be negative"}
	}
	if c.Server.MaxBodyBytes < 1024 {
		return &Error{"server.max_body_bytes", "must be at least 1024"}
	}
	for f, d := range map[string]duration.Duration{
		"server.read_header_timeout": c.Server.ReadHeaderTimeout, "server.read_timeout": c.Server.ReadTimeout,
		"server.write_timeout": c.Server.WriteTimeout, "server.idle_timeout": c.Server.IdleTimeout,
		"server.shutdown_timeout": c.Server.ShutdownTimeout, "server.request_timeout": c.Server.RequestTimeout,
		"reconcile.interval": c.Reconcile.Interval, "reconcile.grace": c.Reconcile.Grace,
		"health.interval": c.Health.Interval, "health.timeout": c.Health.Timeout,
		"audit.fsync_interval": c.Audit.FsyncInterval,
	} {
		if d < 0 {
			return &Error{f, "must not be negative"}
		}
	}
	if err := c.Storage.validate(); err != nil {
		return err
	}
	if err := c.Console.validate(); err != nil {
		return err
	}
	if err := c.Keys.validate(); err != nil {
		return err
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return &Error{"log.level", fmt.Sprintf("%q is not debug, info, warn or error", c.Log.Level)}
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return &Error{"log.format", fmt.Sprintf("%q is not text or json", c.Log.Format)}
	}
	enabled := c.EnabledProviders()
	if len(enabled) == 0 {
		return &Error{"providers", "at least one provider must be enabled"}
	}
	for _, n := range enabled {
		if !providerName.MatchString(n) {
			return &Error{"providers." + n, "provider names are lower-case letters, digits, '-' and '_'"}
		}
		t := c.ProviderType(n)
		known := false
		for _, k := range knownTypes {
			known = known || k == t
		}
		if !known {
			return &Error{"providers." + n + ".type", fmt.Sprintf("unknown provider type %q (this build has: %s)", t, strings.Join(knownTypes, ", "))}
		}
	}
	if c.DefaultProvider != "" {
		if p, ok := c.Providers[c.DefaultProvider]; !ok || !p.IsEnabled() {
			return &Error{"default_provider", fmt.Sprintf("%q is not an enabled provider", c.DefaultProvider)}
		}
	}
	if err := c.validateSecurity(); err != nil {
		return err
	}
	if err := c.validateAudit(); err != nil {
		return err
	}
	return c.XKS.validate(c.Server.TLS)
}

// DecodeProviderConfig decodes provider name's config block into out,
// refusing unknown fields.
func (c *Config) DecodeProviderConfig(name string, out any) error {
	raw := c.Providers[name].Config
	if raw == nil {
		return nil
	}
	b, err := yaml.Marshal(raw)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		f := "providers." + name + ".config"
		if vars := c.envUnder(f); len(vars) > 0 {
			// The decoder's message quotes (part of) the value: name the
			// variables instead.
			return &Error{f, "a setting has a value of the wrong kind; it may come from " + strings.Join(vars, ", ") + " (values not shown)"}
		}
		return &Error{f, err.Error()}
	}
	return nil
}

// envUnder lists the variables that set fields under the dotted path
// prefix, sorted.
func (c *Config) envUnder(prefix string) []string {
	var out []string
	for f, ev := range c.fromEnv {
		if strings.HasPrefix(f, prefix+".") {
			out = append(out, ev.name)
		}
	}
	sort.Strings(out)
	return out
}

var nonAlnum = regexp.MustCompile(`[^A-Za-z0-9]`)

// envName turns a YAML path into its environment variable.
func envName(path []string) string {
	return strings.ToUpper(nonAlnum.ReplaceAllString("KEYGRID_"+strings.Join(path, "_"), "_"))
}

// applyEnv overrides fields from the environment.
func applyEnv(c *Config, lookup func(string) (string, bool)) error {
	c.fromEnv = map[string]envValue{}
	if v, ok := lookup("KEYGRID_LISTEN"); ok {
		c.Server.Listen = v
		c.fromEnv["server.listen"] = envValue{"KEYGRID_LISTEN", v}
	}
	if v, ok := lookup("KEYGRID_DATA_DIR"); ok {
		c.DataDir = v
		c.fromEnv["data_dir"] = envValue{"KEYGRID_DATA_DIR", v}
	}
	return walkEnv(reflect.ValueOf(c).Elem(), nil, func(path []string) (string, bool) {
		name := envName(path)
		v, ok := lookup(name)
		if ok {
			c.fromEnv[strings.Join(path, ".")] = envValue{name, v}
		}
		return v, ok
	})
}

func walkEnv(v reflect.Value, path []string, lookup func(path []string) (string, bool)) error {
	switch v.Kind() {
	case reflect.Struct:
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" {
				continue
			}
			if err := walkEnv(v.Field(i), append(path, tag), lookup); err != nil {
				return err
			}
		}
		return nil
	case reflect.Map:
		if v.Type().Key().Kind() != reflect.String {
			return nil
		}
		for _, k := range v.MapKeys() {
			e := v.MapIndex(k)
			// Map values are not addressable: copy, walk, store back.
			cp := reflect.New(e.Type()).Elem()
			cp.Set(e)
			if cp.Kind() == reflect.Interface && !cp.IsNil() {
				inner := reflect.New(cp.Elem().Type()).Elem()
				inner.Set(cp.Elem())
				if err := walkEnv(inner, append(path, k.String()), lookup); err != nil {
					return err
				}
				cp.Set(inner)
			} else if err := walkEnv(cp, append(path, k.String()), lookup); err != nil {
				return err
			}
			v.SetMapIndex(k, cp)
		}
		return nil
	case reflect.Pointer:
		name := envName(path)
		if s, ok := lookup(path); ok {
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem()))
			}
			return setScalar(v.Elem(), s, name)
		}
		return nil
	}
	name := envName(path)
	if s, ok := lookup(path); ok {
		return setScalar(v, s, name)
	}
	return nil
}

// setScalar sets v from the value s of variable name. An error names the
// variable and the kind wanted, never the value.
func setScalar(v reflect.Value, s, name string) error {
	bad := func() error {
		want := v.Kind().String()
		if v.Type() == reflect.TypeOf(duration.Duration(0)) {
			want = "duration (like 30s or 5m)"
		}
		return &Error{name, "its value is not a valid " + want + " (the value is not shown)"}
	}
	if v.Type() == reflect.TypeOf(duration.Duration(0)) {
		d, err := duration.Parse(s)
		if err != nil {
			return bad()
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return bad()
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return bad()
		}
		v.SetInt(n)
	case reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return bad()
		}
		v.SetFloat(f)
	case reflect.Interface: // a value in a provider's config map
		v.Set(reflect.ValueOf(yamlScalar(s)))
	}
	return nil
}

// yamlScalar reads an environment value as YAML would (numbers, booleans).
func yamlScalar(s string) any {
	var out any
	if err := yaml.Unmarshal([]byte(s), &out); err != nil || out == nil {
		return s
	}
	switch out.(type) {
	case int, bool, float64, string:
		return out
	}
	return s
}
