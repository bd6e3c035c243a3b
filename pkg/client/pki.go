package client

import (
	"context"
	"fmt"
	"net/http"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// CreateCSR makes a PKCS#10 certificate signing request signed by the key.
func (c *Client) CreateCSR(ctx context.Context, key string, req apitypes.CSRRequest) (*apitypes.CSRResponse, error) {
	var out apitypes.CSRResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/csr"), req, &out)
}

// IssueCertificate signs a certificate with the key as the issuer.
func (c *Client) IssueCertificate(ctx context.Context, key string, req apitypes.IssueCertificateRequest) (*apitypes.CertificateResponse, error) {
	var out apitypes.CertificateResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/certificate/issue"), req, &out)
}

// AttachChain attaches a PEM certificate chain, leaf first, to the key's
// current version.
func (c *Client) AttachChain(ctx context.Context, key, chainPEM string) (*apitypes.ChainResponse, error) {
	var out apitypes.ChainResponse
	return &out, c.do(ctx, http.MethodPut, keyPath(key, "/certificate"), apitypes.AttachChainRequest{Chain: chainPEM}, &out)
}

// Chain returns the chain attached to a version of the key (0: current).
func (c *Client) Chain(ctx context.Context, key string, version int) (*apitypes.ChainResponse, error) {
	p := keyPath(key, "/certificate")
	if version > 0 {
		p += fmt.Sprintf("?version=%d", version)
	}
	var out apitypes.ChainResponse
	return &out, c.do(ctx, http.MethodGet, p, nil, &out)
}

// KeyJWKS returns the JWKS of the key (every active version).
func (c *Client) KeyJWKS(ctx context.Context, key string) (*apitypes.JWKS, error) {
	var out apitypes.JWKS
	return &out, c.do(ctx, http.MethodGet, keyPath(key, "/jwks"), nil, &out)
}

// PublishedJWKS fetches /.well-known/jwks.json (no credential is needed).
func (c *Client) PublishedJWKS(ctx context.Context) (*apitypes.JWKS, error) {
	var out apitypes.JWKS
	return &out, c.do(ctx, http.MethodGet, "/.well-known/jwks.json", nil, &out)
}

// SignJWT signs a JWT with the key.
func (c *Client) SignJWT(ctx context.Context, key string, req apitypes.JWTRequest) (*apitypes.TokenResponse, error) {
	var out apitypes.TokenResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/jwt"), req, &out)
}

// SignJWS signs a payload as a compact JWS.
func (c *Client) SignJWS(ctx context.Context, key string, req apitypes.JWSRequest) (*apitypes.TokenResponse, error) {
	var out apitypes.TokenResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/jws"), req, &out)
}
