package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// OpenSSLVerify verifies a signature with the openssl binary, from the
// public key PEM alone. sig is DER for ECDSA. It fails the test when
// openssl says the signature is bad.
func OpenSSLVerify(t testing.TB, pubPEM, algorithm string, data, sig []byte) {
	t.Helper()
	if err := OpenSSLCheck(t, pubPEM, algorithm, data, sig); err != nil {
		t.Fatal(err)
	}
}

// OpenSSLCheck is OpenSSLVerify returning openssl's verdict as an error
// instead of failing the test (for tests that expect a rejection). It
// skips the test when openssl is missing (fails it when parts are
// required).
func OpenSSLCheck(t testing.TB, pubPEM, algorithm string, data, sig []byte) error {
	t.Helper()
	Require(t, "openssl")
	p := writeFiles(t, map[string][]byte{"pub.pem": []byte(pubPEM), "data": data, "sig": sig})
	var args []string
	digest := map[byte]string{'2': "-sha256", '3': "-sha384", '5': "-sha512"}
	switch {
	case algorithm == "EdDSA":
		args = []string{"pkeyutl", "-verify", "-pubin", "-inkey", p("pub.pem"), "-rawin", "-in", p("data"), "-sigfile", p("sig")}
	case len(algorithm) == 5 && (algorithm[:2] == "RS" || algorithm[:2] == "ES"):
		args = []string{"dgst", digest[algorithm[2]], "-verify", p("pub.pem"), "-signature", p("sig"), p("data")}
	case len(algorithm) == 5 && algorithm[:2] == "PS":
		args = []string{"dgst", digest[algorithm[2]], "-verify", p("pub.pem"), "-sigopt", "rsa_padding_mode:pss",
			"-sigopt", "rsa_pss_saltlen:-1", "-signature", p("sig"), p("data")}
	default:
		t.Fatalf("OpenSSLCheck: no openssl command for %s", algorithm)
	}
	if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("openssl rejects the %s signature: %v\n%s", algorithm, err, out)
	}
	return nil
}

// OpenSSLEncryptOAEP encrypts with RSA-OAEP (hash "sha1" or "sha256", MGF1
// with the same hash) using the openssl binary and a public key PEM.
func OpenSSLEncryptOAEP(t testing.TB, pubPEM, hash string, plaintext []byte) []byte {
	t.Helper()
	Require(t, "openssl")
	p := writeFiles(t, map[string][]byte{"pub.pem": []byte(pubPEM), "pt": plaintext})
	out, err := exec.Command("openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", p("pub.pem"),
		"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:"+hash, "-pkeyopt", "rsa_mgf1_md:"+hash,
		"-in", p("pt")).Output()
	if err != nil {
		t.Fatalf("openssl pkeyutl -encrypt: %v", err)
	}
	return out
}

// writeFiles writes files into a fresh temporary directory and returns a
// function giving the path of one of them.
func writeFiles(t testing.TB, files map[string][]byte) func(name string) string {
	t.Helper()
	dir := t.TempDir()
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return func(n string) string { return filepath.Join(dir, n) }
}
