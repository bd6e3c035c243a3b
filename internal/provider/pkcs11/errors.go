package pkcs11

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// class is what a failure means for the session and the module.
type class int

const (
	// classOp: the operation failed; the session is fine (but is closed
	// anyway if an operation may be left active on it).
	classOp class = iota
	// classSession: this session is broken; drop it.
	classSession
	// classReset: the module, token or login is gone; reset the module.
	classReset
	// classBusy: the HSM is busy (CloudHSM's CKR_FUNCTION_FAILED); an
	// idempotent operation may be retried after a pause.
	classBusy
)

// ckrCode returns the CKR_* code in err's chain.
func ckrCode(err error) (uint, bool) {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return uint(e), true
	}
	return 0, false
}

// ckrName is the name of a CKR code, as "CKR_PIN_INCORRECT".
func ckrName(code uint) string {
	s := pkcs11.Error(code).Error() // "pkcs11: 0xA0: CKR_PIN_INCORRECT"
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.HasPrefix(s[i+2:], "CKR_") {
		return s[i+2:]
	}
	return fmt.Sprintf("CKR_%#x", code)
}

// classify tells what a PKCS#11 failure means. busyIsFunctionFailed is set
// on CloudHSM, which reports a busy HSM as CKR_FUNCTION_FAILED.
func classify(err error, busyIsFunctionFailed bool) class {
	code, ok := ckrCode(err)
	if !ok {
		return classOp
	}
	switch code {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED:
		return classSession
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_SLOT_ID_INVALID,
		pkcs11.CKR_TOKEN_NOT_RECOGNIZED, pkcs11.CKR_DEVICE_MEMORY:
		return classReset
	case pkcs11.CKR_FUNCTION_FAILED:
		if busyIsFunctionFailed {
			return classBusy
		}
	}
	return classOp
}

// opKind is the kind of call, which decides what some codes mean
// (CKR_GENERAL_ERROR in a decrypt is SoftHSM2's "tag does not match").
type opKind int

const (
	opOther opKind = iota
	opDecrypt
	opUnwrap
	opCreate
)

// toError maps a PKCS#11 failure to the gateway's error, on the numeric
// code. The message names the code (never a PIN or data).
func toError(err error, kind opKind) error {
	if err == nil {
		return nil
	}
	var ke *kgerr.Error
	code, ok := ckrCode(err)
	if !ok || errors.As(err, &ke) {
		return kgerr.Classify(err) // already ours, a deadline, a cancellation, …
	}
	name := ckrName(code)
	switch code {
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE, pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_PIN_LOCKED:
		return kgerr.Wrap(kgerr.KindUnauthenticated, err, "the HSM refused the configured PIN ("+name+")")
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_SESSION_HANDLE_INVALID,
		pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_SLOT_ID_INVALID, pkcs11.CKR_DEVICE_MEMORY, pkcs11.CKR_SESSION_COUNT:
		return kgerr.Wrap(kgerr.KindUnavailable, err, "the HSM is unavailable ("+name+")")
	case pkcs11.CKR_FUNCTION_FAILED:
		return kgerr.Wrap(kgerr.KindUnavailable, err, "the HSM could not complete the operation ("+name+")")
	case pkcs11.CKR_KEY_HANDLE_INVALID, pkcs11.CKR_OBJECT_HANDLE_INVALID:
		return kgerr.Wrap(kgerr.KindKeyNotFound, err, "the key's objects are not on the token")
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_KEY_TYPE_INCONSISTENT,
		pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, pkcs11.CKR_KEY_SIZE_RANGE, pkcs11.CKR_TEMPLATE_INCONSISTENT,
		pkcs11.CKR_FUNCTION_NOT_SUPPORTED, pkcs11.CKR_KEY_UNEXTRACTABLE, pkcs11.CKR_KEY_NOT_WRAPPABLE:
		return kgerr.Wrap(kgerr.KindUnsupportedAlgorithm, err, "the token does not support this ("+name+")")
	case pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, pkcs11.CKR_WRAPPED_KEY_INVALID,
		pkcs11.CKR_WRAPPED_KEY_LEN_RANGE, pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID:
		return kgerr.Wrap(kgerr.KindDecryptionFailed, err, "decryption failed: the ciphertext does not authenticate under this key")
	case pkcs11.CKR_DATA_LEN_RANGE, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID:
		if kind == opDecrypt || kind == opUnwrap {
			return kgerr.Wrap(kgerr.KindDecryptionFailed, err, "decryption failed ("+name+")")
		}
		return kgerr.Wrap(kgerr.KindInvalidInput, err, "the token refused the input ("+name+")")
	case pkcs11.CKR_GENERAL_ERROR:
		if kind == opDecrypt || kind == opUnwrap {
			// SoftHSM2 reports a GCM tag mismatch, an OAEP padding error and
			// a failed unwrap integrity check this way.
			return kgerr.Wrap(kgerr.KindDecryptionFailed, err, "decryption failed: the ciphertext does not authenticate under this key")
		}
	}
	return kgerr.Wrap(kgerr.KindInternal, err, fmt.Sprintf("the HSM failed (%s)", name))
}
