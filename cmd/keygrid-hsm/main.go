// Command keygrid-hsm is the KeyGrid HSM gateway and its command-line client.
//
//	keygrid-hsm serve [--config FILE] [--listen ADDR] [--data-dir DIR]
//	keygrid-hsm doctor --config FILE
//	keygrid-hsm audit verify [--anchor HASH] FILE… | --config FILE [FILE…] | --server URL FILE…
//	keygrid-hsm migrate|backup|restore --config FILE …
//	keygrid-hsm keys create|list|get|update|delete|cancel-deletion|activate|deactivate|rotate|public …
//	keygrid-hsm sign|verify|encrypt|decrypt|wrap|unwrap …
//	keygrid-hsm providers
//	keygrid-hsm xks credentials new|keys|bench …
//	keygrid-hsm version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `keygrid-hsm — the KeyGrid HSM gateway and its client

Server:
  serve        run the gateway (--config FILE, --listen ADDR, --data-dir DIR); SIGHUP reloads
               principals, tokens, limits and XKS credentials, then rotates the audit log
  reload       make the running server reload its configuration (--config FILE: finds it by
               the pid file in its data directory)
  doctor       check that each PKCS#11 provider reaches its HSM (--config FILE)
  migrate      apply the metadata schema migrations, print the version (--config FILE)
  backup       write the key metadata to a file, consistent while serving (--config FILE --out FILE)
  restore      load a backup into an empty store, or replace with --force (--config FILE --in FILE)
  audit verify check the audit log's hash chain (FILE… in rotation order, oldest first), and with
               --config FILE (or --server URL) its signed checkpoints: cut, re-hashed, missing files
  version      print the version

Client (talks to a running server: --server URL or KEYGRID_ADDR):
  keys create|list|get|update|delete|cancel-deletion|activate|deactivate|rotate|public
  sign | verify | encrypt | decrypt | wrap | unwrap
  csr KEY      a PKCS#10 request signed by the key (--cn, --org, --dns, --ip, --email, --uri, --out)
  cert issue CA-KEY   a certificate from the key (--csr FILE | --self-signed --cn … | --public-key FILE; --validity 720h, --ca, …)
  cert attach KEY CHAIN.pem | cert get KEY   the certificate chain of the key's version
  jwt sign KEY        a JWT (--claim sub=…, --exp 15m, --header k=v)
  jwks KEY | jwks --published   a key's JWKS, or the server's /.well-known/jwks.json
  providers    list providers and what they can do
  health       check the server's liveness and readiness
  bench        load-test a running server (--op, --key, --concurrency, --duration)

AWS KMS external key store (XKS proxy):
  xks credentials new   a SigV4 credential and the KMS console's proxy file (--prefix PATH)
  xks keys STORE        the keys a store serves, with their XKS metadata (--config FILE)
  xks bench             load-test a store with requests signed like KMS's (--config, --store, --key, --rate)

Run "keygrid-hsm COMMAND -h" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// exitError carries an exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "serve":
		err = cmdServe(ctx, args[1:], stderr)
	case "reload":
		err = cmdReload(ctx, args[1:], stdout, stderr)
	case "doctor":
		err = cmdDoctor(ctx, args[1:], stdout, stderr)
	case "migrate":
		err = cmdMigrate(ctx, args[1:], stdout, stderr)
	case "backup":
		err = cmdBackup(ctx, args[1:], stdout, stderr)
	case "restore":
		err = cmdRestore(ctx, args[1:], stdout, stderr)
	case "audit":
		err = cmdAudit(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "keygrid-hsm", version)
	default:
		err = runClient(ctx, args, stdin, stdout, stderr)
	}
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(stderr, "keygrid-hsm:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}
