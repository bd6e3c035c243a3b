package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/pkcs11"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
)

// cmdDoctor verifies connectivity to the HSM of every PKCS#11 provider in a
// configuration (or of one, with --provider), a PASS/FAIL line per check.
func cmdDoctor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (YAML)")
	only := fs.String("provider", "", "check only this provider")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cfgPath == "" {
		// The embedded default has no HSM to check, and opening it would
		// write a data directory here.
		return errors.New("doctor: --config FILE is required (the configuration whose providers to check)")
	}
	cfg, err := config.Load(*cfgPath, config.Flags{})
	if err != nil {
		return err
	}
	reg := registry.All()
	if err := cfg.Validate(reg.Types()); err != nil {
		return err
	}
	fmt.Fprintln(stdout, rateLimitLine(cfg))
	failed, checked := false, 0
	for _, name := range cfg.EnabledProviders() {
		if *only != "" && name != *only {
			continue
		}
		typ := cfg.ProviderType(name)
		fmt.Fprintf(stdout, "== provider %s (%s)\n", name, typ)
		checked++
		switch typ {
		case pkcs11.TypePKCS11, pkcs11.TypeAWSCloudHSM:
			var c pkcs11.Config
			if err := cfg.DecodeProviderConfig(name, &c); err != nil {
				fmt.Fprintf(stdout, "FAIL  %-12s %v\n", "config", err)
				failed = true
				continue
			}
			if !pkcs11.Doctor(name, typ, c, stdout) {
				failed = true
			}
		default:
			p, err := reg[typ](ctx, provider.Params{Name: name, Type: typ, DataDir: cfg.DataDir, Embedded: cfg.Embedded,
				Decode: func(out any) error { return cfg.DecodeProviderConfig(name, out) }})
			if err == nil {
				err = p.CheckHealth(ctx)
				p.Close()
			}
			if err != nil {
				fmt.Fprintf(stdout, "FAIL  %-12s %v\n", "open", err)
				failed = true
				continue
			}
			fmt.Fprintf(stdout, "PASS  %-12s opened and healthy\n", "open")
		}
	}
	if checked == 0 {
		return fmt.Errorf("no enabled provider named %q", *only)
	}
	if failed {
		return &exitError{1, errors.New("doctor: some checks failed")}
	}
	fmt.Fprintln(stdout, "all checks passed")
	return nil
}

// rateLimitLine says whether requests are rate limited per principal and
// how to set a limit when they are not (none is the default).
func rateLimitLine(cfg *config.Config) string {
	if l := cfg.Limits; l.RatePerPrincipal > 0 {
		return fmt.Sprintf("INFO  %-12s %g requests/s per principal, burst %d (limits.rate_per_principal, limits.burst)", "rate-limit", l.RatePerPrincipal, l.Burst)
	}
	return fmt.Sprintf("INFO  %-12s off: no per-principal rate limit; set limits.rate_per_principal: N (requests/s, burst limits.burst, default 2N), "+
		"or rate_per_second on a principal in auth.principals", "rate-limit")
}
