package httpstack

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// These two tests moved here from internal/api with the code they test;
// their assertions are unchanged.

func TestDecodeErrors(t *testing.T) {
	type req struct {
		A string            `json:"a"`
		M map[string]string `json:"m"`
		B []byte            `json:"b"`
	}
	for _, tc := range []struct {
		name, body, msg string
	}{
		{"empty", "", "empty"},
		{"spaces", "  \n", "empty"},
		{"not an object", `[1]`, "JSON object"},
		{"trailing data", `{"a":"x"} {}`, "after the JSON object"},
		{"trailing garbage", `{"a":"x"}x`, "after the JSON object"},
		{"unknown field", `{"z":1}`, "unknown field"},
		{"wrong type", `{"a":1}`, `"a" must be a string`},
		{"bad base64", `{"b":"!!"}`, "base64"},
		{"too deep", `{"m":{"x":` + strings.Repeat("[", 20) + strings.Repeat("]", 20) + `}}`, "deeper than 16"},
		{"syntax", `{"a":`, "invalid request body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v req
			err := Decode([]byte(tc.body), 16, &v)
			if !errors.Is(err, kgerr.ErrInvalidInput) || !strings.Contains(kgerr.Classify(err).Message, tc.msg) {
				t.Fatalf("got %v, want INVALID_INPUT mentioning %q", err, tc.msg)
			}
		})
	}
	for body, want := range map[string]int{`{"a":"[[[["}`: 1, `{"a":"\"{{"}`: 1, `[[[]]]`: 3, `{}`: 1, `"x"`: 0} {
		if got := JSONDepth([]byte(body)); got != want {
			t.Errorf("JSONDepth(%s) = %d, want %d", body, got, want)
		}
	}
}

// TestLimiter checks the token bucket: burst, refill, wait, first refusal.
func TestLimiter(t *testing.T) {
	l := NewLimiter(2)
	now := l.now()
	l.now = func() time.Time { return now }
	for i := range 3 {
		if ok, _, _ := l.Take("a", 2, 3); !ok {
			t.Fatalf("take %d within the burst refused", i)
		}
	}
	ok, wait, first := l.Take("a", 2, 3)
	if ok || !first || wait != 500*time.Millisecond {
		t.Fatalf("past the burst: %v %v %v", ok, wait, first)
	}
	if _, _, first := l.Take("a", 2, 3); first {
		t.Fatal("second refusal reported as first")
	}
	now = now.Add(500 * time.Millisecond)
	if ok, _, _ := l.Take("a", 2, 3); !ok {
		t.Fatal("no token after the wait")
	}
	if ok, _, _ := l.Take("b", 2, 3); !ok {
		t.Fatal("another key is limited")
	}
	// Beyond max entries, idle (refilled) buckets are dropped.
	now = now.Add(time.Hour)
	l.Take("c", 2, 3)
	if len(l.buckets) > 2 {
		t.Fatalf("%d buckets kept", len(l.buckets))
	}
	if ok, _, _ := l.Take("x", -1, 0); !ok {
		t.Fatal("a negative rate limits")
	}
}

func TestDecodeStrict(t *testing.T) {
	type inner struct {
		Kind string `json:"kind"`
	}
	type embedded struct {
		Extra string `json:"extra"`
	}
	type req struct {
		embedded
		Name  string            `json:"name"`
		Data  []byte            `json:"data"`
		Spec  *inner            `json:"spec"`
		Meta  map[string]string `json:"meta"`
		List  []inner           `json:"list"`
		Raw   json.RawMessage   `json:"raw"`
		Plain string
	}
	for name, tc := range map[string]struct {
		body string
		ok   bool
	}{
		"ok":                    {`{"name":"a","data":"eA==","spec":{"kind":"x"},"meta":{"a":"1"},"list":[{"kind":"y"}],"extra":"e","Plain":"p","raw":{"a":1,"b":2}}`, true},
		"dup top":               {`{"name":"a","name":"b"}`, false},
		"dup in pointer struct": {`{"spec":{"kind":"x","kind":"y"}}`, false},
		"dup in map":            {`{"meta":{"a":"1","a":"2"}}`, false},
		"dup in list element":   {`{"list":[{"kind":"x","kind":"y"}]}`, false},
		"dup in raw message":    {`{"raw":{"a":1,"a":2}}`, false},
		"dup embedded":          {`{"extra":"a","extra":"b"}`, false},
		"case":                  {`{"Name":"a"}`, false},
		"case of untagged":      {`{"plain":"p"}`, false},
		"case nested":           {`{"spec":{"KIND":"x"}}`, false},
		"unknown":               {`{"nope":1}`, false},
		"b64 newline":           {`{"data":"eA\n=="}`, false},
		"b64 escaped newline":   {`{"data":"eA\u000a=="}`, false},
		"b64 no padding":        {`{"data":"eA"}`, false},
		"b64 trailing bits":     {`{"data":"eB=="}`, false},
		"b64 empty":             {`{"data":""}`, true},
	} {
		t.Run(name, func(t *testing.T) {
			var v req
			err := Decode([]byte(tc.body), 16, &v)
			if tc.ok != (err == nil) {
				t.Fatalf("Decode(%s): %v", tc.body, err)
			}
			if err != nil && !errors.Is(err, kgerr.ErrInvalidInput) {
				t.Fatalf("error kind: %v", err)
			}
		})
	}
}

// canonicalBase64 agrees with base64.StdEncoding.Strict on every input the
// strict check sees, without decoding.
func FuzzCanonicalBase64(f *testing.F) {
	for _, s := range []string{"", "QQ==", "QR==", "QUE=", "QUF=", "QUFB", "QUFB\n", "QQ", "Q===", "====", "QUFBQQ==", "a+/9", "-_A="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, err := base64.StdEncoding.Strict().DecodeString(s)
		want := err == nil && !strings.ContainsAny(s, "\r\n")
		if got := canonicalBase64(s); got != want {
			t.Fatalf("canonicalBase64(%q) = %v, Strict decoding says %v", s, got, want)
		}
	})
}
