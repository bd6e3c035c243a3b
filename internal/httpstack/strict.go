package httpstack

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// scanStrict reads body as JSON destined for a value of type t and refuses
// what a lenient parser would read one way and a proxy or WAF in front of
// it another: a key twice in one object (encoding/json keeps the last), a
// field name that matches a field only case-insensitively (encoding/json
// accepts "DATA" for "data"), an unknown field (unless unknownOK), and a
// binary ([]byte) field whose base64 is not canonical (embedded newlines,
// wrong padding, non-zero trailing bits), all of which encoding/json
// accepts.
//
// It is one pass over the bytes that allocates nothing for a well-formed
// body (an escaped key or base64 string, a refusal's message and objects
// of more than 16 members excepted). It returns where the first JSON value
// ends; -1 when the body is malformed before a refusal was found (the
// decoder that follows then says where). Only the first value is read.
func scanStrict(body []byte, t reflect.Type, unknownOK bool) (end int, err error) {
	s := scanner{b: body, unknownOK: unknownOK}
	s.ws()
	if err := s.value(normType(t), nil, 0); err != nil {
		if se, ok := err.(*strictError); ok && se != errMalformed {
			return -1, kgerr.Invalid(se.msg)
		}
		return -1, nil
	}
	return s.i, nil
}

// errMalformed stops the scan at the first syntax error.
var errMalformed = &strictError{"malformed JSON"}

// maxScanDepth bounds the scanner's recursion on bodies whose depth was not
// checked before (CheckStrict); encoding/json refuses the same depth.
const maxScanDepth = 10000

type scanner struct {
	b         []byte
	i         int
	unknownOK bool
}

// pathElem names a member (key) or an array element (list) for messages,
// built only when one is needed.
type pathElem struct {
	parent *pathElem
	key    []byte
	list   bool
}

func (p *pathElem) String() string {
	if p == nil {
		return ""
	}
	par := p.parent.String()
	switch {
	case p.list:
		return par + "[]"
	case par == "":
		return string(p.key)
	}
	return par + "." + string(p.key)
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// value checks the value at s.i (after white space), destined for t (nil:
// anything, only duplicate keys are checked).
func (s *scanner) value(t reflect.Type, path *pathElem, depth int) error {
	if s.i >= len(s.b) || depth > maxScanDepth {
		return errMalformed
	}
	switch c := s.b[s.i]; {
	case c == '{':
		s.i++
		return s.object(t, path, depth+1)
	case c == '[':
		s.i++
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = normType(t.Elem())
		}
		return s.array(elem, path, depth+1)
	case c == '"':
		raw, esc, err := s.str()
		if err != nil {
			return err
		}
		if t != nil && t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8 {
			return checkBase64(raw, esc, path)
		}
		return nil
	}
	return s.literal()
}

func (s *scanner) array(elem reflect.Type, path *pathElem, depth int) error {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == ']' {
		s.i++
		return nil
	}
	p := pathElem{parent: path, list: true}
	for {
		if err := s.value(elem, &p, depth); err != nil {
			return err
		}
		s.ws()
		if s.i >= len(s.b) {
			return errMalformed
		}
		switch s.b[s.i] {
		case ',':
			s.i++
			s.ws()
		case ']':
			s.i++
			return nil
		default:
			return errMalformed
		}
	}
}

// object checks the members of an object whose '{' was read.
func (s *scanner) object(t reflect.Type, path *pathElem, depth int) error {
	var fields map[string]reflect.Type
	var elem reflect.Type
	if t != nil {
		switch t.Kind() {
		case reflect.Struct:
			fields = jsonFields(t)
		case reflect.Map:
			elem = normType(t.Elem())
		}
	}
	var (
		few  [16][]byte // the keys seen, while few
		nfew int
		many map[string]struct{}
	)
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return nil
	}
	for {
		if s.i >= len(s.b) || s.b[s.i] != '"' {
			return errMalformed
		}
		raw, esc, err := s.str()
		if err != nil {
			return err
		}
		key := raw
		if esc {
			if key, err = unescape(s.b[s.i-len(raw)-2 : s.i]); err != nil {
				return err
			}
		}
		p := pathElem{parent: path, key: key}
		// A key twice.
		dup := false
		if many == nil {
			for _, k := range few[:nfew] {
				if string(k) == string(key) {
					dup = true
					break
				}
			}
			if !dup {
				if nfew < len(few) {
					few[nfew], nfew = key, nfew+1
				} else {
					many = make(map[string]struct{}, 2*len(few))
					for _, k := range few {
						many[string(k)] = struct{}{}
					}
				}
			}
		}
		if many != nil {
			if _, dup = many[string(key)]; !dup {
				many[string(key)] = struct{}{}
			}
		}
		if dup {
			return &strictError{fmt.Sprintf("field %s appears twice", kgerr.Quote(p.String()))}
		}
		ft := elem
		if fields != nil {
			var ok bool
			if ft, ok = fields[string(key)]; !ok {
				if err := s.unknownField(fields, key, &p); err != nil {
					return err
				}
			}
			ft = normType(ft)
		}
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return errMalformed
		}
		s.i++
		s.ws()
		if err := s.value(ft, &p, depth); err != nil {
			return err
		}
		s.ws()
		if s.i >= len(s.b) {
			return errMalformed
		}
		switch s.b[s.i] {
		case ',':
			s.i++
			s.ws()
		case '}':
			s.i++
			return nil
		default:
			return errMalformed
		}
	}
}

// unknownField refuses a key that names no field: a field's name in
// another case always, any other unless unknown fields are allowed.
func (s *scanner) unknownField(fields map[string]reflect.Type, key []byte, p *pathElem) error {
	k := string(key)
	for f := range fields {
		if strings.EqualFold(f, k) {
			return &strictError{fmt.Sprintf("unknown field %s (field names are case-sensitive: %q)", kgerr.Quote(p.String()), f)}
		}
	}
	if !s.unknownOK {
		return &strictError{"unknown field " + kgerr.Quote(p.String())}
	}
	return nil
}

// str reads the string at s.i (its opening quote) and returns its raw
// content and whether it has escapes; it checks the string is valid JSON.
func (s *scanner) str() (raw []byte, escaped bool, err error) {
	start, high := s.i+1, false
	for i := start; i < len(s.b); i++ {
		switch c := s.b[i]; {
		case c == '"':
			s.i = i + 1
			raw = s.b[start:i]
			// encoding/json reads invalid UTF-8 as U+FFFD: so must the
			// names and values checked here.
			if high && !utf8.Valid(raw) {
				escaped = true
			}
			return raw, escaped, nil
		case c >= 0x80:
			high = true
		case c < 0x20:
			return nil, false, errMalformed
		case c == '\\':
			escaped = true
			if i+1 >= len(s.b) {
				return nil, false, errMalformed
			}
			i++
			switch s.b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(s.b) {
					return nil, false, errMalformed
				}
				for _, h := range s.b[i+1 : i+5] {
					if !isHex(h) {
						return nil, false, errMalformed
					}
				}
				i += 4
			default:
				return nil, false, errMalformed
			}
		}
	}
	return nil, false, errMalformed
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// unescape returns the content of the quoted JSON string q (valid, with
// escapes) as encoding/json reads it.
func unescape(q []byte) ([]byte, error) {
	var v string
	if err := json.Unmarshal(q, &v); err != nil {
		return nil, errMalformed
	}
	return []byte(v), nil
}

// literal reads true, false, null or a number.
func (s *scanner) literal() error {
	rest := s.b[s.i:]
	for _, w := range [...]string{"true", "false", "null"} {
		if len(rest) >= len(w) && string(rest[:len(w)]) == w {
			s.i += len(w)
			return nil
		}
	}
	// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
	i := s.i
	digits := func() bool {
		j := i
		for i < len(s.b) && '0' <= s.b[i] && s.b[i] <= '9' {
			i++
		}
		return i > j
	}
	if i < len(s.b) && s.b[i] == '-' {
		i++
	}
	switch {
	case i < len(s.b) && s.b[i] == '0':
		i++
	case i < len(s.b) && '1' <= s.b[i] && s.b[i] <= '9':
		digits()
	default:
		return errMalformed
	}
	if i < len(s.b) && s.b[i] == '.' {
		i++
		if !digits() {
			return errMalformed
		}
	}
	if i < len(s.b) && (s.b[i] == 'e' || s.b[i] == 'E') {
		i++
		if i < len(s.b) && (s.b[i] == '+' || s.b[i] == '-') {
			i++
		}
		if !digits() {
			return errMalformed
		}
	}
	s.i = i
	return nil
}

// checkBase64 refuses a []byte field's string that is not canonical
// standard base64.
func checkBase64(raw []byte, escaped bool, path *pathElem) error {
	v := raw
	if escaped {
		q := make([]byte, 0, len(raw)+2)
		var err error
		if v, err = unescape(append(append(append(q, '"'), raw...), '"')); err != nil {
			return err
		}
	}
	for _, c := range v {
		if c == '\r' || c == '\n' {
			return &strictError{fmt.Sprintf("field %s is not canonical base64: it has a line break", kgerr.Quote(path.String()))}
		}
	}
	if !canonicalBase64(v) {
		return &strictError{fmt.Sprintf("field %s is not canonical standard base64 (padded, no line breaks, zero trailing bits)", kgerr.Quote(path.String()))}
	}
	return nil
}

// normTypes caches normType: request types are few and fixed.
var normTypes sync.Map // reflect.Type → reflect.Type (nil: any value)

// normType is the type a JSON value destined for t is checked against:
// pointers followed; nil for a json.RawMessage or a json.Unmarshaler (and
// for nil), whose contents are only checked for duplicate keys.
func normType(t reflect.Type) reflect.Type {
	if t == nil {
		return nil
	}
	if n, ok := normTypes.Load(t); ok {
		n, _ := n.(reflect.Type)
		return n
	}
	n := t
	for n.Kind() == reflect.Pointer {
		n = n.Elem()
	}
	if n == rawMessageType || reflect.PointerTo(n).Implements(unmarshalerT) {
		n = nil
	}
	normTypes.Store(t, n)
	return n
}
