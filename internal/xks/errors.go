package xks

import (
	"errors"
	"net/http"
	"strings"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// The XKS error names (the specification's error table).
const (
	ValidationException           = "ValidationException"
	InvalidStateException         = "InvalidStateException"
	InvalidCiphertextException    = "InvalidCiphertextException"
	InvalidKeyUsageException      = "InvalidKeyUsageException"
	AuthenticationFailedException = "AuthenticationFailedException"
	AccessDeniedException         = "AccessDeniedException"
	KeyNotFoundException          = "KeyNotFoundException"
	InvalidURIPathException       = "InvalidUriPathException"
	ThrottlingException           = "ThrottlingException"
	UnsupportedOperationException = "UnsupportedOperationException"
	DependencyTimeoutException    = "DependencyTimeoutException"
	InternalException             = "InternalException"
)

// Statuses is the HTTP status of each error name, as the specification's
// table gives it.
var Statuses = map[string]int{
	ValidationException:           http.StatusBadRequest,
	InvalidStateException:         http.StatusBadRequest,
	InvalidCiphertextException:    http.StatusBadRequest,
	InvalidKeyUsageException:      http.StatusBadRequest,
	AuthenticationFailedException: http.StatusUnauthorized,
	AccessDeniedException:         http.StatusForbidden,
	KeyNotFoundException:          http.StatusNotFound,
	InvalidURIPathException:       http.StatusNotFound,
	ThrottlingException:           http.StatusTooManyRequests,
	UnsupportedOperationException: http.StatusNotImplemented,
	DependencyTimeoutException:    http.StatusServiceUnavailable,
	InternalException:             http.StatusInternalServerError,
}

// names is the one table from the domain's error kinds to XKS error names.
// What only this front end refuses is made with the kind whose name it
// needs: a path that is no XKS route is KindNotFound (InvalidUriPathException),
// a value above this proxy's maximum KindTooLarge (UnsupportedOperationException).
var names = map[kgerr.Kind]string{
	kgerr.KindInvalidInput:         ValidationException,
	kgerr.KindUnsupportedAlgorithm: UnsupportedOperationException,
	kgerr.KindUsageNotPermitted:    InvalidKeyUsageException,
	kgerr.KindDecryptionFailed:     InvalidCiphertextException,
	kgerr.KindTooLarge:             UnsupportedOperationException,
	kgerr.KindUnauthenticated:      AuthenticationFailedException,
	kgerr.KindPermissionDenied:     AccessDeniedException,
	kgerr.KindRateLimited:          ThrottlingException,
	kgerr.KindKeyNotFound:          KeyNotFoundException,
	kgerr.KindProviderNotFound:     InternalException,
	kgerr.KindNotFound:             InvalidURIPathException,
	kgerr.KindAlreadyExists:        InternalException,
	kgerr.KindKeyInactive:          InvalidStateException,
	kgerr.KindKeyExpired:           InvalidStateException,
	// A key pending deletion, or a ciphertext of a version below the key's
	// min_decrypt_version: the key's state refuses it.
	kgerr.KindKeyPendingDeletion: InvalidStateException,
	kgerr.KindKeyVersionDisabled: InvalidStateException,
	kgerr.KindKeyNotExtractable:  InvalidStateException,
	kgerr.KindConflict:           InternalException,
	// An HSM that cannot be reached (or an audit log that cannot be
	// written) is a failure of the key manager; one that does not answer
	// in time, a dependency timeout.
	kgerr.KindUnavailable: InternalException,
	kgerr.KindTimeout:     DependencyTimeoutException,
	kgerr.KindInternal:    InternalException,
}

// errMethodNotAllowed answers anything but POST on an XKS route: 405, which
// the specification asks for and whose error name is no XKS one.
var errMethodNotAllowed = errors.New("XKS requests are POST requests")

// ErrorName returns the XKS error name of err.
func ErrorName(err error) string {
	if errors.Is(err, errMethodNotAllowed) {
		return ValidationException
	}
	if n, ok := names[kgerr.KindOf(err)]; ok {
		return n
	}
	return InternalException
}

// errorBody is an XKS error response.
type errorBody struct {
	ErrorName    string `json:"errorName"`
	ErrorMessage string `json:"errorMessage,omitempty"`
}

// maxMessage bounds errorMessage: the specification wants fewer than 512
// characters.
const maxMessage = 511

// publicMessage is the message a client may see: the error's public
// message, printable ASCII only, at most maxMessage characters.
func publicMessage(err error) string {
	msg := errMethodNotAllowed.Error()
	if !errors.Is(err, errMethodNotAllowed) {
		msg = kgerr.Classify(err).Message
	}
	var b strings.Builder
	for _, r := range msg {
		if b.Len() == maxMessage {
			break
		}
		if r < 0x20 || r > 0x7e {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// statusOf returns the HTTP status of err.
func statusOf(err error) int {
	if errors.Is(err, errMethodNotAllowed) {
		return http.StatusMethodNotAllowed
	}
	return Statuses[ErrorName(err)]
}
