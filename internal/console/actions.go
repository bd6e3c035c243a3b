package console

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// Every change is made by the service call the REST API makes for it, with
// the signed-in principal in the context: the service authorizes it (role
// and scope) and audits it. Each is posted from a confirmation form that
// names the key and wants its name typed again.

type specOption struct{ Value, Label string }

type providerSpecs struct {
	Name  string
	Specs []specOption
}

type newKeyData struct {
	Providers []providerSpecs
	Usages    []string
	Error     string
	// The values posted, shown again after a refusal.
	Form map[string]string
	Use  map[string]bool
}

var usages = []string{"sign", "verify", "encrypt", "decrypt", "wrap", "unwrap"}

// specOptions lists the key specs a provider makes, as "TYPE:size" or
// "EC:curve".
func specOptions(p service.ProviderInfo) []specOption {
	var out []specOption
	for _, kt := range p.Capabilities.KeyTypes {
		switch {
		case len(kt.Curves) > 0:
			for _, cv := range kt.Curves {
				out = append(out, specOption{string(kt.Type) + ":" + cv, string(kt.Type) + " " + cv})
			}
		case len(kt.Sizes) > 0:
			for _, n := range kt.Sizes {
				out = append(out, specOption{fmt.Sprintf("%s:%d", kt.Type, n), fmt.Sprintf("%s %d", kt.Type, n)})
			}
		default:
			out = append(out, specOption{string(kt.Type) + ":", string(kt.Type)})
		}
	}
	return out
}

func (c *Console) newKeyData(r *http.Request) newKeyData {
	d := newKeyData{Usages: usages, Form: map[string]string{}, Use: map[string]bool{}}
	for _, p := range c.svc.Providers(r.Context()) {
		d.Providers = append(d.Providers, providerSpecs{Name: p.Name, Specs: specOptions(p)})
	}
	return d
}

func (c *Console) newKeyPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "newkey", page{Title: "Create a key", Nav: "keys", Data: c.newKeyData(r)})
}

// createKey creates the key the form describes, once its name is typed
// again in the confirmation field.
func (c *Console) createKey(w http.ResponseWriter, r *http.Request) {
	f := r.PostForm
	req, err := createRequest(f.Get("provider_spec"), f.Get("name"), f.Get("confirm"), f["usage"], f.Get("description"), f.Get("metadata"), f.Get("expires"))
	if err == nil {
		var k *service.Key
		if k, err = c.svc.CreateKey(r.Context(), req); err == nil {
			c.flash(r, fmt.Sprintf("Key %s created (version %d).", k.Name, k.Version))
			http.Redirect(w, r, Prefix+"keys/"+k.ID, http.StatusSeeOther)
			return
		}
	}
	e := kgerr.Classify(err)
	d := c.newKeyData(r)
	for _, n := range []string{"provider_spec", "name", "description", "metadata", "expires"} {
		d.Form[n] = f.Get(n)
	}
	for _, u := range f["usage"] {
		d.Use[u] = true
	}
	d.Error = e.Message
	status, ok := statusOf[e.Kind]
	if !ok {
		status = http.StatusInternalServerError
	}
	c.render(w, r, status, "newkey", page{Title: "Create a key", Nav: "keys", Data: d})
}

// createRequest reads the create form: "provider|TYPE:size" names the
// provider and the spec; metadata is one key=value a line; expires is a
// date (YYYY-MM-DD, the end of that day UTC) or RFC 3339 time.
func createRequest(providerSpec, name, confirm string, usage []string, description, metadata, expires string) (service.CreateKeyRequest, error) {
	var req service.CreateKeyRequest
	name = strings.TrimSpace(name)
	if name == "" {
		return req, kgerr.Invalid("enter the key's name")
	}
	if strings.TrimSpace(confirm) != name {
		return req, kgerr.Invalid(fmt.Sprintf("to create %s, type its name again in the confirmation field", kgerr.Quote(name)))
	}
	prov, spec, ok := strings.Cut(providerSpec, "|")
	typ, size, ok2 := strings.Cut(spec, ":")
	if !ok || !ok2 || prov == "" || typ == "" {
		return req, kgerr.Invalid("choose a provider and a key type")
	}
	req.Provider, req.Name, req.Description = prov, name, description
	req.Spec.KeyType = typ
	if size != "" {
		if n, err := strconv.Atoi(size); err == nil {
			req.Spec.KeySize = n
		} else {
			req.Spec.Curve = size
		}
	}
	for _, u := range usage {
		if !contains(usages, u) {
			return req, kgerr.Invalid(fmt.Sprintf("usage %s is not one of %s", kgerr.Quote(u), strings.Join(usages, ", ")))
		}
	}
	req.Spec.Usage = usage
	if len(req.Spec.Usage) == 0 {
		req.Spec.Usage = nil // the key type's default
	}
	for i, line := range strings.Split(metadata, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return req, kgerr.Invalid(fmt.Sprintf("metadata line %d is not key=value", i+1))
		}
		if req.Metadata == nil {
			req.Metadata = map[string]string{}
		}
		req.Metadata[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	if expires = strings.TrimSpace(expires); expires != "" {
		t, err := time.Parse(time.RFC3339, expires)
		if err != nil {
			d, derr := time.Parse("2006-01-02", expires)
			if derr != nil {
				return req, kgerr.Invalid("the expiry is not a date (YYYY-MM-DD) or an RFC 3339 time")
			}
			t = d.Add(24*time.Hour - time.Second)
		}
		t = t.UTC()
		req.ExpiresAt = &t
	}
	return req, nil
}

type confirmData struct {
	Key    *service.Key
	Action keyAction
	Error  string
	// Deletion: the window asked for, in days, and the floor.
	WindowDays string
	MinWindow  string
}

// actionOf is the keyAction of a path segment.
func actionOf(name string) (keyAction, bool) {
	for _, a := range actions {
		if a.Action == name {
			return a.keyAction, true
		}
	}
	return keyAction{}, false
}

// confirmPage asks to confirm an action on a key, naming it.
func (c *Console) confirmPage(w http.ResponseWriter, r *http.Request) {
	a, ok := actionOf(r.PathValue("action"))
	if !ok {
		c.notFound(w, r)
		return
	}
	k, err := c.svc.GetKey(r.Context(), r.PathValue("key"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.renderConfirm(w, r, http.StatusOK, confirmData{Key: k, Action: a, WindowDays: "30"})
}

func (c *Console) renderConfirm(w http.ResponseWriter, r *http.Request, status int, d confirmData) {
	if c.minWindow > 0 {
		d.MinWindow = c.minWindow.String()
	}
	c.render(w, r, status, "confirm", page{Title: d.Action.Label + " " + d.Key.Name, Nav: "keys", Data: d})
}

// keyAction makes a confirmed change through the service.
func (c *Console) keyAction(w http.ResponseWriter, r *http.Request) {
	a, ok := actionOf(r.PathValue("action"))
	if !ok {
		c.notFound(w, r)
		return
	}
	ctx := r.Context()
	k, err := c.svc.GetKey(ctx, r.PathValue("key"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	d := confirmData{Key: k, Action: a, WindowDays: r.PostForm.Get("window_days")}
	if r.PostForm.Get("confirm") != k.Name {
		d.Error = fmt.Sprintf("type the key's name, %s, to confirm", k.Name)
		c.renderConfirm(w, r, http.StatusBadRequest, d)
		return
	}
	var out *service.Key
	switch a.Action {
	case "rotate":
		out, err = c.svc.RotateKey(ctx, k.ID)
	case "deactivate":
		out, err = c.svc.DeactivateKey(ctx, k.ID)
	case "activate":
		out, err = c.svc.ActivateKey(ctx, k.ID)
	case "cancel-deletion":
		out, err = c.svc.CancelDeletion(ctx, k.ID)
	case "schedule-deletion":
		var window time.Duration
		if window, err = windowOf(d.WindowDays); err == nil {
			out, err = c.svc.DeleteKey(ctx, service.DeleteKeyRequest{Key: k.ID, PendingWindow: window})
		}
	}
	if err != nil {
		e := kgerr.Classify(err)
		if e.Kind == kgerr.KindPermissionDenied || e.Kind == kgerr.KindRateLimited {
			c.fail(w, r, err)
			return
		}
		d.Error = e.Message
		status, ok := statusOf[e.Kind]
		if !ok {
			status = http.StatusInternalServerError
		}
		c.renderConfirm(w, r, status, d)
		return
	}
	c.flash(r, actionDone(a.Action, out))
	http.Redirect(w, r, Prefix+"keys/"+out.ID, http.StatusSeeOther)
}

// windowOf reads a deletion window in days (fractions allowed; empty: the
// service's default).
func windowOf(days string) (time.Duration, error) {
	days = strings.TrimSpace(days)
	if days == "" {
		return 0, nil
	}
	f, err := strconv.ParseFloat(days, 64)
	if err != nil || f <= 0 || f > 30 {
		return 0, kgerr.Invalid("the deletion window is a number of days between 0 and 30")
	}
	return time.Duration(f * float64(24*time.Hour)).Round(time.Second), nil
}

func actionDone(action string, k *service.Key) string {
	switch action {
	case "rotate":
		return fmt.Sprintf("Key %s rotated: version %d is current.", k.Name, k.Version)
	case "schedule-deletion":
		return fmt.Sprintf("Key %s is scheduled for deletion on %s.", k.Name, funcs["time"].(func(any) string)(k.DeletionDate))
	case "cancel-deletion":
		return fmt.Sprintf("Deletion of key %s cancelled: the key is inactive.", k.Name)
	}
	return fmt.Sprintf("Key %s is %s.", k.Name, k.State)
}

// flash leaves a message for the next page of the request's session.
func (c *Console) flash(r *http.Request, msg string) {
	if sess, _ := c.sessionOf(r); sess != nil {
		sess.setFlash(msg)
	}
}
