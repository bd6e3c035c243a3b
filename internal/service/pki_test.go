package service

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider/pkcs11"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// openssl runs openssl in dir and returns its combined output, failing the
// test when it fails.
func openssl(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("openssl", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func writePEM(t *testing.T, dir, name, typ string, ders ...[]byte) string {
	t.Helper()
	var b bytes.Buffer
	for _, d := range ders {
		pem.Encode(&b, &pem.Block{Type: typ, Bytes: d})
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func readPEM(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s holds no PEM", path)
	}
	return blk.Bytes
}

// TestCSRsVerifyWithOpenSSL: CSRs of keys on the software provider and on
// a SoftHSM2 token pass openssl req -verify and carry what was asked.
func TestCSRsVerifyWithOpenSSL(t *testing.T) {
	testbed.Require(t, "openssl")
	t.Run("software", func(t *testing.T) { csrsVerify(t, newFixture(t), "software") })
	t.Run("softhsm2", func(t *testing.T) {
		cfg := tokens[0].open(t)
		p, err := pkcs11.Open(context.Background(), "hsm", pkcs11.TypePKCS11, cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		csrsVerify(t, newFixture(t, withProvider(p)), "hsm")
	})
}

func csrsVerify(t *testing.T, f *fixture, prov string) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, algorithm string
		spec            KeySpec
	}{
		{"rsa-rs256", "", specRSA},
		{"rsa-ps256", "PS256", specRSA},
		{"p256", "", specP256},
		{"p384", "", specP384},
		{"ed25519", "", specEd25519},
	} {
		t.Run(c.name, func(t *testing.T) {
			k, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Provider: prov, Name: "csr-" + c.name, Spec: c.spec})
			if err != nil {
				t.Fatal(err)
			}
			if k.Provider != prov {
				t.Fatalf("key on %s", k.Provider)
			}
			mark := f.mark()
			res, err := f.svc.CreateCSR(f.admin(), CSRRequest{Key: k.Name, Algorithm: c.algorithm,
				Subject:  Subject{CommonName: "svc.example.com", Organization: []string{"KeyGrid Test"}, Country: []string{"DE"}},
				AltNames: AltNames{DNSNames: []string{"svc.example.com", "alt.example.com"}, IPAddresses: []string{"192.0.2.10"}, URIs: []string{"spiffe://example.org/svc"}}})
			if err != nil {
				t.Fatal(err)
			}
			path := writePEM(t, dir, c.name+".csr", "CERTIFICATE REQUEST", res.CSR)
			out := openssl(t, dir, "req", "-in", path, "-verify", "-noout", "-text")
			for _, want := range []string{"CN=svc.example.com", "DNS:alt.example.com", "IP Address:192.0.2.10", "URI:spiffe://example.org/svc"} {
				if !strings.Contains(strings.ReplaceAll(out, " = ", "="), want) {
					t.Errorf("openssl req -text lacks %q:\n%s", want, out)
				}
			}
			csr, err := x509.ParseCertificateRequest(res.CSR)
			if err != nil {
				t.Fatal(err)
			}
			pub, _ := x509.MarshalPKIXPublicKey(csr.PublicKey)
			if !bytes.Equal(pub, f.stored(k.ID).Versions[0].PublicKey) {
				t.Fatal("the CSR does not carry the key's public key")
			}
			recs := f.since(mark)
			if len(recs) != 2 || recs[0].Operation != "sign" || recs[1].Operation != "csr" || recs[1].Attributes["subject"] == "" {
				t.Fatalf("audit records %+v, want sign then csr with the subject", recs)
			}
		})
	}
}

func TestCSRRefusals(t *testing.T) {
	f := newFixture(t)
	ec := f.create("csr-ec", specP256)
	aes := f.create("csr-aes", specAES256)
	for _, c := range []struct {
		name string
		req  CSRRequest
		want error
	}{
		{"no subject", CSRRequest{Key: ec.Name}, kgerr.ErrInvalidInput},
		{"bad ip", CSRRequest{Key: ec.Name, Subject: Subject{CommonName: "x"}, AltNames: AltNames{IPAddresses: []string{"300.1.1.1"}}}, kgerr.ErrInvalidInput},
		{"bad email", CSRRequest{Key: ec.Name, Subject: Subject{CommonName: "x"}, AltNames: AltNames{EmailAddresses: []string{"not an address"}}}, kgerr.ErrInvalidInput},
		{"relative uri", CSRRequest{Key: ec.Name, Subject: Subject{CommonName: "x"}, AltNames: AltNames{URIs: []string{"just/a/path"}}}, kgerr.ErrInvalidInput},
		{"wrong algorithm", CSRRequest{Key: ec.Name, Algorithm: "RS256", Subject: Subject{CommonName: "x"}}, kgerr.ErrUnsupportedAlgorithm},
		{"secret key", CSRRequest{Key: aes.Name, Subject: Subject{CommonName: "x"}}, kgerr.ErrUsageNotPermitted},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.svc.CreateCSR(f.admin(), c.req)
			wantErr(t, err, c.want)
		})
	}
	if _, err := f.svc.CreateCSR(as(auditorP), CSRRequest{Key: ec.Name, Subject: Subject{CommonName: "x"}}); kgerr.KindOf(err) != kgerr.KindPermissionDenied {
		t.Fatalf("auditor's CSR: %v, want AUTHORIZATION_FAILED", err)
	}
	if _, err := f.svc.DeactivateKey(f.admin(), ec.Name); err != nil {
		t.Fatal(err)
	}
	_, err := f.svc.CreateCSR(f.admin(), CSRRequest{Key: ec.Name, Subject: Subject{CommonName: "x"}})
	wantErr(t, err, kgerr.ErrKeyInactive)
}

// pkiChain is a root and an intermediate made by the gateway, each with its
// chain attached.
type pkiChain struct {
	root, inter     *Key
	rootDER, intDER []byte
}

func (f *fixture) makeChain(t *testing.T, prefix string) pkiChain {
	t.Helper()
	var c pkiChain
	c.root = f.create(prefix+"-root", specP384)
	pl := 1
	r, err := f.svc.IssueCertificate(f.admin(), IssueCertificateRequest{Key: c.root.Name, SelfSigned: true,
		Subject: &Subject{CommonName: "KeyGrid Test Root", Organization: []string{"KeyGrid"}}, Validity: 10 * 365 * 24 * time.Hour,
		IsCA: true, MaxPathLen: &pl})
	if err != nil {
		t.Fatal(err)
	}
	c.rootDER = r.Certificate
	if _, err := f.svc.AttachChain(f.admin(), AttachChainRequest{Key: c.root.Name, Chain: [][]byte{c.rootDER}}); err != nil {
		t.Fatal(err)
	}
	c.inter = f.create(prefix+"-intermediate", specRSA)
	csr, err := f.svc.CreateCSR(f.admin(), CSRRequest{Key: c.inter.Name, Subject: Subject{CommonName: "KeyGrid Test Intermediate"}})
	if err != nil {
		t.Fatal(err)
	}
	ir, err := f.svc.IssueCertificate(f.admin(), IssueCertificateRequest{Key: c.root.Name, CSR: csr.CSR, Validity: 5 * 365 * 24 * time.Hour, IsCA: true})
	if err != nil {
		t.Fatal(err)
	}
	c.intDER = ir.Certificate
	if _, err := f.svc.AttachChain(f.admin(), AttachChainRequest{Key: c.inter.Name, Chain: [][]byte{c.intDER, c.rootDER}}); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestThreeLevelChain: root (self-signed, P-384), intermediate (RSA, from
// the gateway's own CSR), leaf from a CSR made by openssl; openssl and Go
// verify the chain, and openssl reads back the extensions asked for.
func TestThreeLevelChain(t *testing.T) {
	testbed.Require(t, "openssl")
	// The certificates are checked by openssl against the real clock.
	f := newFixture(t)
	f.clock.t = time.Now().UTC()
	dir := t.TempDir()
	c := f.makeChain(t, "pki")
	openssl(t, dir, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "leaf.key")
	openssl(t, dir, "req", "-new", "-key", "leaf.key", "-subj", "/CN=leaf.example.com/O=Leaf Org", "-out", "leaf.csr")
	mark := f.mark()
	lr, err := f.svc.IssueCertificate(f.admin(), IssueCertificateRequest{Key: c.inter.Name, CSR: readPEM(t, filepath.Join(dir, "leaf.csr")),
		Validity: 90 * 24 * time.Hour, KeyUsage: []string{"digital_signature", "key_agreement"}, ExtKeyUsage: []string{"server_auth", "client_auth"},
		CRLDistributionPoints: []string{"http://crl.example.com/inter.crl"}, OCSPServers: []string{"http://ocsp.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	rootPath := writePEM(t, dir, "root.pem", "CERTIFICATE", c.rootDER)
	intPath := writePEM(t, dir, "inter.pem", "CERTIFICATE", c.intDER)
	leafPath := writePEM(t, dir, "leaf.pem", "CERTIFICATE", lr.Certificate)
	if out := openssl(t, dir, "verify", "-CAfile", rootPath, "-untrusted", intPath, leafPath); !strings.Contains(out, ": OK") {
		t.Fatalf("openssl verify: %s", out)
	}
	text := openssl(t, dir, "x509", "-in", leafPath, "-noout", "-text")
	for _, want := range []string{"Digital Signature, Key Agreement", "TLS Web Server Authentication, TLS Web Client Authentication",
		"http://crl.example.com/inter.crl", "OCSP - URI:http://ocsp.example.com", "CA:FALSE", "X509v3 Subject Key Identifier",
		"X509v3 Authority Key Identifier", "CN=leaf.example.com"} {
		if !strings.Contains(strings.ReplaceAll(text, " = ", "="), want) {
			t.Errorf("openssl x509 -text lacks %q:\n%s", want, text)
		}
	}
	itext := openssl(t, dir, "x509", "-in", intPath, "-noout", "-text")
	if !strings.Contains(itext, "CA:TRUE, pathlen:0") || !strings.Contains(itext, "Certificate Sign, CRL Sign") {
		t.Errorf("the intermediate's constraints: %s", itext)
	}
	rootCert, _ := x509.ParseCertificate(c.rootDER)
	intCert, _ := x509.ParseCertificate(c.intDER)
	leaf, err := x509.ParseCertificate(lr.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(rootCert)
	inters.AddCert(intCert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("x509.Verify: %v", err)
	}
	if len(leaf.SerialNumber.Bytes()) != 16 || !bytes.Equal(leaf.AuthorityKeyId, intCert.SubjectKeyId) || len(leaf.SubjectKeyId) != 20 {
		t.Fatalf("serial %x, AKID %x (issuer SKID %x), SKID %x", leaf.SerialNumber, leaf.AuthorityKeyId, intCert.SubjectKeyId, leaf.SubjectKeyId)
	}
	var issued audit.Event
	for _, e := range f.since(mark) {
		if e.Operation == "issue_certificate" {
			issued = e
		}
	}
	if issued.Outcome != audit.OutcomeSuccess || issued.Attributes["serial"] != lr.Serial || !strings.Contains(issued.Attributes["subject"], "CN=leaf.example.com") ||
		issued.KeyID != c.inter.ID {
		t.Fatalf("issuance audit record %+v, want serial %s and the subject", issued, lr.Serial)
	}
	got, err := f.svc.GetChain(as(auditorP), c.inter.Name, 0)
	if err != nil || len(got.Chain) != 2 || !bytes.Equal(got.Chain[0], c.intDER) || !bytes.Equal(got.Chain[1], c.rootDER) {
		t.Fatalf("GetChain: %v, %v", got, err)
	}
}

// TestIssuanceRefusals: every rule has its refusal, INVALID_INPUT naming
// the rule, and nothing is issued.
func TestIssuanceRefusals(t *testing.T) {
	f := newFixture(t)
	c := f.makeChain(t, "rules")
	leafKey := f.create("rules-leaf", specP256)
	csr, err := f.svc.CreateCSR(f.admin(), CSRRequest{Key: leafKey.Name, Subject: Subject{CommonName: "leaf"}})
	if err != nil {
		t.Fatal(err)
	}
	// A key whose attached certificate is not a CA's.
	notCA := f.create("rules-not-ca", specP256)
	nc, err := f.svc.IssueCertificate(f.admin(), IssueCertificateRequest{Key: notCA.Name, SelfSigned: true, Subject: &Subject{CommonName: "not a CA"}, Validity: time.Hour * 24 * 365})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.AttachChain(f.admin(), AttachChainRequest{Key: notCA.Name, Chain: [][]byte{nc.Certificate}}); err != nil {
		t.Fatal(err)
	}
	noChain := f.create("rules-no-chain", specP256)
	intCert, _ := x509.ParseCertificate(c.intDER)
	tooLate := intCert.NotAfter.Add(time.Hour)
	tooEarly := intCert.NotBefore.Add(-time.Hour)
	zero, one, three := 0, 1, 3
	badCSR := bytes.Clone(csr.CSR)
	badCSR[len(badCSR)-3] ^= 0xff
	soon := f.clock.Now().Add(48 * time.Hour)
	if _, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: "rules-expiring-2", Spec: specP256, ExpiresAt: &soon}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, rule string
		req        IssueCertificateRequest
	}{
		{"issuer not a CA", "not a CA", IssueCertificateRequest{Key: notCA.Name, CSR: csr.CSR, Validity: time.Hour}},
		{"no certificate attached", "no certificate attached", IssueCertificateRequest{Key: noChain.Name, CSR: csr.CSR, Validity: time.Hour}},
		{"validity beyond the issuer's", "extends beyond the issuer's", IssueCertificateRequest{Key: c.inter.Name, CSR: csr.CSR, NotAfter: &tooLate}},
		{"not before the issuer's", "extends beyond the issuer's", IssueCertificateRequest{Key: c.inter.Name, CSR: csr.CSR, NotBefore: &tooEarly, NotAfter: &tooLate}},
		{"path length 0 forbids a CA", "path length constraint is 0", IssueCertificateRequest{Key: c.inter.Name, CSR: csr.CSR, Validity: time.Hour, IsCA: true}},
		{"path length not below the issuer's", "not below the issuer's path length constraint 1", IssueCertificateRequest{Key: c.root.Name, CSR: csr.CSR, Validity: time.Hour, IsCA: true, MaxPathLen: &one}},
		{"path length above the issuer's", "not below the issuer's path length constraint 1", IssueCertificateRequest{Key: c.root.Name, CSR: csr.CSR, Validity: time.Hour, IsCA: true, MaxPathLen: &three}},
		{"max_path_len without is_ca", "needs is_ca", IssueCertificateRequest{Key: c.root.Name, CSR: csr.CSR, Validity: time.Hour, MaxPathLen: &zero}},
		{"csr signature", "signature does not verify", IssueCertificateRequest{Key: c.inter.Name, CSR: badCSR, Validity: time.Hour}},
		{"csr and subject", "not both", IssueCertificateRequest{Key: c.inter.Name, CSR: csr.CSR, Subject: &Subject{CommonName: "x"}, Validity: time.Hour}},
		{"self-signed with a csr", "own public key", IssueCertificateRequest{Key: c.inter.Name, SelfSigned: true, CSR: csr.CSR, Validity: time.Hour}},
		{"subject without public key", "public_key is required", IssueCertificateRequest{Key: c.inter.Name, Subject: &Subject{CommonName: "x"}, Validity: time.Hour}},
		{"no validity", "validity", IssueCertificateRequest{Key: c.inter.Name, CSR: csr.CSR}},
		{"validity and not_after", "not both", IssueCertificateRequest{Key: c.inter.Name, CSR: csr.CSR, Validity: time.Hour, NotAfter: &tooLate}},
		{"self-signed beyond the key's expiry", "expires at", IssueCertificateRequest{Key: "rules-expiring-2", SelfSigned: true, Subject: &Subject{CommonName: "x"}, Validity: 72 * time.Hour}},
		{"unknown key usage", "key_usage", IssueCertificateRequest{Key: c.inter.Name, CSR: csr.CSR, Validity: time.Hour, KeyUsage: []string{"sign_everything"}}},
		{"unknown ext key usage", "ext_key_usage", IssueCertificateRequest{Key: c.inter.Name, CSR: csr.CSR, Validity: time.Hour, ExtKeyUsage: []string{"world_domination"}}},
		{"bad crl url", "crl_distribution_points", IssueCertificateRequest{Key: c.inter.Name, CSR: csr.CSR, Validity: time.Hour, CRLDistributionPoints: []string{"crl"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mark := f.mark()
			_, err := f.svc.IssueCertificate(f.admin(), tc.req)
			wantErr(t, err, kgerr.ErrInvalidInput)
			if !strings.Contains(kgerr.Classify(err).Message, tc.rule) {
				t.Fatalf("message %q does not name the rule (%q)", kgerr.Classify(err).Message, tc.rule)
			}
			for _, e := range f.since(mark) {
				if e.Operation == "sign" {
					t.Fatalf("a refused issuance signed: %+v", e)
				}
				if e.Operation == "issue_certificate" && (e.Outcome != audit.OutcomeFailure || e.Attributes["serial"] != "") {
					t.Fatalf("refusal audited as %+v", e)
				}
			}
		})
	}
	// Under the root (path length 1) a CA with no max_path_len gets 0.
	ok, err := f.svc.IssueCertificate(f.admin(), IssueCertificateRequest{Key: c.root.Name, CSR: csr.CSR, Validity: time.Hour, IsCA: true})
	if err != nil {
		t.Fatal(err)
	}
	sub, _ := x509.ParseCertificate(ok.Certificate)
	if !sub.IsCA || sub.MaxPathLen != 0 || !sub.MaxPathLenZero {
		t.Fatalf("CA under pathlen 1: IsCA %v MaxPathLen %d zero %v, want pathlen 0", sub.IsCA, sub.MaxPathLen, sub.MaxPathLenZero)
	}
	if _, err := f.svc.IssueCertificate(as(auditorP), IssueCertificateRequest{Key: c.root.Name, CSR: csr.CSR, Validity: time.Hour}); kgerr.KindOf(err) != kgerr.KindPermissionDenied {
		t.Fatalf("auditor issues: %v", err)
	}
}

// TestAttachChain: the leaf must certify the current version; the chain
// must be in order; rotation keeps the old version's chain with it.
func TestAttachChain(t *testing.T) {
	f := newFixture(t)
	c := f.makeChain(t, "attach")
	other := f.create("attach-other", specP256)
	for _, tc := range []struct {
		name, rule string
		key        string
		chain      [][]byte
	}{
		{"leaf of another key", "another public key", other.Name, [][]byte{c.intDER, c.rootDER}},
		{"wrong order", "not signed by certificate 2", c.inter.Name, [][]byte{c.rootDER, c.intDER}},
		{"not a certificate", "does not parse", c.inter.Name, [][]byte{[]byte("junk")}},
		{"empty", "required", c.inter.Name, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.stored(tc.key)
			_, err := f.svc.AttachChain(f.admin(), AttachChainRequest{Key: tc.key, Chain: tc.chain})
			wantErr(t, err, kgerr.ErrInvalidInput)
			if !strings.Contains(kgerr.Classify(err).Message, tc.rule) {
				t.Fatalf("message %q, want it to say %q", kgerr.Classify(err).Message, tc.rule)
			}
			if after := f.stored(tc.key); after.Revision != before.Revision {
				t.Fatal("a refused attach changed the key")
			}
		})
	}
	if _, err := f.svc.AttachChain(as(operatorP), AttachChainRequest{Key: c.inter.Name, Chain: [][]byte{c.intDER, c.rootDER}}); kgerr.KindOf(err) != kgerr.KindPermissionDenied {
		t.Fatalf("operator attaches: %v, want AUTHORIZATION_FAILED", err)
	}
	if _, err := f.svc.RotateKey(f.admin(), c.inter.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.GetChain(f.admin(), c.inter.Name, 0); kgerr.KindOf(err) != kgerr.KindNotFound {
		t.Fatalf("chain of the new version: %v, want NOT_FOUND", err)
	}
	old, err := f.svc.GetChain(f.admin(), c.inter.Name, 1)
	if err != nil || !bytes.Equal(old.Chain[0], c.intDER) {
		t.Fatalf("chain of version 1 after rotation: %v, %v", old, err)
	}
	// The rotated key issues no more until its new version has a
	// certificate: the old one certifies another public key.
	leafKey := f.create("attach-leaf", specP256)
	csr, _ := f.svc.CreateCSR(f.admin(), CSRRequest{Key: leafKey.Name, Subject: Subject{CommonName: "leaf"}})
	_, err = f.svc.IssueCertificate(f.admin(), IssueCertificateRequest{Key: c.inter.Name, CSR: csr.CSR, Validity: time.Hour})
	wantErr(t, err, kgerr.ErrInvalidInput)
	if _, err := f.svc.AttachChain(f.admin(), AttachChainRequest{Key: c.inter.Name, Chain: [][]byte{c.intDER, c.rootDER}}); kgerr.KindOf(err) != kgerr.KindInvalidInput {
		t.Fatalf("the old certificate on the new version: %v, want INVALID_INPUT", err)
	}
}
