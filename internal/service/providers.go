package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// Providers lists the providers with their capabilities and cached health.
func (s *Service) Providers(ctx context.Context) []ProviderInfo {
	out := make([]ProviderInfo, 0, len(s.names))
	for _, n := range s.names {
		p := s.providers[n]
		out = append(out, ProviderInfo{Name: n, Type: p.Type(), Healthy: s.health[n].view(p).Healthy, Capabilities: p.Capabilities()})
	}
	return out
}

// ProviderHealth returns one provider's health as the background checker
// last saw it, with its pool and recovery numbers.
func (s *Service) ProviderHealth(ctx context.Context, name string) (*ProviderHealth, error) {
	p, ok := s.providers[name]
	if !ok {
		return nil, kgerr.New(kgerr.KindProviderNotFound, fmt.Sprintf("provider %s is not configured", kgerr.Quote(name)))
	}
	return s.health[name].view(p), nil
}

// Ready reports each provider's cached health and pings the store; ready is
// false when a provider is unavailable or the store does not answer.
func (s *Service) Ready(ctx context.Context) (bool, []ProviderStatus) {
	ready := true
	out := make([]ProviderStatus, 0, len(s.names)+1)
	for _, n := range s.names {
		p := s.providers[n]
		h := s.health[n].view(p)
		out = append(out, ProviderStatus{Name: n, Type: p.Type(), Healthy: h.Healthy, State: h.State})
		ready = ready && h.Healthy
	}
	sctx, cancel := context.WithTimeout(ctx, s.healthTO)
	defer cancel()
	if err := s.store.Ping(sctx); err != nil {
		ready = false
		out = append(out, ProviderStatus{Name: "metadata-store", Type: "store", State: "unavailable"})
	}
	return ready, out
}

// Reconcile finishes or undoes what a crash left behind: pending keys and
// versions whose material exists are completed, those without are removed;
// keys marked deleting are destroyed. Records younger than the grace period
// are left alone (a live request may own them).
func (s *Service) Reconcile(ctx context.Context) error {
	cutoff := s.now().Add(-s.grace)
	var errs []error
	token := ""
	for {
		keys, next, err := s.store.ListKeys(ctx, store.ListOptions{Limit: store.MaxPageSize, PageToken: token})
		if err != nil {
			return err
		}
		for _, k := range keys {
			if k.UpdatedAt.After(cutoff) {
				continue
			}
			if err := s.reconcileKey(ctx, k); err != nil {
				errs = append(errs, fmt.Errorf("key %s: %w", k.ID, err))
			}
		}
		if next == "" {
			break
		}
		token = next
	}
	return errors.Join(errs...)
}

func (s *Service) reconcileKey(ctx context.Context, k *store.Key) error {
	p, ok := s.providers[k.Provider]
	if !ok {
		return nil // another gateway's provider
	}
	if k.State == store.StateDeleting {
		// A destruction cut short (the sweeper's gateway died after its
		// claim): claim it again, so that of several reconcilers one
		// finishes it, audit the decision, and finish it.
		k.UpdatedAt = s.now().UTC()
		if err := s.store.UpdateKey(ctx, k); errors.Is(err, kgerr.ErrConflict) || errors.Is(err, kgerr.ErrKeyNotFound) {
			return nil // another gateway has it
		} else if err != nil {
			return err
		}
		s.log.Info("reconcile: finishing an interrupted destruction", "key_id", k.ID)
		if err := s.recordDecision(ctx, k, 0, opReconcileDelete, "finishing an interrupted destruction"); err != nil {
			return err
		}
		return s.destroyRecorded(ctx, k)
	}
	for _, v := range k.Versions {
		if v.State != store.StatePending {
			continue
		}
		created, found, err := s.findMaterial(ctx, p, k, v.ObjectID)
		var ie *provider.IncompleteKeyError
		if errors.As(err, &ie) {
			// A generation cut short (its process killed between the two
			// halves of a key pair): what exists can never be used.
			s.log.Warn("reconcile: destroying the remains of an interrupted key generation",
				"key_id", k.ID, "version", v.Version, "missing", ie.Missing)
			if err := s.recordDecision(ctx, k, v.Version, opReconcileDestroy, "destroying the remains of an interrupted key generation"); err != nil {
				return err
			}
			if err := p.DeleteKey(ctx, ie.Ref); err != nil {
				return err
			}
			s.abandonPending(ctx, p, k, v.Version)
			continue
		}
		if err != nil {
			return err
		}
		if !found {
			s.log.Info("reconcile: removing a create that made no material", "key_id", k.ID, "version", v.Version)
			if err := s.recordDecision(ctx, k, v.Version, opReconcileAbandon, "removing a create that made no material"); err != nil {
				return err
			}
			s.abandonPending(ctx, p, k, v.Version)
			continue
		}
		s.log.Info("reconcile: completing an interrupted create", "key_id", k.ID, "version", v.Version)
		// Audited before it is active, as a create is.
		if err := s.recordDecision(ctx, k, v.Version, opReconcileActivate, "completing an interrupted create"); err != nil {
			return err
		}
		if _, err := s.completeVersion(ctx, p, k.ID, v.Version, created); err != nil && !errors.Is(err, kgerr.ErrConflict) {
			return err
		}
	}
	return nil
}

// The reconciler's decisions, each audited before it is carried out.
const (
	opReconcileActivate = "reconcile_activate" // material found: the pending version becomes active
	opReconcileAbandon  = "reconcile_abandon"  // no material: the pending record or version goes
	opReconcileDestroy  = "reconcile_destroy"  // half a key pair: destroyed, then abandoned
	opReconcileDelete   = "reconcile_delete"   // a delete cut short: finished
)

// recordDecision audits a reconciler decision about version (0: the key)
// of k before it is carried out; an error means it must not be.
func (s *Service) recordDecision(ctx context.Context, k *store.Key, version int, operation, detail string) error {
	e := audit.Event{Time: s.now().UTC(), Principal: "keygrid-reconciler", Operation: operation, KeyID: k.ID, KeyName: k.Name,
		KeyVersion: version, Provider: k.Provider, Algorithm: k.Algorithm, Outcome: audit.OutcomeSuccess, Detail: detail}
	if err := s.audit.Record(ctx, e); err != nil {
		s.metrics.AuditFailures.Inc()
		s.log.Error("reconcile: audit record not written; the decision is not carried out", "operation", operation, "key_id", k.ID, "err", err)
		return errAuditUnwritten(err)
	}
	return nil
}

// RunReconciler reconciles at once and then every interval until ctx ends.
func (s *Service) RunReconciler(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := s.Reconcile(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("reconcile", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// findRemains looks for whatever material of a version exists, complete or
// not, to destroy it.
func findRemains(ctx context.Context, p provider.Provider, objectID string) (string, bool, error) {
	ref, found, err := p.FindKey(ctx, objectID)
	var ie *provider.IncompleteKeyError
	if errors.As(err, &ie) {
		return ie.Ref, true, nil
	}
	return ref, found, err
}
