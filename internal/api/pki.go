package api

// Certificates and tokens: CSRs, issuance, attached chains, JWKS (per key
// and the unauthenticated /.well-known/jwks.json) and JWS/JWT. The wire
// forms (PEM, durations as text, the JWK JSON) are translated here; the
// service works on DER, time.Duration and parsed keys.

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/duration"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// wellKnownJWKS is the path of the published keys; it needs no credential.
const wellKnownJWKS = "/.well-known/jwks.json"

// jwksMaxAge is how long clients and caches may keep the published JWKS.
const jwksMaxAge = 300

func subjectIn(s apitypes.Subject) service.Subject {
	return service.Subject{CommonName: s.CommonName, Organization: s.Organization, OrganizationalUnit: s.OrganizationalUnit,
		Country: s.Country, Province: s.Province, Locality: s.Locality, StreetAddress: s.StreetAddress,
		PostalCode: s.PostalCode, SerialNumber: s.SerialNumber}
}

// pemBlock decodes the one PEM block of field, of type want.
func pemBlock(field, s string, want ...string) ([]byte, error) {
	b, rest := pem.Decode([]byte(s))
	if b == nil {
		return nil, kgerr.Invalid(field + " is not PEM")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, kgerr.Invalid(field + " must hold one PEM block")
	}
	for _, w := range want {
		if b.Type == w {
			return b.Bytes, nil
		}
	}
	return nil, kgerr.Invalid(fmt.Sprintf("%s is a PEM %q block, not %q", field, b.Type, want[0]))
}

func pemOf(typ string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

func csrRequest(key string, r apitypes.CSRRequest) (service.CSRRequest, error) {
	return service.CSRRequest{Key: key, Algorithm: r.Algorithm, Subject: subjectIn(r.Subject), AltNames: service.AltNames{
		DNSNames: r.DNSNames, IPAddresses: r.IPAddresses, EmailAddresses: r.EmailAddresses, URIs: r.URIs}}, nil
}

func csrOut(r *service.CSRResult) apitypes.CSRResponse {
	return apitypes.CSRResponse{CSR: pemOf("CERTIFICATE REQUEST", r.CSR), Algorithm: r.Algorithm, KeyID: r.KeyID, KeyVersion: r.KeyVersion}
}

func issueRequest(key string, r apitypes.IssueCertificateRequest) (service.IssueCertificateRequest, error) {
	out := service.IssueCertificateRequest{Key: key, Algorithm: r.Algorithm, SelfSigned: r.SelfSigned,
		AltNames:  service.AltNames{DNSNames: r.DNSNames, IPAddresses: r.IPAddresses, EmailAddresses: r.EmailAddresses, URIs: r.URIs},
		NotBefore: r.NotBefore, NotAfter: r.NotAfter, IsCA: r.IsCA, MaxPathLen: r.MaxPathLen, KeyUsage: r.KeyUsage,
		ExtKeyUsage: r.ExtKeyUsage, CRLDistributionPoints: r.CRLDistributionPoints, OCSPServers: r.OCSPServers}
	var err error
	if r.Subject != nil {
		sub := subjectIn(*r.Subject)
		out.Subject = &sub
	}
	if r.CSR != "" {
		if out.CSR, err = pemBlock("csr", r.CSR, "CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"); err != nil {
			return out, err
		}
	}
	if r.PublicKey != "" {
		if out.PublicKey, err = pemBlock("public_key", r.PublicKey, "PUBLIC KEY"); err != nil {
			return out, err
		}
	}
	if r.Validity != "" {
		d, err := duration.Parse(r.Validity)
		if err != nil || d <= 0 {
			return out, kgerr.Invalid(fmt.Sprintf("validity %q is not a positive duration such as 720h", r.Validity))
		}
		out.Validity = d.D()
	}
	return out, nil
}

func certificateOut(r *service.CertificateResult) apitypes.CertificateResponse {
	return apitypes.CertificateResponse{Certificate: pemOf("CERTIFICATE", r.Certificate), Serial: r.Serial,
		Algorithm: r.Algorithm, KeyID: r.KeyID, KeyVersion: r.KeyVersion}
}

// chainIn reads PEM certificates, leaf first; anything else in the text is
// refused.
func chainIn(key string, r apitypes.AttachChainRequest) (service.AttachChainRequest, error) {
	out := service.AttachChainRequest{Key: key}
	rest := []byte(r.Chain)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return out, kgerr.Invalid(fmt.Sprintf("chain holds a PEM %q block: only CERTIFICATE blocks are accepted", b.Type))
		}
		out.Chain = append(out.Chain, b.Bytes)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return out, kgerr.Invalid("chain holds text that is not a PEM certificate")
	}
	return out, nil
}

func chainOut(r *service.ChainResult) apitypes.ChainResponse {
	var b bytes.Buffer
	for _, c := range r.Chain {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c})
	}
	return apitypes.ChainResponse{Chain: b.String(), KeyID: r.KeyID, KeyVersion: r.KeyVersion}
}

func jwksOut(keys []service.JWK) (apitypes.JWKS, error) {
	out := apitypes.JWKS{Keys: make([]map[string]any, 0, len(keys))}
	for _, k := range keys {
		m, err := alg.JWK(k.Key, k.KID, alg.Algorithm(k.Algorithm))
		if err != nil {
			return out, err
		}
		m["use"] = k.Use
		if len(k.Chain) > 0 {
			x5c := make([]string, len(k.Chain))
			for i, c := range k.Chain {
				x5c[i] = base64.StdEncoding.EncodeToString(c)
			}
			m["x5c"] = x5c
		}
		out.Keys = append(out.Keys, m)
	}
	return out, nil
}

func jwtRequest(key string, r apitypes.JWTRequest) (service.JWTRequest, error) {
	out := service.JWTRequest{Key: key, Algorithm: r.Algorithm, Claims: r.Claims, Header: r.Header, IssuedAt: r.IssuedAt}
	if r.Claims == nil {
		return out, kgerr.Invalid("claims is required (a JSON object)")
	}
	if r.ExpiresIn != "" {
		d, err := duration.Parse(r.ExpiresIn)
		if err != nil || d <= 0 {
			return out, kgerr.Invalid(fmt.Sprintf("expires_in %q is not a positive duration such as 15m", r.ExpiresIn))
		}
		out.ExpiresIn = d.D()
	}
	return out, nil
}

func jwsRequest(key string, r apitypes.JWSRequest) (service.JWSRequest, error) {
	return service.JWSRequest{Key: key, Algorithm: r.Algorithm, Payload: r.Payload, Header: r.Header, Detached: r.Detached}, nil
}

func tokenOut(r *service.TokenResult) apitypes.TokenResponse {
	return apitypes.TokenResponse{Token: r.Token, KID: r.KID, Algorithm: r.Algorithm, KeyID: r.KeyID, KeyVersion: r.KeyVersion}
}

func (a *API) getChain(w http.ResponseWriter, r *http.Request) {
	v, err := queryInt(r, "version")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	c, err := a.svc.GetChain(r.Context(), r.PathValue("key"), v)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, chainOut(c))
}

func (a *API) keyJWKS(w http.ResponseWriter, r *http.Request) {
	keys, err := a.svc.KeyJWKS(r.Context(), r.PathValue("key"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out, err := jwksOut(keys)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, out)
}

// publishedJWKS serves /.well-known/jwks.json without a credential, with
// Cache-Control and a strong ETag of the body; a matching If-None-Match is
// answered 304.
func (a *API) publishedJWKS(w http.ResponseWriter, r *http.Request) {
	keys, err := a.svc.PublishedJWKS(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out, err := jwksOut(keys)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	body, err := json.Marshal(out)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	sum := sha256.Sum256(body)
	etag := `"` + hex.EncodeToString(sum[:16]) + `"`
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Cache-Control", fmt.Sprintf("public, max-age=%d", jwksMaxAge))
	if etagMatches(r.Header.Values("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(body, '\n'))
}

// etagMatches applies If-None-Match (a list of tags, or *; weak tags
// compare weakly, as RFC 9110 says for If-None-Match).
func etagMatches(values []string, etag string) bool {
	for _, v := range values {
		for _, t := range splitTags(v) {
			if t == "*" || t == etag || t == "W/"+etag {
				return true
			}
		}
	}
	return false
}

func splitTags(v string) []string {
	var out []string
	for _, f := range bytes.Split([]byte(v), []byte(",")) {
		if t := string(bytes.TrimSpace(f)); t != "" {
			out = append(out, t)
		}
	}
	return out
}
