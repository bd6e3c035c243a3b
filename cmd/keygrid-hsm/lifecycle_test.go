package main

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// TestKeysLifecycleCLI: keys update sets and clears what may change,
// refusing bad values with the server's message; keys delete prints the
// deletion date and the command that cancels it; keys cancel-deletion
// brings the key back inactive; a short window (the server's floor
// lowered) ends in KEY_NOT_FOUND.
func TestKeysLifecycleCLI(t *testing.T) {
	cfgPath := gatewayConfig(t)
	b, _ := os.ReadFile(cfgPath)
	lowered := string(b) + "keys:\n  min_deletion_window: 1s\n  deletion_sweep_interval: 100ms\n  min_rotation_period: 1s\n"
	if err := os.WriteFile(cfgPath, []byte(lowered), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"KEYGRID_TOKEN", "KEYGRID_TOKEN_FILE", "KEYGRID_LISTEN", "KEYGRID_DATA_DIR"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
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
	t.Setenv("KEYGRID_ADDR", "http://"+addrRE.FindStringSubmatch(logs.String())[1])
	cfg, err := config.Load(cfgPath, config.Flags{})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYGRID_TOKEN_FILE", cfg.Auth.AdminTokenFile)

	jsonKey := func(args ...string) apitypes.Key {
		t.Helper()
		code, out, errs := cliRun("", append(args, "--output", "json")...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errs)
		}
		var k apitypes.Key
		if err := json.Unmarshal([]byte(out), &k); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		return k
	}
	k := jsonKey("keys", "create", "--name", "cli-life", "--type", "EC", "--curve", "P-256", "--description", "made by the CLI")
	if k.Description != "made by the CLI" {
		t.Fatalf("create --description: %+v", k)
	}
	exp := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second).Format(time.RFC3339)
	u := jsonKey("keys", "update", "cli-life", "--metadata", "team=payments,env=prod", "--expires-at", exp,
		"--rotation-period", "2160h", "--min-decrypt-version", "1", "--description", "payments signer")
	if u.Metadata["team"] != "payments" || u.Metadata["env"] != "prod" || u.ExpiresAt == nil || u.ExpiresAt.Format(time.RFC3339) != exp ||
		u.RotationPeriod != "2160h0m0s" || u.NextRotationAt == nil || u.MinDecryptVersion != 1 || u.Description != "payments signer" {
		t.Fatalf("keys update: %+v", u)
	}
	u = jsonKey("keys", "update", "cli-life", "--expires-at", "none", "--rotation-period", "0s", "--clear-metadata")
	if u.ExpiresAt != nil || u.RotationPeriod != "" || len(u.Metadata) != 0 || u.Description != "payments signer" || u.MinDecryptVersion != 1 {
		t.Fatalf("keys update clearing: %+v", u)
	}
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"keys", "update", "cli-life", "--rotation-period", "500ms"}, "rotation_period"},
		{[]string{"keys", "update", "cli-life", "--min-decrypt-version", "9"}, "min_decrypt_version"},
		{[]string{"keys", "update", "cli-life"}, "nothing to update"},
		{[]string{"keys", "update", "cli-life", "--rotation-period", "soon"}, "--rotation-period"},
		{[]string{"keys", "delete", "cli-life", "--pending-window", "500ms"}, "INVALID_INPUT"},
		{[]string{"keys", "delete", "cli-life", "--pending-window-days", "31"}, "INVALID_INPUT"},
	} {
		if code, _, errs := cliRun("", c.args...); code != 1 || !strings.Contains(errs, c.says) {
			t.Errorf("%v: exit %d, %q; want exit 1 saying %s", c.args, code, errs, c.says)
		}
	}

	code, out, errs := cliRun("", "keys", "delete", "cli-life", "--pending-window-days", "7")
	if code != 0 || !strings.Contains(out, "scheduled for deletion on ") || !strings.Contains(out, "keygrid-hsm keys cancel-deletion "+k.ID) {
		t.Fatalf("keys delete: exit %d\n%s%s", code, out, errs)
	}
	if code, out, _ := cliRun("", "keys", "get", "cli-life"); code != 0 || !strings.Contains(out, "pending_deletion") {
		t.Fatalf("keys get of a pending key: %d %s", code, out)
	}
	if code, _, errs := cliRun("x", "sign", "cli-life"); code != 1 || !strings.Contains(errs, "KEY_PENDING_DELETION") {
		t.Fatalf("sign while pending: exit %d, %s", code, errs)
	}
	if c := jsonKey("keys", "cancel-deletion", "cli-life"); c.State != "inactive" || c.DeletionDate != nil {
		t.Fatalf("keys cancel-deletion: %+v", c)
	}
	if a := jsonKey("keys", "activate", "cli-life"); a.State != "active" {
		t.Fatalf("activate: %+v", a)
	}
	if code, _, errs := cliRun("", "keys", "delete", "cli-life", "--pending-window", "1s"); code != 0 {
		t.Fatalf("keys delete --pending-window 1s: %s", errs)
	}
	waitFor(t, "the key's destruction", func() bool {
		code, _, errs := cliRun("", "keys", "get", "cli-life")
		return code == 1 && strings.Contains(errs, "KEY_NOT_FOUND")
	})
}
