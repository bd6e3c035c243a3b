package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

func loadConfig(t *testing.T, yaml string) *config.Config {
	t.Helper()
	cfg, err := config.Load(testbed.WriteConfig(t, yaml), config.Flags{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// storage.driver postgres with dsn_env naming an unset variable stops the
// server with an error naming the field.
func TestPostgresWithoutDSNNamesTheField(t *testing.T) {
	t.Setenv("KEYGRID_TEST_PG_DSN_UNSET", "")
	cfg := loadConfig(t, "providers: {software: {}}\nstorage: {driver: postgres, dsn_env: KEYGRID_TEST_PG_DSN_UNSET}\n")
	srv, err := server.New(context.Background(), cfg, provider.Registry{"software": software.New}, slog.New(slog.DiscardHandler), "test")
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Field != "storage.dsn_env" {
		if srv != nil {
			srv.Close()
		}
		t.Fatalf("server.New = %v, want a config error naming storage.dsn_env", err)
	}
}

// With migrate_on_start false the server refuses a schema that is not
// current, and starts once it is.
func TestMigrateOnStartFalse(t *testing.T) {
	t.Setenv("KEYGRID_TEST_MASTER_KEY", strings.Repeat("5a", 32))
	cfg := loadConfig(t, "providers: {software: {config: {master_key_env: KEYGRID_TEST_MASTER_KEY}}}\nstorage: {migrate_on_start: false}\n")
	reg := provider.Registry{"software": software.New}
	_, err := server.New(context.Background(), cfg, reg, slog.New(slog.DiscardHandler), "test")
	if !errors.Is(err, store.ErrSchemaOutdated) {
		t.Fatalf("server.New on an unmigrated database: %v, want ErrSchemaOutdated", err)
	}
	st, err := server.OpenStore(context.Background(), cfg, true) // what `keygrid-hsm migrate` does
	if err != nil {
		t.Fatal(err)
	}
	latest := st.(store.Migrator).LatestSchemaVersion()
	st.Close()
	var logs testbed.LogBuffer
	srv, err := server.New(context.Background(), cfg, reg, testbed.TextLogger(&logs), "test")
	if err != nil {
		t.Fatalf("server.New after migrate: %v", err)
	}
	srv.Close()
	if !bytes.Contains(logs.Bytes(), fmt.Appendf(nil, "schema_version=%d", latest)) {
		t.Fatalf("start-up log does not give the schema version:\n%s", logs.String())
	}
}
