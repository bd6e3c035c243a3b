package kgerr

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestClip(t *testing.T) {
	for name, tc := range map[string]struct {
		in      string
		wantLen int
		cut     bool
	}{
		"short":         {"abc", 3, false},
		"exactly max":   {strings.Repeat("a", MaxEcho), MaxEcho, false},
		"one over":      {strings.Repeat("a", MaxEcho+1), MaxEcho, true},
		"a megabyte":    {strings.Repeat("x", 1<<20), MaxEcho, true},
		"multibyte cut": {strings.Repeat("é", MaxEcho), MaxEcho, true},
	} {
		t.Run(name, func(t *testing.T) {
			got := Clip(tc.in)
			body := strings.TrimSuffix(got, "…")
			if len(body) != tc.wantLen || (got != body) != tc.cut || !utf8.ValidString(got) {
				t.Fatalf("Clip: %d bytes (cut %v, valid %v)", len(got), got != body, utf8.ValidString(got))
			}
		})
	}
	if q := Quote(strings.Repeat("\"", 1000)); len(q) > 2*MaxEcho+8 {
		t.Fatalf("Quote of 1000 quotes is %d bytes", len(q))
	}
}
