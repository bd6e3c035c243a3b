// Package xks is KeyGrid HSM's AWS KMS External Key Store (XKS) proxy: the
// front end that lets AWS KMS use AES keys kept by the gateway (in the
// software keystore or any PKCS#11 HSM) through the XKS Proxy API
// (specification v1.0.3): GetKeyMetadata, Encrypt, Decrypt and
// GetHealthStatus, signed with SigV4.
//
// A request goes through these steps, each answered with the
// specification's error when it fails: route on the raw path to a store
// (InvalidUriPathException, before any authentication; 405 for anything but
// POST) → read the body (capped) → SigV4 and, when configured, the TLS
// client's name (AuthenticationFailedException) → decode and validate
// (ValidationException) → the store's quota (ThrottlingException) → the key:
// a gateway AES key the store's patterns name (KeyNotFoundException) → the
// store's policy on the request metadata (AccessDeniedException; health is
// exempt) → this proxy's size limits (UnsupportedOperationException) → the
// key service, whose errors map through one table (errors.go).
//
// The key service does the work under the store's own principal (the
// operator role scoped to the store's key patterns), so its authorization,
// state, usage and audit apply. Every call is one audit record carrying the
// store, kmsRequestId, kmsOperation, awsPrincipalArn, kmsKeyArn and the
// errorName (an encrypt asked for a ciphertextDataIntegrityValue adds the
// record of its verification decrypt).
//
// The handler needs from outside only what every front end shares: a
// request id (the X-Request-Id response header, when the stack in front
// set one), a deadline on the request context and, optionally, a body cap.
package xks

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/httpstack"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/metrics"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// Service is what the XKS front end needs of the key service.
type Service interface {
	GetKey(ctx context.Context, ref string) (*service.Key, error)
	Encrypt(ctx context.Context, req service.EncryptRequest) (*service.EncryptResult, error)
	Decrypt(ctx context.Context, req service.DecryptRequest) (*service.DecryptResult, error)
	Providers(ctx context.Context) []service.ProviderInfo
	ProviderHealth(ctx context.Context, name string) (*service.ProviderHealth, error)
	ProbeAESGCM(ctx context.Context, name string) error
	Record(ctx context.Context, operation string, key *service.Key, start time.Time, err error) error
	AuthenticationFailed(ctx context.Context, detail string)
}

// Options configure the handler.
type Options struct {
	Service Service
	Stores  []config.XKSStore
	// Getenv reads secret_access_key_env variables (default os.Getenv).
	Getenv func(string) string
	// Metrics is where the XKS metrics are registered (nil: none).
	Metrics *metrics.Metrics
	Logger  *slog.Logger
	Version string
	// Now is the clock (SigV4's ±5 minutes; tests); default time.Now.
	Now func() time.Time
	// ProbeTTL is how long a deep health probe's result is reused
	// (default 10 s; at most a minute).
	ProbeTTL time.Duration
}

// Handler serves the XKS routes of every configured store.
type Handler struct {
	svc     Service
	stores  []*store
	verify  *verifier
	probe   *prober
	metrics *xksMetrics
	log     *slog.Logger
	version string
	now     func() time.Time
}

// New builds the handler, reading each credential's secret. Errors name
// the configuration field.
func New(o Options) (*Handler, error) {
	if o.Service == nil {
		return nil, errors.New("xks: a service is required")
	}
	h := &Handler{svc: o.Service, log: o.Logger, version: o.Version, now: o.Now}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.now == nil {
		h.now = time.Now
	}
	for i, c := range o.Stores {
		s, err := newStore(i, c, o.Getenv)
		if err != nil {
			return nil, err
		}
		h.stores = append(h.stores, s)
	}
	sortStores(h.stores)
	h.verify = newVerifier(h.now)
	h.probe = newProber(o.Service, o.ProbeTTL, h.now)
	m, err := newMetrics(o.Metrics)
	if err != nil {
		return nil, err
	}
	h.metrics = m
	return h, nil
}

// Matches reports whether a request is for the XKS front end: its raw path
// has the XKS API's path in it.
func Matches(r *http.Request) bool { return strings.Contains(r.URL.EscapedPath(), apiPath) }

// call is one request on its way through the handler.
type call struct {
	rid   string
	start time.Time
	st    *store
	op    string
	keyID string
	req   *request
	key   *service.Key // once loaded
	// audited is set once a record of the call is written (or the service
	// wrote one).
	audited bool
	status  int
	errName string
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := &call{rid: httpstack.RequestID(r.Context()), start: h.now()}
	resp, err := h.serve(r, c)
	if err != nil {
		c.status, c.errName = statusOf(err), ErrorName(err)
		if c.status == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", http.MethodPost)
		}
		h.logFailure(r, c, err)
		writeJSON(w, c.status, errorBody{ErrorName: c.errName, ErrorMessage: publicMessage(err)})
	} else {
		c.status = http.StatusOK
		writeJSON(w, c.status, resp)
	}
	h.observe(r, c)
}

// serve takes a request through the steps of the package comment.
func (h *Handler) serve(r *http.Request, c *call) (any, error) {
	st, op, keyID, err := h.route(r)
	if err != nil {
		return nil, err
	}
	c.st, c.op, c.keyID = st, op, keyID
	if r.Method != http.MethodPost {
		return nil, errMethodNotAllowed
	}
	attrs := map[string]string{"store": st.cfg.Name}
	caller := service.Caller{RequestID: c.rid, ClientRequestID: service.CallerFrom(r.Context()).ClientRequestID, ClientAddr: r.RemoteAddr, Attributes: attrs, ErrorName: ErrorName}
	ctx := service.WithCaller(r.Context(), caller)
	raw, err := readBody(r)
	if err == nil {
		var akid string
		akid, err = h.authenticate(r, st, raw)
		if akid != "" {
			attrs["accessKeyId"] = akid
		}
	}
	if err != nil {
		if kgerr.KindOf(err) == kgerr.KindUnauthenticated {
			h.svc.AuthenticationFailed(ctx, kgerr.Classify(err).Message)
			c.audited = true
		}
		return nil, err
	}
	caller.Principal, caller.Auth = st.principal.Name, st.principal
	ctx = service.WithCaller(r.Context(), caller)
	resp, err := h.dispatch(ctx, c, raw, attrs)
	if !c.audited {
		k := c.key
		if k == nil && c.keyID != "" {
			k = &service.Key{Name: c.keyID} // the key asked for
		}
		if aerr := h.svc.Record(ctx, auditOperation(op), k, c.start, err); aerr != nil && err == nil {
			return nil, aerr
		}
	}
	return resp, err
}

// dispatch decodes the body, applies the quota and runs the operation.
// attrs (the audit record's attributes) receive the request metadata.
func (h *Handler) dispatch(ctx context.Context, c *call, raw []byte, attrs map[string]string) (any, error) {
	req, err := decode(c.op, raw)
	c.req = req
	req.md.attributes(attrs)
	if err != nil {
		return nil, err
	}
	if err := c.st.allow(); err != nil {
		return nil, err
	}
	if c.op == opHealth {
		if req.tooLarge != nil {
			return nil, req.tooLarge
		}
		return h.fleet(ctx)
	}
	k, err := h.key(ctx, c)
	if err != nil {
		return nil, err
	}
	c.key = k
	if err := c.st.authorize(req.md); err != nil {
		return nil, err
	}
	if req.tooLarge != nil {
		return nil, req.tooLarge
	}
	switch c.op {
	case opMetadata:
		return metadataOf(k, h.now()), nil
	case opEncrypt:
		return h.encrypt(ctx, c, k)
	}
	return h.decrypt(ctx, c, k)
}

// authenticate checks the TLS client's name, when the store wants one, and
// the SigV4 signature. It returns the access key id that signed.
func (h *Handler) authenticate(r *http.Request, st *store, body []byte) (string, error) {
	if want := st.cfg.RequireClientName; want != "" && !clientNamed(r, want) {
		return "", kgerr.New(kgerr.KindUnauthenticated, "the TLS client certificate does not name "+want)
	}
	return h.verify.verify(r, body, st.secrets, st.cfg.Region)
}

// clientNamed reports whether the verified TLS client certificate carries
// name as a DNS SAN or its subject CN.
func clientNamed(r *http.Request, name string) bool {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return false
	}
	leaf := r.TLS.VerifiedChains[0][0]
	for _, n := range leaf.DNSNames {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return strings.EqualFold(leaf.Subject.CommonName, name)
}

// auditOperation names an XKS operation in the audit log: encrypt and
// decrypt as the service's, the others as the proxy's own.
func auditOperation(op string) string {
	switch op {
	case opEncrypt, opDecrypt:
		return op
	}
	return "xks_" + op
}

// route finds the store and operation of a request from its raw path.
func (h *Handler) route(r *http.Request) (st *store, op, keyID string, err error) {
	p := r.URL.EscapedPath()
	if r.URL.RawQuery != "" || r.URL.ForceQuery {
		return nil, "", "", kgerr.New(kgerr.KindNotFound, "XKS URIs have no query")
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("/_-.", c)) {
			return nil, "", "", kgerr.New(kgerr.KindNotFound, "the URI path has characters XKS paths do not have")
		}
	}
	for _, s := range h.stores {
		for _, b := range s.bases {
			rest, ok := strings.CutPrefix(p, b)
			if !ok {
				continue
			}
			if rest == opHealth {
				return s, opHealth, "", nil
			}
			f := strings.Split(rest, "/")
			if len(f) == 3 && f[0] == "keys" && f[1] != "" {
				switch f[2] {
				case opMetadata, opEncrypt, opDecrypt:
					return s, f[2], f[1], nil
				}
			}
			return nil, "", "", kgerr.New(kgerr.KindNotFound, "no XKS operation at this path")
		}
	}
	return nil, "", "", kgerr.New(kgerr.KindNotFound, "no external key store at this path")
}

// key loads the gateway key the request names: an AES key the store
// serves, or KeyNotFoundException.
func (h *Handler) key(ctx context.Context, c *call) (*service.Key, error) {
	notFound := kgerr.New(kgerr.KindKeyNotFound, "store "+c.st.cfg.Name+" has no key "+kgerr.Clip(c.keyID))
	if !c.st.serves(c.keyID) {
		return nil, notFound
	}
	k, err := h.svc.GetKey(ctx, c.keyID)
	switch {
	case errors.Is(err, kgerr.ErrKeyNotFound):
		return nil, notFound
	case err != nil:
		return nil, err
	case k.Name != c.keyID || k.KeyType != "AES" || (k.State != "active" && k.State != "inactive"):
		// An id (not a name), another type, or a key being made or
		// destroyed.
		return nil, notFound
	}
	return k, nil
}

// writeJSON writes one line of JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"errorName":"InternalException"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// FrontEnd is what the XKS proxy plugs into the shared HTTP stack
// (request id, caller, panic recovery, metrics, access log, deadline, body
// cap): its error format and its route labels. Its requests are not
// authenticated by the stack: SigV4 covers the body and names the store,
// so the handler checks it after routing, as the specification orders the
// checks, and audits a refusal with the store.
func (h *Handler) FrontEnd() httpstack.FrontEnd {
	return httpstack.FrontEnd{
		Name: "xks",
		Fail: func(w http.ResponseWriter, _ *http.Request, err error) {
			writeJSON(w, statusOf(err), errorBody{ErrorName: ErrorName(err), ErrorMessage: publicMessage(err)})
		},
		Route: func(r *http.Request) string {
			if _, op, _, err := h.route(r); err == nil {
				return "xks " + op
			}
			return ""
		},
		Protected: func(*http.Request, string) bool { return false },
	}
}
