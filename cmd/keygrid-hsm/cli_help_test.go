package main

import (
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// section returns the lines of a help text under the heading that starts
// with title, up to the next blank line.
func section(help, title string) string {
	i := strings.Index(help, "\n"+title)
	if i < 0 {
		return ""
	}
	rest := help[i+1:]
	if j := strings.Index(rest, "\n\n"); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

// TestHelpOnStdout: -h, --help and help print to stdout (nothing on
// stderr, exit 0), so | less and | grep work; keys -h is help, not an
// error; the help has a synopsis with the positional KEY, examples, and the
// connection flags apart from the command's own.
func TestHelpOnStdout(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"}, {"keys", "-h"}, {"keys", "--help"}, {"help", "keys"}, {"keys", "create", "-h"},
		{"sign", "--help"}, {"help", "sign"}, {"verify", "-h"},
	} {
		r := binRun{}.run(t, args...)
		if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, "Usage:\n  keygrid-hsm") {
			t.Errorf("%v: want the help on stdout, exit 0, nothing on stderr; %s", args, r)
		}
	}
	root := binRun{}.run(t, "--help").stdout
	for _, want := range []string{"Exit codes: 0 success, 1 the command failed, 2 a wrong command line", "completion", "-v, --version", "print the version",
		"Examples:\n  # Run the embedded default"} {
		if !strings.Contains(root, want) {
			t.Errorf("keygrid-hsm --help lacks %q:\n%s", want, root)
		}
	}
	keys := binRun{}.run(t, "keys", "-h").stdout
	for _, sub := range []string{"create", "list", "get", "update", "delete", "cancel-deletion", "public", "rotate", "import", "export"} {
		if !strings.Contains(section(keys, "Available Commands:"), "\n  "+sub+" ") {
			t.Errorf("keys -h does not list %s:\n%s", sub, keys)
		}
	}

	sign := binRun{}.run(t, "sign", "-h").stdout
	own, connection := section(sign, "Flags:"), section(sign, "Connection and output flags")
	switch {
	case !strings.Contains(sign, "Usage:\n  keygrid-hsm sign KEY [flags]"):
		t.Errorf("sign -h: no synopsis with KEY:\n%s", sign)
	case !strings.Contains(sign, "Examples:\n  echo hello | keygrid-hsm sign app-signing"):
		t.Errorf("sign -h: no examples:\n%s", sign)
	case !strings.Contains(own, "--in-encoding") || strings.Contains(own, "--server") || strings.Contains(own, "--token"):
		t.Errorf("sign -h: its own flags mix in the connection flags:\n%s", own)
	case !strings.Contains(connection, "--server") || !strings.Contains(connection, "--token-file") ||
		!strings.Contains(connection, "-o, --output") || strings.Contains(connection, "--in-encoding"):
		t.Errorf("sign -h: the connection flags are not listed apart:\n%s", connection)
	}

	// The help and the binary itself pipe: grep finds the subcommand.
	cmd := exec.Command("sh", "-c", `"$0" keys -h | grep -c cancel-deletion`, binary(t))
	if out, err := cmd.Output(); err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Errorf("keygrid-hsm keys -h | grep cancel-deletion: %q, %v", out, err)
	}
}

// TestVerifyHelpVersionFlag: verify tries every version that may still
// verify unless --version names one; its help says so, not "current".
func TestVerifyHelpVersionFlag(t *testing.T) {
	help := binRun{}.run(t, "verify", "-h").stdout
	var line string
	for _, l := range strings.Split(help, "\n") {
		if strings.Contains(l, "--version ") {
			line = l
		}
	}
	if !strings.Contains(line, "every version that may still verify is tried") || strings.Contains(line, "current") ||
		strings.Contains(line, "(default 0)") {
		t.Fatalf("verify -h, the --version line: %q", line)
	}
}

// TestEveryCommandHelp walks the command tree: each command's --help exits
// 0 and prints its help, naming the command, on stdout and nothing on
// stderr.
func TestEveryCommandHelp(t *testing.T) {
	root := newRoot(&streams{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard})
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	var paths [][]string
	examples := map[string]bool{} // command path: whether its help must show examples
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		paths = append(paths, path)
		// Every command that does work shows how (cobra's help and
		// completion, and version, are their own example).
		examples[strings.Join(path, " ")] = !c.HasSubCommands() && !c.Hidden && len(path) > 0 &&
			path[0] != "help" && path[0] != "completion" && path[0] != "version"
		for _, sub := range c.Commands() {
			walk(sub, append(append([]string{}, path...), sub.Name()))
		}
	}
	walk(root, nil)
	if len(paths) < 40 {
		t.Fatalf("the command tree has %d commands; the walk is wrong", len(paths))
	}
	for _, p := range paths {
		r := binRun{}.run(t, append(p, "--help")...)
		name := strings.TrimSpace("keygrid-hsm " + strings.Join(p, " "))
		if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, "Usage:\n  "+name) {
			t.Errorf("%s --help: %s", name, r)
		}
		if strings.Contains(r.stdout, "[=true|false]") {
			t.Errorf("%s --help marks switches [=true|false]:\n%s", name, r.stdout)
		}
		if examples[strings.Join(p, " ")] && !strings.Contains(r.stdout, "\nExamples:\n  ") {
			t.Errorf("%s --help shows no examples:\n%s", name, r.stdout)
		}
	}
}

// TestVersionFlag: --version, -v and version print the version the binary
// was built with, on stdout.
func TestVersionFlag(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-v"}, {"version"}} {
		if r := (binRun{}).run(t, args...); r.code != 0 || r.stdout != "keygrid-hsm "+binaryVersion+"\n" || r.stderr != "" {
			t.Errorf("%v: %s", args, r)
		}
	}
}

// TestCompletion: completion bash is a script bash loads, which registers
// completion for keygrid-hsm; the completions it asks the binary for are
// the commands and flags; zsh, fish and powershell have theirs.
func TestCompletion(t *testing.T) {
	r := binRun{}.run(t, "completion", "bash")
	if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, "__start_keygrid-hsm") {
		t.Fatalf("completion bash: %s", r)
	}
	if _, err := exec.LookPath("bash"); err == nil {
		cmd := exec.Command("bash", "-c", "source /dev/stdin && complete -p keygrid-hsm")
		cmd.Stdin = strings.NewReader(r.stdout)
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "keygrid-hsm") {
			t.Fatalf("bash does not load the completion script: %v\n%s", err, out)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"__complete", "keys", "cr"}, "create"},
		{[]string{"__complete", "de"}, "decrypt"},
		{[]string{"__complete", "decrypt", "k", "--in-enc"}, "--in-encoding"},
		{[]string{"__complete", "keys", "list", "-"}, "--output"},
	} {
		if r := (binRun{}).run(t, c.args...); r.code != 0 || !strings.Contains(r.stdout, c.want) {
			t.Errorf("%v: want %q offered; %s", c.args, c.want, r)
		}
	}
	for _, sh := range []string{"zsh", "fish", "powershell"} {
		if r := (binRun{}).run(t, "completion", sh); r.code != 0 || !strings.Contains(r.stdout, "keygrid-hsm") {
			t.Errorf("completion %s: %s", sh, r)
		}
	}
}

// TestExitCodes: 0 success, 1 the command failed, 2 the command line is
// wrong (with a pointer to the help on stderr and nothing on stdout).
func TestExitCodes(t *testing.T) {
	closed := "--server=http://127.0.0.1:9" // nothing listens: a client command fails
	for _, c := range []struct {
		name string
		args []string
		code int
		says string
	}{
		{"ok version", []string{"version"}, 0, ""},
		{"fail no server", []string{"keys", "list", closed}, 1, "127.0.0.1:9"},
		{"fail bad config", []string{"config", "check", "/nonexistent/keygrid.yaml"}, 1, "/nonexistent/keygrid.yaml"},
		{"usage no command", []string{}, 2, "give a command"},
		{"usage unknown command", []string{"nosuch"}, 2, `unknown command "nosuch"`},
		{"usage unknown subcommand", []string{"keys", "nosuch"}, 2, `unknown command "nosuch" for "keys"`},
		{"usage no subcommand", []string{"keys"}, 2, "give a subcommand"},
		{"usage unknown flag", []string{"keys", "list", "--nosuch"}, 2, "unknown flag: --nosuch"},
		{"usage unknown short flag", []string{"sign", "k", "-Z"}, 2, "unknown shorthand flag: 'Z'"},
		{"usage extra argument", []string{"version", "extra"}, 2, `takes no arguments (got "extra")`},
		{"usage extra key", []string{"keys", "get", "a", "b", closed}, 2, `unexpected "b"`},
		{"usage extra create name", []string{"keys", "create", "a", "b", "--type", "EC", "--curve", "P-256", closed}, 2, `unexpected "b"`},
		{"usage extra to providers", []string{"providers", "x", closed}, 2, `providers takes no arguments (got "x")`},
		{"usage extra to health", []string{"health", "x", closed}, 2, `health takes no arguments`},
		{"usage extra to keys list", []string{"keys", "list", "x", closed}, 2, `keys list takes no arguments`},
		{"usage extra to serve", []string{"serve", "x"}, 2, `serve takes no arguments`},
		{"usage extra to doctor", []string{"doctor", "x", "--config", "c.yaml"}, 2, `doctor takes no arguments`},
		{"usage extra to backup", []string{"backup", "x", "--out", "b"}, 2, `backup takes no arguments`},
		{"usage extra to bench", []string{"bench", "x", "--key", "k", closed}, 2, `bench takes no arguments`},
		{"usage extra to config check", []string{"config", "check", "a.yaml", "b.yaml"}, 2, `unexpected "b.yaml"`},
		{"usage extra to cert attach", []string{"cert", "attach", "k", "chain.pem", "more", closed}, 2, `unexpected "more"`},
		{"usage extra to encrypt", []string{"encrypt", "k", "plaintext", closed}, 2, `unexpected "plaintext"`},
		{"usage extra to xks credentials new", []string{"xks", "credentials", "new", "x"}, 2, `takes no arguments`},
		{"usage missing key", []string{"keys", "get", closed}, 2, "needs KEY"},
		{"usage bench op", []string{"bench", "--key", "k", "--op", "foo", closed}, 2, `--op "foo": give one of sign, verify, encrypt, decrypt, create`},
		{"usage bench without key", []string{"bench", closed}, 2, "--key is required"},
		{"usage cert issue without a subject", []string{"cert", "issue", "ca", "--validity", "1h", closed}, 2, "give one of --csr FILE, --public-key FILE or --self-signed"},
		{"usage cert issue without validity", []string{"cert", "issue", "ca", "--self-signed", "--cn", "x", closed}, 2, "give --validity"},
		{"usage list limit", []string{"keys", "list", "--limit", "0", closed}, 2, "--limit 0: give a page size of at least 1"},
		{"usage key twice", []string{"sign", "a", "--key", "b", closed}, 2, "got both"},
		{"usage bad format", []string{"keys", "public", "k", "--format", "xyz", closed}, 2, `--format "xyz": give one of pem, der, jwk`},
		{"usage bad output", []string{"keys", "list", "--output", "yaml", closed}, 2, `--output "yaml": give one of table, json`},
		{"usage bad short output", []string{"providers", "-o", "xml", closed}, 2, `--output "xml"`},
		{"usage bad encoding", []string{"decrypt", "k", "--in-encoding", "hex", closed}, 2, `--in-encoding "hex"`},
		{"usage bad flag value", []string{"keys", "list", "--limit", "many", closed}, 2, "--limit"},
		{"usage jwks extra", []string{"jwks", "a", "b", closed}, 2, `unexpected "b"`},
		{"usage jwks published and key", []string{"jwks", "a", "--published", closed}, 2, "--published"},
		{"usage completion shell", []string{"completion", "tcsh"}, 2, `unknown command "tcsh" for "completion"`},
		{"usage completion alone", []string{"completion"}, 2, "give a subcommand: bash, fish, powershell, zsh"},
		{"usage help topic", []string{"help", "nosuch"}, 2, `help: unknown command "nosuch"`},
		{"usage help extra", []string{"help", "keys", "nosuch"}, 2, `unknown command "nosuch" for "keys"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := binRun{}.run(t, c.args...)
			if r.code != c.code || !strings.Contains(r.stderr, c.says) {
				t.Fatalf("want exit %d saying %q; %s", c.code, c.says, r)
			}
			if c.code == 2 && (r.stdout != "" || !strings.Contains(r.stderr, "--help' for usage")) {
				t.Fatalf("a usage error prints nothing on stdout and points at the help; %s", r)
			}
		})
	}
}
