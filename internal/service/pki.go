package service

// Certificates from managed keys: PKCS#10 requests, X.509 issuance (the key
// as the issuer, self-signed or under its attached CA certificate) and the
// certificate chains attached to key versions. Every signature goes through
// the service's own Sign (keySigner), so that state, usage, expiry,
// authorization and the audit apply to it as to any other signature.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/mail"
	"net/url"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// Limits on certificate inputs.
const (
	maxAltNames   = 100
	maxChainCerts = 10
	maxChainBytes = 64 * 1024
)

// keySigner is a crypto.Signer over the service's Sign path: one version
// of one key, one algorithm. A signature made by another version (the key
// rotated meanwhile) is refused, since the certificate or token being made
// names the version it was built for.
type keySigner struct {
	s       *Service
	ctx     context.Context
	keyID   string
	version int
	a       alg.Info
	pub     crypto.PublicKey
	format  SignatureFormat
}

func (k *keySigner) Public() crypto.PublicKey { return k.pub }

// Sign signs a digest (or, for EdDSA, the message) through Service.Sign.
func (k *keySigner) Sign(_ io.Reader, in []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != k.a.Hash {
		return nil, kgerr.New(kgerr.KindInternal, fmt.Sprintf("%s signs %v digests, not %v", k.a.Name, k.a.Hash, opts.HashFunc()))
	}
	req := SignRequest{Key: k.keyID, Algorithm: string(k.a.Name), Format: k.format}
	if k.a.Hash == 0 {
		req.Data = in
	} else {
		req.Digest = in
	}
	return k.sign(req)
}

func (k *keySigner) sign(req SignRequest) ([]byte, error) {
	r, err := k.s.Sign(k.ctx, req)
	if err != nil {
		return nil, err
	}
	if r.KeyVersion != k.version {
		return nil, kgerr.New(kgerr.KindConflict, fmt.Sprintf("the key rotated to version %d while signing for version %d; retry", r.KeyVersion, k.version))
	}
	return r.Signature, nil
}

// signerFor prepares a key to sign for operation o and returns a signer
// over its current version.
func (s *Service) signerFor(ctx context.Context, o *op, ref, algorithm string, format SignatureFormat) (*store.Key, *store.Version, *keySigner, error) {
	k, a, _, err := s.prepare(ctx, o, ref, useSign, algorithm)
	if err != nil {
		return nil, nil, nil, err
	}
	v, err := version(k, 0)
	if err != nil {
		return nil, nil, nil, err
	}
	o.version = v.Version
	pub, err := s.publicKey(v)
	if err != nil {
		return nil, nil, nil, err
	}
	return k, v, &keySigner{s: s, ctx: ctx, keyID: k.ID, version: v.Version, a: a, pub: pub, format: format}, nil
}

// x509Algorithms are the X.509 signature algorithms of the service's.
var x509Algorithms = map[alg.Algorithm]x509.SignatureAlgorithm{
	alg.RS256: x509.SHA256WithRSA, alg.RS384: x509.SHA384WithRSA, alg.RS512: x509.SHA512WithRSA,
	alg.PS256: x509.SHA256WithRSAPSS, alg.PS384: x509.SHA384WithRSAPSS, alg.PS512: x509.SHA512WithRSAPSS,
	alg.ES256: x509.ECDSAWithSHA256, alg.ES384: x509.ECDSAWithSHA384, alg.ES512: x509.ECDSAWithSHA512,
	alg.EdDSA: x509.PureEd25519,
}

func x509Algorithm(a alg.Info) (x509.SignatureAlgorithm, error) {
	if sa, ok := x509Algorithms[a.Name]; ok {
		return sa, nil
	}
	return 0, kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("%s cannot sign X.509 objects", a.Name))
}

func (sub Subject) name() pkix.Name {
	return pkix.Name{CommonName: sub.CommonName, Organization: sub.Organization, OrganizationalUnit: sub.OrganizationalUnit,
		Country: sub.Country, Province: sub.Province, Locality: sub.Locality, StreetAddress: sub.StreetAddress,
		PostalCode: sub.PostalCode, SerialNumber: sub.SerialNumber}
}

func (sub Subject) empty() bool { return len(sub.name().ToRDNSequence()) == 0 }

// parsedNames are AltNames checked and parsed.
type parsedNames struct {
	dns, email []string
	ips        []net.IP
	uris       []*url.URL
}

func (n AltNames) parse() (parsedNames, error) {
	var p parsedNames
	if len(n.DNSNames)+len(n.IPAddresses)+len(n.EmailAddresses)+len(n.URIs) > maxAltNames {
		return p, kgerr.Invalid(fmt.Sprintf("at most %d subject alternative names", maxAltNames))
	}
	for _, d := range n.DNSNames {
		if d == "" || len(d) > 253 || strings.ContainsAny(d, " /\\@:") {
			return p, kgerr.Invalid(fmt.Sprintf("dns_names: %q is not a DNS name", kgerr.Clip(d)))
		}
		p.dns = append(p.dns, d)
	}
	for _, s := range n.IPAddresses {
		ip := net.ParseIP(s)
		if ip == nil {
			return p, kgerr.Invalid(fmt.Sprintf("ip_addresses: %q is not an IP address", kgerr.Clip(s)))
		}
		p.ips = append(p.ips, ip)
	}
	for _, e := range n.EmailAddresses {
		if a, err := mail.ParseAddress(e); err != nil || a.Address != e {
			return p, kgerr.Invalid(fmt.Sprintf("email_addresses: %q is not an e-mail address", kgerr.Clip(e)))
		}
		p.email = append(p.email, e)
	}
	for _, s := range n.URIs {
		u, err := url.Parse(s)
		if err != nil || u.Scheme == "" {
			return p, kgerr.Invalid(fmt.Sprintf("uris: %q is not an absolute URI", kgerr.Clip(s)))
		}
		p.uris = append(p.uris, u)
	}
	return p, nil
}

// CreateCSR makes a certificate signing request for the key's current
// version, signed by it.
func (s *Service) CreateCSR(ctx context.Context, req CSRRequest) (out *CSRResult, err error) {
	o := s.begin(opCSR)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, _, signer, err := s.signerFor(ctx, o, req.Key, req.Algorithm, SignatureDER)
	if err != nil {
		return nil, err
	}
	sa, err := x509Algorithm(signer.a)
	if err != nil {
		return nil, err
	}
	names, err := req.AltNames.parse()
	if err != nil {
		return nil, err
	}
	if req.Subject.empty() && len(req.AltNames.DNSNames)+len(req.AltNames.IPAddresses)+len(req.AltNames.EmailAddresses)+len(req.AltNames.URIs) == 0 {
		return nil, kgerr.Invalid("a CSR needs a subject or at least one subject alternative name")
	}
	subject := req.Subject.name()
	o.attrs = map[string]string{"subject": clip(subject.String(), 200)}
	tmpl := &x509.CertificateRequest{SignatureAlgorithm: sa, Subject: subject, DNSNames: names.dns,
		EmailAddresses: names.email, IPAddresses: names.ips, URIs: names.uris}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, signer)
	if err != nil {
		return nil, signingFailed("CSR", err)
	}
	return &CSRResult{CSR: der, Algorithm: string(signer.a.Name), KeyID: k.ID, KeyVersion: signer.version}, nil
}

// signingFailed passes the service's own errors through and calls any
// other (crypto/x509 refusing its input) bad input.
func signingFailed(what string, err error) error {
	if _, ok := errors.AsType[*kgerr.Error](err); ok {
		return err
	}
	return kgerr.Wrap(kgerr.KindInvalidInput, err, fmt.Sprintf("the %s cannot be made: %v", what, err))
}

// certSubject is who a certificate is for: name, alternative names and
// public key.
type certSubject struct {
	name   pkix.Name
	alt    parsedNames
	pub    crypto.PublicKey
	pubDER []byte
}

// subjectOf takes the subject of an issuance from the CSR, or the subject
// fields and public key, or (self-signed) the issuer's own key.
func subjectOf(req IssueCertificateRequest, issuerPub crypto.PublicKey) (certSubject, error) {
	var cs certSubject
	hasFields := req.Subject != nil || len(req.AltNames.DNSNames)+len(req.AltNames.IPAddresses)+len(req.AltNames.EmailAddresses)+len(req.AltNames.URIs) > 0
	switch {
	case req.SelfSigned && (req.CSR != nil || req.PublicKey != nil):
		return cs, kgerr.Invalid("a self-signed certificate certifies the key's own public key: send no csr or public_key")
	case req.CSR != nil && (hasFields || req.PublicKey != nil):
		return cs, kgerr.Invalid("send a csr or the subject fields and a public_key, not both")
	case req.CSR != nil:
		csr, err := x509.ParseCertificateRequest(req.CSR)
		if err != nil {
			return cs, kgerr.Wrap(kgerr.KindInvalidInput, err, "csr is not a PKCS#10 certificate request")
		}
		if err := csr.CheckSignature(); err != nil {
			return cs, kgerr.Wrap(kgerr.KindInvalidInput, err, "the csr's signature does not verify")
		}
		cs.name, cs.pub = csr.Subject, csr.PublicKey
		cs.alt = parsedNames{dns: csr.DNSNames, email: csr.EmailAddresses, ips: csr.IPAddresses, uris: csr.URIs}
	default:
		if req.Subject == nil || req.Subject.empty() {
			if !hasFields {
				return cs, kgerr.Invalid("send a csr, or a subject (with a public_key unless self_signed)")
			}
		}
		alt, err := req.AltNames.parse()
		if err != nil {
			return cs, err
		}
		cs.alt = alt
		if req.Subject != nil {
			cs.name = req.Subject.name()
		}
		switch {
		case req.SelfSigned:
			cs.pub = issuerPub
		case req.PublicKey == nil:
			return cs, kgerr.Invalid("public_key is required with subject fields (or self_signed: true)")
		default:
			if cs.pub, err = x509.ParsePKIXPublicKey(req.PublicKey); err != nil {
				return cs, kgerr.Wrap(kgerr.KindInvalidInput, err, "public_key is not a SubjectPublicKeyInfo of a supported key")
			}
		}
	}
	der, err := x509.MarshalPKIXPublicKey(cs.pub)
	if err != nil {
		return cs, kgerr.Wrap(kgerr.KindInvalidInput, err, "the subject's public key is of an unsupported type")
	}
	cs.pubDER = der
	return cs, nil
}

// subjectKeyID is RFC 5280's method 1: SHA-1 of the subjectPublicKey bits.
func subjectKeyID(spki []byte) []byte {
	var info struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil {
		return nil
	}
	h := sha1.Sum(info.PublicKey.Bytes)
	return h[:]
}

// validity works out not-before and not-after from a request.
func (s *Service) validity(req IssueCertificateRequest) (time.Time, time.Time, error) {
	now := s.now().UTC().Truncate(time.Second)
	switch {
	case req.Validity != 0 && (req.NotBefore != nil || req.NotAfter != nil):
		return time.Time{}, time.Time{}, kgerr.Invalid("send validity or not_before/not_after, not both")
	case req.Validity < 0:
		return time.Time{}, time.Time{}, kgerr.Invalid("validity must be positive")
	case req.Validity > 0:
		return now, now.Add(req.Validity), nil
	case req.NotAfter == nil:
		return time.Time{}, time.Time{}, kgerr.Invalid("validity (a duration such as 720h) or not_after is required")
	}
	nb := now
	if req.NotBefore != nil {
		nb = req.NotBefore.UTC()
	}
	na := req.NotAfter.UTC()
	if !na.After(nb) {
		return time.Time{}, time.Time{}, kgerr.Invalid("not_after must be after not_before")
	}
	return nb, na, nil
}

var keyUsages = map[string]x509.KeyUsage{
	"digital_signature": x509.KeyUsageDigitalSignature, "content_commitment": x509.KeyUsageContentCommitment,
	"key_encipherment": x509.KeyUsageKeyEncipherment, "data_encipherment": x509.KeyUsageDataEncipherment,
	"key_agreement": x509.KeyUsageKeyAgreement, "cert_sign": x509.KeyUsageCertSign, "crl_sign": x509.KeyUsageCRLSign,
	"encipher_only": x509.KeyUsageEncipherOnly, "decipher_only": x509.KeyUsageDecipherOnly,
}

var extKeyUsages = map[string]x509.ExtKeyUsage{
	"any": x509.ExtKeyUsageAny, "server_auth": x509.ExtKeyUsageServerAuth, "client_auth": x509.ExtKeyUsageClientAuth,
	"code_signing": x509.ExtKeyUsageCodeSigning, "email_protection": x509.ExtKeyUsageEmailProtection,
	"time_stamping": x509.ExtKeyUsageTimeStamping, "ocsp_signing": x509.ExtKeyUsageOCSPSigning,
}

// usages parses key_usage and ext_key_usage (defaults: a CA signs
// certificates and CRLs, anything else makes digital signatures).
func usages(req IssueCertificateRequest) (x509.KeyUsage, []x509.ExtKeyUsage, error) {
	var ku x509.KeyUsage
	for _, u := range req.KeyUsage {
		b, ok := keyUsages[u]
		if !ok {
			return 0, nil, kgerr.Invalid(fmt.Sprintf("key_usage %q is not one of digital_signature, content_commitment, key_encipherment, data_encipherment, key_agreement, cert_sign, crl_sign, encipher_only, decipher_only", kgerr.Clip(u)))
		}
		ku |= b
	}
	if len(req.KeyUsage) == 0 {
		ku = x509.KeyUsageDigitalSignature
		if req.IsCA {
			ku |= x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		}
	}
	var eku []x509.ExtKeyUsage
	for _, u := range req.ExtKeyUsage {
		b, ok := extKeyUsages[u]
		if !ok {
			return 0, nil, kgerr.Invalid(fmt.Sprintf("ext_key_usage %q is not one of any, server_auth, client_auth, code_signing, email_protection, time_stamping, ocsp_signing", kgerr.Clip(u)))
		}
		eku = append(eku, b)
	}
	return ku, eku, nil
}

func checkURLs(field string, in []string) error {
	if len(in) > maxAltNames {
		return kgerr.Invalid(fmt.Sprintf("%s: at most %d entries", field, maxAltNames))
	}
	for _, s := range in {
		if u, err := url.Parse(s); err != nil || u.Scheme == "" || u.Host == "" {
			return kgerr.Invalid(fmt.Sprintf("%s: %q is not an absolute URL", field, kgerr.Clip(s)))
		}
	}
	return nil
}

// issuerCertificate is the CA certificate of the key's current version:
// the leaf of its attached chain.
func issuerCertificate(k *store.Key, v *store.Version) (*x509.Certificate, error) {
	chain, err := parseChainPEM(v.CertificateChain)
	if err != nil {
		return nil, err
	}
	if len(chain) == 0 {
		return nil, kgerr.Invalid(fmt.Sprintf("key %q has no certificate attached to its version %d: attach its CA certificate first, or ask for self_signed", k.Name, v.Version))
	}
	return chain[0], nil
}

// checkIssuer applies the rules an issuer's certificate sets: it must be a
// CA allowed to sign certificates, the new certificate's validity must lie
// within its own, and a CA below it must respect its path length.
func checkIssuer(issuer *x509.Certificate, tmpl *x509.Certificate) error {
	if !issuer.BasicConstraintsValid || !issuer.IsCA {
		return kgerr.Invalid("the issuer is not a CA: its certificate's basicConstraints do not say CA:TRUE")
	}
	if issuer.KeyUsage != 0 && issuer.KeyUsage&x509.KeyUsageCertSign == 0 {
		return kgerr.Invalid("the issuer may not sign certificates: its certificate's keyUsage lacks keyCertSign")
	}
	if tmpl.NotBefore.Before(issuer.NotBefore) || tmpl.NotAfter.After(issuer.NotAfter) {
		return kgerr.Invalid(fmt.Sprintf("the validity %s to %s extends beyond the issuer's (%s to %s)",
			tmpl.NotBefore.Format(time.RFC3339), tmpl.NotAfter.Format(time.RFC3339),
			issuer.NotBefore.UTC().Format(time.RFC3339), issuer.NotAfter.UTC().Format(time.RFC3339)))
	}
	if !tmpl.IsCA {
		return nil
	}
	limited := issuer.MaxPathLen > 0 || (issuer.MaxPathLen == 0 && issuer.MaxPathLenZero)
	switch {
	case !limited:
	case issuer.MaxPathLen == 0:
		return kgerr.Invalid("the issuer's path length constraint is 0: it may not issue CA certificates")
	case tmpl.MaxPathLen == -1:
		tmpl.MaxPathLen, tmpl.MaxPathLenZero = issuer.MaxPathLen-1, issuer.MaxPathLen == 1
	case tmpl.MaxPathLen >= issuer.MaxPathLen:
		return kgerr.Invalid(fmt.Sprintf("max_path_len %d is not below the issuer's path length constraint %d", tmpl.MaxPathLen, issuer.MaxPathLen))
	}
	return nil
}

func newSerial() (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	b[0] &= 0x7f // positive, and never 21 bytes in DER
	b[0] |= 0x40 // always 16 bytes long
	return new(big.Int).SetBytes(b), nil
}

// template builds the certificate to sign from a request.
func (s *Service) template(req IssueCertificateRequest, cs certSubject) (*x509.Certificate, error) {
	nb, na, err := s.validity(req)
	if err != nil {
		return nil, err
	}
	if req.MaxPathLen != nil && (!req.IsCA || *req.MaxPathLen < 0) {
		return nil, kgerr.Invalid("max_path_len needs is_ca: true and is not negative")
	}
	ku, eku, err := usages(req)
	if err != nil {
		return nil, err
	}
	if err := checkURLs("crl_distribution_points", req.CRLDistributionPoints); err != nil {
		return nil, err
	}
	if err := checkURLs("ocsp_servers", req.OCSPServers); err != nil {
		return nil, err
	}
	if len(cs.name.ToRDNSequence()) == 0 && len(cs.alt.dns)+len(cs.alt.email)+len(cs.alt.ips)+len(cs.alt.uris) == 0 {
		return nil, kgerr.Invalid("the certificate needs a subject or at least one subject alternative name")
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	t := &x509.Certificate{
		SerialNumber: serial, Subject: cs.name, NotBefore: nb, NotAfter: na,
		DNSNames: cs.alt.dns, EmailAddresses: cs.alt.email, IPAddresses: cs.alt.ips, URIs: cs.alt.uris,
		KeyUsage: ku, ExtKeyUsage: eku, BasicConstraintsValid: true, IsCA: req.IsCA, MaxPathLen: -1,
		SubjectKeyId: subjectKeyID(cs.pubDER), CRLDistributionPoints: req.CRLDistributionPoints, OCSPServer: req.OCSPServers,
	}
	if req.MaxPathLen != nil {
		t.MaxPathLen, t.MaxPathLenZero = *req.MaxPathLen, *req.MaxPathLen == 0
	}
	return t, nil
}

// IssueCertificate signs a certificate with the key as its issuer.
func (s *Service) IssueCertificate(ctx context.Context, req IssueCertificateRequest) (out *CertificateResult, err error) {
	o := s.begin(opIssueCertificate)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, v, signer, err := s.signerFor(ctx, o, req.Key, req.Algorithm, SignatureDER)
	if err != nil {
		return nil, err
	}
	sa, err := x509Algorithm(signer.a)
	if err != nil {
		return nil, err
	}
	cs, err := subjectOf(req, signer.pub)
	if err != nil {
		return nil, err
	}
	o.attrs = map[string]string{"subject": clip(cs.name.String(), 200)}
	tmpl, err := s.template(req, cs)
	if err != nil {
		return nil, err
	}
	tmpl.SignatureAlgorithm = sa
	parent := tmpl
	if req.SelfSigned {
		if k.ExpiresAt != nil && tmpl.NotAfter.After(*k.ExpiresAt) {
			return nil, kgerr.Invalid(fmt.Sprintf("the validity extends beyond the issuer's: key %q expires at %s", k.Name, k.ExpiresAt.Format(time.RFC3339)))
		}
	} else {
		if parent, err = issuerCertificate(k, v); err != nil {
			return nil, err
		}
		if err := checkIssuer(parent, tmpl); err != nil {
			return nil, err
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, cs.pub, signer)
	if err != nil {
		return nil, signingFailed("certificate", err)
	}
	serial := hex.EncodeToString(tmpl.SerialNumber.Bytes())
	o.attrs["serial"] = serial
	return &CertificateResult{Certificate: der, Serial: serial, Algorithm: string(signer.a.Name), KeyID: k.ID, KeyVersion: v.Version}, nil
}

// parseChainPEM reads a stored chain.
func parseChainPEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for len(b) > 0 {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, kgerr.Wrap(kgerr.KindInternal, err, "a stored certificate chain does not parse")
		}
		out = append(out, c)
	}
	return out, nil
}

// checkChain parses a chain, leaf first, and checks that each certificate
// is signed by the next.
func checkChain(ders [][]byte) ([]*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, kgerr.Invalid("chain is required: PEM certificates, leaf first")
	}
	if len(ders) > maxChainCerts {
		return nil, kgerr.Invalid(fmt.Sprintf("a chain has at most %d certificates", maxChainCerts))
	}
	total := 0
	certs := make([]*x509.Certificate, len(ders))
	for i, d := range ders {
		total += len(d)
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, kgerr.Wrap(kgerr.KindInvalidInput, err, fmt.Sprintf("certificate %d of the chain does not parse", i+1))
		}
		certs[i] = c
	}
	if total > maxChainBytes {
		return nil, kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("a chain is at most %d bytes", maxChainBytes))
	}
	for i := 0; i+1 < len(certs); i++ {
		if err := certs[i].CheckSignatureFrom(certs[i+1]); err != nil {
			return nil, kgerr.Wrap(kgerr.KindInvalidInput, err, fmt.Sprintf("certificate %d of the chain is not signed by certificate %d (send the chain leaf first)", i+1, i+2))
		}
	}
	return certs, nil
}

// AttachChain attaches a certificate chain to the key's current version,
// whose public key its leaf must certify. It replaces the version's chain;
// older versions keep theirs.
func (s *Service) AttachChain(ctx context.Context, req AttachChainRequest) (out *ChainResult, err error) {
	o := s.begin(opAttachChain)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, err := s.getKey(ctx, req.Key, opAttachChain.action)
	o.key = k
	if err != nil {
		return nil, err
	}
	if k.State != store.StateActive && k.State != store.StateInactive {
		return nil, kgerr.New(kgerr.KindKeyInactive, fmt.Sprintf("key %q is %s", k.Name, k.State))
	}
	if alg.Secret(alg.KeyType(k.KeyType)) {
		return nil, kgerr.Invalid(fmt.Sprintf("key %q is a secret key: no certificate can certify it", k.Name))
	}
	certs, err := checkChain(req.Chain)
	if err != nil {
		return nil, err
	}
	v, err := version(k, 0)
	if err != nil {
		return nil, err
	}
	o.version = v.Version
	leafKey, err := x509.MarshalPKIXPublicKey(certs[0].PublicKey)
	if err != nil || !bytes.Equal(leafKey, v.PublicKey) {
		return nil, kgerr.Invalid(fmt.Sprintf("the chain's leaf certifies another public key than version %d of key %q", v.Version, k.Name))
	}
	o.attrs = map[string]string{"subject": clip(certs[0].Subject.String(), 200), "serial": hex.EncodeToString(certs[0].SerialNumber.Bytes())}
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	if err := s.auditReady(ctx); err != nil {
		return nil, err
	}
	v.CertificateChain = buf.Bytes()
	k.UpdatedAt = s.now().UTC()
	if err := s.store.UpdateKey(ctx, k); err != nil {
		return nil, err
	}
	return &ChainResult{Chain: req.Chain, KeyID: k.ID, KeyVersion: v.Version}, nil
}

// GetChain returns the chain attached to a version (0: current).
func (s *Service) GetChain(ctx context.Context, ref string, n int) (out *ChainResult, err error) {
	k, err := s.getKey(ctx, ref, opGetChain.action)
	if err != nil {
		s.auditDenied(ctx, opGetChain, k, err)
		return nil, err
	}
	v, err := version(k, n)
	if err != nil {
		return nil, err
	}
	certs, err := parseChainPEM(v.CertificateChain)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, kgerr.New(kgerr.KindNotFound, fmt.Sprintf("version %d of key %q has no certificate attached", v.Version, k.Name))
	}
	res := &ChainResult{KeyID: k.ID, KeyVersion: v.Version}
	for _, c := range certs {
		res.Chain = append(res.Chain, c.Raw)
	}
	return res, nil
}
