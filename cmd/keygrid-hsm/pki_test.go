package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// TestPKICommands: csr, cert issue (self-signed and from a CSR), cert
// attach and get, jwt sign and jwks against a served gateway; openssl and
// go-jose check what they print.
func TestPKICommands(t *testing.T) {
	testbed.Require(t, "openssl")
	dir := t.TempDir()
	for _, v := range []string{"KEYGRID_TOKEN", "KEYGRID_TOKEN_FILE", "KEYGRID_DATA_DIR", "KEYGRID_LISTEN"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	var logs testbed.LogBuffer
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- runServe(ctx, serveOptions{listen: "127.0.0.1:0", dataDir: filepath.Join(dir, "data")}, &logs)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	addrRE := regexp.MustCompile(`msg="keygrid-hsm serving" addr=(\S+)`)
	waitFor(t, "the server to listen", func() bool { return addrRE.MatchString(logs.String()) })
	t.Setenv("KEYGRID_ADDR", "http://"+addrRE.FindStringSubmatch(logs.String())[1])
	t.Setenv("KEYGRID_TOKEN_FILE", filepath.Join(dir, "data", "admin.token"))
	must := func(args ...string) string {
		t.Helper()
		code, out, errs := cliRun("", args...)
		if code != 0 {
			t.Fatalf("%s: exit %d\n%s%s", strings.Join(args, " "), code, out, errs)
		}
		return out
	}
	must("keys", "create", "--name", "cli-ca", "--type", "EC", "--curve", "P-256")
	must("keys", "create", "--name", "cli-leaf", "--type", "Ed25519", "--publish-jwks")
	root := filepath.Join(dir, "root.pem")
	must("cert", "issue", "cli-ca", "--self-signed", "--cn", "CLI Root", "--validity", "8760h", "--ca", "--max-path-len", "0", "--out", root)
	must("cert", "attach", "cli-ca", root)
	csr := filepath.Join(dir, "leaf.csr")
	must("csr", "cli-leaf", "--cn", "leaf.example", "--dns", "leaf.example,www.leaf.example", "--org", "CLI", "--out", csr)
	if out, err := exec.Command("openssl", "req", "-in", csr, "-verify", "-noout").CombinedOutput(); err != nil {
		t.Fatalf("openssl req -verify: %v\n%s", err, out)
	}
	leaf := filepath.Join(dir, "leaf.pem")
	must("cert", "issue", "cli-ca", "--csr", csr, "--validity", "720h", "--ext-key-usage", "server_auth", "--crl", "http://crl.example/ca.crl", "--out", leaf)
	if out, err := exec.Command("openssl", "verify", "-CAfile", root, leaf).CombinedOutput(); err != nil {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	if got := must("cert", "get", "cli-ca"); !strings.Contains(got, "BEGIN CERTIFICATE") {
		t.Fatalf("cert get: %s", got)
	}
	if code, _, errs := cliRun("", "cert", "attach", "cli-leaf", root); code != 1 || !strings.Contains(errs, "INVALID_INPUT") {
		t.Fatalf("attaching another key's certificate: exit %d %s", code, errs)
	}

	tok := strings.TrimSpace(must("jwt", "sign", "cli-leaf", "--claim", "sub=alice", "--claim", "n=7", "--exp", "15m"))
	var set jose.JSONWebKeySet
	if err := json.Unmarshal([]byte(must("jwks", "--published")), &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("jwks --published: %+v, %v", set, err)
	}
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := parsed.Claims(set.Keys[0].Key, &claims); err != nil {
		t.Fatalf("verify with the published key: %v", err)
	}
	if claims["sub"] != "alice" || claims["n"] != float64(7) || claims["exp"] == nil {
		t.Fatalf("claims %v", claims)
	}
}
