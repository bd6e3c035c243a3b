// Package duration is the one duration type of the configuration, the
// server's and the providers' config blocks alike: a time.Duration written
// as Go writes it ("5s", "250ms", "1h30m") in YAML and in KEYGRID_*
// environment variables. Whether a value may be zero or negative is for
// the field's own validation to say.
package duration

import (
	"fmt"
	"time"

	"gopkg.in/yaml.v3"
)

// Duration is a time.Duration written as "5s".
type Duration time.Duration

// Parse reads a duration as YAML and the environment write it.
func Parse(s string) (Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (like 5s or 250ms)", s)
	}
	return Duration(v), nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := Parse(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = v
	return nil
}

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
