package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// cryptoOptions are the flags of sign, verify, encrypt, decrypt, wrap and
// unwrap. What one command writes the next reads with default flags:
// signatures, ciphertext and wrapped keys are base64 on both sides,
// plaintext and key material raw on both sides.
type cryptoOptions struct {
	key, algorithm, aad        string
	in, inEnc, out, outEnc     string
	sigFile, sigEnc, sigFormat string
	digest                     bool
	version                    int
}

// cryptoSpec says, per command, what goes in and out.
var cryptoSpec = map[string]struct {
	short, in, out, inEnc, outEnc, example string
}{
	"sign": {"sign data (or a digest) with a key; the signature is written base64", "data to sign", "signature", "raw", "base64",
		`  echo hello | keygrid-hsm sign app-signing > sig.b64
  keygrid-hsm sign app-signing --in report.pdf --algorithm ES256 --out report.sig.b64`},
	"verify": {"verify a signature (base64, as sign writes it); exit 1 when it is not valid", "data the signature is over", "", "raw", "",
		`  echo hello | keygrid-hsm verify app-signing --signature sig.b64
  keygrid-hsm verify app-signing --in report.pdf --signature report.sig --signature-encoding raw`},
	"encrypt": {"encrypt with a key; the ciphertext is written base64", "plaintext", "ciphertext", "raw", "base64",
		`  echo secret | keygrid-hsm encrypt payments-dek > secret.b64
  keygrid-hsm encrypt payments-dek --in card.json --aad order-42 --out card.enc.b64`},
	"decrypt": {"decrypt base64 ciphertext (as encrypt writes it); the plaintext is written raw", "ciphertext", "plaintext", "base64", "raw",
		`  keygrid-hsm decrypt payments-dek --in secret.b64
  keygrid-hsm encrypt payments-dek --in card.json | keygrid-hsm decrypt payments-dek`},
	"wrap": {"wrap key material with a key-encryption key; the wrapped key is written base64", "key material to wrap", "wrapped key", "raw", "base64",
		`  keygrid-hsm wrap kek --in dek.bin > dek.wrapped.b64`},
	"unwrap": {"unwrap a base64 wrapped key (as wrap writes it); the key material is written raw", "wrapped key", "key material", "base64", "raw",
		`  keygrid-hsm unwrap kek --in dek.wrapped.b64 --out dek.bin`},
}

func cryptoCmd(s *streams, op string) *cobra.Command {
	sp := cryptoSpec[op]
	var o cryptoOptions
	use := op + " KEY"
	if op == "verify" {
		use += " --signature FILE"
	}
	cmd := &cobra.Command{Use: use, Short: sp.short, Example: sp.example, Args: keyArg("key"),
		Long: fmt.Sprintf("%s%s.\n\nInput: the %s, from --in FILE or stdin, %s unless --in-encoding says otherwise.", strings.ToUpper(sp.short[:1]), sp.short[1:], sp.in, sp.inEnc)}
	if sp.out != "" {
		cmd.Long += fmt.Sprintf("\nOutput: the %s, to --out FILE or stdout, %s unless --encoding says otherwise (-o json: the whole answer).", sp.out, sp.outEnc)
	}
	return clientCmd(s, cmd, nil, func(c *cli, f *pflag.FlagSet) func(context.Context) error {
		f.StringVarP(&o.key, "key", "k", "", "key id or name (or give it as KEY)")
		f.StringVarP(&o.algorithm, "algorithm", "a", "", "algorithm (default: the key's)")
		f.StringVarP(&o.in, "in", "i", "-", sp.in+" (file, or - for stdin)")
		f.StringVar(&o.inEnc, "in-encoding", sp.inEnc, "encoding of --in: raw or base64")
		if sp.out != "" {
			f.StringVar(&o.out, "out", "-", "file for the "+sp.out+" (- for stdout)")
			f.StringVar(&o.outEnc, "encoding", sp.outEnc, "encoding of the "+sp.out+": base64 or raw")
		}
		switch op {
		case "sign", "verify":
			f.BoolVar(&o.digest, "digest", false, "the input is a digest already (not for EdDSA)")
			f.StringVar(&o.sigFormat, "signature-format", "", "ECDSA signature format: der (default) or raw (r‖s, as JWS)")
		case "encrypt", "decrypt":
			f.StringVar(&o.aad, "aad", "", "additional authenticated data (AES-GCM): the same on encrypt and decrypt")
		}
		switch op {
		case "verify":
			f.StringVar(&o.sigFile, "signature", "", "file holding the signature (required; encoded as --signature-encoding)")
			f.StringVar(&o.sigEnc, "signature-encoding", "base64", "encoding of the signature file: base64 (as sign writes it) or raw")
			f.IntVar(&o.version, "version", 0, "verify with this key version only (default: every version that may still verify is tried)")
		case "decrypt":
			f.IntVar(&o.version, "version", 0, "key version for RSA-OAEP (default: current; AES-GCM ciphertext records its own)")
		case "unwrap":
			f.IntVar(&o.version, "version", 0, "key version (default: current)")
		}
		return func(ctx context.Context) error {
			if err := o.check(c.cmd, op); err != nil {
				return err
			}
			return runCrypto(ctx, c, op, o)
		}
	})
}

// check refuses flag values outside their sets, naming the flag.
func (o *cryptoOptions) check(cmd *cobra.Command, op string) error {
	if err := oneOf(cmd, "in-encoding", o.inEnc, "raw", "base64"); err != nil {
		return err
	}
	if cryptoSpec[op].out != "" {
		if err := oneOf(cmd, "encoding", o.outEnc, "base64", "raw"); err != nil {
			return err
		}
	}
	if op == "verify" {
		if o.sigFile == "" {
			return usageErr(cmd, "verify: --signature FILE is required")
		}
		if err := oneOf(cmd, "signature-encoding", o.sigEnc, "base64", "raw"); err != nil {
			return err
		}
	}
	if o.sigFormat != "" {
		return oneOf(cmd, "signature-format", o.sigFormat, "der", "raw")
	}
	return nil
}

// input is what a command read, and how, for the hints of a mismatch.
type input struct {
	b        []byte
	flag     string // the flag that sets its encoding
	raw      bool
	looksB64 bool // read raw, but it is base64 text
}

func readInput(c *cli, name, enc, encFlag string) (*input, error) {
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
	if enc == "raw" {
		_, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		return &input{b: b, flag: encFlag, raw: true, looksB64: derr == nil && len(strings.TrimSpace(string(b))) >= 16}, nil
	}
	d, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("the input is not base64 (%v), as %s %s reads it: for raw bytes give %s raw", err, encFlag, enc, encFlag)
	}
	return &input{b: d, flag: encFlag}, nil
}

// hint adds to a refusal of raw input that looks like base64 the flag that
// reads it as base64.
func (in *input) hint(err error) error {
	if in.looksB64 && (errors.Is(err, client.ErrInvalidInput) || errors.Is(err, client.ErrDecryptionFailed)) {
		return fmt.Errorf("%w\n(the input was read raw but is base64 text: give %s base64)", err, in.flag)
	}
	return err
}

func (c *cli) writeOutput(o cryptoOptions, b []byte) error {
	out := b
	if o.outEnc == "base64" {
		out = []byte(base64.StdEncoding.EncodeToString(b) + "\n")
	}
	if o.out == "-" || o.out == "" {
		_, err := c.stdout.Write(out)
		return err
	}
	return os.WriteFile(o.out, out, 0o600)
}

func runCrypto(ctx context.Context, c *cli, op string, o cryptoOptions) error {
	key, err := c.key(o.key)
	if err != nil {
		return err
	}
	in, err := readInput(c, o.in, o.inEnc, "--in-encoding")
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	var aad []byte
	if o.aad != "" {
		aad = []byte(o.aad)
	}
	var (
		resp any
		out  []byte
	)
	switch op {
	case "sign":
		req := apitypes.SignRequest{Algorithm: o.algorithm, SignatureFormat: o.sigFormat}
		if o.digest {
			req.Digest = in.b
		} else {
			req.Data = in.b
		}
		r, err := cl.Sign(ctx, key, req)
		if err != nil {
			return err
		}
		resp, out = r, r.Signature
	case "verify":
		return runVerify(ctx, c, cl, key, in, o)
	case "encrypt":
		r, err := cl.Encrypt(ctx, key, apitypes.EncryptRequest{Plaintext: in.b, Algorithm: o.algorithm, AAD: aad})
		if err != nil {
			return err
		}
		resp, out = r, r.Ciphertext
	case "decrypt":
		r, err := cl.Decrypt(ctx, key, apitypes.DecryptRequest{Ciphertext: in.b, Algorithm: o.algorithm, AAD: aad, KeyVersion: o.version})
		if err != nil {
			return in.hint(err)
		}
		resp, out = r, r.Plaintext
	case "wrap":
		r, err := cl.Wrap(ctx, key, apitypes.WrapRequest{KeyMaterial: in.b, Algorithm: o.algorithm})
		if err != nil {
			return err
		}
		resp, out = r, r.WrappedKey
	case "unwrap":
		r, err := cl.Unwrap(ctx, key, apitypes.UnwrapRequest{WrappedKey: in.b, Algorithm: o.algorithm, KeyVersion: o.version})
		if err != nil {
			return in.hint(err)
		}
		resp, out = r, r.KeyMaterial
	}
	if c.output == "json" {
		return c.json(resp)
	}
	return c.writeOutput(o, out)
}

func runVerify(ctx context.Context, c *cli, cl *client.Client, key string, in *input, o cryptoOptions) error {
	sig, err := readInput(c, o.sigFile, o.sigEnc, "--signature-encoding")
	if err != nil {
		return fmt.Errorf("--signature: %w", err)
	}
	req := apitypes.VerifyRequest{Algorithm: o.algorithm, SignatureFormat: o.sigFormat, Signature: sig.b, KeyVersion: o.version}
	if o.digest {
		req.Digest = in.b
	} else {
		req.Data = in.b
	}
	r, err := cl.Verify(ctx, key, req)
	if err != nil {
		return sig.hint(err)
	}
	if c.output == "json" {
		if err := c.json(r); err != nil {
			return err
		}
	} else if r.Valid {
		fmt.Fprintln(c.stdout, "signature valid")
	}
	if !r.Valid {
		if sig.looksB64 {
			return errors.New("signature invalid (the signature was read raw but is base64 text: give --signature-encoding base64)")
		}
		return errors.New("signature invalid")
	}
	return nil
}
