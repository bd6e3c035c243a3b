package server_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"slices"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

var allJOSE = []jose.SignatureAlgorithm{jose.RS256, jose.PS256, jose.ES256, jose.ES384, jose.ES512, jose.EdDSA}

// TestWellKnownJWKSAndJWTs: the published JWKS is served without a
// credential, with Cache-Control and an ETag (304 on If-None-Match), and
// lists exactly the published keys; a JWT of each algorithm verifies with
// go-jose using only the key found in it; a tampered token fails.
func TestWellKnownJWKSAndJWTs(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	published := map[string]string{} // kid → algorithm
	for _, c := range []struct {
		name string
		spec apitypes.KeySpec
	}{
		{"jwt-rs256", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048}},
		{"jwt-ps256", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048, Algorithm: "PS256"}},
		{"jwt-es256", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}},
		{"jwt-es384", apitypes.KeySpec{KeyType: "EC", Curve: "P-384"}},
		{"jwt-es512", apitypes.KeySpec{KeyType: "EC", Curve: "P-521"}},
		{"jwt-eddsa", apitypes.KeySpec{KeyType: "Ed25519"}},
	} {
		k, err := e.c.CreateKey(ctx, apitypes.CreateKeyRequest{Name: c.name, KeySpec: c.spec, PublishJWKS: true})
		if err != nil {
			t.Fatal(err)
		}
		if !k.PublishJWKS {
			t.Fatalf("%s: publish_jwks not echoed", c.name)
		}
		published[k.ID+".1"] = k.Algorithm
	}
	hidden := e.createKey(t, "jwt-hidden", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})

	r := e.send(t, http.MethodGet, "/.well-known/jwks.json", nil, "Authorization", "")
	if r.status != http.StatusOK {
		t.Fatalf("well-known without a credential: %d %s", r.status, r.body)
	}
	etag, cc := r.header.Get("ETag"), r.header.Get("Cache-Control")
	if !strings.HasPrefix(etag, `"`) || !strings.Contains(cc, "max-age=") {
		t.Fatalf("ETag %q, Cache-Control %q", etag, cc)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(r.body, &set); err != nil {
		t.Fatalf("the served JWKS does not parse with go-jose: %v\n%s", err, r.body)
	}
	var kids []string
	for _, k := range set.Keys {
		kids = append(kids, k.KeyID)
		if published[k.KeyID] != k.Algorithm || k.Use != "sig" || !k.IsPublic() {
			t.Fatalf("served key %s: alg %s use %s public %v", k.KeyID, k.Algorithm, k.Use, k.IsPublic())
		}
	}
	if len(kids) != len(published) || slices.Contains(kids, hidden.ID+".1") {
		t.Fatalf("served kids %v, want exactly %v", kids, published)
	}
	if r := e.send(t, http.MethodGet, "/.well-known/jwks.json", nil, "Authorization", "", "If-None-Match", etag); r.status != http.StatusNotModified || len(r.body) != 0 {
		t.Fatalf("If-None-Match: %d %s", r.status, r.body)
	}
	if r := e.send(t, http.MethodGet, "/.well-known/jwks.json", nil, "Authorization", "", "If-None-Match", `"other"`); r.status != http.StatusOK {
		t.Fatalf("If-None-Match with another tag: %d", r.status)
	}

	for kid, algorithm := range published {
		keyID, _, _ := strings.Cut(kid, ".")
		res, err := e.c.SignJWT(ctx, keyID, apitypes.JWTRequest{Claims: map[string]any{"sub": "svc-a", "iss": "https://issuer.example"}, ExpiresIn: "15m"})
		if err != nil {
			t.Fatalf("%s: %v", algorithm, err)
		}
		tok, err := jwt.ParseSigned(res.Token, allJOSE)
		if err != nil {
			t.Fatal(err)
		}
		keys := set.Key(tok.Headers[0].KeyID)
		if len(keys) != 1 || tok.Headers[0].Algorithm != algorithm {
			t.Fatalf("%s: token kid %s alg %s", algorithm, tok.Headers[0].KeyID, tok.Headers[0].Algorithm)
		}
		var claims jwt.Claims
		if err := tok.Claims(keys[0].Key, &claims); err != nil {
			t.Fatalf("%s: verify with the served JWKS: %v", algorithm, err)
		}
		if claims.Subject != "svc-a" || claims.Expiry == nil || claims.IssuedAt == nil {
			t.Fatalf("%s: claims %+v", algorithm, claims)
		}
		parts := strings.Split(res.Token, ".")
		parts[1] = base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"mallory","iss":"https://issuer.example"}`))
		bad, err := jwt.ParseSigned(strings.Join(parts, "."), allJOSE)
		if err != nil {
			t.Fatal(err)
		}
		if err := bad.Claims(keys[0].Key, &claims); err == nil {
			t.Fatalf("%s: a tampered token verifies", algorithm)
		}
	}

	// A key's own JWKS needs a credential.
	e.fails(t, http.MethodGet, keyPath(hidden.ID, "/jwks"), nil, http.StatusUnauthorized, apitypes.CodeAuthenticationFailed, "Authorization", "")
	var own apitypes.JWKS
	e.ok(t, http.MethodGet, keyPath(hidden.ID, "/jwks"), nil, http.StatusOK, &own)
	if len(own.Keys) != 1 || own.Keys[0]["kid"] != hidden.ID+".1" || own.Keys[0]["use"] != "sig" {
		t.Fatalf("key JWKS %+v", own)
	}
	// Publishing a key changes the body and so the ETag.
	if _, err := e.c.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "jwt-late", KeySpec: apitypes.KeySpec{KeyType: "Ed25519"}, PublishJWKS: true}); err != nil {
		t.Fatal(err)
	}
	if r := e.send(t, http.MethodGet, "/.well-known/jwks.json", nil, "Authorization", "", "If-None-Match", etag); r.status != http.StatusOK || r.header.Get("ETag") == etag {
		t.Fatalf("after publishing another key: %d, ETag %q (was %q)", r.status, r.header.Get("ETag"), etag)
	}
	jws, err := e.c.SignJWS(ctx, hidden.ID, apitypes.JWSRequest{Payload: []byte("hello"), Detached: true})
	if err != nil {
		t.Fatal(err)
	}
	obj, err := jose.ParseDetached(jws.Token, []byte("hello"), allJOSE)
	if err != nil {
		t.Fatal(err)
	}
	var ownSet jose.JSONWebKeySet
	b, _ := json.Marshal(own)
	if err := json.Unmarshal(b, &ownSet); err != nil {
		t.Fatal(err)
	}
	if _, err := obj.Verify(ownSet.Keys[0].Key); err != nil {
		t.Fatalf("detached JWS with the key's JWKS: %v", err)
	}
	e.fails(t, http.MethodPost, keyPath(hidden.ID, "/jwt"), map[string]any{"claims": map[string]any{}, "expires_in": "soon"}, http.StatusBadRequest, apitypes.CodeInvalidInput)
	e.fails(t, http.MethodPost, keyPath(hidden.ID, "/jwt"), map[string]any{"claims": map[string]any{}, "header": map[string]any{"alg": "none"}}, http.StatusBadRequest, apitypes.CodeInvalidInput)
}

// TestCertificatesOverREST: CSR, self-signed CA, issuance from a CSR,
// attach and read back a chain through the SDK; PEM refusals.
func TestCertificatesOverREST(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ca := e.createKey(t, "rest-ca", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	root, err := e.c.IssueCertificate(ctx, ca.Name, apitypes.IssueCertificateRequest{SelfSigned: true,
		Subject: &apitypes.Subject{CommonName: "REST Root"}, Validity: "8760h", IsCA: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(root.Serial) != 32 {
		t.Fatalf("serial %q is not 128 bits of hex", root.Serial)
	}
	if _, err := e.c.AttachChain(ctx, ca.Name, root.Certificate); err != nil {
		t.Fatal(err)
	}
	leafKey := e.createKey(t, "rest-leaf", apitypes.KeySpec{KeyType: "Ed25519"})
	csr, err := e.c.CreateCSR(ctx, leafKey.Name, apitypes.CSRRequest{Subject: apitypes.Subject{CommonName: "leaf"}, DNSNames: []string{"leaf.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(csr.CSR, "-----BEGIN CERTIFICATE REQUEST-----") {
		t.Fatalf("csr %q", csr.CSR)
	}
	leaf, err := e.c.IssueCertificate(ctx, ca.Name, apitypes.IssueCertificateRequest{CSR: csr.CSR, Validity: "720h", ExtKeyUsage: []string{"server_auth"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.AttachChain(ctx, leafKey.Name, leaf.Certificate+root.Certificate); err != nil {
		t.Fatal(err)
	}
	got, err := e.c.Chain(ctx, leafKey.Name, 0)
	if err != nil || got.Chain != leaf.Certificate+root.Certificate || got.KeyVersion != 1 {
		t.Fatalf("chain %+v, %v", got, err)
	}
	blk, _ := pem.Decode([]byte(leaf.Certificate))
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || cert.DNSNames[0] != "leaf.example" || cert.Subject.CommonName != "leaf" {
		t.Fatalf("leaf %+v, %v", cert, err)
	}
	// The attached chain appears as x5c in the key's JWKS.
	var own apitypes.JWKS
	e.ok(t, http.MethodGet, keyPath(leafKey.ID, "/jwks"), nil, http.StatusOK, &own)
	if x5c, _ := own.Keys[0]["x5c"].([]any); len(x5c) != 2 {
		t.Fatalf("x5c %v", own.Keys[0]["x5c"])
	}
	d := e.fails(t, http.MethodPut, keyPath(ca.ID, "/certificate"), apitypes.AttachChainRequest{Chain: leaf.Certificate}, http.StatusBadRequest, apitypes.CodeInvalidInput)
	if !strings.Contains(d.Message, "another public key") {
		t.Fatalf("mismatched leaf: %s", d.Message)
	}
	e.fails(t, http.MethodPut, keyPath(ca.ID, "/certificate"), apitypes.AttachChainRequest{Chain: "not pem"}, http.StatusBadRequest, apitypes.CodeInvalidInput)
	e.fails(t, http.MethodPost, keyPath(ca.ID, "/certificate/issue"), apitypes.IssueCertificateRequest{CSR: root.Certificate, Validity: "1h"}, http.StatusBadRequest, apitypes.CodeInvalidInput)
	e.fails(t, http.MethodPost, keyPath(ca.ID, "/certificate/issue"), apitypes.IssueCertificateRequest{CSR: csr.CSR, Validity: "forever"}, http.StatusBadRequest, apitypes.CodeInvalidInput)
	e.fails(t, http.MethodGet, keyPath(e.createKey(t, "rest-bare", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}).ID, "/certificate"), nil, http.StatusNotFound, apitypes.CodeNotFound)
	e.fails(t, http.MethodDelete, keyPath(ca.ID, "/certificate"), nil, http.StatusMethodNotAllowed, apitypes.CodeMethodNotAllowed)
}
