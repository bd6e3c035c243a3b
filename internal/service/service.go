// Package service is the key service: key lifecycle and policy (names,
// states, versions, usage, expiry), on top of the metadata store and the
// providers, with an audit record and metrics for every state change and
// every operation.
//
// The service holds no per-key locks: every change is a compare-and-swap on
// the key's revision in the store, so several gateway processes can share one
// store. Key material is made in three steps — a pending record (which
// reserves the name and the provider object id), the provider's create, and
// the record's activation — and a background reconciler finishes or undoes
// what a crash left between them.
package service

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"sync"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/metrics"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// Options configure a Service.
type Options struct {
	Store     store.Store
	Providers []provider.Provider
	// DefaultProvider is used when a create names none; empty means the
	// only provider, or "software".
	DefaultProvider string
	Audit           audit.Recorder
	Metrics         *metrics.Metrics
	Logger          *slog.Logger
	// ReconcileGrace is how old a pending or deleting record must be before
	// the reconciler touches it (default 2 minutes): younger ones may still
	// be in the hands of a live request, here or on another gateway.
	ReconcileGrace time.Duration
	// HealthTimeout bounds one provider health check (default 3 s).
	HealthTimeout time.Duration
	// DeletionWindow is how long a deleted key waits before it is destroyed
	// when the request names no window (default 30 days);
	// MinDeletionWindow is the shortest window allowed (default 7 days;
	// lowered for development and tests).
	DeletionWindow    time.Duration
	MinDeletionWindow time.Duration
	// MinRotationPeriod is the shortest automatic rotation period allowed
	// (default 1 hour).
	MinRotationPeriod time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Service is the key service. It is safe for concurrent use.
type Service struct {
	store     store.Store
	providers map[string]provider.Provider
	names     []string
	defProv   string
	audit     audit.Recorder
	metrics   *metrics.Metrics
	log       *slog.Logger
	grace     time.Duration
	healthTO  time.Duration
	now       func() time.Time

	deletionWindow, minDeletionWindow, minRotationPeriod time.Duration

	health map[string]*providerHealth

	pubMu   sync.RWMutex
	pubKeys map[string]crypto.PublicKey // object id → parsed public key (immutable)

	probeMu   sync.Mutex
	probeRefs map[string]string // provider → reference of its probe key (probe.go)
}

// New makes a Service.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.Audit == nil || o.Metrics == nil {
		return nil, errors.New("service: store, audit and metrics are required")
	}
	s := &Service{
		store: o.Store, providers: map[string]provider.Provider{}, audit: o.Audit, metrics: o.Metrics,
		log: o.Logger, grace: o.ReconcileGrace, healthTO: o.HealthTimeout, now: o.Now,
		pubKeys: map[string]crypto.PublicKey{}, health: map[string]*providerHealth{},
		deletionWindow: o.DeletionWindow, minDeletionWindow: o.MinDeletionWindow, minRotationPeriod: o.MinRotationPeriod,
	}
	if err := s.lifecycleDefaults(); err != nil {
		return nil, err
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.grace == 0 {
		s.grace = 2 * time.Minute
	}
	if s.healthTO == 0 {
		s.healthTO = 3 * time.Second
	}
	if s.now == nil {
		s.now = time.Now
	}
	for _, p := range o.Providers {
		if _, dup := s.providers[p.Name()]; dup {
			return nil, fmt.Errorf("service: two providers named %q", p.Name())
		}
		s.providers[p.Name()] = p
		s.names = append(s.names, p.Name())
		s.health[p.Name()] = newProviderHealth(p, s.now())
	}
	sort.Strings(s.names)
	if err := o.Metrics.Registry.Register(providerCollector{s}); err != nil {
		return nil, err
	}
	s.defProv = o.DefaultProvider
	if s.defProv == "" {
		if len(s.names) == 1 {
			s.defProv = s.names[0]
		} else {
			s.defProv = "software"
		}
	}
	return s, nil
}

// Provider returns the provider named name.
func (s *Service) Provider(name string) (provider.Provider, bool) {
	p, ok := s.providers[name]
	return p, ok
}

// ProviderNames lists the providers, sorted.
func (s *Service) ProviderNames() []string { return s.names }

// Close closes the providers (the caller closes the store and audit log).
func (s *Service) Close() error {
	var errs []error
	for _, n := range s.names {
		if err := s.providers[n].Close(); err != nil {
			errs = append(errs, fmt.Errorf("provider %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// Caller describes who makes a request; the API layer puts it in the
// context.
type Caller struct {
	// RequestID is the server's id of the request: the id of its audit
	// records.
	RequestID string
	// ClientRequestID is the id the client sent, if valid, recorded
	// beside the server's (never instead of it).
	ClientRequestID string
	ClientAddr      string
	Principal       string
	// Auth is the authenticated principal the service authorizes (nil:
	// nothing is allowed).
	Auth *auth.Principal
	// Attributes are facts a front end adds about the request in its own
	// protocol's terms (the XKS proxy: store, kmsRequestId, …); every audit
	// record of the request carries them. Never a secret or plaintext.
	Attributes map[string]string
	// ErrorName, when set, names a failed request's error in the front
	// end's own vocabulary (the XKS proxy: its errorName); audit records
	// carry it beside the error kind.
	ErrorName func(error) string
}

// event starts the audit record of a request of c: who, from where, and
// the front end's attributes.
func (c Caller) event(t time.Time, operation string) audit.Event {
	return audit.Event{Time: t.UTC(), RequestID: c.RequestID, ClientRequestID: c.ClientRequestID, Principal: c.Principal, ClientAddr: c.ClientAddr,
		Operation: operation, Outcome: audit.OutcomeSuccess, Attributes: c.Attributes}
}

// fail marks e failed with err: outcome, kind and the front end's name.
func (c Caller) fail(e *audit.Event, err error) {
	e.Outcome, e.ErrorCode = outcomeOf(err), string(kgerr.KindOf(err))
	if c.ErrorName != nil {
		e.ErrorName = c.ErrorName(err)
	}
}

type callerKey struct{}

// WithCaller returns ctx carrying c.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// WithCallerRef returns ctx carrying *c: changes to c before the request
// reaches the service are seen through ctx (an HTTP stack fills in the
// principal once it is authenticated, without another context). c must
// not change once the context is used by more than one goroutine.
func WithCallerRef(ctx context.Context, c *Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the caller in ctx.
func CallerFrom(ctx context.Context) Caller {
	switch c := ctx.Value(callerKey{}).(type) {
	case Caller:
		return c
	case *Caller:
		return *c
	}
	return Caller{}
}

// op is one operation in flight: it feeds the audit record and metrics.
type op struct {
	op        operation
	start     time.Time
	key       *store.Key
	version   int
	provider  string
	algorithm string
	// recorded: the success record was written ahead (recordAhead);
	// finish writes a record only if the operation then failed.
	recorded bool
	// attrs are facts of the operation for its audit record (an issued
	// certificate's serial and subject); never a secret.
	attrs map[string]string
}

func (s *Service) begin(o operation) *op { return &op{op: o, start: s.now()} }

// finish records the audit event and metrics of o. When the audit record
// cannot be written, a successful operation is turned into a 503: nothing is
// reported done that is not audited.
func (s *Service) finish(ctx context.Context, o *op, errp *error) {
	d := s.now().Sub(o.start)
	e := s.opEvent(ctx, o, d)
	if *errp != nil {
		// Classified once, here: the caller gets the kind the audit
		// record names (a deadline passed in the store is a timeout in
		// both), the cause still in the chain.
		*errp = kgerr.Classify(*errp)
		CallerFrom(ctx).fail(&e, *errp)
	}
	if o.recorded && *errp == nil {
		s.opMetrics(o, e, d, nil)
		return
	}
	if err := s.audit.Record(ctx, e); err != nil {
		s.metrics.AuditFailures.Inc()
		s.log.Error("audit record not written; refusing the operation", "operation", o.op.name, "request_id", CallerFrom(ctx).RequestID, "err", err)
		if *errp == nil {
			*errp = errAuditUnwritten(err)
		}
		e.ErrorCode = string(kgerr.KindOf(*errp))
	}
	s.opMetrics(o, e, d, *errp)
}

// recordAhead writes o's success record before the change it records is
// made visible (a created key or version becomes active only after its
// creation is in the audit log): if the process dies between the two, the
// log holds a record of a change that the reconciler then completes (and
// audits), never a usable key without one. An error means nothing was
// recorded and the change must not be made.
func (s *Service) recordAhead(ctx context.Context, o *op) error {
	e := s.opEvent(ctx, o, s.now().Sub(o.start))
	if err := s.audit.Record(ctx, e); err != nil {
		s.metrics.AuditFailures.Inc()
		s.log.Error("audit record not written; refusing the operation", "operation", o.op.name, "request_id", CallerFrom(ctx).RequestID, "err", err)
		return errAuditUnwritten(err)
	}
	o.recorded = true
	return nil
}

// opEvent is the audit record of o (a success; finish marks failures).
func (s *Service) opEvent(ctx context.Context, o *op, d time.Duration) audit.Event {
	c := CallerFrom(ctx)
	// o.algorithm may be a request's unchecked string: only a name the
	// server knows goes into the audit record and the metric labels.
	if a, err := alg.Lookup(o.algorithm); err == nil {
		o.algorithm = string(a.Name)
	} else {
		o.algorithm = ""
	}
	e := c.event(o.start, o.op.name)
	e.KeyVersion, e.Provider, e.Algorithm, e.DurationMS = o.version, o.provider, o.algorithm, float64(d.Microseconds())/1000
	if o.key != nil {
		e.KeyID, e.KeyName = o.key.ID, o.key.Name
		if e.Provider == "" {
			e.Provider = o.key.Provider
		}
	}
	if len(o.attrs) > 0 {
		m := make(map[string]string, len(e.Attributes)+len(o.attrs))
		maps.Copy(m, e.Attributes)
		maps.Copy(m, o.attrs)
		e.Attributes = m
	}
	return e
}

// opMetrics counts o, which ended with err.
func (s *Service) opMetrics(o *op, e audit.Event, d time.Duration, err error) {
	s.metrics.ObserveOperation(o.op.name, e.Provider, o.algorithm, d, err != nil, e.ErrorCode)
}

// withhold drops an operation's result when it ends in an error: finish
// may refuse a done operation (its audit record failed), and then no part
// of it reaches the caller. It is deferred before finish, so it runs after.
func withhold[T any](out **T, errp *error) {
	if *errp != nil {
		*out = nil
	}
}

// providerFor returns the provider of a key.
func (s *Service) providerFor(k *store.Key) (provider.Provider, error) {
	p, ok := s.providers[k.Provider]
	if !ok {
		return nil, kgerr.New(kgerr.KindUnavailable, fmt.Sprintf("provider %q of key %q is not configured on this gateway", k.Provider, k.Name))
	}
	return p, nil
}

// publicKey returns the parsed public key of a version, cached by object id.
func (s *Service) publicKey(v *store.Version) (crypto.PublicKey, error) {
	s.pubMu.RLock()
	pub, ok := s.pubKeys[v.ObjectID]
	s.pubMu.RUnlock()
	if ok {
		return pub, nil
	}
	if len(v.PublicKey) == 0 {
		return nil, kgerr.New(kgerr.KindUnsupportedAlgorithm, "a secret key has no public key")
	}
	pub, err := alg.ParsePublicKey(v.PublicKey)
	if err != nil {
		return nil, err
	}
	s.pubMu.Lock()
	s.pubKeys[v.ObjectID] = pub
	s.pubMu.Unlock()
	return pub, nil
}

func (s *Service) forgetPublicKeys(k *store.Key) {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	for _, v := range k.Versions {
		delete(s.pubKeys, v.ObjectID)
	}
}

func specOf(k *store.Key) alg.Spec {
	return alg.Spec{Type: alg.KeyType(k.KeyType), Size: k.KeySize, Curve: k.Curve}
}
