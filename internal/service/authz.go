package service

import (
	"context"
	"errors"
	"fmt"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// Authorization happens here, where key names and providers are known: the
// caller's principal (Caller.Auth, put in the context by the API after
// authentication) must have a role that allows the action and, for a key,
// have the key in its scope. A denial is 403 AUTHORIZATION_FAILED and is
// audited with outcome "denied".
//
// A scoped principal asking for a key it may not see gets 403 whether the
// key exists or not; 404 only answers a principal that could see the key if
// it existed. Listing returns only the keys in scope.

func outcomeOf(err error) string {
	switch kgerr.KindOf(err) {
	case kgerr.KindPermissionDenied, kgerr.KindUnauthenticated:
		return audit.OutcomeDenied
	}
	return audit.OutcomeFailure
}

func denied(p *auth.Principal, a auth.Action) error {
	if p == nil {
		return kgerr.New(kgerr.KindPermissionDenied, "no principal: the request is not authenticated")
	}
	return kgerr.New(kgerr.KindPermissionDenied, fmt.Sprintf("principal %q (%s) may not %s this key", p.Name, p.Role, a))
}

// allow checks the role alone (operations that touch no key).
func allow(ctx context.Context, a auth.Action) error {
	p := CallerFrom(ctx).Auth
	if !p.Can(a) {
		if p == nil {
			return denied(nil, a)
		}
		return kgerr.New(kgerr.KindPermissionDenied, fmt.Sprintf("principal %q (%s) may not %s", p.Name, p.Role, a))
	}
	return nil
}

// getKey loads a key for action and checks the caller may do it. On a
// denial the key (when it exists) is returned with the error, so that the
// audit record names it.
func (s *Service) getKey(ctx context.Context, ref string, a auth.Action) (*store.Key, error) {
	if ref == "" {
		return nil, kgerr.Invalid("key id or name is required")
	}
	p := CallerFrom(ctx).Auth
	if !p.Can(a) {
		k, _ := s.store.GetKey(ctx, ref) // for the audit record only
		return k, denied(p, a)
	}
	k, err := s.store.GetKey(ctx, ref)
	// A missing key is "not allowed" to whom it would be if it existed
	// elsewhere: a name outside a name scope, and any name for a principal
	// scoped by provider (names are unique across providers, so a 404
	// would tell it the name is free everywhere, a 403 that it is taken on
	// a provider outside its scope).
	if errors.Is(err, kgerr.ErrKeyNotFound) && (!p.MayKnowName(ref) || p.ProviderScoped()) {
		return nil, denied(p, a)
	}
	if err != nil {
		return nil, err
	}
	if !p.InScope(k.Name, k.Provider) {
		return k, denied(p, a)
	}
	return k, nil
}

// hideTakenName turns a create's "name taken" into the caller's "not
// allowed" when the key holding the name is outside the caller's scope, as
// getKey answers for that name: the caller is not told which provider has
// it or anything else about it.
func (s *Service) hideTakenName(ctx context.Context, name string, err error) error {
	p := CallerFrom(ctx).Auth
	if !errors.Is(err, kgerr.ErrKeyAlreadyExists) || !p.Scoped() {
		return err
	}
	if other, gerr := s.store.GetKey(ctx, name); gerr != nil || !p.InScope(other.Name, other.Provider) {
		return denied(p, opCreate.action)
	}
	return err
}

// auditDenied records a denial of an action that is not otherwise audited
// (reading metadata). The request is refused whatever the audit log does.
func (s *Service) auditDenied(ctx context.Context, op operation, k *store.Key, err error) {
	if kgerr.KindOf(err) != kgerr.KindPermissionDenied {
		return
	}
	o := s.begin(op)
	o.key = k
	s.finish(ctx, o, &err)
}

// listBatchMin is the smallest store page listScoped reads (a variable for
// tests).
var listBatchMin = 100

// listScoped fills a page with the keys in the caller's scope. It reads
// store pages until the page is full or the store has no more; the token it
// returns resumes right after the last key it returns (or the last key it
// looked at), so that no key in scope is skipped or repeated.
func (s *Service) listScoped(ctx context.Context, p *auth.Principal, o store.ListOptions) ([]*store.Key, string, error) {
	limit := o.Limit
	if limit == 0 {
		limit = 100
	}
	if limit < 0 || limit > store.MaxPageSize {
		return nil, "", kgerr.Invalid(fmt.Sprintf("limit must be between 1 and %d", store.MaxPageSize))
	}
	var out []*store.Key
	token := o.PageToken
	retries := 0
	for {
		need := limit - len(out)
		q := o
		q.PageToken, q.Limit = token, min(store.MaxPageSize, max(listBatchMin, 4*need))
		keys, next, err := s.store.ListKeys(ctx, q)
		if err != nil {
			return nil, "", err
		}
		var in []*store.Key
		cut := -1 // index in keys of the key that fills the page
		for i, k := range keys {
			if p.InScope(k.Name, k.Provider) {
				in = append(in, k)
				if len(in) == need {
					cut = i
					break
				}
			}
		}
		switch {
		case cut < 0: // the batch did not fill the page
			out = append(out, in...)
			if next == "" {
				return out, "", nil
			}
			token = next
			continue
		case cut == len(keys)-1: // filled by the batch's last key
			return append(out, in...), next, nil
		}
		// The page fills inside this batch: ask for exactly the keys up to
		// the one that fills it, for a token that resumes after it.
		q.Limit = cut + 1
		prefix, pnext, err := s.store.ListKeys(ctx, q)
		if err != nil {
			return nil, "", err
		}
		if len(prefix) == cut+1 && prefix[cut].ID == keys[cut].ID && pnext != "" {
			return append(out, in...), pnext, nil
		}
		// The store changed between the two reads (a concurrent create or
		// delete before the cut): read this batch again.
		if retries++; retries > 20 {
			return nil, "", kgerr.New(kgerr.KindConflict, "keys changed too fast to list; retry")
		}
	}
}

// AuthenticationFailed audits a request refused for want of a valid
// credential. detail says why (never the credential itself).
func (s *Service) AuthenticationFailed(ctx context.Context, detail string) {
	c := CallerFrom(ctx)
	c.Principal = "" // not authenticated
	e := c.event(s.now(), "authenticate")
	c.fail(&e, kgerr.ErrAuthenticationFailed)
	e.Detail = clip(detail, 200)
	if err := s.audit.Record(ctx, e); err != nil {
		s.metrics.AuditFailures.Inc()
		s.log.Error("audit record of an authentication failure not written", "request_id", c.RequestID, "err", err)
	}
}

// ProviderEvent audits an event a provider reports (a reset of its
// connection to the HSM, …). It is the sink given to providers that
// implement provider.EventReporter.
func (s *Service) ProviderEvent(name string, ev provider.Event) {
	e := audit.Event{Time: ev.Time.UTC(), Operation: "provider_" + ev.Kind, Provider: name, Outcome: audit.OutcomeSuccess,
		DurationMS: float64(ev.Duration.Microseconds()) / 1000, Detail: clip(ev.Detail, 200)}
	if e.Time.IsZero() {
		e.Time = s.now().UTC()
	}
	if ev.Err != nil {
		e.Outcome, e.ErrorCode = audit.OutcomeFailure, string(kgerr.KindOf(ev.Err))
	}
	if err := s.audit.Record(context.Background(), e); err != nil {
		s.metrics.AuditFailures.Inc()
		s.log.Error("audit record of a provider event not written", "provider", name, "event", ev.Kind, "err", err)
	}
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
