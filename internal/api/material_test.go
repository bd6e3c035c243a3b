package api

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func newAuditedStack(t *testing.T) *stack {
	l, err := audit.Open(filepath.Join(t.TempDir(), "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return newStack(t, l)
}

func jsonOf(t testing.TB, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
}

// Import over REST: the wrapping key, an EC key and an HMAC key imported
// with their material wrapped by the test (Go's RSA-OAEP and the package's
// RFC 5649 on the client side), then used; bad imports answered 400 with
// nothing created.
func TestRESTImportExport(t *testing.T) {
	s := newAuditedStack(t)
	var wk apitypes.WrappingKeyResponse
	jsonOf(t, s.mustDo(t, http.MethodGet, "/api/v1/providers/software/wrapping-key", "", http.StatusOK), &wk)
	if wk.Algorithm != "RSA_AES_KEY_WRAP_SHA_256" || wk.ID == "" {
		t.Fatalf("wrapping key %+v", wk)
	}
	blk, _ := pem.Decode([]byte(wk.PublicKey))
	pubAny, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	wpub, _ := alg.ParseWrappingPublicKey(blk.Bytes)
	if wpub == nil || wpub.N.BitLen() != 4096 {
		t.Fatalf("wrapping key %T", pubAny)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(ec)
	spki, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	pubPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}))
	wrapped, _ := alg.WrapRSAAES(wpub, pkcs8)
	body := func(name, spec string, w []byte, pub string) string {
		m := map[string]any{"name": name, "key_spec": json.RawMessage(spec), "wrapped_key": b64(w), "wrapping_key_id": wk.ID}
		if pub != "" {
			m["public_key"] = pub
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	var k apitypes.Key
	jsonOf(t, s.mustDo(t, http.MethodPost, "/api/v1/keys/import", body("imp-ec", `{"key_type":"EC","curve":"P-256","extractable":true}`, wrapped, pubPEM), http.StatusCreated), &k)
	if k.Origin != "imported" || k.State != "active" || !k.Extractable {
		t.Errorf("imported key %+v", k)
	}
	var sig apitypes.SignResponse
	jsonOf(t, s.mustDo(t, http.MethodPost, "/api/v1/keys/imp-ec/sign", `{"data":"aGVsbG8="}`, http.StatusOK), &sig)
	d := sha256.Sum256([]byte("hello"))
	if !ecdsa.VerifyASN1(&ec.PublicKey, d[:], sig.Signature) {
		t.Error("the imported key's signature does not verify with the original public key")
	}

	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherSPKI, _ := x509.MarshalPKIXPublicKey(&other.PublicKey)
	otherPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: otherSPKI}))
	bad := bytes.Clone(wrapped)
	bad[len(bad)-3] ^= 1
	for _, c := range []struct{ name, body, code string }{
		{"public key mismatch", body("bad1", `{"key_type":"EC","curve":"P-256"}`, wrapped, otherPEM), "INVALID_INPUT"},
		{"corrupt wrapping", body("bad2", `{"key_type":"EC","curve":"P-256"}`, bad, pubPEM), "INVALID_INPUT"},
		{"spec contradicts", body("bad3", `{"key_type":"EC","curve":"P-384"}`, wrapped, pubPEM), "INVALID_INPUT"},
		{"public key not PEM", body("bad4", `{"key_type":"EC","curve":"P-256"}`, wrapped, "nope"), "INVALID_INPUT"},
		{"name taken", body("imp-ec", `{"key_type":"EC","curve":"P-256"}`, wrapped, pubPEM), "KEY_ALREADY_EXISTS"},
	} {
		t.Run("fail "+c.name, func(t *testing.T) {
			code, _, b := s.do(http.MethodPost, "/api/v1/keys/import", testAdminToken, []byte(c.body))
			var e apitypes.ErrorBody
			jsonOf(t, b, &e)
			if string(e.Error.Code) != c.code || code != StatusOf(e.Error.Code) {
				t.Errorf("%d %s, want %s", code, b, c.code)
			}
			if strings.Contains(string(b), b64(wrapped)[:20]) {
				t.Error("the error echoes the wrapped key")
			}
		})
	}
	var list apitypes.KeyList
	jsonOf(t, s.mustDo(t, http.MethodGet, "/api/v1/keys", "", http.StatusOK), &list)
	if len(list.Keys) != 1 {
		t.Errorf("%d keys after the refused imports, want 1", len(list.Keys))
	}

	recv, _ := rsaKey(t)
	recvSPKI, _ := x509.MarshalPKIXPublicKey(&recv.PublicKey)
	recvPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: recvSPKI}))
	exp, _ := json.Marshal(map[string]any{"public_key": recvPEM})
	var ex apitypes.ExportKeyResponse
	jsonOf(t, s.mustDo(t, http.MethodPost, "/api/v1/keys/imp-ec/export", string(exp), http.StatusOK), &ex)
	got, err := alg.UnwrapRSAAES(recv, ex.WrappedKey)
	if err != nil {
		t.Fatal(err)
	}
	gk, err := x509.ParsePKCS8PrivateKey(got)
	if err != nil || !gk.(*ecdsa.PrivateKey).Equal(ec) {
		t.Error("the export is not the imported key")
	}
	s.mustDo(t, http.MethodPost, "/api/v1/keys", `{"name":"fixed","key_spec":{"key_type":"EC","curve":"P-256"}}`, http.StatusCreated)
	code, _, b := s.do(http.MethodPost, "/api/v1/keys/fixed/export", testAdminToken, exp)
	if code != http.StatusConflict || !strings.Contains(string(b), "KEY_NOT_EXTRACTABLE") {
		t.Errorf("export of a key not extractable: %d %s", code, b)
	}
	code, _, _ = s.do(http.MethodPost, "/api/v1/keys/imp-ec/export", testAuditorToken, exp)
	if code != http.StatusForbidden {
		t.Errorf("auditor export: %d, want 403", code)
	}
}

// HMAC, data keys, rewrap and random over REST.
func TestRESTMACDataKeyRandom(t *testing.T) {
	s := newAuditedStack(t)
	s.mustDo(t, http.MethodPost, "/api/v1/keys", `{"name":"mac","key_spec":{"key_type":"HMAC","key_size":384}}`, http.StatusCreated)
	var m apitypes.MACResponse
	jsonOf(t, s.mustDo(t, http.MethodPost, "/api/v1/keys/mac/mac", `{"data":"aGVsbG8="}`, http.StatusOK), &m)
	if m.Algorithm != "HS384" || len(m.MAC) != 48 {
		t.Fatalf("mac %+v", m)
	}
	var v apitypes.VerifyResponse
	jsonOf(t, s.mustDo(t, http.MethodPost, "/api/v1/keys/mac/verify-mac", fmt.Sprintf(`{"data":"aGVsbG8=","mac":%q}`, b64(m.MAC)), http.StatusOK), &v)
	if !v.Valid {
		t.Error("own MAC does not verify")
	}
	m.MAC[0] ^= 1
	jsonOf(t, s.mustDo(t, http.MethodPost, "/api/v1/keys/mac/verify-mac", fmt.Sprintf(`{"data":"aGVsbG8=","mac":%q}`, b64(m.MAC)), http.StatusOK), &v)
	if v.Valid {
		t.Error("a changed MAC verifies")
	}

	s.mustDo(t, http.MethodPost, "/api/v1/keys", `{"name":"kek","key_spec":{"key_type":"AES","key_size":256}}`, http.StatusCreated)
	var dk apitypes.DataKeyResponse
	jsonOf(t, s.mustDo(t, http.MethodPost, "/api/v1/keys/kek/datakey", `{"key_size":256,"include_plaintext":true,"aad":"YQ=="}`, http.StatusOK), &dk)
	if len(dk.Plaintext) != 32 {
		t.Fatalf("data key %+v", dk)
	}
	s.mustDo(t, http.MethodPost, "/api/v1/keys/kek/rotate", "", http.StatusOK)
	var rw apitypes.EncryptResponse
	jsonOf(t, s.mustDo(t, http.MethodPost, "/api/v1/keys/kek/rewrap", fmt.Sprintf(`{"ciphertext":%q,"aad":"YQ=="}`, b64(dk.Ciphertext)), http.StatusOK), &rw)
	if rw.KeyVersion != 2 {
		t.Errorf("rewrap under v%d", rw.KeyVersion)
	}
	var pt apitypes.DecryptResponse
	jsonOf(t, s.mustDo(t, http.MethodPost, "/api/v1/keys/kek/decrypt", fmt.Sprintf(`{"ciphertext":%q,"aad":"YQ=="}`, b64(rw.Ciphertext)), http.StatusOK), &pt)
	if !bytes.Equal(pt.Plaintext, dk.Plaintext) {
		t.Error("rewrapped ciphertext does not give the data key")
	}
	var nodk apitypes.DataKeyResponse
	b := s.mustDo(t, http.MethodPost, "/api/v1/keys/kek/datakey", `{"key_size":128}`, http.StatusOK)
	jsonOf(t, b, &nodk)
	if nodk.Plaintext != nil || strings.Contains(string(b), `"plaintext"`) {
		t.Errorf("data key without include_plaintext: %s", b)
	}
	var r apitypes.RandomResponse
	jsonOf(t, s.mustDo(t, http.MethodPost, "/api/v1/random", `{"bytes":64}`, http.StatusOK), &r)
	if len(r.Random) != 64 {
		t.Errorf("random of %d bytes", len(r.Random))
	}
	s.mustDo(t, http.MethodPost, "/api/v1/random", `{"bytes":1025}`, http.StatusBadRequest)
	s.mustDo(t, http.MethodPost, "/api/v1/random", `{"bytes":8,"provider":"nope"}`, http.StatusNotFound)
}

// A batch mixing successes and failures answers each in order, the
// failures with the single request's code and status.
func TestRESTBatch(t *testing.T) {
	s := newAuditedStack(t)
	s.mustDo(t, http.MethodPost, "/api/v1/keys", `{"name":"ec","key_spec":{"key_type":"EC","curve":"P-256"}}`, http.StatusCreated)
	s.mustDo(t, http.MethodPost, "/api/v1/keys", `{"name":"aes","key_spec":{"key_type":"AES","key_size":256}}`, http.StatusCreated)
	s.mustDo(t, http.MethodPost, "/api/v1/keys", `{"name":"mac","key_spec":{"key_type":"HMAC","key_size":256}}`, http.StatusCreated)
	var single apitypes.SignResponse
	jsonOf(t, s.mustDo(t, http.MethodPost, "/api/v1/keys/ec/sign", `{"data":"aGVsbG8="}`, http.StatusOK), &single)
	items := []string{
		`{"op":"sign","key":"ec","data":"aGVsbG8="}`,
		`{"op":"verify","key":"ec","data":"aGVsbG8=","signature":"` + b64(single.Signature) + `"}`,
		`{"op":"encrypt","key":"aes","plaintext":"c2VjcmV0"}`,
		`{"op":"mac","key":"mac","data":"aGVsbG8="}`,
		`{"op":"sign","key":"missing","data":"aGVsbG8="}`,
		`{"op":"decrypt","key":"ec","ciphertext":"AAAA"}`,
		`{"op":"sign","key":"ec","data":"aGVsbG8=","unknown":1}`,
		`{"op":"delete","key":"ec"}`,
		`{"op":"sign"}`,
	}
	var res struct {
		Results []map[string]any `json:"results"`
	}
	jsonOf(t, s.mustDo(t, http.MethodPost, "/api/v1/batch", `{"items":[`+strings.Join(items, ",")+`]}`, http.StatusOK), &res)
	if len(res.Results) != len(items) {
		t.Fatalf("%d results for %d items", len(res.Results), len(items))
	}
	want := []struct {
		field string
		code  string
		st    float64
	}{
		{"signature", "", 0}, {"valid", "", 0}, {"ciphertext", "", 0}, {"mac", "", 0},
		{"", "KEY_NOT_FOUND", 404}, {"", "USAGE_NOT_PERMITTED", 400}, {"", "INVALID_INPUT", 400}, {"", "INVALID_INPUT", 400}, {"", "INVALID_INPUT", 400},
	}
	for i, w := range want {
		r := res.Results[i]
		if w.field != "" {
			if _, ok := r[w.field]; !ok || r["error"] != nil {
				t.Errorf("item %d: %v, want %s", i, r, w.field)
			}
			continue
		}
		e, _ := r["error"].(map[string]any)
		if e == nil || e["code"] != w.code || r["status"] != w.st {
			t.Errorf("item %d: %v, want %s %v", i, r, w.code, w.st)
		}
	}
	if v, _ := res.Results[1]["valid"].(bool); !v {
		t.Error("the batch verify of a good signature is not valid")
	}
	many := make([]string, MaxBatchItems+1)
	for i := range many {
		many[i] = items[0]
	}
	s.mustDo(t, http.MethodPost, "/api/v1/batch", `{"items":[`+strings.Join(many, ",")+`]}`, http.StatusRequestEntityTooLarge)
	s.mustDo(t, http.MethodPost, "/api/v1/batch", `{"items":[]}`, http.StatusBadRequest)
	// Each item is authorized as if alone: an auditor's signs are refused
	// item by item.
	code, _, b := s.do(http.MethodPost, "/api/v1/batch", testAuditorToken, []byte(`{"items":[`+items[0]+`]}`))
	if code != http.StatusOK || !strings.Contains(string(b), "AUTHORIZATION_FAILED") {
		t.Errorf("auditor batch: %d %s", code, b)
	}
}

func rsaKey(t *testing.T) (*rsa.PrivateKey, error) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k, nil
}
