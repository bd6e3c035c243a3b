package httpstack

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"sync"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// DecodeJSON reads the request body (capped by Wrap) and decodes one JSON
// object into v with the stack's depth cap (see Decode). A body over the
// cap is PAYLOAD_TOO_LARGE; every other failure INVALID_INPUT with a
// message that says what is wrong.
//
// A refused body is audited (Options.AuditRefusal), coalesced per
// principal, route and reason.
func (s *Stack) DecodeJSON(r *http.Request, v any) error {
	err := s.decodeJSON(r, v)
	if err != nil {
		s.refusals.refused(r, err)
	}
	return err
}

func (s *Stack) decodeJSON(r *http.Request, v any) error {
	if r.Body == nil {
		return Decode(nil, s.o.MaxJSONDepth, v)
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return decodeError(err)
	}
	return Decode(body, s.o.MaxJSONDepth, v)
}

// Decode decodes one JSON object from body into v: nesting capped at
// maxDepth; unknown fields, trailing data, duplicate keys, field names in
// another case and non-canonical base64 refused (checkStrict), each failure
// INVALID_INPUT with a clear message. A front end that reads the body
// itself (to check a signature over it, say) decodes with this.
//
// The body is read twice: once by the strict scanner (strict.go), which
// allocates nothing for a well-formed request, and once by encoding/json.
func Decode(body []byte, maxDepth int, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return kgerr.Invalid("request body is empty; a JSON object is required")
	}
	if d := JSONDepth(body); d > maxDepth {
		return kgerr.Invalid(fmt.Sprintf("request body nests deeper than %d levels", maxDepth))
	}
	end, err := scanStrict(body, reflect.TypeOf(v), false)
	if err != nil {
		return err
	}
	if end < 0 {
		// Malformed: a json.Decoder says where (and how it always has).
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			return decodeError(err)
		}
		return kgerr.Invalid("request body is not valid JSON")
	}
	// Every field name was checked against v's fields above, so
	// json.Unmarshal (which matches names case-insensitively and ignores
	// unknown ones) reads exactly what a json.Decoder with
	// DisallowUnknownFields would.
	if err := json.Unmarshal(body[:end], v); err != nil {
		return decodeError(err)
	}
	for _, c := range body[end:] {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return kgerr.Invalid("request body has data after the JSON object")
		}
	}
	return nil
}

// JSONDepth returns the deepest nesting of objects and arrays in b (which
// need not be valid JSON: the decoder judges that).
func JSONDepth(b []byte) int {
	depth, deepest, inString, escaped := 0, 0, false, false
	for _, c := range b {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
			deepest = max(deepest, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	return deepest
}

func decodeError(err error) error {
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
		b64 base64.CorruptInputError
		mb  *http.MaxBytesError
	)
	switch {
	case errors.As(err, &mb):
		return kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("request body is larger than %d bytes", mb.Limit))
	case errors.As(err, &syn):
		return kgerr.Invalid(fmt.Sprintf("malformed JSON at byte %d", syn.Offset))
	case errors.As(err, &typ):
		if typ.Field != "" {
			return kgerr.Invalid(fmt.Sprintf("field %s must be %s", kgerr.Quote(typ.Field), jsonKind(typ)))
		}
		return kgerr.Invalid("request body must be a JSON object")
	case errors.As(err, &b64):
		return kgerr.Invalid(fmt.Sprintf("a binary field is not valid standard base64 (bad byte at offset %d)", int64(b64)))
	case errors.Is(err, io.EOF):
		return kgerr.Invalid("request body is empty; a JSON object is required")
	}
	// Unknown fields are refused by checkStrict before the decoder runs;
	// what else encoding/json reports untyped is passed on, clipped.
	return kgerr.Invalid("invalid request body: " + kgerr.Clip(err.Error()))
}

func jsonKind(t *json.UnmarshalTypeError) string {
	switch t.Type.Kind().String() {
	case "slice":
		if t.Type.Elem().Kind().String() == "uint8" {
			return "a base64 string"
		}
		return "an array"
	case "string":
		return "a string"
	case "int", "int64":
		return "an integer"
	case "bool":
		return "true or false"
	case "map", "struct":
		return "an object"
	}
	return "of type " + t.Type.String()
}

// CheckStrict is checkStrict for a front end that decodes a body itself
// (into v): it refuses duplicate keys, field names in another case and
// non-canonical base64 in []byte fields, and unknown fields unless
// unknownOK. Malformed JSON passes: the front end's decoder reports it.
func CheckStrict(body []byte, v any, unknownOK bool) error {
	_, err := scanStrict(body, reflect.TypeOf(v), unknownOK)
	return err
}

type strictError struct{ msg string }

func (e *strictError) Error() string { return e.msg }

var (
	rawMessageType = reflect.TypeFor[json.RawMessage]()
	unmarshalerT   = reflect.TypeFor[json.Unmarshaler]()
)

// canonicalBase64 reports whether s is canonical padded standard base64
// (what base64.StdEncoding.Strict decodes) without decoding it: the
// decoder that follows does that once.
func canonicalBase64[T string | []byte](s T) bool {
	if len(s)%4 != 0 {
		return false
	}
	pad := 0
	if n := len(s); n > 0 && s[n-1] == '=' {
		pad = 1
		if s[n-2] == '=' {
			pad = 2
		}
	}
	body := s[:len(s)-pad]
	for i := 0; i < len(body); i++ {
		if b64Index[body[i]] < 0 {
			return false
		}
	}
	if pad == 0 {
		return true
	}
	// The bits the padding leaves over in the last symbol must be zero.
	last := b64Index[body[len(body)-1]]
	if pad == 1 {
		return last&0x3 == 0
	}
	return last&0xf == 0
}

// b64Index is the value of each standard base64 symbol, -1 for the rest.
var b64Index = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for i, c := range "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" {
		t[c] = int8(i)
	}
	return t
}()

// fieldCache holds jsonFields by type: request types are few and fixed.
var fieldCache sync.Map // reflect.Type → map[string]reflect.Type

// jsonFields maps the JSON names of a struct's fields (embedded structs'
// included) to their types, as encoding/json names them. The map is shared:
// never change it.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := structFields(t)
	fieldCache.Store(t, m)
	return m
}

func structFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for n, typ := range structFields(ft) {
					if _, ok := out[n]; !ok {
						out[n] = typ
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = ft
	}
	return out
}
