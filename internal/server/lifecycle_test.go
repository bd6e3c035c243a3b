package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// TestScheduledDeletionHTTP: DELETE answers 200 with the key pending
// deletion and the date its window gives; while pending every
// cryptographic route is 409 KEY_PENDING_DELETION and so are the state
// changes, the key stays visible; bad windows are 400 and change nothing;
// cancel → inactive → activate → the key signs with the same public key.
func TestScheduledDeletionHTTP(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ec := e.createKey(t, "del-ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	e.createKey(t, "del-aes", apitypes.KeySpec{KeyType: "AES", KeySize: 256})
	e.createKey(t, "del-kek", apitypes.KeySpec{KeyType: "AES", KeySize: 256, Usage: []string{"wrap", "unwrap"}})
	data := []byte("made before the deletion")
	var sig apitypes.SignResponse
	e.ok(t, http.MethodPost, keyPath("del-ec", "/sign"), map[string]any{"data": b64(data)}, http.StatusOK, &sig)
	var ct apitypes.EncryptResponse
	e.ok(t, http.MethodPost, keyPath("del-aes", "/encrypt"), map[string]any{"plaintext": b64(data)}, http.StatusOK, &ct)
	var w apitypes.WrapResponse
	e.ok(t, http.MethodPost, keyPath("del-kek", "/wrap"), map[string]any{"key_material": b64([]byte("0123456789abcdef"))}, http.StatusOK, &w)
	pemBefore := e.publicPEM(t, "del-ec", 0)

	t.Run("fail bad windows", func(t *testing.T) {
		for _, q := range []string{"pending_window_days=0", "pending_window_days=31", "pending_window_days=seven",
			"pending_window=500ms", "pending_window=721h", "pending_window=soon", "pending_window_days=7&pending_window=168h"} {
			e.fails(t, http.MethodDelete, keyPath("del-ec", "")+"?"+q, nil, http.StatusBadRequest, apitypes.CodeInvalidInput)
		}
		var k apitypes.Key
		e.ok(t, http.MethodGet, keyPath("del-ec", ""), nil, http.StatusOK, &k)
		if k.State != "active" || k.Revision != ec.Revision {
			t.Fatalf("a refused DELETE changed %+v", k)
		}
	})

	before := time.Now()
	var del apitypes.KeyOperation
	e.ok(t, http.MethodDelete, keyPath("del-ec", "")+"?pending_window_days=7", nil, http.StatusOK, &del)
	if want := before.Add(7 * 24 * time.Hour); del.State != "pending_deletion" || del.Status != "pending_deletion" || del.DeletionDate == nil ||
		del.DeletionDate.Before(want.Add(-time.Second)) || del.DeletionDate.After(want.Add(5*time.Second)) || del.KeyID != ec.ID || del.Timestamp.IsZero() {
		t.Fatalf("DELETE answered %+v (key %+v), want pending_deletion on %v", del, del.Key, want)
	}
	for _, name := range []string{"del-aes", "del-kek"} {
		var d apitypes.KeyOperation
		e.ok(t, http.MethodDelete, keyPath(name, ""), nil, http.StatusOK, &d)
		if want := before.Add(30 * 24 * time.Hour); d.DeletionDate.Before(want.Add(-time.Second)) || d.DeletionDate.After(want.Add(5*time.Second)) {
			t.Fatalf("default window: deletion date %v, want 30 days out", d.DeletionDate)
		}
	}

	t.Run("every crypto route refused", func(t *testing.T) {
		for _, c := range []struct {
			key, op string
			body    any
		}{
			{"del-ec", "/sign", map[string]any{"data": b64(data)}},
			{"del-ec", "/verify", map[string]any{"data": b64(data), "signature": b64(sig.Signature)}},
			{"del-aes", "/encrypt", map[string]any{"plaintext": b64(data)}},
			{"del-aes", "/decrypt", map[string]any{"ciphertext": b64(ct.Ciphertext)}},
			{"del-kek", "/wrap", map[string]any{"key_material": b64([]byte("0123456789abcdef"))}},
			{"del-kek", "/unwrap", map[string]any{"wrapped_key": b64(w.WrappedKey)}},
			{"del-ec", "/activate", nil},
			{"del-ec", "/deactivate", nil},
			{"del-ec", "/rotate", nil},
		} {
			e.fails(t, http.MethodPost, keyPath(c.key, c.op), c.body, http.StatusConflict, apitypes.CodeKeyPendingDeletion)
		}
		e.fails(t, http.MethodPatch, keyPath("del-ec", ""), map[string]any{"description": "x"}, http.StatusConflict, apitypes.CodeKeyPendingDeletion)
		e.fails(t, http.MethodDelete, keyPath("del-ec", ""), nil, http.StatusConflict, apitypes.CodeKeyPendingDeletion)
	})
	t.Run("visible in get, list and public", func(t *testing.T) {
		var k apitypes.Key
		e.ok(t, http.MethodGet, keyPath(ec.ID, ""), nil, http.StatusOK, &k)
		if k.State != "pending_deletion" || k.DeletionDate == nil || !k.DeletionDate.Equal(*del.DeletionDate) {
			t.Fatalf("GET %+v", k)
		}
		for _, q := range []string{"state=pending_deletion", "status=pending_deletion", "status=deleted"} {
			var l apitypes.KeyList
			e.ok(t, http.MethodGet, "/api/v1/keys?"+q, nil, http.StatusOK, &l)
			if len(l.Keys) != 3 || l.Count != 3 {
				t.Fatalf("list %s: %d keys (count %d), want 3", q, len(l.Keys), l.Count)
			}
		}
		if e.publicPEM(t, "del-ec", 0) != pemBefore {
			t.Fatal("public key changed")
		}
	})
	t.Run("cancel, activate, sign with the same key", func(t *testing.T) {
		var c apitypes.KeyOperation
		e.ok(t, http.MethodPost, keyPath("del-ec", "/cancel-deletion"), nil, http.StatusOK, &c)
		if c.State != "inactive" || c.DeletionDate != nil || c.KeyID != ec.ID || !strings.Contains(c.Message, "cancelled") {
			t.Fatalf("cancel answered %+v", c)
		}
		e.fails(t, http.MethodPost, keyPath("del-ec", "/sign"), map[string]any{"data": b64(data)}, http.StatusConflict, apitypes.CodeKeyInactive)
		e.fails(t, http.MethodPost, keyPath("del-ec", "/cancel-deletion"), nil, http.StatusConflict, apitypes.CodeConflict)
		var a apitypes.KeyOperation
		e.ok(t, http.MethodPost, keyPath("del-ec", "/activate"), nil, http.StatusOK, &a)
		if a.State != "active" || a.Status != "active" {
			t.Fatalf("activate answered %+v", a)
		}
		var s apitypes.SignResponse
		e.ok(t, http.MethodPost, keyPath("del-ec", "/sign"), map[string]any{"data": b64(data)}, http.StatusOK, &s)
		if err := goVerify(parsePEM(t, pemBefore), "ES256", data, s.Signature); err != nil {
			t.Fatalf("the signature after cancel and activate does not verify with the public key from before: %v", err)
		}
	})
}

// TestUpdateKeyHTTP: PATCH round trips every field, clears with null and
// "0s", refuses immutable fields by name and stale revisions with 409, and
// of concurrent PATCHes none is lost.
func TestUpdateKeyHTTP(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := e.createKey(t, "patch-me", apitypes.KeySpec{KeyType: "AES", KeySize: 256})
	exp := time.Now().Add(72 * time.Hour).UTC().Truncate(time.Second)
	var u apitypes.Key
	e.ok(t, http.MethodPatch, keyPath("patch-me", ""), map[string]any{
		"metadata": map[string]string{"team": "payments", "env": "prod"}, "description": "payments data key",
		"expires_at": exp, "rotation_period": "2160h", "min_decrypt_version": 0,
	}, http.StatusOK, &u)
	if u.Metadata["team"] != "payments" || u.Description != "payments data key" || u.ExpiresAt == nil || !u.ExpiresAt.Equal(exp) ||
		u.RotationPeriod != "2160h0m0s" || u.NextRotationAt == nil || u.Revision != k.Revision+1 {
		t.Fatalf("PATCH answered %+v", u)
	}
	var g apitypes.Key
	e.ok(t, http.MethodGet, keyPath(k.ID, ""), nil, http.StatusOK, &g)
	if g.Description != u.Description || g.RotationPeriod != u.RotationPeriod || !g.NextRotationAt.Equal(*u.NextRotationAt) || g.Metadata["env"] != "prod" {
		t.Fatalf("GET after PATCH %+v", g)
	}
	// null clears the expiry, "0s" turns rotation off; other fields stay.
	u = apitypes.Key{}
	e.ok(t, http.MethodPatch, keyPath("patch-me", ""), `{"expires_at":null,"rotation_period":"0s"}`, http.StatusOK, &u)
	if u.ExpiresAt != nil || u.RotationPeriod != "" || u.NextRotationAt != nil || u.Description != "payments data key" || u.Metadata["team"] != "payments" {
		t.Fatalf("after clearing %+v", u)
	}
	e.ok(t, http.MethodPatch, keyPath("patch-me", ""), `{"rotation_period":"24h"}`, http.StatusOK, &u)
	u = apitypes.Key{}
	e.ok(t, http.MethodPatch, keyPath("patch-me", ""), `{"rotation_period":null,"metadata":{}}`, http.StatusOK, &u)
	if u.RotationPeriod != "" || len(u.Metadata) != 0 {
		t.Fatalf("rotation_period null and metadata {}: %+v", u)
	}

	t.Run("fail refusals change nothing", func(t *testing.T) {
		var cur apitypes.Key
		e.ok(t, http.MethodGet, keyPath("patch-me", ""), nil, http.StatusOK, &cur)
		for _, c := range []struct {
			body string
			code apitypes.ErrorCode
			says string
		}{
			{`{"usage":["sign"]}`, apitypes.CodeInvalidInput, "usage cannot be changed"},
			{`{"key_usage":["sign"]}`, apitypes.CodeInvalidInput, "key_usage cannot be changed"},
			{`{"key_type":"RSA"}`, apitypes.CodeInvalidInput, "key_type cannot be changed"},
			{`{"key_spec":{"key_type":"RSA"}}`, apitypes.CodeInvalidInput, "key_spec cannot be changed"},
			{`{"key_size":128,"description":"x"}`, apitypes.CodeInvalidInput, "key_size cannot be changed"},
			{`{"algorithm":"A128GCM"}`, apitypes.CodeInvalidInput, "algorithm cannot be changed"},
			{`{"name":"renamed"}`, apitypes.CodeInvalidInput, "name cannot be changed"},
			{`{"extractable":true}`, apitypes.CodeInvalidInput, "extractable cannot be changed"},
			{`{"state":"active"}`, apitypes.CodeInvalidInput, "state is changed with"},
			{`{"colour":"blue"}`, apitypes.CodeInvalidInput, "colour"},
			{`{}`, apitypes.CodeInvalidInput, "nothing to update"},
			{`{"rotation_period":"soon"}`, apitypes.CodeInvalidInput, "rotation_period"},
			{`{"rotation_period":"1ms"}`, apitypes.CodeInvalidInput, "rotation_period"},
			{`{"rotation_period":3600}`, apitypes.CodeInvalidInput, "rotation_period"},
			{`{"min_decrypt_version":5}`, apitypes.CodeInvalidInput, "min_decrypt_version"},
			{`{"expires_at":"2001-01-01T00:00:00Z"}`, apitypes.CodeInvalidInput, "expires_at"},
			{fmt.Sprintf(`{"description":"x","revision":%d}`, cur.Revision-1), apitypes.CodeConflict, "revision"},
		} {
			status := http.StatusBadRequest
			if c.code == apitypes.CodeConflict {
				status = http.StatusConflict
			}
			d := e.fails(t, http.MethodPatch, keyPath("patch-me", ""), c.body, status, c.code)
			if !strings.Contains(d.Message, c.says) {
				t.Errorf("PATCH %s: message %q does not say %q", c.body, d.Message, c.says)
			}
		}
		var after apitypes.Key
		e.ok(t, http.MethodGet, keyPath("patch-me", ""), nil, http.StatusOK, &after)
		if after.Revision != cur.Revision {
			t.Fatalf("refused PATCHes moved the revision %d → %d", cur.Revision, after.Revision)
		}
		e.fails(t, http.MethodPatch, keyPath("no-such-key", ""), `{"description":"x"}`, http.StatusNotFound, apitypes.CodeKeyNotFound)
	})

	t.Run("ok with the revision read", func(t *testing.T) {
		var cur, out apitypes.Key
		e.ok(t, http.MethodGet, keyPath("patch-me", ""), nil, http.StatusOK, &cur)
		e.ok(t, http.MethodPatch, keyPath("patch-me", ""), fmt.Sprintf(`{"description":"cas","revision":%d}`, cur.Revision), http.StatusOK, &out)
		if out.Revision != cur.Revision+1 || out.Description != "cas" {
			t.Fatalf("PATCH with revision: %+v", out)
		}
	})

	t.Run("concurrent PATCHes never lose an update", func(t *testing.T) {
		var cur apitypes.Key
		e.ok(t, http.MethodGet, keyPath("patch-me", ""), nil, http.StatusOK, &cur)
		const n = 12
		var (
			wg        sync.WaitGroup
			mu        sync.Mutex
			won       = map[string]int64{}
			conflicts int
		)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v := fmt.Sprintf("writer-%d", i)
				r := e.send(t, http.MethodPatch, keyPath("patch-me", ""), map[string]any{"metadata": map[string]string{"by": v}})
				mu.Lock()
				defer mu.Unlock()
				switch r.status {
				case http.StatusOK:
					var k apitypes.Key
					json.Unmarshal(r.body, &k)
					won[v] = k.Revision
				case http.StatusConflict:
					if d := checkErrorBody(t, r); d.Code != apitypes.CodeConflict {
						t.Errorf("409 with code %s", d.Code)
					}
					conflicts++
				default:
					t.Errorf("PATCH %s: %d %s", v, r.status, r.body)
				}
			}()
		}
		wg.Wait()
		var final apitypes.Key
		e.ok(t, http.MethodGet, keyPath("patch-me", ""), nil, http.StatusOK, &final)
		if len(won)+conflicts != n || final.Revision != cur.Revision+int64(len(won)) || won[final.Metadata["by"]] != final.Revision {
			t.Fatalf("%d landed, %d conflicts; revision %d → %d; stored %q (landed: %v)", len(won), conflicts, cur.Revision, final.Revision, final.Metadata["by"], won)
		}
	})
}

// TestAutomaticRotationHTTP: a key with a 2-second rotation period (the
// floor lowered) rotates by itself; its ciphertexts of every version
// decrypt until min_decrypt_version passes them (409 KEY_VERSION_DISABLED);
// "0s" stops the rotations. Each automatic rotation is audited as a
// rotation.
func TestAutomaticRotationHTTP(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := e.createKey(t, "auto-rot", apitypes.KeySpec{KeyType: "AES", KeySize: 256})
	pt := []byte("plaintext of version 1")
	var ct1 apitypes.EncryptResponse
	e.ok(t, http.MethodPost, keyPath("auto-rot", "/encrypt"), map[string]any{"plaintext": b64(pt)}, http.StatusOK, &ct1)
	var u apitypes.Key
	e.ok(t, http.MethodPatch, keyPath("auto-rot", ""), `{"rotation_period":"2s"}`, http.StatusOK, &u)
	if u.RotationPeriod != "2s" || u.NextRotationAt == nil || u.NextRotationAt.After(time.Now().Add(3*time.Second)) {
		t.Fatalf("PATCH rotation_period: %+v", u)
	}
	waitVersion := func(v int) apitypes.Key {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			var g apitypes.Key
			e.ok(t, http.MethodGet, keyPath("auto-rot", ""), nil, http.StatusOK, &g)
			if g.Version >= v {
				return g
			}
			if time.Now().After(deadline) {
				t.Fatalf("still at version %d 30s after asking for a 2s rotation", g.Version)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	g := waitVersion(2)
	if g.NextRotationAt == nil || len(g.Versions) != g.Version {
		t.Fatalf("after a rotation: %+v", g)
	}
	var ct2 apitypes.EncryptResponse
	e.ok(t, http.MethodPost, keyPath("auto-rot", "/encrypt"), map[string]any{"plaintext": b64(pt)}, http.StatusOK, &ct2)
	if ct2.KeyVersion < 2 {
		t.Fatalf("encrypt after the rotation used version %d", ct2.KeyVersion)
	}
	// Stop the rotations before judging versions. A PATCH that meets an
	// automatic rotation of the same revision is a 409, as any concurrent
	// change: the client reads again and retries.
	u = patchRetry(t, e, "auto-rot", `{"rotation_period":"0s"}`)
	if u.RotationPeriod != "" || u.NextRotationAt != nil {
		t.Fatalf("rotation off: %+v", u)
	}
	decrypt := func(ct apitypes.EncryptResponse) response {
		return e.send(t, http.MethodPost, keyPath("auto-rot", "/decrypt"), map[string]any{"ciphertext": b64(ct.Ciphertext)})
	}
	for _, ct := range []apitypes.EncryptResponse{ct1, ct2} {
		r := decrypt(ct)
		var d apitypes.DecryptResponse
		if r.status != http.StatusOK || json.Unmarshal(r.body, &d) != nil || !bytes.Equal(d.Plaintext, pt) || d.KeyVersion != ct.KeyVersion {
			t.Fatalf("decrypt of a version-%d ciphertext: %d %s", ct.KeyVersion, r.status, r.body)
		}
	}
	u = apitypes.Key{}
	e.ok(t, http.MethodPatch, keyPath("auto-rot", ""), fmt.Sprintf(`{"min_decrypt_version":%d}`, ct2.KeyVersion), http.StatusOK, &u)
	if u.MinDecryptVersion != ct2.KeyVersion {
		t.Fatalf("min_decrypt_version %d", u.MinDecryptVersion)
	}
	d := e.fails(t, http.MethodPost, keyPath("auto-rot", "/decrypt"), map[string]any{"ciphertext": b64(ct1.Ciphertext)}, http.StatusConflict, apitypes.CodeKeyVersionDisabled)
	if !strings.Contains(d.Message, "min_decrypt_version") {
		t.Fatalf("message %q", d.Message)
	}
	if r := decrypt(ct2); r.status != http.StatusOK {
		t.Fatalf("decrypt at the floor: %d %s", r.status, r.body)
	}
	time.Sleep(300 * time.Millisecond) // a rotation claimed before the PATCH completes
	settled := waitVersion(0).Version
	time.Sleep(2500 * time.Millisecond)
	if v := waitVersion(0).Version; v != settled {
		t.Fatalf("rotated with rotation off: version %d → %d", settled, v)
	}
	n := 0
	for _, r := range readAudit(t, e) {
		if r.Operation == "rotate" && r.KeyID == k.ID && r.Outcome == "success" {
			if r.Principal != "system:rotation" {
				t.Fatalf("automatic rotation audited as %q", r.Principal)
			}
			n++
		}
	}
	if n != settled-1 {
		t.Fatalf("%d rotate records for %d rotations", n, settled-1)
	}
}

// readAudit reads the audit log of e.
func readAudit(t *testing.T, e *env) []record {
	t.Helper()
	var out []record
	for _, line := range bytes.Split(bytes.TrimSpace(e.auditRaw(t)), []byte("\n")) {
		var r record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// TestNameLikeAnIDRefused: POST with a name in the form of a key id (the
// id of another key, or any UUID) is 400 and creates nothing.
func TestNameLikeAnIDRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := e.createKey(t, "first", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	for _, name := range []string{k.ID, uuid.NewString()} {
		d := e.fails(t, http.MethodPost, "/api/v1/keys", apitypes.CreateKeyRequest{Name: name, KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}},
			http.StatusBadRequest, apitypes.CodeInvalidInput)
		if !strings.Contains(d.Message, "form of a key id") {
			t.Fatalf("message %q", d.Message)
		}
	}
	if l := e.listKeys(t); len(l) != 1 {
		t.Fatalf("%d keys", len(l))
	}
}

// patchRetry sends a PATCH until it is not a 409 CONFLICT (an automatic
// rotation of the same revision won) and returns the key.
func patchRetry(t *testing.T, e *env, key, body string) apitypes.Key {
	t.Helper()
	for range 20 {
		r := e.send(t, http.MethodPatch, keyPath(key, ""), body)
		if r.status == http.StatusConflict {
			continue
		}
		var k apitypes.Key
		if r.status != http.StatusOK || json.Unmarshal(r.body, &k) != nil {
			t.Fatalf("PATCH %s: %d %s", body, r.status, r.body)
		}
		return k
	}
	t.Fatalf("PATCH %s: 20 conflicts in a row", body)
	return apitypes.Key{}
}
