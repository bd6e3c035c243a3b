package config

import (
	"errors"
	"strings"
	"testing"
)

const hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func TestSecurityFieldsLoad(t *testing.T) {
	c, err := Load(write(t, `
server:
  listen: 0.0.0.0:8443
  tls:
    cert_file: /etc/keygrid/tls.crt
    key_file: /etc/keygrid/tls.key
    client_ca_file: /etc/keygrid/clients-ca.crt
auth:
  principals:
    - name: payments-app
      role: operator
      token_sha256: "`+hash+`"
      keys: ["payments-*"]
    - name: ci-signer
      role: operator
      token_file: /run/secrets/ci-signer.token
      client_cert_subject: "CN=ci-signer"
limits:
  rate_per_principal: 50
  burst: 100
  max_body_bytes: 1048576
audit:
  path: /var/log/keygrid/audit.log
  max_bytes: 1000000
providers:
  software: {}
`), Flags{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate([]string{"software"}); err != nil {
		t.Fatal(err)
	}
	if c.Limits.RatePerPrincipal != 50 || c.Limits.Burst != 100 || c.Server.MaxBodyBytes != 1<<20 || c.Server.TLS.MinVersion != "1.2" ||
		len(c.Auth.Principals) != 2 || c.Auth.Principals[0].Keys[0] != "payments-*" || c.Audit.MaxBytes != 1000000 {
		t.Fatalf("loaded %+v %+v %+v", c.Limits, c.Server.TLS, c.Auth)
	}
}

func TestMaxBodyBytesBothNames(t *testing.T) {
	for name, tc := range map[string]struct {
		yaml string
		want int64
		err  bool
	}{
		"default":       {"providers:\n  software: {}\n", 1 << 20, false},
		"old name":      {"server:\n  max_body_bytes: 4096\nproviders:\n  software: {}\n", 4096, false},
		"new name":      {"limits:\n  max_body_bytes: 8192\nproviders:\n  software: {}\n", 8192, false},
		"both the same": {"server:\n  max_body_bytes: 8192\nlimits:\n  max_body_bytes: 8192\nproviders:\n  software: {}\n", 8192, false},
		"both differ":   {"server:\n  max_body_bytes: 4096\nlimits:\n  max_body_bytes: 8192\nproviders:\n  software: {}\n", 0, true},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := Load(write(t, tc.yaml), Flags{})
			if err != nil {
				t.Fatal(err)
			}
			err = c.Validate([]string{"software"})
			var ce *Error
			if tc.err {
				if !errors.As(err, &ce) || ce.Field != "limits.max_body_bytes" {
					t.Fatalf("got %v, want an error on limits.max_body_bytes", err)
				}
				return
			}
			if err != nil || c.Server.MaxBodyBytes != tc.want || c.Limits.MaxBodyBytes != tc.want {
				t.Fatalf("server %d limits %d, %v; want %d", c.Server.MaxBodyBytes, c.Limits.MaxBodyBytes, err, tc.want)
			}
		})
	}
	t.Setenv("KEYGRID_LIMITS_RATE_PER_PRINCIPAL", "2.5")
	c, err := Load("", Flags{})
	if err != nil || c.Limits.RatePerPrincipal != 2.5 || c.Limits.Burst != 5 {
		t.Fatalf("float env override: %v %+v", err, c.Limits)
	}
}

func TestSecurityValidationNamesTheField(t *testing.T) {
	p := func(s string) string { return "providers:\n  software: {}\nauth:\n  principals:\n" + s }
	for name, tc := range map[string]struct{ yaml, field string }{
		"plain http beyond loopback":  {"server:\n  listen: 0.0.0.0:8080\nproviders:\n  software: {}\n", "server.tls"},
		"empty host is every address": {"server:\n  listen: :8080\nproviders:\n  software: {}\n", "server.tls"},
		"cert without key":            {"server:\n  tls:\n    cert_file: a\nproviders:\n  software: {}\n", "server.tls"},
		"client ca without tls":       {"server:\n  tls:\n    client_ca_file: a\nproviders:\n  software: {}\n", "server.tls.client_ca_file"},
		"bad min version":             {"server:\n  tls:\n    cert_file: a\n    key_file: b\n    min_version: \"1.0\"\nproviders:\n  software: {}\n", "server.tls.min_version"},
		"bad role":                    {p("    - {name: a, role: root, token_sha256: " + hash + "}\n"), "auth.principals[0].role"},
		"no credential":               {p("    - {name: a, role: admin}\n"), "auth.principals[0]"},
		"two credentials":             {p("    - {name: a, role: admin, token_env: X, token_file: /f}\n"), "auth.principals[0]"},
		"bad hash":                    {p("    - {name: a, role: admin, token_sha256: abc}\n"), "auth.principals[0].token_sha256"},
		"duplicate name":              {p("    - {name: a, role: admin, token_env: X}\n    - {name: a, role: auditor, token_env: Y}\n"), "auth.principals[1].name"},
		"bad pattern":                 {p("    - {name: a, role: admin, token_env: X, keys: [\"pay[\"]}\n"), "auth.principals[0].keys[0]"},
		"cert subject without ca":     {p("    - {name: a, role: admin, client_cert_subject: CN=a}\n"), "auth.principals[0].client_cert_subject"},
		"bad json depth":              {"limits:\n  max_json_depth: 1\nproviders:\n  software: {}\n", "limits.max_json_depth"},
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
	// allow_insecure_http lets plain HTTP listen beyond loopback.
	c, err := Load(write(t, "server:\n  listen: 0.0.0.0:8080\n  allow_insecure_http: true\nproviders:\n  software: {}\n"), Flags{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate([]string{"software"}); err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{"127.0.0.1:1": true, "[::1]:1": true, "localhost:1": true, "127.9.9.9:1": true,
		"0.0.0.0:1": false, ":1": false, "10.0.0.1:1": false, "[::]:1": false, "nope": false} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v", addr, got)
		}
	}
	if !strings.HasSuffix(c.Auth.AdminTokenFile, "admin.token") {
		t.Errorf("admin_token_file default %q", c.Auth.AdminTokenFile)
	}
}

// No per-principal rate limit unless one is configured; a principal's own
// rate gets a burst of twice that rate; the auth-failure limits stay on.
func TestRateLimitIsOptIn(t *testing.T) {
	c, err := Load(write(t, `
auth:
  principals:
    - {name: app, role: operator, token_sha256: "`+hash+`"}
    - {name: slow, role: operator, token_sha256: "`+hash+`", rate_per_second: 20}
    - {name: bursty, role: operator, token_sha256: "`+hash+`", rate_per_second: 20, burst: 7}
providers:
  software: {}
`), Flags{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate([]string{"software"}); err != nil {
		t.Fatal(err)
	}
	if c.Limits.RatePerPrincipal != 0 || c.Limits.Burst != 0 {
		t.Fatalf("default limits %+v: want no per-principal rate limit", c.Limits)
	}
	if c.Limits.AuthFailuresPerClient != 5 || c.Limits.AuthFailureBurst != 20 {
		t.Fatalf("auth-failure limits %+v: want 5/s, burst 20", c.Limits)
	}
	ps := c.Auth.Principals
	if ps[0].RatePerSecond != 0 || ps[0].Burst != 0 || ps[1].Burst != 40 || ps[2].Burst != 7 {
		t.Fatalf("principal limits: %+v", ps)
	}
	// A global rate keeps its default burst, and a principal with its own
	// rate takes the global burst (as before).
	c, err = Load(write(t, "limits:\n  rate_per_principal: 100\nauth:\n  principals:\n    - {name: slow, role: operator, token_sha256: \""+hash+"\", rate_per_second: 20}\nproviders:\n  software: {}\n"), Flags{})
	if err != nil || c.Limits.RatePerPrincipal != 100 || c.Limits.Burst != 200 || c.Auth.Principals[0].Burst != 0 {
		t.Fatalf("with a global rate: %v %+v %+v", err, c.Limits, c.Auth.Principals)
	}
}
