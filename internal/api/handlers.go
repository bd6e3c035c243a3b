package api

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

func (a *API) health(w http.ResponseWriter, _ *http.Request) {
	a.write(w, http.StatusOK, apitypes.Health{Status: "ok", Version: a.version, Timestamp: time.Now().UTC()})
}

func (a *API) ready(w http.ResponseWriter, r *http.Request) {
	ok, ps := a.svc.Ready(r.Context())
	body := apitypes.Ready{Status: "ok", Timestamp: time.Now().UTC(), Providers: make([]apitypes.ProviderStatus, 0, len(ps))}
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
	out.Count = len(out.Providers)
	a.write(w, http.StatusOK, out)
}

// providerInfo serves GET /api/v1/providers/{name}/info (the original
// KeyGrid API's): one provider as the list shows it.
func (a *API) providerInfo(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	for _, p := range a.svc.Providers(r.Context()) {
		if p.Name == name {
			a.write(w, http.StatusOK, providerInfo(p))
			return
		}
	}
	a.fail(w, r, kgerr.New(kgerr.KindProviderNotFound, fmt.Sprintf("provider %q is not configured", name)))
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
	in, err := createKeyRequest(req)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	k, err := a.svc.CreateKey(r.Context(), in)
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

// listKeys takes state or status (the original KeyGrid API's name; its
// "deleted" is pending_deletion here), page_token or offset.
func (a *API) listKeys(w http.ResponseWriter, r *http.Request) {
	o, err := listOptions(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	list, err := a.svc.ListKeys(r.Context(), o)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := apitypes.KeyList{Keys: make([]apitypes.Key, 0, len(list.Keys)), NextPageToken: list.NextPageToken,
		Count: len(list.Keys), Limit: o.Limit, Offset: o.Offset}
	if out.Limit == 0 {
		out.Limit = defaultListLimit
	}
	for i := range list.Keys {
		out.Keys = append(out.Keys, *keyOut(&list.Keys[i]))
	}
	a.write(w, http.StatusOK, out)
}

// defaultListLimit is the page size when a listing names none.
const defaultListLimit = 100

// listParams are the query parameters of GET /api/v1/keys; any other is
// refused (a misspelt filter must not list every key).
var listParams = []string{"provider", "state", "status", "limit", "offset", "page_token"}

func listOptions(r *http.Request) (service.ListOptions, error) {
	q := r.URL.Query()
	for name, vs := range q {
		if !slices.Contains(listParams, name) {
			return service.ListOptions{}, kgerr.Invalid(fmt.Sprintf("unknown query parameter %s (GET /api/v1/keys takes %s)",
				kgerr.Quote(name), strings.Join(listParams, ", ")))
		}
		if len(vs) > 1 {
			return service.ListOptions{}, kgerr.Invalid(fmt.Sprintf("query parameter %s is given %d times: give it once", name, len(vs)))
		}
	}
	limit, err := listLimit(q)
	if err != nil {
		return service.ListOptions{}, err
	}
	offset, err := queryInt(r, "offset")
	if err != nil {
		return service.ListOptions{}, err
	}
	state, status := q.Get("state"), q.Get("status")
	if status == "deleted" {
		status = "pending_deletion"
	}
	switch {
	case state == "":
		state = status
	case status != "" && status != state:
		return service.ListOptions{}, kgerr.Invalid("state and status (its alias) differ: send one")
	}
	for _, name := range []string{"provider", "state", "status", "page_token"} {
		if q.Has(name) && q.Get(name) == "" {
			return service.ListOptions{}, kgerr.Invalid(fmt.Sprintf("query parameter %s is empty: give a value or leave it out", name))
		}
	}
	return service.ListOptions{Provider: q.Get("provider"), State: state, Limit: limit, Offset: offset, PageToken: q.Get("page_token")}, nil
}

// listLimit is the page size a listing asks for: absent is the default (0);
// given, it must be a whole number from 1 to service.MaxListLimit.
func listLimit(q url.Values) (int, error) {
	if !q.Has("limit") {
		return 0, nil
	}
	n, err := strconv.Atoi(q.Get("limit"))
	if err != nil || n < 1 || n > service.MaxListLimit {
		return 0, kgerr.Invalid(fmt.Sprintf("query parameter limit must be a whole number from 1 to %d (default %d)", service.MaxListLimit, defaultListLimit))
	}
	return n, nil
}

func (a *API) getKey(w http.ResponseWriter, r *http.Request) {
	k, err := a.svc.GetKey(r.Context(), r.PathValue("key"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, keyOut(k))
}

// deleteKey schedules the deletion: ?pending_window_days=N (whole days) or
// ?pending_window=DURATION (any Go duration, useful when the server's floor
// is lowered); neither: the server's default window.
func (a *API) deleteKey(w http.ResponseWriter, r *http.Request) {
	if err := a.emptyBody(w, r); err != nil {
		a.fail(w, r, err)
		return
	}
	window, err := pendingWindow(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	k, err := a.svc.DeleteKey(r.Context(), service.DeleteKeyRequest{Key: r.PathValue("key"), PendingWindow: window})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	msg := fmt.Sprintf("key %s is scheduled for deletion on %s; until then, POST /api/v1/keys/%s/cancel-deletion cancels it",
		k.Name, k.DeletionDate.UTC().Format(time.RFC3339), k.ID)
	a.write(w, http.StatusOK, keyOperation(k, time.Now(), msg))
}

func pendingWindow(r *http.Request) (time.Duration, error) {
	q := r.URL.Query()
	days, dur := q.Get("pending_window_days"), q.Get("pending_window")
	switch {
	case days != "" && dur != "":
		return 0, kgerr.Invalid("send pending_window_days or pending_window, not both")
	case days != "":
		n, err := strconv.Atoi(days)
		if err != nil || n < 1 || n > 30 {
			return 0, kgerr.Invalid("pending_window_days must be a whole number of days from 1 to 30 (7 to 30 unless the server lowers its floor)")
		}
		return time.Duration(n) * 24 * time.Hour, nil
	case dur != "":
		d, err := time.ParseDuration(dur)
		if err != nil || d <= 0 {
			return 0, kgerr.Invalid(fmt.Sprintf("pending_window %q is not a positive duration like 168h", clip(dur)))
		}
		return d, nil
	}
	return 0, nil
}

// updateKey serves PATCH: the fields that may change after creation.
func (a *API) updateKey(w http.ResponseWriter, r *http.Request) {
	var body updateKeyBody
	if err := a.decode(w, r, &body); err != nil {
		a.fail(w, r, err)
		return
	}
	req, err := updateKeyRequest(r.PathValue("key"), body)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	k, err := a.svc.UpdateKey(r.Context(), req)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, keyOut(k))
}

// emptyBody refuses a body on a route that takes none (an empty JSON
// object is accepted).
func (a *API) emptyBody(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength == 0 {
		return nil
	}
	var empty struct{}
	return a.decode(w, r, &empty)
}

// keyState serves the bodiless state changes (activate, deactivate,
// cancel-deletion): the key with the original API's operation fields.
func (a *API) keyState(fn func(context.Context, string) (*service.Key, error), done string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := a.emptyBody(w, r); err != nil {
			a.fail(w, r, err)
			return
		}
		k, err := fn(r.Context(), r.PathValue("key"))
		if err != nil {
			a.fail(w, r, err)
			return
		}
		a.write(w, http.StatusOK, keyOperation(k, time.Now(), fmt.Sprintf("key %s %s; it is %s", k.Name, done, k.State)))
	}
}

// rotateKey serves POST …/rotate: the key with its new version.
func (a *API) rotateKey(w http.ResponseWriter, r *http.Request) {
	if err := a.emptyBody(w, r); err != nil {
		a.fail(w, r, err)
		return
	}
	k, err := a.svc.RotateKey(r.Context(), r.PathValue("key"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, keyOut(k))
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

// notFound answers routes that do not exist (404, pointing at the OpenAPI
// document) and known paths with the wrong method (405 with Allow).
func (a *API) notFound(w http.ResponseWriter, r *http.Request) {
	if allow := a.allowed(r); len(allow) > 0 {
		for _, m := range allow {
			w.Header().Add("Allow", m)
		}
		a.fail(w, r, errMethodNotAllowed{fmt.Sprintf("%s is not allowed on %s", kgerr.Clip(r.Method), kgerr.Clip(r.URL.Path))})
		return
	}
	a.fail(w, r, kgerr.New(kgerr.KindNotFound, fmt.Sprintf("no route %s %s: the routes are in the OpenAPI document, GET %s",
		kgerr.Clip(r.Method), kgerr.Clip(r.URL.Path), openAPIPath)))
}

// allowed lists the methods a route has for the request's path (none: the
// path is no route's).
func (a *API) allowed(r *http.Request) []string {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, p := a.mux.Handler(r2); p != "/" && p != "" {
			allow = append(allow, m)
		}
	}
	return allow
}
