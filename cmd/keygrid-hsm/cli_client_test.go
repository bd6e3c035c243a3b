package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// TestRoundTripsWithDefaultFlags: what encrypt, wrap and sign write,
// decrypt, unwrap and verify read with default flags, through a shell
// pipe and through files; raw on both sides works too.
func TestRoundTripsWithDefaultFlags(t *testing.T) {
	s := startServer(t, "", nil)
	s.ok(t, nil, "keys", "create", "rt-dek", "--type", "AES", "--size", "256")
	s.ok(t, nil, "keys", "create", "rt-kek", "--type", "AES", "--size", "256", "--usage", "wrap,unwrap", "--algorithm", "AES-KWP")
	s.ok(t, nil, "keys", "create", "rt-sig", "--type", "EC", "--curve", "P-256")
	bin := binary(t)
	pipe := func(script string) string {
		t.Helper()
		cmd := exec.Command("sh", "-c", script, bin)
		cmd.Dir, cmd.Env = t.TempDir(), cleanEnv("KEYGRID_ADDR="+s.addr, "KEYGRID_TOKEN_FILE="+s.tokenFile)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", script, err, out)
		}
		return string(out)
	}
	if got := pipe(`printf 'a secret' | "$0" encrypt rt-dek | "$0" decrypt rt-dek`); got != "a secret" {
		t.Errorf("encrypt | decrypt: %q", got)
	}
	if got := pipe(`printf 'hello' | "$0" sign rt-sig | { printf 'hello' > data; "$0" verify rt-sig --in data --signature /dev/stdin; }`); got != "signature valid\n" {
		t.Errorf("sign | verify: %q", got)
	}

	dir := t.TempDir()
	material := make([]byte, 32)
	rand.Read(material)
	plain := []byte("card 4111 1111 1111 1111\n")
	files := map[string][]byte{"plain": plain, "dek.bin": material}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f := func(n string) string { return filepath.Join(dir, n) }
	s.ok(t, nil, "encrypt", "rt-dek", "--in", f("plain"), "--out", f("ct.b64"))
	s.ok(t, nil, "wrap", "rt-kek", "--in", f("dek.bin"), "--out", f("wrapped.b64"))
	s.ok(t, nil, "sign", "rt-sig", "--in", f("plain"), "--out", f("sig.b64"))
	if got := s.ok(t, nil, "decrypt", "rt-dek", "--in", f("ct.b64")); got != string(plain) {
		t.Errorf("decrypt of encrypt's file: %q", got)
	}
	if got := s.ok(t, nil, "unwrap", "rt-kek", "--in", f("wrapped.b64")); got != string(material) {
		t.Errorf("unwrap of wrap's file: %x, want %x", got, material)
	}
	if got := s.ok(t, plain, "verify", "rt-sig", "--signature", f("sig.b64")); got != "signature valid\n" {
		t.Errorf("verify of sign's file: %q", got)
	}
	if r := s.client([]byte("other data")).run(t, "verify", "rt-sig", "--signature", f("sig.b64")); r.code != 1 ||
		!strings.Contains(r.stderr, "signature invalid") {
		t.Errorf("verify of other data: %s", r)
	}
	// Raw on both sides.
	raw := s.ok(t, plain, "encrypt", "rt-dek", "--encoding", "raw")
	if got := s.ok(t, []byte(raw), "decrypt", "rt-dek", "--in-encoding", "raw"); got != string(plain) {
		t.Errorf("encrypt --encoding raw | decrypt --in-encoding raw: %q", got)
	}
	rawSig := s.ok(t, plain, "sign", "rt-sig", "--encoding", "raw", "--out", f("sig.raw"))
	if rawSig != "" {
		t.Errorf("sign --out wrote to stdout too: %q", rawSig)
	}
	if got := s.ok(t, plain, "verify", "rt-sig", "--signature", f("sig.raw"), "--signature-encoding", "raw"); got != "signature valid\n" {
		t.Errorf("verify --signature-encoding raw: %q", got)
	}

	// An encoding mismatch is refused (exit 1) with the flag that reads the
	// input as it is.
	rawCT := []byte(raw)
	rawWrapped := s.ok(t, material, "wrap", "rt-kek", "--encoding", "raw")
	b64CT, _ := os.ReadFile(f("ct.b64"))
	b64Wrapped, _ := os.ReadFile(f("wrapped.b64"))
	for _, c := range []struct {
		name  string
		stdin []byte
		args  []string
		hint  string
	}{
		{"decrypt base64 read raw", b64CT, []string{"decrypt", "rt-dek", "--in-encoding", "raw"}, "give --in-encoding base64"},
		{"decrypt raw read as base64", rawCT, []string{"decrypt", "rt-dek"}, "give --in-encoding raw"},
		{"unwrap base64 read raw", b64Wrapped, []string{"unwrap", "rt-kek", "--in-encoding", "raw"}, "give --in-encoding base64"},
		{"unwrap raw read as base64", []byte(rawWrapped), []string{"unwrap", "rt-kek"}, "give --in-encoding raw"},
		{"verify base64 signature read raw", plain, []string{"verify", "rt-sig", "--signature", f("sig.b64"), "--signature-encoding", "raw"},
			"give --signature-encoding base64"},
		{"verify raw signature read as base64", plain, []string{"verify", "rt-sig", "--signature", f("sig.raw")}, "give --signature-encoding raw"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := s.client(c.stdin).run(t, c.args...)
			if r.code != 1 || !strings.Contains(r.stderr, c.hint) || r.stdout != "" {
				t.Fatalf("want exit 1 with the hint %q; %s", c.hint, r)
			}
		})
	}
}

// TestKeysCommandsCLI: keys create takes NAME; its errors name flags, not
// API fields; keys get shows versions, expiry, metadata and provider
// references; keys delete and keys list follow -o json.
func TestKeysCommandsCLI(t *testing.T) {
	s := startServer(t, "", nil)
	jsonKey := func(args ...string) apitypes.Key {
		t.Helper()
		var k apitypes.Key
		out := s.ok(t, nil, append(args, "-o", "json")...)
		if err := json.Unmarshal([]byte(out), &k); err != nil {
			t.Fatalf("%v -o json: %v\n%s", args, err, out)
		}
		return k
	}

	t.Run("create NAME", func(t *testing.T) {
		if k := jsonKey("keys", "create", "cli-pos", "--type", "EC", "--curve", "P-256"); k.Name != "cli-pos" || k.Curve != "P-256" {
			t.Fatalf("keys create NAME: %+v", k)
		}
		if k := jsonKey("keys", "create", "--name", "cli-flag", "--type", "Ed25519"); k.Name != "cli-flag" {
			t.Fatalf("keys create --name: %+v", k)
		}
		if r := s.client(nil).run(t, "keys", "create", "a", "--name", "b", "--type", "Ed25519"); r.code != 2 || !strings.Contains(r.stderr, "not both") {
			t.Fatalf("keys create NAME --name: %s", r)
		}
	})

	t.Run("errors name flags", func(t *testing.T) {
		for _, c := range []struct {
			args []string
			says string
		}{
			{[]string{"keys", "create", "e1", "--type", "EC"}, "--curve"},
			{[]string{"keys", "create", "--type", "EC", "--curve", "P-256"}, "needs NAME (or --name)"},
			{[]string{"keys", "create", "--name", "", "--type", "EC", "--curve", "P-256"}, "needs NAME (or --name)"},
			{[]string{"keys", "create", "e2"}, "--type is required"},
			{[]string{"keys", "create", "e3", "--type", "RSA"}, "--size 2048, 3072 or 4096"},
			{[]string{"keys", "create", "e4", "--type", "RSA", "--size", "1000"}, "--size 1000 is not allowed for RSA keys"},
			{[]string{"keys", "create", "e5", "--type", "EC", "--size", "300"}, "--size 300 is not an EC size (256, 384 or 521), or give --curve"},
			{[]string{"keys", "create", "e6", "--type", "EC", "--curve", "P-999"}, `--curve "P-999"`},
			{[]string{"keys", "create", "e7", "--type", "DSA", "--size", "2048"}, `--type "DSA"`},
			{[]string{"keys", "create", "e8", "--type", "AES", "--size", "256", "--curve", "P-256"}, "--curve"},
			{[]string{"keys", "create", "e9", "--type", "AES", "--size", "256", "--expires-at", "tomorrow"}, "--expires-at"},
			{[]string{"keys", "create", "e10", "--type", "AES", "--size", "256", "--metadata", "team"}, "--metadata"},
		} {
			r := s.client(nil).run(t, c.args...)
			if r.code == 0 || !strings.Contains(r.stderr, c.says) || strings.Contains(r.stderr, "key_spec") ||
				strings.Contains(r.stderr, "key_type") || strings.Contains(r.stderr, "must be 1 to 128 characters") {
				t.Errorf("%v: want a failure naming %q, no API field; %s", c.args, c.says, r)
			}
		}
		// What only the server refuses, it refuses naming its field; the CLI
		// adds the flag that set it.
		for _, c := range []struct {
			args []string
			flag string
		}{
			{[]string{"keys", "update", "cli-pos", "--rotation-period", "500ms"}, "--rotation-period"},
			{[]string{"keys", "update", "cli-pos", "--min-decrypt-version", "9"}, "--min-decrypt-version"},
			{[]string{"keys", "update", "cli-pos", "--expires-at", "2001-01-01T00:00:00Z"}, "--expires-at"},
			{[]string{"keys", "delete", "cli-pos", "--pending-window-days", "99"}, "--pending-window-days"},
			{[]string{"keys", "delete", "cli-pos", "--pending-window", "5ms"}, "--pending-window"},
			{[]string{"keys", "list", "--state", "lost"}, "--state"},
			{[]string{"keys", "create", "e11", "--type", "AES", "--size", "256", "--usage", "sign"}, "--usage"},
			{[]string{"keys", "create", "e12", "--type", "EC", "--curve", "P-256", "--algorithm", "RS256"}, "--algorithm"},
		} {
			r := s.client(nil).run(t, c.args...)
			if r.code != 1 || !strings.Contains(r.stderr, "\n(from "+c.flag+")\n") {
				t.Errorf("%v: want exit 1 naming %s; %s", c.args, c.flag, r)
			}
		}
		if k := jsonKey("keys", "get", "cli-pos"); k.State != "active" || k.RotationPeriod != "" || k.ExpiresAt != nil {
			t.Errorf("a refused update or delete changed the key: %+v", k)
		}
		// None of them made a key.
		var l apitypes.KeyList
		if err := json.Unmarshal([]byte(s.ok(t, nil, "keys", "list", "-o", "json")), &l); err != nil {
			t.Fatal(err)
		}
		for _, k := range l.Keys {
			if strings.HasPrefix(k.Name, "e") {
				t.Errorf("a refused create made %s", k.Name)
			}
		}
	})

	t.Run("get shows the detail", func(t *testing.T) {
		jsonKey("keys", "create", "cli-detail", "--type", "EC", "--curve", "P-384", "--description", "detail test")
		jsonKey("keys", "update", "cli-detail", "--metadata", "team=payments,env=prod", "--expires-at", "2030-01-02T03:04:05Z")
		jsonKey("keys", "rotate", "cli-detail")
		k := jsonKey("keys", "get", "cli-detail")
		if len(k.Versions) != 2 || k.Versions[0].ProviderRef == "" || k.Versions[1].ProviderRef == "" {
			t.Fatalf("keys get -o json: %+v", k)
		}
		out := s.ok(t, nil, "keys", "get", "cli-detail")
		for _, want := range []string{
			"ID:", k.ID, "Description:", "detail test", "Provider:", "software", "Type:", "EC P-384",
			"Current version:        2", "Expires:                2030-01-02T03:04:05Z",
			"Metadata:", "  env ", "prod", "  team ", "payments",
			"Versions:", "PROVIDER REFERENCE", k.Versions[0].ProviderRef, k.Versions[1].ProviderRef,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("keys get lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("delete -o json", func(t *testing.T) {
		jsonKey("keys", "create", "cli-del", "--type", "AES", "--size", "128")
		for _, flag := range []string{"-o", "--output"} {
			out := s.ok(t, nil, "keys", "delete", "cli-del", flag, "json")
			var k apitypes.Key
			if err := json.Unmarshal([]byte(out), &k); err != nil || k.Name != "cli-del" || k.State != "pending_deletion" || k.DeletionDate == nil {
				t.Fatalf("keys delete %s json: %v\n%s", flag, err, out)
			}
			jsonKey("keys", "cancel-deletion", "cli-del")
		}
		if out := s.ok(t, nil, "keys", "delete", "cli-del"); !strings.Contains(out, "scheduled for deletion on ") {
			t.Fatalf("keys delete (table): %s", out)
		}
	})

	t.Run("-o json", func(t *testing.T) {
		var l apitypes.KeyList
		out := s.ok(t, nil, "keys", "list", "-o", "json")
		if err := json.Unmarshal([]byte(out), &l); err != nil || l.Count == 0 || l.Count != len(l.Keys) {
			t.Fatalf("keys list -o json: %v\n%s", err, out)
		}
		var p apitypes.ProviderList
		if out := s.ok(t, nil, "providers", "-o", "json"); json.Unmarshal([]byte(out), &p) != nil || len(p.Providers) != 1 || p.Providers[0].Name != "software" {
			t.Fatalf("providers -o json: %s", out)
		}
		var h map[string]json.RawMessage
		if out := s.ok(t, nil, "health", "-o", "json"); json.Unmarshal([]byte(out), &h) != nil || h["health"] == nil || h["ready"] == nil {
			t.Fatalf("health -o json: %s", out)
		}
		var pk apitypes.PublicKey
		if out := s.ok(t, nil, "keys", "public", "cli-pos", "-o", "json"); json.Unmarshal([]byte(out), &pk) != nil || !strings.Contains(pk.PublicKey, "BEGIN PUBLIC KEY") {
			t.Fatalf("keys public -o json: %s", out)
		}
		var a auditResult
		if out := s.ok(t, nil, "audit", "verify", filepath.Join(s.dataDir, "audit.log"), "-o", "json"); json.Unmarshal([]byte(out), &a) != nil ||
			!a.OK || a.Lines == 0 || a.Files != 1 || a.LastHash == "" {
			t.Fatalf("audit verify -o json: %s", out)
		}
		if out := s.ok(t, nil, "keys", "list"); !strings.HasPrefix(out, "ID  ") || json.Valid([]byte(out)) {
			t.Fatalf("keys list (table): %s", out)
		}
	})

	t.Run("public --format", func(t *testing.T) {
		pemOut := s.ok(t, nil, "keys", "public", "cli-pos")
		der := s.ok(t, nil, "keys", "public", "cli-pos", "--format", "der")
		jwk := s.ok(t, nil, "keys", "public", "cli-pos", "-f", "jwk")
		switch {
		case !strings.HasPrefix(pemOut, "-----BEGIN PUBLIC KEY-----"):
			t.Errorf("--format pem: %q", pemOut)
		case len(der) == 0 || der[0] != 0x30 || bytes.Contains([]byte(der), []byte("BEGIN")):
			t.Errorf("--format der is not DER: %q", der)
		case !strings.Contains(jwk, `"kty": "EC"`):
			t.Errorf("--format jwk: %q", jwk)
		}
		if r := s.client(nil).run(t, "keys", "public", "cli-pos", "--format", "xyz"); r.code != 2 || r.stdout != "" {
			t.Errorf("--format xyz: %s", r)
		}
	})
}
