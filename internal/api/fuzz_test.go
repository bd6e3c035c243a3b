package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/httpstack"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// bodySeeds are request bodies of every route, good and bad.
var bodySeeds = []string{
	`{"name":"k1","key_spec":{"key_type":"EC","curve":"P-256","usage":["sign","verify"]},"metadata":{"team":"a"},"expires_at":"2030-01-01T00:00:00Z"}`,
	`{"provider":"software","name":"k2","key_spec":{"key_type":"RSA","key_size":2048,"algorithm":"PS256","extractable":true}}`,
	`{"data":"aGVsbG8=","algorithm":"ES256","signature_format":"raw"}`,
	`{"digest":"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="}`,
	`{"data":"aGVsbG8=","signature":"MEUCIQ==","key_version":1}`,
	`{"plaintext":"aGVsbG8=","aad":"YQ==","algorithm":"A256GCM"}`,
	`{"data":"aGVsbG8="}`,
	`{"ciphertext":"S0cBAAAAAQwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","aad":"YQ=="}`,
	`{"key_material":"AAECAwQFBgcICQoLDA0ODw=="}`,
	`{"wrapped_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAA=","key_version":0}`,
	`{}`, ``, `null`, `[]`, `{"data":null}`, `{"data":"!!"}`, `{"data":"aGVsbG8="}{}`, `{"x":1}`,
	`{"metadata":{"a":[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]}}`, `{"data":"\u0000\ud800"}`, `{"key_version":1e400}`,
	`{"key_version":-1}`, `{"name":"` + strings.Repeat("é", 200) + `"}`, `{"expires_at":"yesterday"}`,
	`{"subject":{"common_name":"a","organization":["b"]},"dns_names":["a.example"],"ip_addresses":["192.0.2.1"]}`,
	`{"csr":"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n","validity":"720h","is_ca":true,"max_path_len":0}`,
	`{"self_signed":true,"subject":{"common_name":"r"},"not_after":"2031-01-01T00:00:00Z","key_usage":["cert_sign"]}`,
	`{"chain":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}`,
	`{"claims":{"sub":"a","n":1,"x":[1,{"y":null}]},"header":{"typ":"at+jwt"},"expires_in":"15m"}`,
	`{"payload":"aGVsbG8=","detached":true}`,
	// Key material, data keys, HMAC, random and batch.
	`{"provider":"software","name":"imp","key_spec":{"key_type":"AES","key_size":256},"wrapped_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAA=","wrapping_key_id":"00ff","wrapping_algorithm":"RSA_AES_KEY_WRAP_SHA_1"}`,
	`{"name":"imp2","key_spec":{"key_type":"EC","curve":"P-256"},"wrapped_key":"AAAA","wrapping_key_id":"x","public_key":"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"}`,
	`{"wrapped_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAA=","wrapping_key_id":"00ff","wrapping_algorithm":"RSA_AES_KEY_WRAP_SHA_256"}`,
	`{"public_key":"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n","version":1}`,
	`{"key_size":256,"include_plaintext":true,"aad":"YQ=="}`, `{"key_size":129}`,
	`{"data":"aGVsbG8=","mac":"AAAA","key_version":1}`,
	`{"bytes":32,"provider":"software"}`, `{"bytes":0}`, `{"bytes":100000}`,
	`{"items":[{"op":"sign","key":"ec","data":"aGVsbG8="},{"op":"mac","key":"mac","data":"aGVsbG8="},{"op":"nope","key":"x"},{"op":"encrypt","key":"aes","plaintext":"aGVsbG8="},{"op":"sign"},7]}`,
	`{"items":[]}`, `{"items":[{"op":"verify-mac","key":"mac","data":"aGVsbG8=","mac":"AAAA","extra":1}]}`,
}

// requestTypes are the body types of the routes, by route name.
var requestTypes = map[string]func() any{
	"create":  func() any { return new(apitypes.CreateKeyRequest) },
	"sign":    func() any { return new(apitypes.SignRequest) },
	"verify":  func() any { return new(apitypes.VerifyRequest) },
	"encrypt": func() any { return new(apitypes.EncryptRequest) },
	"decrypt": func() any { return new(apitypes.DecryptRequest) },
	"wrap":    func() any { return new(apitypes.WrapRequest) },
	"unwrap":  func() any { return new(apitypes.UnwrapRequest) },
	"state":   func() any { return new(struct{}) }, // activate, deactivate, rotate
	"csr":     func() any { return new(apitypes.CSRRequest) },
	"issue":   func() any { return new(apitypes.IssueCertificateRequest) },
	"attach":  func() any { return new(apitypes.AttachChainRequest) },
	"jwt":     func() any { return new(apitypes.JWTRequest) },
	"jws":     func() any { return new(apitypes.JWSRequest) },

	"import":         func() any { return new(apitypes.ImportKeyRequest) },
	"import-version": func() any { return new(apitypes.ImportVersionRequest) },
	"export":         func() any { return new(apitypes.ExportKeyRequest) },
	"datakey":        func() any { return new(apitypes.DataKeyRequest) },
	"rewrap":         func() any { return new(apitypes.RewrapRequest) },
	"mac":            func() any { return new(apitypes.MACRequest) },
	"verify-mac":     func() any { return new(apitypes.VerifyMACRequest) },
	"random":         func() any { return new(apitypes.RandomRequest) },
	"batch":          func() any { return new(apitypes.BatchRequest) },
}

// FuzzDecodeRequest decodes arbitrary bodies into the request type of each
// route: it never panics; it fails only with INVALID_INPUT; what it accepts
// is one JSON object within the depth cap that encodes and decodes again to
// the same value.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range bodySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for name, mk := range requestTypes {
			v := mk()
			err := httpstack.Decode(body, 16, v)
			if err != nil {
				var ke *kgerr.Error
				if !errors.As(err, &ke) || ke.Kind != kgerr.KindInvalidInput || ke.Message == "" {
					t.Fatalf("%s: error %v is not INVALID_INPUT with a message", name, err)
				}
				continue
			}
			if httpstack.JSONDepth(body) > 16 {
				t.Fatalf("%s: accepted a body nested %d deep", name, httpstack.JSONDepth(body))
			}
			again, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("%s: re-encode: %v", name, err)
			}
			w := mk()
			if err := httpstack.Decode(again, 16, w); err != nil {
				t.Fatalf("%s: decoding %s again: %v", name, again, err)
			}
			if third, _ := json.Marshal(w); !bytes.Equal(third, again) {
				t.Fatalf("%s: round trip changed %s into %s", name, again, third)
			}
		}
	})
}

// nopRecorder keeps audit records in memory (fuzzing does not fsync).
type nopRecorder struct{}

func (nopRecorder) Record(context.Context, audit.Event) error { return nil }

// FuzzRoutes sends arbitrary bodies through the whole handler (middleware,
// authentication, decoding, the service with a software provider) to every
// route that takes a body: the answer is never a 5xx, and every error is the
// error body with a code and a message.
func FuzzRoutes(f *testing.F) {
	s := newStack(f, nopRecorder{})
	for _, k := range []string{
		`{"name":"ec","key_spec":{"key_type":"EC","curve":"P-256"}}`,
		`{"name":"ed","key_spec":{"key_type":"Ed25519"}}`,
		`{"name":"aes","key_spec":{"key_type":"AES","key_size":128}}`,
		`{"name":"kek","key_spec":{"key_type":"AES","key_size":256,"usage":["wrap","unwrap"]}}`,
		`{"name":"mac","key_spec":{"key_type":"HMAC","key_size":256}}`,
	} {
		s.mustDo(f, http.MethodPost, "/api/v1/keys", k, http.StatusCreated)
	}
	type route struct {
		method, path, token string
	}
	routes := []route{
		// Creates and state changes go as the auditor: decoded and
		// authorized, never carried out (no key generation per input).
		{http.MethodPost, "/api/v1/keys", testAuditorToken},
		{http.MethodPost, "/api/v1/keys/ec/deactivate", testAuditorToken},
		{http.MethodPost, "/api/v1/keys/ec/sign", testAdminToken},
		{http.MethodPost, "/api/v1/keys/ed/sign", testAdminToken},
		{http.MethodPost, "/api/v1/keys/ec/verify", testAdminToken},
		{http.MethodPost, "/api/v1/keys/ed/verify", testAdminToken},
		{http.MethodPost, "/api/v1/keys/aes/encrypt", testAdminToken},
		{http.MethodPost, "/api/v1/keys/aes/decrypt", testAdminToken},
		{http.MethodPost, "/api/v1/keys/kek/wrap", testAdminToken},
		{http.MethodPost, "/api/v1/keys/kek/unwrap", testAdminToken},
		// An import as the auditor is decoded and refused; an import of
		// a version runs (the software provider's wrapping key is made
		// once, at the first).
		{http.MethodPost, "/api/v1/keys/import", testAuditorToken},
		{http.MethodPost, "/api/v1/keys/aes/import-version", testAdminToken},
		{http.MethodPost, "/api/v1/keys/aes/export", testAdminToken},
		{http.MethodPost, "/api/v1/keys/aes/datakey", testAdminToken},
		{http.MethodPost, "/api/v1/keys/aes/rewrap", testAdminToken},
		{http.MethodPost, "/api/v1/keys/mac/mac", testAdminToken},
		{http.MethodPost, "/api/v1/keys/mac/verify-mac", testAdminToken},
		{http.MethodPost, "/api/v1/random", testAdminToken},
		{http.MethodPost, "/api/v1/batch", testAdminToken},
	}
	// Every seed body on every route.
	for i := range routes {
		for _, b := range bodySeeds {
			f.Add(uint8(i), []byte(b))
		}
	}
	f.Fuzz(func(t *testing.T, sel uint8, body []byte) {
		r := routes[int(sel)%len(routes)]
		code, hdr, out := s.do(r.method, r.path, r.token, body)
		if code >= 500 {
			t.Fatalf("%s %s with %q: %d %s", r.method, r.path, body, code, out)
		}
		if !strings.HasPrefix(hdr.Get("Content-Type"), "application/json") {
			t.Fatalf("%s %s: Content-Type %q", r.method, r.path, hdr.Get("Content-Type"))
		}
		if code >= 400 {
			var eb apitypes.ErrorBody
			dec := json.NewDecoder(bytes.NewReader(out))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&eb); err != nil || eb.Error.Code == "" || eb.Error.Message == "" || StatusOf(eb.Error.Code) != code {
				t.Fatalf("%s %s: error body %s (status %d)", r.method, r.path, out, code)
			}
		}
	})
}

// FuzzPEMInputs feeds arbitrary text to the PEM translations of the
// certificate routes: they never panic and fail only with INVALID_INPUT.
func FuzzPEMInputs(f *testing.F) {
	for _, s := range []string{"", "not pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
		"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\ntrailing",
		"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n", "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"} {
		f.Add(s, "720h")
	}
	f.Fuzz(func(t *testing.T, text, validity string) {
		check := func(what string, err error) {
			if err != nil && kgerr.KindOf(err) != kgerr.KindInvalidInput {
				t.Fatalf("%s: %v (kind %s), want INVALID_INPUT", what, err, kgerr.KindOf(err))
			}
		}
		_, err := chainIn("k", apitypes.AttachChainRequest{Chain: text})
		check("chain", err)
		_, err = issueRequest("k", apitypes.IssueCertificateRequest{CSR: text, PublicKey: text, Validity: validity})
		check("issue", err)
		_, err = jwtRequest("k", apitypes.JWTRequest{Claims: map[string]any{}, ExpiresIn: validity})
		check("jwt", err)
		_, err = importKeyRequest(apitypes.ImportKeyRequest{Name: "k", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}, PublicKey: text})
		check("import", err)
		_, err = importVersionRequest("k", apitypes.ImportVersionRequest{PublicKey: text, WrappingAlgorithm: validity})
		check("import-version", err)
		_, err = exportRequest("k", apitypes.ExportKeyRequest{PublicKey: text})
		check("export", err)
	})
}
