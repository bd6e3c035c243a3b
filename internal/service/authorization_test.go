package service

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// roleOps are the operations of the role table, in an order that keeps
// the keys usable: destructive ones last.
var roleOps = []string{"get", "list", "public_key", "sign", "verify", "encrypt", "decrypt", "wrap", "unwrap",
	"deactivate", "activate", "rotate", "update", "create", "deletion_scheduled", "deletion_cancelled"}

// runOp performs one operation as ctx on the keys "ec", "aes" and "kek"
// (inputs in in) and returns its error and the key it touched.
func runOp(f *fixture, ctx context.Context, op string, in *cryptoOps) (string, error) {
	var err error
	key := "ec"
	switch op {
	case "get":
		_, err = f.svc.GetKey(ctx, "ec")
	case "list":
		key = ""
		_, err = f.svc.ListKeys(ctx, ListOptions{})
	case "public_key":
		_, err = f.svc.PublicKey(ctx, "ec", 0)
	case "sign":
		_, err = f.svc.Sign(ctx, SignRequest{Key: "ec", Data: []byte("d")})
	case "verify":
		_, err = f.svc.Verify(ctx, VerifyRequest{Key: "ec", Data: []byte("d"), Signature: in.sig})
	case "encrypt":
		key = "aes"
		_, err = f.svc.Encrypt(ctx, EncryptRequest{Key: "aes", Plaintext: []byte("p")})
	case "decrypt":
		key = "aes"
		_, err = f.svc.Decrypt(ctx, DecryptRequest{Key: "aes", Ciphertext: in.ct.Ciphertext, Nonce: in.ct.Nonce, Tag: in.ct.Tag})
	case "wrap":
		key = "kek"
		_, err = f.svc.Wrap(ctx, WrapRequest{Key: "kek", KeyMaterial: []byte("0123456789abcdef")})
	case "unwrap":
		key = "kek"
		_, err = f.svc.Unwrap(ctx, UnwrapRequest{Key: "kek", WrappedKey: in.wrapped})
	case "deactivate":
		_, err = f.svc.DeactivateKey(ctx, "ec")
	case "activate":
		_, err = f.svc.ActivateKey(ctx, "ec")
	case "rotate":
		_, err = f.svc.RotateKey(ctx, "ec")
	case "create":
		key = "" // refused before the request is read
		_, err = f.svc.CreateKey(ctx, CreateKeyRequest{Name: "new", Spec: specP256})
	case "update":
		_, err = f.svc.UpdateKey(ctx, UpdateKeyRequest{Key: "ec", Description: Set("by " + CallerFrom(ctx).Principal)})
	case "deletion_scheduled":
		_, err = f.svc.DeleteKey(ctx, DeleteKeyRequest{Key: "ec"})
	case "deletion_cancelled":
		_, err = f.svc.CancelDeletion(ctx, "ec")
	}
	return key, err
}

// TestRoles runs every operation as every role (and as no principal) and
// checks what is allowed, that a denial changes nothing, and that it is
// audited as denied.
func TestRoles(t *testing.T) {
	allowed := map[string][]string{
		"admin":    roleOps,
		"operator": {"get", "list", "public_key", "sign", "verify", "encrypt", "decrypt", "wrap", "unwrap"},
		"auditor":  {"get", "list", "public_key"},
		"none":     nil,
		"unknown":  nil,
	}
	principals := map[string]*auth.Principal{
		"admin": adminP, "operator": operatorP, "auditor": auditorP, "none": nil,
		"unknown": auth.NewPrincipal("mallory", auth.Role("root"), "", nil, nil),
	}
	for _, role := range []string{"admin", "operator", "auditor", "none", "unknown"} {
		t.Run(role, func(t *testing.T) {
			f := newFixture(t)
			for name, spec := range map[string]KeySpec{"ec": specP256, "aes": specAES256, "kek": specKEK} {
				f.create(name, spec)
			}
			var in cryptoOps
			in.prepare(t, f)
			p := principals[role]
			ctx := as(p)
			for _, op := range roleOps {
				mark := f.mark()
				before := f.storedKeys()
				key, err := runOp(f, ctx, op, &in)
				if slices.Contains(allowed[role], op) {
					if err != nil {
						t.Fatalf("%s may %s: %v", role, op, err)
					}
					continue
				}
				if !errorsIs(err, kgerr.ErrAuthorizationFailed) {
					t.Fatalf("%s %s: %v, want AUTHORIZATION_FAILED", role, op, err)
				}
				// Nothing changed.
				after := f.storedKeys()
				if len(after) != len(before) {
					t.Fatalf("%s %s: %d keys, %d before", role, op, len(after), len(before))
				}
				for i := range after {
					if after[i].ID != before[i].ID || after[i].Revision != before[i].Revision {
						t.Fatalf("%s %s changed key %s", role, op, after[i].Name)
					}
				}
				// One record, denied, naming the key (when it exists).
				recs := f.since(mark)
				if len(recs) != 1 {
					t.Fatalf("%s %s: %d audit records", role, op, len(recs))
				}
				want := audit.Event{Operation: op, Outcome: audit.OutcomeDenied, ErrorCode: string(kgerr.KindPermissionDenied), KeyName: key}
				if p != nil {
					want.Principal = p.Name
				}
				wantRecord(t, recs[0], want)
				if key != "" && recs[0].KeyID != f.stored(key).ID {
					t.Fatalf("%s %s: audited key id %q", role, op, recs[0].KeyID)
				}
			}
		})
	}
}

// TestScopes checks a scoped principal: keys in scope work, keys out of
// scope are 403 whether they exist or not, a missing key whose name is in
// scope is 404, and creates outside the scope are refused.
func TestScopes(t *testing.T) {
	f := newFixture(t, withProvider(openSoftware(t, "vault")))
	appKey := f.create("app-sign", specP256)
	other := f.create("other-sign", specP256)
	vaultKey, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: "app-vault", Provider: "vault", Spec: specP256})
	wantErr(t, err, nil)
	op := auth.NewPrincipal("scoped-op", auth.RoleOperator, "", []string{"app-*"}, []string{"software"})
	admin := auth.NewPrincipal("scoped-admin", auth.RoleAdmin, "", []string{"team-*"}, nil)
	ctx := as(op)
	data := []byte("d")
	cases := []struct {
		name string
		run  func() error
		want error
		key  *Key // the key the denial's audit record names
	}{
		{"ok sign in scope by name", func() error { _, err := f.svc.Sign(ctx, SignRequest{Key: "app-sign", Data: data}); return err }, nil, nil},
		{"ok sign in scope by id", func() error { _, err := f.svc.Sign(ctx, SignRequest{Key: appKey.ID, Data: data}); return err }, nil, nil},
		{"ok get in scope", func() error { _, err := f.svc.GetKey(ctx, "app-sign"); return err }, nil, nil},
		{"fail sign out of scope by name", func() error { _, err := f.svc.Sign(ctx, SignRequest{Key: "other-sign", Data: data}); return err }, kgerr.ErrAuthorizationFailed, other},
		{"fail sign out of scope by id", func() error { _, err := f.svc.Sign(ctx, SignRequest{Key: other.ID, Data: data}); return err }, kgerr.ErrAuthorizationFailed, other},
		{"fail get out of scope", func() error { _, err := f.svc.GetKey(ctx, "other-sign"); return err }, kgerr.ErrAuthorizationFailed, other},
		{"fail public key out of scope", func() error { _, err := f.svc.PublicKey(ctx, "other-sign", 0); return err }, kgerr.ErrAuthorizationFailed, other},
		{"fail sign on a provider out of scope", func() error { _, err := f.svc.Sign(ctx, SignRequest{Key: "app-vault", Data: data}); return err }, kgerr.ErrAuthorizationFailed, vaultKey},
		{"fail missing key whose name is out of scope", func() error { _, err := f.svc.Sign(ctx, SignRequest{Key: "other-missing", Data: data}); return err }, kgerr.ErrAuthorizationFailed, nil},
		{"fail missing id (out of scope as a name)", func() error {
			_, err := f.svc.Sign(ctx, SignRequest{Key: "01900000-0000-7000-8000-000000000000", Data: data})
			return err
		}, kgerr.ErrAuthorizationFailed, nil},
		// op is scoped by provider too: a 404 would tell it the name is
		// free on every provider (TestScopedPrincipalExistenceOracle).
		{"fail missing key whose name is in scope", func() error { _, err := f.svc.Sign(ctx, SignRequest{Key: "app-missing", Data: data}); return err }, kgerr.ErrAuthorizationFailed, nil},
		{"fail get missing key whose name is in scope", func() error { _, err := f.svc.GetKey(ctx, "app-missing"); return err }, kgerr.ErrAuthorizationFailed, nil},
		{"fail scoped admin creates out of scope", func() error {
			_, err := f.svc.CreateKey(as(admin), CreateKeyRequest{Name: "app-new", Spec: specP256})
			return err
		}, kgerr.ErrAuthorizationFailed, nil},
		{"ok scoped admin creates in scope", func() error {
			_, err := f.svc.CreateKey(as(admin), CreateKeyRequest{Name: "team-new", Spec: specP256})
			return err
		}, nil, nil},
		{"fail scoped admin deletes out of scope", func() error {
			_, err := f.svc.DeleteKey(as(admin), DeleteKeyRequest{Key: "app-sign"})
			return err
		}, kgerr.ErrAuthorizationFailed, appKey},
		{"fail scoped admin updates out of scope", func() error {
			_, err := f.svc.UpdateKey(as(admin), UpdateKeyRequest{Key: "app-sign", Description: Set("x")})
			return err
		}, kgerr.ErrAuthorizationFailed, appKey},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mark, before := f.mark(), len(f.storedKeys())
			err := c.run()
			wantErr(t, err, c.want)
			recs := f.since(mark)
			if c.want == kgerr.ErrAuthorizationFailed {
				if len(recs) != 1 || recs[0].Outcome != audit.OutcomeDenied || recs[0].ErrorCode != string(kgerr.KindPermissionDenied) {
					t.Fatalf("audit records %+v", recs)
				}
				if c.key != nil && (recs[0].KeyID != c.key.ID || recs[0].KeyName != c.key.Name) {
					t.Fatalf("denial audited for %q %q, want %s", recs[0].KeyID, recs[0].KeyName, c.key.Name)
				}
				if n := len(f.storedKeys()); n != before {
					t.Fatalf("%d keys after a denial, %d before", n, before)
				}
			}
		})
	}
	if _, err := f.store.GetKey(context.Background(), "app-new"); !errorsIs(err, kgerr.ErrKeyNotFound) {
		t.Fatalf("a refused create stored app-new: %v", err)
	}
	if r := f.records(); !slices.ContainsFunc(r, func(e audit.Event) bool {
		return e.Operation == "create" && e.KeyName == "app-new" && e.Outcome == audit.OutcomeDenied && e.Provider == "software"
	}) {
		t.Fatal("the refused create is not audited with its name and provider")
	}
}

// TestScopedListing lists as a scoped principal through ListKeys, with
// small store batches: every key in scope once, in order, in full pages.
func TestScopedListing(t *testing.T) {
	vault := openSoftware(t, "vault")
	f := newFixture(t, withProvider(vault))
	var want []string
	for i := range 14 {
		name, prov := fmt.Sprintf("out-%02d", i), "software"
		switch i % 3 {
		case 0:
			name = fmt.Sprintf("in-%02d", i)
		case 1:
			if i%2 == 1 {
				name, prov = fmt.Sprintf("in-%02d", i), "vault"
			}
		}
		if _, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: name, Provider: prov, Spec: specEd25519}); err != nil {
			t.Fatal(err)
		}
		if prov == "software" && name[:3] == "in-" {
			want = append(want, name)
		}
	}
	if _, err := f.svc.DeactivateKey(f.admin(), want[1]); err != nil {
		t.Fatal(err)
	}
	p := auth.NewPrincipal("lister", auth.RoleAuditor, "", []string{"in-*"}, []string{"software"})
	ctx := as(p)
	defer func(old int) { listBatchMin = old }(listBatchMin)
	for _, batch := range []int{1, 2, 5, 100} {
		listBatchMin = batch
		for _, limit := range []int{0, 1, 2, 3, len(want)} {
			t.Run(fmt.Sprintf("batch %d limit %d", batch, limit), func(t *testing.T) {
				var got []string
				token := ""
				for pages := 0; ; pages++ {
					l, err := f.svc.ListKeys(ctx, ListOptions{Limit: limit, PageToken: token})
					wantErr(t, err, nil)
					if (limit > 0 && len(l.Keys) > limit) || (l.NextPageToken != "" && len(l.Keys) != limit) || pages > len(want) {
						t.Fatalf("page of %d keys, next %q", len(l.Keys), l.NextPageToken)
					}
					for _, k := range l.Keys {
						got = append(got, k.Name)
					}
					if token = l.NextPageToken; token == "" {
						break
					}
				}
				if !slices.Equal(got, want) {
					t.Fatalf("got %v, want %v", got, want)
				}
			})
		}
	}
	t.Run("state filter", func(t *testing.T) {
		l, err := f.svc.ListKeys(ctx, ListOptions{State: string(store.StateInactive)})
		wantErr(t, err, nil)
		if len(l.Keys) != 1 || l.Keys[0].Name != want[1] {
			t.Fatalf("inactive in scope: %+v", l.Keys)
		}
	})
	for _, c := range []struct {
		name  string
		limit int
	}{{"fail negative limit", -1}, {"fail limit too large", store.MaxPageSize + 1}} {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.svc.ListKeys(ctx, ListOptions{Limit: c.limit})
			wantErr(t, err, kgerr.ErrInvalidInput)
		})
	}
	t.Run("fail bad page token", func(t *testing.T) {
		_, err := f.svc.ListKeys(ctx, ListOptions{PageToken: "%%"})
		wantErr(t, err, kgerr.ErrInvalidInput)
	})
	t.Run("denied list is audited", func(t *testing.T) {
		_, err := f.svc.ListKeys(as(nil), ListOptions{})
		wantErr(t, err, kgerr.ErrAuthorizationFailed)
		wantRecord(t, f.last(), audit.Event{Operation: "list", Outcome: audit.OutcomeDenied, ErrorCode: string(kgerr.KindPermissionDenied)})
	})
}

// TestAuthenticationFailed checks the audit record of a refused
// credential: denied, with the caller's address and a clipped detail.
func TestAuthenticationFailed(t *testing.T) {
	f := newFixture(t)
	ctx := WithCaller(context.Background(), Caller{RequestID: "r-1", ClientAddr: "198.51.100.9"})
	long := make([]byte, 300)
	for i := range long {
		long[i] = 'x'
	}
	f.svc.AuthenticationFailed(ctx, string(long))
	r := f.last()
	wantRecord(t, r, audit.Event{Operation: "authenticate", Outcome: audit.OutcomeDenied, ErrorCode: string(kgerr.KindUnauthenticated), RequestID: "r-1"})
	if r.ClientAddr != "198.51.100.9" || len(r.Detail) > 210 || r.Time.IsZero() {
		t.Fatalf("record %+v", r)
	}
}
