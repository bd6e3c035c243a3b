package server_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// Reload swaps principals and their limits at once, and a configuration
// that does not validate changes nothing.
func TestReloadPrincipalsAndLimits(t *testing.T) {
	t.Parallel()
	e := startYAML(t, securityYAML(t, ""), nil)
	lim := e.as(limitedTok)
	load := func(yaml string) *config.Config {
		cfg, err := config.Load(testbed.WriteConfig(t, yaml), config.Flags{DataDir: e.dataDir, Listen: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	types := registry.All().Types()
	// A bad configuration (an unknown role): refused, nothing changes.
	bad := load(strings.Replace(securityYAML(t, ""), "role: auditor", "role: god", 1))
	if err := e.srv.Reload(context.Background(), bad, types); err == nil {
		t.Fatal("an invalid configuration was applied")
	}
	if r := e.as(auditorTok).send(t, http.MethodGet, "/api/v1/keys", nil); r.status != http.StatusOK {
		t.Fatalf("auditor after a refused reload: %d", r.status)
	}
	// Raise limited's burst from 3 to 50 and drop the auditor.
	good := load(strings.Replace(strings.Replace(securityYAML(t, ""), "burst: 3", "burst: 50", 1),
		"{name: auditor, role: auditor, token_sha256: "+auth.HashToken(auditorTok), "{name: auditor2, role: auditor, token_sha256: "+auth.HashToken("kgt_another-auditor-token-0009"), 1))
	if err := e.srv.Reload(context.Background(), good, types); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if r := lim.send(t, http.MethodGet, "/api/v1/keys", nil); r.status != http.StatusOK {
			t.Fatalf("request %d after raising the burst: %d", i, r.status)
		}
	}
	if r := e.as(auditorTok).send(t, http.MethodGet, "/api/v1/keys", nil); r.status != http.StatusUnauthorized {
		t.Fatalf("removed auditor: %d", r.status)
	}
	recs := e.auditByOp(t, "config_reload")
	if len(recs) != 2 || recs[0].Outcome != "failure" || recs[1].Outcome != "success" || !strings.Contains(recs[1].Detail, "removed [auditor]") {
		t.Fatalf("reload records %+v", recs)
	}
}
