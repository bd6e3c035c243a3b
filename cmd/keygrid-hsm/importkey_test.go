package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// keys import wraps on the client: an openssl-made EC key and a raw AES key
// imported into the embedded server's software provider; the EC key signs
// (openssl verifies with the original public key) and, imported
// extractable, exports under openssl's RSA key, which opens it to the same
// public key.
func TestCLIImportExport(t *testing.T) {
	testbed.Require(t, "openssl")
	dir := t.TempDir()
	t.Chdir(dir)
	for _, v := range []string{"KEYGRID_TOKEN", "KEYGRID_TOKEN_FILE", "KEYGRID_DATA_DIR", "KEYGRID_LISTEN"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	var logs testbed.LogBuffer
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- runServe(ctx, serveOptions{listen: "127.0.0.1:0"}, &logs) }()
	t.Cleanup(func() { cancel(); <-served })
	addrRE := regexp.MustCompile(`msg="keygrid-hsm serving" addr=(\S+)`)
	waitFor(t, "the server to listen", func() bool { return addrRE.MatchString(logs.String()) })
	t.Setenv("KEYGRID_ADDR", "http://"+addrRE.FindStringSubmatch(logs.String())[1])

	sh := func(args ...string) []byte {
		t.Helper()
		out, err := exec.Command("openssl", args...).Output()
		if err != nil {
			t.Fatalf("openssl %v: %v", args, err)
		}
		return out
	}
	keyPEM := filepath.Join(dir, "ec.pem")
	sh("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", keyPEM)
	pubPEM := string(sh("pkey", "-in", keyPEM, "-pubout"))
	if code, out, errs := cliRun("", "keys", "import", "--name", "cli-imported", "--provider", "software", "--in", keyPEM, "--extractable"); code != 0 || !strings.Contains(out, "cli-imported") {
		t.Fatalf("keys import: %d\n%s%s", code, out, errs)
	}
	code, out, errs := cliRun("hello", "sign", "cli-imported", "--output", "json")
	if code != 0 {
		t.Fatalf("sign: %d %s", code, errs)
	}
	var sig struct{ Signature []byte }
	if err := json.Unmarshal([]byte(out), &sig); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	testbed.OpenSSLVerify(t, pubPEM, "ES256", []byte("hello"), sig.Signature)

	rsaPEM := filepath.Join(dir, "rsa.pem")
	sh("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rsaPEM)
	rsaPub := filepath.Join(dir, "rsa.pub")
	os.WriteFile(rsaPub, sh("pkey", "-in", rsaPEM, "-pubout"), 0o600)
	code, out, errs = cliRun("", "keys", "export", "cli-imported", "--public-key", rsaPub)
	if code != 0 {
		t.Fatalf("keys export: %d %s", code, errs)
	}
	var ex struct {
		WrappedKey []byte `json:"wrapped_key"`
	}
	if err := json.Unmarshal([]byte(out), &ex); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	priv, _ := os.ReadFile(rsaPEM)
	pkcs8 := testbed.OpenSSLUnwrapRSAAES(t, string(priv), 256, ex.WrappedKey)
	der := filepath.Join(dir, "exported.der")
	os.WriteFile(der, pkcs8, 0o600)
	if got := string(sh("pkey", "-inform", "DER", "-in", der, "-pubout")); got != pubPEM {
		t.Errorf("the exported key's public key is\n%s\nwant\n%s", got, pubPEM)
	}

	// --version-of: a second openssl key becomes the key's version 2 and
	// signs from then on.
	key2 := filepath.Join(dir, "ec2.pem")
	sh("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key2)
	pub2 := string(sh("pkey", "-in", key2, "-pubout"))
	if code, out, errs := cliRun("", "keys", "import", "--version-of", "cli-imported", "--in", key2, "--output", "json"); code != 0 || !strings.Contains(out, `"version": 2`) {
		t.Fatalf("keys import --version-of: %d\n%s%s", code, out, errs)
	}
	if code, _, errs := cliRun("", "keys", "import", "--version-of", "cli-imported", "--name", "x", "--in", key2); code == 0 || !strings.Contains(errs, "--name") {
		t.Errorf("keys import --version-of with --name: %d %s", code, errs)
	}
	code, out, errs = cliRun("hello", "sign", "cli-imported", "--output", "json")
	if code != 0 {
		t.Fatalf("sign: %d %s", code, errs)
	}
	if err := json.Unmarshal([]byte(out), &sig); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	testbed.OpenSSLVerify(t, pub2, "ES256", []byte("hello"), sig.Signature)

	raw := filepath.Join(dir, "aes.bin")
	os.WriteFile(raw, bytes.Repeat([]byte{7}, 32), 0o600)
	if code, out, errs := cliRun("", "keys", "import", "--name", "cli-aes", "--provider", "software", "--in", raw, "--type", "AES"); code != 0 || !strings.Contains(out, "cli-aes") {
		t.Fatalf("keys import raw AES: %d\n%s%s", code, out, errs)
	}
	if code, _, errs := cliRun("", "keys", "export", "cli-aes", "--public-key", rsaPub); code != 1 || !strings.Contains(errs, "KEY_NOT_EXTRACTABLE") {
		t.Errorf("export of a key not imported extractable: %d %s", code, errs)
	}
	if strings.Contains(logs.String(), string(pkcs8[:16])) {
		t.Error("key material in the server log")
	}
}
