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
		k := &store.Key{ID: fmt.Sprintf("k%03d", i), Name: name, Provider: prov, KeyType: "EC", KeySize: 256, Curve: "P-256",
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
