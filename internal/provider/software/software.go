// Package software is the software key provider: keys generated with Go's
// crypto packages and kept in a keystore directory, each private or secret
// key sealed with AES-256-GCM under a master key before it touches disk.
//
// A key is one file, <keystore>/<object id>.key, written atomically (temp
// file, fsync, link, fsync of the directory) so that a key reported created
// survives a crash. The file holds the key's spec in the clear and its PKCS#8
// (or raw AES) bytes sealed; the object id and spec are the GCM additional
// data, so a sealed blob cannot be moved to another file or spec.
//
// Decrypted keys are cached in memory after first use. All methods are safe
// for concurrent use.
package software

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/fsutil"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// Type is the provider type name.
const Type = "software"

// Config is the `config` block of a software provider.
type Config struct {
	// MasterKeyFile holds the 32-byte master key, base64 or hex encoded.
	MasterKeyFile string `yaml:"master_key_file"`
	// MasterKeyEnv names an environment variable holding the master key.
	MasterKeyEnv string `yaml:"master_key_env"`
	// KeystoreDir defaults to <data-dir>/keystore/<provider name>.
	KeystoreDir string `yaml:"keystore_dir"`
}

// Provider is the software provider.
type Provider struct {
	name string
	dir  string
	aead cipher.AEAD // master key

	table map[alg.Algorithm]performer // how each algorithm is performed (table.go)
	caps  provider.Capabilities

	wrapMu   sync.Mutex      // serialises the making of the wrapping key
	wrapping *rsa.PrivateKey // the import wrapping key, once loaded

	mu     sync.RWMutex
	cache  map[string]any // object id → *rsa.PrivateKey | *ecdsa.PrivateKey | ed25519.PrivateKey | cipher.Block
	closed bool
}

var objectIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

const checkFile = "master.check"

// New is the provider.Factory of the software provider.
func New(_ context.Context, p provider.Params) (provider.Provider, error) {
	var cfg Config
	if p.Decode != nil {
		if err := p.Decode(&cfg); err != nil {
			return nil, err
		}
	}
	log := p.Logger
	if log == nil {
		log = slog.Default()
	}
	mk, err := loadMasterKey(cfg, p, log)
	if err != nil {
		return nil, err
	}
	dir := cfg.KeystoreDir
	if dir == "" {
		dir = filepath.Join(p.DataDir, "keystore", p.Name)
	}
	return Open(p.Name, dir, mk)
}

// Open opens (creating if needed) a keystore directory with a 32-byte master
// key. A master key that does not match the one the keystore was made with
// is refused.
func Open(name, dir string, masterKey []byte) (*Provider, error) {
	return openWithTable(name, dir, masterKey, performers)
}

// openWithTable is Open with a table of performers.
func openWithTable(name, dir string, masterKey []byte, table map[alg.Algorithm]performer) (*Provider, error) {
	if len(masterKey) != 32 {
		return nil, errors.New("software provider: master key must be 32 bytes")
	}
	block, err := aes.NewCipher(masterKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("software provider %q: keystore: %w", name, err)
	}
	p := &Provider{name: name, dir: dir, aead: aead, table: table, caps: capabilities(table), cache: map[string]any{}}
	if err := p.checkMasterKey(); err != nil {
		return nil, err
	}
	return p, nil
}

// checkMasterKey seals a known value on first use and opens it afterwards, so
// that a wrong master key fails at start, not on every request.
func (p *Provider) checkMasterKey() error {
	path := filepath.Join(p.dir, checkFile)
	const aad = "keygrid master key check"
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		sealed, err := p.seal([]byte("ok"), []byte(aad))
		if err != nil {
			return err
		}
		return fsutil.WriteFile(path, sealed, 0o600)
	}
	if err != nil {
		return fmt.Errorf("software provider %q: %w", p.name, err)
	}
	if _, err := p.open(b, []byte(aad)); err != nil {
		return fmt.Errorf("software provider %q: the master key does not open keystore %s (wrong master key?)", p.name, p.dir)
	}
	return nil
}

func loadMasterKey(cfg Config, p provider.Params, log *slog.Logger) ([]byte, error) {
	field := "providers." + p.Name + ".config"
	switch {
	case cfg.MasterKeyFile != "" && cfg.MasterKeyEnv != "":
		return nil, fmt.Errorf("%s: set master_key_file or master_key_env, not both", field)
	case cfg.MasterKeyEnv != "":
		v := os.Getenv(cfg.MasterKeyEnv)
		if v == "" {
			return nil, fmt.Errorf("%s.master_key_env: environment variable %s is empty or unset", field, cfg.MasterKeyEnv)
		}
		k, err := decodeMasterKey(v)
		if err != nil {
			return nil, fmt.Errorf("%s.master_key_env: %s: %w", field, cfg.MasterKeyEnv, err)
		}
		return k, nil
	case cfg.MasterKeyFile != "":
		b, err := os.ReadFile(cfg.MasterKeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s.master_key_file: %w", field, err)
		}
		k, err := decodeMasterKey(string(b))
		if err != nil {
			return nil, fmt.Errorf("%s.master_key_file: %s: %w", field, cfg.MasterKeyFile, err)
		}
		return k, nil
	case p.Embedded:
		return embeddedMasterKey(filepath.Join(p.DataDir, "master.key"), log)
	}
	return nil, fmt.Errorf("%s: master_key_file or master_key_env is required", field)
}

// embeddedMasterKey reads <data-dir>/master.key, generating it on first start.
func embeddedMasterKey(path string, log *slog.Logger) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := decodeMasterKey(string(b))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := fsutil.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(k)+"\n"), 0o600); err != nil {
		return nil, err
	}
	log.Warn("generated a new master key for the software keystore; it protects every software key: back it up, and in production set master_key_file or master_key_env instead",
		"path", path)
	return k, nil
}

func decodeMasterKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if k, err := base64.StdEncoding.DecodeString(s); err == nil && len(k) == 32 {
		return k, nil
	}
	if k, err := hex.DecodeString(s); err == nil && len(k) == 32 {
		return k, nil
	}
	return nil, errors.New("master key must be 32 bytes, base64 or hex encoded")
}

// Name implements provider.Provider.
func (p *Provider) Name() string { return p.name }

// Type implements provider.Provider.
func (p *Provider) Type() string { return Type }

// Capabilities implements provider.Provider: the key specs of keyTypes and
// the algorithms of the table (table.go).
func (p *Provider) Capabilities() provider.Capabilities { return p.caps }

// keyFile is the on-disk form of one key.
type keyFile struct {
	Version int    `json:"v"`
	Spec    string `json:"spec"`
	// Extractable is set for keys made or imported extractable: only
	// those may be exported.
	Extractable bool   `json:"extractable,omitempty"`
	Sealed      []byte `json:"sealed"` // nonce ‖ AES-256-GCM(PKCS#8 or raw secret key)
}

func (p *Provider) path(objectID string) string { return filepath.Join(p.dir, objectID+".key") }

func aadFor(objectID string, s alg.Spec) []byte {
	return []byte("keygrid software key v1|" + objectID + "|" + s.String())
}

func (p *Provider) seal(plain, aad []byte) ([]byte, error) {
	nonce := make([]byte, p.aead.NonceSize(), p.aead.NonceSize()+len(plain)+p.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return p.aead.Seal(nonce, nonce, plain, aad), nil
}

func (p *Provider) open(sealed, aad []byte) ([]byte, error) {
	n := p.aead.NonceSize()
	if len(sealed) < n+p.aead.Overhead() {
		return nil, errors.New("sealed key too short")
	}
	return p.aead.Open(nil, sealed[:n], sealed[n:], aad)
}

func (p *Provider) checkOpen() error {
	if p.closed {
		return kgerr.New(kgerr.KindUnavailable, "provider is closed")
	}
	return nil
}

// CreateKey implements provider.Provider.
func (p *Provider) CreateKey(ctx context.Context, req provider.CreateKeyRequest) (provider.CreatedKey, error) {
	if !objectIDPattern.MatchString(req.ObjectID) {
		return provider.CreatedKey{}, kgerr.Invalid("object id must be 32 lowercase hex characters")
	}
	if err := p.caps.CheckSpec(req.Spec); err != nil {
		return provider.CreatedKey{}, err
	}
	var (
		priv any
		raw  []byte
		pub  []byte
		err  error
	)
	switch req.Spec.Type {
	case alg.RSA:
		priv, err = rsa.GenerateKey(rand.Reader, req.Spec.Size)
	case alg.EC:
		priv, err = ecdsa.GenerateKey(alg.Curve(req.Spec.Curve), rand.Reader)
	case alg.Ed25519:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	case alg.AES, alg.HMAC:
		raw = make([]byte, req.Spec.Size/8)
		_, err = rand.Read(raw)
	}
	if err != nil {
		return provider.CreatedKey{}, fmt.Errorf("generate %s key: %w", req.Spec, err)
	}
	if priv != nil {
		if raw, err = x509.MarshalPKCS8PrivateKey(priv); err != nil {
			return provider.CreatedKey{}, err
		}
		if pub, err = x509.MarshalPKIXPublicKey(priv.(crypto.Signer).Public()); err != nil {
			return provider.CreatedKey{}, err
		}
	}
	defer clear(raw)
	if err := p.storeKey(ctx, req.ObjectID, req.Spec, req.Extractable, raw, priv); err != nil {
		return provider.CreatedKey{}, err
	}
	return provider.CreatedKey{Ref: req.ObjectID, PublicKey: pub}, nil
}

// storeKey seals raw (PKCS#8 or a secret key's bytes) and writes it as the
// file of objectID, caching priv (nil for secret keys).
func (p *Provider) storeKey(ctx context.Context, objectID string, spec alg.Spec, extractable bool, raw []byte, priv any) error {
	sealed, err := p.seal(raw, aadFor(objectID, spec))
	if err != nil {
		return err
	}
	b, err := json.Marshal(keyFile{Version: 1, Spec: spec.String(), Extractable: extractable, Sealed: sealed})
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.checkOpen(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := fsutil.CreateFile(p.path(objectID), b, 0o600); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return kgerr.New(kgerr.KindAlreadyExists, "key material for this object id exists already")
		}
		return fmt.Errorf("software provider %q: write key: %w", p.name, err)
	}
	if priv != nil {
		p.cache[objectID] = priv
	}
	return nil
}

// FindKey implements provider.Provider.
func (p *Provider) FindKey(_ context.Context, objectID string) (string, bool, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if err := p.checkOpen(); err != nil {
		return "", false, err
	}
	if !objectIDPattern.MatchString(objectID) {
		return "", false, nil
	}
	_, err := os.Stat(p.path(objectID))
	switch {
	case err == nil:
		return objectID, true, nil
	case errors.Is(err, fs.ErrNotExist):
		return "", false, nil
	}
	return "", false, err
}

// DeleteKey implements provider.Provider.
func (p *Provider) DeleteKey(_ context.Context, ref string) error {
	if !objectIDPattern.MatchString(ref) {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.checkOpen(); err != nil {
		return err
	}
	delete(p.cache, ref)
	if err := os.Remove(p.path(ref)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("software provider %q: delete key: %w", p.name, err)
	}
	return fsutil.SyncDir(p.dir)
}

// aesKey is a cached secret key: its bytes (for key wrap) and its GCM.
type aesKey struct {
	raw []byte
	gcm cipher.AEAD
}

// readKeyFile reads and decodes the file of ref.
func (p *Provider) readKeyFile(ref string) (keyFile, error) {
	var f keyFile
	if !objectIDPattern.MatchString(ref) {
		return f, kgerr.ErrKeyNotFound
	}
	b, err := os.ReadFile(p.path(ref))
	if errors.Is(err, fs.ErrNotExist) {
		return f, kgerr.New(kgerr.KindKeyNotFound, "key material not found in the software keystore")
	}
	if err != nil {
		return f, err
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("software provider %q: key file %s is corrupt", p.name, ref)
	}
	return f, nil
}

// load returns the decrypted key of ref, from the cache or from disk: a
// *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey or *aesKey.
func (p *Provider) load(ref string, spec alg.Spec) (any, error) {
	p.mu.RLock()
	k, ok := p.cache[ref]
	closed := p.closed
	p.mu.RUnlock()
	if closed {
		return nil, p.checkOpen()
	}
	if ok {
		return k, nil
	}
	f, err := p.readKeyFile(ref)
	if err != nil {
		return nil, err
	}
	if f.Spec != spec.String() {
		return nil, fmt.Errorf("software provider %q: key %s is %s, expected %s", p.name, ref, f.Spec, spec)
	}
	raw, err := p.open(f.Sealed, aadFor(ref, spec))
	if err != nil {
		return nil, fmt.Errorf("software provider %q: key %s does not open under the master key", p.name, ref)
	}
	switch spec.Type {
	case alg.HMAC:
		k = macKey(raw)
	case alg.AES:
		block, err := aes.NewCipher(raw)
		if err != nil {
			return nil, err
		}
		g, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		k = &aesKey{raw: raw, gcm: g}
	default:
		k, err = x509.ParsePKCS8PrivateKey(raw)
		clear(raw)
		if err != nil {
			return nil, fmt.Errorf("software provider %q: key %s: %w", p.name, ref, err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if cached, ok := p.cache[ref]; ok {
		return cached, nil
	}
	// The file was read without the lock: a DeleteKey or Close since then
	// must not be undone by caching the key.
	if err := p.checkOpen(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(p.path(ref)); errors.Is(err, fs.ErrNotExist) {
		return nil, kgerr.New(kgerr.KindKeyNotFound, "key material not found in the software keystore")
	}
	p.cache[ref] = k
	return k, nil
}

func wrongKey(a alg.Algorithm) error {
	return kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("algorithm %s does not apply to this key", a))
}

// PublicKey implements provider.Provider.
func (p *Provider) PublicKey(_ context.Context, ref string) ([]byte, error) {
	f, err := p.readKeyFile(ref)
	if err != nil {
		return nil, err
	}
	spec, err := parseSpecString(f.Spec)
	if err != nil {
		return nil, err
	}
	k, err := p.load(ref, spec)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, kgerr.Invalid("a secret key has no public key")
	}
	return x509.MarshalPKIXPublicKey(s.Public())
}

// parseSpecString reads back a key file's spec (alg.Spec.String: "RSA-2048",
// "EC P-256", "Ed25519", "AES-256").
func parseSpecString(s string) (alg.Spec, error) {
	if c, ok := strings.CutPrefix(s, "EC "); ok {
		return alg.NewSpec("EC", 0, c)
	}
	if s == string(alg.Ed25519) {
		return alg.NewSpec(s, 0, "")
	}
	if i := strings.LastIndexByte(s, '-'); i > 0 {
		if n, err := strconv.Atoi(s[i+1:]); err == nil {
			return alg.NewSpec(s[:i], n, "")
		}
	}
	return alg.Spec{}, fmt.Errorf("unknown key spec %q", s)
}

// Sign implements provider.Provider.
func (p *Provider) Sign(_ context.Context, req provider.SignRequest) ([]byte, error) {
	a := req.Algorithm
	f, err := p.performerFor(req.Spec, a, useSign)
	if err != nil {
		return nil, err
	}
	if a.Hash != 0 && len(req.Input) != a.Hash.Size() {
		return nil, kgerr.Invalid("digest does not match the algorithm's hash")
	}
	k, err := p.load(req.Ref, req.Spec)
	if err != nil {
		return nil, err
	}
	return f.sign(k, a, req.Spec, req.Input)
}

func (p *Provider) secret(ref string, spec alg.Spec, a alg.Algorithm) (*aesKey, error) {
	k, err := p.load(ref, spec)
	if err != nil {
		return nil, err
	}
	sk, ok := k.(*aesKey)
	if !ok {
		return nil, wrongKey(a)
	}
	return sk, nil
}

// Encrypt implements provider.Provider.
func (p *Provider) Encrypt(_ context.Context, req provider.EncryptRequest) (provider.EncryptResult, error) {
	f, err := p.performerFor(req.Spec, req.Algorithm, useEncrypt)
	if err != nil {
		return provider.EncryptResult{}, err
	}
	k, err := p.secret(req.Ref, req.Spec, req.Algorithm.Name)
	if err != nil {
		return provider.EncryptResult{}, err
	}
	return f.encrypt(k, req.Plaintext, req.AAD)
}

// Decrypt implements provider.Provider.
func (p *Provider) Decrypt(_ context.Context, req provider.DecryptRequest) ([]byte, error) {
	f, err := p.performerFor(req.Spec, req.Algorithm, useDecrypt)
	if err != nil {
		return nil, err
	}
	k, err := p.load(req.Ref, req.Spec)
	if err != nil {
		return nil, err
	}
	return f.decrypt(k, req.Algorithm, req)
}

var kwpInfo, _ = alg.Lookup(string(alg.AESKWP))

// WrapKey implements provider.Provider.
func (p *Provider) WrapKey(_ context.Context, req provider.WrapRequest) ([]byte, error) {
	f, err := p.performerFor(req.Spec, kwpInfo, useWrap)
	if err != nil {
		return nil, err
	}
	k, err := p.secret(req.Ref, req.Spec, alg.AESKWP)
	if err != nil {
		return nil, err
	}
	return f.wrap(k, req.KeyMaterial)
}

// UnwrapKey implements provider.Provider.
func (p *Provider) UnwrapKey(_ context.Context, req provider.UnwrapRequest) ([]byte, error) {
	f, err := p.performerFor(req.Spec, kwpInfo, useUnwrap)
	if err != nil {
		return nil, err
	}
	k, err := p.secret(req.Ref, req.Spec, alg.AESKWP)
	if err != nil {
		return nil, err
	}
	return f.unwrap(k, req.Wrapped)
}

// CheckHealth implements provider.Provider: the keystore directory must be
// readable.
func (p *Provider) CheckHealth(context.Context) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if err := p.checkOpen(); err != nil {
		return err
	}
	_, err := os.Stat(filepath.Join(p.dir, checkFile))
	return err
}

// Close implements provider.Provider.
func (p *Provider) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	clear(p.cache)
	return nil
}
