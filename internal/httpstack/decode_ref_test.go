package httpstack

// The strict decode as it was before the single-scan checker (the
// encoding/json token stream, then a second pass with a json.Decoder),
// kept as the reference the fuzz test holds the new one to.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

func refDecode(body []byte, maxDepth int, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return kgerr.Invalid("request body is empty; a JSON object is required")
	}
	if d := JSONDepth(body); d > maxDepth {
		return kgerr.Invalid(fmt.Sprintf("request body nests deeper than %d levels", maxDepth))
	}
	if t := reflect.TypeOf(v); t != nil {
		if err := refCheckStrict(body, t, false); err != nil {
			return err
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if dec.More() {
		return kgerr.Invalid("request body has data after the JSON object")
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err == nil {
		return kgerr.Invalid("request body has data after the JSON object")
	}
	return nil
}

// checkStrict reads body as JSON destined for a value of type t and
// refuses what a lenient parser would read one way and a proxy or WAF in
// front of it another: a key twice in one object (encoding/json keeps the
// last), a field name that matches a field only case-insensitively
// (encoding/json accepts "DATA" for "data"), an unknown field (unless
// unknownOK), and a binary ([]byte) field whose base64 is not canonical
// (embedded newlines, wrong padding, non-zero trailing bits), all of which
// encoding/json accepts. Malformed JSON is left to the decoder, whose
// message says where.
func refCheckStrict(body []byte, t reflect.Type, unknownOK bool) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	err := refStrictValue(dec, t, "", unknownOK)
	var se *strictError
	if errors.As(err, &se) {
		return kgerr.Invalid(se.msg)
	}
	return nil // a syntax error: the decoder reports it
}

// strictValue checks the next value of dec, destined for t (nil: anything,
// only duplicate keys are checked).
func refStrictValue(dec *json.Decoder, t reflect.Type, path string, unknownOK bool) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && (t == rawMessageType || reflect.PointerTo(t).Implements(unmarshalerT)) {
		t = nil
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch v := tok.(type) {
	case json.Delim:
		switch v {
		case '{':
			return refStrictObject(dec, t, path, unknownOK)
		case '[':
			var elem reflect.Type
			if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
				elem = t.Elem()
			}
			for dec.More() {
				if err := refStrictValue(dec, elem, path+"[]", unknownOK); err != nil {
					return err
				}
			}
			_, err := dec.Token()
			return err
		}
	case string:
		if t != nil && t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8 {
			if strings.ContainsAny(v, "\r\n") {
				return &strictError{fmt.Sprintf("field %s is not canonical base64: it has a line break", kgerr.Quote(path))}
			}
			if !canonicalBase64(v) {
				return &strictError{fmt.Sprintf("field %s is not canonical standard base64 (padded, no line breaks, zero trailing bits)", kgerr.Quote(path))}
			}
		}
	}
	return nil
}

// strictObject checks the members of an object whose '{' was read.
func refStrictObject(dec *json.Decoder, t reflect.Type, path string, unknownOK bool) error {
	var fields map[string]reflect.Type
	var elem reflect.Type
	if t != nil {
		switch t.Kind() {
		case reflect.Struct:
			fields = jsonFields(t)
		case reflect.Map:
			elem = t.Elem()
		}
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		name := key
		if path != "" {
			name = path + "." + key
		}
		if seen[key] {
			return &strictError{fmt.Sprintf("field %s appears twice", kgerr.Quote(name))}
		}
		seen[key] = true
		ft := elem
		if fields != nil {
			var ok bool
			if ft, ok = fields[key]; !ok {
				for f := range fields {
					if strings.EqualFold(f, key) {
						return &strictError{fmt.Sprintf("unknown field %s (field names are case-sensitive: %q)", kgerr.Quote(name), f)}
					}
				}
				if !unknownOK {
					return &strictError{"unknown field " + kgerr.Quote(name)}
				}
			}
		}
		if err := refStrictValue(dec, ft, name, unknownOK); err != nil {
			return err
		}
	}
	_, err := dec.Token()
	return err
}

type fuzzInner struct {
	Kind string `json:"kind"`
	Blob []byte `json:"blob"`
}

type fuzzEmbedded struct {
	Extra string `json:"extra"`
}

// fuzzReq has a field of every shape the request types use.
type fuzzReq struct {
	fuzzEmbedded
	Name  string            `json:"name"`
	Data  []byte            `json:"data"`
	N     int               `json:"n"`
	F     float64           `json:"f"`
	OK    bool              `json:"ok"`
	Spec  *fuzzInner        `json:"spec"`
	Meta  map[string]string `json:"meta"`
	Any   map[string]any    `json:"any"`
	List  []fuzzInner       `json:"list"`
	Strs  []string          `json:"strs"`
	Raw   json.RawMessage   `json:"raw"`
	Plain string
}

// FuzzDecodeAgreesWithReference holds the single-scan strict decode to the
// token-stream one it replaced: the same verdict, the same message, the same
// decoded value; the one difference is that trailing data that starts with
// '}' or ']' is now refused (the reference let it pass).
func FuzzDecodeAgreesWithReference(f *testing.F) {
	for _, s := range []string{
		`{"name":"a","data":"eA==","spec":{"kind":"x","blob":"AAEC"},"meta":{"a":"1"},"list":[{"kind":"y"}],"extra":"e","Plain":"p","raw":{"a":1,"b":2}}`,
		`{"name":"a","name":"b"}`, `{"spec":{"kind":"x","kind":"y"}}`, `{"meta":{"a":"1","a":"2"}}`,
		`{"list":[{"kind":"x","kind":"y"}]}`, `{"raw":{"a":1,"a":2}}`, `{"extra":"a","extra":"b"}`,
		`{"Name":"a"}`, `{"plain":"p"}`, `{"spec":{"KIND":"x"}}`, `{"nope":1}`, `{"data":"eA\n=="}`,
		`{"data":"eA\u000a=="}`, `{"data":"eA"}`, `{"data":"eB=="}`, `{"data":""}`, `{"data":"e\/A="}`,
		`{"n\u0061me":"x","name":"y"}`, `{"n":1.5}`, `{"n":-0,"f":1e3,"ok":true}`, `{"f":01}`, `{"ok":tru}`,
		`{"a":`, `{"name":"x"} {}`, `{"name":"x"}x`, `{"name":"x"}}`, `[1]`, `"x"`, `null`, `{"name":1}`,
		`{"any":{"a":[1,{"b":2,"b":3}]}}`, `{"strs":["a","b",]}`, `{"meta":{"k":"\ud800"}}`, `{"name":"\x01"}`,
		`{"list":[{"blob":"QQ=="},{"blob":"QR=="}]}`, `{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17,"a":18}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var got, want fuzzReq
		gerr, werr := Decode(body, 16, &got), refDecode(body, 16, &want)
		if werr == nil && gerr != nil && strings.Contains(gerr.Error(), "data after the JSON object") {
			if end, _ := scanStrict(body, reflect.TypeOf(&got), false); end > 0 {
				if rest := bytes.TrimLeft(body[end:], " \t\r\n"); len(rest) > 0 && (rest[0] == '}' || rest[0] == ']') {
					return // the reference's leak, closed
				}
			}
		}
		switch {
		case (gerr == nil) != (werr == nil):
			t.Fatalf("Decode(%q) = %v, the reference %v", body, gerr, werr)
		case gerr != nil:
			if g, w := kgerr.Classify(gerr).Message, kgerr.Classify(werr).Message; g != w || kgerr.KindOf(gerr) != kgerr.KindOf(werr) {
				t.Fatalf("Decode(%q): %q, the reference %q", body, g, w)
			}
		case !reflect.DeepEqual(got, want):
			t.Fatalf("Decode(%q) = %+v, the reference %+v", body, got, want)
		}
	})
}

// BenchmarkDecode is the strict decode of a sign request and of an encrypt
// request with 1 KiB of plaintext, against the reference it replaced.
//
//	go test -run '^$' -bench Decode -benchmem ./internal/httpstack/
func BenchmarkDecode(b *testing.B) {
	type sign struct {
		Data      []byte `json:"data,omitempty"`
		Digest    []byte `json:"digest,omitempty"`
		Algorithm string `json:"algorithm,omitempty"`
	}
	body1k, _ := json.Marshal(sign{Data: bytes.Repeat([]byte{7}, 1024), Algorithm: "A256GCM"})
	for name, body := range map[string][]byte{"sign-32B": []byte(`{"data":"YmVuY2htYXJrIHBheWxvYWQgb2YgMzIgYnl0ZXMuLg==","algorithm":"ES256"}`), "1KiB": body1k} {
		for impl, dec := range map[string]func([]byte, int, any) error{"single-scan": Decode, "reference": refDecode} {
			b.Run(name+"/"+impl, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					var v sign
					if err := dec(body, 16, &v); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
