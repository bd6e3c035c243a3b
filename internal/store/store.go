// Package store keeps key metadata: names, states, versions, usage, provider
// references and public keys, never private key bytes. SQLite is the embedded
// default; the same SQL serves PostgreSQL.
//
// Concurrency between processes is handled by the database: names are unique
// by constraint, and every update is a compare-and-swap on the key's
// revision, so that when two writers race exactly one wins and the other gets
// kgerr.ErrConflict.
package store

import (
	"context"
	"time"
)

// State is the lifecycle state of a key or key version.
type State string

// States.
const (
	// StatePending: the record is written and the provider is making the
	// key material. A pending key is not usable; after a crash, start-up
	// reconciliation finishes or removes it.
	StatePending State = "pending"
	StateActive  State = "active"
	// StateInactive: deactivated; refuses every operation until activated.
	StateInactive State = "inactive"
	// StateDeleting: the provider's material is being destroyed; the record
	// goes when that is done.
	StateDeleting State = "deleting"
)

// Key is the metadata of one key.
type Key struct {
	ID          string
	Name        string
	Provider    string
	KeyType     string
	KeySize     int
	Curve       string
	Algorithm   string
	Usage       []string
	Extractable bool
	State       State
	Metadata    map[string]string
	CreatedAt   time.Time
	UpdatedAt   time.Time
	ExpiresAt   *time.Time
	// Revision grows by one with every update; updates compare it.
	Revision int64
	// Versions in ascending order; the last active one is current.
	Versions []Version
}

// Version is one version of a key's material.
type Version struct {
	Version int
	// ObjectID is the provider object id (the PKCS#11 CKA_ID), chosen before
	// the material is made, unique across all keys.
	ObjectID string
	// ProviderRef is the provider's reference, empty while pending.
	ProviderRef string
	// PublicKey is the DER SubjectPublicKeyInfo (nil for secret keys).
	PublicKey []byte
	State     State
	CreatedAt time.Time
}

// Current returns the newest active version, or nil.
func (k *Key) Current() *Version {
	for i := len(k.Versions) - 1; i >= 0; i-- {
		if k.Versions[i].State == StateActive {
			return &k.Versions[i]
		}
	}
	return nil
}

// Version returns version n, or nil.
func (k *Key) Version(n int) *Version {
	for i := range k.Versions {
		if k.Versions[i].Version == n {
			return &k.Versions[i]
		}
	}
	return nil
}

// Clone returns a deep copy.
func (k *Key) Clone() *Key {
	c := *k
	c.Usage = append([]string(nil), k.Usage...)
	if k.Metadata != nil {
		c.Metadata = make(map[string]string, len(k.Metadata))
		for a, b := range k.Metadata {
			c.Metadata[a] = b
		}
	}
	if k.ExpiresAt != nil {
		t := *k.ExpiresAt
		c.ExpiresAt = &t
	}
	c.Versions = append([]Version(nil), k.Versions...)
	return &c
}

// ListOptions filter and page a listing.
type ListOptions struct {
	Provider string
	State    State
	// Limit is the page size: 100 when 0, at most 1000.
	Limit     int
	PageToken string
}

// Store is the metadata store.
type Store interface {
	// CreateKey inserts a key with its versions. A taken name fails with
	// kgerr.ErrKeyAlreadyExists. k.Revision is set to 1.
	CreateKey(ctx context.Context, k *Key) error
	// GetKey finds a key by id, then by name; kgerr.ErrKeyNotFound if none.
	GetKey(ctx context.Context, idOrName string) (*Key, error)
	// ListKeys lists keys ordered by id (creation order). The returned token
	// is empty on the last page.
	ListKeys(ctx context.Context, opts ListOptions) ([]*Key, string, error)
	// UpdateKey writes k (row and versions) if its stored revision is still
	// k.Revision, and then increments k.Revision; otherwise it fails with
	// kgerr.ErrConflict (or kgerr.ErrKeyNotFound when the key is gone).
	UpdateKey(ctx context.Context, k *Key) error
	// DeleteKey removes a key and its versions if its revision is still
	// revision (kgerr.ErrConflict otherwise).
	DeleteKey(ctx context.Context, id string, revision int64) error
	// Ping checks that the store answers.
	Ping(ctx context.Context) error
	Close() error
}
