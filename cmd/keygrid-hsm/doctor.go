package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/pkcs11"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// doctorOptions are the flags of doctor.
type doctorOptions struct {
	config, provider string
}

func doctorCmd(s *streams) *cobra.Command {
	var o doctorOptions
	cmd := &cobra.Command{
		Use:   "doctor --config FILE",
		Short: "check that each provider reaches its HSM and can do what the gateway offers",
		Long: `Check every enabled provider of a configuration (or one, with --provider): PKCS#11 providers load
the module, find the token, log in, and compare the token's mechanisms with the gateway's full
algorithm table, listing what this token cannot do. Doctor writes nothing.`,
		Example: "  keygrid-hsm doctor --config /etc/keygrid-hsm/config.yaml\n  keygrid-hsm doctor --config config.yaml --provider hsm",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.config == "" {
				// The embedded default has no HSM to check.
				return usageErr(cmd, "doctor: --config FILE is required (the configuration whose providers to check)")
			}
			return runDoctor(cmd.Context(), o, s.stdout)
		},
	}
	cmd.Flags().StringVarP(&o.config, "config", "c", "", "configuration file (YAML)")
	cmd.Flags().StringVar(&o.provider, "provider", "", "check only this provider")
	return cmd
}

// runDoctor verifies connectivity to the HSM of every PKCS#11 provider in a
// configuration (or of one, with --provider), a PASS/FAIL line per check.
func runDoctor(ctx context.Context, o doctorOptions, stdout io.Writer) error {
	cfg, err := config.Load(o.config, config.Flags{})
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
		if o.provider != "" && name != o.provider {
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
			caps, ok := pkcs11.Doctor(name, typ, c, stdout)
			if !ok {
				failed = true
				continue
			}
			algorithmLines(stdout, caps)
		case software.Type:
			if !doctorSoftware(ctx, cfg, name, stdout) {
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
		return fmt.Errorf("no enabled provider named %q", o.provider)
	}
	if failed {
		return errors.New("doctor: some checks failed")
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

// doctorSoftware checks a software provider without writing: a keystore
// that does not exist yet (serve makes it, with its master key when
// embedded) is reported, not created.
func doctorSoftware(ctx context.Context, cfg *config.Config, name string, stdout io.Writer) bool {
	var sc software.Config
	if err := cfg.DecodeProviderConfig(name, &sc); err != nil {
		fmt.Fprintf(stdout, "FAIL  %-12s %v\n", "config", err)
		return false
	}
	dir := sc.KeystoreDir
	if dir == "" {
		dir = filepath.Join(cfg.DataDir, "keystore", name)
	}
	need := []string{filepath.Join(dir, "master.check")}
	if sc.MasterKeyFile == "" && sc.MasterKeyEnv == "" {
		need = append(need, filepath.Join(cfg.DataDir, "master.key"))
	}
	for _, p := range need {
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(stdout, "SKIP  %-12s %s does not exist yet (serve creates the keystore); nothing opened\n", "open", p)
			return true
		}
	}
	p, err := software.New(ctx, provider.Params{Name: name, Type: software.Type, DataDir: cfg.DataDir, Embedded: cfg.Embedded,
		Decode: func(out any) error { return cfg.DecodeProviderConfig(name, out) }})
	var caps provider.Capabilities
	if err == nil {
		err = p.CheckHealth(ctx)
		caps = p.Capabilities()
		p.Close()
	}
	if err != nil {
		fmt.Fprintf(stdout, "FAIL  %-12s %v\n", "open", err)
		return false
	}
	fmt.Fprintf(stdout, "PASS  %-12s keystore %s opened and healthy\n", "open", dir)
	algorithmLines(stdout, caps)
	return true
}

// algorithmLines compares what a provider performs with the gateway's full
// algorithm table: one line with the count, then, for each algorithm the
// provider cannot do, why (the mechanism its token lacks, as probed) and
// what it does instead; and the limit of its AES-KWP on key material. What
// a provider lacks is reported, not failed: the gateway offers what it has
// and refuses the rest up front.
func algorithmLines(out io.Writer, caps provider.Capabilities) {
	all := alg.All()
	var lacks []alg.Algorithm
	for _, a := range all {
		if caps.CheckAlgorithm(a) != nil {
			lacks = append(lacks, a)
		}
	}
	cannot := "none"
	if len(lacks) > 0 {
		cannot = joinAlgs(lacks)
	}
	fmt.Fprintf(out, "PASS  %-12s %d of the gateway's %d; cannot do: %s\n", "algorithms", len(all)-len(lacks), len(all), cannot)
	for _, a := range lacks {
		why := caps.Missing[a]
		if why == "" {
			why = "not performed by this provider"
		}
		line := fmt.Sprintf("%s: %s", a, why)
		if alts := caps.Alternatives(a); len(alts) > 0 {
			line += fmt.Sprintf("; available instead: %s", joinAlgs(alts))
		}
		fmt.Fprintf(out, "      %-12s %s\n", "cannot", line)
	}
	if caps.CheckAlgorithm(alg.AESKWP) != nil {
		return
	}
	if caps.WrapMultipleOf8 {
		fmt.Fprintf(out, "INFO  %-12s key material to wrap must be a multiple of 8 bytes, at most %d bytes (this token's AES-KWP is inexact for other lengths; others are refused with UNSUPPORTED_ALGORITHM)\n",
			"aes-kwp", service.MaxKeyMaterialBytes)
		return
	}
	fmt.Fprintf(out, "INFO  %-12s key material to wrap: any length up to %d bytes\n", "aes-kwp", service.MaxKeyMaterialBytes)
}

func joinAlgs(as []alg.Algorithm) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = string(a)
	}
	return strings.Join(s, ", ")
}
