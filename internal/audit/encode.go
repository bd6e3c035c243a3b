package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// appendLine appends the chained line for e (seq, the event's fields,
// prev_hash, hash, newline) to dst and returns it with the line's hash.
// The event is encoded by hand, byte for byte as encoding/json encodes
// Event (field order, omitempty, HTML-safe escaping, sorted attribute
// keys; fuzz_test.go checks it against json.Marshal), without reflection;
// the rare values encoding/json would refuse or treat specially (a
// non-finite duration, a time outside years 0-9999 or with an offset not
// in whole minutes) go through encoding/json itself.
func appendLine(dst []byte, seq uint64, prev string, e Event) ([]byte, string, error) {
	start := len(dst)
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, ',')
	var err error
	if dst, err = appendEventFields(dst, e); err != nil {
		return dst[:start], "", err
	}
	dst = append(dst, `,"prev_hash":`...)
	dst = appendString(dst, prev)
	dst = append(dst, '}')
	sum := sha256.Sum256(dst[start:])
	dst = dst[:len(dst)-1]
	var h [2 * sha256.Size]byte
	hex.Encode(h[:], sum[:])
	dst = append(dst, `,"hash":"`...)
	dst = append(dst, h[:]...)
	dst = append(dst, "\"}\n"...)
	return dst, string(h[:]), nil
}

// appendEventFields appends e's fields as json.Marshal(e) writes them,
// without the enclosing braces.
func appendEventFields(dst []byte, e Event) ([]byte, error) {
	if !plainEvent(e) {
		body, err := json.Marshal(e)
		if err != nil {
			return dst, err
		}
		return append(dst, body[1:len(body)-1]...), nil
	}
	dst = append(dst, `"time":"`...)
	dst = e.Time.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, '"')
	dst = appendOpt(dst, `,"request_id":`, e.RequestID)
	dst = appendOpt(dst, `,"client_request_id":`, e.ClientRequestID)
	dst = appendOpt(dst, `,"principal":`, e.Principal)
	dst = appendOpt(dst, `,"client_addr":`, e.ClientAddr)
	dst = append(dst, `,"operation":`...)
	dst = appendString(dst, e.Operation)
	dst = appendOpt(dst, `,"key_id":`, e.KeyID)
	dst = appendOpt(dst, `,"key_name":`, e.KeyName)
	if e.KeyVersion != 0 {
		dst = append(dst, `,"key_version":`...)
		dst = strconv.AppendInt(dst, int64(e.KeyVersion), 10)
	}
	dst = appendOpt(dst, `,"provider":`, e.Provider)
	dst = appendOpt(dst, `,"algorithm":`, e.Algorithm)
	dst = append(dst, `,"outcome":`...)
	dst = appendString(dst, e.Outcome)
	dst = appendOpt(dst, `,"error_code":`, e.ErrorCode)
	dst = append(dst, `,"duration_ms":`...)
	dst = appendFloat(dst, e.DurationMS)
	dst = appendOpt(dst, `,"detail":`, e.Detail)
	dst = appendOpt(dst, `,"error_name":`, e.ErrorName)
	if len(e.Attributes) > 0 {
		dst = append(dst, `,"attributes":{`...)
		keys := make([]string, 0, len(e.Attributes))
		for k := range e.Attributes {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, k)
			dst = append(dst, ':')
			dst = appendString(dst, e.Attributes[k])
		}
		dst = append(dst, '}')
	}
	return dst, nil
}

// plainEvent reports whether e holds only values the hand encoder writes
// exactly as encoding/json does.
func plainEvent(e Event) bool {
	if math.IsNaN(e.DurationMS) || math.IsInf(e.DurationMS, 0) {
		return false
	}
	if y := e.Time.Year(); y < 0 || y > 9999 {
		return false
	}
	_, off := e.Time.Zone()
	return off%60 == 0 && off > -24*3600 && off < 24*3600
}

func appendOpt(dst []byte, key, v string) []byte {
	if v == "" {
		return dst
	}
	return appendString(append(dst, key...), v)
}

// appendFloat writes f as encoding/json writes a float64.
func appendFloat(dst []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// e-09 → e-9, as encoding/json does.
		if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string the way encoding/json does with
// HTML escaping on: <, > and & as \u00XX, U+2028 and U+2029 escaped,
// invalid UTF-8 as U+FFFD.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
