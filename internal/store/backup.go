package store

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// The backup file is JSON lines: a header, one line per key (its metadata
// and versions: names, states, provider references, public keys — the store
// holds no private key material, so neither does a backup), and a trailer
// with the number of keys and the SHA-256 of the key lines, so that a
// truncated or altered file is refused before anything is restored.
//
//	{"header":{"format":"keygrid-hsm-metadata-backup","format_version":1,…}}
//	{"key":{"id":…,"name":…,"versions":[…]}}
//	{"end":{"keys":2,"sha256":"…"}}

// BackupFormat names the backup file format.
const BackupFormat = "keygrid-hsm-metadata-backup"

// BackupFormatVersion is the version of the format this binary writes; it
// reads this one and every older one. Version 2 added the lifecycle fields
// of a key (description, deletion date, rotation, min_decrypt_version);
// a version 1 file has none of them (nor, before the certificates came,
// publish_jwks and certificate chains: those are optional in both).
// Version 3 added the audit signing keys and checkpoints (lines
// {"audit_key":…} and {"checkpoint":…} after the keys, counted in the
// trailer and covered by its hash).
const BackupFormatVersion = 3

// ErrBadBackup: the backup file is not one, is of a newer format, or is
// truncated or altered. Match with errors.Is.
var ErrBadBackup = errors.New("not a valid keygrid-hsm metadata backup")

// maxBackupLine bounds one line of a backup (a key with the largest
// metadata the service accepts is far smaller).
const maxBackupLine = 4 << 20

// BackupHeader describes a backup.
type BackupHeader struct {
	Format        string    `json:"format"`
	FormatVersion int       `json:"format_version"`
	CreatedAt     time.Time `json:"created_at"`
	// Driver and SchemaVersion are those of the store backed up.
	Driver        string `json:"driver,omitempty"`
	SchemaVersion int    `json:"schema_version,omitempty"`
	// Software is the version of the binary that wrote it.
	Software string `json:"software,omitempty"`
}

type backupTrailer struct {
	Keys int `json:"keys"`
	// Since format version 3.
	AuditKeys   int    `json:"audit_keys,omitempty"`
	Checkpoints int    `json:"checkpoints,omitempty"`
	SHA256      string `json:"sha256"`
}

type backupLine struct {
	Header     *BackupHeader     `json:"header,omitempty"`
	Key        *backupKey        `json:"key,omitempty"`
	AuditKey   *backupAuditKey   `json:"audit_key,omitempty"`
	Checkpoint *backupCheckpoint `json:"checkpoint,omitempty"`
	End        *backupTrailer    `json:"end,omitempty"`
}

type backupAuditKey struct {
	Ref       string    `json:"ref"`
	ObjectID  string    `json:"object_id"`
	PublicKey []byte    `json:"public_key,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

type backupCheckpoint struct {
	ID        string    `json:"id"`
	Replica   string    `json:"replica"`
	File      string    `json:"file"`
	Seq       uint64    `json:"seq"`
	Head      string    `json:"head"`
	Time      time.Time `json:"time"`
	KeyRef    string    `json:"key"`
	Signature []byte    `json:"signature"`
}

type backupKey struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Provider    string            `json:"provider"`
	KeyType     string            `json:"key_type"`
	KeySize     int               `json:"key_size"`
	Curve       string            `json:"curve,omitempty"`
	Algorithm   string            `json:"algorithm,omitempty"`
	Usage       []string          `json:"usage"`
	Extractable bool              `json:"extractable"`
	State       State             `json:"state"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
	ExpiresAt   *time.Time        `json:"expires_at,omitempty"`
	PublishJWKS bool              `json:"publish_jwks,omitempty"`
	Revision    int64             `json:"revision"`
	Versions    []backupVersion   `json:"versions"`
	// Since format version 2.
	Description       string        `json:"description,omitempty"`
	DeletionDate      *time.Time    `json:"deletion_date,omitempty"`
	RotationPeriod    time.Duration `json:"rotation_period_ns,omitempty"`
	NextRotationAt    *time.Time    `json:"next_rotation_at,omitempty"`
	MinDecryptVersion int           `json:"min_decrypt_version,omitempty"`
	// Origin; absent (older backups): generated.
	Origin string `json:"origin,omitempty"`
}

type backupVersion struct {
	Version          int       `json:"version"`
	ObjectID         string    `json:"object_id"`
	ProviderRef      string    `json:"provider_ref,omitempty"`
	PublicKey        []byte    `json:"public_key,omitempty"`        // DER SubjectPublicKeyInfo
	CertificateChain []byte    `json:"certificate_chain,omitempty"` // PEM, leaf first
	State            State     `json:"state"`
	CreatedAt        time.Time `json:"created_at"`
}

func toBackup(k *Key) *backupKey {
	b := &backupKey{ID: k.ID, Name: k.Name, Provider: k.Provider, KeyType: k.KeyType, KeySize: k.KeySize, Curve: k.Curve,
		Algorithm: k.Algorithm, Usage: k.Usage, Extractable: k.Extractable, State: k.State, Metadata: k.Metadata,
		CreatedAt: k.CreatedAt, UpdatedAt: k.UpdatedAt, ExpiresAt: k.ExpiresAt, PublishJWKS: k.PublishJWKS, Revision: k.Revision,
		Description: k.Description, DeletionDate: k.DeletionDate, RotationPeriod: k.RotationPeriod,
		NextRotationAt: k.NextRotationAt, MinDecryptVersion: k.MinDecryptVersion, Origin: k.Origin}
	for _, v := range k.Versions {
		b.Versions = append(b.Versions, backupVersion{Version: v.Version, ObjectID: v.ObjectID, ProviderRef: v.ProviderRef,
			PublicKey: v.PublicKey, CertificateChain: v.CertificateChain, State: v.State, CreatedAt: v.CreatedAt})
	}
	return b
}

func (b *backupKey) toKey() *Key {
	k := &Key{ID: b.ID, Name: b.Name, Provider: b.Provider, KeyType: b.KeyType, KeySize: b.KeySize, Curve: b.Curve,
		Algorithm: b.Algorithm, Usage: b.Usage, Extractable: b.Extractable, State: b.State, Metadata: b.Metadata,
		CreatedAt: b.CreatedAt, UpdatedAt: b.UpdatedAt, ExpiresAt: b.ExpiresAt, PublishJWKS: b.PublishJWKS, Revision: b.Revision,
		Description: b.Description, DeletionDate: b.DeletionDate, RotationPeriod: b.RotationPeriod,
		NextRotationAt: b.NextRotationAt, MinDecryptVersion: b.MinDecryptVersion, Origin: b.Origin}
	if k.Origin == "" {
		k.Origin = OriginGenerated
	}
	if k.Usage == nil {
		k.Usage = []string{}
	}
	for _, v := range b.Versions {
		k.Versions = append(k.Versions, Version{Version: v.Version, ObjectID: v.ObjectID, ProviderRef: v.ProviderRef,
			PublicKey: v.PublicKey, CertificateChain: v.CertificateChain, State: v.State, CreatedAt: v.CreatedAt})
	}
	return k
}

// WriteBackup writes every key of s, from one snapshot, to w. h.Format,
// h.FormatVersion and h.CreatedAt are filled in. It returns the number of
// keys written.
func WriteBackup(ctx context.Context, s Snapshotter, w io.Writer, h BackupHeader) (int, error) {
	h.Format, h.FormatVersion = BackupFormat, BackupFormatVersion
	if h.CreatedAt.IsZero() {
		h.CreatedAt = time.Now().UTC()
	}
	bw := bufio.NewWriter(w)
	line := func(l backupLine) ([]byte, error) {
		b, err := json.Marshal(l)
		if err != nil {
			return nil, err
		}
		b = append(b, '\n')
		_, err = bw.Write(b)
		return b, err
	}
	if _, err := line(backupLine{Header: &h}); err != nil {
		return 0, err
	}
	sum := sha256.New()
	n := 0
	err := s.Export(ctx, func(k *Key) error {
		b, err := line(backupLine{Key: toBackup(k)})
		if err != nil {
			return err
		}
		sum.Write(b)
		n++
		return nil
	})
	if err != nil {
		return 0, err
	}
	end := &backupTrailer{Keys: n}
	if ae, ok := s.(AuditExporter); ok {
		r, err := ae.ExportAudit(ctx)
		if err != nil {
			return 0, err
		}
		for _, k := range r.Keys {
			b, err := line(backupLine{AuditKey: &backupAuditKey{Ref: k.Ref, ObjectID: k.ObjectID, PublicKey: k.PublicKey, CreatedAt: k.CreatedAt}})
			if err != nil {
				return 0, err
			}
			sum.Write(b)
		}
		for _, c := range r.Checkpoints {
			b, err := line(backupLine{Checkpoint: &backupCheckpoint{ID: c.ID, Replica: c.Replica, File: c.File, Seq: c.Seq, Head: c.Head,
				Time: c.Time, KeyRef: c.KeyRef, Signature: c.Signature}})
			if err != nil {
				return 0, err
			}
			sum.Write(b)
		}
		end.AuditKeys, end.Checkpoints = len(r.Keys), len(r.Checkpoints)
	}
	end.SHA256 = hex.EncodeToString(sum.Sum(nil))
	if _, err := line(backupLine{End: end}); err != nil {
		return 0, err
	}
	return n, bw.Flush()
}

// ReadBackup restores the keys of a backup into s (see Snapshotter.Import:
// an empty store unless o.Replace, all or nothing). The whole file is
// checked against its trailer before the import commits. It returns the
// header and the number of keys restored.
func ReadBackup(ctx context.Context, s Snapshotter, r io.Reader, o ImportOptions) (BackupHeader, int, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxBackupLine)
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadBackup, fmt.Sprintf(format, args...))
	}
	decode := func(b []byte) (backupLine, error) {
		var l backupLine
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			return l, bad("line is not a backup record: %v", err)
		}
		return l, nil
	}
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return BackupHeader{}, 0, err
		}
		return BackupHeader{}, 0, bad("the file is empty")
	}
	first, err := decode(sc.Bytes())
	if err != nil {
		return BackupHeader{}, 0, err
	}
	if first.Header == nil || first.Header.Format != BackupFormat {
		return BackupHeader{}, 0, bad("the first line is not a %s header", BackupFormat)
	}
	h := *first.Header
	if h.FormatVersion < 1 || h.FormatVersion > BackupFormatVersion {
		return h, 0, bad("format version %d; this binary reads version %d", h.FormatVersion, BackupFormatVersion)
	}
	sum := sha256.New()
	seen, ended := 0, false
	var audit AuditRecords
	next := func() (*Key, error) {
	again:
		if ended {
			return nil, io.EOF
		}
		if !sc.Scan() {
			if err := sc.Err(); err != nil {
				return nil, err
			}
			return nil, bad("the file ends after %d keys without its trailer: truncated", seen)
		}
		raw := sc.Bytes()
		l, err := decode(raw)
		if err != nil {
			return nil, err
		}
		switch {
		case l.Key != nil:
			sum.Write(raw)
			sum.Write([]byte{'\n'})
			seen++
			return l.Key.toKey(), nil
		case l.AuditKey != nil:
			sum.Write(raw)
			sum.Write([]byte{'\n'})
			a := l.AuditKey
			audit.Keys = append(audit.Keys, AuditKey{Ref: a.Ref, ObjectID: a.ObjectID, PublicKey: a.PublicKey, CreatedAt: a.CreatedAt})
			goto again
		case l.Checkpoint != nil:
			sum.Write(raw)
			sum.Write([]byte{'\n'})
			c := l.Checkpoint
			audit.Checkpoints = append(audit.Checkpoints, Checkpoint{ID: c.ID, Replica: c.Replica, File: c.File, Seq: c.Seq, Head: c.Head,
				Time: c.Time, KeyRef: c.KeyRef, Signature: c.Signature})
			goto again
		case l.End != nil:
			if l.End.Keys != seen || l.End.AuditKeys != len(audit.Keys) || l.End.Checkpoints != len(audit.Checkpoints) ||
				l.End.SHA256 != hex.EncodeToString(sum.Sum(nil)) {
				return nil, bad("the trailer does not match the %d keys read: the file was altered", seen)
			}
			if sc.Scan() {
				return nil, bad("data after the trailer")
			}
			ended = true
			return nil, io.EOF
		}
		return nil, bad("a line is neither a key, an audit record nor the trailer")
	}
	o.Audit = func() AuditRecords { return audit }
	n, err := s.Import(ctx, o, next)
	return h, n, err
}
