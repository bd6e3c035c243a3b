// Package e2e holds end-to-end tests of the gateway against real parts:
// SoftHSM2 tokens (in process and behind p11-kit server), openssl and
// pkcs11-tool as independent checkers.
package e2e

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

const hsmPIN = "kg-cu:e2e-pin-5678"

// The tests of this binary share one SoftHSM2 token (the fault bed makes
// tokens of its own).
func TestMain(m *testing.M) {
	os.Setenv("KEYGRID_E2E_PIN", hsmPIN)
	testbed.Main(m, testbed.WithSoftHSM("keygrid-e2e", hsmPIN), testbed.WithTPM2("keygrid-e2e-tpm", tpmPIN))
}

// gateway is a server on a real listener.
type gateway struct {
	t       testing.TB
	srv     *server.Server
	http    *httptest.Server
	URL     string
	C       *client.Client
	DataDir string
	cfgPath string
	// Token is the generated admin token (when the YAML has no principals).
	Token string
}

// gatewayTokens maps a gateway URL to its admin token, for helpers that
// make raw HTTP requests.
var gatewayTokens sync.Map

// authorize adds the admin token of the gateway at url to req.
func authorize(req *http.Request, url string) {
	if tok, ok := gatewayTokens.Load(url); ok {
		req.Header.Set("Authorization", "Bearer "+tok.(string))
	}
}

// hsmConfig is a configuration with the binary's SoftHSM2 token as
// provider "hsm" (the default) beside the software provider.
func hsmConfig(tb testing.TB) string {
	tb.Helper()
	return "default_provider: hsm\n" + testbed.Providers(
		testbed.PKCS11Provider{TokenLabel: testbed.ProcessSoftHSM(tb).Label, PinEnv: "KEYGRID_E2E_PIN", MaxSessions: 4},
		testbed.SoftwareProvider{MasterKeyEnv: "KEYGRID_E2E_MASTER_KEY"},
	) + `reconcile:
  grace: 1ms
  interval: 1h
keys:
  min_deletion_window: 1s
  min_rotation_period: 1s
  deletion_sweep_interval: 200ms
`
}

// startGateway builds a server from YAML in a fresh data directory (or
// dataDir, to restart on the same one).
func startGateway(t testing.TB, yaml, dataDir string) *gateway {
	t.Helper()
	os.Setenv("KEYGRID_E2E_MASTER_KEY", strings.Repeat("ab", 32))
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	path := testbed.WriteConfig(t, yaml)
	cfg, err := config.Load(path, config.Flags{DataDir: dataDir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(yaml, "rate_per_principal") {
		cfg.Limits.RatePerPrincipal = -1 // load tests: no rate limit unless the YAML sets one
	}
	srv, err := server.New(context.Background(), cfg, registry.All(), slog.New(slog.DiscardHandler), "e2e")
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway{t: t, srv: srv, DataDir: dataDir, cfgPath: path}
	g.http = httptest.NewServer(srv.Handler())
	g.URL = g.http.URL
	// With no principals configured the server made an admin token.
	if b, err := os.ReadFile(cfg.Auth.AdminTokenFile); err == nil {
		g.Token = strings.TrimSpace(string(b))
		gatewayTokens.Store(g.URL, g.Token)
	}
	g.C, _ = client.New(g.URL, client.WithToken(g.Token))
	t.Cleanup(g.Close)
	return g
}

// Close stops the listener and closes the server (idempotent).
func (g *gateway) Close() {
	if g.http != nil {
		g.http.Close()
		g.srv.Close()
		g.http = nil
	}
}
