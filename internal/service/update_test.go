package service

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// TestUpdateKey changes each field, alone and together, reads each change
// back, clears what can be cleared, and audits each update.
func TestUpdateKey(t *testing.T) {
	f := newFixture(t)
	k := f.create("upd", specAES256)
	exp := f.clock.Now().Add(48 * time.Hour)
	u, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "upd",
		Metadata: Set(map[string]string{"team": "payments"}), Description: Set("the payments key"),
		ExpiresAt: Set(&exp), RotationPeriod: Set(90 * 24 * time.Hour)})
	wantErr(t, err, nil)
	if u.Metadata["team"] != "payments" || u.Description != "the payments key" || u.ExpiresAt == nil || !u.ExpiresAt.Equal(exp) ||
		u.RotationPeriod != 90*24*time.Hour || u.NextRotationAt == nil || !u.NextRotationAt.Equal(f.clock.Now().Add(90*24*time.Hour)) ||
		u.Revision != k.Revision+1 {
		t.Fatalf("updated %+v", u)
	}
	wantRecord(t, f.last(), audit.Event{Operation: "update", Outcome: audit.OutcomeSuccess, KeyID: k.ID, Principal: adminP.Name})
	if g, _ := f.svc.GetKey(f.admin(), k.ID); g.Description != u.Description || g.Revision != u.Revision || g.RotationPeriod != u.RotationPeriod {
		t.Fatalf("read back %+v", g)
	}
	// One field at a time leaves the others.
	u2, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: k.ID, Description: Set("renamed team")})
	wantErr(t, err, nil)
	if u2.Description != "renamed team" || u2.Metadata["team"] != "payments" || u2.RotationPeriod != u.RotationPeriod || !u2.ExpiresAt.Equal(exp) {
		t.Fatalf("a description update changed other fields: %+v", u2)
	}
	// Clear: metadata replaced by {}, no expiry, rotation off.
	u3, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: k.ID, Metadata: Set(map[string]string{}),
		ExpiresAt: Set[*time.Time](nil), RotationPeriod: Set(time.Duration(0))})
	wantErr(t, err, nil)
	if len(u3.Metadata) != 0 || u3.ExpiresAt != nil || u3.RotationPeriod != 0 || u3.NextRotationAt != nil || u3.Description != "renamed team" {
		t.Fatalf("cleared %+v", u3)
	}
	// The key type, usage and material are what they were.
	if s := f.stored(k.ID); s.KeyType != "AES" || s.KeySize != 256 || len(s.Versions) != 1 || strings.Join(s.Usage, ",") != "encrypt,decrypt" {
		t.Fatalf("an update changed the key itself: %+v", s)
	}
}

// TestUpdateKeyRefusals: each bad field is a 400 naming it, a stale
// revision a 409, and none changes anything.
func TestUpdateKeyRefusals(t *testing.T) {
	f := newFixture(t)
	k := f.create("guarded", specP256)
	past := f.clock.Now().Add(-time.Second)
	big := map[string]string{}
	for i := range maxMetadataEntries + 1 {
		big[fmt.Sprint(i)] = "v"
	}
	cases := []struct {
		name string
		req  UpdateKeyRequest
		want error
		says string
	}{
		{"fail nothing to update", UpdateKeyRequest{}, kgerr.ErrInvalidInput, "nothing to update"},
		{"fail too much metadata", UpdateKeyRequest{Metadata: Set(big)}, kgerr.ErrInvalidInput, "metadata"},
		{"fail description too long", UpdateKeyRequest{Description: Set(strings.Repeat("d", maxDescription+1))}, kgerr.ErrInvalidInput, "description"},
		{"fail description not UTF-8", UpdateKeyRequest{Description: Set("\xff")}, kgerr.ErrInvalidInput, "description"},
		{"fail expiry in the past", UpdateKeyRequest{ExpiresAt: Set(&past)}, kgerr.ErrInvalidInput, "expires_at"},
		{"fail rotation below the floor", UpdateKeyRequest{RotationPeriod: Set(59 * time.Minute)}, kgerr.ErrInvalidInput, "rotation_period"},
		{"fail rotation above ten years", UpdateKeyRequest{RotationPeriod: Set(MaxRotationPeriod + time.Hour)}, kgerr.ErrInvalidInput, "rotation_period"},
		{"fail negative rotation", UpdateKeyRequest{RotationPeriod: Set(-time.Hour)}, kgerr.ErrInvalidInput, "rotation_period"},
		{"fail min_decrypt_version past the current version", UpdateKeyRequest{MinDecryptVersion: Set(2)}, kgerr.ErrInvalidInput, "min_decrypt_version"},
		{"fail negative min_decrypt_version", UpdateKeyRequest{MinDecryptVersion: Set(-1)}, kgerr.ErrInvalidInput, "min_decrypt_version"},
		{"fail stale revision", UpdateKeyRequest{Revision: k.Revision + 7, Description: Set("x")}, kgerr.ErrConflict, "revision"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.req.Key = "guarded"
			_, err := f.svc.UpdateKey(f.admin(), c.req)
			wantErr(t, err, c.want)
			if !strings.Contains(kgerr.Classify(err).Message, c.says) {
				t.Fatalf("message %q does not name %s", kgerr.Classify(err).Message, c.says)
			}
			if s := f.stored(k.ID); s.Revision != k.Revision {
				t.Fatalf("a refused update changed the key (revision %d → %d)", k.Revision, s.Revision)
			}
		})
	}
	t.Run("ok with the revision read", func(t *testing.T) {
		u, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "guarded", Revision: k.Revision, Description: Set("x")})
		wantErr(t, err, nil)
		if u.Revision != k.Revision+1 {
			t.Fatalf("revision %d", u.Revision)
		}
	})
	t.Run("fail operator", func(t *testing.T) {
		_, err := f.svc.UpdateKey(as(operatorP), UpdateKeyRequest{Key: "guarded", Description: Set("y")})
		wantErr(t, err, kgerr.ErrAuthorizationFailed)
	})
	t.Run("fail key being created", func(t *testing.T) {
		p, _ := f.pending("still-pending", algSpec(t, specP256), false, 0)
		_, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: p.ID, Description: Set("y")})
		wantErr(t, err, kgerr.ErrConflict)
	})
}

// TestUpdateKeyConcurrent: many updates of one key at once, each from the
// revision it read. Every one either lands (200) or is refused as a
// conflict (409); none is lost: the revision grew by the number that
// landed, and the stored value is one that landed.
func TestUpdateKeyConcurrent(t *testing.T) {
	f := newFixture(t)
	k := f.create("contended", specP256)
	const n = 16
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		won      = map[string]int64{}
		conflict int
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := fmt.Sprintf("writer-%d", i)
			u, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "contended", Metadata: Set(map[string]string{"by": v})})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won[v] = u.Revision
			case errorsIs(err, kgerr.ErrConflict):
				conflict++
			default:
				t.Errorf("%s: %v", v, err)
			}
		}()
	}
	wg.Wait()
	s := f.stored(k.ID)
	if len(won)+conflict != n || s.Revision != k.Revision+int64(len(won)) {
		t.Fatalf("%d landed, %d conflicts; revision %d → %d", len(won), conflict, k.Revision, s.Revision)
	}
	rev, ok := won[s.Metadata["by"]]
	if !ok || rev != s.Revision {
		t.Fatalf("stored %q at revision %d is not the last update that landed (%v)", s.Metadata["by"], s.Revision, won)
	}
}

// TestNamesThatLookLikeIDs: a name in the form of a key id — another key's
// id, any UUID, with or without dashes, in any case — is refused, so that
// a reference never means two keys.
func TestNamesThatLookLikeIDs(t *testing.T) {
	f := newFixture(t)
	k := f.create("plain", specP256)
	random := uuid.New().String()
	for _, name := range []string{k.ID, random, strings.ToUpper(random), strings.ReplaceAll(random, "-", "")} {
		_, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: name, Spec: specP256})
		wantErr(t, err, kgerr.ErrInvalidInput)
		if !strings.Contains(kgerr.Classify(err).Message, "form of a key id") {
			t.Fatalf("%s: message %q", name, kgerr.Classify(err).Message)
		}
	}
	if n := len(f.storedKeys()); n != 1 {
		t.Fatalf("%d keys stored", n)
	}
	// Names near the form are fine.
	for _, name := range []string{random[:35], random + "-x", "key-" + random[:8]} {
		f.create(name, specP256)
	}
}

// TestListOffset pages with offset (the original API's) as with page
// tokens, for unscoped and scoped principals.
func TestListOffset(t *testing.T) {
	f := newFixture(t)
	var names []string
	for i := range 7 {
		names = append(names, f.create(fmt.Sprintf("off-%d", i), specP256).Name)
	}
	for _, c := range []struct {
		offset, limit int
		want          []string
	}{
		{0, 3, names[:3]}, {2, 3, names[2:5]}, {5, 10, names[5:]}, {6, 1, names[6:]}, {7, 3, nil}, {100, 3, nil},
	} {
		l, err := f.svc.ListKeys(as(auditorP), ListOptions{Offset: c.offset, Limit: c.limit})
		wantErr(t, err, nil)
		var got []string
		for _, k := range l.Keys {
			got = append(got, k.Name)
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Fatalf("offset %d limit %d: %v, want %v", c.offset, c.limit, got, c.want)
		}
	}
	scoped := auth.NewPrincipal("scoped", auth.RoleAuditor, "", []string{"off-[1357]"}, nil)
	l, err := f.svc.ListKeys(as(scoped), ListOptions{Offset: 1, Limit: 2})
	wantErr(t, err, nil)
	if len(l.Keys) != 2 || l.Keys[0].Name != "off-3" || l.Keys[1].Name != "off-5" {
		t.Fatalf("scoped offset 1 limit 2: %+v", l.Keys)
	}
	_, err = f.svc.ListKeys(as(auditorP), ListOptions{Offset: -1})
	wantErr(t, err, kgerr.ErrInvalidInput)
	l, _ = f.svc.ListKeys(as(auditorP), ListOptions{Limit: 2})
	_, err = f.svc.ListKeys(as(auditorP), ListOptions{Offset: 1, PageToken: l.NextPageToken})
	wantErr(t, err, kgerr.ErrInvalidInput)
}

// TestUpdatePublishJWKS: PATCH puts a key in the published JWKS and takes
// it out; an AES key has nothing to publish.
func TestUpdatePublishJWKS(t *testing.T) {
	f := newFixture(t)
	ec := f.create("pub-ec", specP256)
	f.create("pub-aes", specAES256)
	u, err := f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "pub-ec", PublishJWKS: Set(true)})
	wantErr(t, err, nil)
	if !u.PublishJWKS || !f.stored(ec.ID).PublishJWKS {
		t.Fatalf("publish_jwks not set: %+v", u)
	}
	u, err = f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "pub-ec", PublishJWKS: Set(false)})
	wantErr(t, err, nil)
	if u.PublishJWKS || f.stored(ec.ID).PublishJWKS {
		t.Fatalf("publish_jwks not cleared: %+v", u)
	}
	rev := f.stored("pub-aes").Revision
	_, err = f.svc.UpdateKey(f.admin(), UpdateKeyRequest{Key: "pub-aes", PublishJWKS: Set(true)})
	wantErr(t, err, kgerr.ErrInvalidInput)
	if f.stored("pub-aes").Revision != rev {
		t.Fatal("a refused update changed the key")
	}
}
