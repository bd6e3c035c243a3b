package service

import (
	"context"
	"crypto/x509"
	"fmt"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// CheckpointListOptions filter and page the audit checkpoints.
type CheckpointListOptions struct {
	Replica   string
	Limit     int // 100 when 0, at most 1000
	PageToken string
}

// AuditSigningKey is the public half of an audit signing key.
type AuditSigningKey struct {
	Ref       string // provider/key-name
	PublicKey []byte // DER SubjectPublicKeyInfo
}

// CheckpointList is a page of checkpoints, newest first, and the public
// keys they are signed with.
type CheckpointList struct {
	Checkpoints   []audit.Checkpoint
	NextPageToken string
	SigningKeys   []AuditSigningKey
}

// AuditCheckpoints lists the signed audit checkpoints of every replica
// sharing the store, for auditors: the admin and auditor roles, unscoped
// (the checkpoints speak of whole logs, not of keys in a scope).
func (s *Service) AuditCheckpoints(ctx context.Context, o CheckpointListOptions) (*CheckpointList, error) {
	if o.Limit < 0 {
		return nil, kgerr.Invalid("limit must be between 1 and 1000")
	}
	err := allow(ctx, opAuditCheckpoints.action)
	if p := CallerFrom(ctx).Auth; err == nil && p.Scoped() {
		err = kgerr.New(kgerr.KindPermissionDenied, fmt.Sprintf("principal %q is scoped to some keys; the audit checkpoints are of whole logs", p.Name))
	}
	if err != nil {
		s.auditDenied(ctx, opAuditCheckpoints, nil, err)
		return nil, err
	}
	cs, ok := store.Checkpoints(s.store)
	if !ok {
		return nil, fmt.Errorf("the metadata store (%T) keeps no audit checkpoints", s.store)
	}
	cps, next, err := cs.ListCheckpoints(ctx, store.CheckpointFilter{Replica: o.Replica, Limit: o.Limit, PageToken: o.PageToken})
	if err != nil {
		return nil, err
	}
	keys, err := cs.AuditKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := &CheckpointList{Checkpoints: make([]audit.Checkpoint, 0, len(cps)), NextPageToken: next}
	for _, c := range cps {
		out.Checkpoints = append(out.Checkpoints, CheckpointFromStore(c))
	}
	for _, k := range keys {
		if len(k.PublicKey) > 0 {
			out.SigningKeys = append(out.SigningKeys, AuditSigningKey{Ref: k.Ref, PublicKey: k.PublicKey})
		}
	}
	return out, nil
}

// CheckpointFromStore and CheckpointToStore convert between the audit
// package's checkpoint and the store's record of it.
func CheckpointFromStore(c store.Checkpoint) audit.Checkpoint {
	return audit.Checkpoint{Replica: c.Replica, File: c.File, Seq: c.Seq, Head: c.Head, Time: c.Time, KeyRef: c.KeyRef, Signature: c.Signature}
}

// CheckpointToStore: see CheckpointFromStore.
func CheckpointToStore(c audit.Checkpoint) store.Checkpoint {
	return store.Checkpoint{ID: c.ID(), Replica: c.Replica, File: c.File, Seq: c.Seq, Head: c.Head, Time: c.Time.UTC(), KeyRef: c.KeyRef, Signature: c.Signature}
}

// AuditEvidence reads every stored checkpoint and the audit public keys
// from st: what `keygrid-hsm audit verify --config` checks a log against.
func AuditEvidence(ctx context.Context, st store.Store) ([]audit.Checkpoint, audit.KeySet, error) {
	cs, ok := store.Checkpoints(st)
	if !ok {
		return nil, nil, fmt.Errorf("the metadata store (%T) keeps no audit checkpoints", st)
	}
	cps, _, err := cs.ListCheckpoints(ctx, store.CheckpointFilter{Limit: -1})
	if err != nil {
		return nil, nil, err
	}
	keys, err := cs.AuditKeys(ctx)
	if err != nil {
		return nil, nil, err
	}
	out := make([]audit.Checkpoint, 0, len(cps))
	for _, c := range cps {
		out = append(out, CheckpointFromStore(c))
	}
	ks, err := ParseAuditKeys(keys)
	return out, ks, err
}

// ParseAuditKeys parses the public keys of audit key records (those still
// being made have none and are left out).
func ParseAuditKeys(keys []store.AuditKey) (audit.KeySet, error) {
	ks := audit.KeySet{}
	for _, k := range keys {
		if len(k.PublicKey) == 0 {
			continue
		}
		pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("audit key %s: the stored public key does not parse: %w", k.Ref, err)
		}
		ks[k.Ref] = pub
	}
	return ks, nil
}
