package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The command tree: every command, its synopsis, positional arguments,
// examples and flags, in one place. Each command's work is a function that
// takes its parsed options (runServe, runDoctor, runKeysCreate, …); the
// cobra commands here only parse and call them.

// Exit codes (README "Exit codes"): 0 ok, 1 the command failed, 2 the
// command line is wrong (unknown command or flag, missing or extra
// argument, a flag value out of its set).
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// streams are the command's standard input and outputs.
type streams struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// usageError is a wrong command line: exit 2, with a pointer to the help.
type usageError struct {
	cmd string
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// cmdName is the command's path without the program's name.
func cmdName(cmd *cobra.Command) string {
	if !cmd.HasParent() {
		return cmd.Name()
	}
	return strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
}

func usageErr(cmd *cobra.Command, format string, a ...any) error {
	return &usageError{cmd: cmd.CommandPath(), err: fmt.Errorf(format, a...)}
}

// exitErr carries an exit code other than the one its kind gives.
type exitErr struct {
	code int
	err  error
}

func (e *exitErr) Error() string { return e.err.Error() }
func (e *exitErr) Unwrap() error { return e.err }

// connAnnotation marks the flags every client command shares, so the help
// lists them apart from the command's own.
const connAnnotation = "keygrid-connection"

const rootLong = `keygrid-hsm is the KeyGrid HSM gateway (serve) and its command-line client.

Client commands talk to a running server: --server URL (env KEYGRID_ADDR,
default http://127.0.0.1:8080) and the first of --token, --token-file,
KEYGRID_TOKEN, KEYGRID_TOKEN_FILE or <data dir>/admin.token.

Exit codes: 0 success, 1 the command failed, 2 a wrong command line.`

const rootExample = `  # Run the embedded default (software keys, SQLite) in ./data on 127.0.0.1:8080
  keygrid-hsm serve
  # Create a signing key, sign and verify
  keygrid-hsm keys create app-signing --type EC --curve P-256
  echo hello | keygrid-hsm sign app-signing > sig.b64
  echo hello | keygrid-hsm verify app-signing --signature sig.b64`

// newRoot builds the command tree.
func newRoot(s *streams) *cobra.Command {
	root := &cobra.Command{
		Use:               "keygrid-hsm",
		Short:             "the KeyGrid HSM gateway and its client",
		Long:              rootLong,
		Example:           rootExample,
		Version:           version,
		SilenceErrors:     true,
		SilenceUsage:      true,
		Args:              noArgs,
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: false},
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SetOut(s.stderr)
			_ = cmd.Usage()
			return usageErr(cmd, "give a command")
		},
	}
	root.SetIn(s.stdin)
	root.SetOut(s.stdout)
	root.SetErr(s.stderr)
	root.SetVersionTemplate("keygrid-hsm {{.Version}}\n")
	root.Flags().BoolP("version", "v", false, "print the version")
	root.SetUsageTemplate(usageTemplate)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{cmd: cmd.CommandPath(), err: err}
	})
	root.AddGroup(
		&cobra.Group{ID: "server", Title: "Server and operator commands:"},
		&cobra.Group{ID: "keys", Title: "Client commands (talk to a running server):"},
		&cobra.Group{ID: "pki", Title: "Certificates and tokens:"},
		&cobra.Group{ID: "xks", Title: "AWS KMS external key store:"},
	)
	root.SetHelpCommandGroupID("server")
	root.SetCompletionCommandGroupID("server")
	add := func(group string, cmds ...*cobra.Command) {
		for _, c := range cmds {
			c.GroupID = group
			root.AddCommand(c)
		}
	}
	add("server", serveCmd(s), reloadCmd(s), doctorCmd(s), configCmd(s), migrateCmd(s), backupCmd(s), restoreCmd(s),
		auditCmd(s), versionCmd(s))
	add("keys", keysCmd(s), cryptoCmd(s, "sign"), cryptoCmd(s, "verify"), cryptoCmd(s, "encrypt"), cryptoCmd(s, "decrypt"),
		cryptoCmd(s, "wrap"), cryptoCmd(s, "unwrap"), providersCmd(s), healthCmd(s), benchCmd(s))
	add("pki", csrCmd(s), certCmd(s), jwtCmd(s), jwksCmd(s))
	add("xks", xksCmd(s))
	root.AddCommand(pkcs11HostCmd())
	strictHelpAndCompletion(root)
	return root
}

// strictHelpAndCompletion makes cobra's own help and completion commands
// answer a wrong command line as every other command does (exit 2):
// "help nosuch" and "completion tcsh" are usage errors, not help with
// exit 0.
func strictHelpAndCompletion(root *cobra.Command) {
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		switch c.Name() {
		case "help":
			show := c.Run
			c.Run, c.Args = nil, nil
			c.RunE = func(cmd *cobra.Command, args []string) error {
				target, rest, err := root.Find(args)
				switch {
				case err != nil || target == nil:
					return usageErr(cmd, "help: unknown command %q", strings.Join(args, " "))
				case len(rest) > 0:
					return usageErr(cmd, "help: unknown command %q for %q", rest[0], cmdName(target))
				}
				show(cmd, args)
				return nil
			}
		case "completion":
			c.Args, c.RunE = noArgs, needSubcommand
		}
	}
}

// run executes one command line and returns its exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runContext(context.Background(), args, stdin, stdout, stderr)
}

func runContext(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRoot(&streams{stdin: stdin, stdout: stdout, stderr: stderr})
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "keygrid-hsm:", err)
	var ue *usageError
	var ee *exitErr
	switch {
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue):
		path := ue.cmd
		if path == "" && cmd != nil {
			path = cmd.CommandPath()
		}
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", path)
		return exitUsage
	}
	return exitError
}

// Argument checks that answer with a usage error naming what is expected.

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		if cmd.HasSubCommands() {
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				return usageErr(cmd, "unknown command %q for %q; did you mean %s?", args[0], cmdName(cmd), strings.Join(s, ", "))
			}
			return usageErr(cmd, "unknown command %q for %q", args[0], cmdName(cmd))
		}
		return usageErr(cmd, "%s takes no arguments (got %q)", cmdName(cmd), strings.Join(args, " "))
	}
	return nil
}

func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < n:
			return usageErr(cmd, "%s needs %s", cmdName(cmd), what)
		case len(args) > n:
			return usageErr(cmd, "%s takes %s; unexpected %q", cmdName(cmd), what, strings.Join(args[n:], " "))
		}
		return nil
	}
}

func minArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return usageErr(cmd, "%s needs %s", cmdName(cmd), what)
		}
		return nil
	}
}

// keyArg is the positional KEY of most client commands, or --key where the
// command has one: exactly one of them.
func keyArg(flag string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		given := flag != "" && cmd.Flags().Changed(flag)
		switch {
		case given && len(args) > 0:
			return usageErr(cmd, "%s: give the key once, as KEY or --%s (got both)", cmdName(cmd), flag)
		case given:
			return nil
		case len(args) == 0:
			return usageErr(cmd, "%s needs KEY: the id or name of a key", cmdName(cmd))
		case len(args) > 1:
			return usageErr(cmd, "%s takes one KEY; unexpected %q", cmdName(cmd), strings.Join(args[1:], " "))
		}
		return nil
	}
}

// parent makes a command that only groups subcommands: without one (or
// with an unknown one) it is a usage error.
func parent(use, short string, subs ...*cobra.Command) *cobra.Command {
	p := &cobra.Command{Use: use, Short: short, Args: noArgs, RunE: needSubcommand}
	p.AddCommand(subs...)
	return p
}

// needSubcommand is the body of a command that only groups subcommands.
func needSubcommand(cmd *cobra.Command, args []string) error {
	names := []string{}
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	return usageErr(cmd, "%s: give a subcommand: %s", cmdName(cmd), strings.Join(names, ", "))
}

// oneOf checks a flag value against its set: a usage error naming the flag.
func oneOf(cmd *cobra.Command, flag, v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return usageErr(cmd, "--%s %q: give one of %s", flag, v, strings.Join(allowed, ", "))
}

// The help: cobra's layout, with the command's own flags apart from the
// connection flags every client command shares.
const usageTemplate = `Usage:{{if .Runnable}}
  {{.UseLine}}{{end}}{{if .HasAvailableSubCommands}}
  {{.CommandPath}} [command]{{end}}{{if gt (len .Aliases) 0}}

Aliases:
  {{.NameAndAliases}}{{end}}{{if .HasExample}}

Examples:
{{.Example}}{{end}}{{if .HasAvailableSubCommands}}{{$cmds := .Commands}}{{if eq (len .Groups) 0}}

Available Commands:{{range $cmds}}{{if (or .IsAvailableCommand (eq .Name "help"))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{else}}{{range $group := .Groups}}

{{.Title}}{{range $cmds}}{{if (and (eq .GroupID $group.ID) (or .IsAvailableCommand (eq .Name "help")))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{end}}{{end}}{{with ownFlags .}}

Flags:
{{.}}{{end}}{{with connFlags .}}

Connection and output flags (shared by every client command):
{{.}}{{end}}{{if .HasAvailableSubCommands}}

Use "{{.CommandPath}} [command] --help" for more information about a command.{{end}}
`

func init() {
	cobra.AddTemplateFunc("ownFlags", func(c *cobra.Command) string { return flagUsages(c, false) })
	cobra.AddTemplateFunc("connFlags", func(c *cobra.Command) string { return flagUsages(c, true) })
}

// flagUsages lists the command's flags (local and inherited) that are, or
// are not, connection flags.
func flagUsages(c *cobra.Command, conn bool) string {
	fs := pflag.NewFlagSet(c.Name(), pflag.ContinueOnError)
	pick := func(f *pflag.Flag) {
		if _, isConn := f.Annotations[connAnnotation]; isConn == conn && fs.Lookup(f.Name) == nil {
			fs.AddFlag(f)
		}
	}
	c.LocalFlags().VisitAll(pick)
	c.InheritedFlags().VisitAll(pick)
	// pflag marks every boolean flag "[=true|false]"; a switch reads
	// better bare (--digest, --all), the columns kept.
	u := strings.ReplaceAll(fs.FlagUsages(), "[=true|false]", strings.Repeat(" ", len("[=true|false]")))
	return strings.TrimRight(u, "\n")
}

func versionCmd(s *streams) *cobra.Command {
	return &cobra.Command{Use: "version", Short: "print the version (also --version, -v)", Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := fmt.Fprintln(s.stdout, "keygrid-hsm", version)
			return err
		}}
}

// pkcs11HostCmd is the module host the gateway starts as a child
// (isolation: process). The pkcs11 package runs it from its init when the
// gateway starts it; started by hand it only says so.
func pkcs11HostCmd() *cobra.Command {
	return &cobra.Command{Use: "pkcs11-host", Short: "internal: the PKCS#11 module host the gateway starts", Hidden: true,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("pkcs11-host is started by the gateway (providers with isolation: process), not by hand")
		}}
}
