package main

import (
	"os"
	"strings"
	"testing"
)

// doctor says whether requests are rate limited per principal, and how to
// set a limit when none is (the default).
func TestDoctorRateLimitLine(t *testing.T) {
	for _, c := range []struct{ name, yaml, want string }{
		{"off by default", "", "INFO  rate-limit   off: no per-principal rate limit; set limits.rate_per_principal"},
		{"configured", "limits:\n  rate_per_principal: 250\n", "INFO  rate-limit   250 requests/s per principal, burst 500"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := gatewayConfig(t)
			if c.yaml != "" {
				b, err := os.ReadFile(cfg)
				if err == nil {
					err = os.WriteFile(cfg, append(b, c.yaml...), 0o600)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			code, out, errOut := cliRun("", "doctor", "--config", cfg)
			if code != 0 || !strings.Contains(out, c.want) {
				t.Fatalf("exit %d, want a line %q:\n%s%s", code, c.want, out, errOut)
			}
		})
	}
}
