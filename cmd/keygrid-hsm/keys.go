package main

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// keysCmd is "keys": the connection flags are persistent on it, shared by
// every subcommand.
func keysCmd(s *streams) *cobra.Command {
	co := &conn{}
	simple := func(use, short, example string, call func(cl *client.Client, ctx context.Context, key string) (*apitypes.Key, error)) *cobra.Command {
		cmd := &cobra.Command{Use: use + " KEY", Short: short, Example: example, Args: keyArg("")}
		return clientCmd(s, cmd, co, func(c *cli, _ *pflag.FlagSet) func(context.Context) error {
			return func(ctx context.Context) error { return runKeyOperation(ctx, c, call) }
		})
	}
	keys := parent("keys", "create, list, inspect and manage keys",
		keysCreateCmd(s, co), keysImportCmd(s, co), keysExportCmd(s, co), keysListCmd(s, co), keysGetCmd(s, co),
		keysUpdateCmd(s, co), keysDeleteCmd(s, co), keysPublicCmd(s, co),
		simple("cancel-deletion", "take a key out of pending deletion (it is inactive afterwards)",
			"  keygrid-hsm keys cancel-deletion app-signing", (*client.Client).CancelKeyDeletion),
		simple("activate", "make a key usable again", "  keygrid-hsm keys activate app-signing", (*client.Client).ActivateKey),
		simple("deactivate", "make a key refuse every operation until activated", "  keygrid-hsm keys deactivate app-signing",
			(*client.Client).DeactivateKey),
		simple("rotate", "make a new version of a key; new operations use it, old versions still decrypt and verify",
			"  keygrid-hsm keys rotate app-signing", (*client.Client).RotateKey),
	)
	co.register(keys.PersistentFlags())
	return keys
}

func runKeyOperation(ctx context.Context, c *cli, call func(cl *client.Client, ctx context.Context, key string) (*apitypes.Key, error)) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	k, err := call(cl, ctx, c.posArgs[0])
	if err != nil {
		return err
	}
	return c.printKeys([]apitypes.Key{*k})
}

// keysCreateOptions are the flags of keys create.
type keysCreateOptions struct {
	name, provider, keyType, curve, algorithm, usage, expires, metadata, description string
	size                                                                             int
	extractable, publish                                                             bool
}

func keysCreateCmd(s *streams, co *conn) *cobra.Command {
	var o keysCreateOptions
	cmd := &cobra.Command{
		Use:   "create NAME --type TYPE [--size BITS | --curve CURVE]",
		Short: "create a key",
		Long: `Create a key named NAME. --type is RSA (--size 2048|3072|4096), EC (--curve P-256|P-384|P-521),
Ed25519, AES (--size 128|256) or HMAC (--size 256|384|512). Without --usage a key signs and
verifies (RSA, EC, Ed25519), encrypts and decrypts (AES) or computes MACs (HMAC).`,
		Example: `  keygrid-hsm keys create app-signing --type EC --curve P-256
  keygrid-hsm keys create payments-dek --type AES --size 256
  keygrid-hsm keys create rsa-enc --type RSA --size 3072 --usage encrypt,decrypt
  keygrid-hsm keys create hsm-signer --provider hsm --type RSA --size 2048 --algorithm PS256`,
		Args: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("name") {
				return exactArgs(0, "NAME or --name, not both")(cmd, args)
			}
			return exactArgs(1, "NAME (or --name): the new key's name")(cmd, args)
		},
	}
	return clientCmd(s, cmd, co, func(c *cli, f *pflag.FlagSet) func(context.Context) error {
		f.StringVar(&o.name, "name", "", "key name (or give it as NAME)")
		f.StringVar(&o.provider, "provider", "", "provider (default: the server's default)")
		f.StringVarP(&o.keyType, "type", "t", "", "key type: RSA, EC, Ed25519, AES, HMAC (required)")
		f.IntVar(&o.size, "size", 0, "key size in bits (RSA 2048/3072/4096, EC 256/384/521, AES 128/256, HMAC 256/384/512)")
		f.StringVar(&o.curve, "curve", "", "EC curve: P-256, P-384, P-521")
		f.StringVarP(&o.algorithm, "algorithm", "a", "", "default algorithm (RS256, PS256, ES256, EdDSA, RSA-OAEP-256, A256GCM, AES-KWP, …)")
		f.StringVar(&o.usage, "usage", "", "comma-separated usages: sign,verify,encrypt,decrypt,wrap,unwrap")
		f.BoolVar(&o.extractable, "extractable", false, "make the key extractable (exportable, wrapped, with keys export)")
		f.StringVar(&o.expires, "expires-at", "", "expiry time, RFC 3339")
		f.StringVar(&o.metadata, "metadata", "", "comma-separated k=v pairs")
		f.StringVar(&o.description, "description", "", "free text")
		f.BoolVar(&o.publish, "publish-jwks", false, "list the key in the unauthenticated /.well-known/jwks.json")
		return func(ctx context.Context) error {
			if len(c.posArgs) == 1 {
				o.name = c.posArgs[0]
			}
			if err := checkCreateFlags(c.cmd, o); err != nil {
				return err
			}
			return runKeysCreate(ctx, c, o)
		}
	})
}

// checkCreateFlags refuses, naming the flag, what the server would refuse
// naming its API field.
func checkCreateFlags(cmd *cobra.Command, o keysCreateOptions) error {
	if o.name == "" {
		return usageErr(cmd, "keys create needs NAME (or --name): the new key's name")
	}
	t := strings.ToUpper(o.keyType)
	switch {
	case t == "":
		return usageErr(cmd, "keys create: --type is required: RSA, EC, Ed25519, AES or HMAC")
	case t == "EC" && o.curve == "" && o.size == 0:
		return usageErr(cmd, "keys create: an EC key needs --curve P-256, P-384 or P-521 (or --size 256, 384 or 521)")
	case t == "RSA" && o.size == 0:
		return usageErr(cmd, "keys create: an RSA key needs --size 2048, 3072 or 4096")
	case t == "AES" && o.size == 0:
		return usageErr(cmd, "keys create: an AES key needs --size 128 or 256")
	case t == "HMAC" && o.size == 0:
		return usageErr(cmd, "keys create: an HMAC key needs --size 256, 384 or 512")
	case o.curve != "" && t != "EC":
		return usageErr(cmd, "keys create: --curve is for EC keys only")
	}
	// The server's own table of types, sizes and curves, its message in
	// the flags' terms.
	if _, err := alg.NewSpec(o.keyType, o.size, o.curve); err != nil {
		return usageErr(cmd, "keys create: %s", specFlags.Replace(kgerr.Classify(err).Message))
	}
	return nil
}

// specFlags turns the API's field names in a key spec's refusal into the
// flags of keys create.
var specFlags = strings.NewReplacer("key_spec.key_size", "--size", "key_spec.curve", "--curve", "key_spec.key_type", "--type",
	"unsupported key_type", "unsupported --type", "unsupported curve", "unsupported --curve")

func runKeysCreate(ctx context.Context, c *cli, o keysCreateOptions) error {
	req := apitypes.CreateKeyRequest{Provider: o.provider, Name: o.name, Description: o.description, KeySpec: apitypes.KeySpec{
		KeyType: o.keyType, KeySize: o.size, Curve: o.curve, Algorithm: o.algorithm, Extractable: o.extractable}, PublishJWKS: o.publish}
	if o.usage != "" {
		req.KeySpec.Usage = strings.Split(o.usage, ",")
	}
	if o.expires != "" {
		t, err := time.Parse(time.RFC3339, o.expires)
		if err != nil {
			return fmt.Errorf("--expires-at: %w", err)
		}
		req.ExpiresAt = &t
	}
	if o.metadata != "" {
		m, err := parseMetadata(o.metadata)
		if err != nil {
			return err
		}
		req.Metadata = m
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	k, err := cl.CreateKey(ctx, req)
	if err != nil {
		return err
	}
	return c.printKeys([]apitypes.Key{*k})
}

func keysImportCmd(s *streams, co *conn) *cobra.Command {
	var o keysImportOptions
	cmd := &cobra.Command{
		Use:   "import NAME --provider PROVIDER --in FILE",
		Short: "import key material (BYOK), wrapped for the provider before it leaves this machine",
		Example: `  keygrid-hsm keys import legacy-signer --provider hsm --in legacy.pem
  keygrid-hsm keys import legacy-dek --provider hsm --in dek.bin --type AES
  keygrid-hsm keys import --version-of legacy-signer --in legacy-2026.pem`,
		Args: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("name") || cmd.Flags().Changed("version-of") {
				return exactArgs(0, "NAME, --name or --version-of, only one")(cmd, args)
			}
			return exactArgs(1, "NAME: the imported key's name")(cmd, args)
		},
	}
	return clientCmd(s, cmd, co, func(c *cli, f *pflag.FlagSet) func(context.Context) error {
		o.register(f)
		return func(ctx context.Context) error {
			if len(c.posArgs) == 1 {
				o.name = c.posArgs[0]
			}
			if o.versionOf != "" {
				if o.in == "" || o.name != "" || o.provider != "" {
					return usageErr(c.cmd, "keys import --version-of: --in is required, --name and --provider are not (the key has them)")
				}
				return runKeysImport(ctx, c, o)
			}
			if o.provider == "" || o.in == "" {
				return usageErr(c.cmd, "keys import: --provider and --in are required")
			}
			return runKeysImport(ctx, c, o)
		}
	})
}

func keysExportCmd(s *streams, co *conn) *cobra.Command {
	var (
		pubFile string
		version int
	)
	cmd := &cobra.Command{
		Use:     "export KEY --public-key FILE",
		Short:   "export an extractable key wrapped for an RSA public key (RSA_AES_KEY_WRAP_SHA_256)",
		Example: "  keygrid-hsm keys export legacy-dek --public-key recipient.pub.pem > wrapped.json",
		Args:    keyArg(""),
	}
	return clientCmd(s, cmd, co, func(c *cli, f *pflag.FlagSet) func(context.Context) error {
		f.StringVar(&pubFile, "public-key", "", "PEM RSA public key (≥ 2048 bits) to wrap for (required)")
		f.IntVar(&version, "version", 0, "key version (default: newest)")
		return func(ctx context.Context) error {
			if pubFile == "" {
				return usageErr(c.cmd, "keys export: --public-key FILE is required")
			}
			pub, err := os.ReadFile(pubFile)
			if err != nil {
				return err
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			out, err := cl.Export(ctx, c.posArgs[0], apitypes.ExportKeyRequest{PublicKey: string(pub), Version: version})
			if err != nil {
				return err
			}
			return c.json(out)
		}
	})
}

// keysListOptions are the flags of keys list.
type keysListOptions struct {
	provider, state, pageToken string
	limit                      int
	all                        bool
}

func keysListCmd(s *streams, co *conn) *cobra.Command {
	var o keysListOptions
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "list keys, a page at a time (--all: every page)",
		Example: "  keygrid-hsm keys list\n  keygrid-hsm keys list --provider hsm --state active --all -o json",
		Args:    noArgs,
	}
	return clientCmd(s, cmd, co, func(c *cli, f *pflag.FlagSet) func(context.Context) error {
		f.StringVar(&o.provider, "provider", "", "only keys of this provider")
		f.StringVar(&o.state, "state", "", "only keys in this state (active, inactive, pending, pending_deletion, deleting)")
		f.IntVar(&o.limit, "limit", 0, "page size (default: the server's)")
		f.StringVar(&o.pageToken, "page-token", "", "continue after this page token")
		f.BoolVar(&o.all, "all", false, "follow page tokens to the end")
		return func(ctx context.Context) error {
			if c.changed("limit") && o.limit < 1 {
				return usageErr(c.cmd, "keys list: --limit %d: give a page size of at least 1", o.limit)
			}
			return runKeysList(ctx, c, o)
		}
	})
}

func runKeysList(ctx context.Context, c *cli, o keysListOptions) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	var keys []apitypes.Key
	next := o.pageToken
	for {
		l, err := cl.ListKeys(ctx, client.ListOptions{Provider: o.provider, State: o.state, Limit: o.limit, PageToken: next})
		if err != nil {
			return err
		}
		keys, next = append(keys, l.Keys...), l.NextPageToken
		if !o.all || next == "" {
			break
		}
	}
	if c.output == "json" {
		return c.json(apitypes.KeyList{Keys: keys, NextPageToken: next, Count: len(keys)})
	}
	if err := c.printKeys(keys); err != nil {
		return err
	}
	if next != "" {
		fmt.Fprintf(c.stderr, "more keys: --page-token %s (or --all)\n", next)
	}
	return nil
}

func keysGetCmd(s *streams, co *conn) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "get KEY",
		Short:   "show a key: its spec, state, expiry, rotation, metadata and every version with its provider reference",
		Example: "  keygrid-hsm keys get app-signing\n  keygrid-hsm keys get app-signing -o json",
		Args:    keyArg(""),
	}
	return clientCmd(s, cmd, co, func(c *cli, _ *pflag.FlagSet) func(context.Context) error {
		return func(ctx context.Context) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			k, err := cl.GetKey(ctx, c.posArgs[0])
			if err != nil {
				return err
			}
			if c.output == "json" {
				return c.json(k)
			}
			return printKeyDetail(c.stdout, k)
		}
	})
}

// keysUpdateOptions are the flags of keys update; only those given are
// sent.
type keysUpdateOptions struct {
	metadata, description, expires, rotation string
	minDecrypt                               int
	clearMetadata, publish                   bool
}

func keysUpdateCmd(s *streams, co *conn) *cobra.Command {
	var o keysUpdateOptions
	cmd := &cobra.Command{
		Use:   "update KEY",
		Short: "change a key's metadata, description, expiry, rotation period, oldest decrypting version or JWKS listing",
		Example: `  keygrid-hsm keys update app-signing --metadata team=payments,env=prod --rotation-period 2160h
  keygrid-hsm keys update app-signing --expires-at none --clear-metadata`,
		Args: keyArg(""),
	}
	return clientCmd(s, cmd, co, func(c *cli, f *pflag.FlagSet) func(context.Context) error {
		f.StringVar(&o.metadata, "metadata", "", "comma-separated k=v pairs: replaces all metadata")
		f.StringVar(&o.description, "description", "", "free text")
		f.StringVar(&o.expires, "expires-at", "", "expiry time, RFC 3339, or none to remove the expiry")
		f.StringVar(&o.rotation, "rotation-period", "", "automatic rotation period, e.g. 2160h (0s: off)")
		f.IntVar(&o.minDecrypt, "min-decrypt-version", -1, "oldest version that may still decrypt, unwrap and verify (0: all)")
		f.BoolVar(&o.clearMetadata, "clear-metadata", false, "remove all metadata")
		f.BoolVar(&o.publish, "publish-jwks", false, "list the key in /.well-known/jwks.json (--publish-jwks=false: take it out)")
		return func(ctx context.Context) error {
			req, err := updateRequest(c, o)
			if err != nil {
				return err
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			k, err := cl.UpdateKey(ctx, c.posArgs[0], req)
			if err != nil {
				return err
			}
			return c.printKeys([]apitypes.Key{*k})
		}
	})
}

func keysDeleteCmd(s *streams, co *conn) *cobra.Command {
	var (
		days   int
		window string
	)
	cmd := &cobra.Command{
		Use:   "delete KEY",
		Short: "schedule a key's destruction after a pending window (it refuses every operation until then)",
		Example: `  keygrid-hsm keys delete app-signing --pending-window-days 7
  keygrid-hsm keys cancel-deletion app-signing`,
		Args: keyArg(""),
	}
	return clientCmd(s, cmd, co, func(c *cli, f *pflag.FlagSet) func(context.Context) error {
		f.IntVar(&days, "pending-window-days", 0, "days before the key is destroyed (default: the server's, 30 days)")
		f.StringVar(&window, "pending-window", "", "time before the key is destroyed, e.g. 168h (when the server's floor allows)")
		return func(ctx context.Context) error {
			o := client.DeleteOptions{PendingWindowDays: days}
			if window != "" {
				d, err := time.ParseDuration(window)
				if err != nil {
					return fmt.Errorf("--pending-window: %w", err)
				}
				o.PendingWindow = d
			}
			return runKeysDelete(ctx, c, o)
		}
	})
}

func runKeysDelete(ctx context.Context, c *cli, o client.DeleteOptions) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	k, err := cl.DeleteKey(ctx, c.posArgs[0], o)
	if err != nil {
		return err
	}
	if c.output == "json" {
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
}

func keysPublicCmd(s *streams, co *conn) *cobra.Command {
	var (
		version     int
		format, out string
	)
	cmd := &cobra.Command{
		Use:   "public KEY",
		Short: "print a key's public key: PEM (SubjectPublicKeyInfo), DER or JWK",
		Example: `  keygrid-hsm keys public app-signing > app-signing.pub.pem
  keygrid-hsm keys public app-signing --format der --out app-signing.pub.der
  keygrid-hsm keys public app-signing --format jwk`,
		Args: keyArg(""),
	}
	return clientCmd(s, cmd, co, func(c *cli, f *pflag.FlagSet) func(context.Context) error {
		f.IntVar(&version, "version", 0, "key version (default: current)")
		f.StringVarP(&format, "format", "f", "pem", "pem, der or jwk (-o json prints the whole answer)")
		f.StringVar(&out, "out", "", "write to this file (default: stdout)")
		return func(ctx context.Context) error {
			if err := oneOf(c.cmd, "format", format, "pem", "der", "jwk"); err != nil {
				return err
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			pk, err := cl.PublicKey(ctx, c.posArgs[0], version)
			if err != nil {
				return err
			}
			return writePublicKey(c, pk, format, out)
		}
	})
}

func writePublicKey(c *cli, pk *apitypes.PublicKey, format, out string) error {
	var b []byte
	switch {
	case c.output == "json":
		return c.json(pk)
	case format == "jwk":
		return c.json(pk.JWK)
	case format == "der":
		blk, _ := pem.Decode([]byte(pk.PublicKey))
		if blk == nil {
			return errors.New("keys public: the server's answer holds no PEM public key")
		}
		b = blk.Bytes
	default:
		b = []byte(pk.PublicKey)
	}
	if out != "" {
		return os.WriteFile(out, b, 0o644)
	}
	_, err := c.stdout.Write(b)
	return err
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
func updateRequest(c *cli, o keysUpdateOptions) (apitypes.UpdateKeyRequest, error) {
	var req apitypes.UpdateKeyRequest
	switch {
	case o.clearMetadata && c.changed("metadata"):
		return req, usageErr(c.cmd, "--metadata and --clear-metadata: give one")
	case o.clearMetadata:
		req.Metadata = &map[string]string{}
	case c.changed("metadata"):
		m, err := parseMetadata(o.metadata)
		if err != nil {
			return req, err
		}
		req.Metadata = &m
	}
	if c.changed("description") {
		req.Description = &o.description
	}
	switch {
	case o.expires == "none":
		req.ExpiresAt = apitypes.Null[time.Time]()
	case c.changed("expires-at"):
		t, err := time.Parse(time.RFC3339, o.expires)
		if err != nil {
			return req, fmt.Errorf("--expires-at: %w", err)
		}
		req.ExpiresAt = apitypes.Value(t)
	}
	if c.changed("rotation-period") {
		if _, err := time.ParseDuration(o.rotation); err != nil {
			return req, fmt.Errorf("--rotation-period: %w", err)
		}
		req.RotationPeriod = apitypes.Value(o.rotation)
	}
	if c.changed("min-decrypt-version") {
		req.MinDecryptVersion = &o.minDecrypt
	}
	if c.changed("publish-jwks") {
		req.PublishJWKS = &o.publish
	}
	return req, nil
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 2, 4, 2, ' ', 0) }

func keySpecText(k *apitypes.Key) string {
	switch {
	case k.Curve != "":
		return "EC " + k.Curve
	case k.KeyType == "Ed25519":
		return k.KeyType
	}
	return fmt.Sprintf("%s-%d", k.KeyType, k.KeySize)
}

func (c *cli) printKeys(keys []apitypes.Key) error {
	if c.output == "json" {
		if len(keys) == 1 {
			return c.json(keys[0])
		}
		return c.json(keys)
	}
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "ID\tNAME\tPROVIDER\tTYPE\tALGORITHM\tUSAGE\tSTATE\tVERSION\tCREATED\tDELETION")
	for _, k := range keys {
		deletion := "-"
		if k.DeletionDate != nil {
			deletion = k.DeletionDate.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", k.ID, k.Name, k.Provider, keySpecText(&k), k.Algorithm,
			strings.Join(k.Usage, ","), k.State, k.Version, k.CreatedAt.Format(time.RFC3339), deletion)
	}
	return tw.Flush()
}

// printKeyDetail is keys get's table output: every field of the key, its
// metadata and its versions.
func printKeyDetail(w io.Writer, k *apitypes.Key) error {
	tm := func(t *time.Time, none string) string {
		if t == nil {
			return none
		}
		return t.Format(time.RFC3339)
	}
	rotation := "off"
	if k.RotationPeriod != "" {
		rotation = k.RotationPeriod + ", next " + tm(k.NextRotationAt, "(not scheduled)")
	}
	minDecrypt := "all versions"
	if k.MinDecryptVersion > 0 {
		minDecrypt = fmt.Sprintf("version %d and newer", k.MinDecryptVersion)
	}
	tw := newTable(w)
	for _, row := range [][2]string{
		{"ID", k.ID}, {"Name", k.Name}, {"Description", k.Description}, {"Provider", k.Provider},
		{"Type", keySpecText(k)}, {"Algorithm", k.Algorithm}, {"Usage", strings.Join(k.Usage, ",")},
		{"Extractable", fmt.Sprint(k.Extractable)}, {"Origin", k.Origin}, {"State", k.State},
		{"Current version", fmt.Sprint(k.Version)}, {"Decrypts and verifies", minDecrypt},
		{"Created", tm(&k.CreatedAt, "")}, {"Updated", tm(&k.UpdatedAt, "")}, {"Expires", tm(k.ExpiresAt, "never")},
		{"Rotation", rotation}, {"Deletion date", tm(k.DeletionDate, "-")}, {"Published in JWKS", fmt.Sprint(k.PublishJWKS)},
	} {
		if row[1] != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", row[0], row[1])
		}
	}
	if len(k.Metadata) == 0 {
		fmt.Fprintln(tw, "Metadata:\t(none)")
	} else {
		fmt.Fprintln(tw, "Metadata:\t")
		names := make([]string, 0, len(k.Metadata))
		for n := range k.Metadata {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(tw, "  %s\t%s\n", n, k.Metadata[n])
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "Versions:")
	tw = newTable(w)
	fmt.Fprintln(tw, "  VERSION\tCREATED\tPROVIDER REFERENCE")
	for _, v := range k.Versions {
		ref := v.ProviderRef
		if ref == "" {
			ref = "-"
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\n", v.Version, v.CreatedAt.Format(time.RFC3339), ref)
	}
	return tw.Flush()
}
