package config

import (
	"os"
	"testing"
)

func TestConsoleEnabledDefaultsToLoopback(t *testing.T) {
	for _, tc := range []struct {
		name, listen, env string
		want              bool
	}{
		{"loopback default on", "127.0.0.1:8080", "", true},
		{"any address default off", "0.0.0.0:8443", "", false},
		{"env turns it on", "0.0.0.0:8443", "true", true},
		{"env turns it off", "127.0.0.1:8080", "false", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KEYGRID_CONSOLE_ENABLED", tc.env)
			if tc.env == "" {
				os.Unsetenv("KEYGRID_CONSOLE_ENABLED")
			}
			c, err := Load("", Flags{Listen: tc.listen, DataDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			if got := c.ConsoleEnabled(); got != tc.want {
				t.Errorf("ConsoleEnabled = %v, want %v", got, tc.want)
			}
			if c.Console.SessionTTL.D().Hours() != 8 || c.Console.IdleTimeout.D().Minutes() != 30 {
				t.Errorf("session defaults %v %v", c.Console.SessionTTL.D(), c.Console.IdleTimeout.D())
			}
		})
	}
}
