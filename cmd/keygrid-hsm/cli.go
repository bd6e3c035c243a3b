package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// conn holds the connection and output flags every client command shares.
type conn struct {
	server, token, tokenFile, caFile, certFile, certKey, output string
}

// register adds the connection flags to fs (a command's persistent flags,
// so its subcommands share them), marked for the help's own section.
func (o *conn) register(fs *pflag.FlagSet) {
	def := os.Getenv("KEYGRID_ADDR")
	if def == "" {
		def = "http://127.0.0.1:8080"
	}
	fs.StringVarP(&o.server, "server", "s", def, "server URL (env KEYGRID_ADDR)")
	fs.StringVar(&o.token, "token", "", "bearer token (env KEYGRID_TOKEN)")
	fs.StringVar(&o.tokenFile, "token-file", "", "file holding the bearer token (env KEYGRID_TOKEN_FILE; default: "+defaultTokenFile()+" when it exists)")
	fs.StringVar(&o.caFile, "ca-file", os.Getenv("KEYGRID_CA_FILE"), "PEM file of the CAs to trust for an https:// server (env KEYGRID_CA_FILE)")
	fs.StringVar(&o.certFile, "cert", os.Getenv("KEYGRID_CERT_FILE"), "PEM client certificate (env KEYGRID_CERT_FILE)")
	fs.StringVar(&o.certKey, "cert-key", os.Getenv("KEYGRID_CERT_KEY_FILE"), "PEM key of the client certificate (env KEYGRID_CERT_KEY_FILE)")
	fs.StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	for _, n := range []string{"server", "token", "token-file", "ca-file", "cert", "cert-key", "output"} {
		_ = fs.SetAnnotation(n, connAnnotation, []string{"true"})
	}
}

// cli is what a client command's body works with: the shared flags, the
// command (for which flags were given), its streams and its positional
// arguments.
type cli struct {
	*conn
	cmd     *cobra.Command
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
	posArgs []string
}

// clientCmd completes a client command: the connection flags (persistent
// on it, unless it is the subcommand of one that has them: shared), its own
// flags (build registers them on fs and returns the body, which runs with
// them parsed), the check of --output, and the hint on a refused token.
func clientCmd(s *streams, cmd *cobra.Command, shared *conn, build func(c *cli, fs *pflag.FlagSet) func(ctx context.Context) error) *cobra.Command {
	if shared == nil {
		shared = &conn{}
		shared.register(cmd.PersistentFlags())
	}
	c := &cli{conn: shared, stdin: s.stdin, stdout: s.stdout, stderr: s.stderr}
	body := build(c, cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c.cmd, c.posArgs = cmd, args
		if err := oneOf(cmd, "output", c.output, "table", "json"); err != nil {
			return err
		}
		err := body(cmd.Context())
		switch {
		case errors.Is(err, client.ErrAuthenticationFailed):
			err = fmt.Errorf("%w\n(the CLI sends the first of --token, --token-file, KEYGRID_TOKEN, KEYGRID_TOKEN_FILE, %s)", err, defaultTokenFile())
		case errors.Is(err, client.ErrInvalidInput) || errors.Is(err, client.ErrUnsupportedAlgorithm):
			if f := flagOfField(cmd, err); f != "" {
				err = fmt.Errorf("%w\n(from --%s)", err, f)
			}
		}
		return err
	}
	return cmd
}

// flagOfField finds, in the server's refusal of a request, the API field
// (rotation_period, key_spec.key_size, pending_window_days, …) that one of
// the flags given on this command line set, and returns that flag's name:
// the server names its fields, the user typed flags.
func flagOfField(cmd *cobra.Command, err error) string {
	var ce *client.Error
	if !errors.As(err, &ce) {
		return ""
	}
	words := strings.FieldsFunc(ce.Message, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.')
	})
	given := func(field string) string {
		name := strings.TrimPrefix(strings.ToLower(field), "key_spec.")
		switch name {
		case "key_size":
			name = "size"
		case "key_type":
			name = "type"
		}
		name = strings.ReplaceAll(name, "_", "-")
		if f := cmd.Flags().Lookup(name); f != nil && f.Changed {
			return name
		}
		return ""
	}
	for i, w := range words {
		if i+1 < len(words) {
			if f := given(w + "_" + words[i+1]); f != "" { // "pending window": --pending-window
				return f
			}
		}
		if f := given(w); f != "" {
			return f
		}
	}
	return ""
}

// changed reports whether the flag was given on the command line.
func (c *cli) changed(name string) bool { return c.cmd.Flags().Changed(name) }

// key returns the one positional argument (a key id or name) or the value
// of the command's --key flag (the argument checks made sure of one).
func (c *cli) key(flagVal string) (string, error) {
	switch {
	case flagVal != "" && len(c.posArgs) == 0:
		return flagVal, nil
	case flagVal == "" && len(c.posArgs) == 1:
		return c.posArgs[0], nil
	}
	return "", usageErr(c.cmd, "%s: name one key: an id or name as KEY", c.cmd.CommandPath())
}

// defaultTokenFile is where the server's embedded default keeps its
// generated admin token: <data dir>/admin.token (KEYGRID_DATA_DIR, or ./data).
func defaultTokenFile() string {
	dir := os.Getenv("KEYGRID_DATA_DIR")
	if dir == "" {
		dir = "./data"
	}
	return filepath.Join(dir, "admin.token")
}

// resolveToken picks the token, first found wins: --token, --token-file,
// KEYGRID_TOKEN, KEYGRID_TOKEN_FILE, then the default token file when it
// exists (the embedded default's admin token). "" means none.
func (c *cli) resolveToken() (string, error) {
	readFile := func(path, from string) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("token file (%s): %w", from, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	switch {
	case c.changed("token"):
		return c.token, nil
	case c.changed("token-file"):
		return readFile(c.tokenFile, "--token-file")
	case os.Getenv("KEYGRID_TOKEN") != "":
		return os.Getenv("KEYGRID_TOKEN"), nil
	case os.Getenv("KEYGRID_TOKEN_FILE") != "":
		return readFile(os.Getenv("KEYGRID_TOKEN_FILE"), "KEYGRID_TOKEN_FILE")
	}
	p := defaultTokenFile()
	if _, err := os.Stat(p); err != nil {
		return "", nil
	}
	return readFile(p, "default")
}

func (c *cli) client() (*client.Client, error) {
	tok, err := c.resolveToken()
	if err != nil {
		return nil, err
	}
	opts := []client.Option{client.WithToken(tok)}
	if c.caFile != "" || c.certFile != "" || c.certKey != "" {
		tc, err := client.LoadTLSConfig(c.caFile, c.certFile, c.certKey)
		if err != nil {
			return nil, err
		}
		opts = append(opts, client.WithTLSConfig(tc))
	}
	return client.New(c.server, opts...)
}

func (c *cli) json(v any) error { return writeJSON(c.stdout, v) }

// writeJSON writes v as indented JSON: what -o json prints.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func providersCmd(s *streams) *cobra.Command {
	cmd := &cobra.Command{Use: "providers", Short: "list the server's providers and what they can do", Args: noArgs,
		Example: "  keygrid-hsm providers\n  keygrid-hsm providers -o json"}
	return clientCmd(s, cmd, nil, func(c *cli, _ *pflag.FlagSet) func(context.Context) error {
		return func(ctx context.Context) error { return runProviders(ctx, c) }
	})
}

func runProviders(ctx context.Context, c *cli) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	l, err := cl.Providers(ctx)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(l)
	}
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "NAME\tTYPE\tHEALTHY\tCAPABILITIES")
	for _, p := range l.Providers {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", p.Name, p.Type, p.Healthy, strings.Join(p.Capabilities, " "))
	}
	return tw.Flush()
}

func healthCmd(s *streams) *cobra.Command {
	cmd := &cobra.Command{Use: "health", Short: "check the server's liveness and readiness (exit 1 when not ready)", Args: noArgs,
		Example: "  keygrid-hsm health --server https://keygrid.internal:8443"}
	return clientCmd(s, cmd, nil, func(c *cli, _ *pflag.FlagSet) func(context.Context) error {
		return func(ctx context.Context) error { return runHealth(ctx, c) }
	})
}

func runHealth(ctx context.Context, c *cli) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	h, err := cl.Health(ctx)
	if err != nil {
		return err
	}
	r, rerr := cl.Ready(ctx)
	if c.output == "json" {
		if err := c.json(map[string]any{"health": h, "ready": r}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(c.stdout, "server %s, version %s\n", h.Status, h.Version)
		for _, p := range r.Providers {
			fmt.Fprintf(c.stdout, "provider %s (%s): %s\n", p.Name, p.Type, p.State)
		}
	}
	if rerr != nil {
		return fmt.Errorf("not ready: %w", rerr)
	}
	return nil
}
