package httpstack

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// DecodeJSON reads the request body (capped by Wrap) and decodes one JSON
// object into v with the stack's depth cap (see Decode). A body over the
// cap is PAYLOAD_TOO_LARGE; every other failure INVALID_INPUT with a
// message that says what is wrong.
func (s *Stack) DecodeJSON(r *http.Request, v any) error {
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
// maxDepth, unknown fields and trailing data refused, each failure
// INVALID_INPUT with a clear message. A front end that reads the body
// itself (to check a signature over it, say) decodes with this.
func Decode(body []byte, maxDepth int, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return kgerr.Invalid("request body is empty; a JSON object is required")
	}
	if d := JSONDepth(body); d > maxDepth {
		return kgerr.Invalid(fmt.Sprintf("request body nests deeper than %d levels", maxDepth))
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
	// encoding/json reports unknown fields with an untyped error whose text
	// quotes the field: name it (clipped: the name is the client's).
	if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if name, uerr := strconv.Unquote(f); uerr == nil {
			f = name
		}
		return kgerr.Invalid("unknown field " + kgerr.Quote(f))
	}
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
