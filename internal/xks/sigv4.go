package xks

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// SigV4 verification, as the specification's Appendix A describes it:
// recompute the signature of the request as sent and compare.
//
// The canonical request, string to sign, signing key and signature are
// computed by the AWS SDK's own signer (aws-sdk-go-v2/aws/signer/v4), run on
// a copy of the request that carries exactly the headers the request's
// SignedHeaders names, with their values as sent, the raw path and the
// time of its X-Amz-Date. What is written here is only what no library
// does for a verifier: reading the Authorization header (the SDK signs, it
// does not parse), checking the credential scope and the clock, and
// choosing the headers. The SDK signs some headers never (User-Agent,
// Expect, …) and Content-Length only as Go counts it: a request whose
// SignedHeaders the SDK would not reproduce is refused, never half-checked.

// sigv4Service is the SigV4 service name of XKS requests.
const sigv4Service = "kms-xks-proxy"

// maxSkew is how far a request's X-Amz-Date may be from the proxy's clock.
const maxSkew = 5 * time.Minute

const amzDateFormat = "20060102T150405Z"

// authorization is a parsed SigV4 Authorization header.
type authorization struct {
	accessKeyID, date, region, service, terminator string
	signedHeaders                                  string
	signature                                      string
}

func unauthenticated(format string, a ...any) error {
	return kgerr.New(kgerr.KindUnauthenticated, "SigV4: "+fmt.Sprintf(format, a...))
}

// parseAuthorization reads
//
//	AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=HEX
func parseAuthorization(h string) (authorization, error) {
	var a authorization
	rest, ok := strings.CutPrefix(h, "AWS4-HMAC-SHA256 ")
	if !ok {
		return a, unauthenticated("the Authorization header is not AWS4-HMAC-SHA256")
	}
	seen := map[string]bool{}
	for _, part := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || seen[k] {
			return a, unauthenticated("the Authorization header is malformed")
		}
		seen[k] = true
		switch k {
		case "Credential":
			f := strings.Split(v, "/")
			if len(f) != 5 {
				return a, unauthenticated("the credential is not ACCESS_KEY_ID/DATE/REGION/SERVICE/aws4_request")
			}
			a.accessKeyID, a.date, a.region, a.service, a.terminator = f[0], f[1], f[2], f[3], f[4]
		case "SignedHeaders":
			a.signedHeaders = v
		case "Signature":
			a.signature = v
		default:
			return a, unauthenticated("the Authorization header has an unknown part")
		}
	}
	if !seen["Credential"] || !seen["SignedHeaders"] || !seen["Signature"] {
		return a, unauthenticated("the Authorization header lacks Credential, SignedHeaders or Signature")
	}
	if len(a.signature) != 64 || strings.ToLower(a.signature) != a.signature {
		return a, unauthenticated("the signature is not 64 lower-case hex digits")
	}
	if _, err := hex.DecodeString(a.signature); err != nil {
		return a, unauthenticated("the signature is not 64 lower-case hex digits")
	}
	return a, nil
}

// signedHeaderList checks a SignedHeaders list: lower case, sorted, no
// repeats, host and x-amz-date among them.
func signedHeaderList(s string) ([]string, error) {
	hs := strings.Split(s, ";")
	for i, h := range hs {
		if h == "" || strings.ToLower(h) != h || strings.ContainsAny(h, " \t:") || (i > 0 && hs[i-1] >= h) {
			return nil, unauthenticated("SignedHeaders must be distinct lower-case header names in order")
		}
	}
	if !slices.Contains(hs, "host") || !slices.Contains(hs, "x-amz-date") {
		return nil, unauthenticated("SignedHeaders must include host and x-amz-date")
	}
	return hs, nil
}

// verifier checks SigV4 signatures.
type verifier struct {
	signer *v4.Signer
	now    func() time.Time
}

func newVerifier(now func() time.Time) *verifier {
	return &verifier{signer: v4.NewSigner(), now: now}
}

// verify checks r's signature over body with the store's credentials and
// region. It returns the access key id that signed.
func (v *verifier) verify(r *http.Request, body []byte, secrets map[string]string, region string) (string, error) {
	vals := r.Header.Values("Authorization")
	if len(vals) != 1 {
		return "", unauthenticated("one Authorization header is required")
	}
	a, err := parseAuthorization(vals[0])
	if err != nil {
		return "", err
	}
	secret, ok := secrets[a.accessKeyID]
	if !ok {
		return "", unauthenticated("access key id %q is not one of this store's", kgerr.Clip(a.accessKeyID))
	}
	dates := r.Header.Values("X-Amz-Date")
	if len(dates) != 1 {
		return a.accessKeyID, unauthenticated("one X-Amz-Date header is required")
	}
	t, err := time.Parse(amzDateFormat, dates[0])
	if err != nil || t.Format(amzDateFormat) != dates[0] {
		return a.accessKeyID, unauthenticated("X-Amz-Date is not YYYYMMDDTHHMMSSZ")
	}
	if d := v.now().Sub(t); d > maxSkew || d < -maxSkew {
		return a.accessKeyID, unauthenticated("the request was signed at %s, more than 5 minutes from this proxy's clock", dates[0])
	}
	switch {
	case a.date != t.Format("20060102"):
		return a.accessKeyID, unauthenticated("the credential's date is not X-Amz-Date's")
	case a.region != region:
		return a.accessKeyID, unauthenticated("the credential's region %q is not this store's", kgerr.Clip(a.region))
	case a.service != sigv4Service:
		return a.accessKeyID, unauthenticated("the credential's service %q is not %s", kgerr.Clip(a.service), sigv4Service)
	case a.terminator != "aws4_request":
		return a.accessKeyID, unauthenticated("the credential scope does not end in aws4_request")
	}
	signed, err := signedHeaderList(a.signedHeaders)
	if err != nil {
		return a.accessKeyID, err
	}
	cp, err := canonicalCopy(r, signed)
	if err != nil {
		return a.accessKeyID, err
	}
	sum := sha256.Sum256(body)
	creds := aws.Credentials{AccessKeyID: a.accessKeyID, SecretAccessKey: secret}
	if err := v.signer.SignHTTP(context.Background(), creds, cp, hex.EncodeToString(sum[:]), sigv4Service, region, t); err != nil {
		return a.accessKeyID, kgerr.Wrap(kgerr.KindInternal, err, "the signature could not be computed")
	}
	want, err := parseAuthorization(cp.Header.Get("Authorization"))
	if err != nil {
		return a.accessKeyID, kgerr.Wrap(kgerr.KindInternal, err, "the signature could not be computed")
	}
	if want.signedHeaders != a.signedHeaders {
		return a.accessKeyID, unauthenticated("SignedHeaders %q cannot be verified (this proxy verifies over %q)", kgerr.Clip(a.signedHeaders), kgerr.Clip(want.signedHeaders))
	}
	if !hmac.Equal([]byte(want.signature), []byte(a.signature)) {
		return a.accessKeyID, unauthenticated("the signature does not match")
	}
	return a.accessKeyID, nil
}

// canonicalCopy is r as the signer must see it: method, raw path (never
// cleaned), Host as sent (its port included) and exactly the signed
// headers with their values.
func canonicalCopy(r *http.Request, signed []string) (*http.Request, error) {
	if r.Host == "" {
		return nil, unauthenticated("the request has no Host")
	}
	// No scheme: the signer would drop a default port from the Host it
	// signs, and the client signed the Host it sent.
	u := &url.URL{Path: r.URL.Path, RawPath: r.URL.RawPath}
	cp := &http.Request{Method: r.Method, URL: u, Host: r.Host, Header: http.Header{}}
	for _, h := range signed {
		switch h {
		case "host":
		case "content-length":
			if r.ContentLength < 0 {
				return nil, unauthenticated("content-length is signed but the request has none")
			}
			cp.ContentLength = r.ContentLength
		default:
			vals := r.Header.Values(h)
			if len(vals) == 0 {
				return nil, unauthenticated("signed header %s is not in the request", kgerr.Clip(h))
			}
			cp.Header[http.CanonicalHeaderKey(h)] = vals
		}
	}
	return cp, nil
}
