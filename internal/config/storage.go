package config

import (
	"fmt"
	"regexp"
)

var envVarName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// validate checks the storage block. The DSN itself is only resolved (and
// its environment variable read) when the store is opened: see DSNFrom.
func (s *Storage) validate() error {
	switch s.Driver {
	case "sqlite":
	case "postgres":
		switch {
		case s.DSN == "" && s.DSNEnv == "":
			return &Error{"storage.dsn", "postgres needs dsn or dsn_env"}
		case s.DSN != "" && s.DSNEnv != "":
			return &Error{"storage.dsn_env", "set dsn or dsn_env, not both"}
		case s.DSNEnv != "" && !envVarName.MatchString(s.DSNEnv):
			return &Error{"storage.dsn_env", fmt.Sprintf("%q is not an environment variable name", s.DSNEnv)}
		}
	default:
		return &Error{"storage.driver", fmt.Sprintf("%q is not sqlite or postgres", s.Driver)}
	}
	if s.MaxConns < 0 {
		return &Error{"storage.max_conns", "must not be negative"}
	}
	return nil
}

// MigrateOnStartEnabled reports whether the server migrates the schema at
// start (default true).
func (s *Storage) MigrateOnStartEnabled() bool { return s.MigrateOnStart == nil || *s.MigrateOnStart }

// DSNFrom returns the PostgreSQL DSN: storage.dsn, or the value of the
// environment variable storage.dsn_env names (read with lookup). An empty
// result is an error naming the field that should have supplied it; the
// error never holds the DSN.
func (s *Storage) DSNFrom(lookup func(string) (string, bool)) (string, error) {
	if s.DSN != "" {
		return s.DSN, nil
	}
	if s.DSNEnv == "" {
		return "", &Error{"storage.dsn", "postgres needs dsn or dsn_env"}
	}
	if v, ok := lookup(s.DSNEnv); ok && v != "" {
		return v, nil
	}
	return "", &Error{"storage.dsn_env", fmt.Sprintf("environment variable %s is unset or empty", s.DSNEnv)}
}
