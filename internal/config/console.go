package config

import (
	"time"

	"github.com/keygrid/keygrid-hsm/internal/duration"
)

// Console configures the operator console served at /ui/ on the main
// listener.
type Console struct {
	// Enabled serves the console. Unset: on when server.listen is a
	// loopback address, off otherwise (KEYGRID_CONSOLE_ENABLED overrides).
	Enabled *bool `yaml:"enabled"`
	// SessionTTL is the longest a console session lives after sign-in
	// (default 8h); IdleTimeout ends a session unused that long (default
	// 30m).
	SessionTTL  duration.Duration `yaml:"session_ttl"`
	IdleTimeout duration.Duration `yaml:"idle_timeout"`
}

// ConsoleEnabled reports whether the console is served: as configured, or
// by default only on a loopback listener.
func (c *Config) ConsoleEnabled() bool {
	if c.Console.Enabled != nil {
		return *c.Console.Enabled
	}
	return IsLoopback(c.Server.Listen)
}

// consoleDefaults sets the console's session lifetimes.
func (c *Console) defaults() {
	if c.SessionTTL == 0 {
		c.SessionTTL = duration.Duration(8 * time.Hour)
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = duration.Duration(30 * time.Minute)
	}
}

func (c Console) validate() error {
	switch {
	case c.SessionTTL < 0 || c.SessionTTL.D() > 7*24*time.Hour:
		return &Error{"console.session_ttl", "must be between 0 (the default, 8h) and 168h"}
	case c.IdleTimeout < 0 || c.IdleTimeout > c.SessionTTL:
		return &Error{"console.idle_timeout", "must be between 0 (the default, 30m) and console.session_ttl"}
	}
	return nil
}
