package xks

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/keygrid/keygrid-hsm/internal/httpstack"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// Limits. The specification's minimums are 4300 bytes of plaintext (and
// ciphertext), 8192 bytes of AAD and 2048-character ARNs; beyond these
// maximums a request gets UnsupportedOperationException.
const (
	MaxPlaintext = 64 << 10
	// MaxAAD is what the AAD's two-byte length prefix can say.
	MaxAAD = 1<<16 - 1
	// MaxMetadataString bounds every requestMetadata string (ARNs, ids).
	MaxMetadataString = 4096
	// maxCiphertextMetadata is the specification's bound on
	// ciphertextMetadata.
	maxCiphertextMetadata = 20
	// maxBody bounds the body read before the signature is checked: room
	// for the largest plaintext and AAD in base64 and the metadata.
	maxBody = 256 << 10
)

// The operations, as their routes name them.
const (
	opHealth   = "health"
	opMetadata = "metadata"
	opEncrypt  = "encrypt"
	opDecrypt  = "decrypt"
)

// requestMetadata is the metadata KMS sends with every request. A nil field
// was absent.
type requestMetadata struct {
	AWSPrincipalArn *string `json:"awsPrincipalArn"`
	AWSSourceVpc    *string `json:"awsSourceVpc"`
	AWSSourceVpce   *string `json:"awsSourceVpce"`
	KMSKeyArn       *string `json:"kmsKeyArn"`
	KMSOperation    *string `json:"kmsOperation"`
	KMSRequestID    *string `json:"kmsRequestId"`
	KMSViaService   *string `json:"kmsViaService"`
}

// attributes are the metadata's fields for the audit record.
func (m *requestMetadata) attributes(into map[string]string) {
	if m == nil {
		return
	}
	for k, v := range map[string]*string{
		"awsPrincipalArn": m.AWSPrincipalArn, "awsSourceVpc": m.AWSSourceVpc, "awsSourceVpce": m.AWSSourceVpce,
		"kmsKeyArn": m.KMSKeyArn, "kmsOperation": m.KMSOperation, "kmsRequestId": m.KMSRequestID, "kmsViaService": m.KMSViaService,
	} {
		if v != nil {
			into[k] = *v
		}
	}
}

func (m *requestMetadata) kmsRequestID() string { return deref(m.KMSRequestID) }
func (m *requestMetadata) kmsOperation() string { return deref(m.KMSOperation) }

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// body is every operation's request body: each reads the fields it knows
// (fields of other operations, like unknown ones, are accepted and
// ignored).
type body struct {
	RequestMetadata     *requestMetadata `json:"requestMetadata"`
	Plaintext           *string          `json:"plaintext"`
	Ciphertext          *string          `json:"ciphertext"`
	CiphertextMetadata  *string          `json:"ciphertextMetadata"`
	EncryptionAlgorithm *string          `json:"encryptionAlgorithm"`
	AAD                 *string          `json:"additionalAuthenticatedData"`
	IV                  *string          `json:"initializationVector"`
	Tag                 *string          `json:"authenticationTag"`
	CDIVAlgorithm       *string          `json:"ciphertextDataIntegrityValueAlgorithm"`
}

// request is a decoded and validated request.
type request struct {
	md *requestMetadata
	// Encrypt and decrypt.
	plaintext, ciphertext, aad, iv, tag, cm []byte
	hasCM, cdiv                             bool
	// tooLarge is set when a value is above this proxy's maximum: it is
	// answered after the key and the policy are checked.
	tooLarge error
}

// readBody reads the request body, capped (an outer cap may be lower).
func readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	var mb *http.MaxBytesError
	switch {
	case errors.As(err, &mb):
		return nil, kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("the request body is larger than this proxy's %d bytes", mb.Limit))
	case err != nil:
		return nil, kgerr.Wrap(kgerr.KindInvalidInput, err, "the request body could not be read")
	case len(b) > maxBody:
		return nil, kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("the request body is larger than this proxy's %d bytes", maxBody))
	}
	return b, nil
}

// decode parses and validates the body of op. On a validation error the
// metadata decoded so far is still returned, for the audit record.
func decode(op string, raw []byte) (*request, error) {
	var b body
	// A key twice or in another case is read one way here and another by
	// whatever sits in front: refused.
	if err := httpstack.CheckStrict(raw, &b, true); err != nil {
		return &request{}, err
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return &request{}, kgerr.Invalid(fmt.Sprintf("field %s must be %s", kgerr.Clip(te.Field), jsonType(te)))
		}
		return &request{}, kgerr.Invalid("the request body is not a JSON object")
	}
	req := &request{md: b.RequestMetadata}
	if err := checkMetadata(op, b.RequestMetadata, req); err != nil {
		return req, err
	}
	var err error
	switch op {
	case opEncrypt:
		err = decodeEncrypt(&b, req)
	case opDecrypt:
		err = decodeDecrypt(&b, req)
	}
	return req, err
}

// checkMetadata checks the metadata op requires: present fields, their
// sizes. kmsOperation values are not checked (KMS adds new ones) and
// kmsRequestId is opaque (it may even be empty).
func checkMetadata(op string, m *requestMetadata, req *request) error {
	if m == nil {
		return kgerr.Invalid("requestMetadata is required")
	}
	required := map[string]*string{"kmsRequestId": m.KMSRequestID, "kmsOperation": m.KMSOperation}
	nonEmpty := []string{"kmsOperation"}
	switch op {
	case opMetadata:
		required["awsPrincipalArn"] = m.AWSPrincipalArn
		nonEmpty = append(nonEmpty, "awsPrincipalArn")
	case opEncrypt, opDecrypt:
		required["awsPrincipalArn"], required["kmsKeyArn"] = m.AWSPrincipalArn, m.KMSKeyArn
		nonEmpty = append(nonEmpty, "awsPrincipalArn", "kmsKeyArn")
	}
	for _, f := range []string{"kmsRequestId", "kmsOperation", "awsPrincipalArn", "kmsKeyArn"} {
		if v, ok := required[f]; ok && v == nil {
			return kgerr.Invalid("requestMetadata." + f + " is required")
		}
	}
	for _, f := range nonEmpty {
		if *required[f] == "" {
			return kgerr.Invalid("requestMetadata." + f + " must not be empty")
		}
	}
	for _, v := range []*string{m.AWSPrincipalArn, m.AWSSourceVpc, m.AWSSourceVpce, m.KMSKeyArn, m.KMSOperation, m.KMSRequestID, m.KMSViaService} {
		if v != nil && len(*v) > MaxMetadataString {
			req.tooLarge = kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("a requestMetadata value is longer than this proxy's %d characters", MaxMetadataString))
		}
	}
	return nil
}

func decodeEncrypt(b *body, req *request) error {
	var err error
	if req.plaintext, err = base64Field("plaintext", b.Plaintext, true); err != nil {
		return err
	}
	if req.aad, err = base64Field("additionalAuthenticatedData", b.AAD, false); err != nil {
		return err
	}
	if err := algorithm(b.EncryptionAlgorithm); err != nil {
		return err
	}
	if b.CDIVAlgorithm != nil {
		if *b.CDIVAlgorithm != "SHA_256" {
			return kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("ciphertextDataIntegrityValueAlgorithm %q is not supported (SHA_256 is)", kgerr.Clip(*b.CDIVAlgorithm)))
		}
		req.cdiv = true
	}
	switch {
	case len(req.plaintext) > MaxPlaintext:
		req.tooLarge = kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("plaintext is larger than this proxy's %d bytes", MaxPlaintext))
	case len(req.aad) > MaxAAD:
		req.tooLarge = kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("additionalAuthenticatedData is larger than this proxy's %d bytes", MaxAAD))
	}
	return nil
}

func decodeDecrypt(b *body, req *request) error {
	var err error
	if req.ciphertext, err = base64Field("ciphertext", b.Ciphertext, true); err != nil {
		return err
	}
	if req.aad, err = base64Field("additionalAuthenticatedData", b.AAD, false); err != nil {
		return err
	}
	if req.iv, err = base64Field("initializationVector", b.IV, true); err != nil {
		return err
	}
	if req.tag, err = base64Field("authenticationTag", b.Tag, true); err != nil {
		return err
	}
	if req.cm, err = base64Field("ciphertextMetadata", b.CiphertextMetadata, false); err != nil {
		return err
	}
	req.hasCM = b.CiphertextMetadata != nil
	if err := algorithm(b.EncryptionAlgorithm); err != nil {
		return err
	}
	switch {
	case len(req.iv) != 12 && len(req.iv) != 16:
		return kgerr.Invalid(fmt.Sprintf("initializationVector is %d bytes; it must be 12 or 16", len(req.iv)))
	case len(req.tag) != 16:
		return kgerr.Invalid(fmt.Sprintf("authenticationTag is %d bytes; it must be 16", len(req.tag)))
	case len(req.cm) > maxCiphertextMetadata:
		return kgerr.Invalid(fmt.Sprintf("ciphertextMetadata is %d bytes; it must be at most %d", len(req.cm), maxCiphertextMetadata))
	case len(req.ciphertext) > MaxPlaintext:
		req.tooLarge = kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("ciphertext is larger than this proxy's %d bytes", MaxPlaintext))
	case len(req.aad) > MaxAAD:
		req.tooLarge = kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("additionalAuthenticatedData is larger than this proxy's %d bytes", MaxAAD))
	}
	return nil
}

// binary decodes a standard, padded base64 field. A required field must be
// present and not empty.
func base64Field(name string, v *string, required bool) ([]byte, error) {
	if v == nil {
		if required {
			return nil, kgerr.Invalid(name + " is required")
		}
		return nil, nil
	}
	b, err := base64.StdEncoding.Strict().DecodeString(*v)
	if err != nil {
		return nil, kgerr.Invalid(name + " is not standard base64")
	}
	if required && len(b) == 0 {
		return nil, kgerr.Invalid(name + " must not be empty")
	}
	return b, nil
}

// algorithm checks encryptionAlgorithm: required, and AES_GCM is the one
// this version of the specification has.
func algorithm(v *string) error {
	switch {
	case v == nil:
		return kgerr.Invalid("encryptionAlgorithm is required")
	case *v != "AES_GCM":
		return kgerr.New(kgerr.KindUnsupportedAlgorithm, fmt.Sprintf("encryptionAlgorithm %q is not supported (AES_GCM is)", kgerr.Clip(*v)))
	}
	return nil
}

func jsonType(te *json.UnmarshalTypeError) string {
	switch te.Type.Kind().String() {
	case "string":
		return "a string"
	case "struct", "map":
		return "an object"
	}
	return "of type " + te.Type.String()
}

// The responses.

type metadataResponse struct {
	KeySpec   string   `json:"keySpec"`
	KeyUsage  []string `json:"keyUsage"`
	KeyStatus string   `json:"keyStatus"`
}

type encryptResponse struct {
	Ciphertext                   []byte `json:"ciphertext"`
	CiphertextMetadata           []byte `json:"ciphertextMetadata,omitempty"`
	InitializationVector         []byte `json:"initializationVector"`
	AuthenticationTag            []byte `json:"authenticationTag"`
	CiphertextDataIntegrityValue []byte `json:"ciphertextDataIntegrityValue,omitempty"`
}

type decryptResponse struct {
	Plaintext []byte `json:"plaintext"`
}

type healthResponse struct {
	XksProxyFleetSize int         `json:"xksProxyFleetSize"`
	XksProxyVendor    string      `json:"xksProxyVendor"`
	XksProxyModel     string      `json:"xksProxyModel"`
	EkmVendor         string      `json:"ekmVendor"`
	EkmFleetDetails   []ekmDetail `json:"ekmFleetDetails"`
}

type ekmDetail struct {
	ID           string `json:"id"`
	Model        string `json:"model"`
	HealthStatus string `json:"healthStatus"`
}
