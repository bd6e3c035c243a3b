package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// Signed audit checkpoints (see internal/audit and docs/security.md):
// every audit.checkpoint_interval while records were written, at each
// rotation and at shutdown, the server signs {replica, file, seq, head,
// time} with the audit signing key, stores the checkpoint in the metadata
// store (which every replica and a backup share) and writes it as a line
// of the log.
//
// The audit key is not a key of the key service: no API request can name
// it, so no principal can sign a forged checkpoint with it. Its record in
// the store (audit_keys) says which object it is; of several replicas
// starting at once, the one whose claim is stored makes it, the others
// wait for its public key and find it by its object id.

// claimGiveUp is how long a claim on the audit key may stay unfinished
// before another replica takes it over (its maker crashed).
const claimGiveUp = 2 * time.Minute

// auditSigner signs with the audit key, making it at first use.
type auditSigner struct {
	ref     string // provider/key-name, as configured
	keyName string
	prov    provider.Provider
	cs      store.CheckpointStore
	log     *slog.Logger

	mu     sync.Mutex
	objRef string // the provider's reference; "" until the key is ready
	// claimed is the object id of this signer's stored claim, kept so that
	// a make that failed (the HSM away) is tried again under it at once.
	claimed string
	spec    alg.Spec
	algo    alg.Info
}

// auditKeyChoices are the key specs and algorithms the audit key may have,
// the first the provider supports winning.
var auditKeyChoices = []struct {
	spec alg.Spec
	name string
}{
	{alg.Spec{Type: alg.EC, Curve: "P-256"}, "ES256"},
	{alg.Spec{Type: alg.RSA, Size: 3072}, "RS256"},
}

func randomObjectID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// ensure makes the audit key ready: made (by this replica or another) and
// found on the provider.
func (a *auditSigner) ensure(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.objRef != "" {
		return nil
	}
	for {
		oid := randomObjectID()
		rec, mine, err := a.cs.ClaimAuditKey(ctx, store.AuditKey{Ref: a.ref, ObjectID: oid, CreatedAt: time.Now().UTC()})
		if err == nil && !mine && len(rec.PublicKey) == 0 && rec.ObjectID == a.claimed {
			mine, oid = true, a.claimed
		}
		switch {
		case err != nil:
			return err
		case mine:
			a.claimed = oid
			done, err := a.make(ctx, oid)
			if done || err != nil {
				return err
			}
			continue
		case len(rec.PublicKey) > 0:
			return a.adopt(ctx, rec)
		case time.Since(rec.CreatedAt) > claimGiveUp:
			if done, err := a.takeOver(ctx, rec, oid); done || err != nil {
				return err
			}
			continue
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("audit key %s: waiting for another replica to make it: %w", a.ref, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// make creates the key under the claim oid and completes the record; done
// is false when the claim was taken over meanwhile (the material made is
// destroyed again).
func (a *auditSigner) make(ctx context.Context, oid string) (bool, error) {
	// A make that failed earlier under this claim may have made the
	// material anyway: look before making it again.
	ref, found, err := a.prov.FindKey(ctx, oid)
	var ie *provider.IncompleteKeyError
	if errors.As(err, &ie) {
		err = a.prov.DeleteKey(ctx, ie.Ref)
	}
	if err != nil {
		return false, fmt.Errorf("audit key %s: %w", a.ref, err)
	}
	if found {
		pub, err := a.prov.PublicKey(ctx, ref)
		if err != nil {
			return false, err
		}
		if err := a.cs.CompleteAuditKey(ctx, a.ref, oid, pub); err != nil && !errors.Is(err, kgerr.ErrConflict) {
			return false, err
		}
		return false, nil // the next round adopts it
	}
	caps := a.prov.Capabilities()
	for _, ch := range auditKeyChoices {
		if caps.CheckSpec(ch.spec) != nil || caps.CheckAlgorithm(alg.Algorithm(ch.name)) != nil {
			continue
		}
		info, err := alg.Lookup(ch.name)
		if err != nil {
			return false, err
		}
		created, err := a.prov.CreateKey(ctx, provider.CreateKeyRequest{ObjectID: oid, Label: a.keyName, Spec: ch.spec,
			Usage: []alg.Usage{alg.UsageSign}, Extractable: false})
		if err != nil {
			return false, fmt.Errorf("audit key %s: %w", a.ref, err)
		}
		if err := a.cs.CompleteAuditKey(ctx, a.ref, oid, created.PublicKey); err != nil {
			a.prov.DeleteKey(context.WithoutCancel(ctx), created.Ref)
			if errors.Is(err, kgerr.ErrConflict) {
				return false, nil
			}
			return false, err
		}
		a.objRef, a.spec, a.algo = created.Ref, ch.spec, info
		a.log.Info("audit signing key made", "key", a.ref, "algorithm", ch.name)
		return true, nil
	}
	return false, fmt.Errorf("audit key %s: the provider makes neither EC P-256 keys for ES256 nor RSA-3072 keys for RS256", a.ref)
}

// takeOver finishes or restarts a claim whose maker went away.
func (a *auditSigner) takeOver(ctx context.Context, rec store.AuditKey, oid string) (bool, error) {
	ref, found, err := a.prov.FindKey(ctx, rec.ObjectID)
	var ie *provider.IncompleteKeyError
	if errors.As(err, &ie) {
		a.prov.DeleteKey(ctx, ie.Ref)
		found, err = false, nil
	}
	if err != nil {
		return false, err
	}
	if found {
		pub, err := a.prov.PublicKey(ctx, ref)
		if err != nil {
			return false, err
		}
		if err := a.cs.CompleteAuditKey(ctx, a.ref, rec.ObjectID, pub); err != nil && !errors.Is(err, kgerr.ErrConflict) {
			return false, err
		}
		return false, nil // the next round adopts it
	}
	ok, err := a.cs.ReplaceAuditKeyClaim(ctx, a.ref, rec.ObjectID, oid)
	if err != nil || !ok {
		return false, err
	}
	a.claimed = oid
	return a.make(ctx, oid)
}

// adopt finds the key another replica (or an earlier start) made.
func (a *auditSigner) adopt(ctx context.Context, rec store.AuditKey) error {
	ref, found, err := a.prov.FindKey(ctx, rec.ObjectID)
	if err != nil {
		return fmt.Errorf("audit key %s: %w", a.ref, err)
	}
	if !found {
		return kgerr.New(kgerr.KindKeyNotFound, fmt.Sprintf("audit key %s: the store names object %s, which the provider does not hold", a.ref, rec.ObjectID))
	}
	pub, err := a.prov.PublicKey(ctx, ref)
	if err != nil {
		return err
	}
	if !bytes.Equal(pub, rec.PublicKey) {
		return fmt.Errorf("audit key %s: the provider's key is not the one whose public key is stored", a.ref)
	}
	parsed, err := x509.ParsePKIXPublicKey(pub)
	if err != nil {
		return err
	}
	switch k := parsed.(type) {
	case *ecdsa.PublicKey:
		a.spec, a.algo = alg.Spec{Type: alg.EC, Curve: k.Curve.Params().Name}, mustLookup("ES256")
	case *rsa.PublicKey:
		a.spec, a.algo = alg.Spec{Type: alg.RSA, Size: k.N.BitLen()}, mustLookup("RS256")
	default:
		return fmt.Errorf("audit key %s: a %T key cannot sign checkpoints", a.ref, parsed)
	}
	a.objRef = ref
	return nil
}

func mustLookup(name string) alg.Info {
	i, err := alg.Lookup(name)
	if err != nil {
		panic(err)
	}
	return i
}

// sign signs a SHA-256 digest (ECDSA signatures as ASN.1 DER).
func (a *auditSigner) sign(ctx context.Context, digest []byte) ([]byte, error) {
	a.mu.Lock()
	ref, spec, info := a.objRef, a.spec, a.algo
	a.mu.Unlock()
	sig, err := a.prov.Sign(ctx, provider.SignRequest{Ref: ref, Spec: spec, Algorithm: info, Input: digest})
	if err != nil {
		return nil, err
	}
	if spec.Type == alg.EC {
		return alg.ECDSARawToDER(sig)
	}
	return sig, nil
}

// checkpointer signs the checkpoints of one log.
type checkpointer struct {
	log     *audit.Log
	path    string
	replica string
	signer  *auditSigner
	cs      store.CheckpointStore
	logger  *slog.Logger
	timeout time.Duration

	mu sync.Mutex // one checkpoint at a time
	// quiet is the chain head when the last record is this checkpointer's
	// own line: nothing new to vouch for.
	quiet  string
	closed bool
}

// auditKeyRef is the reference checkpoints name their key by: the
// configured provider/key-name, and for a software provider, whose keystore
// is the replica's own, @replica after it (each replica has its own key).
func auditKeyRef(configured, providerType, replica string) string {
	if providerType == "software" {
		return configured + "@" + replica
	}
	return configured
}

// startCheckpoints builds the checkpointer of cfg (nil when
// audit.signing_key is off).
func (s *Server) startCheckpoints(cfg *config.Config) error {
	pname, kname, on := cfg.Audit.AuditSigningKey()
	if !on {
		return nil
	}
	p, ok := s.svc.Provider(pname)
	if !ok {
		return &config.Error{Field: "audit.signing_key", Msg: fmt.Sprintf("provider %q is not enabled", pname)}
	}
	cs, ok := store.Checkpoints(s.store)
	if !ok {
		return fmt.Errorf("audit checkpoints: the metadata store (%T) keeps none", s.store)
	}
	replica := cfg.Audit.ReplicaID
	if replica == "" {
		var err error
		if replica, err = audit.LoadReplicaID(cfg.Audit.Path); err != nil {
			return fmt.Errorf("audit replica id: %w", err)
		}
	}
	ref := auditKeyRef(cfg.Audit.SigningKey, p.Type(), replica)
	c := &checkpointer{log: s.audit, path: cfg.Audit.Path, replica: replica, cs: cs, logger: s.log, timeout: cfg.Server.RequestTimeout.D(),
		signer: &auditSigner{ref: ref, keyName: kname, prov: p, cs: cs, log: s.log}}
	s.ckpt.Store(c)
	// The key is made (or found) at start; when the provider cannot now,
	// the background loop tries again at each interval.
	ctx, cancel := context.WithTimeout(context.Background(), min(c.timeout, 10*time.Second))
	defer cancel()
	if err := c.signer.ensure(ctx); err != nil {
		c.logger.Error("audit signing key not ready; retrying at each checkpoint", "key", ref, "err", err)
	}
	return nil
}

// onAuditRotate is the audit log's rotation hook: a checkpoint of the file
// just closed.
func (s *Server) onAuditRotate(old string, seq uint64, head string) {
	if c := s.ckpt.Load(); c != nil {
		c.rotated(old, seq, head)
	}
}

// runCheckpoints signs a checkpoint every interval until ctx ends.
func (s *Server) runCheckpoints(ctx context.Context, interval time.Duration) {
	c := s.ckpt.Load()
	if c == nil {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := c.checkpoint(ctx); err != nil && ctx.Err() == nil {
			c.logger.Error("audit checkpoint not signed", "key", c.signer.ref, "err", err)
		}
	}
}

// Checkpoint signs a checkpoint of the audit log's head now (when records
// were written since the last one). It is what the interval, the
// rotation and the shutdown do.
func (s *Server) Checkpoint(ctx context.Context) error {
	c := s.ckpt.Load()
	if c == nil {
		return errors.New("audit checkpoints are off (audit.signing_key: off)")
	}
	return c.checkpoint(ctx)
}

// ReplicaID is the id this server's checkpoints name ("" when they are
// off).
func (s *Server) ReplicaID() string {
	if c := s.ckpt.Load(); c != nil {
		return c.replica
	}
	return ""
}

// closeCheckpoints signs the shutdown checkpoint and stops.
func (s *Server) closeCheckpoints() {
	c := s.ckpt.Load()
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if err := c.checkpoint(ctx); err != nil {
		c.logger.Error("audit checkpoint at shutdown not signed", "key", c.signer.ref, "err", err)
	}
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
}

func (c *checkpointer) checkpoint(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	seq, head := c.log.Head()
	if seq == 0 || head == c.quiet {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.signLocked(ctx, filepath.Base(c.path), seq, head)
}

func (c *checkpointer) rotated(old string, seq uint64, head string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || seq == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if err := c.signLocked(ctx, filepath.Base(old), seq, head); err != nil {
		c.logger.Error("audit checkpoint at rotation not signed", "file", old, "err", err)
	}
}

// signLocked signs, stores and logs the checkpoint of record seq.
func (c *checkpointer) signLocked(ctx context.Context, file string, seq uint64, head string) error {
	if err := c.signer.ensure(ctx); err != nil {
		return err
	}
	cp, err := audit.Sign(ctx, audit.Checkpoint{Replica: c.replica, File: file, Seq: seq, Head: head, Time: time.Now().UTC(), KeyRef: c.signer.ref}, c.signer.sign)
	if err != nil {
		return fmt.Errorf("signing: %w", err)
	}
	if err := c.cs.AddCheckpoint(ctx, service.CheckpointToStore(cp)); err != nil {
		return fmt.Errorf("storing: %w", err)
	}
	if err := c.log.Record(ctx, audit.CheckpointEvent(cp)); err != nil {
		return fmt.Errorf("logging: %w", err)
	}
	if s2, h2 := c.log.Head(); s2 == seq+1 {
		c.quiet = h2
	}
	return nil
}

// AuditEvidence is what `keygrid-hsm audit verify --config` checks a log
// against.
type AuditEvidence struct {
	Checkpoints []audit.Checkpoint
	Keys        audit.KeySet
	// Replica is the configured replica id, or the one kept beside the
	// configured log ("" when there is neither).
	Replica string
}

// LoadAuditEvidence reads the checkpoints and audit public keys from the
// metadata store cfg names (without migrating it), and checks the stored
// public key of the configured signing key against the key its provider
// holds (audit.ErrKeyMismatch when they differ: the store's copy cannot
// vouch for itself). replica, when not empty, is the replica whose key is
// checked (for a software provider's per-replica key).
func LoadAuditEvidence(ctx context.Context, cfg *config.Config, reg provider.Registry, replica string) (*AuditEvidence, error) {
	ev := &AuditEvidence{Replica: replica}
	if ev.Replica == "" {
		ev.Replica = cfg.Audit.ReplicaID
	}
	if ev.Replica == "" {
		if id, err := audit.ReadReplicaID(cfg.Audit.Path); err == nil {
			ev.Replica = id
		} else if !errors.Is(err, audit.ErrNoReplicaID) {
			return nil, err
		}
	}
	st, err := OpenStore(ctx, cfg, false)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	cs, ok := store.Checkpoints(st)
	if !ok {
		return nil, fmt.Errorf("the metadata store (%T) keeps no audit checkpoints", st)
	}
	cps, _, err := cs.ListCheckpoints(ctx, store.CheckpointFilter{Limit: -1})
	if err != nil {
		return nil, err
	}
	recs, err := cs.AuditKeys(ctx)
	if err != nil {
		return nil, err
	}
	for _, c := range cps {
		ev.Checkpoints = append(ev.Checkpoints, service.CheckpointFromStore(c))
	}
	if ev.Keys, err = service.ParseAuditKeys(recs); err != nil {
		return nil, err
	}
	pname, _, on := cfg.Audit.AuditSigningKey()
	if !on {
		return ev, nil
	}
	typ := cfg.ProviderType(pname)
	ref := auditKeyRef(cfg.Audit.SigningKey, typ, ev.Replica)
	var rec *store.AuditKey
	for i := range recs {
		if recs[i].Ref == ref && len(recs[i].PublicKey) > 0 {
			rec = &recs[i]
		}
	}
	if rec == nil {
		return ev, nil // never made: no checkpoint names it
	}
	factory, ok := reg[typ]
	if !ok {
		return nil, fmt.Errorf("provider %s: type %q is not in this build", pname, typ)
	}
	p, err := factory(ctx, provider.Params{Name: pname, Type: typ, DataDir: cfg.DataDir, Embedded: cfg.Embedded,
		Decode: func(out any) error { return cfg.DecodeProviderConfig(pname, out) }, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, fmt.Errorf("provider %s (to check the audit key): %w", pname, err)
	}
	defer p.Close()
	objRef, found, err := p.FindKey(ctx, rec.ObjectID)
	if err != nil {
		return nil, fmt.Errorf("audit key %s: %w", ref, err)
	}
	if !found {
		return nil, fmt.Errorf("%w: audit key %s: provider %s holds no object %s", audit.ErrKeyMismatch, ref, pname, rec.ObjectID)
	}
	pub, err := p.PublicKey(ctx, objRef)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(pub, rec.PublicKey) {
		return nil, fmt.Errorf("%w: audit key %s", audit.ErrKeyMismatch, ref)
	}
	return ev, nil
}
