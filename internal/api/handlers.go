package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

func (a *API) health(w http.ResponseWriter, _ *http.Request) {
	a.write(w, http.StatusOK, apitypes.Health{Status: "ok", Version: a.version})
}

func (a *API) ready(w http.ResponseWriter, r *http.Request) {
	ok, ps := a.svc.Ready(r.Context())
	if !ok {
		a.write(w, http.StatusServiceUnavailable, apitypes.Ready{Status: "unavailable", Providers: ps})
		return
	}
	a.write(w, http.StatusOK, apitypes.Ready{Status: "ok", Providers: ps})
}

func (a *API) listProviders(w http.ResponseWriter, r *http.Request) {
	a.write(w, http.StatusOK, a.svc.Providers(r.Context()))
}

func (a *API) providerHealth(w http.ResponseWriter, r *http.Request) {
	h, err := a.svc.ProviderHealth(r.Context(), r.PathValue("name"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, h)
}

func (a *API) createKey(w http.ResponseWriter, r *http.Request) {
	var req apitypes.CreateKeyRequest
	if err := a.decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	k, err := a.svc.CreateKey(r.Context(), req)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/keys/"+k.ID)
	a.write(w, http.StatusCreated, k)
}

func queryInt(r *http.Request, name string) (int, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, kgerr.Invalid(fmt.Sprintf("query parameter %s must be a non-negative integer", name))
	}
	return n, nil
}

func (a *API) listKeys(w http.ResponseWriter, r *http.Request) {
	limit, err := queryInt(r, "limit")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	list, err := a.svc.ListKeys(r.Context(), service.ListOptions{
		Provider: q.Get("provider"), State: q.Get("state"), Limit: limit, PageToken: q.Get("page_token"),
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, list)
}

func (a *API) getKey(w http.ResponseWriter, r *http.Request) {
	k, err := a.svc.GetKey(r.Context(), r.PathValue("key"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, k)
}

func (a *API) deleteKey(w http.ResponseWriter, r *http.Request) {
	if err := a.svc.DeleteKey(r.Context(), r.PathValue("key")); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// keyState serves the bodiless state changes (activate, deactivate, rotate).
func (a *API) keyState(fn func(context.Context, string) (*apitypes.Key, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > 0 {
			var empty struct{}
			if err := a.decode(w, r, &empty); err != nil {
				a.fail(w, r, err)
				return
			}
		}
		k, err := fn(r.Context(), r.PathValue("key"))
		if err != nil {
			a.fail(w, r, err)
			return
		}
		a.write(w, http.StatusOK, k)
	}
}

func (a *API) publicKey(w http.ResponseWriter, r *http.Request) {
	v, err := queryInt(r, "version")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	pk, err := a.svc.PublicKey(r.Context(), r.PathValue("key"), v)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, pk)
}

// keyOp serves a cryptographic operation on a key: decode Req, call fn,
// render its result.
func keyOp[Req, Resp any](a *API, fn func(context.Context, string, Req) (Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if err := a.decode(w, r, &req); err != nil {
			a.fail(w, r, err)
			return
		}
		resp, err := fn(r.Context(), r.PathValue("key"), req)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		a.write(w, http.StatusOK, resp)
	}
}

// notFound answers routes that do not exist (404) and known paths with the
// wrong method (405 with Allow).
func (a *API) notFound(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, p := a.mux.Handler(r2); p != "/" && p != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		for _, m := range allow {
			w.Header().Add("Allow", m)
		}
		a.fail(w, r, kgerr.New(apitypes.CodeMethodNotAllowed, fmt.Sprintf("%s is not allowed on %s", r.Method, r.URL.Path)))
		return
	}
	a.fail(w, r, kgerr.New(apitypes.CodeNotFound, fmt.Sprintf("no route %s %s", r.Method, r.URL.Path)))
}
