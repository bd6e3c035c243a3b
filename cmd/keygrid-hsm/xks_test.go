package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// TestXKSCredentialsNew checks that the command makes credentials in the
// required formats, different each time, that the gateway's configuration
// accepts, and the KMS console's file.
func TestXKSCredentialsNew(t *testing.T) {
	code, out, errb := cliRun("", "xks", "credentials", "new", "--prefix", "keystores/team-a", "--output", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb)
	}
	var f kmsProxyFile
	if err := json.Unmarshal([]byte(out), &f); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	id, secret := f.XksProxyAuthenticationCredential.AccessKeyID, f.XksProxyAuthenticationCredential.RawSecretAccessKey
	if f.XksProxyURIPath != "/keystores/team-a/kms/xks/v1" || !regexp.MustCompile(`^[A-Z2-7]{20,30}$`).MatchString(id) ||
		!regexp.MustCompile(`^[A-Za-z0-9+/=]{43,64}$`).MatchString(secret) {
		t.Fatalf("%+v", f)
	}
	_, out2, _ := cliRun("", "xks", "credentials", "new", "--output", "json")
	var f2 kmsProxyFile
	json.Unmarshal([]byte(out2), &f2)
	if f2.XksProxyAuthenticationCredential.AccessKeyID == id || f2.XksProxyAuthenticationCredential.RawSecretAccessKey == secret || f2.XksProxyURIPath != "/kms/xks/v1" {
		t.Fatalf("second credential %+v", f2)
	}
	// The gateway takes it as it comes.
	c := config.XKSCredential{AccessKeyID: id, SecretAccessKeyEnv: "S"}
	if got, err := c.SecretAccessKey("c", func(string) string { return secret }); err != nil || got != secret {
		t.Fatalf("secret refused: %v", err)
	}
	path := filepath.Join(t.TempDir(), "k.yaml")
	os.WriteFile(path, []byte(fmt.Sprintf("providers:\n  software: {}\nxks:\n  stores:\n    - name: a\n      uri_prefix: keystores/team-a\n      region: us-east-1\n      credentials:\n        - access_key_id: %s\n          secret_access_key_env: S\n      keys: [\"x\"]\n", id)), 0o600)
	cfg, err := config.Load(path, config.Flags{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate([]string{"software"}); err != nil {
		t.Fatal(err)
	}
	// The table form prints the credential, the file and the YAML.
	code, out, _ = cliRun("", "xks", "credentials", "new", "--store", "team-a")
	if code != 0 || !strings.Contains(out, "XksProxyUriPath") || !strings.Contains(out, "secret_access_key_env: XKS_TEAM_A_SECRET") {
		t.Fatalf("%d %s", code, out)
	}
}

// TestXKSKeysAndBench runs `xks keys` and a short `xks bench` against a
// gateway on a real listener.
func TestXKSKeysAndBench(t *testing.T) {
	dir := t.TempDir()
	const secret = "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE"
	t.Setenv("XKS_CLI_SECRET", secret)
	t.Setenv("KEYGRID_CLI_MASTER", strings.Repeat("ef", 32))
	yaml := `
providers:
  software:
    config:
      master_key_env: KEYGRID_CLI_MASTER
xks:
  stores:
    - name: main
      uri_prefix: p
      region: us-east-1
      credentials:
        - access_key_id: AKIAI2SFODNN7EXAMPLE
          secret_access_key_env: XKS_CLI_SECRET
      keys: ["xks-*"]
`
	cfgPath := filepath.Join(dir, "keygrid.yaml")
	os.WriteFile(cfgPath, []byte(yaml), 0o600)
	cfg, err := config.Load(cfgPath, config.Flags{DataDir: filepath.Join(dir, "data"), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Limits.RatePerPrincipal = -1
	srv, err := server.New(context.Background(), cfg, registry.All(), slog.New(slog.NewTextHandler(io.Discard, nil)), "test")
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer func() { ts.Close(); srv.Close() }()
	tok, _ := os.ReadFile(cfg.Auth.AdminTokenFile)
	token := strings.TrimSpace(string(tok))
	cl, _ := client.New(ts.URL, client.WithToken(token))
	ctx := context.Background()
	for _, k := range []struct {
		name, typ string
		size      int
		usage     []string
	}{
		{"xks-a", "AES", 256, []string{"encrypt", "decrypt"}},
		{"xks-b", "AES", 128, []string{"encrypt"}},
		{"xks-ec", "EC", 256, nil},
		{"other", "AES", 256, nil},
	} {
		if _, err := cl.CreateKey(ctx, apitypes.CreateKeyRequest{Name: k.name, KeySpec: apitypes.KeySpec{KeyType: k.typ, KeySize: k.size, Usage: k.usage}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.DeactivateKey(ctx, "xks-b"); err != nil {
		t.Fatal(err)
	}
	code, out, errb := cliRun("", "xks", "keys", "main", "--config", cfgPath, "--server", ts.URL, "--token", token, "--output", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb)
	}
	var got struct {
		Store string   `json:"store"`
		Path  string   `json:"xksProxyUriPath"`
		Keys  []xksKey `json:"keys"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	want := `[{xks-a software 1 AES_256 [ENCRYPT DECRYPT] ENABLED} {xks-b software 1 AES_128 [ENCRYPT] DISABLED}]`
	if got.Store != "main" || got.Path != "/p/kms/xks/v1" || fmt.Sprint(got.Keys) != want {
		t.Fatalf("%+v", got)
	}
	if code, _, errb := cliRun("", "xks", "keys", "nope", "--config", cfgPath, "--server", ts.URL, "--token", token); code == 0 || !strings.Contains(errb, `no xks store "nope"`) {
		t.Fatalf("unknown store: %d %s", code, errb)
	}

	for _, op := range []string{"encrypt", "decrypt", "metadata", "health"} {
		code, out, errb = cliRun("", "xks", "bench", "--config", cfgPath, "--store", "main", "--key", "xks-bench", "--create-on", "software",
			"--op", op, "--server", ts.URL, "--token", token, "--duration", "500ms", "--warmup", "0", "--concurrency", "2", "--rate", "40", "--output", "json")
		if code != 0 {
			t.Fatalf("bench %s: exit %d: %s", op, code, errb)
		}
		var res XKSBenchResult
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatal(err)
		}
		if res.Requests < 5 || res.Errors != 0 || res.P99ms <= 0 {
			t.Fatalf("bench %s: %+v", op, res)
		}
	}
}
