package service

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// TestCreateKeySpecs creates a key of every type, size and curve the
// software provider makes, with default and explicit algorithms and
// usages, and checks the result, the stored record, the material and the
// audit record.
func TestCreateKeySpecs(t *testing.T) {
	f := newFixture(t)
	expires := f.clock.Now().Add(24 * time.Hour).In(time.FixedZone("CET", 3600))
	cases := []struct {
		name      string
		spec      KeySpec
		expires   *time.Time
		meta      map[string]string
		wantType  string
		wantSize  int
		wantCurve string
		wantAlg   string
		wantUsage []string
	}{
		{name: "rsa-2048 default", spec: specRSA, wantType: "RSA", wantSize: 2048, wantAlg: "PS256", wantUsage: []string{"sign", "verify"}},
		{name: "rsa-3072 RS384", spec: KeySpec{KeyType: "rsa", KeySize: 3072, Algorithm: "rs384"}, wantType: "RSA", wantSize: 3072, wantAlg: "RS384", wantUsage: []string{"sign", "verify"}},
		{name: "rsa-4096 PS512", spec: KeySpec{KeyType: "RSA", KeySize: 4096, Algorithm: "PS512"}, wantType: "RSA", wantSize: 4096, wantAlg: "PS512", wantUsage: []string{"sign", "verify"}},
		{name: "rsa encrypt usage defaults to RSA-OAEP-256", spec: specRSAEnc, wantType: "RSA", wantSize: 2048, wantAlg: "RSA-OAEP-256", wantUsage: []string{"encrypt", "decrypt"}},
		{name: "rsa RSA-OAEP default usage", spec: KeySpec{KeyType: "RSA", KeySize: 2048, Algorithm: "RSA-OAEP"}, wantType: "RSA", wantSize: 2048, wantAlg: "RSA-OAEP", wantUsage: []string{"encrypt", "decrypt"}},
		{name: "rsa sign and encrypt usage", spec: KeySpec{KeyType: "RSA", KeySize: 2048, Usage: []string{"sign", "verify", "encrypt", "decrypt", "SIGN"}}, wantType: "RSA", wantSize: 2048, wantAlg: "PS256", wantUsage: []string{"sign", "verify", "encrypt", "decrypt"}},
		{name: "ec P-256 default", spec: specP256, wantType: "EC", wantSize: 256, wantCurve: "P-256", wantAlg: "ES256", wantUsage: []string{"sign", "verify"}},
		{name: "ec P-384 by size", spec: KeySpec{KeyType: "ECDSA", KeySize: 384}, wantType: "EC", wantSize: 384, wantCurve: "P-384", wantAlg: "ES384", wantUsage: []string{"sign", "verify"}},
		{name: "ec P-521 alias", spec: KeySpec{KeyType: "EC", Curve: "secp521r1", Algorithm: "ES512"}, wantType: "EC", wantSize: 521, wantCurve: "P-521", wantAlg: "ES512", wantUsage: []string{"sign", "verify"}},
		{name: "ec verify-only usage", spec: KeySpec{KeyType: "EC", Curve: "prime256v1", Usage: []string{"verify"}}, wantType: "EC", wantSize: 256, wantCurve: "P-256", wantAlg: "ES256", wantUsage: []string{"verify"}},
		{name: "ed25519", spec: specEd25519, wantType: "Ed25519", wantSize: 256, wantAlg: "EdDSA", wantUsage: []string{"sign", "verify"}},
		{name: "aes-128 default", spec: specAES128, wantType: "AES", wantSize: 128, wantAlg: "A128GCM", wantUsage: []string{"encrypt", "decrypt"}},
		{name: "aes-256 default", spec: specAES256, wantType: "AES", wantSize: 256, wantAlg: "A256GCM", wantUsage: []string{"encrypt", "decrypt"}},
		{name: "aes-256 wrap usage defaults to AES-KWP", spec: specKEK, wantType: "AES", wantSize: 256, wantAlg: "AES-KWP", wantUsage: []string{"wrap", "unwrap"}},
		{name: "aes-128 AES-KWP default usage", spec: KeySpec{KeyType: "AES", KeySize: 128, Algorithm: "AES-KWP"}, wantType: "AES", wantSize: 128, wantAlg: "AES-KWP", wantUsage: []string{"wrap", "unwrap"}},
		{name: "aes-256 encrypt and wrap", spec: KeySpec{KeyType: "AES", KeySize: 256, Usage: []string{"encrypt", "wrap"}}, wantType: "AES", wantSize: 256, wantAlg: "A256GCM", wantUsage: []string{"encrypt", "wrap"}},
		{name: "extractable with metadata and expiry", spec: KeySpec{KeyType: "AES", KeySize: 256, Extractable: true},
			expires: &expires, meta: map[string]string{"owner": "team-a", "k": strings.Repeat("v", maxMetadataValue)},
			wantType: "AES", wantSize: 256, wantAlg: "A256GCM", wantUsage: []string{"encrypt", "decrypt"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("key-%02d", i)
			f.clock.Advance(time.Second)
			now := f.clock.Now()
			k, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: name, Spec: tc.spec, Metadata: tc.meta, ExpiresAt: tc.expires})
			wantErr(t, err, nil)
			if k.Name != name || k.Provider != "software" || k.KeyType != tc.wantType || k.KeySize != tc.wantSize ||
				k.Curve != tc.wantCurve || k.Algorithm != tc.wantAlg || !slices.Equal(k.Usage, tc.wantUsage) ||
				k.State != "active" || k.Version != 1 || len(k.Versions) != 1 || k.Extractable != tc.spec.Extractable {
				t.Fatalf("created %+v", k)
			}
			if !k.CreatedAt.Equal(now) || !k.UpdatedAt.Equal(now) || !k.Versions[0].CreatedAt.Equal(now) {
				t.Fatalf("times %v %v %v, want the clock's %v", k.CreatedAt, k.UpdatedAt, k.Versions[0].CreatedAt, now)
			}
			if tc.expires != nil {
				if k.ExpiresAt == nil || !k.ExpiresAt.Equal(*tc.expires) || k.ExpiresAt.Location() != time.UTC {
					t.Fatalf("expires_at %v, want %v in UTC", k.ExpiresAt, tc.expires)
				}
			} else if k.ExpiresAt != nil {
				t.Fatalf("expires_at %v, want none", k.ExpiresAt)
			}
			for mk, mv := range tc.meta {
				if k.Metadata[mk] != mv {
					t.Fatalf("metadata %q = %q", mk, k.Metadata[mk])
				}
			}

			sk := f.stored(k.ID)
			if sk.Name != name || sk.State != store.StateActive || len(sk.Versions) != 1 || sk.Versions[0].State != store.StateActive ||
				sk.Versions[0].ProviderRef == "" || sk.Versions[0].ProviderRef != k.Versions[0].ProviderRef || !f.material(sk.Versions[0].ObjectID) {
				t.Fatalf("stored %+v", sk)
			}
			if byName := f.stored(name); byName.ID != k.ID {
				t.Fatalf("by name: %s, by id: %s", byName.ID, k.ID)
			}
			// The public key is the key's, parsed by Go's x509 (AES has none).
			checkPublicKey(t, sk.Versions[0].PublicKey, tc.wantType, tc.wantSize)

			wantRecord(t, f.last(), audit.Event{Operation: "create", Outcome: audit.OutcomeSuccess, KeyID: k.ID, KeyName: name,
				KeyVersion: 1, Provider: "software", Algorithm: tc.wantAlg, Principal: adminP.Name, RequestID: "req-" + adminP.Name})
		})
	}
}

// checkPublicKey parses a stored public key independently and checks its
// type and size.
func checkPublicKey(t *testing.T, der []byte, keyType string, size int) {
	t.Helper()
	if keyType == "AES" {
		if der != nil {
			t.Fatalf("an AES key has a public key of %d bytes", len(der))
		}
		return
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatalf("public key: %v", err)
	}
	ok := false
	switch p := pub.(type) {
	case *rsa.PublicKey:
		ok = keyType == "RSA" && p.N.BitLen() == size
	case *ecdsa.PublicKey:
		ok = keyType == "EC" && p.Curve.Params().BitSize == size
	case ed25519.PublicKey:
		ok = keyType == "Ed25519" && len(p) == ed25519.PublicKeySize
	}
	if !ok {
		t.Fatalf("public key %T does not match %s-%d", pub, keyType, size)
	}
}

// TestCreateKeyRefused checks every reason a create is refused: the error
// kind, that nothing is left in the store or the keystore, and the audit
// record.
func TestCreateKeyRefused(t *testing.T) {
	f := newFixture(t)
	f.create("taken", specP256)
	past := f.clock.Now().Add(-time.Minute)
	now := f.clock.Now()
	// The metadata limits are inclusive.
	fullMeta := map[string]string{strings.Repeat("k", maxMetadataKey): strings.Repeat("v", maxMetadataValue)}
	for i := len(fullMeta); i < maxMetadataEntries; i++ {
		fullMeta[fmt.Sprintf("k%d", i)] = "v"
	}
	if k, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: "full-metadata", Spec: specP256, Metadata: fullMeta}); err != nil || len(k.Metadata) != maxMetadataEntries {
		t.Fatalf("metadata at its limits: %v", err)
	}
	if k := f.stored("full-metadata"); len(k.Metadata) != maxMetadataEntries || k.Metadata[strings.Repeat("k", maxMetadataKey)] != strings.Repeat("v", maxMetadataValue) {
		t.Fatalf("stored metadata of %d entries", len(k.Metadata))
	}
	bigMeta := map[string]string{}
	for i := range maxMetadataEntries + 1 {
		bigMeta[fmt.Sprintf("k%d", i)] = "v"
	}
	cases := []struct {
		name string
		req  CreateKeyRequest
		want error
	}{
		{"fail name empty", CreateKeyRequest{Name: "", Spec: specP256}, kgerr.ErrInvalidInput},
		{"fail name starts with dot", CreateKeyRequest{Name: ".hidden", Spec: specP256}, kgerr.ErrInvalidInput},
		{"fail name with space", CreateKeyRequest{Name: "a b", Spec: specP256}, kgerr.ErrInvalidInput},
		{"fail name with slash", CreateKeyRequest{Name: "a/b", Spec: specP256}, kgerr.ErrInvalidInput},
		{"fail name not ascii", CreateKeyRequest{Name: "schlüssel", Spec: specP256}, kgerr.ErrInvalidInput},
		{"fail name 129 characters", CreateKeyRequest{Name: strings.Repeat("n", 129), Spec: specP256}, kgerr.ErrInvalidInput},
		{"fail unknown provider", CreateKeyRequest{Name: "p", Provider: "hsm", Spec: specP256}, kgerr.ErrInvalidInput},
		{"fail key type missing", CreateKeyRequest{Name: "t", Spec: KeySpec{}}, kgerr.ErrInvalidInput},
		{"fail key type unknown", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "DSA", KeySize: 2048}}, kgerr.ErrUnsupportedAlgorithm},
		{"fail rsa-1024", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "RSA", KeySize: 1024}}, kgerr.ErrInvalidInput},
		{"fail rsa without size", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "RSA"}}, kgerr.ErrInvalidInput},
		{"fail ec curve unknown", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "EC", Curve: "P-192"}}, kgerr.ErrUnsupportedAlgorithm},
		{"fail ec size and curve disagree", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "EC", KeySize: 384, Curve: "P-256"}}, kgerr.ErrInvalidInput},
		{"fail aes-192", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "AES", KeySize: 192}}, kgerr.ErrInvalidInput},
		{"fail algorithm unknown", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "EC", Curve: "P-256", Algorithm: "ES999"}}, kgerr.ErrUnsupportedAlgorithm},
		{"fail ES384 on P-256", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "EC", Curve: "P-256", Algorithm: "ES384"}}, kgerr.ErrUnsupportedAlgorithm},
		{"fail ES256 on RSA", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "RSA", KeySize: 2048, Algorithm: "ES256"}}, kgerr.ErrUnsupportedAlgorithm},
		{"fail A256GCM on aes-128", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "AES", KeySize: 128, Algorithm: "A256GCM"}}, kgerr.ErrUnsupportedAlgorithm},
		{"fail usage unknown", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "EC", Curve: "P-256", Usage: []string{"fly"}}}, kgerr.ErrInvalidInput},
		{"fail usage encrypt on ec", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "EC", Curve: "P-256", Usage: []string{"encrypt"}}}, kgerr.ErrInvalidInput},
		{"fail PS256 with encrypt usage", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "RSA", KeySize: 2048, Algorithm: "PS256", Usage: []string{"encrypt", "decrypt"}}}, kgerr.ErrInvalidInput},
		{"fail A256GCM with wrap usage", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "AES", KeySize: 256, Algorithm: "A256GCM", Usage: []string{"wrap", "unwrap"}}}, kgerr.ErrInvalidInput},
		{"fail AES-KWP with encrypt usage", CreateKeyRequest{Name: "t", Spec: KeySpec{KeyType: "AES", KeySize: 256, Algorithm: "AES-KWP", Usage: []string{"encrypt"}}}, kgerr.ErrInvalidInput},
		{"fail metadata too many entries", CreateKeyRequest{Name: "t", Spec: specP256, Metadata: bigMeta}, kgerr.ErrInvalidInput},
		{"fail metadata empty key", CreateKeyRequest{Name: "t", Spec: specP256, Metadata: map[string]string{"": "v"}}, kgerr.ErrInvalidInput},
		{"fail metadata key too long", CreateKeyRequest{Name: "t", Spec: specP256, Metadata: map[string]string{strings.Repeat("k", maxMetadataKey+1): "v"}}, kgerr.ErrInvalidInput},
		{"fail metadata value too long", CreateKeyRequest{Name: "t", Spec: specP256, Metadata: map[string]string{"k": strings.Repeat("v", maxMetadataValue+1)}}, kgerr.ErrInvalidInput},
		{"fail expires_at in the past", CreateKeyRequest{Name: "t", Spec: specP256, ExpiresAt: &past}, kgerr.ErrInvalidInput},
		{"fail expires_at now", CreateKeyRequest{Name: "t", Spec: specP256, ExpiresAt: &now}, kgerr.ErrInvalidInput},
		{"fail duplicate name", CreateKeyRequest{Name: "taken", Spec: specAES256}, kgerr.ErrKeyAlreadyExists},
	}
	before, files := f.storedKeys(), f.keyFiles()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k, err := f.svc.CreateKey(f.admin(), tc.req)
			wantErr(t, err, tc.want)
			if k != nil {
				t.Fatalf("refused create returned %+v", k)
			}
			after := f.storedKeys()
			if len(after) != len(before) {
				t.Fatalf("store changed: %d keys before, %d after", len(before), len(after))
			}
			for i := range after {
				if after[i].ID != before[i].ID || after[i].Revision != before[i].Revision {
					t.Fatalf("store changed: %s", after[i].Name)
				}
			}
			if n := f.keyFiles(); n != files {
				t.Fatalf("keystore holds %d keys, %d before", n, files)
			}
			r := f.last()
			wantRecord(t, r, audit.Event{Operation: "create", Outcome: audit.OutcomeFailure, ErrorCode: string(kgerr.KindOf(tc.want)), Principal: adminP.Name})
			if r.KeyID != "" && tc.want == kgerr.ErrKeyAlreadyExists {
				t.Fatalf("a refused duplicate is audited with the id %s of a key never made", r.KeyID)
			}
		})
	}
	// The existing key of the duplicate's name is untouched, and its
	// refusal is audited under the name asked for.
	if k := f.stored("taken"); k.KeyType != "EC" || k.Revision != before[0].Revision {
		t.Fatalf("taken: %+v", k)
	}
}

// TestCreateSameNameConcurrently races creates of one name: exactly one
// wins, the others get KEY_ALREADY_EXISTS and make no material.
func TestCreateSameNameConcurrently(t *testing.T) {
	f := newFixture(t)
	const n = 8
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: "contested", Spec: specEd25519})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	won := 0
	for err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, kgerr.ErrKeyAlreadyExists):
			t.Fatalf("a losing create: %v", err)
		}
	}
	if won != 1 || len(f.storedKeys()) != 1 || f.keyFiles() != 1 {
		t.Fatalf("%d creates won; %d keys stored, %d key files", won, len(f.storedKeys()), f.keyFiles())
	}
}

// TestCreateDefaultProvider checks which provider a create without one
// goes to, and a create on a named second provider.
func TestCreateDefaultProvider(t *testing.T) {
	second := openSoftware(t, "vault")
	t.Run("two providers default to software", func(t *testing.T) {
		f := newFixture(t, withProvider(second))
		if k := f.create("a", specP256); k.Provider != "software" {
			t.Fatalf("provider %s", k.Provider)
		}
		k, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: "b", Provider: "vault", Spec: specP256})
		wantErr(t, err, nil)
		sk := f.stored(k.ID)
		if sk.Provider != "vault" || f.material(sk.Versions[0].ObjectID) {
			t.Fatalf("stored %+v (material in the software keystore: %v)", sk, f.material(sk.Versions[0].ObjectID))
		}
		if _, found, _ := second.FindKey(context.Background(), sk.Versions[0].ObjectID); !found {
			t.Fatal("the material is not in the vault keystore")
		}
		if got := f.svc.ProviderNames(); !slices.Equal(got, []string{"software", "vault"}) {
			t.Fatalf("provider names %v", got)
		}
		if p, ok := f.svc.Provider("vault"); !ok || p.Name() != "vault" {
			t.Fatalf("Provider(vault) = %v, %v", p, ok)
		}
		if _, ok := f.svc.Provider("nope"); ok {
			t.Fatal("Provider(nope) found")
		}
	})
	t.Run("one provider is the default whatever its name", func(t *testing.T) {
		f := newFixture(t, func(f *fixture, o *Options) { o.Providers = []provider.Provider{openSoftware(t, "only")} })
		if k := f.create("a", specP256); k.Provider != "only" {
			t.Fatalf("provider %s", k.Provider)
		}
	})
	t.Run("configured default", func(t *testing.T) {
		f := newFixture(t, withProvider(openSoftware(t, "other")), func(f *fixture, o *Options) { o.DefaultProvider = "other" })
		if k := f.create("a", specP256); k.Provider != "other" {
			t.Fatalf("provider %s", k.Provider)
		}
	})
}

// TestNewRefuses checks New's own checks.
func TestNewRefuses(t *testing.T) {
	f := newFixture(t)
	if _, err := New(Options{Audit: f.audit, Metrics: f.metrics}); err == nil {
		t.Fatal("New without a store succeeded")
	}
	if _, err := New(Options{Store: f.store, Metrics: f.metrics}); err == nil {
		t.Fatal("New without an audit log succeeded")
	}
	dup := openSoftware(t, "software")
	if _, err := New(Options{Store: f.store, Audit: f.audit, Metrics: f.metrics, Providers: []provider.Provider{f.soft, dup}}); err == nil {
		t.Fatal("New with two providers named software succeeded")
	}
	// The provider collector is registered once per registry.
	if _, err := New(Options{Store: f.store, Audit: f.audit, Metrics: f.metrics, Providers: []provider.Provider{f.soft}}); err == nil {
		t.Fatal("a second service on the same metrics registry succeeded")
	}
}
