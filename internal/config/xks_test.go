package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The xks block, exactly as written there.
const xksBlock = `
providers:
  software: {}
xks:
  stores:
    - name: main                       # ^[a-z0-9][a-z0-9_-]{0,62}$
      uri_prefix: example/uri/path/prefix   # no leading/trailing slash; may be empty; [A-Za-z0-9/_-]
      region: us-east-1                # SigV4 region KMS signs with
      credentials:                     # one or two (rotation: both accepted at once)
        - access_key_id: BETWEEN2TENAND3TENCHARACTERS    # 20-30 chars, A-Z and 2-7
          secret_access_key_env: XKS_MAIN_SECRET         # or secret_access_key_file; 43-64 chars [A-Za-z0-9+/=]
      keys: ["foo", "*_key"]           # gateway key names this store serves (patterns as in auth scopes)
      rate_per_second: 0               # optional quota for this store: 429 ThrottlingException beyond
      policy:                          # optional secondary authorization (health is exempt)
        principals: ["arn:aws:iam::123456789012:*"]    # awsPrincipalArn patterns; empty: any
        operations: []                 # kmsOperation values; empty: any
        via_services: []               # kmsViaService values; empty: any
      require_client_name: ""          # with server.tls client CA: the TLS client's DNS SAN/CN KMS presents
`

func TestXKSBlockLoads(t *testing.T) {
	c, err := Load(write(t, xksBlock), Flags{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate([]string{"software"}); err != nil {
		t.Fatal(err)
	}
	if len(c.XKS.Stores) != 1 {
		t.Fatalf("stores: %+v", c.XKS.Stores)
	}
	s := c.XKS.Stores[0]
	if s.Name != "main" || s.URIPrefix != "example/uri/path/prefix" || s.Region != "us-east-1" || len(s.Credentials) != 1 ||
		s.Credentials[0].AccessKeyID != "BETWEEN2TENAND3TENCHARACTERS" || s.Credentials[0].SecretAccessKeyEnv != "XKS_MAIN_SECRET" ||
		strings.Join(s.Keys, ",") != "foo,*_key" || len(s.Policy.Principals) != 1 || s.XKSPath() != "/example/uri/path/prefix/kms/xks/v1" {
		t.Fatalf("store %+v", s)
	}
}

func TestXKSValidation(t *testing.T) {
	good := func() XKSStore {
		return XKSStore{Name: "main", URIPrefix: "a/b", Region: "us-east-1", Keys: []string{"xks-*"},
			Credentials: []XKSCredential{{AccessKeyID: "AKIAI2SFODNN7EXAMPLE", SecretAccessKeyEnv: "S"}}}
	}
	cred := XKSCredential{AccessKeyID: "BBBBBBBBBBBBBBBBBBBB", SecretAccessKeyFile: "/f"}
	cases := []struct {
		name  string
		edit  func(x *XKS, tls *TLS)
		field string
	}{
		{"ok", func(*XKS, *TLS) {}, ""},
		{"ok empty prefix and two credentials", func(x *XKS, _ *TLS) {
			x.Stores[0].URIPrefix = ""
			x.Stores[0].Credentials = append(x.Stores[0].Credentials, cred)
		}, ""},
		{"fail name", func(x *XKS, _ *TLS) { x.Stores[0].Name = "Main" }, "xks.stores[0].name"},
		{"fail duplicate name", func(x *XKS, _ *TLS) {
			s := good()
			s.URIPrefix, s.Credentials = "other", []XKSCredential{cred}
			x.Stores = append(x.Stores, s)
		}, "xks.stores[1].name"},
		{"fail leading slash", func(x *XKS, _ *TLS) { x.Stores[0].URIPrefix = "/a" }, "xks.stores[0].uri_prefix"},
		{"fail trailing slash", func(x *XKS, _ *TLS) { x.Stores[0].URIPrefix = "a/" }, "xks.stores[0].uri_prefix"},
		{"fail empty segment", func(x *XKS, _ *TLS) { x.Stores[0].URIPrefix = "a//b" }, "xks.stores[0].uri_prefix"},
		{"fail prefix character", func(x *XKS, _ *TLS) { x.Stores[0].URIPrefix = "a.b" }, "xks.stores[0].uri_prefix"},
		{"fail path too long", func(x *XKS, _ *TLS) { x.Stores[0].URIPrefix = strings.Repeat("a", 117) }, "xks.stores[0].uri_prefix"},
		{"fail duplicate prefix", func(x *XKS, _ *TLS) {
			s := good()
			s.Name, s.Credentials = "two", []XKSCredential{cred}
			x.Stores = append(x.Stores, s)
		}, "xks.stores[1].uri_prefix"},
		{"fail region", func(x *XKS, _ *TLS) { x.Stores[0].Region = "" }, "xks.stores[0].region"},
		{"fail no credential", func(x *XKS, _ *TLS) { x.Stores[0].Credentials = nil }, "xks.stores[0].credentials"},
		{"fail three credentials", func(x *XKS, _ *TLS) {
			x.Stores[0].Credentials = append(x.Stores[0].Credentials, cred, XKSCredential{AccessKeyID: "CCCCCCCCCCCCCCCCCCCC", SecretAccessKeyEnv: "X"})
		}, "xks.stores[0].credentials"},
		{"fail access key id alphabet", func(x *XKS, _ *TLS) { x.Stores[0].Credentials[0].AccessKeyID = "AKIAI2SFODNN7EXAMPL1" }, "xks.stores[0].credentials[0].access_key_id"},
		{"fail access key id short", func(x *XKS, _ *TLS) { x.Stores[0].Credentials[0].AccessKeyID = "AKIAI2SFODNN7EXAMPL" }, "xks.stores[0].credentials[0].access_key_id"},
		{"fail access key id twice", func(x *XKS, _ *TLS) {
			s := good()
			s.Name, s.URIPrefix = "two", "c"
			x.Stores = append(x.Stores, s)
		}, "xks.stores[1].credentials[0].access_key_id"},
		{"fail both secrets", func(x *XKS, _ *TLS) { x.Stores[0].Credentials[0].SecretAccessKeyFile = "/f" }, "xks.stores[0].credentials[0]"},
		{"fail no secret", func(x *XKS, _ *TLS) { x.Stores[0].Credentials[0].SecretAccessKeyEnv = "" }, "xks.stores[0].credentials[0]"},
		{"fail no keys", func(x *XKS, _ *TLS) { x.Stores[0].Keys = nil }, "xks.stores[0].keys"},
		{"fail bad pattern", func(x *XKS, _ *TLS) { x.Stores[0].Keys = []string{"a["} }, "xks.stores[0].keys[0]"},
		{"fail negative rate", func(x *XKS, _ *TLS) { x.Stores[0].RatePerSecond = -1 }, "xks.stores[0].rate_per_second"},
		{"fail empty principal pattern", func(x *XKS, _ *TLS) { x.Stores[0].Policy.Principals = []string{""} }, "xks.stores[0].policy.principals[0]"},
		{"ok empty via service (calls made directly)", func(x *XKS, _ *TLS) { x.Stores[0].Policy.ViaServices = []string{"", "ebs"} }, ""},
		{"fail client name without client CA", func(x *XKS, _ *TLS) { x.Stores[0].RequireClientName = "cks.kms.us-east-1.amazonaws.com" }, "xks.stores[0].require_client_name"},
		{"ok client name", func(x *XKS, tls *TLS) {
			x.Stores[0].RequireClientName, tls.ClientCAFile = "cks.kms.us-east-1.amazonaws.com", "/ca.pem"
		}, ""},
		{"fail client name", func(x *XKS, tls *TLS) { x.Stores[0].RequireClientName, tls.ClientCAFile = "a b", "/ca.pem" }, "xks.stores[0].require_client_name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x, tls := XKS{Stores: []XKSStore{good()}}, TLS{}
			tc.edit(&x, &tls)
			err := x.validate(tls)
			var ce *Error
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.field != "" && (!errors.As(err, &ce) || ce.Field != tc.field):
				t.Fatalf("error %v, want one naming %s", err, tc.field)
			}
		})
	}
}

func TestXKSSecretAccessKey(t *testing.T) {
	const secret = "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE"
	env := map[string]string{"OK": secret, "SHORT": "abc", "BAD": strings.Repeat("-", 44)}
	getenv := func(k string) string { return env[k] }
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		c     XKSCredential
		field string
	}{
		{"ok env", XKSCredential{SecretAccessKeyEnv: "OK"}, ""},
		{"ok file", XKSCredential{SecretAccessKeyFile: file}, ""},
		{"fail unset", XKSCredential{SecretAccessKeyEnv: "NONE"}, "f.secret_access_key_env"},
		{"fail short", XKSCredential{SecretAccessKeyEnv: "SHORT"}, "f.secret_access_key_env"},
		{"fail alphabet", XKSCredential{SecretAccessKeyEnv: "BAD"}, "f.secret_access_key_env"},
		{"fail missing file", XKSCredential{SecretAccessKeyFile: file + ".nope"}, "f.secret_access_key_file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.c.SecretAccessKey("f", getenv)
			var ce *Error
			switch {
			case tc.field == "" && (err != nil || got != secret):
				t.Fatalf("got %q, %v", got, err)
			case tc.field != "" && (!errors.As(err, &ce) || ce.Field != tc.field):
				t.Fatalf("error %v, want one naming %s", err, tc.field)
			case err != nil && (strings.Contains(err.Error(), env["SHORT"]) || strings.Contains(err.Error(), env["BAD"])):
				t.Fatalf("the error shows the secret: %v", err)
			}
		})
	}
}
