package console

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/httpstack"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// page is what every template gets: the layout's parts and the page's own
// Data.
type page struct {
	Title     string
	Nav       string // the current section: overview, keys, audit
	Principal *auth.Principal
	CanAudit  bool   // the principal may read audit records (auth.ActionAuditRead)
	CSRF      string // the session's CSRF token, for every form
	Flash     string
	RequestID string
	Version   string
	Data      any
}

// pages are the parsed templates, each with the layout.
type pages struct{ t map[string]*template.Template }

var pageNames = []string{"login", "overview", "keys", "key", "newkey", "confirm", "audit", "error"}

var funcs = template.FuncMap{
	"time": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			if v.IsZero() {
				return ""
			}
			return v.UTC().Format("2006-01-02 15:04:05Z")
		case *time.Time:
			if v == nil {
				return ""
			}
			return v.UTC().Format("2006-01-02 15:04:05Z")
		}
		return ""
	},
	"join": strings.Join,
	"sorted": func(m map[string]any) []kv {
		out := make([]kv, 0, len(m))
		for k, v := range m {
			out = append(out, kv{k, fmt.Sprint(v)})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].K < out[j].K })
		return out
	},
	"sortedStr": func(m map[string]string) []kv {
		out := make([]kv, 0, len(m))
		for k, v := range m {
			out = append(out, kv{k, v})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].K < out[j].K })
		return out
	},
	"path": url.PathEscape,
	"stateClass": func(s string) string {
		switch s {
		case "active", "healthy", "success":
			return "ok"
		case "pending_deletion", "deleting", "unavailable", "failure", "denied":
			return "bad"
		}
		return "warn"
	},
}

type kv struct{ K, V string }

func parsePages() (*pages, error) {
	p := &pages{t: map[string]*template.Template{}}
	for _, n := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/records.html", "templates/"+n+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", n, err)
		}
		p.t[n] = t
	}
	return p, nil
}

// render writes a page, with the layout filled from the request's session.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, pg page) {
	if sess, _ := c.sessionOf(r); sess != nil {
		pg.Principal, pg.CSRF = sess.principal, sess.csrf
		pg.CanAudit = sess.principal.Can(auth.ActionAuditRead)
		if pg.Flash == "" {
			pg.Flash = sess.takeFlash()
		}
	}
	pg.RequestID, pg.Version = httpstack.RequestID(r.Context()), c.version
	var b bytes.Buffer
	if err := c.pages.t[name].Execute(&b, pg); err != nil {
		c.log.Error("console: rendering a page failed", "page", name, "request_id", pg.RequestID, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

// statusOf is the console's table from error kind to HTTP status.
var statusOf = map[kgerr.Kind]int{
	kgerr.KindInvalidInput:         http.StatusBadRequest,
	kgerr.KindUnsupportedAlgorithm: http.StatusBadRequest,
	kgerr.KindUsageNotPermitted:    http.StatusBadRequest,
	kgerr.KindDecryptionFailed:     http.StatusBadRequest,
	kgerr.KindTooLarge:             http.StatusRequestEntityTooLarge,
	kgerr.KindUnauthenticated:      http.StatusUnauthorized,
	kgerr.KindPermissionDenied:     http.StatusForbidden,
	kgerr.KindRateLimited:          http.StatusTooManyRequests,
	kgerr.KindKeyNotFound:          http.StatusNotFound,
	kgerr.KindProviderNotFound:     http.StatusNotFound,
	kgerr.KindNotFound:             http.StatusNotFound,
	kgerr.KindAlreadyExists:        http.StatusConflict,
	kgerr.KindKeyInactive:          http.StatusConflict,
	kgerr.KindKeyExpired:           http.StatusConflict,
	kgerr.KindKeyPendingDeletion:   http.StatusConflict,
	kgerr.KindKeyVersionDisabled:   http.StatusConflict,
	kgerr.KindConflict:             http.StatusConflict,
	kgerr.KindKeyNotExtractable:    http.StatusConflict,
	kgerr.KindUnavailable:          http.StatusServiceUnavailable,
	kgerr.KindTimeout:              http.StatusGatewayTimeout,
	kgerr.KindInternal:             http.StatusInternalServerError,
}

type errorData struct {
	Status  int
	Code    kgerr.Kind
	Message string
}

// fail answers an error with the error page (its public message only, never
// the cause). A request without a session goes to the sign-in page; a
// refused sign-in shows the sign-in form again.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.As(err, new(noSession)) {
		if r.Method == http.MethodGet {
			http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
			return
		}
		err = kgerr.New(kgerr.KindUnauthenticated, "your console session has ended: sign in again")
	}
	e := kgerr.Classify(err)
	status, ok := statusOf[e.Kind]
	if !ok {
		status = http.StatusInternalServerError
	}
	if e.RetryAfter > 0 {
		httpstack.SetRetryAfter(w, e.RetryAfter)
	}
	if status >= 500 {
		c.log.Warn("console request failed", "request_id", httpstack.RequestID(r.Context()), "kind", e.Kind, "err", err)
	}
	if r.Method == http.MethodPost && r.URL.Path == "/ui/login" && e.Kind != kgerr.KindInternal {
		c.renderLogin(w, r, status, e.Message)
		return
	}
	c.render(w, r, status, "error", page{Title: http.StatusText(status), Data: errorData{Status: status, Code: e.Kind, Message: e.Message}})
}

func (c *Console) notFound(w http.ResponseWriter, r *http.Request) {
	c.fail(w, r, kgerr.New(kgerr.KindNotFound, "no such page in the console"))
}
