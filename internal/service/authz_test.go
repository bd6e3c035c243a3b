package service

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// TestListScopedPages checks scoped listing against the plain filter for
// many page sizes and store batch sizes: every key in scope once, in order,
// no key outside it, every page full but the last.
func TestListScopedPages(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	var want []string
	p := auth.NewPrincipal("op", auth.RoleOperator, "", []string{"in-*"}, []string{"software"})
	base := time.Now().UTC()
	for i := range 24 {
		name, prov := fmt.Sprintf("out-%02d", i), "software"
		switch rng.IntN(4) {
		case 0:
			name = fmt.Sprintf("in-%02d", i)
		case 1:
			name, prov = fmt.Sprintf("in-%02d", i), "hsm"
		}
		k := &store.Key{ID: fmt.Sprintf("01900000-0000-7000-8000-%012d", i), Name: name, Provider: prov, KeyType: "EC", KeySize: 256, Curve: "P-256",
			Algorithm: "ES256", Usage: []string{"sign"}, State: store.StateActive, CreatedAt: base, UpdatedAt: base,
			Versions: []store.Version{{Version: 1, ObjectID: fmt.Sprintf("o%03d", i), State: store.StateActive, CreatedAt: base}}}
		if err := st.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		if p.InScope(name, prov) {
			want = append(want, name)
		}
	}
	s := &Service{store: st}
	defer func(old int) { listBatchMin = old }(listBatchMin)
	for _, batch := range []int{1, 2, 3, 7, 100} {
		listBatchMin = batch
		for _, limit := range []int{1, 2, 3, 5, 8, len(want) - 1, len(want), len(want) + 1} {
			var got []string
			token := ""
			for pages := 0; ; pages++ {
				keys, next, err := s.listScoped(ctx, p, store.ListOptions{Limit: limit, PageToken: token})
				if err != nil {
					t.Fatal(err)
				}
				if len(keys) > limit || (next != "" && len(keys) != limit) || pages > len(want)+2 {
					t.Fatalf("batch %d limit %d: page of %d keys, next %q", batch, limit, len(keys), next)
				}
				for _, k := range keys {
					got = append(got, k.Name)
				}
				if token = next; token == "" {
					break
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("batch %d limit %d: got %v, want %v", batch, limit, got, want)
			}
		}
	}
}

// The attack: a principal scoped to one provider probes for key names on
// the others. Whether a name is free or taken on a provider outside its
// scope, every read, use and change answers the same (403, the same
// message); a create of a name taken there is 403 too, not 409.
func TestScopedPrincipalExistenceOracle(t *testing.T) {
	f := newFixture(t, withProvider(openSoftware(t, "vault")))
	if _, err := f.svc.CreateKey(f.admin(), CreateKeyRequest{Name: "elsewhere", Provider: "vault", Spec: specP256}); err != nil {
		t.Fatal(err)
	}
	f.create("mine", specP256)
	op := auth.NewPrincipal("soft-admin", auth.RoleAdmin, "", nil, []string{"software"})
	ctx := as(op)
	probes := map[string]func(ref string) error{
		"get": func(ref string) error { _, err := f.svc.GetKey(ctx, ref); return err },
		"sign": func(ref string) error {
			_, err := f.svc.Sign(ctx, SignRequest{Key: ref, Data: []byte("d")})
			return err
		},
		"public key": func(ref string) error { _, err := f.svc.PublicKey(ctx, ref, 0); return err },
		"deactivate": func(ref string) error { _, err := f.svc.DeactivateKey(ctx, ref); return err },
		"rotate":     func(ref string) error { _, err := f.svc.RotateKey(ctx, ref); return err },
		"delete": func(ref string) error {
			_, err := f.svc.DeleteKey(ctx, DeleteKeyRequest{Key: ref})
			return err
		},
		"update": func(ref string) error {
			_, err := f.svc.UpdateKey(ctx, UpdateKeyRequest{Key: ref, Description: Set("x")})
			return err
		},
		"cancel deletion": func(ref string) error { _, err := f.svc.CancelDeletion(ctx, ref); return err },
	}
	for name, probe := range probes {
		t.Run(name, func(t *testing.T) {
			taken, free := probe("elsewhere"), probe("never-made")
			wantErr(t, taken, kgerr.ErrAuthorizationFailed)
			wantErr(t, free, kgerr.ErrAuthorizationFailed)
			if taken.Error() != free.Error() {
				t.Fatalf("answers differ: %q vs %q", taken, free)
			}
		})
	}
	_, err := f.svc.CreateKey(ctx, CreateKeyRequest{Name: "elsewhere", Spec: specP256})
	wantErr(t, err, kgerr.ErrAuthorizationFailed)
	_, err = f.svc.CreateKey(ctx, CreateKeyRequest{Name: "mine", Spec: specP256})
	wantErr(t, err, kgerr.ErrKeyAlreadyExists) // in its scope: it may know
	if k := f.stored("elsewhere"); k.Provider != "vault" || k.State != store.StateActive {
		t.Fatalf("the probed key changed: %+v", k)
	}
	// A principal scoped by name only still gets 404 for a free name in
	// its scope.
	named := auth.NewPrincipal("named-op", auth.RoleOperator, "", []string{"mine*"}, nil)
	_, err = f.svc.GetKey(as(named), "mine-missing")
	wantErr(t, err, kgerr.ErrKeyNotFound)
}
