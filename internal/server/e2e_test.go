package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// signInput is one way to ask for a signature: over data or a digest, DER
// or raw.
type signInput struct {
	name   string
	format string // "" (DER) or "raw"
	digest bool
}

// TestSignEveryAlgorithm signs with every signature algorithm of the
// software provider, over data and over a digest, and checks each signature
// three ways: with the openssl binary, with Go's crypto using only the
// exported PEM, and through the API's own /verify. A changed signature must
// fail all three (the API answers 200 with valid:false).
func TestSignEveryAlgorithm(t *testing.T) {
	t.Parallel()
	testbed.Require(t, "openssl")
	e := newEnv(t)

	keys := []struct {
		name    string
		spec    apitypes.KeySpec
		rsaBits int
		curve   string
	}{
		{"rsa-2048", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048}, 2048, ""},
		{"rsa-3072", apitypes.KeySpec{KeyType: "RSA", KeySize: 3072}, 3072, ""},
		{"rsa-4096", apitypes.KeySpec{KeyType: "RSA", KeySize: 4096, Algorithm: "PS512"}, 4096, ""},
		{"ec-p256", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}, 0, "P-256"},
		{"ec-p384", apitypes.KeySpec{KeyType: "EC", KeySize: 384}, 0, "P-384"},
		{"ec-p521", apitypes.KeySpec{KeyType: "EC", KeySize: 521}, 0, "P-521"},
		{"ed25519", apitypes.KeySpec{KeyType: "Ed25519"}, 0, ""},
	}
	pems := map[string]string{}
	for _, k := range keys {
		e.createKey(t, k.name, k.spec)
		pems[k.name] = e.publicPEM(t, k.name, 0)
		switch pub := parsePEM(t, pems[k.name]).(type) {
		case *rsa.PublicKey:
			if pub.N.BitLen() != k.rsaBits {
				t.Fatalf("%s: public key has %d bits", k.name, pub.N.BitLen())
			}
		case *ecdsa.PublicKey:
			if pub.Curve.Params().Name != k.curve {
				t.Fatalf("%s: public key on %s", k.name, pub.Curve.Params().Name)
			}
		case ed25519.PublicKey:
		default:
			t.Fatalf("%s: unexpected public key %T", k.name, pub)
		}
	}

	tests := []struct {
		name      string
		key       string
		algorithm string
		curveLen  int // ECDSA: bytes of r and of s
	}{
		{"ok rsa-2048 RS256", "rsa-2048", "RS256", 0},
		{"ok rsa-2048 RS384", "rsa-2048", "RS384", 0},
		{"ok rsa-2048 RS512", "rsa-2048", "RS512", 0},
		{"ok rsa-2048 PS256", "rsa-2048", "PS256", 0},
		{"ok rsa-2048 PS384", "rsa-2048", "PS384", 0},
		{"ok rsa-2048 PS512", "rsa-2048", "PS512", 0},
		{"ok rsa-3072 RS256", "rsa-3072", "RS256", 0},
		{"ok rsa-3072 RS384", "rsa-3072", "RS384", 0},
		{"ok rsa-3072 RS512", "rsa-3072", "RS512", 0},
		{"ok rsa-3072 PS256", "rsa-3072", "PS256", 0},
		{"ok rsa-3072 PS384", "rsa-3072", "PS384", 0},
		{"ok rsa-3072 PS512", "rsa-3072", "PS512", 0},
		{"ok rsa-4096 RS256", "rsa-4096", "RS256", 0},
		{"ok rsa-4096 PS512", "rsa-4096", "PS512", 0},
		{"ok ec-p256 ES256", "ec-p256", "ES256", 32},
		{"ok ec-p384 ES384", "ec-p384", "ES384", 48},
		{"ok ec-p521 ES512", "ec-p521", "ES512", 66},
		{"ok ed25519 EdDSA", "ed25519", "EdDSA", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := sigAlgs[tc.algorithm]
			pemText := pems[tc.key]
			pub := parsePEM(t, pemText)
			data := []byte("KeyGrid e2e message for " + tc.name + "\x00\xff")

			inputs := []signInput{{name: "data"}}
			if a.hash != 0 {
				inputs = append(inputs, signInput{name: "digest", digest: true})
			}
			if tc.curveLen > 0 {
				inputs = append(inputs, signInput{name: "data raw", format: "raw"}, signInput{name: "digest raw", format: "raw", digest: true})
			}
			for _, in := range inputs {
				t.Run(in.name, func(t *testing.T) {
					req := map[string]any{"algorithm": tc.algorithm}
					if in.digest {
						req["digest"] = b64(digestOf(a.hash, data))
					} else {
						req["data"] = b64(data)
					}
					if in.format != "" {
						req["signature_format"] = in.format
					}
					var sr apitypes.SignResponse
					e.ok(t, http.MethodPost, keyPath(tc.key, "/sign"), req, http.StatusOK, &sr)
					if sr.Algorithm != tc.algorithm || sr.KeyVersion != 1 || sr.KeyID == "" {
						t.Fatalf("sign response %+v: want algorithm %s, key_version 1, key_id set", sr, tc.algorithm)
					}
					sig := sr.Signature
					if in.format == "raw" {
						if len(sig) != 2*tc.curveLen {
							t.Fatalf("raw signature is %d bytes, want %d", len(sig), 2*tc.curveLen)
						}
						sig = rawToDER(t, sig)
					}

					if err := testbed.OpenSSLCheck(t, pemText, tc.algorithm, data, sig); err != nil {
						t.Errorf("openssl does not verify the signature: %v", err)
					}
					if err := goVerify(pub, tc.algorithm, data, sig); err != nil {
						t.Errorf("Go does not verify the signature with the exported PEM: %v", err)
					}

					vreq := map[string]any{"algorithm": tc.algorithm, "signature": b64(sr.Signature)}
					if in.digest {
						vreq["digest"] = req["digest"]
					} else {
						vreq["data"] = req["data"]
					}
					if in.format != "" {
						vreq["signature_format"] = in.format
					}
					var vr apitypes.VerifyResponse
					e.ok(t, http.MethodPost, keyPath(tc.key, "/verify"), vreq, http.StatusOK, &vr)
					if !vr.Valid || vr.KeyVersion != 1 {
						t.Errorf("API verify: %+v, want valid at version 1", vr)
					}

					bad := flip(sr.Signature, len(sr.Signature)/2)
					vreq["signature"] = b64(bad)
					vr = apitypes.VerifyResponse{}
					e.ok(t, http.MethodPost, keyPath(tc.key, "/verify"), vreq, http.StatusOK, &vr)
					if vr.Valid {
						t.Errorf("API verify accepts a changed signature")
					}
					badDER := flip(sig, len(sig)/2)
					if err := testbed.OpenSSLCheck(t, pemText, tc.algorithm, data, badDER); err == nil {
						t.Errorf("openssl accepts a changed signature: the check is not meaningful")
					}
					if err := goVerify(pub, tc.algorithm, data, badDER); err == nil {
						t.Errorf("Go accepts a changed signature")
					}
				})
			}
		})
	}
}

// TestRSAOAEP decrypts through the API what openssl encrypted with the
// exported public key, and round-trips through the API.
func TestRSAOAEP(t *testing.T) {
	t.Parallel()
	testbed.Require(t, "openssl")
	e := newEnv(t)

	tests := []struct {
		name      string
		algorithm string
		hash      string // openssl name
		otherHash string
	}{
		{"ok RSA-OAEP", "RSA-OAEP", "sha1", "sha256"},
		{"ok RSA-OAEP-256", "RSA-OAEP-256", "sha256", "sha1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := "oaep-" + tc.hash
			k := e.createKey(t, name, apitypes.KeySpec{KeyType: "RSA", KeySize: 2048, Algorithm: tc.algorithm, Usage: []string{"encrypt", "decrypt"}})
			if k.Algorithm != tc.algorithm {
				t.Fatalf("key algorithm %s, want %s", k.Algorithm, tc.algorithm)
			}
			pemText := e.publicPEM(t, name, 0)
			msg := []byte("a data key: 0123456789abcdef0123456789abcdef")

			ct := testbed.OpenSSLEncryptOAEP(t, pemText, tc.hash, msg)
			for _, explicit := range []bool{false, true} {
				req := map[string]any{"ciphertext": b64(ct)}
				if explicit {
					req["algorithm"] = tc.algorithm
				}
				var dr apitypes.DecryptResponse
				e.ok(t, http.MethodPost, keyPath(name, "/decrypt"), req, http.StatusOK, &dr)
				if !bytes.Equal(dr.Plaintext, msg) {
					t.Fatalf("decrypt of the openssl ciphertext (algorithm given: %v) = %q, want %q", explicit, dr.Plaintext, msg)
				}
			}

			// The hash matters: OAEP with the other hash does not decrypt.
			wrong := testbed.OpenSSLEncryptOAEP(t, pemText, tc.otherHash, msg)
			e.fails(t, http.MethodPost, keyPath(name, "/decrypt"), map[string]any{"ciphertext": b64(wrong)}, http.StatusBadRequest, apitypes.CodeDecryptionFailed)
			e.fails(t, http.MethodPost, keyPath(name, "/decrypt"), map[string]any{"ciphertext": b64(flip(ct, 10))}, http.StatusBadRequest, apitypes.CodeDecryptionFailed)

			var er apitypes.EncryptResponse
			e.ok(t, http.MethodPost, keyPath(name, "/encrypt"), map[string]any{"plaintext": b64(msg)}, http.StatusOK, &er)
			if er.Algorithm != tc.algorithm || er.KeyVersion != 1 || len(er.Ciphertext) != 256 {
				t.Fatalf("encrypt response: algorithm %s, version %d, %d bytes; want %s, 1, 256", er.Algorithm, er.KeyVersion, len(er.Ciphertext), tc.algorithm)
			}
			var dr apitypes.DecryptResponse
			e.ok(t, http.MethodPost, keyPath(name, "/decrypt"), map[string]any{"ciphertext": b64(er.Ciphertext)}, http.StatusOK, &dr)
			if !bytes.Equal(dr.Plaintext, msg) {
				t.Fatalf("API round trip = %q, want %q", dr.Plaintext, msg)
			}
		})
	}
}

// TestAESGCM round-trips AES-GCM with aad, checks the envelope and that any
// change (aad or any ciphertext byte) is DECRYPTION_FAILED, never a 5xx.
func TestAESGCM(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tests := []struct {
		name      string
		size      int
		algorithm string
	}{
		{"ok aes-128 A128GCM", 128, "A128GCM"},
		{"ok aes-256 A256GCM", 256, "A256GCM"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("aes-%d", tc.size)
			k := e.createKey(t, name, apitypes.KeySpec{KeyType: "AES", KeySize: tc.size})
			if k.Algorithm != tc.algorithm {
				t.Fatalf("default algorithm %s, want %s", k.Algorithm, tc.algorithm)
			}
			pt := []byte("card number 4111 1111 1111 1111")
			aad := []byte("tenant=42")

			var er apitypes.EncryptResponse
			e.ok(t, http.MethodPost, keyPath(name, "/encrypt"), map[string]any{"plaintext": b64(pt), "aad": b64(aad)}, http.StatusOK, &er)
			ct := er.Ciphertext
			if er.Algorithm != tc.algorithm || er.KeyVersion != 1 || er.KeyID != k.ID {
				t.Fatalf("encrypt response %+v", er)
			}
			if len(ct) < 7 || ct[0] != 'K' || ct[1] != 'G' || ct[2] != 1 {
				t.Fatalf("ciphertext does not start with the KG envelope: % x", ct[:min(len(ct), 8)])
			}
			if v := binary.BigEndian.Uint32(ct[3:7]); v != 1 {
				t.Fatalf("envelope records key version %d, want 1", v)
			}
			if bytes.Contains(ct, pt) {
				t.Fatal("ciphertext contains the plaintext")
			}

			var dr apitypes.DecryptResponse
			e.ok(t, http.MethodPost, keyPath(name, "/decrypt"), map[string]any{"ciphertext": b64(ct), "aad": b64(aad)}, http.StatusOK, &dr)
			if !bytes.Equal(dr.Plaintext, pt) {
				t.Fatalf("decrypt = %q, want %q", dr.Plaintext, pt)
			}

			// "data" is an alias of "plaintext".
			var er2 apitypes.EncryptResponse
			e.ok(t, http.MethodPost, keyPath(name, "/encrypt"), map[string]any{"data": b64(pt)}, http.StatusOK, &er2)
			dr = apitypes.DecryptResponse{}
			e.ok(t, http.MethodPost, keyPath(name, "/decrypt"), map[string]any{"ciphertext": b64(er2.Ciphertext)}, http.StatusOK, &dr)
			if !bytes.Equal(dr.Plaintext, pt) {
				t.Fatalf("decrypt of data-alias ciphertext = %q, want %q", dr.Plaintext, pt)
			}
			if bytes.Equal(er2.Ciphertext[8:], ct[8:]) {
				t.Fatal("two encryptions gave the same nonce and ciphertext")
			}

			t.Run("rotate", func(t *testing.T) {
				var rk apitypes.Key
				e.ok(t, http.MethodPost, keyPath(name, "/rotate"), nil, http.StatusOK, &rk)
				if rk.Version != 2 {
					t.Fatalf("version after rotate %d", rk.Version)
				}
				var er3 apitypes.EncryptResponse
				e.ok(t, http.MethodPost, keyPath(name, "/encrypt"), map[string]any{"plaintext": b64(pt), "aad": b64(aad)}, http.StatusOK, &er3)
				if er3.KeyVersion != 2 || binary.BigEndian.Uint32(er3.Ciphertext[3:7]) != 2 {
					t.Fatalf("after rotation: key_version %d, envelope version %d; want 2", er3.KeyVersion, binary.BigEndian.Uint32(er3.Ciphertext[3:7]))
				}
				for _, c := range [][]byte{ct, er3.Ciphertext} {
					var dr apitypes.DecryptResponse
					e.ok(t, http.MethodPost, keyPath(name, "/decrypt"), map[string]any{"ciphertext": b64(c), "aad": b64(aad)}, http.StatusOK, &dr)
					if !bytes.Equal(dr.Plaintext, pt) {
						t.Fatalf("decrypt after rotation = %q", dr.Plaintext)
					}
				}
				e.fails(t, http.MethodPost, keyPath(name, "/decrypt"), map[string]any{"ciphertext": b64(ct), "aad": b64(aad), "key_version": 2},
					http.StatusBadRequest, apitypes.CodeInvalidInput)
			})

			bad := []struct {
				name string
				req  map[string]any
			}{
				{"fail wrong aad", map[string]any{"ciphertext": b64(ct), "aad": b64([]byte("tenant=43"))}},
				{"fail missing aad", map[string]any{"ciphertext": b64(ct)}},
				{"fail aad given where none was used", map[string]any{"ciphertext": b64(er2.Ciphertext), "aad": b64(aad)}},
				{"fail truncated", map[string]any{"ciphertext": b64(ct[:len(ct)-1]), "aad": b64(aad)}},
				{"fail header only", map[string]any{"ciphertext": b64(ct[:8]), "aad": b64(aad)}},
			}
			for i := range ct {
				bad = append(bad, struct {
					name string
					req  map[string]any
				}{fmt.Sprintf("fail byte %d flipped", i), map[string]any{"ciphertext": b64(flip(ct, i)), "aad": b64(aad)}})
			}
			for _, b := range bad {
				t.Run(b.name, func(t *testing.T) {
					e.fails(t, http.MethodPost, keyPath(name, "/decrypt"), b.req, http.StatusBadRequest, apitypes.CodeDecryptionFailed)
				})
			}
		})
	}
}

// TestAESKeyWrap wraps and unwraps key material with an AES-256 key-
// encryption key (RFC 5649).
func TestAESKeyWrap(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := e.createKey(t, "kek", apitypes.KeySpec{KeyType: "AES", KeySize: 256, Usage: []string{"wrap", "unwrap"}})
	if k.Algorithm != "AES-KWP" {
		t.Fatalf("algorithm of a wrap key %s, want AES-KWP", k.Algorithm)
	}
	tests := []struct {
		name string
		n    int
	}{
		{"ok 1 byte", 1},
		{"ok 8 bytes", 8},
		{"ok 20 bytes", 20},
		{"ok 32 bytes", 32},
		{"ok 1217 bytes (RSA private key size)", 1217},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			material := make([]byte, tc.n)
			rand.Read(material)
			var wr apitypes.WrapResponse
			e.ok(t, http.MethodPost, keyPath("kek", "/wrap"), map[string]any{"key_material": b64(material)}, http.StatusOK, &wr)
			if want := (tc.n+7)/8*8 + 8; len(wr.WrappedKey) != want {
				t.Fatalf("wrapped %d bytes into %d, want %d", tc.n, len(wr.WrappedKey), want)
			}
			if wr.KeyID != k.ID || wr.KeyVersion != 1 || wr.Algorithm != "AES-KWP" {
				t.Fatalf("wrap response %+v", wr)
			}
			var ur apitypes.UnwrapResponse
			e.ok(t, http.MethodPost, keyPath("kek", "/unwrap"), map[string]any{"wrapped_key": b64(wr.WrappedKey)}, http.StatusOK, &ur)
			if !bytes.Equal(ur.KeyMaterial, material) {
				t.Fatalf("unwrap does not give back the material")
			}
			for _, i := range []int{0, 7, 8, len(wr.WrappedKey) - 1} {
				e.fails(t, http.MethodPost, keyPath("kek", "/unwrap"), map[string]any{"wrapped_key": b64(flip(wr.WrappedKey, i))}, http.StatusBadRequest, apitypes.CodeDecryptionFailed)
			}
			e.fails(t, http.MethodPost, keyPath("kek", "/unwrap"), map[string]any{"wrapped_key": b64(wr.WrappedKey[:len(wr.WrappedKey)-1])}, http.StatusBadRequest, apitypes.CodeInvalidInput)
		})
	}
	e.fails(t, http.MethodPost, keyPath("kek", "/wrap"), map[string]any{"key_material": ""}, http.StatusBadRequest, apitypes.CodeInvalidInput)
}

// TestLifecycle drives a key through its whole life over the real
// listener, starting from the original KeyGrid request shape verbatim.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	filesBefore := e.keystoreFiles(t)

	const original = `{"provider":"software","name":"my-key","key_spec":{"key_type":"RSA","key_size":2048,"algorithm":"PS256","usage":["sign","verify"]}}`
	var k apitypes.Key
	r := e.ok(t, http.MethodPost, "/api/v1/keys", original, http.StatusCreated, &k)
	if k.ID == "" || k.Name != "my-key" || k.Provider != "software" || k.KeyType != "RSA" || k.KeySize != 2048 ||
		k.Algorithm != "PS256" || !slices.Equal(k.Usage, []string{"sign", "verify"}) || k.State != "active" || k.Version != 1 {
		t.Fatalf("created key %+v", k)
	}
	if loc := r.header.Get("Location"); loc != "/api/v1/keys/"+k.ID {
		t.Errorf("Location %q, want /api/v1/keys/%s", loc, k.ID)
	}

	t.Run("get by id and by name", func(t *testing.T) {
		for _, ref := range []string{k.ID, "my-key"} {
			var got apitypes.Key
			e.ok(t, http.MethodGet, keyPath(ref, ""), nil, http.StatusOK, &got)
			if got.ID != k.ID || got.Name != k.Name || got.State != "active" || got.Version != 1 {
				t.Errorf("GET %s = %+v, want key %s", ref, got, k.ID)
			}
		}
	})
	t.Run("list", func(t *testing.T) {
		var l apitypes.KeyList
		e.ok(t, http.MethodGet, "/api/v1/keys", nil, http.StatusOK, &l)
		if len(l.Keys) != 1 || l.Keys[0].ID != k.ID {
			t.Errorf("list = %+v, want exactly my-key", l.Keys)
		}
		l = apitypes.KeyList{}
		e.ok(t, http.MethodGet, "/api/v1/keys?state=inactive", nil, http.StatusOK, &l)
		if len(l.Keys) != 0 {
			t.Errorf("list state=inactive = %+v, want none", l.Keys)
		}
	})
	t.Run("fail duplicate name", func(t *testing.T) {
		e.fails(t, http.MethodPost, "/api/v1/keys", original, http.StatusConflict, apitypes.CodeKeyAlreadyExists)
		e.fails(t, http.MethodPost, "/api/v1/keys", apitypes.CreateKeyRequest{Name: "my-key", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}},
			http.StatusConflict, apitypes.CodeKeyAlreadyExists)
	})

	data := []byte("lifecycle")
	sign := func(t *testing.T, wantVersion int) []byte {
		t.Helper()
		var sr apitypes.SignResponse
		e.ok(t, http.MethodPost, keyPath("my-key", "/sign"), map[string]any{"data": b64(data)}, http.StatusOK, &sr)
		if sr.Algorithm != "PS256" || sr.KeyVersion != wantVersion || sr.KeyID != k.ID {
			t.Fatalf("sign response %+v: want PS256 by %s version %d", sr, k.ID, wantVersion)
		}
		return sr.Signature
	}
	verify := func(t *testing.T, sig []byte, version int) bool {
		t.Helper()
		req := map[string]any{"data": b64(data), "signature": b64(sig)}
		if version > 0 {
			req["key_version"] = version
		}
		var vr apitypes.VerifyResponse
		e.ok(t, http.MethodPost, keyPath("my-key", "/verify"), req, http.StatusOK, &vr)
		return vr.Valid
	}

	sig1 := sign(t, 1)
	if !verify(t, sig1, 0) {
		t.Fatal("a fresh signature does not verify")
	}
	pem1 := e.publicPEM(t, "my-key", 0)

	t.Run("deactivate", func(t *testing.T) {
		var got apitypes.Key
		e.ok(t, http.MethodPost, keyPath("my-key", "/deactivate"), nil, http.StatusOK, &got)
		if got.State != "inactive" {
			t.Fatalf("state after deactivate %q", got.State)
		}
		e.fails(t, http.MethodPost, keyPath("my-key", "/sign"), map[string]any{"data": b64(data)}, http.StatusConflict, apitypes.CodeKeyInactive)
		e.fails(t, http.MethodPost, keyPath("my-key", "/rotate"), nil, http.StatusConflict, apitypes.CodeKeyInactive)
	})
	t.Run("activate", func(t *testing.T) {
		var got apitypes.Key
		e.ok(t, http.MethodPost, keyPath("my-key", "/activate"), nil, http.StatusOK, &got)
		if got.State != "active" {
			t.Fatalf("state after activate %q", got.State)
		}
		if !verify(t, sign(t, 1), 0) {
			t.Fatal("signature after activate does not verify")
		}
	})
	t.Run("rotate", func(t *testing.T) {
		var got apitypes.Key
		e.ok(t, http.MethodPost, keyPath("my-key", "/rotate"), nil, http.StatusOK, &got)
		if got.Version != 2 || len(got.Versions) != 2 || got.ID != k.ID {
			t.Fatalf("after rotate: %+v, want version 2 with 2 versions", got)
		}
		sig2 := sign(t, 2)
		if !verify(t, sig1, 1) {
			t.Error("a version-1 signature does not verify with key_version 1 after rotation")
		}
		if verify(t, sig1, 2) {
			t.Error("a version-1 signature verifies with key_version 2")
		}
		if !verify(t, sig1, 0) {
			t.Error("without key_version, a version-1 signature must verify against the older version")
		}
		if !verify(t, sig2, 0) || !verify(t, sig2, 2) {
			t.Error("a version-2 signature does not verify")
		}
		if pem1v := e.publicPEM(t, "my-key", 1); pem1v != pem1 {
			t.Error("public key of version 1 changed after rotation")
		}
		pem2 := e.publicPEM(t, "my-key", 0)
		if pem2 == pem1 {
			t.Error("rotation kept the same public key")
		}
		if err := goVerify(parsePEM(t, pem2), "PS256", data, sig2); err != nil {
			t.Errorf("version-2 signature does not verify with the version-2 PEM: %v", err)
		}
		if err := goVerify(parsePEM(t, pem1), "PS256", data, sig1); err != nil {
			t.Errorf("version-1 signature does not verify with the version-1 PEM: %v", err)
		}
		if n := e.keystoreFiles(t); n != filesBefore+2 {
			t.Errorf("keystore holds %d key files, want %d", n, filesBefore+2)
		}
	})
	t.Run("delete", func(t *testing.T) {
		// DELETE schedules: 200 with the key pending deletion and its date.
		var del apitypes.KeyOperation
		before := time.Now()
		e.ok(t, http.MethodDelete, keyPath("my-key", "")+"?pending_window=2s", nil, http.StatusOK, &del)
		if del.ID != k.ID || del.KeyID != k.ID || del.State != "pending_deletion" || del.Status != "pending_deletion" || del.DeletionDate == nil ||
			del.DeletionDate.Before(before.Add(2*time.Second).Truncate(time.Second)) || del.DeletionDate.After(time.Now().Add(2*time.Second)) ||
			!strings.Contains(del.Message, "/api/v1/keys/"+k.ID+"/cancel-deletion") {
			t.Fatalf("DELETE answered %+v", del)
		}
		e.fails(t, http.MethodPost, keyPath("my-key", "/sign"), map[string]any{"data": b64(data)}, http.StatusConflict, apitypes.CodeKeyPendingDeletion)
		var got apitypes.Key
		e.ok(t, http.MethodGet, keyPath("my-key", ""), nil, http.StatusOK, &got)
		if got.State != "pending_deletion" {
			t.Fatalf("GET while pending: %+v", got)
		}
		// The sweeper destroys it once the date has passed.
		deadline := time.Now().Add(30 * time.Second)
		for e.send(t, http.MethodGet, keyPath(k.ID, ""), nil).status != http.StatusNotFound {
			if time.Now().After(deadline) {
				t.Fatal("the key was not destroyed within 30s of its 2s window")
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, ref := range []string{k.ID, "my-key"} {
			e.fails(t, http.MethodGet, keyPath(ref, ""), nil, http.StatusNotFound, apitypes.CodeKeyNotFound)
			e.fails(t, http.MethodPost, keyPath(ref, "/sign"), map[string]any{"data": b64(data)}, http.StatusNotFound, apitypes.CodeKeyNotFound)
			e.fails(t, http.MethodGet, keyPath(ref, "/public"), nil, http.StatusNotFound, apitypes.CodeKeyNotFound)
		}
		e.fails(t, http.MethodDelete, keyPath("my-key", ""), nil, http.StatusNotFound, apitypes.CodeKeyNotFound)
		if n := e.keystoreFiles(t); n != filesBefore {
			t.Errorf("keystore holds %d key files after the deletion, want %d: material of a deleted key remains", n, filesBefore)
		}
		if l := e.listKeys(t); len(l) != 0 {
			t.Errorf("list after delete = %+v, want none", l)
		}
		// The name is free again.
		var again apitypes.Key
		e.ok(t, http.MethodPost, "/api/v1/keys", original, http.StatusCreated, &again)
		if again.ID == k.ID {
			t.Error("a new key reused the id of a deleted one")
		}
	})
}

// TestBadInput sends invalid requests: each is a 400 with a specific code
// and the error body, and none creates anything.
func TestBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createKey(t, "rsa", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048})
	e.createKey(t, "ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	e.createKey(t, "ed", apitypes.KeySpec{KeyType: "Ed25519"})
	keysBefore, filesBefore := len(e.listKeys(t)), e.keystoreFiles(t)

	d32 := b64(make([]byte, 32))
	tests := []struct {
		name   string
		path   string
		body   string // sent with POST
		status int
		code   apitypes.ErrorCode
	}{
		{"fail create malformed JSON", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"EC"`, 400, apitypes.CodeInvalidInput},
		{"fail create not JSON", "/api/v1/keys", `name=x1`, 400, apitypes.CodeInvalidInput},
		{"fail create empty body", "/api/v1/keys", ``, 400, apitypes.CodeInvalidInput},
		{"fail create array body", "/api/v1/keys", `[{"name":"x1"}]`, 400, apitypes.CodeInvalidInput},
		{"fail create trailing data", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"EC","key_size":256}} {"name":"x2"}`, 400, apitypes.CodeInvalidInput},
		{"fail create wrong field type", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"RSA","key_size":"2048"}}`, 400, apitypes.CodeInvalidInput},
		{"fail create unknown field", "/api/v1/keys", `{"name":"x1","colour":"red","key_spec":{"key_type":"EC","key_size":256}}`, 400, apitypes.CodeInvalidInput},
		{"fail create module_path", "/api/v1/keys", `{"provider":"software","name":"x1","module_path":"/usr/lib/softhsm/libsofthsm2.so","key_spec":{"key_type":"EC","key_size":256}}`, 400, apitypes.CodeInvalidInput},
		{"fail create pin", "/api/v1/keys", `{"provider":"software","name":"x1","pin":"1234","key_spec":{"key_type":"EC","key_size":256}}`, 400, apitypes.CodeInvalidInput},
		{"fail create pin in key_spec", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"EC","key_size":256,"pin":"1234"}}`, 400, apitypes.CodeInvalidInput},
		{"fail create provider config", "/api/v1/keys", `{"name":"x1","provider_config":{"library_path":"/tmp/evil.so"},"key_spec":{"key_type":"EC","key_size":256}}`, 400, apitypes.CodeInvalidInput},
		{"fail create unknown provider", "/api/v1/keys", `{"provider":"pkcs11-nope","name":"x1","key_spec":{"key_type":"EC","key_size":256}}`, 400, apitypes.CodeInvalidInput},
		{"fail create rsa-1024", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"RSA","key_size":1024}}`, 400, apitypes.CodeInvalidInput},
		{"fail create rsa without size", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"RSA"}}`, 400, apitypes.CodeInvalidInput},
		{"fail create aes-192", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"AES","key_size":192}}`, 400, apitypes.CodeInvalidInput},
		{"fail create ec size 224", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"EC","key_size":224}}`, 400, apitypes.CodeInvalidInput},
		{"fail create unknown curve", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"EC","curve":"secp256k1"}}`, 400, apitypes.CodeUnsupportedAlgorithm},
		{"fail create unknown key type", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"DSA","key_size":2048}}`, 400, apitypes.CodeUnsupportedAlgorithm},
		{"fail create no key type", "/api/v1/keys", `{"name":"x1","key_spec":{"key_size":2048}}`, 400, apitypes.CodeInvalidInput},
		{"fail create ES256 on RSA", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"RSA","key_size":2048,"algorithm":"ES256"}}`, 400, apitypes.CodeUnsupportedAlgorithm},
		{"fail create PS256 on EC", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"EC","key_size":256,"algorithm":"PS256"}}`, 400, apitypes.CodeUnsupportedAlgorithm},
		{"fail create ES384 on P-256", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"EC","curve":"P-256","algorithm":"ES384"}}`, 400, apitypes.CodeUnsupportedAlgorithm},
		{"fail create unknown algorithm", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"EC","key_size":256,"algorithm":"ES256K"}}`, 400, apitypes.CodeUnsupportedAlgorithm},
		{"fail create usage wrap on RSA", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"RSA","key_size":2048,"usage":["wrap"]}}`, 400, apitypes.CodeInvalidInput},
		{"fail create usage encrypt on EC", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"EC","key_size":256,"usage":["encrypt"]}}`, 400, apitypes.CodeInvalidInput},
		{"fail create unknown usage", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"EC","key_size":256,"usage":["everything"]}}`, 400, apitypes.CodeInvalidInput},
		{"fail create signing algorithm for encrypt-only key", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"RSA","key_size":2048,"algorithm":"PS256","usage":["encrypt","decrypt"]}}`, 400, apitypes.CodeInvalidInput},
		{"fail create empty name", "/api/v1/keys", `{"name":"","key_spec":{"key_type":"EC","key_size":256}}`, 400, apitypes.CodeInvalidInput},
		{"fail create name with slash", "/api/v1/keys", `{"name":"a/b","key_spec":{"key_type":"EC","key_size":256}}`, 400, apitypes.CodeInvalidInput},
		{"fail create expires_at in the past", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"EC","key_size":256},"expires_at":"2001-01-01T00:00:00Z"}`, 400, apitypes.CodeInvalidInput},
		{"fail create expires_at not a time", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"EC","key_size":256},"expires_at":"tomorrow"}`, 400, apitypes.CodeInvalidInput},

		{"fail sign malformed JSON", "/api/v1/keys/rsa/sign", `{"data":`, 400, apitypes.CodeInvalidInput},
		{"fail sign bad base64", "/api/v1/keys/rsa/sign", `{"data":"not base64!!"}`, 400, apitypes.CodeInvalidInput},
		{"fail sign url-safe base64", "/api/v1/keys/rsa/sign", `{"data":"_-8"}`, 400, apitypes.CodeInvalidInput},
		{"fail sign data not a string", "/api/v1/keys/rsa/sign", `{"data":5}`, 400, apitypes.CodeInvalidInput},
		{"fail sign unknown field", "/api/v1/keys/rsa/sign", `{"data":"aGk=","hash":"sha256"}`, 400, apitypes.CodeInvalidInput},
		{"fail sign digest too short", "/api/v1/keys/rsa/sign", `{"digest":"` + b64(make([]byte, 20)) + `","algorithm":"PS256"}`, 400, apitypes.CodeInvalidInput},
		{"fail sign digest sha256 for RS512", "/api/v1/keys/rsa/sign", `{"digest":"` + d32 + `","algorithm":"RS512"}`, 400, apitypes.CodeInvalidInput},
		{"fail sign digest too long for ES256", "/api/v1/keys/ec/sign", `{"digest":"` + b64(make([]byte, 48)) + `"}`, 400, apitypes.CodeInvalidInput},
		{"fail sign ES256 on RSA key", "/api/v1/keys/rsa/sign", `{"data":"aGk=","algorithm":"ES256"}`, 400, apitypes.CodeUnsupportedAlgorithm},
		{"fail sign PS256 on EC key", "/api/v1/keys/ec/sign", `{"data":"aGk=","algorithm":"PS256"}`, 400, apitypes.CodeUnsupportedAlgorithm},
		{"fail sign ES384 on P-256 key", "/api/v1/keys/ec/sign", `{"data":"aGk=","algorithm":"ES384"}`, 400, apitypes.CodeUnsupportedAlgorithm},
		{"fail sign EdDSA on RSA key", "/api/v1/keys/rsa/sign", `{"data":"aGk=","algorithm":"EdDSA"}`, 400, apitypes.CodeUnsupportedAlgorithm},
		{"fail sign unknown algorithm", "/api/v1/keys/rsa/sign", `{"data":"aGk=","algorithm":"PS1024"}`, 400, apitypes.CodeUnsupportedAlgorithm},
		{"fail sign with an encryption algorithm", "/api/v1/keys/rsa/sign", `{"data":"aGk=","algorithm":"RSA-OAEP-256"}`, 400, apitypes.CodeUnsupportedAlgorithm},
		{"fail sign EdDSA with digest", "/api/v1/keys/ed/sign", `{"digest":"` + d32 + `"}`, 400, apitypes.CodeInvalidInput},
		{"fail sign EdDSA with digest and algorithm", "/api/v1/keys/ed/sign", `{"digest":"` + b64(make([]byte, 64)) + `","algorithm":"EdDSA"}`, 400, apitypes.CodeInvalidInput},
		{"fail sign both data and digest", "/api/v1/keys/rsa/sign", `{"data":"aGk=","digest":"` + d32 + `"}`, 400, apitypes.CodeInvalidInput},
		{"fail sign neither data nor digest", "/api/v1/keys/rsa/sign", `{"algorithm":"PS256"}`, 400, apitypes.CodeInvalidInput},
		{"fail sign bad signature_format", "/api/v1/keys/ec/sign", `{"data":"aGk=","signature_format":"jws"}`, 400, apitypes.CodeInvalidInput},
		{"fail verify no signature", "/api/v1/keys/ec/verify", `{"data":"aGk="}`, 400, apitypes.CodeInvalidInput},
		{"fail verify both data and digest", "/api/v1/keys/ec/verify", `{"data":"aGk=","digest":"` + d32 + `","signature":"aGk="}`, 400, apitypes.CodeInvalidInput},
		{"fail encrypt bad base64", "/api/v1/keys/rsa/encrypt", `{"plaintext":"%%%"}`, 400, apitypes.CodeInvalidInput},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.fails(t, http.MethodPost, tc.path, tc.body, tc.status, tc.code)
		})
	}
	if n := len(e.listKeys(t)); n != keysBefore {
		t.Errorf("%d keys after the bad requests, want %d: a bad request created a key", n, keysBefore)
	}
	if n := e.keystoreFiles(t); n != filesBefore {
		t.Errorf("%d key files after the bad requests, want %d: a bad request made key material", n, filesBefore)
	}
	for _, name := range []string{"x1", "x2"} {
		e.fails(t, http.MethodGet, keyPath(name, ""), nil, http.StatusNotFound, apitypes.CodeKeyNotFound)
	}

	t.Run("fail bad query", func(t *testing.T) {
		for _, p := range []string{"/api/v1/keys?limit=-1", "/api/v1/keys?limit=ten", "/api/v1/keys?state=gone", "/api/v1/keys/ec/public?version=x"} {
			e.fails(t, http.MethodGet, p, nil, http.StatusBadRequest, apitypes.CodeInvalidInput)
		}
	})
	t.Run("fail body over 1 MiB", func(t *testing.T) {
		big := `{"data":"` + b64(make([]byte, 1<<20)) + `"}`
		e.fails(t, http.MethodPost, "/api/v1/keys/rsa/sign", big, http.StatusRequestEntityTooLarge, apitypes.CodePayloadTooLarge)
		bigCreate := `{"name":"x1","key_spec":{"key_type":"EC","key_size":256},"metadata":{"a":"` + strings.Repeat("a", 1<<20+10) + `"}}`
		e.fails(t, http.MethodPost, "/api/v1/keys", bigCreate, http.StatusRequestEntityTooLarge, apitypes.CodePayloadTooLarge)
		if n := len(e.listKeys(t)); n != keysBefore {
			t.Errorf("%d keys after an oversized create, want %d", n, keysBefore)
		}
	})
	t.Run("fail data over the signing limit", func(t *testing.T) {
		e.fails(t, http.MethodPost, "/api/v1/keys/rsa/sign", map[string]any{"data": b64(make([]byte, 600<<10))}, http.StatusRequestEntityTooLarge, apitypes.CodePayloadTooLarge)
	})
	t.Run("fail unknown route", func(t *testing.T) {
		for _, p := range []string{"/api/v2/keys", "/nope", "/api/v1/keys/rsa/sign/extra", "/api/v1/keys/rsa/teleport"} {
			e.fails(t, http.MethodGet, p, nil, http.StatusNotFound, apitypes.CodeNotFound)
		}
	})
	t.Run("fail wrong method", func(t *testing.T) {
		for _, tc := range []struct {
			method, path string
			allow        []string
		}{
			{http.MethodPut, "/api/v1/keys/rsa", []string{"GET", "PATCH", "DELETE"}},
			{http.MethodGet, "/api/v1/keys/rsa/sign", []string{"POST"}},
			{http.MethodDelete, "/health", []string{"GET"}},
			{http.MethodPatch, "/api/v1/keys", []string{"GET", "POST"}},
		} {
			r := e.send(t, tc.method, tc.path, nil)
			if r.status != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: status %d, want 405", tc.method, tc.path, r.status)
				continue
			}
			if d := checkErrorBody(t, r); d.Code != apitypes.CodeMethodNotAllowed {
				t.Errorf("%s %s: code %s", tc.method, tc.path, d.Code)
			}
			var allow []string
			for _, v := range r.header.Values("Allow") {
				for _, m := range strings.Split(v, ",") {
					allow = append(allow, strings.TrimSpace(m))
				}
			}
			slices.Sort(allow)
			want := slices.Clone(tc.allow)
			slices.Sort(want)
			if !slices.Equal(allow, want) {
				t.Errorf("%s %s: Allow %v, want %v", tc.method, tc.path, allow, want)
			}
		}
	})
	t.Run("client request id kept beside the server's", func(t *testing.T) {
		const rid = "e2e-request-0042"
		r := e.send(t, http.MethodGet, keyPath("missing", ""), nil, "X-Request-Id", rid)
		d := checkErrorBody(t, r)
		if d.RequestID == rid || d.RequestID != r.header.Get("X-Request-Id") {
			t.Errorf("request_id %q (header %q): want the server's own id", d.RequestID, r.header.Get("X-Request-Id"))
		}
		if got := r.header.Get("X-Client-Request-Id"); got != rid {
			t.Errorf("X-Client-Request-Id %q, want %q", got, rid)
		}
	})
	t.Run("request id generated", func(t *testing.T) {
		r := e.send(t, http.MethodGet, "/health", nil)
		g1 := r.header.Get("X-Request-Id")
		if g1 == "" {
			t.Fatal("no X-Request-Id on a response to a request without one")
		}
		d := e.fails(t, http.MethodGet, keyPath("missing", ""), nil, http.StatusNotFound, apitypes.CodeKeyNotFound)
		if d.RequestID == "" || d.RequestID == g1 {
			t.Errorf("generated request ids %q and %q: want two distinct ids", g1, d.RequestID)
		}
		// An unusable id (spaces, too long) is neither used nor echoed.
		for _, bad := range []string{"has spaces in it", strings.Repeat("x", 65)} {
			r := e.send(t, http.MethodGet, "/health", nil, "X-Request-Id", bad)
			if got := r.header.Get("X-Request-Id"); got == "" || got == bad || r.header.Get("X-Client-Request-Id") != "" {
				t.Errorf("X-Request-Id %q answered as %q / %q, want a generated id only", bad, got, r.header.Get("X-Client-Request-Id"))
			}
		}
	})
}

// TestUsageEnforced checks that a key does only what its usage allows, and
// that an expired key stops making new signatures and ciphertexts but still
// verifies and decrypts.
func TestUsageEnforced(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createKey(t, "rsa-sign", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048, Usage: []string{"sign", "verify"}})
	e.createKey(t, "rsa-enc", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048, Usage: []string{"encrypt", "decrypt"}})
	e.createKey(t, "rsa-verify-only", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048, Usage: []string{"verify"}})
	e.createKey(t, "ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	e.createKey(t, "aes-gcm", apitypes.KeySpec{KeyType: "AES", KeySize: 256})
	e.createKey(t, "aes-kw", apitypes.KeySpec{KeyType: "AES", KeySize: 256, Usage: []string{"wrap", "unwrap"}})

	pt := b64([]byte("secret"))
	ct := b64(make([]byte, 256))
	wrapped := b64(make([]byte, 40))
	tests := []struct {
		name string
		key  string
		op   string
		body string
	}{
		{"fail encrypt with sign-only RSA", "rsa-sign", "encrypt", `{"plaintext":"` + pt + `"}`},
		{"fail encrypt with sign-only RSA and OAEP", "rsa-sign", "encrypt", `{"plaintext":"` + pt + `","algorithm":"RSA-OAEP-256"}`},
		{"fail decrypt with sign-only RSA", "rsa-sign", "decrypt", `{"ciphertext":"` + ct + `","algorithm":"RSA-OAEP-256"}`},
		{"fail wrap with sign-only RSA", "rsa-sign", "wrap", `{"key_material":"` + pt + `"}`},
		{"fail unwrap with sign-only RSA", "rsa-sign", "unwrap", `{"wrapped_key":"` + wrapped + `"}`},
		{"fail sign with encrypt-only RSA", "rsa-enc", "sign", `{"data":"` + pt + `"}`},
		{"fail sign with encrypt-only RSA and PS256", "rsa-enc", "sign", `{"data":"` + pt + `","algorithm":"PS256"}`},
		{"fail verify with encrypt-only RSA", "rsa-enc", "verify", `{"data":"` + pt + `","signature":"` + ct + `","algorithm":"PS256"}`},
		{"fail sign with verify-only RSA", "rsa-verify-only", "sign", `{"data":"` + pt + `"}`},
		{"fail encrypt with EC", "ec", "encrypt", `{"plaintext":"` + pt + `"}`},
		{"fail decrypt with EC", "ec", "decrypt", `{"ciphertext":"` + ct + `"}`},
		{"fail wrap with EC", "ec", "wrap", `{"key_material":"` + pt + `"}`},
		{"fail wrap with AES-GCM key", "aes-gcm", "wrap", `{"key_material":"` + pt + `"}`},
		{"fail unwrap with AES-GCM key", "aes-gcm", "unwrap", `{"wrapped_key":"` + wrapped + `"}`},
		{"fail sign with AES-GCM key", "aes-gcm", "sign", `{"data":"` + pt + `"}`},
		{"fail encrypt with AES wrap key", "aes-kw", "encrypt", `{"plaintext":"` + pt + `"}`},
		{"fail decrypt with AES wrap key", "aes-kw", "decrypt", `{"ciphertext":"` + ct + `"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.fails(t, http.MethodPost, keyPath(tc.key, "/"+tc.op), tc.body, http.StatusBadRequest, apitypes.CodeUsageNotPermitted)
		})
	}
	t.Run("ok verify-only RSA has a public key", func(t *testing.T) {
		e.publicPEM(t, "rsa-verify-only", 0)
	})

	t.Run("expiry", func(t *testing.T) {
		// Keys that expire shortly: sign and encrypt with them before, then
		// wait until they have expired.
		expires := time.Now().Add(2 * time.Second).UTC()
		create := func(name string, spec apitypes.KeySpec) {
			var k apitypes.Key
			e.ok(t, http.MethodPost, "/api/v1/keys", apitypes.CreateKeyRequest{Name: name, KeySpec: spec, ExpiresAt: &expires}, http.StatusCreated, &k)
			if k.ExpiresAt == nil || k.ExpiresAt.Sub(expires).Abs() > time.Millisecond {
				t.Fatalf("key %s: expires_at %v, sent %v", name, k.ExpiresAt, expires)
			}
		}
		create("exp-ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
		create("exp-aes", apitypes.KeySpec{KeyType: "AES", KeySize: 128})
		data := b64([]byte("signed before expiry"))
		var sr apitypes.SignResponse
		e.ok(t, http.MethodPost, keyPath("exp-ec", "/sign"), map[string]any{"data": data}, http.StatusOK, &sr)
		var er apitypes.EncryptResponse
		e.ok(t, http.MethodPost, keyPath("exp-aes", "/encrypt"), map[string]any{"plaintext": data}, http.StatusOK, &er)
		// An RSA key made now can still decrypt after expiry what was
		// encrypted with its public key.
		create("exp-rsa", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048, Usage: []string{"encrypt", "decrypt"}})
		rsaPub := parsePEM(t, e.publicPEM(t, "exp-rsa", 0)).(*rsa.PublicKey)

		time.Sleep(time.Until(expires) + 50*time.Millisecond)

		var got apitypes.Key
		e.ok(t, http.MethodGet, keyPath("exp-ec", ""), nil, http.StatusOK, &got)
		e.fails(t, http.MethodPost, keyPath("exp-ec", "/sign"), map[string]any{"data": data}, http.StatusConflict, apitypes.CodeKeyExpired)
		e.fails(t, http.MethodPost, keyPath("exp-aes", "/encrypt"), map[string]any{"plaintext": data}, http.StatusConflict, apitypes.CodeKeyExpired)
		e.fails(t, http.MethodPost, keyPath("exp-rsa", "/encrypt"), map[string]any{"plaintext": data}, http.StatusConflict, apitypes.CodeKeyExpired)

		var vr apitypes.VerifyResponse
		e.ok(t, http.MethodPost, keyPath("exp-ec", "/verify"), map[string]any{"data": data, "signature": b64(sr.Signature)}, http.StatusOK, &vr)
		if !vr.Valid {
			t.Error("an expired key does not verify a signature it made")
		}
		var dr apitypes.DecryptResponse
		e.ok(t, http.MethodPost, keyPath("exp-aes", "/decrypt"), map[string]any{"ciphertext": b64(er.Ciphertext)}, http.StatusOK, &dr)
		if b64(dr.Plaintext) != data {
			t.Error("an expired AES key does not decrypt what it encrypted")
		}
		msg := []byte("for an expired key")
		rct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, rsaPub, msg, nil)
		if err != nil {
			t.Fatal(err)
		}
		dr = apitypes.DecryptResponse{}
		e.ok(t, http.MethodPost, keyPath("exp-rsa", "/decrypt"), map[string]any{"ciphertext": b64(rct)}, http.StatusOK, &dr)
		if !bytes.Equal(dr.Plaintext, msg) {
			t.Error("an expired RSA key does not decrypt")
		}
	})
}

// TestRestartPersistence closes a server and opens a new one on the same
// data directory: every key is still there with the same public key, and
// still signs, verifies, decrypts and unwraps what the first server made.
func TestRestartPersistence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	e1 := startEnv(t, dir)

	type keyCase struct {
		name string
		spec apitypes.KeySpec
		alg  string
	}
	signers := []keyCase{
		{"rsa", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048, Usage: []string{"sign", "verify", "encrypt", "decrypt"}}, "RS256"},
		{"ec-p384", apitypes.KeySpec{KeyType: "EC", Curve: "P-384"}, "ES384"},
		{"ed", apitypes.KeySpec{KeyType: "Ed25519"}, "EdDSA"},
	}
	data := []byte("made by the first server")
	ids := map[string]string{}
	pems := map[string]string{}
	sigs := map[string][]byte{}
	for _, k := range signers {
		ids[k.name] = e1.createKey(t, k.name, k.spec).ID
		pems[k.name] = e1.publicPEM(t, k.name, 0)
		var sr apitypes.SignResponse
		e1.ok(t, http.MethodPost, keyPath(k.name, "/sign"), map[string]any{"data": b64(data), "algorithm": k.alg}, http.StatusOK, &sr)
		sigs[k.name] = sr.Signature
	}
	ids["aes"] = e1.createKey(t, "aes", apitypes.KeySpec{KeyType: "AES", KeySize: 256}).ID
	ids["kek"] = e1.createKey(t, "kek", apitypes.KeySpec{KeyType: "AES", KeySize: 128, Usage: []string{"wrap", "unwrap"}}).ID
	var er apitypes.EncryptResponse
	e1.ok(t, http.MethodPost, keyPath("aes", "/encrypt"), map[string]any{"plaintext": b64(data), "aad": b64([]byte("ctx"))}, http.StatusOK, &er)
	var oaep apitypes.EncryptResponse
	e1.ok(t, http.MethodPost, keyPath("rsa", "/encrypt"), map[string]any{"plaintext": b64(data), "algorithm": "RSA-OAEP"}, http.StatusOK, &oaep)
	var wr apitypes.WrapResponse
	e1.ok(t, http.MethodPost, keyPath("kek", "/wrap"), map[string]any{"key_material": b64(data)}, http.StatusOK, &wr)
	e1.ok(t, http.MethodPost, keyPath("ed", "/rotate"), nil, http.StatusOK, nil)
	pemEdV2 := e1.publicPEM(t, "ed", 0)

	e1.close(t)
	e2 := startEnv(t, dir)

	if got := len(e2.listKeys(t)); got != len(ids) {
		t.Fatalf("%d keys after restart, want %d", got, len(ids))
	}
	for name, id := range ids {
		var k apitypes.Key
		e2.ok(t, http.MethodGet, keyPath(name, ""), nil, http.StatusOK, &k)
		if k.ID != id || k.State != "active" {
			t.Errorf("key %s after restart: id %s state %s, want id %s active", name, k.ID, k.State, id)
		}
	}
	for _, k := range signers {
		t.Run(k.name, func(t *testing.T) {
			v1 := e2.publicPEM(t, k.name, 1)
			if v1 != pems[k.name] {
				t.Fatalf("public key changed across the restart")
			}
			var vr apitypes.VerifyResponse
			e2.ok(t, http.MethodPost, keyPath(k.name, "/verify"), map[string]any{"data": b64(data), "signature": b64(sigs[k.name]), "algorithm": k.alg, "key_version": 1}, http.StatusOK, &vr)
			if !vr.Valid {
				t.Error("a signature made before the restart does not verify")
			}
			var sr apitypes.SignResponse
			msg := []byte("made by the second server")
			e2.ok(t, http.MethodPost, keyPath(k.name, "/sign"), map[string]any{"data": b64(msg), "algorithm": k.alg}, http.StatusOK, &sr)
			cur := e2.publicPEM(t, k.name, 0)
			if k.name == "ed" && cur != pemEdV2 {
				t.Error("the rotated version's public key changed across the restart")
			}
			if err := goVerify(parsePEM(t, cur), k.alg, msg, sr.Signature); err != nil {
				t.Errorf("a signature made after the restart does not verify with the public key: %v", err)
			}
		})
	}
	var dr apitypes.DecryptResponse
	e2.ok(t, http.MethodPost, keyPath("aes", "/decrypt"), map[string]any{"ciphertext": b64(er.Ciphertext), "aad": b64([]byte("ctx"))}, http.StatusOK, &dr)
	if !bytes.Equal(dr.Plaintext, data) {
		t.Error("AES-GCM ciphertext from before the restart does not decrypt")
	}
	dr = apitypes.DecryptResponse{}
	e2.ok(t, http.MethodPost, keyPath("rsa", "/decrypt"), map[string]any{"ciphertext": b64(oaep.Ciphertext), "algorithm": "RSA-OAEP"}, http.StatusOK, &dr)
	if !bytes.Equal(dr.Plaintext, data) {
		t.Error("RSA-OAEP ciphertext from before the restart does not decrypt")
	}
	var ur apitypes.UnwrapResponse
	e2.ok(t, http.MethodPost, keyPath("kek", "/unwrap"), map[string]any{"wrapped_key": b64(wr.WrappedKey)}, http.StatusOK, &ur)
	if !bytes.Equal(ur.KeyMaterial, data) {
		t.Error("a key wrapped before the restart does not unwrap")
	}
	e2.createKey(t, "after-restart", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	e2.fails(t, http.MethodPost, "/api/v1/keys", apitypes.CreateKeyRequest{Name: "rsa", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}}, http.StatusConflict, apitypes.CodeKeyAlreadyExists)
}

// TestConcurrency signs, verifies and creates from 8 goroutines at once.
// Run with -race.
func TestConcurrency(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	shared := []struct{ name, alg string }{{"c-ec", "ES256"}, {"c-ed", "EdDSA"}, {"c-rsa", "PS256"}}
	e.createKey(t, "c-ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	e.createKey(t, "c-ed", apitypes.KeySpec{KeyType: "Ed25519"})
	e.createKey(t, "c-rsa", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048})

	const workers, perWorker = 8, 40
	type signed struct {
		key, alg string
		data     []byte
		sig      []byte
	}
	var (
		mu      sync.Mutex
		sigs    []signed
		created = map[string]string{} // name → id
		wg      sync.WaitGroup
	)
	specs := []apitypes.KeySpec{
		{KeyType: "EC", Curve: "P-256"}, {KeyType: "Ed25519"}, {KeyType: "AES", KeySize: 128}, {KeyType: "EC", Curve: "P-384"},
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				if i%2 == 0 {
					name := fmt.Sprintf("w%d-k%d", w, i)
					k, err := e.c.CreateKey(context.Background(), apitypes.CreateKeyRequest{Name: name, KeySpec: specs[(w+i/2)%len(specs)]})
					if err != nil {
						t.Errorf("create %s: %v", name, err)
						return
					}
					mu.Lock()
					created[name] = k.ID
					mu.Unlock()
					continue
				}
				s := shared[(w+i)%len(shared)]
				data := []byte(fmt.Sprintf("worker %d op %d", w, i))
				sr, err := e.c.Sign(context.Background(), s.name, apitypes.SignRequest{Data: data, Algorithm: s.alg})
				if err != nil {
					t.Errorf("sign with %s: %v", s.name, err)
					return
				}
				vr, err := e.c.Verify(context.Background(), s.name, apitypes.VerifyRequest{Data: data, Signature: sr.Signature, Algorithm: s.alg})
				if err != nil || !vr.Valid {
					t.Errorf("verify with %s: %+v, %v", s.name, vr, err)
					return
				}
				mu.Lock()
				sigs = append(sigs, signed{s.name, s.alg, data, sr.Signature})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	if want := workers * perWorker / 2; len(sigs) != want || len(created) != want {
		t.Fatalf("%d signatures and %d creates, want %d of each", len(sigs), len(created), want)
	}
	pubs := map[string]crypto.PublicKey{}
	for _, s := range shared {
		pubs[s.name] = parsePEM(t, e.publicPEM(t, s.name, 0))
	}
	for _, s := range sigs {
		if err := goVerify(pubs[s.key], s.alg, s.data, s.sig); err != nil {
			t.Errorf("signature by %s over %q: %v", s.key, s.data, err)
		}
	}

	list := e.listKeys(t)
	want := map[string]string{}
	for n, id := range created {
		want[n] = id
	}
	for _, s := range shared {
		want[s.name] = ""
	}
	if len(list) != len(want) {
		t.Errorf("list has %d keys, want %d", len(list), len(want))
	}
	seenIDs := map[string]bool{}
	for _, k := range list {
		id, ok := want[k.Name]
		switch {
		case !ok:
			t.Errorf("unexpected key %s in the list", k.Name)
		case id != "" && id != k.ID:
			t.Errorf("key %s has id %s in the list, %s at creation", k.Name, k.ID, id)
		case k.State != "active":
			t.Errorf("key %s is %s", k.Name, k.State)
		}
		if seenIDs[k.ID] {
			t.Errorf("id %s listed twice", k.ID)
		}
		seenIDs[k.ID] = true
	}
	if n := e.keystoreFiles(t); n != len(want) {
		t.Errorf("keystore holds %d key files for %d keys", n, len(want))
	}

	t.Run("one name raced by 8 creates", func(t *testing.T) {
		before := e.keystoreFiles(t)
		var wins, dups, others int
		var rmu sync.Mutex
		var rwg sync.WaitGroup
		for range workers {
			rwg.Add(1)
			go func() {
				defer rwg.Done()
				_, err := e.c.CreateKey(context.Background(), apitypes.CreateKeyRequest{Name: "raced", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}})
				rmu.Lock()
				defer rmu.Unlock()
				switch {
				case err == nil:
					wins++
				case errors.Is(err, client.ErrKeyAlreadyExists):
					dups++
				default:
					others++
					t.Errorf("racing create: %v", err)
				}
			}()
		}
		rwg.Wait()
		if wins != 1 || dups != workers-1 || others != 0 {
			t.Errorf("8 racing creates of one name: %d created, %d KEY_ALREADY_EXISTS, %d other; want 1, 7, 0", wins, dups, others)
		}
		if n := e.keystoreFiles(t); n != before+1 {
			t.Errorf("keystore grew by %d files, want 1", n-before)
		}
	})
}

// TestHealthReadyMetricsProviders checks the operational endpoints.
func TestHealthReadyMetricsProviders(t *testing.T) {
	t.Parallel()
	e := newEnv(t)

	t.Run("health", func(t *testing.T) {
		var h map[string]any
		e.ok(t, http.MethodGet, "/health", nil, http.StatusOK, &h)
		if h["status"] != "ok" || h["version"] != "test" {
			t.Errorf("/health = %v, want status ok, version test", h)
		}
	})
	t.Run("ready", func(t *testing.T) {
		var r apitypes.Ready
		e.ok(t, http.MethodGet, "/ready", nil, http.StatusOK, &r)
		if r.Status != "ok" {
			t.Errorf("/ready status %q", r.Status)
		}
		i := slices.IndexFunc(r.Providers, func(p apitypes.ProviderStatus) bool { return p.Name == "software" })
		if i < 0 || !r.Providers[i].Healthy || r.Providers[i].Type != "software" {
			t.Errorf("/ready providers %+v: want software healthy", r.Providers)
		}
	})
	t.Run("providers", func(t *testing.T) {
		var l apitypes.ProviderList
		e.ok(t, http.MethodGet, "/api/v1/providers", nil, http.StatusOK, &l)
		if len(l.Providers) != 1 {
			t.Fatalf("providers %+v, want software only", l.Providers)
		}
		p := l.Providers[0]
		if p.Name != "software" || p.Type != "software" || !p.Healthy {
			t.Errorf("provider %+v", p)
		}
		for _, c := range []string{"sign", "verify", "encrypt", "decrypt", "wrap", "unwrap",
			"RSA-2048", "RSA-3072", "RSA-4096", "EC-P-256", "EC-P-384", "EC-P-521", "Ed25519", "AES-128", "AES-256",
			"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
			"RSA-OAEP", "RSA-OAEP-256", "A128GCM", "A256GCM", "AES-KWP"} {
			if !slices.Contains(p.Capabilities, c) {
				t.Errorf("capabilities %v lack %s", p.Capabilities, c)
			}
		}
		kt := map[string]apitypes.KeyTypeInfo{}
		for _, k := range p.KeyTypes {
			kt[k.KeyType] = k
		}
		if !slices.Equal(kt["RSA"].Sizes, []int{2048, 3072, 4096}) || !slices.Contains(kt["RSA"].Algorithms, "PS256") ||
			!slices.Contains(kt["EC"].Curves, "P-521") || !slices.Contains(kt["Ed25519"].Algorithms, "EdDSA") {
			t.Errorf("key_types %+v", p.KeyTypes)
		}
	})
	t.Run("provider health", func(t *testing.T) {
		var h apitypes.ProviderHealth
		e.ok(t, http.MethodGet, "/api/v1/providers/software/health", nil, http.StatusOK, &h)
		if h.Name != "software" || !h.Healthy || h.State != "healthy" || h.LastCheck == nil {
			t.Errorf("provider health %+v", h)
		}
		e.fails(t, http.MethodGet, "/api/v1/providers/nope/health", nil, http.StatusNotFound, apitypes.CodeProviderNotFound)
	})
	t.Run("metrics", func(t *testing.T) {
		e.createKey(t, "m-ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
		for range 3 {
			e.ok(t, http.MethodPost, keyPath("m-ec", "/sign"), map[string]any{"data": b64([]byte("x"))}, http.StatusOK, nil)
		}
		e.fails(t, http.MethodPost, keyPath("m-ec", "/sign"), map[string]any{"digest": b64([]byte("x"))}, http.StatusBadRequest, apitypes.CodeInvalidInput)
		r := e.send(t, http.MethodGet, "/metrics", nil)
		if r.status != http.StatusOK || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
			t.Fatalf("/metrics: status %d, Content-Type %q", r.status, r.header.Get("Content-Type"))
		}
		sample := func(name string, labels ...string) (float64, bool) {
			sc := bufio.NewScanner(bytes.NewReader(r.body))
			for sc.Scan() {
				line := sc.Text()
				if !strings.HasPrefix(line, name+"{") {
					continue
				}
				all := true
				for _, l := range labels {
					all = all && strings.Contains(line, l)
				}
				if !all {
					continue
				}
				v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
				return v, err == nil
			}
			return 0, false
		}
		if v, ok := sample("keygrid_operations_total", `operation="sign"`, `outcome="success"`, `algorithm="ES256"`, `provider="software"`); !ok || v != 3 {
			t.Errorf("keygrid_operations_total{operation=sign,outcome=success} = %v (found %v), want 3", v, ok)
		}
		if v, ok := sample("keygrid_operations_total", `operation="sign"`, `outcome="failure"`); !ok || v != 1 {
			t.Errorf("keygrid_operations_total{operation=sign,outcome=failure} = %v (found %v), want 1", v, ok)
		}
		if v, ok := sample("keygrid_operation_errors_total", `operation="sign"`, `code="INVALID_INPUT"`); !ok || v != 1 {
			t.Errorf("keygrid_operation_errors_total{operation=sign,code=INVALID_INPUT} = %v (found %v), want 1", v, ok)
		}
	})
}

// auditLine is what the test reads of one audit record.
type auditLine struct {
	Seq             uint64 `json:"seq"`
	RequestID       string `json:"request_id"`
	ClientRequestID string `json:"client_request_id"`
	Operation       string `json:"operation"`
	KeyID           string `json:"key_id"`
	KeyName         string `json:"key_name"`
	KeyVersion      int    `json:"key_version"`
	Outcome         string `json:"outcome"`
	ErrorCode       string `json:"error_code"`
}

// TestAuditLog checks that each operation leaves one line in the audit log
// with its request id, operation, key, outcome and error code, that the
// chain verifies, and that no plaintext, signature or ciphertext bytes are
// written.
func TestAuditLog(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	plaintext := []byte("PLAINTEXT-MARKER-7f3a9c")
	aad := []byte("AAD-MARKER-51bd")

	type call struct {
		rid     string
		method  string
		path    string
		body    any
		status  int
		op      string
		keyName string // the key whose id the record names; "" when none exists
		code    string
	}
	calls := []call{
		{"a-create-ec", http.MethodPost, "/api/v1/keys", apitypes.CreateKeyRequest{Name: "audit-ec", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}}, 201, "create", "audit-ec", ""},
		{"a-create-aes", http.MethodPost, "/api/v1/keys", apitypes.CreateKeyRequest{Name: "audit-aes", KeySpec: apitypes.KeySpec{KeyType: "AES", KeySize: 256}}, 201, "create", "audit-aes", ""},
		{"a-create-dup", http.MethodPost, "/api/v1/keys", apitypes.CreateKeyRequest{Name: "audit-ec", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}}, 409, "create", "", "KEY_ALREADY_EXISTS"},
		{"a-sign", http.MethodPost, keyPath("audit-ec", "/sign"), map[string]any{"data": b64(plaintext)}, 200, "sign", "audit-ec", ""},
		{"a-sign-bad-digest", http.MethodPost, keyPath("audit-ec", "/sign"), map[string]any{"digest": b64([]byte("short"))}, 400, "sign", "audit-ec", "INVALID_INPUT"},
		{"a-sign-missing", http.MethodPost, keyPath("no-such-key", "/sign"), map[string]any{"data": b64(plaintext)}, 404, "sign", "", "KEY_NOT_FOUND"},
		{"a-encrypt", http.MethodPost, keyPath("audit-aes", "/encrypt"), map[string]any{"plaintext": b64(plaintext), "aad": b64(aad)}, 200, "encrypt", "audit-aes", ""},
		{"a-encrypt-usage", http.MethodPost, keyPath("audit-ec", "/encrypt"), map[string]any{"plaintext": b64(plaintext)}, 400, "encrypt", "audit-ec", "USAGE_NOT_PERMITTED"},
		{"a-deactivate", http.MethodPost, keyPath("audit-ec", "/deactivate"), nil, 200, "deactivate", "audit-ec", ""},
		{"a-sign-inactive", http.MethodPost, keyPath("audit-ec", "/sign"), map[string]any{"data": b64(plaintext)}, 409, "sign", "audit-ec", "KEY_INACTIVE"},
		{"a-activate", http.MethodPost, keyPath("audit-ec", "/activate"), nil, 200, "activate", "audit-ec", ""},
		{"a-rotate", http.MethodPost, keyPath("audit-ec", "/rotate"), nil, 200, "rotate", "audit-ec", ""},
	}
	ids := map[string]string{}
	var secrets [][]byte
	var ciphertext []byte
	for _, c := range calls {
		r := e.send(t, c.method, c.path, c.body, "X-Request-Id", c.rid)
		if r.status != c.status {
			t.Fatalf("%s %s: status %d, want %d; body %s", c.method, c.path, r.status, c.status, r.body)
		}
		var out struct {
			ID         string `json:"id"`
			Name       string `json:"name"`
			Signature  []byte `json:"signature"`
			Ciphertext []byte `json:"ciphertext"`
		}
		if err := json.Unmarshal(r.body, &out); err != nil {
			t.Fatalf("%s: %v", c.rid, err)
		}
		if c.status == http.StatusCreated {
			ids[out.Name] = out.ID
		}
		if out.Signature != nil {
			secrets = append(secrets, out.Signature)
		}
		if out.Ciphertext != nil {
			ciphertext = out.Ciphertext
			secrets = append(secrets, out.Ciphertext)
		}
	}
	if len(secrets) != 2 || ciphertext == nil {
		t.Fatalf("captured %d signatures and ciphertexts, want 2", len(secrets))
	}
	var dr apitypes.DecryptResponse
	r := e.send(t, http.MethodPost, keyPath("audit-aes", "/decrypt"), map[string]any{"ciphertext": b64(ciphertext), "aad": b64(aad)}, "X-Request-Id", "a-decrypt")
	if r.status != http.StatusOK || json.Unmarshal(r.body, &dr) != nil || !bytes.Equal(dr.Plaintext, plaintext) {
		t.Fatalf("decrypt: %d %s", r.status, r.body)
	}
	calls = append(calls, call{rid: "a-decrypt", op: "decrypt", keyName: "audit-aes"})
	// Requests that are not key operations leave no record.
	e.send(t, http.MethodGet, "/health", nil, "X-Request-Id", "a-health")
	e.send(t, http.MethodGet, "/api/v1/keys", nil, "X-Request-Id", "a-list")

	raw, err := os.ReadFile(filepath.Join(e.dataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []auditLine
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("audit line is not JSON: %v: %s", err, sc.Bytes())
		}
		lines = append(lines, l)
	}
	if len(lines) != len(calls) {
		t.Errorf("audit log has %d lines for %d operations:\n%s", len(lines), len(calls), raw)
	}
	byRID := map[string][]auditLine{}
	for _, l := range lines {
		byRID[l.ClientRequestID] = append(byRID[l.ClientRequestID], l)
	}
	for _, c := range calls {
		got := byRID[c.rid]
		if len(got) != 1 {
			t.Errorf("request %s: %d audit lines, want 1", c.rid, len(got))
			continue
		}
		l := got[0]
		wantOutcome := "success"
		if c.code != "" {
			wantOutcome = "failure"
		}
		if l.Operation != c.op || l.Outcome != wantOutcome || l.ErrorCode != c.code || l.KeyID != ids[c.keyName] {
			t.Errorf("request %s: audit %+v, want operation %s outcome %s error_code %q key_id %q",
				c.rid, l, c.op, wantOutcome, c.code, ids[c.keyName])
		}
	}
	if l := byRID["a-create-dup"]; len(l) == 1 && l[0].KeyName != "audit-ec" {
		t.Errorf("failed duplicate create audited with key_name %q, want the name asked for", l[0].KeyName)
	}
	for _, rid := range []string{"a-health", "a-list"} {
		if len(byRID[rid]) != 0 {
			t.Errorf("request %s left an audit line", rid)
		}
	}
	for i, l := range lines {
		if l.Seq != uint64(i+1) {
			t.Errorf("line %d has seq %d", i+1, l.Seq)
		}
	}
	if n, _, err := audit.Verify(bytes.NewReader(raw), audit.ZeroHash); err != nil || n != len(lines) {
		t.Errorf("audit chain: %d lines verified, %v", n, err)
	}

	secrets = append(secrets, plaintext, aad)
	for _, s := range secrets {
		for _, form := range []string{string(s), b64(s), strings.TrimRight(b64(s), "=")} {
			if len(form) >= 8 && bytes.Contains(raw, []byte(form)) {
				t.Errorf("audit log contains secret bytes %q", form)
			}
		}
	}
}

// TestGoSDK uses pkg/client: crypto.Signer with crypto/x509, RSA-PSS and
// RSA-OAEP through the standard interfaces, and typed errors.
func TestGoSDK(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	c := e.c

	if _, err := c.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "sdk-rsa", KeySpec: apitypes.KeySpec{KeyType: "RSA", KeySize: 2048, Usage: []string{"sign", "verify", "encrypt", "decrypt"}}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []struct{ name, curve string }{{"sdk-p256", "P-256"}, {"sdk-p384", "P-384"}} {
		if _, err := c.CreateKey(ctx, apitypes.CreateKeyRequest{Name: n.name, KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: n.curve}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "sdk-ed", KeySpec: apitypes.KeySpec{KeyType: "Ed25519"}}); err != nil {
		t.Fatal(err)
	}

	t.Run("self-signed certificates", func(t *testing.T) {
		tests := []struct {
			name   string
			key    string
			sigAlg x509.SignatureAlgorithm
		}{
			{"ok ec p-256", "sdk-p256", x509.ECDSAWithSHA256},
			{"ok ec p-384 with SHA-384", "sdk-p384", x509.ECDSAWithSHA384},
			{"ok ed25519", "sdk-ed", x509.PureEd25519},
			{"ok rsa pkcs1", "sdk-rsa", x509.SHA256WithRSA},
			{"ok rsa pss", "sdk-rsa", x509.SHA384WithRSAPSS},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				signer, err := c.Signer(ctx, tc.key)
				if err != nil {
					t.Fatal(err)
				}
				tmpl := &x509.Certificate{
					SerialNumber:          big.NewInt(42),
					Subject:               pkix.Name{CommonName: "keygrid e2e " + tc.name},
					NotBefore:             time.Now().Add(-time.Minute),
					NotAfter:              time.Now().Add(time.Hour),
					KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
					BasicConstraintsValid: true,
					IsCA:                  true,
					SignatureAlgorithm:    tc.sigAlg,
				}
				der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
				if err != nil {
					t.Fatalf("x509.CreateCertificate: %v", err)
				}
				cert, err := x509.ParseCertificate(der)
				if err != nil {
					t.Fatal(err)
				}
				if err := cert.CheckSignatureFrom(cert); err != nil {
					t.Fatalf("self-signed certificate does not verify: %v", err)
				}
				if cert.SignatureAlgorithm != tc.sigAlg {
					t.Errorf("certificate signature algorithm %v, want %v", cert.SignatureAlgorithm, tc.sigAlg)
				}
				type equaler interface{ Equal(crypto.PublicKey) bool }
				if !cert.PublicKey.(equaler).Equal(parsePEM(t, e.publicPEM(t, tc.key, 0))) {
					t.Error("certificate public key is not the gateway key")
				}
			})
		}
	})

	t.Run("rsa pss options", func(t *testing.T) {
		signer, err := c.Signer(ctx, "sdk-rsa")
		if err != nil {
			t.Fatal(err)
		}
		pub := signer.Public().(*rsa.PublicKey)
		for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
			for _, salt := range []int{rsa.PSSSaltLengthEqualsHash, rsa.PSSSaltLengthAuto} {
				d := digestOf(h, []byte("pss via crypto.Signer"))
				sig, err := signer.Sign(rand.Reader, d, &rsa.PSSOptions{SaltLength: salt, Hash: h})
				if err != nil {
					t.Fatalf("%v salt %d: %v", h, salt, err)
				}
				if err := rsa.VerifyPSS(pub, h, d, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h}); err != nil {
					t.Errorf("%v salt %d: PSS signature does not verify: %v", h, salt, err)
				}
			}
			d := digestOf(h, []byte("pkcs1 via crypto.Signer"))
			sig, err := signer.Sign(rand.Reader, d, h)
			if err != nil {
				t.Fatal(err)
			}
			if err := rsa.VerifyPKCS1v15(pub, h, d, sig); err != nil {
				t.Errorf("%v: PKCS#1 v1.5 signature does not verify: %v", h, err)
			}
		}
	})

	t.Run("rsa oaep decrypter", func(t *testing.T) {
		signer, err := c.Signer(ctx, "sdk-rsa")
		if err != nil {
			t.Fatal(err)
		}
		var dec crypto.Decrypter = signer
		pub := signer.Public().(*rsa.PublicKey)
		msg := []byte("a wrapped session key")
		for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA1} {
			ct, err := rsa.EncryptOAEP(h.New(), rand.Reader, pub, msg, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := dec.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: h})
			if err != nil {
				t.Fatalf("Decrypt OAEP %v: %v", h, err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("Decrypt OAEP %v = %q, want %q", h, got, msg)
			}
		}
		ct, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, msg, nil)
		if _, err := dec.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: crypto.SHA1}); !errors.Is(err, client.ErrDecryptionFailed) {
			t.Errorf("Decrypt with the wrong OAEP hash: %v, want ErrDecryptionFailed", err)
		}
	})

	t.Run("typed errors", func(t *testing.T) {
		_, err := c.GetKey(ctx, "does-not-exist")
		if !errors.Is(err, client.ErrKeyNotFound) {
			t.Fatalf("GetKey of a missing key: %v, want ErrKeyNotFound", err)
		}
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Status != http.StatusNotFound || ce.RequestID == "" {
			t.Errorf("error %#v: want *client.Error with status 404 and a request id", err)
		}
		if _, err := c.Signer(ctx, "does-not-exist"); !errors.Is(err, client.ErrKeyNotFound) {
			t.Errorf("Signer of a missing key: %v, want ErrKeyNotFound", err)
		}
		if _, err := c.DeleteKey(ctx, "does-not-exist", client.DeleteOptions{}); !errors.Is(err, client.ErrKeyNotFound) {
			t.Errorf("DeleteKey of a missing key: %v, want ErrKeyNotFound", err)
		}
		_, err = c.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "sdk-ed", KeySpec: apitypes.KeySpec{KeyType: "Ed25519"}})
		if !errors.Is(err, client.ErrKeyAlreadyExists) {
			t.Errorf("duplicate create: %v, want ErrKeyAlreadyExists", err)
		}
		_, err = c.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "sdk-small", KeySpec: apitypes.KeySpec{KeyType: "RSA", KeySize: 1024}})
		if !errors.Is(err, client.ErrInvalidInput) {
			t.Errorf("RSA-1024 create: %v, want ErrInvalidInput", err)
		}
		_, err = c.Sign(ctx, "sdk-p256", apitypes.SignRequest{Data: []byte("x"), Algorithm: "PS256"})
		if !errors.Is(err, client.ErrUnsupportedAlgorithm) {
			t.Errorf("PS256 on EC: %v, want ErrUnsupportedAlgorithm", err)
		}
		signer, err := c.Signer(ctx, "sdk-p256")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.DeactivateKey(ctx, "sdk-p256"); err != nil {
			t.Fatal(err)
		}
		if _, err := signer.Sign(rand.Reader, digestOf(crypto.SHA256, []byte("x")), crypto.SHA256); !errors.Is(err, client.ErrKeyInactive) {
			t.Errorf("Signer on an inactive key: %v, want ErrKeyInactive", err)
		}
		if _, err := c.ActivateKey(ctx, "sdk-p256"); err != nil {
			t.Fatal(err)
		}
		if _, err := signer.Sign(rand.Reader, digestOf(crypto.SHA256, []byte("x")), crypto.SHA256); err != nil {
			t.Errorf("Signer after activate: %v", err)
		}
	})
}

// TestRequestStringsStayOutOfAuditAndMetrics sends names the server does not
// know (algorithm, provider) of a size the body limit allows: they must not
// become metric labels (one series per request) nor audit fields (a line the
// audit log cannot read back, so that the server no longer starts).
func TestRequestStringsStayOutOfAuditAndMetrics(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	e := startEnv(t, dir)
	e.createKey(t, "ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})

	// Sent raw, '<' is one byte; JSON-escaped in a record it is six.
	huge := strings.Repeat("<", 400<<10)
	tests := []struct {
		name   string
		path   string
		body   string
		marker string
	}{
		{"fail sign unknown algorithm", keyPath("ec", "/sign"), `{"data":"eA==","algorithm":"MARKER-ALG-1` + huge + `"}`, "MARKER-ALG-1"},
		{"fail verify unknown algorithm", keyPath("ec", "/verify"), `{"data":"eA==","signature":"eA==","algorithm":"MARKER-ALG-2"}`, "MARKER-ALG-2"},
		{"fail create unknown algorithm", "/api/v1/keys", `{"name":"x1","key_spec":{"key_type":"EC","key_size":256,"algorithm":"MARKER-ALG-3` + huge + `"}}`, "MARKER-ALG-3"},
		{"fail create unknown provider", "/api/v1/keys", `{"provider":"MARKER-PROV-4` + huge + `","name":"x1","key_spec":{"key_type":"EC","key_size":256}}`, "MARKER-PROV-4"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.send(t, http.MethodPost, tc.path, tc.body)
			if r.status != http.StatusBadRequest {
				t.Fatalf("status %d, want 400; body %.300s", r.status, r.body)
			}
			checkErrorBody(t, r)
			m := e.send(t, http.MethodGet, "/metrics", nil)
			if bytes.Contains(m.body, []byte(tc.marker)) {
				t.Errorf("a string from the request became a metric label")
			}
		})
	}
	raw, err := os.ReadFile(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		if bytes.Contains(raw, []byte(tc.marker)) {
			t.Errorf("%s: a string from the request was written to the audit log", tc.name)
		}
	}
	if n, _, err := audit.Verify(bytes.NewReader(raw), audit.ZeroHash); err != nil || n != len(tests)+1 {
		t.Errorf("audit log: %d lines verified (want %d): %v", n, len(tests)+1, err)
	}

	e.close(t)
	e2 := startEnv(t, dir)
	e2.ok(t, http.MethodPost, keyPath("ec", "/sign"), map[string]any{"data": b64([]byte("after restart"))}, http.StatusOK, nil)
}
