package pkcs11

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// URI is the part of an RFC 7512 PKCS#11 URI that names a key: the token
// label, the object id (CKA_ID) and the object label (CKA_LABEL).
type URI struct {
	Token  string
	ID     []byte
	Object string
}

// pk11-pchar unreserved characters that need no escaping in a path
// attribute value (RFC 7512 §2.3), besides ALPHA and DIGIT.
const uriSafe = "-._~:[]@!$'()*+,="

func escapeURI(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || strings.IndexByte(uriSafe, c) >= 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// String renders the URI, every id byte percent-encoded as RFC 7512
// recommends.
func (u URI) String() string {
	var b strings.Builder
	b.WriteString("pkcs11:token=")
	b.WriteString(escapeURI(u.Token))
	b.WriteString(";id=")
	for _, c := range u.ID {
		fmt.Fprintf(&b, "%%%02X", c)
	}
	if u.Object != "" {
		b.WriteString(";object=")
		b.WriteString(escapeURI(u.Object))
	}
	return b.String()
}

// ErrBadURI is returned for a reference that is not a PKCS#11 key URI.
var ErrBadURI = errors.New("not a pkcs11 key URI")

func unescapeURI(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", ErrBadURI
		}
		v, err := hex.DecodeString(s[i+1 : i+3])
		if err != nil {
			return "", ErrBadURI
		}
		b.WriteByte(v[0])
		i += 2
	}
	return b.String(), nil
}

// Limits on decoded attributes: a token label is at most 32 bytes
// (CK_TOKEN_INFO); ids and object labels are bounded so that every URI
// ParseURI accepts renders (String, which escapes up to three bytes per
// byte) within the 4096 bytes ParseURI reads.
const (
	maxURIToken  = 32
	maxURIID     = 255
	maxURIObject = 1024
)

// ParseURI parses the path attributes of a PKCS#11 URI (the query part, if
// any, is ignored). An id is required; a repeated attribute is refused.
func ParseURI(s string) (URI, error) {
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok || len(s) > 4096 {
		return URI{}, ErrBadURI
	}
	rest, _, _ = strings.Cut(rest, "?")
	var u URI
	seen := map[string]bool{}
	for _, attr := range strings.Split(rest, ";") {
		if attr == "" {
			continue
		}
		k, v, ok := strings.Cut(attr, "=")
		if !ok || seen[k] {
			return URI{}, ErrBadURI
		}
		seen[k] = true
		val, err := unescapeURI(v)
		if err != nil {
			return URI{}, err
		}
		switch k {
		case "token":
			u.Token = val
		case "id":
			u.ID = []byte(val)
		case "object":
			u.Object = val
		}
	}
	if len(u.ID) == 0 || len(u.ID) > maxURIID || len(u.Token) > maxURIToken || len(u.Object) > maxURIObject {
		return URI{}, ErrBadURI
	}
	return u, nil
}
