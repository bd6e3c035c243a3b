package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// listFlag is a repeatable flag whose values may also be comma-separated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Type() string { return "strings" }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// subjectFlags are the name and alternative names of a CSR or certificate.
type subjectFlags struct {
	cn, serial                        string
	org, ou, country, province, local listFlag
	dns, ip, email, uri               listFlag
}

func (s *subjectFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&s.cn, "cn", "", "subject common name")
	fs.Var(&s.org, "org", "subject organization (repeatable)")
	fs.Var(&s.ou, "ou", "subject organizational unit (repeatable)")
	fs.Var(&s.country, "country", "subject country (repeatable)")
	fs.Var(&s.province, "province", "subject state or province (repeatable)")
	fs.Var(&s.local, "locality", "subject locality (repeatable)")
	fs.StringVar(&s.serial, "subject-serial", "", "subject serial number attribute")
	fs.Var(&s.dns, "dns", "DNS subject alternative name (repeatable, or comma-separated)")
	fs.Var(&s.ip, "ip", "IP subject alternative name (repeatable)")
	fs.Var(&s.email, "email", "e-mail subject alternative name (repeatable)")
	fs.Var(&s.uri, "uri", "URI subject alternative name (repeatable)")
}

func (s *subjectFlags) subject() apitypes.Subject {
	return apitypes.Subject{CommonName: s.cn, Organization: s.org, OrganizationalUnit: s.ou, Country: s.country,
		Province: s.province, Locality: s.local, SerialNumber: s.serial}
}

func (s *subjectFlags) hasSubject() bool {
	return s.cn != "" || len(s.org)+len(s.ou)+len(s.country)+len(s.province)+len(s.local) > 0 || s.serial != ""
}

// writeOut writes text to --out, or stdout.
func (c *cli) writeOut(path, text string) error {
	if path == "" {
		_, err := io.WriteString(c.stdout, text)
		return err
	}
	return os.WriteFile(path, []byte(text), 0o644)
}

// cmdCSR: keygrid-hsm csr KEY --cn … --dns … [--out FILE].
func csrCmd(s *streams) *cobra.Command {
	cmd := &cobra.Command{Use: "csr KEY", Short: "a PKCS#10 certificate request signed by the key",
		Example: "  keygrid-hsm csr web-tls --cn www.example.com --dns www.example.com,example.com --out web.csr",
		Args:    keyArg("")}
	return clientCmd(s, cmd, nil, func(c *cli, fs *pflag.FlagSet) func(context.Context) error {
		var (
			sf             subjectFlags
			algorithm, out string
		)
		sf.add(fs)
		fs.StringVar(&algorithm, "algorithm", "", "signature algorithm (default: the key's)")
		fs.StringVar(&out, "out", "", "write the PEM CSR to this file (default: stdout)")
		return func(ctx context.Context) error {
			key, err := c.key("")
			if err != nil {
				return err
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			r, err := cl.CreateCSR(ctx, key, apitypes.CSRRequest{Subject: sf.subject(), DNSNames: sf.dns, IPAddresses: sf.ip,
				EmailAddresses: sf.email, URIs: sf.uri, Algorithm: algorithm})
			if err != nil {
				return err
			}
			if c.output == "json" {
				return c.json(r)
			}
			return c.writeOut(out, r.CSR)
		}
	})
}

// certCmd: keygrid-hsm cert issue|attach|get.
func certCmd(s *streams) *cobra.Command {
	attach := &cobra.Command{Use: "attach KEY CHAIN.pem", Short: "attach a certificate chain (leaf first) to the key's current version",
		Example: "  keygrid-hsm cert attach web-tls web-chain.pem", Args: exactArgs(2, "KEY and CHAIN.pem: the key and a PEM file of its chain, leaf first")}
	attach = clientCmd(s, attach, nil, func(c *cli, fs *pflag.FlagSet) func(context.Context) error {
		return func(ctx context.Context) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			b, err := os.ReadFile(c.posArgs[1])
			if err != nil {
				return err
			}
			r, err := cl.AttachChain(ctx, c.posArgs[0], string(b))
			if err != nil {
				return err
			}
			if c.output != "json" {
				fmt.Fprintf(c.stdout, "attached to version %d of %s\n", r.KeyVersion, r.KeyID)
				return nil
			}
			return c.json(r)
		}
	})
	get := &cobra.Command{Use: "get KEY", Short: "print the certificate chain of the key's version (PEM, leaf first)",
		Example: "  keygrid-hsm cert get web-tls > web-chain.pem", Args: keyArg("")}
	get = clientCmd(s, get, nil, func(c *cli, fs *pflag.FlagSet) func(context.Context) error {
		version := 0
		fs.IntVar(&version, "version", 0, "key version (default: current)")
		return func(ctx context.Context) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			r, err := cl.Chain(ctx, c.posArgs[0], version)
			if err != nil {
				return err
			}
			if c.output == "json" {
				return c.json(r)
			}
			_, err = io.WriteString(c.stdout, r.Chain)
			return err
		}
	})
	return parent("cert", "issue certificates with a key, attach and read its chain", certIssueCmd(s), attach, get)
}

// jwtCmd: keygrid-hsm jwt sign KEY --claim sub=… --exp 15m.
func jwtCmd(s *streams) *cobra.Command {
	return parent("jwt", "sign JWTs with a key", jwtSignCmd(s))
}

func certIssueCmd(s *streams) *cobra.Command {
	cmd := &cobra.Command{Use: "issue CA-KEY", Short: "issue a certificate signed by the key: for a CSR, a public key, or the key itself (--self-signed)",
		Example: "  keygrid-hsm cert issue root-ca --self-signed --cn \"Example Root\" --ca --validity 87600h --out root.pem\n  keygrid-hsm cert issue root-ca --csr web.csr --validity 720h --ext-key-usage server_auth --out web.pem",
		Args:    keyArg("")}
	return clientCmd(s, cmd, nil, func(c *cli, fs *pflag.FlagSet) func(context.Context) error {
		var (
			sf                                                         subjectFlags
			csrFile, pubFile, validity, notBefore, notAfter, algo, out string
			selfSigned, isCA                                           bool
			maxPath                                                    = -1
			ku, eku, crl, ocsp                                         listFlag
		)
		sf.add(fs)
		fs.StringVar(&csrFile, "csr", "", "PEM CSR of the subject")
		fs.StringVar(&pubFile, "public-key", "", "PEM public key of the subject (with --cn and the like)")
		fs.BoolVar(&selfSigned, "self-signed", false, "certify the key's own public key")
		fs.StringVar(&validity, "validity", "", "validity from now, such as 720h")
		fs.StringVar(&notBefore, "not-before", "", "start of validity, RFC 3339")
		fs.StringVar(&notAfter, "not-after", "", "end of validity, RFC 3339")
		fs.BoolVar(&isCA, "ca", false, "issue a CA certificate")
		fs.IntVar(&maxPath, "max-path-len", -1, "path length constraint of a CA certificate")
		fs.Var(&ku, "key-usage", "key usage: digital_signature, key_encipherment, cert_sign, crl_sign, … (repeatable)")
		fs.Var(&eku, "ext-key-usage", "extended key usage: server_auth, client_auth, code_signing, … (repeatable)")
		fs.Var(&crl, "crl", "CRL distribution point URL (repeatable)")
		fs.Var(&ocsp, "ocsp", "OCSP server URL (repeatable)")
		fs.StringVar(&algo, "algorithm", "", "signature algorithm (default: the issuer key's)")
		fs.StringVar(&out, "out", "", "write the PEM certificate to this file (default: stdout)")
		return func(ctx context.Context) error {
			key, err := c.key("")
			if err != nil {
				return err
			}
			subjects := 0
			for _, given := range []bool{csrFile != "", pubFile != "", selfSigned} {
				if given {
					subjects++
				}
			}
			switch {
			case subjects != 1:
				return usageErr(c.cmd, "cert issue: give one of --csr FILE, --public-key FILE or --self-signed")
			case validity == "" && notAfter == "":
				return usageErr(c.cmd, "cert issue: give --validity (such as 720h) or --not-after (RFC 3339)")
			}
			req := apitypes.IssueCertificateRequest{SelfSigned: selfSigned, Validity: validity, IsCA: isCA, KeyUsage: ku,
				ExtKeyUsage: eku, CRLDistributionPoints: crl, OCSPServers: ocsp, Algorithm: algo,
				DNSNames: sf.dns, IPAddresses: sf.ip, EmailAddresses: sf.email, URIs: sf.uri}
			if sf.hasSubject() {
				s := sf.subject()
				req.Subject = &s
			}
			if maxPath >= 0 {
				req.MaxPathLen = &maxPath
			}
			for _, f := range []struct {
				path string
				dst  *string
			}{{csrFile, &req.CSR}, {pubFile, &req.PublicKey}} {
				if f.path != "" {
					b, err := os.ReadFile(f.path)
					if err != nil {
						return err
					}
					*f.dst = string(b)
				}
			}
			for _, f := range []struct {
				name, v string
				dst     **time.Time
			}{{"--not-before", notBefore, &req.NotBefore}, {"--not-after", notAfter, &req.NotAfter}} {
				if f.v != "" {
					t, err := time.Parse(time.RFC3339, f.v)
					if err != nil {
						return fmt.Errorf("%s: %w", f.name, err)
					}
					*f.dst = &t
				}
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			r, err := cl.IssueCertificate(ctx, key, req)
			if err != nil {
				return err
			}
			if c.output == "json" {
				return c.json(r)
			}
			fmt.Fprintf(c.stderr, "serial %s\n", r.Serial)
			return c.writeOut(out, r.Certificate)
		}
	})
}

// claimValue reads a --claim value: JSON when it parses as JSON (numbers,
// booleans, arrays, objects, quoted strings), else the text.
func claimValue(v string) any {
	var x any
	if err := json.Unmarshal([]byte(v), &x); err == nil {
		return x
	}
	return v
}

func jwtSignCmd(s *streams) *cobra.Command {
	cmd := &cobra.Command{Use: "sign KEY", Short: "sign a JWT with the key",
		Example: "  keygrid-hsm jwt sign app-signing --claim sub=alice --claim aud=api --exp 15m",
		Args:    keyArg("")}
	return clientCmd(s, cmd, nil, func(c *cli, fs *pflag.FlagSet) func(context.Context) error {
		var (
			claims, headers       listFlag
			claimsJSON, exp, algo string
			iat                   bool
		)
		fs.Var(&claims, "claim", "claim name=value (repeatable; JSON values are parsed: n=1, a=[1,2])")
		fs.StringVar(&claimsJSON, "claims-json", "", "claims as one JSON object (merged under --claim)")
		fs.Var(&headers, "header", "protected header name=value (repeatable)")
		fs.StringVar(&exp, "exp", "", "expire this long after issue (sets iat and exp), such as 15m")
		fs.BoolVar(&iat, "iat", false, "set iat")
		fs.StringVar(&algo, "algorithm", "", "JWS algorithm (default: the key's)")
		return func(ctx context.Context) error {
			key, err := c.key("")
			if err != nil {
				return err
			}
			req := apitypes.JWTRequest{Claims: map[string]any{}, ExpiresIn: exp, IssuedAt: iat, Algorithm: algo}
			if claimsJSON != "" {
				if err := json.Unmarshal([]byte(claimsJSON), &req.Claims); err != nil {
					return fmt.Errorf("--claims-json: %w", err)
				}
			}
			for _, kv := range claims {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--claim %q is not name=value", kv)
				}
				req.Claims[k] = claimValue(v)
			}
			for _, kv := range headers {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--header %q is not name=value", kv)
				}
				if req.Header == nil {
					req.Header = map[string]any{}
				}
				req.Header[k] = claimValue(v)
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			r, err := cl.SignJWT(ctx, key, req)
			if err != nil {
				return err
			}
			if c.output == "json" {
				return c.json(r)
			}
			fmt.Fprintln(c.stdout, r.Token)
			return nil
		}
	})
}

// cmdJWKS: keygrid-hsm jwks KEY, or jwks --published.
func jwksCmd(s *streams) *cobra.Command {
	cmd := &cobra.Command{Use: "jwks [KEY | --published]", Short: "a key's JWKS, or the server's /.well-known/jwks.json",
		Example: "  keygrid-hsm jwks app-signing\n  keygrid-hsm jwks --published",
		Args: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("published") {
				if len(args) > 0 {
					return usageErr(cmd, "jwks: KEY or --published, not both (got %q)", strings.Join(args, " "))
				}
				return nil
			}
			return keyArg("")(cmd, args)
		}}
	return clientCmd(s, cmd, nil, func(c *cli, fs *pflag.FlagSet) func(context.Context) error {
		published := fs.Bool("published", false, "the server's /.well-known/jwks.json")
		return func(ctx context.Context) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			if *published {
				set, err := cl.PublishedJWKS(ctx)
				if err != nil {
					return err
				}
				return c.json(set)
			}
			set, err := cl.KeyJWKS(ctx, c.posArgs[0])
			if err != nil {
				return err
			}
			return c.json(set)
		}
	})
}
