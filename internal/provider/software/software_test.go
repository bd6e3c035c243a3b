package software_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/providertest"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
)

func masterKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestConformance(t *testing.T) {
	providertest.Run(t, func(t *testing.T) provider.Provider {
		p, err := software.Open("software", t.TempDir(), masterKey(t))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return p
	})
}

func mustOpen(t *testing.T, dir string, mk []byte) *software.Provider {
	t.Helper()
	p, err := software.Open("software", dir, mk)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func mustCreate(t *testing.T, p provider.Provider, spec alg.Spec) (objectID string, created provider.CreatedKey) {
	t.Helper()
	objectID = providertest.NewObjectID()
	created, err := p.CreateKey(t.Context(), provider.CreateKeyRequest{ObjectID: objectID, Label: "t", Spec: spec})
	if err != nil {
		t.Fatalf("CreateKey %s: %v", spec, err)
	}
	return objectID, created
}

func mustSpec(t *testing.T, typ string, size int, curve string) alg.Spec {
	t.Helper()
	s, err := alg.NewSpec(typ, size, curve)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustAlg(t *testing.T, name alg.Algorithm) alg.Info {
	t.Helper()
	a, err := alg.Lookup(string(name))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestOpenRefusesWrongMasterKey(t *testing.T) {
	dir := t.TempDir()
	p, err := software.Open("software", dir, masterKey(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	mustCreate(t, p, mustSpec(t, "EC", 0, "P-256"))
	p.Close()

	cases := []struct {
		name string
		key  []byte
	}{
		{"fail other 32-byte key", masterKey(t)},
		{"fail 31-byte key", masterKey(t)[:31]},
		{"fail empty key", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := software.Open("software", dir, tc.key)
			if err == nil {
				p.Close()
				t.Fatal("Open with a wrong master key succeeded")
			}
			if p != nil {
				t.Errorf("Open returned a provider with an error")
			}
		})
	}
}

func TestReopenKeepsKeys(t *testing.T) {
	dir, mk := t.TempDir(), masterKey(t)
	ctx := t.Context()
	p1, err := software.Open("software", dir, mk)
	if err != nil {
		t.Fatal(err)
	}
	type kept struct {
		spec     alg.Spec
		a        alg.Info
		objectID string
		created  provider.CreatedKey
		// ct is an AES-GCM ciphertext made before the reopen.
		nonce, ct []byte
	}
	var keys []kept
	for _, c := range []struct {
		spec alg.Spec
		a    alg.Algorithm
	}{
		{mustSpec(t, "RSA", 2048, ""), alg.PS256},
		{mustSpec(t, "EC", 0, "P-384"), alg.ES384},
		{mustSpec(t, "Ed25519", 0, ""), alg.EdDSA},
		{mustSpec(t, "AES", 256, ""), alg.A256GCM},
	} {
		id, created := mustCreate(t, p1, c.spec)
		k := kept{spec: c.spec, a: mustAlg(t, c.a), objectID: id, created: created}
		if c.spec.Type == alg.AES {
			r, err := p1.Encrypt(ctx, provider.EncryptRequest{Ref: created.Ref, Spec: c.spec, Algorithm: k.a,
				Plaintext: []byte("before reopen"), AAD: []byte("aad")})
			if err != nil {
				t.Fatal(err)
			}
			k.nonce, k.ct = r.Nonce, r.Ciphertext
		}
		keys = append(keys, k)
	}
	if err := p1.Close(); err != nil {
		t.Fatal(err)
	}

	p2 := mustOpen(t, dir, mk)
	for _, k := range keys {
		t.Run("ok "+k.spec.String(), func(t *testing.T) {
			ref, found, err := p2.FindKey(ctx, k.objectID)
			if err != nil || !found || ref != k.created.Ref {
				t.Fatalf("FindKey = %q, %v, %v; want %q, true, nil", ref, found, err, k.created.Ref)
			}
			if k.spec.Type == alg.AES {
				pt, err := p2.Decrypt(ctx, provider.DecryptRequest{Ref: ref, Spec: k.spec, Algorithm: k.a,
					Ciphertext: k.ct, Nonce: k.nonce, AAD: []byte("aad")})
				if err != nil || string(pt) != "before reopen" {
					t.Errorf("Decrypt after reopen = %q, %v", pt, err)
				}
				return
			}
			der, err := p2.PublicKey(ctx, ref)
			if err != nil || !bytes.Equal(der, k.created.PublicKey) {
				t.Fatalf("PublicKey after reopen = %x, %v; want %x", der, err, k.created.PublicKey)
			}
			pub, err := x509.ParsePKIXPublicKey(der)
			if err != nil {
				t.Fatal(err)
			}
			in := []byte("after reopen")
			if k.a.Hash != 0 {
				in = alg.Digest(k.a, in)
			}
			sig, err := p2.Sign(ctx, provider.SignRequest{Ref: ref, Spec: k.spec, Algorithm: k.a, Input: in})
			if err != nil {
				t.Fatalf("Sign after reopen: %v", err)
			}
			if k.spec.Type == alg.EC {
				if sig, err = alg.ECDSARawToDER(sig); err != nil {
					t.Fatal(err)
				}
			}
			if ok, err := alg.Verify(pub, k.a, in, sig); !ok || err != nil {
				t.Errorf("signature after reopen does not verify with the original public key: %v, %v", ok, err)
			}
		})
	}
}

// TestKeyFileBoundToObjectID checks that a sealed key moved to another file
// name does not open: the object id is part of the GCM additional data.
func TestKeyFileBoundToObjectID(t *testing.T) {
	dir, mk := t.TempDir(), masterKey(t)
	p := mustOpen(t, dir, mk)
	spec := mustSpec(t, "EC", 0, "P-256")
	id, _ := mustCreate(t, p, spec)
	b, err := os.ReadFile(filepath.Join(dir, id+".key"))
	if err != nil {
		t.Fatal(err)
	}
	other := providertest.NewObjectID()
	if err := os.WriteFile(filepath.Join(dir, other+".key"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	// A fresh provider, so that nothing is cached.
	p2 := mustOpen(t, dir, mk)
	a := mustAlg(t, alg.ES256)
	if _, err := p2.Sign(t.Context(), provider.SignRequest{Ref: other, Spec: spec, Algorithm: a, Input: alg.Digest(a, []byte("x"))}); err == nil {
		t.Error("a key file copied under another object id signs")
	}
	if _, err := p2.Sign(t.Context(), provider.SignRequest{Ref: id, Spec: spec, Algorithm: a, Input: alg.Digest(a, []byte("x"))}); err != nil {
		t.Errorf("the original key no longer signs: %v", err)
	}
}

// TestDeleteWhileLoading races DeleteKey against the first use of a key on
// a fresh provider (which reads and decrypts the key file): once DeleteKey
// has returned, the key must not sign, even if a load was in flight.
func TestDeleteWhileLoading(t *testing.T) {
	dir, mk := t.TempDir(), masterKey(t)
	spec := mustSpec(t, "RSA", 2048, "")
	a := mustAlg(t, alg.RS256)
	in := alg.Digest(a, []byte("x"))
	p := mustOpen(t, dir, mk)
	// RSA, because parsing an RSA key is slow enough to leave a window; a
	// few keys, because the race is not hit every time.
	const n = 6
	var ids []string
	for range n {
		id, _ := mustCreate(t, p, spec)
		ids = append(ids, id)
	}
	p.Close()
	for _, id := range ids {
		q := mustOpen(t, dir, mk) // empty cache: Sign must load from disk
		started := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			close(started)
			q.Sign(context.Background(), provider.SignRequest{Ref: id, Spec: spec, Algorithm: a, Input: in})
		}()
		<-started
		if err := q.DeleteKey(t.Context(), id); err != nil {
			t.Fatal(err)
		}
		<-done
		_, err := q.Sign(t.Context(), provider.SignRequest{Ref: id, Spec: spec, Algorithm: a, Input: in})
		if !errors.Is(err, kgerr.ErrKeyNotFound) {
			t.Fatalf("Sign after DeleteKey returned = %v; want KEY_NOT_FOUND", err)
		}
	}
}

func decoder(cfg software.Config) func(out any) error {
	return func(out any) error {
		c, ok := out.(*software.Config)
		if !ok {
			return errors.New("unexpected config type")
		}
		*c = cfg
		return nil
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestNewEmbeddedMasterKey(t *testing.T) {
	tmp := t.TempDir()
	params := provider.Params{Name: "software", Type: "software", DataDir: tmp, Embedded: true, Logger: quietLogger()}
	p1, err := software.New(t.Context(), params)
	if err != nil {
		t.Fatalf("first New: %v", err)
	}
	path := filepath.Join(tmp, "master.key")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("master.key not generated: %v", err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("master.key mode = %o, want 600", perm)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b))); err != nil || len(k) != 32 {
		t.Errorf("master.key is not 32 base64-encoded bytes: %d bytes, %v", len(k), err)
	}
	spec := mustSpec(t, "Ed25519", 0, "")
	id, created := mustCreate(t, p1, spec)
	p1.Close()

	p2, err := software.New(t.Context(), params)
	if err != nil {
		t.Fatalf("second New: %v", err)
	}
	defer p2.Close()
	b2, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(b, b2) {
		t.Fatalf("master.key changed on the second start (%v)", err)
	}
	ref, found, err := p2.FindKey(t.Context(), id)
	if err != nil || !found {
		t.Fatalf("FindKey after restart = %v, %v", found, err)
	}
	der, err := p2.PublicKey(t.Context(), ref)
	if err != nil || !bytes.Equal(der, created.PublicKey) {
		t.Errorf("PublicKey after restart = %x, %v; want %x", der, err, created.PublicKey)
	}
	if _, err := os.Stat(filepath.Join(tmp, "keystore", "software", id+".key")); err != nil {
		t.Errorf("the keystore is not at <data-dir>/keystore/<name>: %v", err)
	}
}

func TestNewMasterKeyConfig(t *testing.T) {
	const env = "KEYGRID_SOFTWARE_TEST_MASTER_KEY"
	good := masterKey(t)
	file := filepath.Join(t.TempDir(), "mk")
	if err := os.WriteFile(file, []byte(hex.EncodeToString(good)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		cfg      software.Config
		env      string // value of env; "-" leaves it unset
		embedded bool
		wantErr  bool
		// mention is a setting the operator-facing error message must name.
		mention string
	}{
		{name: "ok master_key_env base64", cfg: software.Config{MasterKeyEnv: env}, env: base64.StdEncoding.EncodeToString(good)},
		{name: "ok master_key_env hex", cfg: software.Config{MasterKeyEnv: env}, env: hex.EncodeToString(good)},
		{name: "ok master_key_file hex", cfg: software.Config{MasterKeyFile: file}, env: "-"},
		{name: "fail no master key, not embedded", env: "-", wantErr: true, mention: "master_key_file"},
		{name: "fail master_key_env garbage", cfg: software.Config{MasterKeyEnv: env}, env: "not a key!", wantErr: true, mention: "master_key_env"},
		{name: "fail master_key_env short", cfg: software.Config{MasterKeyEnv: env}, env: base64.StdEncoding.EncodeToString(good[:16]), wantErr: true, mention: "master_key_env"},
		{name: "fail master_key_env unset", cfg: software.Config{MasterKeyEnv: env}, env: "-", wantErr: true, mention: "master_key_env"},
		{name: "fail master_key_file missing", cfg: software.Config{MasterKeyFile: file + ".missing"}, env: "-", wantErr: true, mention: "master_key_file"},
		{name: "fail both file and env", cfg: software.Config{MasterKeyFile: file, MasterKeyEnv: env}, env: hex.EncodeToString(good), wantErr: true, mention: "master_key_env"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env == "-" {
				t.Setenv(env, "")
				os.Unsetenv(env)
			} else {
				t.Setenv(env, tc.env)
			}
			data := t.TempDir()
			p, err := software.New(t.Context(), provider.Params{Name: "soft", Type: "software", DataDir: data,
				Embedded: tc.embedded, Decode: decoder(tc.cfg), Logger: quietLogger()})
			if tc.wantErr {
				if err == nil {
					p.Close()
					t.Fatal("New succeeded")
				}
				// The message is what an operator reads to fix the
				// configuration: it must name the setting.
				if !strings.Contains(err.Error(), tc.mention) {
					t.Errorf("error %q does not name %s", err, tc.mention)
				}
				if _, serr := os.Stat(filepath.Join(data, "master.key")); serr == nil {
					t.Error("a master key was generated although one was configured or required")
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer p.Close()
			if _, serr := os.Stat(filepath.Join(data, "master.key")); serr == nil {
				t.Error("a master key was generated although one was configured")
			}
			// The configured key is the one in use: a keystore made with it
			// opens with it and not with another.
			spec := mustSpec(t, "AES", 128, "")
			mustCreate(t, p, spec)
			p.Close()
			dir := filepath.Join(data, "keystore", "soft")
			q, err := software.Open("soft", dir, good)
			if err != nil {
				t.Fatalf("the keystore does not open with the configured key: %v", err)
			}
			q.Close()
			if q, err := software.Open("soft", dir, masterKey(t)); err == nil {
				q.Close()
				t.Error("the keystore opens with another key")
			}
		})
	}
}
