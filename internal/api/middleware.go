package api

import (
	"net/http"

	"github.com/keygrid/keygrid-hsm/internal/httpstack"
)

// frontEnd is what the REST API plugs into the shared HTTP stack: its error
// body, its authentication (bearer token, API key, client certificate;
// auth.go), the routes that need it, and the route pattern as the label of
// a request.
func (a *API) frontEnd() httpstack.FrontEnd {
	return httpstack.FrontEnd{
		Name:         "rest",
		Fail:         a.fail,
		Route:        a.route,
		Protected:    a.protected,
		Authenticate: a.authenticate,
		AuthFailed:   a.svc.AuthenticationFailed,
	}
}

// route is the pattern a request matches ("" when none).
func (a *API) route(r *http.Request) string {
	if _, p := a.mux.Handler(r); p != "/" {
		return p
	}
	return ""
}
