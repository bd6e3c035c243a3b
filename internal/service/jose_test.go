package service

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// keySet is the go-jose view of the service's JWKS.
func keySet(t *testing.T, keys []JWK) jose.JSONWebKeySet {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, k := range keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Key, KeyID: k.KID, Algorithm: k.Algorithm, Use: k.Use})
	}
	return set
}

var joseAlgorithms = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA}

func TestJWTEveryAlgorithm(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct {
		algorithm string
		spec      KeySpec
	}{
		{"RS256", specRSA}, {"RS384", specRSA}, {"RS512", specRSA}, {"PS256", specRSA}, {"PS384", specRSA}, {"PS512", specRSA},
		{"ES256", specP256}, {"ES384", specP384}, {"ES512", specP521}, {"EdDSA", specEd25519},
	} {
		t.Run(c.algorithm, func(t *testing.T) {
			spec := c.spec
			spec.Algorithm = c.algorithm
			k := f.create("jwt-"+strings.ToLower(c.algorithm), spec)
			res, err := f.svc.SignJWT(as(operatorP), JWTRequest{Key: k.Name, Claims: map[string]any{"sub": "alice", "aud": "api"},
				Header: map[string]any{"x-tenant": "blue"}, ExpiresIn: 15 * time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			jwks, err := f.svc.KeyJWKS(as(auditorP), k.Name)
			if err != nil {
				t.Fatal(err)
			}
			set := keySet(t, jwks)
			tok, err := jwt.ParseSigned(res.Token, joseAlgorithms)
			if err != nil {
				t.Fatal(err)
			}
			h := tok.Headers[0]
			if h.KeyID != k.ID+".1" || h.Algorithm != c.algorithm || h.ExtraHeaders["typ"] != "JWT" || h.ExtraHeaders["x-tenant"] != "blue" {
				t.Fatalf("header %+v", h)
			}
			keys := set.Key(h.KeyID)
			if len(keys) != 1 {
				t.Fatalf("kid %s in the JWKS %d times", h.KeyID, len(keys))
			}
			var claims jwt.Claims
			if err := tok.Claims(keys[0].Key, &claims); err != nil {
				t.Fatalf("verify with the JWKS key: %v", err)
			}
			now := f.clock.Now()
			if err := claims.ValidateWithLeeway(jwt.Expected{Subject: "alice", AnyAudience: jwt.Audience{"api"}, Time: now.Add(14 * time.Minute)}, 0); err != nil {
				t.Fatal(err)
			}
			if claims.Expiry.Time().Unix() != now.Add(15*time.Minute).Unix() || claims.IssuedAt.Time().Unix() != now.Unix() {
				t.Fatalf("iat %v exp %v at %v", claims.IssuedAt.Time(), claims.Expiry.Time(), now)
			}
			if err := claims.ValidateWithLeeway(jwt.Expected{Time: now.Add(16 * time.Minute)}, 0); err == nil {
				t.Fatal("an expired token validates")
			}
			// Tampered: another claim under the same signature.
			parts := strings.Split(res.Token, ".")
			parts[1] = base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"mallory","aud":"api"}`))
			bad, err := jwt.ParseSigned(strings.Join(parts, "."), joseAlgorithms)
			if err != nil {
				t.Fatal(err)
			}
			if err := bad.Claims(keys[0].Key, &claims); err == nil {
				t.Fatal("a tampered token verifies")
			}
			// The signature, changed.
			sig, _ := base64.RawURLEncoding.DecodeString(strings.Split(res.Token, ".")[2])
			sig[len(sig)/2] ^= 1
			parts = strings.Split(res.Token, ".")
			parts[2] = base64.RawURLEncoding.EncodeToString(sig)
			bad, _ = jwt.ParseSigned(strings.Join(parts, "."), joseAlgorithms)
			if err := bad.Claims(keys[0].Key, &claims); err == nil {
				t.Fatal("a token with a changed signature verifies")
			}
			if c.algorithm[:2] == "ES" && len(sig) != 2*map[string]int{"ES256": 32, "ES384": 48, "ES512": 66}[c.algorithm] {
				t.Fatalf("%s signature of %d bytes: not raw r‖s", c.algorithm, len(sig))
			}
		})
	}
}

func TestJWSDetachedAndRefusals(t *testing.T) {
	f := newFixture(t)
	k := f.create("jws-ec", specP256)
	payload := []byte("release v1.2.3 sha256:abcdef")
	res, err := f.svc.SignJWS(as(operatorP), JWSRequest{Key: k.Name, Payload: payload, Detached: true, Header: map[string]any{"typ": "release+jws"}})
	if err != nil {
		t.Fatal(err)
	}
	if parts := strings.Split(res.Token, "."); len(parts) != 3 || parts[1] != "" {
		t.Fatalf("detached JWS %q has a payload", res.Token)
	}
	jwks, _ := f.svc.KeyJWKS(f.admin(), k.Name)
	obj, err := jose.ParseDetached(res.Token, payload, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obj.Verify(jwks[0].Key); err != nil {
		t.Fatalf("detached JWS: %v", err)
	}
	if obj.Signatures[0].Header.ExtraHeaders["typ"] != "release+jws" {
		t.Fatalf("typ %v", obj.Signatures[0].Header.ExtraHeaders)
	}
	other, _ := jose.ParseDetached(res.Token, []byte("release v6.6.6"), []jose.SignatureAlgorithm{jose.ES256})
	if _, err := other.Verify(jwks[0].Key); err == nil {
		t.Fatal("a detached JWS verifies another payload")
	}
	full, err := f.svc.SignJWS(as(operatorP), JWSRequest{Key: k.Name, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	fo, err := jose.ParseSigned(full.Token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := fo.Verify(jwks[0].Key); err != nil || string(got) != string(payload) {
		t.Fatalf("JWS: %q, %v", got, err)
	}

	aes := f.create("jws-aes", specAES256)
	for _, c := range []struct {
		name string
		call func() error
		want error
	}{
		{"alg header", func() error {
			_, err := f.svc.SignJWT(f.admin(), JWTRequest{Key: k.Name, Claims: map[string]any{}, Header: map[string]any{"alg": "none"}})
			return err
		}, kgerr.ErrInvalidInput},
		{"kid header", func() error {
			_, err := f.svc.SignJWT(f.admin(), JWTRequest{Key: k.Name, Claims: map[string]any{}, Header: map[string]any{"kid": "x"}})
			return err
		}, kgerr.ErrInvalidInput},
		{"crit header", func() error {
			_, err := f.svc.SignJWS(f.admin(), JWSRequest{Key: k.Name, Payload: payload, Header: map[string]any{"crit": []string{"b64"}}})
			return err
		}, kgerr.ErrInvalidInput},
		{"exp with expires_in", func() error {
			_, err := f.svc.SignJWT(f.admin(), JWTRequest{Key: k.Name, Claims: map[string]any{"exp": 1}, ExpiresIn: time.Minute})
			return err
		}, kgerr.ErrInvalidInput},
		{"no payload", func() error {
			_, err := f.svc.SignJWS(f.admin(), JWSRequest{Key: k.Name})
			return err
		}, kgerr.ErrInvalidInput},
		{"wrong algorithm", func() error {
			_, err := f.svc.SignJWT(f.admin(), JWTRequest{Key: k.Name, Algorithm: "ES384", Claims: map[string]any{}})
			return err
		}, kgerr.ErrUnsupportedAlgorithm},
		{"secret key", func() error {
			_, err := f.svc.SignJWT(f.admin(), JWTRequest{Key: aes.Name, Claims: map[string]any{}})
			return err
		}, kgerr.ErrUsageNotPermitted},
		{"secret key JWKS", func() error {
			_, err := f.svc.KeyJWKS(f.admin(), aes.Name)
			return err
		}, kgerr.ErrInvalidInput},
		{"auditor signs", func() error {
			_, err := f.svc.SignJWT(as(auditorP), JWTRequest{Key: k.Name, Claims: map[string]any{}})
			return err
		}, kgerr.New(kgerr.KindPermissionDenied, "")},
	} {
		t.Run(c.name, func(t *testing.T) {
			mark := f.mark()
			err := c.call()
			wantErr(t, err, c.want)
			for _, e := range f.since(mark) {
				if e.Operation == "sign" {
					t.Fatalf("a refused token was signed: %+v", e)
				}
			}
		})
	}
	// An expired key signs no token.
	soon := f.clock.Now().Add(time.Hour)
	ek, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: "jws-expiring", Spec: specP256, ExpiresAt: &soon})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Hour)
	_, err = f.svc.SignJWT(f.admin(), JWTRequest{Key: ek.Name, Claims: map[string]any{}})
	wantErr(t, err, kgerr.ErrKeyExpired)
}

// TestPublishedJWKS: exactly the published keys, every active version,
// without a principal; an inactive key drops out; AES keys cannot be
// published.
func TestPublishedJWKS(t *testing.T) {
	f := newFixture(t)
	mk := func(name string, spec KeySpec, publish bool) *Key {
		k, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: name, Spec: spec, PublishJWKS: publish})
		if err != nil {
			t.Fatal(err)
		}
		if k.PublishJWKS != publish {
			t.Fatalf("key %s PublishJWKS %v", name, k.PublishJWKS)
		}
		return k
	}
	a := mk("pub-a", specP256, true)
	b := mk("pub-b", specRSA, true)
	mk("pub-hidden", specEd25519, false)
	if _, err := f.svc.RotateKey(f.admin(), b.Name); err != nil {
		t.Fatal(err)
	}
	kids := func() []string {
		t.Helper()
		keys, err := f.svc.PublishedJWKS(as(nil))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range keys {
			out = append(out, k.KID+"/"+k.Algorithm+"/"+k.Use)
		}
		slices.Sort(out)
		return out
	}
	want := []string{a.ID + ".1/ES256/sig", b.ID + ".1/" + b.Algorithm + "/sig", b.ID + ".2/" + b.Algorithm + "/sig"}
	slices.Sort(want)
	if got := kids(); !slices.Equal(got, want) {
		t.Fatalf("published %v, want %v", got, want)
	}
	if _, err := f.svc.DeactivateKey(f.admin(), b.Name); err != nil {
		t.Fatal(err)
	}
	if got := kids(); !slices.Equal(got, []string{a.ID + ".1/ES256/sig"}) {
		t.Fatalf("published after deactivating %s: %v", b.Name, got)
	}
	_, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: "pub-aes", Spec: specAES256, PublishJWKS: true})
	wantErr(t, err, kgerr.ErrInvalidInput)
	if got := f.stored(a.ID); !got.PublishJWKS {
		t.Fatal("publish_jwks not stored")
	}
}
