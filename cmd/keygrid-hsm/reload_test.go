package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// The attack: a token removed from the configuration keeps working until a
// restart. `keygrid-hsm reload` (SIGHUP to the serving process) re-reads
// principals and tokens: the removed token is refused within a second, the
// others keep working, a bad file is refused and the running
// configuration kept, and each reload is audited.
func TestReloadOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	mk := filepath.Join(dir, "master.key")
	if err := os.WriteFile(mk, []byte(strings.Repeat("ab", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	const keep, drop = "kgt_reload-keeps-this-token-0001", "kgt_reload-drops-this-token-0002"
	cfgFor := func(tokens ...string) string {
		s := testbed.Providers(testbed.SoftwareProvider{MasterKeyFile: mk}) + fmt.Sprintf("data_dir: %s\nauth:\n  principals:\n", filepath.Join(dir, "data"))
		for i, tok := range tokens {
			s += fmt.Sprintf("    - {name: p%d, role: admin, token_sha256: %s}\n", i, auth.HashToken(tok))
		}
		return s
	}
	cfgPath := filepath.Join(dir, "keygrid.yaml")
	write := func(s string) {
		if err := os.WriteFile(cfgPath, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(cfgFor(keep, drop))
	var logs testbed.LogBuffer
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- runServe(ctx, serveOptions{config: cfgPath, listen: "127.0.0.1:0"}, &logs) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	addrRE := regexp.MustCompile(`msg="keygrid-hsm serving" addr=(\S+)`)
	waitFor(t, "the server to listen", func() bool { return addrRE.MatchString(logs.String()) })
	url := "http://" + addrRE.FindStringSubmatch(logs.String())[1] + "/api/v1/keys"
	status := func(tok string) int {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if status(keep) != 200 || status(drop) != 200 {
		t.Fatal("tokens not accepted at start")
	}
	audit := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "data", "audit.log"))
		m, _ := filepath.Glob(filepath.Join(dir, "data", "audit.log.*"))
		for _, f := range m {
			r, _ := os.ReadFile(f)
			b = append(b, r...)
		}
		return string(b)
	}

	// Remove one token and reload: refused within a second.
	write(cfgFor(keep))
	if code, out, errs := cliRun("", "reload", "--config", cfgPath); code != 0 || !strings.Contains(out, "SIGHUP") {
		t.Fatalf("reload: %d %s %s", code, out, errs)
	}
	deadline := time.Now().Add(time.Second)
	for status(drop) != http.StatusUnauthorized {
		if time.Now().After(deadline) {
			t.Fatal("the removed token still works a second after the reload")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if status(keep) != 200 {
		t.Fatal("the kept token stopped working")
	}
	waitFor(t, "the reload's audit record", func() bool {
		return strings.Contains(audit(), `"operation":"config_reload","outcome":"success"`) && strings.Contains(audit(), "removed [p1]")
	})

	// A bad file: refused, the running configuration kept.
	for name, bad := range map[string]string{
		"not YAML":           "auth: [\n",
		"invalid principals": cfgFor(keep) + "    - {name: p0, role: admin, token_sha256: " + auth.HashToken(drop) + "}\n",
	} {
		t.Run(name, func(t *testing.T) {
			write(bad)
			before := strings.Count(audit(), `"operation":"config_reload","outcome":"failure"`)
			code, _, errs := cliRun("", "reload", "--config", cfgPath)
			if name == "not YAML" {
				// keygrid-hsm reload reads the file to find the server:
				// it says the file is bad and signals nothing; a plain
				// kill -HUP still reaches the server.
				if code == 0 || !strings.Contains(errs, "config") {
					t.Fatalf("reload of a file that does not load: %d %s", code, errs)
				}
				if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
					t.Fatal(err)
				}
			} else if code != 0 {
				t.Fatalf("reload: %d %s", code, errs)
			}
			waitFor(t, "the refused reload's audit record", func() bool {
				return strings.Count(audit(), `"operation":"config_reload","outcome":"failure"`) == before+1
			})
			if status(keep) != 200 || status(drop) != http.StatusUnauthorized {
				t.Fatal("a refused reload changed the running configuration")
			}
		})
	}
	if strings.Contains(logs.String(), keep) || strings.Contains(audit(), keep) {
		t.Fatal("a token reached a log")
	}
}
