// Package kgerr is the typed error of KeyGrid HSM. Every error that reaches
// the API boundary carries a code from the KeyGrid vocabulary
// (pkg/apitypes), a public message safe to show a client, and an optional
// private cause that only goes to the server log.
//
// Callers match errors with errors.Is against the sentinels below (which
// compare codes) or errors.As to *Error; never by text.
package kgerr

import (
	"errors"
	"time"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// Code is an error code from the KeyGrid vocabulary.
type Code = apitypes.ErrorCode

// Error is a KeyGrid error.
type Error struct {
	Code    Code
	Message string // public: never a PIN, token, key byte or plaintext
	Cause   error  // private: logged, never sent to a client
	// RetryAfter, when set, is sent as the Retry-After header.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return string(e.Code) + ": " + e.Message + ": " + e.Cause.Error()
	}
	return string(e.Code) + ": " + e.Message
}

// Unwrap returns the private cause.
func (e *Error) Unwrap() error { return e.Cause }

// Is reports whether target is a *Error with the same code, so that
// errors.Is(err, kgerr.ErrKeyNotFound) matches any KEY_NOT_FOUND error.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels for errors.Is. Their messages are defaults; New gives specific ones.
var (
	ErrInvalidInput         = &Error{Code: apitypes.CodeInvalidInput, Message: "invalid input"}
	ErrUnsupportedAlgorithm = &Error{Code: apitypes.CodeUnsupportedAlgorithm, Message: "unsupported algorithm"}
	ErrKeyNotFound          = &Error{Code: apitypes.CodeKeyNotFound, Message: "key not found"}
	ErrProviderNotFound     = &Error{Code: apitypes.CodeProviderNotFound, Message: "provider not found"}
	ErrNotFound             = &Error{Code: apitypes.CodeNotFound, Message: "not found"}
	ErrKeyAlreadyExists     = &Error{Code: apitypes.CodeKeyAlreadyExists, Message: "a key with this name already exists"}
	ErrKeyInactive          = &Error{Code: apitypes.CodeKeyInactive, Message: "key is not active"}
	ErrKeyExpired           = &Error{Code: apitypes.CodeKeyExpired, Message: "key has expired"}
	ErrUsageNotPermitted    = &Error{Code: apitypes.CodeUsageNotPermitted, Message: "the key's usage does not permit this operation"}
	ErrConflict             = &Error{Code: apitypes.CodeConflict, Message: "the key was changed concurrently"}
	ErrDecryptionFailed     = &Error{Code: apitypes.CodeDecryptionFailed, Message: "decryption failed"}
	ErrAuthenticationFailed = &Error{Code: apitypes.CodeAuthenticationFailed, Message: "authentication failed"}
	ErrAuthorizationFailed  = &Error{Code: apitypes.CodeAuthorizationFailed, Message: "not allowed"}
	ErrPayloadTooLarge      = &Error{Code: apitypes.CodePayloadTooLarge, Message: "request too large"}
	ErrRateLimited          = &Error{Code: apitypes.CodeRateLimited, Message: "rate limit exceeded"}
	ErrServiceUnavailable   = &Error{Code: apitypes.CodeServiceUnavailable, Message: "service unavailable"}
	ErrHSMTimeout           = &Error{Code: apitypes.CodeHSMTimeout, Message: "the HSM did not answer in time"}
	ErrInternal             = &Error{Code: apitypes.CodeInternal, Message: "internal error"}
)

// New returns an error with a code and a public message.
func New(code Code, msg string) *Error { return &Error{Code: code, Message: msg} }

// Wrap returns an error with a code, a public message and a private cause.
func Wrap(code Code, cause error, msg string) *Error {
	return &Error{Code: code, Message: msg, Cause: cause}
}

// Invalid is shorthand for an INVALID_INPUT error.
func Invalid(msg string) *Error { return New(apitypes.CodeInvalidInput, msg) }

// As returns the *Error in err's chain, or an INTERNAL_ERROR wrapping err.
func As(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: apitypes.CodeInternal, Message: "internal error", Cause: err}
}

// CodeOf returns the code of err ("" for nil).
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	return As(err).Code
}
