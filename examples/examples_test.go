// Package examples_test checks the configuration files in examples/ with the
// built binary, as an operator would: `keygrid-hsm config check FILE` must
// accept each one, and the examples that can run on this machine (the
// software keystore, SoftHSM2) are started for real.
//
// Secrets: the examples name their secrets by environment variable or file
// (pin_env, dsn_env, master_key_file, secret_access_key_env, token_env, …),
// never by value. `config check` reads no secret, so it runs with those
// variables and every KEYGRID_* variable removed from the environment: an
// example passes on a machine that has none of its secrets. The run tests
// set the variables they need.
package examples_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// example is one file in examples/ and what `config check` must report.
type example struct {
	file string
	want []string // lines of config check's output
}

var examples = []example{
	{"software.yaml", []string{"listen 127.0.0.1:8080, tls false", "storage sqlite /var/lib/keygrid-hsm/keygrid.db", "providers software (software)"}},
	{"softhsm2.yaml", []string{"listen 127.0.0.1:8080, tls false", "storage sqlite data-softhsm2/keygrid.db", "providers softhsm (pkcs11)"}},
	{"aws-cloudhsm.yaml", []string{"listen 0.0.0.0:8443, tls true", "providers aws-cloudhsm (aws-cloudhsm)"}},
	{"postgres-replicas.yaml", []string{"listen 0.0.0.0:8443, tls true", "storage postgres (no dsn)", "providers hsm (pkcs11)"}},
	{"tls-client-certs.yaml", []string{"listen 0.0.0.0:8443, tls true", "providers software (software)"}},
	{"xks.yaml", []string{"listen 0.0.0.0:443, tls true", "providers hsm (pkcs11)"}},
}

// secretVars are the variables the examples read secrets from.
var secretVars = []string{"KEYGRID_MASTER_KEY", "HSM_PIN", "CLOUDHSM_PIN", "KEYGRID_PG_DSN", "KEYGRID_OPS_TOKEN", "XKS_MAIN_SECRET"}

var build struct {
	once sync.Once
	bin  string
	err  error
	out  []byte
}

// binary builds keygrid-hsm once per test binary.
func binary(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "keygrid-examples-bin-")
		if err != nil {
			build.err = err
			return
		}
		build.bin = filepath.Join(dir, "keygrid-hsm")
		build.out, build.err = exec.Command("go", "build", "-o", build.bin, "github.com/keygrid/keygrid-hsm/cmd/keygrid-hsm").CombinedOutput()
	})
	if build.err != nil {
		t.Fatalf("go build: %v\n%s", build.err, build.out)
	}
	return build.bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if build.bin != "" {
		os.RemoveAll(filepath.Dir(build.bin))
	}
	os.Exit(code)
}

// cleanEnv is the environment without KEYGRID_* and the examples' secrets.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		secret := strings.HasPrefix(name, "KEYGRID_")
		for _, s := range secretVars {
			secret = secret || name == s
		}
		if !secret {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// TestEveryExampleIsChecked: a file added to examples/ without an entry in
// the table above fails, so none escapes the check.
func TestEveryExampleIsChecked(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, e := range examples {
		listed = append(listed, e.file)
	}
	sort.Strings(files)
	sort.Strings(listed)
	if strings.Join(files, " ") != strings.Join(listed, " ") {
		t.Fatalf("examples/*.yaml are %v, the test checks %v", files, listed)
	}
}

func TestConfigCheck(t *testing.T) {
	bin := binary(t)
	for _, e := range examples {
		t.Run(e.file, func(t *testing.T) {
			cmd := exec.Command(bin, "config", "check", e.file)
			cmd.Env = cleanEnv()
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("keygrid-hsm config check %s: %v\nstdout: %s\nstderr: %s", e.file, err, stdout.String(), stderr.String())
			}
			out := stdout.String()
			if !strings.HasPrefix(out, e.file+": configuration OK\n") {
				t.Errorf("output does not start with %q:\n%s", e.file+": configuration OK", out)
			}
			for _, w := range e.want {
				if !strings.Contains(out, "  "+w+"\n") {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestConfigCheckRefusesABrokenExample shows that the check above can fail:
// an example with a field misspelled, or a provider setting of a type this
// build lacks, is refused with exit status 1.
func TestConfigCheckRefusesABrokenExample(t *testing.T) {
	bin := binary(t)
	src, err := os.ReadFile("softhsm2.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string][2]string{
		"unknown provider setting": {"token_label:", "token_lable:"},
		"unknown top-level field":  {"default_provider:", "default_providr:"},
		"plain HTTP off loopback":  {"listen: 127.0.0.1:8080", "listen: 0.0.0.0:8080"},
	} {
		t.Run(name, func(t *testing.T) {
			if !bytes.Contains(src, []byte(edit[0])) {
				t.Fatalf("softhsm2.yaml has no %q", edit[0])
			}
			f := filepath.Join(t.TempDir(), "broken.yaml")
			if err := os.WriteFile(f, bytes.Replace(src, []byte(edit[0]), []byte(edit[1]), 1), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "config", "check", f)
			cmd.Env = cleanEnv()
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("config check of a broken file: %v (want exit 1)\n%s", err, out)
			}
		})
	}
}

// TestNoSecretInExamples: an example names where a secret comes from, never
// the secret itself.
func TestNoSecretInExamples(t *testing.T) {
	forbidden := map[string]bool{"dsn": true, "pin": true, "token": true, "master_key": true, "secret_access_key": true, "password": true}
	for _, e := range examples {
		b, err := os.ReadFile(e.file)
		if err != nil {
			t.Fatal(err)
		}
		var doc any
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", e.file, err)
		}
		var walk func(path string, v any)
		walk = func(path string, v any) {
			switch v := v.(type) {
			case map[string]any:
				for k, x := range v {
					if forbidden[k] {
						t.Errorf("%s: %s%s holds a secret in the file; use %s_env or %s_file", e.file, path, k, k, k)
					}
					walk(path+k+".", x)
				}
			case []any:
				for _, x := range v {
					walk(path+"[]", x)
				}
			}
		}
		walk("", doc)
	}
}

// TestSoftwareExampleServes starts the gateway on software.yaml with a real
// master key in a file; data_dir, listen address and the key's path are moved
// into a scratch directory by the KEYGRID_* overrides the file documents.
func TestSoftwareExampleServes(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "master.key")
	mk := make([]byte, 32)
	for i := range mk {
		mk[i] = byte(i*7 + 1)
	}
	if err := os.WriteFile(key, []byte(base64.StdEncoding.EncodeToString(mk)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs("software.yaml")
	if err != nil {
		t.Fatal(err)
	}
	addr := testbed.FreeAddr(t)
	data := filepath.Join(dir, "data")
	serve(t, bin, dir, cleanEnv("KEYGRID_DATA_DIR="+data, "KEYGRID_LISTEN="+addr,
		"KEYGRID_PROVIDERS_SOFTWARE_CONFIG_MASTER_KEY_FILE="+key), abs, addr)
	if _, err := os.Stat(filepath.Join(data, "master.key")); err == nil {
		t.Error("the gateway generated data/master.key although software.yaml names master_key_file")
	}
	if _, err := os.Stat(filepath.Join(data, "keystore", "software", "master.check")); err != nil {
		t.Errorf("no keystore made under the data directory: %v", err)
	}
}

// TestSoftHSM2ExampleDoctor runs doctor (module, token, login, mechanisms, a
// sign/verify) on softhsm2.yaml against a fresh SoftHSM2 token labelled as
// the file says, with the PIN in HSM_PIN, then serves it.
func TestSoftHSM2ExampleDoctor(t *testing.T) {
	testbed.Require(t, "softhsm2-util", testbed.SoftHSMModule)
	bin := binary(t)
	dir := t.TempDir()
	soft, err := testbed.NewSoftHSM(filepath.Join(dir, "hsm"), "keygrid", "1234")
	if err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs("softhsm2.yaml")
	if err != nil {
		t.Fatal(err)
	}
	env := cleanEnv("SOFTHSM2_CONF="+soft.Conf, "HSM_PIN=1234")
	cmd := exec.Command(bin, "doctor", "--config", abs)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("doctor --config softhsm2.yaml: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("PASS")) || bytes.Contains(out, []byte("FAIL")) {
		t.Fatalf("doctor output:\n%s", out)
	}
	addr := testbed.FreeAddr(t)
	serve(t, bin, dir, append(env, "KEYGRID_LISTEN="+addr), abs, addr)
}

// serve starts `keygrid-hsm serve --config file` in dir and waits until
// GET /ready answers 200; the process is stopped at the end of the test.
func serve(t *testing.T, bin, dir string, env []string, file, addr string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "serve", "--config", file)
	var logs bytes.Buffer
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = dir, env, &logs, &logs
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("serve --config %s exited: %v\n%s", file, err, logs.String())
		default:
		}
		resp, err := http.Get("http://" + addr + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve --config %s: not ready after 60s (last: %v)\n%s", file, err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
