package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// restError is how the REST API answers an error kind.
type restError struct {
	status int
	code   apitypes.ErrorCode
}

// restErrors is the one table from error kind to HTTP status and REST code.
var restErrors = map[kgerr.Kind]restError{
	kgerr.KindInvalidInput:         {http.StatusBadRequest, apitypes.CodeInvalidInput},
	kgerr.KindUnsupportedAlgorithm: {http.StatusBadRequest, apitypes.CodeUnsupportedAlgorithm},
	kgerr.KindUsageNotPermitted:    {http.StatusBadRequest, apitypes.CodeUsageNotPermitted},
	kgerr.KindDecryptionFailed:     {http.StatusBadRequest, apitypes.CodeDecryptionFailed},
	kgerr.KindTooLarge:             {http.StatusRequestEntityTooLarge, apitypes.CodePayloadTooLarge},
	kgerr.KindUnauthenticated:      {http.StatusUnauthorized, apitypes.CodeAuthenticationFailed},
	kgerr.KindPermissionDenied:     {http.StatusForbidden, apitypes.CodeAuthorizationFailed},
	kgerr.KindRateLimited:          {http.StatusTooManyRequests, apitypes.CodeRateLimited},
	kgerr.KindKeyNotFound:          {http.StatusNotFound, apitypes.CodeKeyNotFound},
	kgerr.KindProviderNotFound:     {http.StatusNotFound, apitypes.CodeProviderNotFound},
	kgerr.KindNotFound:             {http.StatusNotFound, apitypes.CodeNotFound},
	kgerr.KindAlreadyExists:        {http.StatusConflict, apitypes.CodeKeyAlreadyExists},
	kgerr.KindKeyInactive:          {http.StatusConflict, apitypes.CodeKeyInactive},
	kgerr.KindKeyExpired:           {http.StatusConflict, apitypes.CodeKeyExpired},
	kgerr.KindConflict:             {http.StatusConflict, apitypes.CodeConflict},
	kgerr.KindUnavailable:          {http.StatusServiceUnavailable, apitypes.CodeServiceUnavailable},
	kgerr.KindTimeout:              {http.StatusGatewayTimeout, apitypes.CodeHSMTimeout},
	kgerr.KindInternal:             {http.StatusInternalServerError, apitypes.CodeInternal},
}

// rest returns how an error kind is answered.
func rest(k kgerr.Kind) restError {
	if r, ok := restErrors[k]; ok {
		return r
	}
	return restErrors[kgerr.KindInternal]
}

// StatusOf returns the HTTP status of a REST error code.
func StatusOf(c apitypes.ErrorCode) int {
	if c == apitypes.CodeMethodNotAllowed {
		return http.StatusMethodNotAllowed
	}
	for _, r := range restErrors {
		if r.code == c {
			return r.status
		}
	}
	return http.StatusInternalServerError
}

// errMethodNotAllowed is the REST API's own 405: a path that exists, asked
// with another method. It is no domain error.
type errMethodNotAllowed struct{ msg string }

func (e errMethodNotAllowed) Error() string { return e.msg }

// fail writes the error body. Only the public message reaches the client;
// the cause of a server-side error goes to the log.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	e := kgerr.Classify(err)
	re := rest(e.Kind)
	var mna errMethodNotAllowed
	if errors.As(err, &mna) {
		e, re = kgerr.New(kgerr.KindInvalidInput, mna.msg), restError{http.StatusMethodNotAllowed, apitypes.CodeMethodNotAllowed}
	}
	rid := requestID(r.Context())
	switch {
	case re.status == http.StatusServiceUnavailable:
		// Expected while an HSM is away (every request fails fast): the
		// provider logs the outage once; metrics count the requests.
		a.log.Debug("request refused", "request_id", rid, "method", r.Method, "path", r.URL.Path, "code", re.code, "err", err)
	case re.status >= 500:
		a.log.Error("request failed", "request_id", rid, "method", r.Method, "path", r.URL.Path, "code", re.code, "err", err)
	}
	if re.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="keygrid"`)
	}
	if re.status == http.StatusServiceUnavailable || re.status == http.StatusTooManyRequests {
		ra := e.RetryAfter
		secs := int(ra.Seconds() + 0.999)
		if secs < 1 {
			secs = 1
		}
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	a.write(w, re.status, apitypes.ErrorBody{Error: apitypes.ErrorDetail{Code: re.code, Message: e.Message, RequestID: rid}})
}

func (a *API) write(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if v == nil {
		return
	}
	if err := json.NewEncoder(w).Encode(v); err != nil {
		a.log.Debug("write response", "err", err)
	}
}

// decode reads one JSON object into v: body capped, unknown fields and
// trailing data refused, each failure a clear 4xx.
func (a *API) decode(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, a.maxBody))
	if err != nil {
		return decodeError(err)
	}
	return decodeJSON(body, a.maxDepth, v)
}

// decodeJSON decodes one JSON object from body into v: nesting capped at
// maxDepth, unknown fields and trailing data refused, each failure a clear
// 400.
func decodeJSON(body []byte, maxDepth int, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return kgerr.Invalid("request body is empty; a JSON object is required")
	}
	if d := jsonDepth(body); d > maxDepth {
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

// jsonDepth returns the deepest nesting of objects and arrays in b (which
// need not be valid JSON: the decoder judges that).
func jsonDepth(b []byte) int {
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
			return kgerr.Invalid(fmt.Sprintf("field %q must be %s", typ.Field, jsonKind(typ)))
		}
		return kgerr.Invalid("request body must be a JSON object")
	case errors.As(err, &b64):
		return kgerr.Invalid(fmt.Sprintf("a binary field is not valid standard base64 (bad byte at offset %d)", int64(b64)))
	case errors.Is(err, io.EOF):
		return kgerr.Invalid("request body is empty; a JSON object is required")
	}
	// encoding/json reports unknown fields and a few other problems with
	// untyped errors whose text names the field: pass it on as the message.
	return kgerr.Wrap(kgerr.KindInvalidInput, err, "invalid request body: "+err.Error())
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
