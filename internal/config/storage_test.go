package config

import (
	"errors"
	"testing"
)

func TestStorageValidation(t *testing.T) {
	cases := []struct {
		name      string
		yaml      string
		wantField string // "" = valid
	}{
		{"ok sqlite default", "providers: {software: {}}\n", ""},
		{"ok postgres dsn", "providers: {software: {}}\nstorage: {driver: postgres, dsn: 'postgres://kg@db/kg'}\n", ""},
		{"ok postgres dsn_env", "providers: {software: {}}\nstorage: {driver: postgres, dsn_env: KG_DSN, max_conns: 8, migrate_on_start: false}\n", ""},
		{"fail postgres without dsn", "providers: {software: {}}\nstorage: {driver: postgres}\n", "storage.dsn"},
		{"fail both dsn and dsn_env", "providers: {software: {}}\nstorage: {driver: postgres, dsn: x, dsn_env: KG_DSN}\n", "storage.dsn_env"},
		{"fail dsn_env not a name", "providers: {software: {}}\nstorage: {driver: postgres, dsn_env: 'postgres://x'}\n", "storage.dsn_env"},
		{"fail negative max_conns", "providers: {software: {}}\nstorage: {driver: postgres, dsn: x, max_conns: -1}\n", "storage.max_conns"},
		{"fail unknown driver", "providers: {software: {}}\nstorage: {driver: mysql}\n", "storage.driver"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Load(write(t, c.yaml), Flags{})
			if err != nil {
				t.Fatal(err)
			}
			err = cfg.Validate([]string{"software"})
			var ce *Error
			switch {
			case c.wantField == "" && err != nil:
				t.Fatalf("valid configuration refused: %v", err)
			case c.wantField != "" && (!errors.As(err, &ce) || ce.Field != c.wantField):
				t.Fatalf("got %v, want an error naming %s", err, c.wantField)
			}
		})
	}
}

func TestStorageMigrateOnStartDefaultsAndEnv(t *testing.T) {
	cfg, err := Load(write(t, "providers: {software: {}}\n"), Flags{})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Storage.MigrateOnStartEnabled() {
		t.Fatal("migrate_on_start must default to true")
	}
	t.Setenv("KEYGRID_STORAGE_MIGRATE_ON_START", "false")
	t.Setenv("KEYGRID_STORAGE_MAX_CONNS", "4")
	cfg, err = Load(write(t, "providers: {software: {}}\n"), Flags{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Storage.MigrateOnStartEnabled() || cfg.Storage.MaxConns != 4 {
		t.Fatalf("environment overrides not applied: %+v", cfg.Storage)
	}
}

func TestStorageDSNFrom(t *testing.T) {
	env := map[string]string{"KG_DSN": "postgres://kg:pw@db/kg", "KG_EMPTY": ""}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cases := []struct {
		name      string
		s         Storage
		want      string
		wantField string
	}{
		{"ok dsn", Storage{DSN: "postgres://a@b/c"}, "postgres://a@b/c", ""},
		{"ok dsn_env", Storage{DSNEnv: "KG_DSN"}, "postgres://kg:pw@db/kg", ""},
		{"fail unset variable", Storage{DSNEnv: "KG_NOPE"}, "", "storage.dsn_env"},
		{"fail empty variable", Storage{DSNEnv: "KG_EMPTY"}, "", "storage.dsn_env"},
		{"fail neither", Storage{}, "", "storage.dsn"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.s.DSNFrom(lookup)
			var ce *Error
			if c.wantField != "" {
				if !errors.As(err, &ce) || ce.Field != c.wantField {
					t.Fatalf("got %q, %v; want an error naming %s", got, err, c.wantField)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}
