package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// cli holds what every client command shares.
type cli struct {
	fs        *flag.FlagSet
	server    *string
	token     *string
	tokenFile *string
	caFile    *string
	certFile  *string
	certKey   *string
	output    *string
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer
	posArgs   []string
}

func newCLI(name string, stdin io.Reader, stdout, stderr io.Writer) *cli {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &cli{fs: fs, stdin: stdin, stdout: stdout, stderr: stderr}
	def := os.Getenv("KEYGRID_ADDR")
	if def == "" {
		def = "http://127.0.0.1:8080"
	}
	c.server = fs.String("server", def, "server URL (env KEYGRID_ADDR)")
	c.token = fs.String("token", "", "bearer token (env KEYGRID_TOKEN)")
	c.tokenFile = fs.String("token-file", "", "file holding the bearer token (env KEYGRID_TOKEN_FILE; default: "+defaultTokenFile()+" when it exists)")
	c.caFile = fs.String("ca-file", os.Getenv("KEYGRID_CA_FILE"), "PEM file of the CAs to trust for an https:// server (env KEYGRID_CA_FILE)")
	c.certFile = fs.String("cert", os.Getenv("KEYGRID_CERT_FILE"), "PEM client certificate (env KEYGRID_CERT_FILE)")
	c.certKey = fs.String("cert-key", os.Getenv("KEYGRID_CERT_KEY_FILE"), "PEM key of the client certificate (env KEYGRID_CERT_KEY_FILE)")
	c.output = fs.String("output", "table", "output format: table or json")
	return c
}

// parse parses flags wherever they stand among the positional arguments.
func (c *cli) parse(args []string) error {
	for {
		if err := c.fs.Parse(args); err != nil {
			return err
		}
		rest := c.fs.Args()
		if len(rest) == 0 {
			break
		}
		c.posArgs = append(c.posArgs, rest[0])
		args = rest[1:]
	}
	switch *c.output {
	case "table", "json":
	default:
		return fmt.Errorf("--output %q is not table or json", *c.output)
	}
	return nil
}

// key returns the one positional argument (a key id or name) or --key.
func (c *cli) key(flagVal string) (string, error) {
	switch {
	case flagVal != "" && len(c.posArgs) == 0:
		return flagVal, nil
	case flagVal == "" && len(c.posArgs) == 1:
		return c.posArgs[0], nil
	}
	return "", errors.New("name one key: an id or name as argument (or --key)")
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
	set := map[string]bool{}
	c.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	readFile := func(path, from string) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("token file (%s): %w", from, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	switch {
	case set["token"]:
		return *c.token, nil
	case set["token-file"]:
		return readFile(*c.tokenFile, "--token-file")
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
	if *c.caFile != "" || *c.certFile != "" || *c.certKey != "" {
		tc, err := client.LoadTLSConfig(*c.caFile, *c.certFile, *c.certKey)
		if err != nil {
			return nil, err
		}
		opts = append(opts, client.WithTLSConfig(tc))
	}
	return client.New(*c.server, opts...)
}

func (c *cli) json(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runClient(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	err := dispatchClient(ctx, args, stdin, stdout, stderr)
	if errors.Is(err, client.ErrAuthenticationFailed) {
		err = fmt.Errorf("%w\n(the CLI sends the first of --token, --token-file, KEYGRID_TOKEN, KEYGRID_TOKEN_FILE, %s)", err, defaultTokenFile())
	}
	return err
}

func dispatchClient(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	switch args[0] {
	case "keys":
		if len(args) < 2 {
			return errors.New("keys: give a subcommand: create, import, export, list, get, update, delete, cancel-deletion, activate, deactivate, rotate, public")
		}
		return cmdKeys(ctx, args[1], args[2:], stdin, stdout, stderr)
	case "sign", "verify", "encrypt", "decrypt", "wrap", "unwrap":
		return cmdCrypto(ctx, args[0], args[1:], stdin, stdout, stderr)
	case "providers":
		return cmdProviders(ctx, args[1:], stdin, stdout, stderr)
	case "bench":
		return cmdBench(ctx, args[1:], stdin, stdout, stderr)
	case "health":
		return cmdHealth(ctx, args[1:], stdin, stdout, stderr)
	case "xks":
		return cmdXKS(ctx, args[1:], stdin, stdout, stderr)
	case "csr":
		return cmdCSR(ctx, args[1:], stdin, stdout, stderr)
	case "cert":
		return cmdCert(ctx, args[1:], stdin, stdout, stderr)
	case "jwt":
		return cmdJWT(ctx, args[1:], stdin, stdout, stderr)
	case "jwks":
		return cmdJWKS(ctx, args[1:], stdin, stdout, stderr)
	}
	return fmt.Errorf("unknown command %q (run keygrid-hsm help)", args[0])
}

func cmdKeys(ctx context.Context, sub string, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := newCLI("keys "+sub, stdin, stdout, stderr)
	var (
		name, prov, keyType, curve, algorithm, usage, expires, metadata, state, pageToken, format, in string
		description, rotation, window, versionOf                                                      string
		size, limit, version, days, minDecrypt                                                        int
		extractable, all, publish                                                                     bool
	)
	switch sub {
	case "create":
		c.fs.StringVar(&name, "name", "", "key name (required)")
		c.fs.StringVar(&prov, "provider", "", "provider (default: the server's default)")
		c.fs.StringVar(&keyType, "type", "", "key type: RSA, EC, Ed25519, AES (required)")
		c.fs.IntVar(&size, "size", 0, "key size in bits (RSA 2048/3072/4096, EC 256/384/521, AES 128/256)")
		c.fs.StringVar(&curve, "curve", "", "EC curve: P-256, P-384, P-521")
		c.fs.StringVar(&algorithm, "algorithm", "", "default algorithm (RS256, PS256, ES256, EdDSA, RSA-OAEP-256, A256GCM, AES-KWP, …)")
		c.fs.StringVar(&usage, "usage", "", "comma-separated usages: sign,verify,encrypt,decrypt,wrap,unwrap")
		c.fs.BoolVar(&extractable, "extractable", false, "make the key extractable (exportable, wrapped, with keys export)")
		c.fs.StringVar(&expires, "expires-at", "", "expiry time, RFC 3339")
		c.fs.StringVar(&metadata, "metadata", "", "comma-separated k=v pairs")
		c.fs.StringVar(&description, "description", "", "free text")
		c.fs.BoolVar(&publish, "publish-jwks", false, "list the key in the unauthenticated /.well-known/jwks.json")
	case "update":
		c.fs.StringVar(&metadata, "metadata", "", "comma-separated k=v pairs: replaces all metadata (\"\" with --clear-metadata empties it)")
		c.fs.StringVar(&description, "description", "", "free text")
		c.fs.StringVar(&expires, "expires-at", "", "expiry time, RFC 3339, or none to remove the expiry")
		c.fs.StringVar(&rotation, "rotation-period", "", "automatic rotation period, e.g. 2160h (0s: off)")
		c.fs.IntVar(&minDecrypt, "min-decrypt-version", -1, "oldest version that may still decrypt, unwrap and verify (0: all)")
		c.fs.BoolVar(&all, "clear-metadata", false, "remove all metadata")
		c.fs.BoolVar(&publish, "publish-jwks", false, "list the key in /.well-known/jwks.json (--publish-jwks=false: take it out)")
	case "delete":
		c.fs.IntVar(&days, "pending-window-days", 0, "days before the key is destroyed (default: the server's, 30 days)")
		c.fs.StringVar(&window, "pending-window", "", "time before the key is destroyed, e.g. 168h (when the server's floor allows)")
	case "import":
		c.fs.StringVar(&name, "name", "", "key name (required)")
		c.fs.StringVar(&prov, "provider", "", "provider (required: its wrapping key wraps the material)")
		c.fs.StringVar(&in, "in", "", "the key: a PEM or DER private key, or raw AES/HMAC bytes with --type (required)")
		c.fs.StringVar(&keyType, "type", "", "AES or HMAC for raw material (private keys: read from the key)")
		c.fs.StringVar(&algorithm, "algorithm", "", "default algorithm")
		c.fs.StringVar(&usage, "usage", "", "comma-separated usages")
		c.fs.BoolVar(&extractable, "extractable", false, "import the key extractable (exportable with keys export)")
		c.fs.StringVar(&versionOf, "version-of", "", "import the material as the new current version of this key (then no --name or --provider)")
	case "export":
		c.fs.StringVar(&in, "public-key", "", "PEM RSA public key (≥ 2048 bits) to wrap for (required)")
		c.fs.IntVar(&version, "version", 0, "key version (default: newest)")
	case "list":
		c.fs.StringVar(&prov, "provider", "", "only keys of this provider")
		c.fs.StringVar(&state, "state", "", "only keys in this state (active, inactive, pending, pending_deletion, deleting)")
		c.fs.IntVar(&limit, "limit", 0, "page size")
		c.fs.StringVar(&pageToken, "page-token", "", "continue after this page token")
		c.fs.BoolVar(&all, "all", false, "follow page tokens to the end")
	case "public":
		c.fs.IntVar(&version, "version", 0, "key version (default: current)")
		c.fs.StringVar(&format, "format", "pem", "pem or jwk (--output json prints the whole answer)")
	case "get", "cancel-deletion", "activate", "deactivate", "rotate":
	default:
		return fmt.Errorf("keys: unknown subcommand %q", sub)
	}
	if err := c.parse(args); err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	switch sub {
	case "import":
		if versionOf != "" {
			return c.importVersion(ctx, cl, versionOf, in, keyType, name != "" || prov != "")
		}
		if name == "" || prov == "" || in == "" {
			return errors.New("keys import: --name, --provider and --in are required")
		}
		key, err := readImportKey(in, keyType)
		if err != nil {
			return err
		}
		spec := apitypes.KeySpec{KeyType: keyType, Algorithm: algorithm, Extractable: extractable}
		if usage != "" {
			spec.Usage = strings.Split(usage, ",")
		}
		k, err := cl.Import(ctx, prov, name, spec, key)
		if b, ok := key.([]byte); ok {
			clear(b)
		}
		if err != nil {
			return err
		}
		return c.printKeys([]apitypes.Key{*k})
	case "create":
		req := apitypes.CreateKeyRequest{Provider: prov, Name: name, Description: description, KeySpec: apitypes.KeySpec{
			KeyType: keyType, KeySize: size, Curve: curve, Algorithm: algorithm, Extractable: extractable}, PublishJWKS: publish}
		if usage != "" {
			req.KeySpec.Usage = strings.Split(usage, ",")
		}
		if expires != "" {
			t, err := time.Parse(time.RFC3339, expires)
			if err != nil {
				return fmt.Errorf("--expires-at: %w", err)
			}
			req.ExpiresAt = &t
		}
		if metadata != "" {
			if req.Metadata, err = parseMetadata(metadata); err != nil {
				return err
			}
		}
		k, err := cl.CreateKey(ctx, req)
		if err != nil {
			return err
		}
		return c.printKeys([]apitypes.Key{*k})
	case "list":
		var keys []apitypes.Key
		next := pageToken
		for {
			l, err := cl.ListKeys(ctx, client.ListOptions{Provider: prov, State: state, Limit: limit, PageToken: next})
			if err != nil {
				return err
			}
			keys, next = append(keys, l.Keys...), l.NextPageToken
			if !all || next == "" {
				break
			}
		}
		if *c.output == "json" {
			return c.json(apitypes.KeyList{Keys: keys, NextPageToken: next})
		}
		if err := c.printKeys(keys); err != nil {
			return err
		}
		if next != "" {
			fmt.Fprintf(c.stderr, "more keys: --page-token %s (or --all)\n", next)
		}
		return nil
	}
	key, err := c.key("")
	if err != nil {
		return err
	}
	var k *apitypes.Key
	switch sub {
	case "export":
		if in == "" {
			return errors.New("keys export: --public-key is required")
		}
		pub, err := os.ReadFile(in)
		if err != nil {
			return err
		}
		out, err := cl.Export(ctx, key, apitypes.ExportKeyRequest{PublicKey: string(pub), Version: version})
		if err != nil {
			return err
		}
		return c.json(out)
	case "get":
		k, err = cl.GetKey(ctx, key)
	case "activate":
		k, err = cl.ActivateKey(ctx, key)
	case "deactivate":
		k, err = cl.DeactivateKey(ctx, key)
	case "rotate":
		k, err = cl.RotateKey(ctx, key)
	case "update":
		req, rerr := updateRequest(c, metadata, description, expires, rotation, minDecrypt, all, publish)
		if rerr != nil {
			return rerr
		}
		k, err = cl.UpdateKey(ctx, key, req)
	case "cancel-deletion":
		k, err = cl.CancelKeyDeletion(ctx, key)
	case "delete":
		o := client.DeleteOptions{PendingWindowDays: days}
		if window != "" {
			if o.PendingWindow, err = time.ParseDuration(window); err != nil {
				return fmt.Errorf("--pending-window: %w", err)
			}
		}
		k, err := cl.DeleteKey(ctx, key, o)
		if err != nil {
			return err
		}
		if *c.output == "json" {
			return c.json(k)
		}
		date := "(no date)"
		if k.DeletionDate != nil {
			date = k.DeletionDate.Format(time.RFC3339)
		}
		fmt.Fprintf(c.stdout, "key %s (%s) is scheduled for deletion on %s; it refuses every operation until then.\n",
			k.Name, k.ID, date)
		fmt.Fprintf(c.stdout, "to keep it: keygrid-hsm keys cancel-deletion %s\n", k.ID)
		return nil
	case "public":
		pk, err := cl.PublicKey(ctx, key, version)
		if err != nil {
			return err
		}
		switch {
		case *c.output == "json":
			return c.json(pk)
		case format == "jwk":
			return c.json(pk.JWK)
		}
		_, err = io.WriteString(c.stdout, pk.PublicKey)
		return err
	}
	if err != nil {
		return err
	}
	return c.printKeys([]apitypes.Key{*k})
}

func parseMetadata(s string) (map[string]string, error) {
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("--metadata: %q is not k=v", kv)
		}
		m[k] = v
	}
	return m, nil
}

// updateRequest builds a PATCH from the flags given: only those are sent.
func updateRequest(c *cli, metadata, description, expires, rotation string, minDecrypt int, clearMetadata, publish bool) (apitypes.UpdateKeyRequest, error) {
	set := map[string]bool{}
	c.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var req apitypes.UpdateKeyRequest
	switch {
	case clearMetadata && set["metadata"]:
		return req, errors.New("--metadata and --clear-metadata: give one")
	case clearMetadata:
		req.Metadata = &map[string]string{}
	case set["metadata"]:
		m, err := parseMetadata(metadata)
		if err != nil {
			return req, err
		}
		req.Metadata = &m
	}
	if set["description"] {
		req.Description = &description
	}
	switch {
	case expires == "none":
		req.ExpiresAt = apitypes.Null[time.Time]()
	case set["expires-at"]:
		t, err := time.Parse(time.RFC3339, expires)
		if err != nil {
			return req, fmt.Errorf("--expires-at: %w", err)
		}
		req.ExpiresAt = apitypes.Value(t)
	}
	if set["rotation-period"] {
		if _, err := time.ParseDuration(rotation); err != nil {
			return req, fmt.Errorf("--rotation-period: %w", err)
		}
		req.RotationPeriod = apitypes.Value(rotation)
	}
	if set["min-decrypt-version"] {
		req.MinDecryptVersion = &minDecrypt
	}
	if set["publish-jwks"] {
		req.PublishJWKS = &publish
	}
	return req, nil
}

func (c *cli) printKeys(keys []apitypes.Key) error {
	if *c.output == "json" {
		if len(keys) == 1 {
			return c.json(keys[0])
		}
		return c.json(keys)
	}
	tw := tabwriter.NewWriter(c.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tPROVIDER\tTYPE\tALGORITHM\tUSAGE\tSTATE\tVERSION\tCREATED\tDELETION")
	for _, k := range keys {
		spec := fmt.Sprintf("%s-%d", k.KeyType, k.KeySize)
		switch {
		case k.Curve != "":
			spec = "EC " + k.Curve
		case k.KeyType == "Ed25519":
			spec = k.KeyType
		}
		deletion := "-"
		if k.DeletionDate != nil {
			deletion = k.DeletionDate.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", k.ID, k.Name, k.Provider, spec, k.Algorithm,
			strings.Join(k.Usage, ","), k.State, k.Version, k.CreatedAt.Format(time.RFC3339), deletion)
	}
	return tw.Flush()
}

// ioFlags are the input and output settings of the crypto commands.
type ioFlags struct {
	in, inEnc, out, outEnc string
}

func (c *cli) ioFlags(inHelp string) *ioFlags {
	f := &ioFlags{}
	c.fs.StringVar(&f.in, "in", "-", inHelp+" (file, or - for stdin)")
	c.fs.StringVar(&f.inEnc, "in-encoding", "raw", "encoding of the input: raw or base64")
	c.fs.StringVar(&f.out, "out", "-", "output file (- for stdout)")
	c.fs.StringVar(&f.outEnc, "encoding", "base64", "encoding of the output: base64 or raw")
	return f
}

func readInput(c *cli, name, enc string) ([]byte, error) {
	var (
		b   []byte
		err error
	)
	if name == "-" || name == "" {
		b, err = io.ReadAll(io.LimitReader(c.stdin, 64<<20))
	} else {
		b, err = os.ReadFile(name)
	}
	if err != nil {
		return nil, err
	}
	switch enc {
	case "raw":
		return b, nil
	case "base64":
		return base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	}
	return nil, fmt.Errorf("encoding %q is not raw or base64", enc)
}

func (c *cli) writeOutput(f *ioFlags, b []byte) error {
	var out []byte
	switch f.outEnc {
	case "raw":
		out = b
	case "base64":
		out = []byte(base64.StdEncoding.EncodeToString(b) + "\n")
	default:
		return fmt.Errorf("--encoding %q is not base64 or raw", f.outEnc)
	}
	if f.out == "-" || f.out == "" {
		_, err := c.stdout.Write(out)
		return err
	}
	return os.WriteFile(f.out, out, 0o600)
}

func cmdCrypto(ctx context.Context, op string, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := newCLI(op, stdin, stdout, stderr)
	var (
		keyFlag, algorithm, sigFormat, sigFile, sigEnc, aad string
		digest                                              bool
		version                                             int
	)
	c.fs.StringVar(&keyFlag, "key", "", "key id or name (or give it as the argument)")
	c.fs.StringVar(&algorithm, "algorithm", "", "algorithm (default: the key's)")
	var f *ioFlags
	switch op {
	case "sign", "verify":
		f = c.ioFlags("data to sign or verify")
		c.fs.BoolVar(&digest, "digest", false, "the input is a digest already (not for EdDSA)")
		c.fs.StringVar(&sigFormat, "signature-format", "", "ECDSA signature format: der (default) or raw")
		if op == "verify" {
			c.fs.StringVar(&sigFile, "signature", "", "file holding the signature (encoded as --signature-encoding)")
			c.fs.StringVar(&sigEnc, "signature-encoding", "base64", "encoding of the signature file: base64 or raw")
			c.fs.IntVar(&version, "version", 0, "key version (default: current)")
		}
	case "encrypt", "decrypt":
		f = c.ioFlags(map[string]string{"encrypt": "plaintext", "decrypt": "ciphertext"}[op])
		c.fs.StringVar(&aad, "aad", "", "additional authenticated data (AES-GCM)")
		if op == "decrypt" {
			c.fs.IntVar(&version, "version", 0, "key version for RSA-OAEP (AES-GCM ciphertext records its own)")
		}
	case "wrap", "unwrap":
		f = c.ioFlags(map[string]string{"wrap": "key material to wrap", "unwrap": "wrapped key"}[op])
		if op == "unwrap" {
			c.fs.IntVar(&version, "version", 0, "key version (default: current)")
		}
	}
	if err := c.parse(args); err != nil {
		return err
	}
	key, err := c.key(keyFlag)
	if err != nil {
		return err
	}
	in, err := readInput(c, f.in, f.inEnc)
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	var aadBytes []byte
	if aad != "" {
		aadBytes = []byte(aad)
	}
	var (
		resp any
		out  []byte
	)
	switch op {
	case "sign":
		req := apitypes.SignRequest{Algorithm: algorithm, SignatureFormat: sigFormat}
		if digest {
			req.Digest = in
		} else {
			req.Data = in
		}
		r, err := cl.Sign(ctx, key, req)
		if err != nil {
			return err
		}
		resp, out = r, r.Signature
	case "verify":
		if sigFile == "" {
			return errors.New("verify: --signature FILE is required")
		}
		sig, err := readInput(c, sigFile, sigEnc)
		if err != nil {
			return fmt.Errorf("--signature: %w", err)
		}
		req := apitypes.VerifyRequest{Algorithm: algorithm, SignatureFormat: sigFormat, Signature: sig, KeyVersion: version}
		if digest {
			req.Digest = in
		} else {
			req.Data = in
		}
		r, err := cl.Verify(ctx, key, req)
		if err != nil {
			return err
		}
		if *c.output == "json" {
			if err := c.json(r); err != nil {
				return err
			}
		} else if r.Valid {
			fmt.Fprintln(c.stdout, "signature valid")
		}
		if !r.Valid {
			return &exitError{1, errors.New("signature invalid")}
		}
		return nil
	case "encrypt":
		r, err := cl.Encrypt(ctx, key, apitypes.EncryptRequest{Plaintext: in, Algorithm: algorithm, AAD: aadBytes})
		if err != nil {
			return err
		}
		resp, out = r, r.Ciphertext
	case "decrypt":
		r, err := cl.Decrypt(ctx, key, apitypes.DecryptRequest{Ciphertext: in, Algorithm: algorithm, AAD: aadBytes, KeyVersion: version})
		if err != nil {
			return err
		}
		resp, out = r, r.Plaintext
	case "wrap":
		r, err := cl.Wrap(ctx, key, apitypes.WrapRequest{KeyMaterial: in, Algorithm: algorithm})
		if err != nil {
			return err
		}
		resp, out = r, r.WrappedKey
	case "unwrap":
		r, err := cl.Unwrap(ctx, key, apitypes.UnwrapRequest{WrappedKey: in, Algorithm: algorithm, KeyVersion: version})
		if err != nil {
			return err
		}
		resp, out = r, r.KeyMaterial
	}
	if *c.output == "json" {
		return c.json(resp)
	}
	return c.writeOutput(f, out)
}

func cmdProviders(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := newCLI("providers", stdin, stdout, stderr)
	if err := c.parse(args); err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	l, err := cl.Providers(ctx)
	if err != nil {
		return err
	}
	if *c.output == "json" {
		return c.json(l)
	}
	tw := tabwriter.NewWriter(c.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tTYPE\tHEALTHY\tCAPABILITIES")
	for _, p := range l.Providers {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", p.Name, p.Type, p.Healthy, strings.Join(p.Capabilities, " "))
	}
	return tw.Flush()
}

func cmdHealth(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := newCLI("health", stdin, stdout, stderr)
	if err := c.parse(args); err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	h, err := cl.Health(ctx)
	if err != nil {
		return err
	}
	r, rerr := cl.Ready(ctx)
	if *c.output == "json" {
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
		return &exitError{1, fmt.Errorf("not ready: %w", rerr)}
	}
	return nil
}
