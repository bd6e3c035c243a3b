package xks

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// TestCDIVSpecExample reproduces the worked example of the specification's
// Appendix C: the fields of its Encrypt response example, the 86 bytes
// they make, and the value it shows.
func TestCDIVSpecExample(t *testing.T) {
	b64 := func(s string) []byte {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	aad := b64("cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n")
	cm := b64("a2V5X3ZlcnNpb249MQ==")
	iv := b64("HMrlRw85cAJUd5Ax")
	ct := b64("ghxkK1txeDNn3q8Y")
	tag := b64("vBxN2ncH1oEkR8WVXpmyYQ==")
	if string(aad) != "project=nile,department=marketing" || string(cm) != "key_version=1" {
		t.Fatalf("aad %q cm %q", aad, cm)
	}
	all := bytes.Join([][]byte{aad, cm, iv, ct, tag}, nil)
	wantHex := "70726f6a6563743d6e696c652c6465706172746d656e743d6d61726b6574696e67" + // 33 bytes of AAD
		"6b65795f76657273696f6e3d31" + // 13 bytes of ciphertextMetadata
		"1ccae5470f39700254779031" + // 12 bytes of IV
		"821c642b5b71783367deaf18" + // 12 bytes of ciphertext
		"bc1c4dda7707d6812447c5955e99b261" // 16 bytes of tag
	if len(all) != 86 || hex.EncodeToString(all) != wantHex {
		t.Fatalf("the 86 bytes: %x", all)
	}
	got := CDIV(aad, cm, iv, ct, tag)
	if hex.EncodeToString(got) != "a8703f2260bd8791ec2d15ea0b23e65a0631eedcf2a13a65cc82db3f47cf5ec7" ||
		base64.StdEncoding.EncodeToString(got) != "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc=" {
		t.Fatalf("CDIV %x", got)
	}
	// Absent fields are empty strings.
	if !bytes.Equal(CDIV(nil, nil, iv, ct, tag), CDIV([]byte{}, []byte{}, iv, ct, tag)) {
		t.Fatal("nil and empty differ")
	}
}

func TestHSMAAD(t *testing.T) {
	cases := []struct {
		name    string
		aad, cm []byte
		want    string
	}{
		{"none", nil, nil, "000000"},
		{"aad only", []byte("ab"), nil, "0002616200"},
		{"cm only", nil, []byte{9}, "00000109"},
		{"both", []byte("a"), []byte{1, 2}, "000161020102"},
	}
	for _, tc := range cases {
		if got := hex.EncodeToString(hsmAAD(tc.aad, tc.cm)); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
	// The lengths keep apart what concatenation would not: no AAD and
	// metadata m versus AAD m and no metadata.
	m := ciphertextMetadata(1)
	if bytes.Equal(hsmAAD(nil, m), hsmAAD(m, nil)) {
		t.Fatal("moving the metadata into the AAD gives the same additional data")
	}
	if n := len(hsmAAD(make([]byte, MaxAAD), m)); n != 2+MaxAAD+1+cmLen {
		t.Fatalf("largest AAD: %d bytes", n)
	}
}

func TestCiphertextMetadata(t *testing.T) {
	for _, v := range []int{1, 2, 300, 1<<31 - 1} {
		cm := ciphertextMetadata(v)
		if len(cm) > maxCiphertextMetadata {
			t.Fatalf("%d bytes", len(cm))
		}
		got, err := parseCiphertextMetadata(cm)
		if err != nil || got != v {
			t.Fatalf("version %d: %d %v", v, got, err)
		}
	}
	for _, bad := range [][]byte{nil, {1}, []byte("key_version=1"), {'K', 'G', 2, 0, 0, 0, 1}, {'K', 'G', 1, 0, 0, 0, 0}, {'K', 'G', 1, 0xff, 0, 0, 0}} {
		if _, err := parseCiphertextMetadata(bad); !errors.Is(err, kgerr.ErrDecryptionFailed) {
			t.Errorf("%x: %v", bad, err)
		}
	}
}

func TestGlob(t *testing.T) {
	cases := []struct {
		pat, s string
		want   bool
	}{
		{"arn:aws:iam::123456789012:*", "arn:aws:iam::123456789012:user/Alice", true},
		{"arn:aws:iam::123456789012:*", "arn:aws:iam::123456789013:user/Alice", false},
		{"arn:aws:iam::*:role/xks-*", "arn:aws:iam::1:role/xks-reader", true},
		{"arn:aws:iam::*:role/xks-*", "arn:aws:iam::1:role/other", false},
		{"Encrypt", "Encrypt", true},
		{"Encrypt", "ReEncrypt", false},
		{"*Encrypt", "ReEncrypt", true},
		{"?ncrypt", "Encrypt", true},
		{"", "", true},
		{"", "ebs", false},
		{"*", "", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
	}
	for _, tc := range cases {
		if got := glob(tc.pat, tc.s); got != tc.want {
			t.Errorf("glob(%q, %q) = %v", tc.pat, tc.s, got)
		}
	}
}

func TestParseAuthorization(t *testing.T) {
	sig := strings.Repeat("ab", 32)
	good := "AWS4-HMAC-SHA256 Credential=AKIAI2SFODNN7EXAMPLE/20221010/us-east-1/kms-xks-proxy/aws4_request, SignedHeaders=host;x-amz-date, Signature=" + sig
	a, err := parseAuthorization(good)
	if err != nil || a.accessKeyID != "AKIAI2SFODNN7EXAMPLE" || a.date != "20221010" || a.region != "us-east-1" ||
		a.service != "kms-xks-proxy" || a.terminator != "aws4_request" || a.signedHeaders != "host;x-amz-date" || a.signature != sig {
		t.Fatalf("%+v %v", a, err)
	}
	// curl writes no space after the commas.
	if _, err := parseAuthorization(strings.ReplaceAll(good, ", ", ",")); err != nil {
		t.Fatal(err)
	}
	for name, h := range map[string]string{
		"other scheme":       strings.Replace(good, "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512", 1),
		"no scheme":          strings.TrimPrefix(good, "AWS4-HMAC-SHA256 "),
		"short credential":   strings.Replace(good, "/aws4_request", "", 1),
		"no signature":       strings.Split(good, ", Signature")[0],
		"upper-case hex":     strings.Replace(good, sig, strings.ToUpper(sig), 1),
		"short signature":    strings.Replace(good, sig, sig[:62], 1),
		"non-hex signature":  strings.Replace(good, sig, "zz"+sig[2:], 1),
		"repeated part":      good + ", Signature=" + sig,
		"unknown part":       good + ", Foo=bar",
		"part without value": good + ", Foo",
		"empty":              "",
	} {
		if _, err := parseAuthorization(h); !errors.Is(err, kgerr.ErrAuthenticationFailed) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestSignedHeaderList(t *testing.T) {
	for _, ok := range []string{"host;x-amz-date", "content-type;host;x-amz-date", "host;x-amz-content-sha256;x-amz-date"} {
		if _, err := signedHeaderList(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "host", "x-amz-date", "x-amz-date;host", "Host;x-amz-date", "host;host;x-amz-date", "host;;x-amz-date", "host;x amz;x-amz-date"} {
		if _, err := signedHeaderList(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestErrorTable checks the one table: every kind has an XKS name, every
// name its status from the specification, and each of the specification's
// names is the answer to some kind.
func TestErrorTable(t *testing.T) {
	reached := map[string]bool{}
	for _, k := range kgerr.Kinds {
		n, ok := names[k]
		if !ok {
			t.Errorf("kind %s has no XKS error name", k)
		}
		if _, ok := Statuses[n]; !ok {
			t.Errorf("kind %s: name %q is not the specification's", k, n)
		}
		reached[n] = true
	}
	for n := range Statuses {
		if !reached[n] {
			t.Errorf("%s is no kind's answer", n)
		}
	}
	want := map[string]int{"ValidationException": 400, "InvalidStateException": 400, "InvalidCiphertextException": 400,
		"InvalidKeyUsageException": 400, "AuthenticationFailedException": 401, "AccessDeniedException": 403,
		"KeyNotFoundException": 404, "InvalidUriPathException": 404, "ThrottlingException": 429,
		"UnsupportedOperationException": 501, "DependencyTimeoutException": 503, "InternalException": 500}
	if len(want) != len(Statuses) {
		t.Fatalf("%d names, want %d", len(Statuses), len(want))
	}
	for n, s := range want {
		if Statuses[n] != s {
			t.Errorf("%s: %d, want %d", n, Statuses[n], s)
		}
	}
	if statusOf(errMethodNotAllowed) != http.StatusMethodNotAllowed {
		t.Error("method not allowed is not 405")
	}
	// An error that is no *kgerr.Error is internal; a passed deadline a
	// dependency timeout.
	if ErrorName(errors.New("x")) != InternalException || ErrorName(fmt.Errorf("store: %w", context.DeadlineExceeded)) != DependencyTimeoutException {
		t.Error("unclassified errors")
	}
}

func TestPublicMessage(t *testing.T) {
	long := kgerr.Invalid(strings.Repeat("é", 600) + "\n")
	m := publicMessage(long)
	if len(m) != maxMessage {
		t.Fatalf("%d characters", len(m))
	}
	for _, r := range m {
		if r < 0x20 || r > 0x7e {
			t.Fatalf("character %q", r)
		}
	}
	if got := publicMessage(kgerr.Wrap(kgerr.KindInternal, errors.New("secret cause"), "internal error")); got != "internal error" {
		t.Fatalf("%q", got)
	}
}

func TestDecode(t *testing.T) {
	md := `"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::1:user/a","kmsKeyArn":"arn:aws:kms:us-east-1:1:key/k","kmsOperation":"Encrypt","kmsRequestId":"r"}`
	b64 := func(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }
	enc := func(extra string) string {
		return `{` + md + `,"plaintext":"` + b64(12) + `","encryptionAlgorithm":"AES_GCM"` + extra + `}`
	}
	dec := func(extra string) string {
		return `{` + md + `,"ciphertext":"` + b64(12) + `","encryptionAlgorithm":"AES_GCM","initializationVector":"` + b64(12) +
			`","authenticationTag":"` + b64(16) + `","ciphertextMetadata":"` + b64(7) + `"` + extra + `}`
	}
	cases := []struct {
		name, op, body string
		kind           kgerr.Kind // "": valid
		tooLarge       bool
	}{
		{"ok health", opHealth, `{"requestMetadata":{"kmsRequestId":"x","kmsOperation":"KmsHealthCheck"}}`, "", false},
		{"ok health empty request id", opHealth, `{"requestMetadata":{"kmsRequestId":"","kmsOperation":"KmsHealthCheck"}}`, "", false},
		{"ok health unknown fields and operation", opHealth, `{"requestMetadata":{"kmsRequestId":"x","kmsOperation":"BulkHealth","newField":{"a":[1]}},"other":1}`, "", false},
		{"fail health empty object", opHealth, `{}`, kgerr.KindInvalidInput, false},
		{"fail health empty metadata", opHealth, `{"requestMetadata":{}}`, kgerr.KindInvalidInput, false},
		{"fail health no operation", opHealth, `{"requestMetadata":{"kmsRequestId":"x"}}`, kgerr.KindInvalidInput, false},
		{"fail not json", opHealth, `{`, kgerr.KindInvalidInput, false},
		{"fail array", opHealth, `[]`, kgerr.KindInvalidInput, false},
		{"fail metadata not an object", opHealth, `{"requestMetadata":"x"}`, kgerr.KindInvalidInput, false},
		{"fail request id a number", opHealth, `{"requestMetadata":{"kmsRequestId":1,"kmsOperation":"x"}}`, kgerr.KindInvalidInput, false},
		{"ok metadata without key arn", opMetadata, `{"requestMetadata":{"awsPrincipalArn":"a","kmsOperation":"CreateKey","kmsRequestId":"r"}}`, "", false},
		{"fail metadata no principal", opMetadata, `{"requestMetadata":{"kmsOperation":"CreateKey","kmsRequestId":"r"}}`, kgerr.KindInvalidInput, false},
		{"fail metadata empty principal", opMetadata, `{"requestMetadata":{"awsPrincipalArn":"","kmsOperation":"CreateKey","kmsRequestId":"r"}}`, kgerr.KindInvalidInput, false},
		{"ok encrypt", opEncrypt, enc(""), "", false},
		{"ok encrypt aad cdiv", opEncrypt, enc(`,"additionalAuthenticatedData":"` + b64(8192) + `","ciphertextDataIntegrityValueAlgorithm":"SHA_256"`), "", false},
		{"fail encrypt no key arn", opEncrypt, strings.Replace(enc(""), `"kmsKeyArn":"arn:aws:kms:us-east-1:1:key/k",`, "", 1), kgerr.KindInvalidInput, false},
		{"fail encrypt no plaintext", opEncrypt, `{` + md + `,"encryptionAlgorithm":"AES_GCM"}`, kgerr.KindInvalidInput, false},
		{"fail encrypt empty plaintext", opEncrypt, `{` + md + `,"plaintext":"","encryptionAlgorithm":"AES_GCM"}`, kgerr.KindInvalidInput, false},
		{"fail encrypt plaintext not base64", opEncrypt, `{` + md + `,"plaintext":"a*b=","encryptionAlgorithm":"AES_GCM"}`, kgerr.KindInvalidInput, false},
		{"fail encrypt url-safe base64", opEncrypt, `{` + md + `,"plaintext":"-_-_","encryptionAlgorithm":"AES_GCM"}`, kgerr.KindInvalidInput, false},
		{"fail encrypt no algorithm", opEncrypt, `{` + md + `,"plaintext":"AAAA"}`, kgerr.KindInvalidInput, false},
		{"fail encrypt other algorithm", opEncrypt, `{` + md + `,"plaintext":"AAAA","encryptionAlgorithm":"AES_CBC"}`, kgerr.KindUnsupportedAlgorithm, false},
		{"fail encrypt other cdiv algorithm", opEncrypt, enc(`,"ciphertextDataIntegrityValueAlgorithm":"SHA_512"`), kgerr.KindUnsupportedAlgorithm, false},
		{"too large plaintext", opEncrypt, `{` + md + `,"plaintext":"` + b64(MaxPlaintext+1) + `","encryptionAlgorithm":"AES_GCM"}`, "", true},
		{"ok spec minimum plaintext", opEncrypt, `{` + md + `,"plaintext":"` + b64(4300) + `","encryptionAlgorithm":"AES_GCM"}`, "", false},
		{"too large aad", opEncrypt, enc(`,"additionalAuthenticatedData":"` + b64(MaxAAD+1) + `"`), "", true},
		{"too large arn", opEncrypt, strings.Replace(enc(""), "arn:aws:iam::1:user/a", "arn:aws:iam::1:user/"+strings.Repeat("a", MaxMetadataString), 1), "", true},
		{"ok spec minimum arn", opEncrypt, strings.Replace(enc(""), "arn:aws:iam::1:user/a", "arn:aws:iam::1:user/"+strings.Repeat("a", 2048-21), 1), "", false},
		{"ok decrypt", opDecrypt, dec(""), "", false},
		{"ok decrypt 16-byte iv", opDecrypt, strings.Replace(dec(""), `"initializationVector":"`+b64(12), `"initializationVector":"`+b64(16), 1), "", false},
		{"fail decrypt 8-byte iv", opDecrypt, strings.Replace(dec(""), `"initializationVector":"`+b64(12), `"initializationVector":"`+b64(8), 1), kgerr.KindInvalidInput, false},
		{"fail decrypt 12-byte tag", opDecrypt, strings.Replace(dec(""), `"authenticationTag":"`+b64(16), `"authenticationTag":"`+b64(12), 1), kgerr.KindInvalidInput, false},
		{"fail decrypt 21-byte metadata", opDecrypt, strings.Replace(dec(""), `"ciphertextMetadata":"`+b64(7), `"ciphertextMetadata":"`+b64(21), 1), kgerr.KindInvalidInput, false},
		{"fail decrypt no tag", opDecrypt, strings.Replace(dec(""), `"authenticationTag":"`+b64(16)+`",`, "", 1), kgerr.KindInvalidInput, false},
		{"too large ciphertext", opDecrypt, strings.Replace(dec(""), `"ciphertext":"`+b64(12), `"ciphertext":"`+b64(MaxPlaintext+1), 1), "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := decode(tc.op, []byte(tc.body))
			switch {
			case tc.kind == "" && err != nil:
				t.Fatalf("unexpected %v", err)
			case tc.kind != "" && kgerr.KindOf(err) != tc.kind:
				t.Fatalf("error %v, want %s", err, tc.kind)
			case tc.kind == "" && (req.tooLarge != nil) != tc.tooLarge:
				t.Fatalf("tooLarge %v", req.tooLarge)
			}
		})
	}
}

// FuzzParseAuthorization: the Authorization parser faces the network.
func FuzzParseAuthorization(f *testing.F) {
	f.Add("AWS4-HMAC-SHA256 Credential=AKIAI2SFODNN7EXAMPLE/20221010/us-east-1/kms-xks-proxy/aws4_request, SignedHeaders=host;x-amz-date, Signature=" + strings.Repeat("0a", 32))
	f.Add("AWS4-HMAC-SHA256 Credential=/,,=,SignedHeaders=;")
	f.Fuzz(func(t *testing.T, h string) {
		a, err := parseAuthorization(h)
		if err == nil && (len(a.signature) != 64 || !strings.HasPrefix(h, "AWS4-HMAC-SHA256 ")) {
			t.Fatalf("accepted %q as %+v", h, a)
		}
		if err != nil && !errors.Is(err, kgerr.ErrAuthenticationFailed) {
			t.Fatalf("error of another kind: %v", err)
		}
	})
}

// FuzzDecode: request bodies face the network; decode must answer every
// one with a request or a ValidationException / UnsupportedOperation, and
// never panic.
func FuzzDecode(f *testing.F) {
	f.Add(opEncrypt, `{"requestMetadata":{"awsPrincipalArn":"a","kmsKeyArn":"k","kmsOperation":"Encrypt","kmsRequestId":"r"},"plaintext":"AAAA","encryptionAlgorithm":"AES_GCM"}`)
	f.Add(opDecrypt, `{"requestMetadata":{"awsPrincipalArn":"a","kmsKeyArn":"k","kmsOperation":"Decrypt","kmsRequestId":"r"},"ciphertext":"AAAA","initializationVector":"AAAAAAAAAAAAAAAA","authenticationTag":"AAAAAAAAAAAAAAAAAAAAAA==","encryptionAlgorithm":"AES_GCM"}`)
	f.Add(opHealth, `{"requestMetadata":{"kmsRequestId":"","kmsOperation":""}}`)
	f.Add(opMetadata, `null`)
	f.Fuzz(func(t *testing.T, op, body string) {
		switch op {
		case opHealth, opMetadata, opEncrypt, opDecrypt:
		default:
			return
		}
		req, err := decode(op, []byte(body))
		if req == nil {
			t.Fatal("nil request")
		}
		if err != nil {
			if k := kgerr.KindOf(err); k != kgerr.KindInvalidInput && k != kgerr.KindUnsupportedAlgorithm {
				t.Fatalf("kind %s", k)
			}
			return
		}
		if req.md == nil || req.md.KMSRequestID == nil || req.md.KMSOperation == nil {
			t.Fatalf("valid without required metadata: %q", body)
		}
		if op == opDecrypt && (len(req.tag) != 16 || (len(req.iv) != 12 && len(req.iv) != 16)) {
			t.Fatalf("decrypt accepted iv %d tag %d", len(req.iv), len(req.tag))
		}
	})
}
