package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Limits on key metadata.
const (
	maxMetadataEntries = 64
	maxMetadataKey     = 128
	maxMetadataValue   = 1024
)

func newObjectID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

// validateName checks a new key's name. A name may never have the form of
// a key id (a UUID, with or without its dashes): keys are addressed by id
// or name, and a name that is some key's id would be ambiguous.
func validateName(name string) error {
	if !namePattern.MatchString(name) {
		return kgerr.Invalid("name must be 1 to 128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit")
	}
	if _, err := uuid.Parse(name); err == nil {
		return kgerr.Invalid(fmt.Sprintf("name %q has the form of a key id (a UUID); key names must not look like ids", name))
	}
	return nil
}

// maxDescription caps a key's description.
const maxDescription = 1024

func validateDescription(d string) error {
	if len(d) > maxDescription {
		return kgerr.Invalid(fmt.Sprintf("description is longer than %d bytes", maxDescription))
	}
	if !utf8.ValidString(d) {
		return kgerr.Invalid("description is not valid UTF-8")
	}
	return nil
}

func validateMetadata(m map[string]string) error {
	if len(m) > maxMetadataEntries {
		return kgerr.Invalid(fmt.Sprintf("metadata has %d entries, at most %d allowed", len(m), maxMetadataEntries))
	}
	for k, v := range m {
		if k == "" || len(k) > maxMetadataKey {
			return kgerr.Invalid(fmt.Sprintf("metadata keys must be 1 to %d bytes", maxMetadataKey))
		}
		if len(v) > maxMetadataValue {
			return kgerr.Invalid(fmt.Sprintf("metadata value of %s is longer than %d bytes", kgerr.Quote(k), maxMetadataValue))
		}
	}
	return nil
}

// CreateKey creates a key and its first version.
func (s *Service) CreateKey(ctx context.Context, req CreateKeyRequest) (out *Key, err error) {
	o := s.begin(opCreate)
	o.algorithm = req.Spec.Algorithm
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)

	k, p, err := s.newRecord(ctx, o, req)
	if err != nil {
		return nil, err
	}
	return s.makeNew(ctx, o, p, k, func(v *store.Version) (provider.CreatedKey, error) {
		return s.makeMaterial(ctx, p, k, v)
	})
}

// makeNew is the create protocol of a new key (created or imported): the
// pending record reserves the name before the provider is touched (of two
// creates with one name, the loser makes nothing), make makes the first
// version's material, its audit record is written, and only then is the
// key made active.
func (s *Service) makeNew(ctx context.Context, o *op, p provider.Provider, k *store.Key, make func(v *store.Version) (provider.CreatedKey, error)) (*Key, error) {
	o.key, o.version = k, 1
	if err := s.auditReady(ctx); err != nil {
		return nil, err
	}
	if err := s.store.CreateKey(ctx, k); err != nil {
		// Nothing was stored: audit the name asked for, not an id that
		// never existed.
		o.key, o.version = &store.Key{Name: k.Name, Provider: k.Provider}, 0
		return nil, s.hideTakenName(ctx, k.Name, err)
	}
	created, err := make(&k.Versions[0])
	if err != nil {
		s.abandonPending(ctx, p, k, 1)
		return nil, err
	}
	if err := s.recordAhead(context.WithoutCancel(ctx), o); err != nil {
		s.discardMaterial(ctx, p, k, 1, created)
		return nil, err
	}
	k, err = s.completeVersion(ctx, p, k.ID, 1, created)
	if err != nil {
		return nil, err
	}
	return s.view(k), nil
}

// newRecord validates a request for a new key (a create or an import) and
// returns its pending record, not yet stored, and its provider.
func (s *Service) newRecord(ctx context.Context, o *op, req CreateKeyRequest) (*store.Key, provider.Provider, error) {
	if err := allow(ctx, o.op.action); err != nil {
		return nil, nil, err
	}
	if err := validateName(req.Name); err != nil {
		return nil, nil, err
	}
	provName := req.Provider
	if provName == "" {
		provName = s.defProv
	}
	p, ok := s.providers[provName]
	if !ok {
		return nil, nil, kgerr.Invalid(fmt.Sprintf("provider %s is not configured (configured: %v)", kgerr.Quote(provName), s.names))
	}
	o.provider = provName
	if pr := CallerFrom(ctx).Auth; !pr.InScope(req.Name, provName) {
		o.key = &store.Key{Name: req.Name, Provider: provName}
		return nil, nil, denied(pr, o.op.action)
	}
	spec, err := alg.NewSpec(req.Spec.KeyType, req.Spec.KeySize, req.Spec.Curve)
	if err != nil {
		return nil, nil, err
	}
	caps := p.Capabilities()
	if err := caps.CheckSpec(spec); err != nil {
		return nil, nil, onProvider(provName, err)
	}
	if req.PublishJWKS && alg.Secret(spec.Type) {
		return nil, nil, kgerr.Invalid(fmt.Sprintf("publish_jwks: a %s key has no public key to publish", spec.Type))
	}
	usage, err := alg.ParseUsage(spec.Type, req.Spec.Usage)
	if err != nil {
		return nil, nil, err
	}
	var a alg.Info
	if req.Spec.Algorithm != "" {
		if a, err = alg.Lookup(req.Spec.Algorithm); err != nil {
			return nil, nil, err
		}
		if err := alg.Compatible(spec, a); err != nil {
			return nil, nil, err
		}
	} else if a, err = alg.Lookup(string(alg.Default(spec, usage))); err != nil {
		return nil, nil, err
	}
	o.algorithm = string(a.Name)
	if err := caps.CheckAlgorithm(a.Name); err != nil {
		return nil, nil, unavailableAlgorithm(provName, caps, spec, a, req.Spec.Algorithm == "", err)
	}
	if len(usage) == 0 {
		usage = alg.DefaultUsage(a)
	}
	if !slices.ContainsFunc(alg.DefaultUsage(a), func(u alg.Usage) bool { return slices.Contains(usage, u) }) {
		return nil, nil, kgerr.Invalid(fmt.Sprintf("algorithm %s does not serve any of the key's usages %v", a.Name, usage))
	}
	if err := validateMetadata(req.Metadata); err != nil {
		return nil, nil, err
	}
	if err := validateDescription(req.Description); err != nil {
		return nil, nil, err
	}
	now := s.now().UTC()
	if req.ExpiresAt != nil && !req.ExpiresAt.After(now) {
		return nil, nil, kgerr.Invalid("expires_at must be in the future")
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, nil, err
	}
	k := &store.Key{
		ID: id.String(), Name: req.Name, Provider: provName, KeyType: string(spec.Type), KeySize: spec.Size,
		Curve: spec.Curve, Algorithm: string(a.Name), Extractable: req.Spec.Extractable,
		State: store.StatePending, Metadata: req.Metadata, Description: req.Description, Origin: store.OriginGenerated, CreatedAt: now, UpdatedAt: now,
		PublishJWKS: req.PublishJWKS,
		Versions:    []store.Version{{Version: 1, ObjectID: newObjectID(), State: store.StatePending, CreatedAt: now}},
	}
	for _, u := range usage {
		k.Usage = append(k.Usage, string(u))
	}
	if req.ExpiresAt != nil {
		t := req.ExpiresAt.UTC()
		k.ExpiresAt = &t
	}
	return k, p, nil
}

// makeMaterial asks the provider for a version's key material. If the call
// fails, the provider is asked whether the material exists anyway (the
// request may have reached the HSM before the failure).
func (s *Service) makeMaterial(ctx context.Context, p provider.Provider, k *store.Key, v *store.Version) (provider.CreatedKey, error) {
	created, err := p.CreateKey(ctx, provider.CreateKeyRequest{
		ObjectID: v.ObjectID, Label: versionLabel(k, v), Spec: specOf(k), Usage: usagesOf(k), Extractable: k.Extractable,
	})
	if err == nil {
		return created, nil
	}
	found, ok, ferr := s.findMaterial(context.WithoutCancel(ctx), p, k, v.ObjectID)
	if ferr != nil || !ok {
		return provider.CreatedKey{}, err
	}
	return found, nil
}

// versionLabel is the provider label of a version's material: the key's
// name, with ".vN" from version 2 on.
func versionLabel(k *store.Key, v *store.Version) string {
	if v.Version > 1 {
		return fmt.Sprintf("%s.v%d", k.Name, v.Version)
	}
	return k.Name
}

// usagesOf is the usage of a key record.
func usagesOf(k *store.Key) []alg.Usage {
	usage := make([]alg.Usage, len(k.Usage))
	for i, u := range k.Usage {
		usage[i] = alg.Usage(u)
	}
	return usage
}

// findMaterial looks for the material of a version by its object id.
func (s *Service) findMaterial(ctx context.Context, p provider.Provider, k *store.Key, objectID string) (provider.CreatedKey, bool, error) {
	ref, found, err := p.FindKey(ctx, objectID)
	if err != nil || !found {
		return provider.CreatedKey{}, false, err
	}
	created := provider.CreatedKey{Ref: ref}
	if !alg.Secret(alg.KeyType(k.KeyType)) {
		if created.PublicKey, err = p.PublicKey(ctx, ref); err != nil {
			return provider.CreatedKey{}, false, err
		}
	}
	return created, true, nil
}

// abandonPending undoes a version whose material was not made: the record
// (or the version) goes. If the provider cannot say whether the material
// exists, the record stays pending for the reconciler.
func (s *Service) abandonPending(ctx context.Context, p provider.Provider, k *store.Key, version int) {
	ctx = context.WithoutCancel(ctx)
	v := k.Version(version)
	if _, found, err := p.FindKey(ctx, v.ObjectID); err != nil || found {
		s.log.Warn("key material state unknown after a failed create; left pending for reconciliation",
			"key_id", k.ID, "version", version, "err", err)
		return
	}
	err := s.mutate(ctx, k.ID, func(k *store.Key) (bool, error) {
		if version == 1 {
			return false, errDeleteRecord
		}
		k.Versions = slices.DeleteFunc(k.Versions, func(x store.Version) bool { return x.Version == version })
		return true, nil
	})
	if err != nil && !errors.Is(err, kgerr.ErrKeyNotFound) {
		s.log.Warn("could not remove a failed pending key version; left for reconciliation", "key_id", k.ID, "err", err)
	}
}

// discardMaterial destroys the material of a version whose creation could
// not be audited, then undoes the version as abandonPending does.
func (s *Service) discardMaterial(ctx context.Context, p provider.Provider, k *store.Key, version int, created provider.CreatedKey) {
	if err := p.DeleteKey(context.WithoutCancel(ctx), created.Ref); err != nil {
		s.log.Warn("could not destroy the material of an unaudited create; left pending for reconciliation", "key_id", k.ID, "err", err)
		return
	}
	s.abandonPending(ctx, p, k, version)
}

// errDeleteRecord tells mutate to delete the record.
var errDeleteRecord = errors.New("delete record")

// mutate re-reads a key and applies f until its compare-and-swap succeeds.
// f returns false to write nothing, or errDeleteRecord to delete the record.
// It is for the service's own follow-up writes, which must land whatever a
// concurrent request changed; user-facing state changes use a single CAS so
// that of two racing changes the loser gets 409.
func (s *Service) mutate(ctx context.Context, id string, f func(k *store.Key) (bool, error)) error {
	for attempt := 0; ; attempt++ {
		k, err := s.store.GetKey(ctx, id)
		if err != nil {
			return err
		}
		write, err := f(k)
		switch {
		case errors.Is(err, errDeleteRecord):
			err = s.store.DeleteKey(ctx, k.ID, k.Revision)
		case err != nil:
			return err
		case !write:
			return nil
		default:
			k.UpdatedAt = s.now().UTC()
			err = s.store.UpdateKey(ctx, k)
		}
		if !errors.Is(err, kgerr.ErrConflict) || attempt == 20 {
			return err
		}
	}
}

// completeVersion records the material of a pending version and makes it
// (and a pending key) active. If the key was deleted meanwhile, the material
// is destroyed and the caller gets a conflict.
func (s *Service) completeVersion(ctx context.Context, p provider.Provider, id string, version int, created provider.CreatedKey) (*store.Key, error) {
	ctx = context.WithoutCancel(ctx) // the material exists: record it whatever the client does
	var out *store.Key
	err := s.mutate(ctx, id, func(k *store.Key) (bool, error) {
		v := k.Version(version)
		if v == nil || k.State == store.StateDeleting {
			return false, kgerr.New(kgerr.KindConflict, "the key was deleted while its material was being made")
		}
		v.ProviderRef, v.PublicKey, v.State = created.Ref, created.PublicKey, store.StateActive
		if k.State == store.StatePending {
			k.State = store.StateActive
		}
		out = k
		return true, nil
	})
	if errors.Is(err, kgerr.ErrConflict) || errors.Is(err, kgerr.ErrKeyNotFound) {
		if derr := p.DeleteKey(ctx, created.Ref); derr != nil {
			s.log.Warn("orphan key material left after a concurrent delete", "key_id", id, "err", derr)
		}
	}
	return out, err
}

// GetKey returns one key by id or name.
func (s *Service) GetKey(ctx context.Context, ref string) (*Key, error) {
	k, err := s.getKey(ctx, ref, opGet.action)
	if err != nil {
		s.auditDenied(ctx, opGet, k, err)
		return nil, err
	}
	return s.view(k), nil
}

// ListKeys lists keys.
func (s *Service) ListKeys(ctx context.Context, o ListOptions) (*KeyList, error) {
	switch store.State(o.State) {
	case "", store.StatePending, store.StateActive, store.StateInactive, store.StatePendingDeletion, store.StateDeleting:
	default:
		return nil, kgerr.Invalid(fmt.Sprintf("state %s is not one of pending, active, inactive, pending_deletion, deleting", kgerr.Quote(o.State)))
	}
	switch {
	case o.Limit < 0 || o.Limit > MaxListLimit:
		return nil, kgerr.Invalid(fmt.Sprintf("limit must be from 1 to %d (0: the default)", MaxListLimit))
	case o.Offset < 0:
		return nil, kgerr.Invalid("offset must not be negative")
	case o.Offset > 0 && o.PageToken != "":
		return nil, kgerr.Invalid("send offset or page_token, not both")
	}
	if err := allow(ctx, opList.action); err != nil {
		s.auditDenied(ctx, opList, nil, err)
		return nil, err
	}
	so := store.ListOptions{Provider: o.Provider, State: store.State(o.State), Limit: o.Limit, PageToken: o.PageToken}
	list := s.store.ListKeys
	if p := CallerFrom(ctx).Auth; p.Scoped() {
		list = func(ctx context.Context, o store.ListOptions) ([]*store.Key, string, error) {
			return s.listScoped(ctx, p, o)
		}
	}
	if err := s.knownProvider(ctx, list, o.Provider); err != nil {
		return nil, err
	}
	var (
		keys []*store.Key
		next string
		err  error
	)
	if so.PageToken, err = skip(ctx, list, so, o.Offset); err == nil {
		if so.PageToken == "" && o.Offset > 0 {
			return &KeyList{Keys: []Key{}}, nil // fewer keys than the offset
		}
		keys, next, err = list(ctx, so)
	}
	if err != nil {
		return nil, err
	}
	out := &KeyList{Keys: make([]Key, 0, len(keys)), NextPageToken: next}
	for _, k := range keys {
		out.Keys = append(out.Keys, *s.view(k))
	}
	return out, nil
}

// MaxListLimit is the largest page ListKeys returns.
const MaxListLimit = store.MaxPageSize

// knownProvider refuses a listing filtered by a provider that is not
// configured on this gateway, unless keys the caller may list name it (a
// provider of another gateway on the same store, or one since removed from
// the configuration): a misspelt provider must not answer an empty list.
func (s *Service) knownProvider(ctx context.Context, list func(context.Context, store.ListOptions) ([]*store.Key, string, error), name string) error {
	if _, ok := s.providers[name]; ok || name == "" {
		return nil
	}
	keys, _, err := list(ctx, store.ListOptions{Provider: name, Limit: 1})
	if err != nil || len(keys) > 0 {
		return err
	}
	return kgerr.Invalid(fmt.Sprintf("provider %s is not configured on this gateway and no key names it (configured: %s)",
		kgerr.Quote(name), strings.Join(s.names, ", ")))
}

// skip pages past the first n keys of a listing and returns the token of
// the page after them ("" when n is 0, or when there are no more keys).
func skip(ctx context.Context, list func(context.Context, store.ListOptions) ([]*store.Key, string, error), o store.ListOptions, n int) (string, error) {
	token := o.PageToken
	for n > 0 {
		o.PageToken, o.Limit = token, min(n, store.MaxPageSize)
		keys, next, err := list(ctx, o)
		if err != nil {
			return "", err
		}
		n -= len(keys)
		if token = next; token == "" {
			return "", nil
		}
	}
	return token, nil
}

// requireActive refuses a key that is not active for an operation only
// active keys take ("only active keys <only>"; pending deletion: "cancel
// the deletion to <what> it").
func requireActive(k *store.Key, only, what string) error {
	switch k.State {
	case store.StateActive:
		return nil
	case store.StateInactive, store.StatePending:
		return kgerr.New(kgerr.KindKeyInactive, fmt.Sprintf("key %q is %s; only active keys %s", k.Name, k.State, only))
	}
	return refuseUnusable(k, what)
}

// refuseUnusable returns the error of an operation on a key that is not
// active: pending deletion (or being destroyed), or otherwise not usable.
func refuseUnusable(k *store.Key, what string) error {
	switch k.State {
	case store.StatePendingDeletion:
		return kgerr.New(kgerr.KindKeyPendingDeletion, fmt.Sprintf("key %q is pending deletion (on %s); cancel the deletion to %s it",
			k.Name, deletionDate(k), what))
	case store.StateDeleting:
		return kgerr.New(kgerr.KindKeyPendingDeletion, fmt.Sprintf("key %q is being destroyed", k.Name))
	}
	return kgerr.New(kgerr.KindKeyInactive, fmt.Sprintf("key %q is %s", k.Name, k.State))
}

// deletionDate is a pending key's deletion date for a message (a record
// restored without one says so rather than failing).
func deletionDate(k *store.Key) string {
	if k.DeletionDate == nil {
		return "an unknown date"
	}
	return k.DeletionDate.Format(time.RFC3339)
}

// setState moves a key between active and inactive with one compare-and-
// swap: of two racing changes, the loser gets 409 CONFLICT.
func (s *Service) setState(ctx context.Context, ref string, op operation, to store.State) (out *Key, err error) {
	o := s.begin(op)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, err := s.getKey(ctx, ref, op.action)
	o.key = k
	if err != nil {
		return nil, err
	}
	switch k.State {
	case to:
		return s.view(k), nil
	case store.StateActive, store.StateInactive:
	default:
		return nil, refuseUnusable(k, op.name)
	}
	if err := s.auditReady(ctx); err != nil {
		return nil, err
	}
	k.State, k.UpdatedAt = to, s.now().UTC()
	if err := s.store.UpdateKey(ctx, k); err != nil {
		return nil, err
	}
	return s.view(k), nil
}

// ActivateKey makes an inactive key usable again.
func (s *Service) ActivateKey(ctx context.Context, ref string) (*Key, error) {
	return s.setState(ctx, ref, opActivate, store.StateActive)
}

// DeactivateKey makes a key refuse every operation until activated.
func (s *Service) DeactivateKey(ctx context.Context, ref string) (*Key, error) {
	return s.setState(ctx, ref, opDeactivate, store.StateInactive)
}

// RotateKey adds a new version, which becomes current. Older versions still
// verify, decrypt and unwrap what they made (down to min_decrypt_version).
// With a rotation period, the next automatic rotation is a period after
// this one.
func (s *Service) RotateKey(ctx context.Context, ref string) (out *Key, err error) {
	o := s.begin(opRotate)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	k, err := s.getKey(ctx, ref, opRotate.action)
	o.key = k
	if err != nil {
		return nil, err
	}
	o.algorithm = k.Algorithm
	if err := requireActive(k, "rotate", "rotate"); err != nil {
		return nil, err
	}
	p, err := s.providerFor(k)
	if err != nil {
		return nil, err
	}
	if err := s.auditReady(ctx); err != nil {
		return nil, err
	}
	if o.version, err = s.startRotation(ctx, k); err != nil {
		return nil, err
	}
	if k, err = s.finishRotation(ctx, o, p, k); err != nil {
		return nil, err
	}
	return s.view(k), nil
}

// startRotation adds a pending version to k and moves its next automatic
// rotation a period on, with one compare-and-swap: of two rotations of one
// revision (a request and the rotator, or the rotators of two gateways),
// exactly one starts. It returns the new version's number.
func (s *Service) startRotation(ctx context.Context, k *store.Key) (int, error) {
	n := k.Versions[len(k.Versions)-1].Version + 1
	now := s.now().UTC()
	k.Versions = append(k.Versions, store.Version{Version: n, ObjectID: newObjectID(), State: store.StatePending, CreatedAt: now})
	if k.RotationPeriod > 0 {
		next := now.Add(k.RotationPeriod)
		k.NextRotationAt = &next
	}
	k.UpdatedAt = now
	if err := s.store.UpdateKey(ctx, k); err != nil {
		return 0, err
	}
	return n, nil
}

// finishRotation makes the material of the pending version o.version,
// audits the rotation ahead and activates the version; it undoes the
// version when the material cannot be made or the record written.
func (s *Service) finishRotation(ctx context.Context, o *op, p provider.Provider, k *store.Key) (*store.Key, error) {
	return s.finishVersion(ctx, o, p, k, func(v *store.Version) (provider.CreatedKey, error) { return s.makeMaterial(ctx, p, k, v) })
}

// finishVersion is finishRotation with the material made by make (an
// import's).
func (s *Service) finishVersion(ctx context.Context, o *op, p provider.Provider, k *store.Key,
	make func(v *store.Version) (provider.CreatedKey, error)) (*store.Key, error) {
	n := o.version
	created, err := make(k.Version(n))
	if err != nil {
		s.abandonPending(ctx, p, k, n)
		return nil, err
	}
	if err := s.recordAhead(context.WithoutCancel(ctx), o); err != nil {
		s.discardMaterial(ctx, p, k, n, created)
		return nil, err
	}
	return s.completeVersion(ctx, p, k.ID, n, created)
}

// destroy deletes the provider material of every version, then the record
// (at k's revision). It reports whether this call removed the record: false
// with no error when another gateway finished the destruction first. The
// provider's delete of what is already gone succeeds, so a destruction cut
// short between the two steps is finished by calling destroy again.
func (s *Service) destroy(ctx context.Context, k *store.Key) (bool, error) {
	p, err := s.providerFor(k)
	if err != nil {
		return false, err
	}
	for _, v := range k.Versions {
		ref := v.ProviderRef
		if ref == "" { // pending: look for material made before a crash
			r, found, err := findRemains(ctx, p, v.ObjectID)
			if err != nil {
				return false, err
			}
			if !found {
				continue
			}
			ref = r
		}
		if err := p.DeleteKey(ctx, ref); err != nil {
			return false, err
		}
	}
	s.forgetPublicKeys(k)
	// A conflict here leaves the record deleting: the reconciler finishes
	// it.
	err = s.store.DeleteKey(ctx, k.ID, k.Revision)
	if errors.Is(err, kgerr.ErrKeyNotFound) {
		return false, nil // a concurrent destruction finished first
	}
	return err == nil, err
}

// view is the service's view of a stored key: its active versions only.
func (s *Service) view(k *store.Key) *Key {
	out := &Key{
		ID: k.ID, Name: k.Name, Provider: k.Provider, KeyType: k.KeyType, KeySize: k.KeySize, Curve: k.Curve,
		Algorithm: k.Algorithm, Usage: append([]string{}, k.Usage...), Extractable: k.Extractable,
		State: string(k.State), Metadata: k.Metadata, Description: k.Description, Origin: k.Origin, CreatedAt: k.CreatedAt, UpdatedAt: k.UpdatedAt,
		ExpiresAt: k.ExpiresAt, DeletionDate: k.DeletionDate, RotationPeriod: k.RotationPeriod, NextRotationAt: k.NextRotationAt,
		MinDecryptVersion: k.MinDecryptVersion, Revision: k.Revision, PublishJWKS: k.PublishJWKS,
	}
	if c := k.Current(); c != nil {
		out.Version = c.Version
	}
	for _, v := range k.Versions {
		if v.State == store.StateActive {
			out.Versions = append(out.Versions, KeyVersion{Version: v.Version, CreatedAt: v.CreatedAt, ProviderRef: v.ProviderRef})
		}
	}
	return out
}

// Expired reports whether k has passed its expiry at t.
func expired(k *store.Key, t time.Time) bool {
	return k.ExpiresAt != nil && !t.Before(*k.ExpiresAt)
}

// onProvider names the provider in a refusal of its capabilities ("provider
// \"hsm\": this provider cannot make AES-256 keys"), keeping the kind.
// unavailableAlgorithm is the UNSUPPORTED_ALGORITHM of a create whose
// algorithm (given, or the default of its key type and usage) the provider
// does not perform: it says why (the provider's reason, e.g. the mechanism
// its token lacks) and which algorithms the provider does perform for such
// a key, to give instead.
func unavailableAlgorithm(provName string, caps provider.Capabilities, spec alg.Spec, a alg.Info, defaulted bool, err error) error {
	what := string(a.Name)
	if defaulted {
		what += fmt.Sprintf(" (the default algorithm for %s keys with this usage)", spec)
	}
	msg := fmt.Sprintf("%s is not available on provider %s", what, kgerr.Quote(provName))
	if why := caps.Missing[a.Name]; why != "" {
		msg += " (" + why + ")"
	}
	var alts []string
	for _, b := range caps.Alternatives(a.Name) {
		if i, lerr := alg.Lookup(string(b)); lerr == nil && alg.Compatible(spec, i) == nil {
			alts = append(alts, string(b))
		}
	}
	switch len(alts) {
	case 0:
		msg += fmt.Sprintf("; it performs no other algorithm of this kind for %s keys", spec)
	case 1:
		msg += fmt.Sprintf("; give key_spec.algorithm %s (available)", alts[0])
	default:
		msg += fmt.Sprintf("; give key_spec.algorithm one of %s (available)", strings.Join(alts, ", "))
	}
	return kgerr.Wrap(kgerr.KindUnsupportedAlgorithm, err, msg)
}

func onProvider(name string, err error) error {
	e := kgerr.Classify(err)
	return kgerr.Wrap(e.Kind, err, fmt.Sprintf("provider %q: %s", name, e.Message))
}
