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
	"errors"
	"fmt"
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
	// StatePendingDeletion: deletion is scheduled for DeletionDate; the key
	// refuses every operation until the deletion is cancelled (back to
	// inactive) or the date passes and the sweeper destroys it.
	StatePendingDeletion State = "pending_deletion"
	// StateDeleting: the provider's material is being destroyed; the record
	// goes when that is done. Whoever moves a key here (with the
	// compare-and-swap of UpdateKey) owns the destruction: of several
	// gateways sweeping one store, exactly one does.
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
	// PublishJWKS puts the key's public versions in the unauthenticated
	// /.well-known/jwks.json.
	PublishJWKS bool
	// Description is free text for people.
	Description string
	// Origin is how the key was made: OriginGenerated (by its provider)
	// or OriginImported (material brought in wrapped).
	Origin string
	// DeletionDate is when a key pending deletion is destroyed (nil
	// otherwise).
	DeletionDate *time.Time
	// RotationPeriod is how often the key rotates by itself (0: never);
	// NextRotationAt is when it next does.
	RotationPeriod time.Duration
	NextRotationAt *time.Time
	// MinDecryptVersion is the oldest version that may still decrypt,
	// unwrap and verify (0: every version).
	MinDecryptVersion int
	// Revision grows by one with every update; updates compare it.
	Revision int64
	// Versions in ascending order; the last active one is current.
	Versions []Version
}

// Origins of a key.
const (
	OriginGenerated = "generated"
	OriginImported  = "imported"
)

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
	// CertificateChain is the PEM chain attached to this version, leaf
	// first (nil: none). Each version keeps its own across rotations.
	CertificateChain []byte
	State            State
	CreatedAt        time.Time
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
	c.ExpiresAt, c.DeletionDate, c.NextRotationAt = cloneTime(k.ExpiresAt), cloneTime(k.DeletionDate), cloneTime(k.NextRotationAt)
	c.Versions = append([]Version(nil), k.Versions...)
	return &c
}

func cloneTime(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	c := *t
	return &c
}

// ListOptions filter and page a listing.
type ListOptions struct {
	Provider string
	State    State
	// PublishedJWKS lists only keys with PublishJWKS set.
	PublishedJWKS bool
	// DeletionDue, when set, keeps the keys whose DeletionDate is not after
	// it (the sweeper's query).
	DeletionDue time.Time
	// RotationDue, when set, keeps the keys whose NextRotationAt is not
	// after it (the rotator's query).
	RotationDue time.Time
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

// Migrator is a store with a versioned schema (both SQL stores).
type Migrator interface {
	// Migrate applies the migrations the database has not seen and returns
	// the schema version. Two processes may migrate at once.
	Migrate(ctx context.Context) (int, error)
	// SchemaVersion returns the highest migration applied, 0 on an empty
	// database.
	SchemaVersion(ctx context.Context) (int, error)
	// LatestSchemaVersion is the version this binary migrates to.
	LatestSchemaVersion() int
}

// Snapshotter is a store whose whole content can be exported and imported:
// the backup and restore of the key metadata (never key material, which the
// store does not hold).
type Snapshotter interface {
	// Export calls fn with every key and its versions, in id order, from
	// one consistent snapshot of the store, even while other processes
	// write. An error from fn stops the export and is returned.
	Export(ctx context.Context, fn func(*Key) error) error
	// Import inserts the keys next returns (until io.EOF) as they are: ids,
	// names, states, versions and revisions. It is one transaction: on any
	// error (from next too) nothing is imported. Unless o.Replace, the
	// store must be empty (*NotEmptyError otherwise); with o.Replace every
	// key already stored is removed first. It returns the number imported.
	Import(ctx context.Context, o ImportOptions, next func() (*Key, error)) (int, error)
}

// ImportOptions configure an import.
type ImportOptions struct {
	// Replace removes every stored key first (a restore with --force).
	// Audit checkpoints and audit key records are never removed.
	Replace bool
	// Audit, when set, is called once the last key is read; the audit
	// records it returns are added (to those stored) in the same
	// transaction.
	Audit func() AuditRecords
}

// NotEmptyError refuses an import into a store that holds keys.
type NotEmptyError struct{ Keys int }

func (e *NotEmptyError) Error() string {
	return fmt.Sprintf("the store already holds %d keys; an import without replace needs an empty store", e.Keys)
}

// validateImported checks an imported record enough that the store's own
// invariants hold.
func validateImported(k *Key) error {
	if k == nil || k.ID == "" || k.Name == "" || k.Provider == "" || k.KeyType == "" {
		return errors.New("store import: a key lacks its id, name, provider or key type")
	}
	if !validState(k.State) {
		return fmt.Errorf("store import: key %s: state %q is not a key state", k.ID, k.State)
	}
	if k.State == StatePendingDeletion && k.DeletionDate == nil {
		return fmt.Errorf("store import: key %s is pending deletion without a deletion date", k.ID)
	}
	seen := map[int]bool{}
	for _, v := range k.Versions {
		if v.Version < 1 || seen[v.Version] || v.ObjectID == "" || !validState(v.State) {
			return fmt.Errorf("store import: key %s: version %d is not valid (duplicate, no object id or bad state)", k.ID, v.Version)
		}
		seen[v.Version] = true
	}
	return nil
}

func validState(s State) bool {
	switch s {
	case StatePending, StateActive, StateInactive, StatePendingDeletion, StateDeleting:
		return true
	}
	return false
}
