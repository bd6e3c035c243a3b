package api

import (
	"bytes"
	"context"
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

// statusOf is the one table from error code to HTTP status.
var statusOf = map[apitypes.ErrorCode]int{
	apitypes.CodeInvalidInput:         http.StatusBadRequest,
	apitypes.CodeUnsupportedAlgorithm: http.StatusBadRequest,
	apitypes.CodeUsageNotPermitted:    http.StatusBadRequest,
	apitypes.CodeDecryptionFailed:     http.StatusBadRequest,
	apitypes.CodeAuthenticationFailed: http.StatusUnauthorized,
	apitypes.CodeAuthorizationFailed:  http.StatusForbidden,
	apitypes.CodeKeyNotFound:          http.StatusNotFound,
	apitypes.CodeProviderNotFound:     http.StatusNotFound,
	apitypes.CodeNotFound:             http.StatusNotFound,
	apitypes.CodeMethodNotAllowed:     http.StatusMethodNotAllowed,
	apitypes.CodeKeyAlreadyExists:     http.StatusConflict,
	apitypes.CodeKeyInactive:          http.StatusConflict,
	apitypes.CodeKeyExpired:           http.StatusConflict,
	apitypes.CodeConflict:             http.StatusConflict,
	apitypes.CodePayloadTooLarge:      http.StatusRequestEntityTooLarge,
	apitypes.CodeRateLimited:          http.StatusTooManyRequests,
	apitypes.CodeServiceUnavailable:   http.StatusServiceUnavailable,
	apitypes.CodeHSMTimeout:           http.StatusGatewayTimeout,
	apitypes.CodeInternal:             http.StatusInternalServerError,
}

// StatusOf returns the HTTP status of an error code.
func StatusOf(c apitypes.ErrorCode) int {
	if s, ok := statusOf[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// classify turns any error into a *kgerr.Error: context deadlines become
// HSM_TIMEOUT, a cancelled request SERVICE_UNAVAILABLE.
func classify(err error) *kgerr.Error {
	var e *kgerr.Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, context.DeadlineExceeded):
		return kgerr.Wrap(apitypes.CodeHSMTimeout, err, "the request did not finish before its deadline")
	case errors.Is(err, context.Canceled):
		return kgerr.Wrap(apitypes.CodeServiceUnavailable, err, "the request was cancelled")
	}
	return kgerr.Wrap(apitypes.CodeInternal, err, "internal error")
}

// fail writes the error body. Only the public message reaches the client;
// the cause of a server-side error goes to the log.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	e := classify(err)
	status := StatusOf(e.Code)
	rid := requestID(r.Context())
	switch {
	case status == http.StatusServiceUnavailable:
		// Expected while an HSM is away (every request fails fast): the
		// provider logs the outage once; metrics count the requests.
		a.log.Debug("request refused", "request_id", rid, "method", r.Method, "path", r.URL.Path, "code", e.Code, "err", err)
	case status >= 500:
		a.log.Error("request failed", "request_id", rid, "method", r.Method, "path", r.URL.Path, "code", e.Code, "err", err)
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="keygrid"`)
	}
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		ra := e.RetryAfter
		secs := int(ra.Seconds() + 0.999)
		if secs < 1 {
			secs = 1
		}
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	a.write(w, status, apitypes.ErrorBody{Error: apitypes.ErrorDetail{Code: e.Code, Message: e.Message, RequestID: rid}})
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
		return kgerr.New(apitypes.CodePayloadTooLarge, fmt.Sprintf("request body is larger than %d bytes", mb.Limit))
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
	return kgerr.Wrap(apitypes.CodeInvalidInput, err, "invalid request body: "+err.Error())
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
