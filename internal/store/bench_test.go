package store_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/store/storetest"
)

// BenchmarkGetKeySQLite is the metadata lookup every key operation makes.
//
//	go test -run '^$' -bench GetKeySQLite ./internal/store/
func BenchmarkGetKeySQLite(b *testing.B) {
	ctx := context.Background()
	s, err := store.OpenSQLite(ctx, filepath.Join(b.TempDir(), "meta.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < 100; i++ {
		if err := s.CreateKey(ctx, storetest.NewKey("k"+string(rune('a'+i%26))+string(rune('a'+i/26)), "software")); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.GetKey(ctx, "kaa"); err != nil {
			b.Fatal(err)
		}
	}
}
