package console

import (
	"errors"
	"net/http"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/httpstack"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// Operations of the audit records the console writes itself.
const (
	OpSignIn  = "console_sign_in"
	OpSignOut = "console_sign_out"
)

// authenticate finds the principal of a console request: for the sign-in
// form, by the token it posts (the API's authenticator: a refusal is a
// KindUnauthenticated error, which the stack audits and counts against the
// address's budget of failures, as for the API); for every other request,
// by its session.
func (c *Console) authenticate(r *http.Request) (*auth.Principal, error) {
	if r.Method == http.MethodPost && r.URL.Path == "/ui/login" {
		return c.signInPrincipal(r)
	}
	sess, _ := c.sessionOf(r)
	if sess == nil {
		return nil, noSession{}
	}
	return sess.principal, nil
}

// signInPrincipal checks the sign-in form: its CSRF token first (a form
// posted from elsewhere is refused before its token is looked at), then the
// token.
func (c *Console) signInPrincipal(r *http.Request) (*auth.Principal, error) {
	if err := r.ParseForm(); err != nil {
		return nil, formError(err)
	}
	ck, err := r.Cookie(loginCookie)
	if err != nil || !sameToken(ck.Value, r.PostForm.Get("csrf")) {
		return nil, errCSRF
	}
	authn := c.auth.Load()
	if authn == nil {
		return nil, kgerr.Wrap(kgerr.KindUnauthenticated, auth.ErrBadToken, "sign-in failed: the token is not valid")
	}
	p, err := authn.Authenticate(r.PostForm.Get("token"), httpstack.VerifiedChains(r))
	if err == nil {
		return p, nil
	}
	msg := "sign-in failed: the token is not valid"
	switch {
	case errors.Is(err, auth.ErrNoCredential):
		msg = "sign-in failed: enter an API token"
	case errors.Is(err, auth.ErrMismatch):
		msg = "sign-in failed: the token and the client certificate belong to different principals"
	}
	return nil, kgerr.Wrap(kgerr.KindUnauthenticated, err, msg)
}

// formError is the error of a form that cannot be read.
func formError(err error) error {
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		return kgerr.Wrap(kgerr.KindTooLarge, err, "the form is too large")
	}
	return kgerr.Wrap(kgerr.KindInvalidInput, err, "the form cannot be read")
}

type loginData struct {
	CSRF  string
	Error string
}

// loginPage shows the sign-in form with a fresh CSRF token of its own.
func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if sess, _ := c.sessionOf(r); sess != nil {
		http.Redirect(w, r, Prefix, http.StatusSeeOther)
		return
	}
	c.renderLogin(w, r, http.StatusOK, "")
}

func (c *Console) renderLogin(w http.ResponseWriter, r *http.Request, status int, msg string) {
	tok := randomToken()
	setCookie(w, r, loginCookie, tok, "/ui/login", 600)
	c.render(w, r, status, "login", page{Title: "Sign in", Data: loginData{CSRF: tok, Error: msg}})
}

// login makes a session for the principal the stack authenticated from the
// posted token, audits the sign-in and goes to the overview.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	p := service.CallerFrom(r.Context()).Auth
	if p == nil {
		c.fail(w, r, kgerr.New(kgerr.KindInternal, "internal error"))
		return
	}
	if err := c.svc.RecordEvent(r.Context(), OpSignIn, "signed in to the console ("+string(p.Role)+")", nil); err != nil {
		c.fail(w, r, err) // not audited: not signed in
		return
	}
	if _, old := c.sessionOf(r); old != "" {
		c.sessions.delete(old)
	}
	id, _ := c.sessions.create(p)
	setCookie(w, r, sessionCookie, id, Prefix, int(c.sessions.ttl.Seconds()))
	setCookie(w, r, loginCookie, "", "/ui/login", -1)
	http.Redirect(w, r, Prefix, http.StatusSeeOther)
}

// logout ends the session (its CSRF token checked) and audits it.
func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	if _, id := c.sessionOf(r); id != "" {
		c.sessions.delete(id)
	}
	setCookie(w, r, sessionCookie, "", Prefix, -1)
	if err := c.svc.RecordEvent(r.Context(), OpSignOut, "signed out of the console", nil); err != nil {
		c.log.Warn("console sign-out not audited", "request_id", httpstack.RequestID(r.Context()), "err", err)
	}
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}
