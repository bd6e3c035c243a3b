package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// Cookie names. The session cookie has Path=/ui/; the sign-in form's CSRF
// cookie only Path=/ui/login.
const (
	sessionCookie = "kg_console"
	loginCookie   = "kg_console_login"
)

// maxSessions bounds the sessions kept; past it the oldest is dropped.
const maxSessions = 10000

// session is one signed-in browser. The id itself is not kept: sessions are
// found by its SHA-256.
type session struct {
	principal *auth.Principal
	csrf      string
	created   time.Time

	mu       sync.Mutex
	lastSeen time.Time
	flash    string
}

// takeFlash returns the one-time message of the session and clears it.
func (s *session) takeFlash() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.flash
	s.flash = ""
	return f
}

func (s *session) setFlash(f string) {
	s.mu.Lock()
	s.flash = f
	s.mu.Unlock()
}

// sessions are the console's sessions, in memory.
type sessions struct {
	ttl, idle time.Duration
	now       func() time.Time

	mu sync.Mutex
	m  map[[sha256.Size]byte]*session
}

func newSessions(ttl, idle time.Duration, now func() time.Time) *sessions {
	return &sessions{ttl: ttl, idle: idle, now: now, m: map[[sha256.Size]byte]*session{}}
}

// randomToken returns 32 random bytes, URL-safe base64.
func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// create makes a session for p and returns its id (for the cookie only).
func (s *sessions) create(p *auth.Principal) (string, *session) {
	id := randomToken()
	now := s.now()
	sess := &session{principal: p, csrf: randomToken(), created: now, lastSeen: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= maxSessions {
		s.sweepLocked(now)
	}
	s.m[sha256.Sum256([]byte(id))] = sess
	return id, sess
}

// get returns the live session of id, or nil; it counts as use.
func (s *sessions) get(id string) *session {
	if id == "" {
		return nil
	}
	h := sha256.Sum256([]byte(id))
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.m[h]
	if sess == nil {
		return nil
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if now.Sub(sess.created) >= s.ttl || now.Sub(sess.lastSeen) >= s.idle {
		delete(s.m, h)
		return nil
	}
	sess.lastSeen = now
	return sess
}

// delete ends the session of id.
func (s *sessions) delete(id string) {
	h := sha256.Sum256([]byte(id))
	s.mu.Lock()
	delete(s.m, h)
	s.mu.Unlock()
}

// clear ends every session.
func (s *sessions) clear() {
	s.mu.Lock()
	clear(s.m)
	s.mu.Unlock()
}

// sweepLocked drops ended sessions and, if still full, the oldest.
func (s *sessions) sweepLocked(now time.Time) {
	var oldest [sha256.Size]byte
	var oldestAt time.Time
	for h, sess := range s.m {
		sess.mu.Lock()
		last := sess.lastSeen
		ended := now.Sub(sess.created) >= s.ttl || now.Sub(last) >= s.idle
		sess.mu.Unlock()
		if ended {
			delete(s.m, h)
			continue
		}
		if oldestAt.IsZero() || last.Before(oldestAt) {
			oldest, oldestAt = h, last
		}
	}
	if len(s.m) >= maxSessions {
		delete(s.m, oldest)
	}
}

// sessionOf returns the request's live session, or nil.
func (c *Console) sessionOf(r *http.Request) (*session, string) {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, ""
	}
	return c.sessions.get(ck.Value), ck.Value
}

// setCookie sets a console cookie: HttpOnly, SameSite=Strict, Secure when
// the request came over TLS. maxAge < 0 deletes it.
func setCookie(w http.ResponseWriter, r *http.Request, name, value, path string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: path, MaxAge: maxAge,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
}

// sameToken compares two tokens in constant time (an empty one never
// matches).
func sameToken(a, b string) bool {
	return a != "" && b != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// noSession: the request carries no live session. It is not a failed
// authentication (an expired cookie, a first visit), so it is not a
// kgerr.KindUnauthenticated: it neither counts against the address's budget
// of failures nor is audited; the console sends the browser to sign in.
type noSession struct{}

func (noSession) Error() string { return "no console session" }

// errCSRF refuses a form posted without its CSRF token.
var errCSRF = kgerr.New(kgerr.KindPermissionDenied, "the form is missing its CSRF token or it does not match this session; reload the page and try again")

// checkCSRF refuses every POST but the sign-in (which has its own check)
// whose csrf field is not its session's token.
func (c *Console) checkCSRF(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead && r.URL.Path != "/ui/login" {
			sess, _ := c.sessionOf(r)
			if sess == nil {
				c.fail(w, r, noSession{})
				return
			}
			if err := r.ParseForm(); err != nil {
				c.fail(w, r, formError(err))
				return
			}
			if !sameToken(r.PostForm.Get("csrf"), sess.csrf) {
				c.fail(w, r, errCSRF)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}
