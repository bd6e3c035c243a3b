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
	Require(t, "openssl")
	dir := t.TempDir()
	files := map[string][]byte{"pub.pem": []byte(pubPEM), "data": data, "sig": sig}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p := func(n string) string { return filepath.Join(dir, n) }
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
		t.Fatalf("OpenSSLVerify: no openssl command for %s", algorithm)
	}
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl rejects the %s signature: %v\n%s", algorithm, err, out)
	}
}

// OpenSSLEncryptOAEP encrypts with RSA-OAEP (hash "sha1" or "sha256", MGF1
// with the same hash) using the openssl binary and a public key PEM.
func OpenSSLEncryptOAEP(t testing.TB, pubPEM, hash string, plaintext []byte) []byte {
	t.Helper()
	Require(t, "openssl")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pub.pem"), []byte(pubPEM), 0o600)
	os.WriteFile(filepath.Join(dir, "pt"), plaintext, 0o600)
	out, err := exec.Command("openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", filepath.Join(dir, "pub.pem"),
		"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:"+hash, "-pkeyopt", "rsa_mgf1_md:"+hash,
		"-in", filepath.Join(dir, "pt")).Output()
	if err != nil {
		t.Fatal(fmt.Errorf("openssl pkeyutl -encrypt: %w", err))
	}
	return out
}
