package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// The lifecycle a KMS user expects: a DELETE schedules the deletion (the key
// refuses every operation meanwhile, and the deletion can be cancelled); a
// sweeper destroys keys whose date has passed; keys with a rotation period
// rotate by themselves; updates change what may change after creation.
//
// The background jobs are safe on several gateways sharing one store: each
// takes a key with a compare-and-swap on its revision before it acts
// (pending_deletion → deleting for a destruction, a new pending version for
// a rotation), so exactly one gateway acts on each key. A gateway that dies
// after its claim leaves a record the reconciler finishes.

// Limits of the lifecycle settings.
const (
	// MaxDeletionWindow is the longest a deletion may be scheduled out.
	MaxDeletionWindow = 30 * 24 * time.Hour
	// DefaultMinDeletionWindow is the shortest, unless lowered.
	DefaultMinDeletionWindow = 7 * 24 * time.Hour
	// DefaultMinRotationPeriod is the shortest automatic rotation period,
	// unless lowered.
	DefaultMinRotationPeriod = time.Hour
	// MaxRotationPeriod is the longest.
	MaxRotationPeriod = 10 * 365 * 24 * time.Hour
)

func (s *Service) lifecycleDefaults() error {
	if s.minDeletionWindow == 0 {
		s.minDeletionWindow = DefaultMinDeletionWindow
	}
	if s.deletionWindow == 0 {
		s.deletionWindow = MaxDeletionWindow
	}
	if s.minRotationPeriod == 0 {
		s.minRotationPeriod = DefaultMinRotationPeriod
	}
	switch {
	case s.minDeletionWindow < 0 || s.minDeletionWindow > MaxDeletionWindow:
		return fmt.Errorf("service: the minimum deletion window %s is not between 0 and %s", s.minDeletionWindow, MaxDeletionWindow)
	case s.deletionWindow < s.minDeletionWindow || s.deletionWindow > MaxDeletionWindow:
		return fmt.Errorf("service: the deletion window %s is not between %s and %s", s.deletionWindow, s.minDeletionWindow, MaxDeletionWindow)
	case s.minRotationPeriod < 0 || s.minRotationPeriod > MaxRotationPeriod:
		return fmt.Errorf("service: the minimum rotation period %s is not between 0 and %s", s.minRotationPeriod, MaxRotationPeriod)
	}
	return nil
}

// MinDeletionWindow is the shortest deletion window this service accepts.
func (s *Service) MinDeletionWindow() time.Duration { return s.minDeletionWindow }

// systemPrincipal is who the background jobs act as: it appears in their
// audit records.
var systemPrincipal = auth.NewPrincipal("keygrid-system", auth.RoleAdmin, "", nil, nil)

// systemContext is the context of a background job.
func systemContext(ctx context.Context, job string) context.Context {
	return WithCaller(ctx, Caller{Principal: "system:" + job, Auth: systemPrincipal})
}

// DeleteKey schedules the deletion of an active or inactive key: it becomes
// pending_deletion until its deletion date, refusing every operation, and
// is destroyed by the sweeper after that unless the deletion is cancelled.
func (s *Service) DeleteKey(ctx context.Context, req DeleteKeyRequest) (out *Key, err error) {
	o := s.begin(opScheduleDeletion)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, err := s.getKey(ctx, req.Key, o.op.action)
	o.key = k
	if err != nil {
		return nil, err
	}
	window := req.PendingWindow
	if window == 0 {
		window = s.deletionWindow
	}
	if window < s.minDeletionWindow || window > MaxDeletionWindow {
		return nil, kgerr.Invalid(fmt.Sprintf("the pending window %s is not between %s and %s", window, s.minDeletionWindow, MaxDeletionWindow))
	}
	switch k.State {
	case store.StateActive, store.StateInactive:
	case store.StatePendingDeletion:
		return nil, kgerr.New(kgerr.KindKeyPendingDeletion, fmt.Sprintf("key %q is already scheduled for deletion on %s; cancel the deletion to schedule it again",
			k.Name, deletionDate(k)))
	case store.StateDeleting:
		return nil, refuseUnusable(k, "delete")
	default:
		return nil, kgerr.New(kgerr.KindConflict, fmt.Sprintf("key %q is still being created; retry when it is active", k.Name))
	}
	if err := s.auditReady(ctx); err != nil {
		return nil, err
	}
	now := s.now().UTC()
	date := now.Add(window)
	k.State, k.DeletionDate, k.UpdatedAt = store.StatePendingDeletion, &date, now
	if err := s.store.UpdateKey(ctx, k); err != nil {
		return nil, err
	}
	return s.view(k), nil
}

// CancelDeletion takes a key out of pending deletion. It comes back
// inactive: activate it to use it again.
func (s *Service) CancelDeletion(ctx context.Context, ref string) (out *Key, err error) {
	o := s.begin(opCancelDeletion)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, err := s.getKey(ctx, ref, o.op.action)
	o.key = k
	if err != nil {
		return nil, err
	}
	switch k.State {
	case store.StatePendingDeletion:
	case store.StateDeleting:
		return nil, kgerr.New(kgerr.KindKeyPendingDeletion, fmt.Sprintf("key %q is being destroyed: its deletion can no longer be cancelled", k.Name))
	default:
		return nil, kgerr.New(kgerr.KindConflict, fmt.Sprintf("key %q is %s, not pending deletion", k.Name, k.State))
	}
	if err := s.auditReady(ctx); err != nil {
		return nil, err
	}
	k.State, k.DeletionDate, k.UpdatedAt = store.StateInactive, nil, s.now().UTC()
	if err := s.store.UpdateKey(ctx, k); err != nil {
		return nil, err
	}
	return s.view(k), nil
}

// UpdateKey changes a key's metadata, description, expiry, rotation period,
// min_decrypt_version or publish_jwks, with one compare-and-swap on the revision it
// read (or the one the request names): a concurrent change makes it fail
// with CONFLICT, never lose the other change.
func (s *Service) UpdateKey(ctx context.Context, req UpdateKeyRequest) (out *Key, err error) {
	o := s.begin(opUpdate)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, err := s.getKey(ctx, req.Key, o.op.action)
	o.key = k
	if err != nil {
		return nil, err
	}
	if req.Revision != 0 && req.Revision != k.Revision {
		return nil, kgerr.New(kgerr.KindConflict, fmt.Sprintf("key %q is at revision %d, not %d: it changed since it was read", k.Name, k.Revision, req.Revision))
	}
	switch k.State {
	case store.StateActive, store.StateInactive:
	case store.StatePending:
		return nil, kgerr.New(kgerr.KindConflict, fmt.Sprintf("key %q is still being created; retry when it is active", k.Name))
	default:
		return nil, refuseUnusable(k, "update")
	}
	if err := s.applyUpdate(k, req); err != nil {
		return nil, err
	}
	if err := s.auditReady(ctx); err != nil {
		return nil, err
	}
	k.UpdatedAt = s.now().UTC()
	if err := s.store.UpdateKey(ctx, k); err != nil {
		return nil, err
	}
	return s.view(k), nil
}

// applyUpdate validates each field of req and writes it into k.
func (s *Service) applyUpdate(k *store.Key, req UpdateKeyRequest) error {
	if !req.Metadata.Set && !req.Description.Set && !req.ExpiresAt.Set && !req.RotationPeriod.Set && !req.MinDecryptVersion.Set && !req.PublishJWKS.Set {
		return kgerr.Invalid("nothing to update: send metadata, description, expires_at, rotation_period, min_decrypt_version or publish_jwks")
	}
	if req.PublishJWKS.Set {
		if req.PublishJWKS.Value && k.KeyType == string(alg.AES) {
			return kgerr.Invalid(fmt.Sprintf("publish_jwks: key %q is an AES key: it has no public key to publish", k.Name))
		}
		k.PublishJWKS = req.PublishJWKS.Value
	}
	now := s.now().UTC()
	if req.Metadata.Set {
		if err := validateMetadata(req.Metadata.Value); err != nil {
			return err
		}
		k.Metadata = req.Metadata.Value
	}
	if req.Description.Set {
		if err := validateDescription(req.Description.Value); err != nil {
			return err
		}
		k.Description = req.Description.Value
	}
	if req.ExpiresAt.Set {
		if t := req.ExpiresAt.Value; t != nil && !t.After(now) {
			return kgerr.Invalid("expires_at must be in the future")
		}
		k.ExpiresAt = nil
		if t := req.ExpiresAt.Value; t != nil {
			u := t.UTC()
			k.ExpiresAt = &u
		}
	}
	if req.RotationPeriod.Set {
		switch p := req.RotationPeriod.Value; {
		case p == 0:
			k.RotationPeriod, k.NextRotationAt = 0, nil
		case p < s.minRotationPeriod || p > MaxRotationPeriod:
			return kgerr.Invalid(fmt.Sprintf("rotation_period %s is not between %s and %s (0s turns automatic rotation off)", p, s.minRotationPeriod, MaxRotationPeriod))
		default:
			next := now.Add(p)
			k.RotationPeriod, k.NextRotationAt = p, &next
		}
	}
	if req.MinDecryptVersion.Set {
		cur := 0
		if c := k.Current(); c != nil {
			cur = c.Version
		}
		if n := req.MinDecryptVersion.Value; n < 0 || n > cur {
			return kgerr.Invalid(fmt.Sprintf("min_decrypt_version %d is not between 0 and the current version %d", n, cur))
		}
		k.MinDecryptVersion = req.MinDecryptVersion.Value
	}
	return nil
}

// dueKeys calls fn with every key in state whose deletion (or rotation)
// date is not after now, page by page.
func (s *Service) dueKeys(ctx context.Context, o store.ListOptions, fn func(*store.Key)) error {
	o.Limit = store.MaxPageSize
	for {
		keys, next, err := s.store.ListKeys(ctx, o)
		if err != nil {
			return err
		}
		for _, k := range keys {
			if _, ok := s.providers[k.Provider]; ok { // another gateway's provider otherwise
				fn(k)
			}
		}
		if next == "" || ctx.Err() != nil {
			return ctx.Err()
		}
		o.PageToken = next
	}
}

// Sweep destroys the keys whose deletion date has passed: each is claimed
// (pending_deletion → deleting, one compare-and-swap; a key another
// gateway claimed, or whose deletion was cancelled meanwhile, is left), its
// material destroyed on the provider, its record removed, and a
// key_destroyed record audited.
func (s *Service) Sweep(ctx context.Context) error {
	if err := s.auditReady(ctx); err != nil {
		return err
	}
	now := s.now().UTC()
	var errs []error
	err := s.dueKeys(ctx, store.ListOptions{State: store.StatePendingDeletion, DeletionDue: now}, func(k *store.Key) {
		k.State, k.UpdatedAt = store.StateDeleting, now
		switch err := s.store.UpdateKey(ctx, k); {
		case errors.Is(err, kgerr.ErrConflict) || errors.Is(err, kgerr.ErrKeyNotFound):
			return
		case err != nil:
			errs = append(errs, fmt.Errorf("key %s: %w", k.ID, err))
			return
		}
		if err := s.destroyRecorded(ctx, k); err != nil {
			errs = append(errs, fmt.Errorf("key %s: %w", k.ID, err))
		}
	})
	return errors.Join(append(errs, err)...)
}

// destroyRecorded destroys a claimed key and audits key_destroyed, unless
// another gateway finished (and audited) it first. A failure is audited
// and leaves the record deleting, for the reconciler.
func (s *Service) destroyRecorded(ctx context.Context, k *store.Key) (err error) {
	ctx = systemContext(ctx, "deletion")
	o := s.begin(opDestroy)
	o.key = k
	gone, err := s.destroy(ctx, k)
	if err == nil && !gone {
		return nil
	}
	if err == nil {
		s.log.Info("key destroyed: its deletion date passed", "key_id", k.ID, "key_name", k.Name)
	}
	s.finish(ctx, o, &err)
	return err
}

// RotateDue rotates the active keys whose next rotation has come. Each is
// claimed by starting its rotation (one compare-and-swap: a key another
// gateway or a request rotated meanwhile is left) and rotated like a manual
// rotation, audited as one. A rotation that fails is due again at the next
// run.
func (s *Service) RotateDue(ctx context.Context) error {
	if err := s.auditReady(ctx); err != nil {
		return err
	}
	ctx = systemContext(ctx, "rotation")
	now := s.now().UTC()
	var errs []error
	err := s.dueKeys(ctx, store.ListOptions{State: store.StateActive, RotationDue: now}, func(k *store.Key) {
		if k.RotationPeriod <= 0 || k.NextRotationAt == nil || expired(k, now) {
			return
		}
		if err := s.rotateDue(ctx, k); err != nil {
			errs = append(errs, fmt.Errorf("key %s: %w", k.ID, err))
		}
	})
	return errors.Join(append(errs, err)...)
}

func (s *Service) rotateDue(ctx context.Context, k *store.Key) (err error) {
	p, err := s.providerFor(k)
	if err != nil {
		return err
	}
	due := *k.NextRotationAt
	n, err := s.startRotation(ctx, k)
	if errors.Is(err, kgerr.ErrConflict) || errors.Is(err, kgerr.ErrKeyNotFound) {
		return nil // changed meanwhile: another gateway rotated it, or a request changed it
	}
	if err != nil {
		return err
	}
	o := s.begin(opRotate)
	o.key, o.version, o.algorithm = k, n, k.Algorithm
	defer s.finish(ctx, o, &err)
	if _, err = s.finishRotation(ctx, o, p, k); err != nil {
		s.rescheduleRotation(ctx, k.ID, *k.NextRotationAt, due)
	}
	return err
}

// rescheduleRotation puts a failed automatic rotation's due date back, so
// that the next run tries again (unless the key changed meanwhile).
func (s *Service) rescheduleRotation(ctx context.Context, id string, claimed, due time.Time) {
	err := s.mutate(context.WithoutCancel(ctx), id, func(k *store.Key) (bool, error) {
		if k.NextRotationAt == nil || !k.NextRotationAt.Equal(claimed) {
			return false, nil
		}
		k.NextRotationAt = &due
		return true, nil
	})
	if err != nil && !errors.Is(err, kgerr.ErrKeyNotFound) {
		s.log.Warn("automatic rotation failed and could not be rescheduled", "key_id", id, "err", err)
	}
}

// RunLifecycle sweeps due deletions and rotates due keys at once and then
// every interval until ctx ends.
func (s *Service) RunLifecycle(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("deletion sweep", "err", err)
		}
		if err := s.RotateDue(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("automatic rotation", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
