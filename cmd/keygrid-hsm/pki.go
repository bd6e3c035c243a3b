package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// listFlag is a repeatable flag whose values may also be comma-separated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

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

func (s *subjectFlags) add(c *cli) {
	c.fs.StringVar(&s.cn, "cn", "", "subject common name")
	c.fs.Var(&s.org, "org", "subject organization (repeatable)")
	c.fs.Var(&s.ou, "ou", "subject organizational unit (repeatable)")
	c.fs.Var(&s.country, "country", "subject country (repeatable)")
	c.fs.Var(&s.province, "province", "subject state or province (repeatable)")
	c.fs.Var(&s.local, "locality", "subject locality (repeatable)")
	c.fs.StringVar(&s.serial, "subject-serial", "", "subject serial number attribute")
	c.fs.Var(&s.dns, "dns", "DNS subject alternative name (repeatable, or comma-separated)")
	c.fs.Var(&s.ip, "ip", "IP subject alternative name (repeatable)")
	c.fs.Var(&s.email, "email", "e-mail subject alternative name (repeatable)")
	c.fs.Var(&s.uri, "uri", "URI subject alternative name (repeatable)")
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
func cmdCSR(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := newCLI("csr", stdin, stdout, stderr)
	var (
		sf             subjectFlags
		algorithm, out string
	)
	sf.add(c)
	c.fs.StringVar(&algorithm, "algorithm", "", "signature algorithm (default: the key's)")
	c.fs.StringVar(&out, "out", "", "write the PEM CSR to this file (default: stdout)")
	if err := c.parse(args); err != nil {
		return err
	}
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
	if *c.output == "json" {
		return c.json(r)
	}
	return c.writeOut(out, r.CSR)
}

// cmdCert: keygrid-hsm cert issue|attach|get.
func cmdCert(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("cert: give a subcommand: issue, attach, get")
	}
	switch args[0] {
	case "issue":
		return cmdCertIssue(ctx, args[1:], stdin, stdout, stderr)
	case "attach", "get":
	default:
		return fmt.Errorf("cert: unknown subcommand %q", args[0])
	}
	c := newCLI("cert "+args[0], stdin, stdout, stderr)
	version := 0
	if args[0] == "get" {
		c.fs.IntVar(&version, "version", 0, "key version (default: current)")
	}
	if err := c.parse(args[1:]); err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	var r *apitypes.ChainResponse
	if args[0] == "attach" {
		if len(c.posArgs) != 2 {
			return errors.New("cert attach KEY CHAIN.pem: the key and a PEM file of its chain, leaf first")
		}
		b, err := os.ReadFile(c.posArgs[1])
		if err != nil {
			return err
		}
		if r, err = cl.AttachChain(ctx, c.posArgs[0], string(b)); err != nil {
			return err
		}
		if *c.output != "json" {
			fmt.Fprintf(c.stdout, "attached to version %d of %s\n", r.KeyVersion, r.KeyID)
			return nil
		}
		return c.json(r)
	}
	key, err := c.key("")
	if err != nil {
		return err
	}
	if r, err = cl.Chain(ctx, key, version); err != nil {
		return err
	}
	if *c.output == "json" {
		return c.json(r)
	}
	_, err = io.WriteString(c.stdout, r.Chain)
	return err
}

func cmdCertIssue(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := newCLI("cert issue", stdin, stdout, stderr)
	var (
		sf                                                         subjectFlags
		csrFile, pubFile, validity, notBefore, notAfter, algo, out string
		selfSigned, isCA                                           bool
		maxPath                                                    = -1
		ku, eku, crl, ocsp                                         listFlag
	)
	sf.add(c)
	c.fs.StringVar(&csrFile, "csr", "", "PEM CSR of the subject")
	c.fs.StringVar(&pubFile, "public-key", "", "PEM public key of the subject (with --cn and the like)")
	c.fs.BoolVar(&selfSigned, "self-signed", false, "certify the key's own public key")
	c.fs.StringVar(&validity, "validity", "", "validity from now, such as 720h")
	c.fs.StringVar(&notBefore, "not-before", "", "start of validity, RFC 3339")
	c.fs.StringVar(&notAfter, "not-after", "", "end of validity, RFC 3339")
	c.fs.BoolVar(&isCA, "ca", false, "issue a CA certificate")
	c.fs.IntVar(&maxPath, "max-path-len", -1, "path length constraint of a CA certificate")
	c.fs.Var(&ku, "key-usage", "key usage: digital_signature, key_encipherment, cert_sign, crl_sign, … (repeatable)")
	c.fs.Var(&eku, "ext-key-usage", "extended key usage: server_auth, client_auth, code_signing, … (repeatable)")
	c.fs.Var(&crl, "crl", "CRL distribution point URL (repeatable)")
	c.fs.Var(&ocsp, "ocsp", "OCSP server URL (repeatable)")
	c.fs.StringVar(&algo, "algorithm", "", "signature algorithm (default: the issuer key's)")
	c.fs.StringVar(&out, "out", "", "write the PEM certificate to this file (default: stdout)")
	if err := c.parse(args); err != nil {
		return err
	}
	key, err := c.key("")
	if err != nil {
		return err
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
	if *c.output == "json" {
		return c.json(r)
	}
	fmt.Fprintf(c.stderr, "serial %s\n", r.Serial)
	return c.writeOut(out, r.Certificate)
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

// cmdJWT: keygrid-hsm jwt sign KEY --claim sub=… --exp 15m.
func cmdJWT(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "sign" {
		return errors.New("jwt: give a subcommand: sign")
	}
	c := newCLI("jwt sign", stdin, stdout, stderr)
	var (
		claims, headers       listFlag
		claimsJSON, exp, algo string
		iat                   bool
	)
	c.fs.Var(&claims, "claim", "claim name=value (repeatable; JSON values are parsed: n=1, a=[1,2])")
	c.fs.StringVar(&claimsJSON, "claims-json", "", "claims as one JSON object (merged under --claim)")
	c.fs.Var(&headers, "header", "protected header name=value (repeatable)")
	c.fs.StringVar(&exp, "exp", "", "expire this long after issue (sets iat and exp), such as 15m")
	c.fs.BoolVar(&iat, "iat", false, "set iat")
	c.fs.StringVar(&algo, "algorithm", "", "JWS algorithm (default: the key's)")
	if err := c.parse(args[1:]); err != nil {
		return err
	}
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
	if *c.output == "json" {
		return c.json(r)
	}
	fmt.Fprintln(c.stdout, r.Token)
	return nil
}

// cmdJWKS: keygrid-hsm jwks KEY, or jwks --published.
func cmdJWKS(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := newCLI("jwks", stdin, stdout, stderr)
	published := c.fs.Bool("published", false, "the server's /.well-known/jwks.json")
	if err := c.parse(args); err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	if *published {
		if len(c.posArgs) != 0 {
			return errors.New("jwks --published takes no key")
		}
		set, err := cl.PublishedJWKS(ctx)
		if err != nil {
			return err
		}
		return c.json(set)
	}
	key, err := c.key("")
	if err != nil {
		return err
	}
	set, err := cl.KeyJWKS(ctx, key)
	if err != nil {
		return err
	}
	return c.json(set)
}
