package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider/pkcs11"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
	"github.com/keygrid/keygrid-hsm/internal/server"
)

func configCmd(s *streams) *cobra.Command {
	check := &cobra.Command{
		Use:   "check FILE",
		Short: "check a configuration file without starting anything",
		Long: `Load a configuration file with its KEYGRID_* overrides, validate it, and decode each provider's
settings (unknown fields are errors). Nothing is opened or written: no module is loaded, no store
or keystore is touched, no secret is read.`,
		Example: "  keygrid-hsm config check /etc/keygrid-hsm/config.yaml\n  keygrid-hsm config check examples/softhsm2.yaml",
		Args:    exactArgs(1, "one FILE"),
		RunE:    func(cmd *cobra.Command, args []string) error { return runConfigCheck(args[0], s.stdout) },
	}
	return parent("config", "check configuration files", check)
}

// runConfigCheck validates the configuration file at path.
func runConfigCheck(path string, stdout io.Writer) error {
	cfg, err := config.Load(path, config.Flags{})
	if err != nil {
		return err
	}
	if err := cfg.Validate(registry.All().Types()); err != nil {
		return err
	}
	var provs []string
	for _, name := range cfg.EnabledProviders() {
		typ := cfg.ProviderType(name)
		var err error
		switch typ {
		case software.Type:
			err = cfg.DecodeProviderConfig(name, &software.Config{})
		case pkcs11.TypePKCS11, pkcs11.TypeAWSCloudHSM:
			err = cfg.DecodeProviderConfig(name, &pkcs11.Config{})
		}
		if err != nil {
			return err
		}
		provs = append(provs, name+" ("+typ+")")
	}
	fmt.Fprintf(stdout, "%s: configuration OK\n  listen %s, tls %v\n  storage %s %s\n  providers %s\n", path, cfg.Server.Listen,
		cfg.Server.TLS.CertFile != "", cfg.Storage.Driver, server.StoreTarget(cfg), strings.Join(provs, ", "))
	return nil
}
