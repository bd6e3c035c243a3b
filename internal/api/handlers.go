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
	body := apitypes.Ready{Status: "ok", Providers: make([]apitypes.ProviderStatus, 0, len(ps))}
	for _, p := range ps {
		body.Providers = append(body.Providers, apitypes.ProviderStatus{Name: p.Name, Type: p.Type, Healthy: p.Healthy, State: p.State})
	}
	if !ok {
		body.Status = "unavailable"
		a.write(w, http.StatusServiceUnavailable, body)
		return
	}
	a.write(w, http.StatusOK, body)
}

func (a *API) listProviders(w http.ResponseWriter, r *http.Request) {
	ps := a.svc.Providers(r.Context())
	out := apitypes.ProviderList{Providers: make([]apitypes.ProviderInfo, 0, len(ps))}
	for _, p := range ps {
		out.Providers = append(out.Providers, providerInfo(p))
	}
	a.write(w, http.StatusOK, out)
}

func (a *API) providerHealth(w http.ResponseWriter, r *http.Request) {
	h, err := a.svc.ProviderHealth(r.Context(), r.PathValue("name"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, providerHealth(h))
}

func (a *API) createKey(w http.ResponseWriter, r *http.Request) {
	var req apitypes.CreateKeyRequest
	if err := a.decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	k, err := a.svc.CreateKey(r.Context(), createKeyRequest(req))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/keys/"+k.ID)
	a.write(w, http.StatusCreated, keyOut(k))
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
	out := apitypes.KeyList{Keys: make([]apitypes.Key, 0, len(list.Keys)), NextPageToken: list.NextPageToken}
	for i := range list.Keys {
		out.Keys = append(out.Keys, *keyOut(&list.Keys[i]))
	}
	a.write(w, http.StatusOK, out)
}

func (a *API) getKey(w http.ResponseWriter, r *http.Request) {
	k, err := a.svc.GetKey(r.Context(), r.PathValue("key"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, keyOut(k))
}

func (a *API) deleteKey(w http.ResponseWriter, r *http.Request) {
	if err := a.svc.DeleteKey(r.Context(), r.PathValue("key")); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// keyState serves the bodiless state changes (activate, deactivate, rotate).
func (a *API) keyState(fn func(context.Context, string) (*service.Key, error)) http.HandlerFunc {
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
		a.write(w, http.StatusOK, keyOut(k))
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
	out, err := publicKeyOut(pk)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, out)
}

// keyOpFunc is one operation on a key, from its wire request (decoded by
// decode) to its wire response: the one path of a single request and of a
// batch item.
type keyOpFunc func(ctx context.Context, key string, decode func(v any) error) (any, error)

// keyOpOf makes the keyOpFunc of an operation: decode the wire request,
// translate it (in, which may refuse it), call the service, translate the
// result back (out).
func keyOpOf[Wire, Req, Res, WireRes any](in func(key string, w Wire) (Req, error),
	fn func(context.Context, Req) (Res, error), out func(Res) WireRes) keyOpFunc {
	return func(ctx context.Context, key string, decode func(v any) error) (any, error) {
		var wire Wire
		if err := decode(&wire); err != nil {
			return nil, err
		}
		req, err := in(key, wire)
		if err != nil {
			return nil, err
		}
		res, err := fn(ctx, req)
		if err != nil {
			return nil, err
		}
		return out(res), nil
	}
}

// serveKeyOp serves a keyOpFunc as a route with {key} in its path.
func (a *API) serveKeyOp(f keyOpFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		res, err := f(r.Context(), r.PathValue("key"), func(v any) error { return a.decode(w, r, v) })
		if err != nil {
			a.fail(w, r, err)
			return
		}
		a.write(w, http.StatusOK, res)
	}
}

// keyOp serves a cryptographic operation on a key (keyOpOf as a route).
func keyOp[Wire, Req, Res, WireRes any](a *API, in func(key string, w Wire) (Req, error),
	fn func(context.Context, Req) (Res, error), out func(Res) WireRes) http.HandlerFunc {
	return a.serveKeyOp(keyOpOf(in, fn, out))
}

// notFound answers routes that do not exist (404) and known paths with the
// wrong method (405 with Allow).
func (a *API) notFound(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
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
		a.fail(w, r, errMethodNotAllowed{fmt.Sprintf("%s is not allowed on %s", kgerr.Clip(r.Method), kgerr.Clip(r.URL.Path))})
		return
	}
	a.fail(w, r, kgerr.New(kgerr.KindNotFound, fmt.Sprintf("no route %s %s", kgerr.Clip(r.Method), kgerr.Clip(r.URL.Path))))
}
