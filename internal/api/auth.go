package api

import (
	"errors"
	"net/http"
	"strings"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/httpstack"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// protected reports whether a request needs a credential: every route but
// /health, the published JWKS and the OpenAPI document, and /ready and
// /metrics unless configured to. A path no route has, whatever the method,
// needs none: its 404 says nothing of any key or principal (the routes are
// public, in the OpenAPI document), and a newcomer's GET / learns where the
// API is instead of being asked for a credential. A known path asked with
// another method is protected (its 405 after authentication). route is the
// pattern the request matched (a.route, found once by the stack).
func (a *API) protected(r *http.Request, route string) bool {
	switch r.URL.Path {
	case "/health", wellKnownJWKS, openAPIPath:
		return false
	case "/ready":
		return a.protectReady
	case "/metrics":
		return a.protectMetrics
	}
	return route != "" || len(a.allowed(r)) > 0
}

// credential returns the token of a request: a bearer token
// (Authorization: Bearer …) or an API key (X-API-Key). Both at once must be
// the same; either header sent twice is refused (a proxy may read the
// other one).
func credential(r *http.Request) (string, error) {
	if len(r.Header.Values("Authorization")) > 1 || len(r.Header.Values("X-API-Key")) > 1 {
		return "", errDoubledHeader
	}
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
	errDoubledHeader  = errors.New("a credential header is sent more than once")
)

// authenticate finds the request's principal by its token or client
// certificate. A refusal is AUTHENTICATION_FAILED with a message that says
// what to send; its cause (why, never the credential) is what the stack
// audits.
func (a *API) authenticate(r *http.Request) (*auth.Principal, error) {
	tok, err := credential(r)
	var p *auth.Principal
	if err == nil {
		if authn := a.auth.Load(); authn == nil {
			err = auth.ErrBadToken
		} else {
			p, err = authn.Authenticate(tok, httpstack.VerifiedChains(r))
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
	case errors.Is(err, errDoubledHeader):
		msg = "authentication failed: send Authorization or X-API-Key once"
	case errors.Is(err, errTwoCredentials):
		msg = "authentication failed: Authorization and X-API-Key carry different credentials"
	}
	return nil, kgerr.Wrap(kgerr.KindUnauthenticated, err, msg)
}
