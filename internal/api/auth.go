package api

import (
	"errors"
	"net/http"
	"strings"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/httpstack"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// protected reports whether a request needs a credential: everything but
// /health and the published JWKS, and /ready and /metrics unless
// configured to.
func (a *API) protected(r *http.Request) bool {
	switch r.URL.Path {
	case "/health", wellKnownJWKS:
		return false
	case "/ready":
		return a.protectReady
	case "/metrics":
		return a.protectMetrics
	}
	return true
}

// credential returns the token of a request: a bearer token
// (Authorization: Bearer …) or an API key (X-API-Key). Both at once must be
// the same.
func credential(r *http.Request) (string, error) {
	var bearer string
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			return "", errBadScheme
		}
		bearer = strings.TrimSpace(tok)
	}
	key := strings.TrimSpace(r.Header.Get("X-API-Key"))
	switch {
	case bearer != "" && key != "" && bearer != key:
		return "", errTwoCredentials
	case bearer != "":
		return bearer, nil
	}
	return key, nil
}

var (
	errBadScheme      = errors.New("Authorization header is not \"Bearer <token>\"")
	errTwoCredentials = errors.New("Authorization and X-API-Key carry different credentials")
)

// authenticate finds the request's principal by its token or client
// certificate. A refusal is AUTHENTICATION_FAILED with a message that says
// what to send; its cause (why, never the credential) is what the stack
// audits.
func (a *API) authenticate(r *http.Request) (*auth.Principal, error) {
	tok, err := credential(r)
	var p *auth.Principal
	if err == nil {
		if a.auth == nil {
			err = auth.ErrBadToken
		} else {
			p, err = a.auth.Authenticate(tok, httpstack.VerifiedChains(r))
		}
	}
	if err == nil {
		return p, nil
	}
	msg := "authentication failed: the credential is not valid"
	switch {
	case errors.Is(err, auth.ErrNoCredential):
		msg = "authentication required: send a bearer token (Authorization: Bearer …) or an API key (X-API-Key)"
	case errors.Is(err, auth.ErrUnknownCertificate):
		msg = "authentication failed: the client certificate is not mapped to a principal"
	case errors.Is(err, errBadScheme):
		msg = "authentication failed: the Authorization header must be \"Bearer <token>\""
	case errors.Is(err, errTwoCredentials):
		msg = "authentication failed: Authorization and X-API-Key carry different credentials"
	}
	return nil, kgerr.Wrap(kgerr.KindUnauthenticated, err, msg)
}
