package testbed

import (
	"encoding/hex"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// openssl runs the openssl binary and returns its standard output, failing
// the test (with openssl's message) when it fails.
func openssl(t testing.TB, args ...string) []byte {
	t.Helper()
	Require(t, "openssl")
	cmd := exec.Command("openssl", args...)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("openssl %s: %v\n%s", args[0], err, stderr)
	}
	return out
}

// OpenSSLGenKey makes a private key with openssl genpkey (algorithm "RSA"
// with bits, "EC" with a curve such as "P-256", "ED25519") and returns it
// as PKCS#8 DER, with its public key as a PEM SubjectPublicKeyInfo.
func OpenSSLGenKey(t testing.TB, algorithm string, bits int, curve string) (pkcs8 []byte, pubPEM string) {
	t.Helper()
	p := writeFiles(t, nil)
	args := []string{"genpkey", "-algorithm", algorithm, "-out", p("key.pem")}
	switch algorithm {
	case "RSA":
		args = append(args, "-pkeyopt", "rsa_keygen_bits:"+itoa(bits))
	case "EC":
		args = append(args, "-pkeyopt", "ec_paramgen_curve:"+curve)
	}
	openssl(t, args...)
	pkcs8 = openssl(t, "pkcs8", "-topk8", "-nocrypt", "-in", p("key.pem"), "-outform", "DER")
	pubPEM = string(openssl(t, "pkey", "-in", p("key.pem"), "-pubout"))
	return pkcs8, pubPEM
}

func itoa(n int) string { return strconv.Itoa(n) }

// OpenSSLWrapRSAAES wraps material with RSA_AES_KEY_WRAP_SHA_256 using only
// openssl: a fresh AES-256 key from openssl rand, encrypted with pkeyutl
// (OAEP, SHA-256, MGF1-SHA-256), then enc -id-aes256-wrap-pad (RFC 5649).
func OpenSSLWrapRSAAES(t testing.TB, wrappingPubPEM string, material []byte) []byte {
	t.Helper()
	return OpenSSLWrapRSAAESWith(t, "sha256", wrappingPubPEM, material)
}

// OpenSSLWrapRSAAESWith is OpenSSLWrapRSAAES with the OAEP (and MGF1) hash
// md: "sha256" (RSA_AES_KEY_WRAP_SHA_256) or "sha1" (RSA_AES_KEY_WRAP_SHA_1).
func OpenSSLWrapRSAAESWith(t testing.TB, md, wrappingPubPEM string, material []byte) []byte {
	t.Helper()
	p := writeFiles(t, map[string][]byte{"pub.pem": []byte(wrappingPubPEM), "m": material})
	kek := openssl(t, "rand", "32")
	if err := os.WriteFile(p("kek"), kek, 0o600); err != nil {
		t.Fatal(err)
	}
	head := openssl(t, "pkeyutl", "-encrypt", "-pubin", "-inkey", p("pub.pem"), "-pkeyopt", "rsa_padding_mode:oaep",
		"-pkeyopt", "rsa_oaep_md:"+md, "-pkeyopt", "rsa_mgf1_md:"+md, "-in", p("kek"))
	tail := openssl(t, "enc", "-id-aes256-wrap-pad", "-K", hex.EncodeToString(kek), "-iv", "A65959A6", "-in", p("m"))
	return append(head, tail...)
}

// OpenSSLUnwrapRSAAES opens an RSA_AES_KEY_WRAP_SHA_256 wrapping with openssl
// and the wrapping key's private PEM; modulusBytes is its size.
func OpenSSLUnwrapRSAAES(t testing.TB, privPEM string, modulusBytes int, wrapped []byte) []byte {
	t.Helper()
	if len(wrapped) <= modulusBytes {
		t.Fatalf("wrapped key of %d bytes is no longer than the RSA part", len(wrapped))
	}
	p := writeFiles(t, map[string][]byte{"priv.pem": []byte(privPEM), "head": wrapped[:modulusBytes], "tail": wrapped[modulusBytes:]})
	kek := openssl(t, "pkeyutl", "-decrypt", "-inkey", p("priv.pem"), "-pkeyopt", "rsa_padding_mode:oaep",
		"-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256", "-in", p("head"))
	return openssl(t, "enc", "-d", "-id-aes256-wrap-pad", "-K", hex.EncodeToString(kek), "-iv", "A65959A6", "-in", p("tail"))
}

// OpenSSLUnwrapKWP opens an RFC 5649 wrapping under a raw AES-256 key with
// openssl enc -d -id-aes256-wrap-pad.
func OpenSSLUnwrapKWP(t testing.TB, kek, wrapped []byte) []byte {
	t.Helper()
	p := writeFiles(t, map[string][]byte{"w": wrapped})
	return openssl(t, "enc", "-d", "-id-aes256-wrap-pad", "-K", hex.EncodeToString(kek), "-iv", "A65959A6", "-in", p("w"))
}

// OpenSSLHMAC is the HMAC of data under key with openssl dgst (digest
// "sha256", "sha384" or "sha512").
func OpenSSLHMAC(t testing.TB, digest string, key, data []byte) []byte {
	t.Helper()
	p := writeFiles(t, map[string][]byte{"data": data})
	return openssl(t, "dgst", "-"+digest, "-mac", "HMAC", "-macopt", "hexkey:"+hex.EncodeToString(key), "-binary", p("data"))
}
