package api

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/keygrid/keygrid-hsm/internal/httpstack"
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
	kgerr.KindKeyPendingDeletion:   {http.StatusConflict, apitypes.CodeKeyPendingDeletion},
	kgerr.KindKeyVersionDisabled:   {http.StatusConflict, apitypes.CodeKeyVersionDisabled},
	kgerr.KindConflict:             {http.StatusConflict, apitypes.CodeConflict},
	kgerr.KindKeyNotExtractable:    {http.StatusConflict, apitypes.CodeKeyNotExtractable},
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
	rid := httpstack.RequestID(r.Context())
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
		httpstack.SetRetryAfter(w, e.RetryAfter)
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

// decode reads the request body into v (the stack's strict JSON decode:
// body capped, depth capped, unknown fields and trailing data refused).
func (a *API) decode(_ http.ResponseWriter, r *http.Request, v any) error {
	return a.stack.DecodeJSON(r, v)
}
