// Package kgerr is the one error vocabulary of KeyGrid HSM's domain. An
// error has a Kind (what went wrong, in the domain's terms), a public
// message safe to show a client, and an optional private cause that only
// goes to the server log. Each front end maps kinds to its own protocol in
// one table (the REST API to HTTP statuses and its error codes, the XKS
// front end to the XKS error names); the domain knows no wire format.
//
// Callers match errors with errors.Is against the sentinels below (which
// compare kinds) or errors.As to *Error; never by text. Classify is the one
// classifier of errors that are not yet an *Error (context deadlines,
// cancellations, anything else).
package kgerr

import (
	"context"
	"errors"
	"time"
)

// Kind is what went wrong. Its value is KeyGrid's name for it, the word the
// audit log records (and, as it happens, the REST API's error code).
type Kind string

// The kinds.
const (
	// The caller's fault.
	KindInvalidInput         Kind = "INVALID_INPUT"
	KindUnsupportedAlgorithm Kind = "UNSUPPORTED_ALGORITHM"
	KindUsageNotPermitted    Kind = "USAGE_NOT_PERMITTED"
	KindDecryptionFailed     Kind = "DECRYPTION_FAILED"
	KindTooLarge             Kind = "PAYLOAD_TOO_LARGE"
	// Who the caller is and what it may do.
	KindUnauthenticated  Kind = "AUTHENTICATION_FAILED"
	KindPermissionDenied Kind = "AUTHORIZATION_FAILED"
	KindRateLimited      Kind = "RATE_LIMITED"
	// What the caller named does not exist.
	KindKeyNotFound      Kind = "KEY_NOT_FOUND"
	KindProviderNotFound Kind = "PROVIDER_NOT_FOUND"
	KindNotFound         Kind = "NOT_FOUND"
	// The key's state does not allow it.
	KindAlreadyExists Kind = "KEY_ALREADY_EXISTS"
	KindKeyInactive   Kind = "KEY_INACTIVE"
	KindKeyExpired    Kind = "KEY_EXPIRED"
	// KindKeyPendingDeletion: the key is scheduled for deletion (or being
	// destroyed); it refuses every operation until the deletion is
	// cancelled.
	KindKeyPendingDeletion Kind = "KEY_PENDING_DELETION"
	// KindKeyVersionDisabled: the version asked for is below the key's
	// min_decrypt_version.
	KindKeyVersionDisabled Kind = "KEY_VERSION_DISABLED"
	KindConflict           Kind = "CONFLICT"
	// KindKeyNotExtractable: an export of a key not made extractable.
	KindKeyNotExtractable Kind = "KEY_NOT_EXTRACTABLE"
	// Ours, or a dependency's.
	KindUnavailable Kind = "SERVICE_UNAVAILABLE"
	KindTimeout     Kind = "HSM_TIMEOUT"
	KindInternal    Kind = "INTERNAL_ERROR"
)

// Kinds lists every kind (front ends' tables are checked against it).
var Kinds = []Kind{
	KindInvalidInput, KindUnsupportedAlgorithm, KindUsageNotPermitted, KindDecryptionFailed, KindTooLarge,
	KindUnauthenticated, KindPermissionDenied, KindRateLimited,
	KindKeyNotFound, KindProviderNotFound, KindNotFound,
	KindAlreadyExists, KindKeyInactive, KindKeyExpired, KindKeyPendingDeletion, KindKeyVersionDisabled, KindConflict,
	KindKeyNotExtractable,
	KindUnavailable, KindTimeout, KindInternal,
}

// Error is a KeyGrid error.
type Error struct {
	Kind    Kind
	Message string // public: never a PIN, token, key byte or plaintext
	Cause   error  // private: logged, never sent to a client
	// RetryAfter, when set, tells the client when to try again.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return string(e.Kind) + ": " + e.Message + ": " + e.Cause.Error()
	}
	return string(e.Kind) + ": " + e.Message
}

// Unwrap returns the private cause.
func (e *Error) Unwrap() error { return e.Cause }

// Is reports whether target is a *Error of the same kind, so that
// errors.Is(err, kgerr.ErrKeyNotFound) matches any KEY_NOT_FOUND error.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Kind == e.Kind
}

// Sentinels for errors.Is. Their messages are defaults; New gives specific ones.
var (
	ErrInvalidInput         = &Error{Kind: KindInvalidInput, Message: "invalid input"}
	ErrUnsupportedAlgorithm = &Error{Kind: KindUnsupportedAlgorithm, Message: "unsupported algorithm"}
	ErrKeyNotFound          = &Error{Kind: KindKeyNotFound, Message: "key not found"}
	ErrProviderNotFound     = &Error{Kind: KindProviderNotFound, Message: "provider not found"}
	ErrNotFound             = &Error{Kind: KindNotFound, Message: "not found"}
	ErrKeyAlreadyExists     = &Error{Kind: KindAlreadyExists, Message: "a key with this name already exists"}
	ErrKeyInactive          = &Error{Kind: KindKeyInactive, Message: "key is not active"}
	ErrKeyExpired           = &Error{Kind: KindKeyExpired, Message: "key has expired"}
	ErrKeyPendingDeletion   = &Error{Kind: KindKeyPendingDeletion, Message: "the key is pending deletion"}
	ErrKeyVersionDisabled   = &Error{Kind: KindKeyVersionDisabled, Message: "the key version is below the key's min_decrypt_version"}
	ErrUsageNotPermitted    = &Error{Kind: KindUsageNotPermitted, Message: "the key's usage does not permit this operation"}
	ErrConflict             = &Error{Kind: KindConflict, Message: "the key was changed concurrently"}
	ErrDecryptionFailed     = &Error{Kind: KindDecryptionFailed, Message: "decryption failed"}
	ErrAuthenticationFailed = &Error{Kind: KindUnauthenticated, Message: "authentication failed"}
	ErrAuthorizationFailed  = &Error{Kind: KindPermissionDenied, Message: "not allowed"}
	ErrPayloadTooLarge      = &Error{Kind: KindTooLarge, Message: "request too large"}
	ErrRateLimited          = &Error{Kind: KindRateLimited, Message: "rate limit exceeded"}
	ErrServiceUnavailable   = &Error{Kind: KindUnavailable, Message: "service unavailable"}
	ErrTimeout              = &Error{Kind: KindTimeout, Message: "the request did not finish before its deadline"}
	ErrInternal             = &Error{Kind: KindInternal, Message: "internal error"}
)

// New returns an error of a kind with a public message.
func New(kind Kind, msg string) *Error { return &Error{Kind: kind, Message: msg} }

// Wrap returns an error of a kind with a public message and a private cause.
func Wrap(kind Kind, cause error, msg string) *Error {
	return &Error{Kind: kind, Message: msg, Cause: cause}
}

// Invalid is shorthand for an INVALID_INPUT error.
func Invalid(msg string) *Error { return New(KindInvalidInput, msg) }

// Classify returns the *Error in err's chain; an error that is none is
// classified here, once for every front end and the audit log: a passed
// deadline (wherever it passed: HSM, store, audit) is a timeout, a
// cancelled request unavailable, anything else internal. Classify(nil) is
// nil.
func Classify(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, context.DeadlineExceeded):
		return Wrap(KindTimeout, err, "the request did not finish before its deadline")
	case errors.Is(err, context.Canceled):
		return Wrap(KindUnavailable, err, "the request was cancelled")
	}
	return Wrap(KindInternal, err, "internal error")
}

// KindOf returns the kind of err as Classify sees it ("" for nil).
func KindOf(err error) Kind {
	if err == nil {
		return ""
	}
	return Classify(err).Kind
}
