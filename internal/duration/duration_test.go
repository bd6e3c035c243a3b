package duration

import (
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestDurationYAML(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     time.Duration
		wantErr  string
	}{
		{"ok seconds", "t: 5s", 5 * time.Second, ""},
		{"ok milliseconds", "t: 250ms", 250 * time.Millisecond, ""},
		{"ok compound", "t: 1h30m", 90 * time.Minute, ""},
		{"ok zero", "t: 0s", 0, ""},
		{"ok negative (the field's validation decides)", "t: -1s", -time.Second, ""},
		{"fail bare number", "t: 5", 0, `line 1: "5" is not a duration`},
		{"fail word", "\nt: soon", 0, `line 2: "soon" is not a duration`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var v struct {
				T Duration `yaml:"t"`
			}
			err := yaml.Unmarshal([]byte(c.in), &v)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil || v.T.D() != c.want {
				t.Fatalf("got %v %v, want %v", v.T.D(), err, c.want)
			}
		})
	}
}

func TestParse(t *testing.T) {
	if d, err := Parse("2m"); err != nil || d.D() != 2*time.Minute {
		t.Fatalf("Parse(2m) = %v %v", d, err)
	}
	if _, err := Parse("2 minutes"); err == nil {
		t.Fatal("Parse accepts 2 minutes")
	}
}
