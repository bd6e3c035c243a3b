package config

import (
	"encoding/hex"
	"fmt"
	"net"
	"path"
	"path/filepath"
	"regexp"
)

// TLS configures HTTPS on the listener.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile, when set, makes the server require a client
	// certificate signed by one of its CAs at the TLS handshake.
	ClientCAFile string `yaml:"client_ca_file"`
	// MinVersion is "1.2" (default) or "1.3".
	MinVersion string `yaml:"min_version"`
}

// Enabled reports whether the listener serves HTTPS.
func (t TLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// Auth configures who may call the API.
type Auth struct {
	// Principals are the callers the server knows. With none, the server
	// makes one admin principal whose token is in AdminTokenFile.
	Principals []Principal `yaml:"principals"`
	// AdminTokenFile holds the generated admin token (mode 0600) when no
	// principals are configured; default <data_dir>/admin.token.
	AdminTokenFile string `yaml:"admin_token_file"`
	// ProtectReady and ProtectMetrics require a credential on /ready and
	// /metrics (default: open, for probes and scrapers). /health is always
	// open.
	ProtectReady   bool `yaml:"protect_ready"`
	ProtectMetrics bool `yaml:"protect_metrics"`
}

// Principal is one caller: a role, credentials and a key scope.
type Principal struct {
	Name string `yaml:"name"`
	// Role is admin, operator or auditor.
	Role string `yaml:"role"`
	// At most one of TokenSHA256 (hex SHA-256 of the token), TokenFile (a
	// file holding the token) and TokenEnv (an environment variable holding
	// it).
	TokenSHA256 string `yaml:"token_sha256"`
	TokenFile   string `yaml:"token_file"`
	TokenEnv    string `yaml:"token_env"`
	// ClientCertSubject maps a verified TLS client certificate with this
	// subject (RFC 2253 form, as Go prints it: "CN=ci-signer,O=Example")
	// to the principal.
	ClientCertSubject string `yaml:"client_cert_subject"`
	// Keys are key name patterns in scope ("payments-*"); none: all keys.
	Keys []string `yaml:"keys"`
	// Providers are the providers in scope; none: all providers.
	Providers []string `yaml:"providers"`
	// RatePerSecond and Burst override limits.rate_per_principal and
	// limits.burst for this principal.
	RatePerSecond float64 `yaml:"rate_per_second"`
	Burst         int     `yaml:"burst"`
}

// Limits are the abuse limits.
type Limits struct {
	// RatePerPrincipal is the sustained requests per second of one
	// principal (token bucket). 0, the default, or negative: no limit (a
	// rate limit is protection an operator opts into; it must not cap an
	// application below what the HSM can do). A principal's own
	// rate_per_second applies either way.
	RatePerPrincipal float64 `yaml:"rate_per_principal"`
	// Burst is the bucket size; default twice the rate.
	Burst int `yaml:"burst"`
	// MaxBodyBytes caps request bodies; server.max_body_bytes is its older
	// name and both work (set one, or both to the same value).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxJSONDepth caps the nesting of a request body (default 16).
	MaxJSONDepth int `yaml:"max_json_depth"`
	// AuthFailuresPerClient and AuthFailureBurst bound failed
	// authentications per client address (default 5/s, burst 20): past it,
	// 429 and no audit line per attempt.
	AuthFailuresPerClient float64 `yaml:"auth_failures_per_client"`
	AuthFailureBurst      int     `yaml:"auth_failure_burst"`
}

// Roles a principal may have.
var Roles = []string{"admin", "operator", "auditor"}

var principalName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// setSecurityDefaults runs before the other defaults (it reconciles the two
// names of the body cap).
func (c *Config) setSecurityDefaults() {
	l, s := &c.Limits.MaxBodyBytes, &c.Server.MaxBodyBytes
	switch {
	case *l == 0 && *s == 0:
		*l, *s = 1<<20, 1<<20
	case *l == 0:
		*l = *s
	case *s == 0:
		*s = *l
	}
	switch {
	case c.Limits.Burst != 0:
	case c.Limits.RatePerPrincipal > 0:
		c.Limits.Burst = max(1, int(2*c.Limits.RatePerPrincipal))
	default:
		// No global limit: a principal's own rate without a burst of its
		// own gets twice its rate, as the global rate does.
		for i := range c.Auth.Principals {
			if p := &c.Auth.Principals[i]; p.RatePerSecond > 0 && p.Burst == 0 {
				p.Burst = max(1, int(2*p.RatePerSecond))
			}
		}
	}
	if c.Limits.MaxJSONDepth == 0 {
		c.Limits.MaxJSONDepth = 16
	}
	if c.Limits.AuthFailuresPerClient == 0 {
		c.Limits.AuthFailuresPerClient = 5
	}
	if c.Limits.AuthFailureBurst == 0 {
		c.Limits.AuthFailureBurst = 20
	}
	if c.Server.TLS.MinVersion == "" {
		c.Server.TLS.MinVersion = "1.2"
	}
	if c.Auth.AdminTokenFile == "" {
		dir := c.DataDir
		if dir == "" {
			dir = "./data"
		}
		c.Auth.AdminTokenFile = filepath.Join(dir, "admin.token")
	}
}

// IsLoopback reports whether a listen address only accepts local
// connections.
func IsLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *Config) validateSecurity() error {
	if c.Limits.MaxBodyBytes != c.Server.MaxBodyBytes {
		return &Error{"limits.max_body_bytes", fmt.Sprintf("%d differs from server.max_body_bytes %d (its older name); set one of them",
			c.Limits.MaxBodyBytes, c.Server.MaxBodyBytes)}
	}
	if c.Limits.MaxJSONDepth < 2 || c.Limits.MaxJSONDepth > 1000 {
		return &Error{"limits.max_json_depth", "must be between 2 and 1000"}
	}
	if c.Limits.Burst < 0 {
		return &Error{"limits.burst", "must not be negative"}
	}
	if c.Limits.AuthFailuresPerClient < 0 || c.Limits.AuthFailureBurst < 0 {
		return &Error{"limits.auth_failures_per_client", "must not be negative"}
	}
	t := c.Server.TLS
	switch {
	case t.Enabled() && (t.CertFile == "" || t.KeyFile == ""):
		return &Error{"server.tls", "cert_file and key_file go together"}
	case t.ClientCAFile != "" && !t.Enabled():
		return &Error{"server.tls.client_ca_file", "needs server.tls.cert_file and key_file"}
	}
	switch t.MinVersion {
	case "1.2", "1.3":
	default:
		return &Error{"server.tls.min_version", fmt.Sprintf("%q is not 1.2 or 1.3", t.MinVersion)}
	}
	if !t.Enabled() && !c.Server.AllowInsecureHTTP && !IsLoopback(c.Server.Listen) {
		return &Error{"server.tls", fmt.Sprintf("listening on %s (not a loopback address) needs TLS (server.tls.cert_file and key_file), "+
			"or server.allow_insecure_http: true to serve plain HTTP anyway", c.Server.Listen)}
	}
	names := map[string]bool{}
	subjects := map[string]bool{}
	for i, p := range c.Auth.Principals {
		f := fmt.Sprintf("auth.principals[%d]", i)
		if !principalName.MatchString(p.Name) {
			return &Error{f + ".name", "1 to 64 characters of A-Z a-z 0-9 . _ @ -, starting with a letter or digit"}
		}
		if names[p.Name] {
			return &Error{f + ".name", fmt.Sprintf("%q is used twice", p.Name)}
		}
		names[p.Name] = true
		roleOK := false
		for _, r := range Roles {
			roleOK = roleOK || r == p.Role
		}
		if !roleOK {
			return &Error{f + ".role", fmt.Sprintf("%q is not admin, operator or auditor", p.Role)}
		}
		n := 0
		for _, s := range []string{p.TokenSHA256, p.TokenFile, p.TokenEnv} {
			if s != "" {
				n++
			}
		}
		switch {
		case n > 1:
			return &Error{f, "give one of token_sha256, token_file and token_env"}
		case n == 0 && p.ClientCertSubject == "":
			return &Error{f, "needs a credential: token_sha256, token_file, token_env or client_cert_subject"}
		}
		if p.TokenSHA256 != "" {
			if b, err := hex.DecodeString(p.TokenSHA256); err != nil || len(b) != 32 {
				return &Error{f + ".token_sha256", "must be 64 hex digits (sha256sum of the token)"}
			}
		}
		if p.ClientCertSubject != "" {
			if t.ClientCAFile == "" {
				return &Error{f + ".client_cert_subject", "needs server.tls.client_ca_file (client certificates are not asked for otherwise)"}
			}
			if subjects[p.ClientCertSubject] {
				return &Error{f + ".client_cert_subject", "is used by two principals"}
			}
			subjects[p.ClientCertSubject] = true
		}
		for j, k := range p.Keys {
			if _, err := path.Match(k, ""); err != nil || k == "" {
				return &Error{fmt.Sprintf("%s.keys[%d]", f, j), fmt.Sprintf("%q is not a name pattern (use * and ?)", k)}
			}
		}
		for j, pr := range p.Providers {
			if pr == "" {
				return &Error{fmt.Sprintf("%s.providers[%d]", f, j), "must not be empty"}
			}
		}
		if p.Burst < 0 {
			return &Error{f + ".burst", "must not be negative"}
		}
	}
	if c.Audit.MaxBytes < 0 {
		return &Error{"audit.max_bytes", "must not be negative"}
	}
	return nil
}
