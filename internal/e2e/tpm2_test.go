package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

const tpmPIN = "kg-e2e-tpm-2468"

// requireTPM2 returns the binary's tpm2-pkcs11 bed (testbed.WithTPM2).
func requireTPM2(t testing.TB) *testbed.TPM2 {
	t.Helper()
	bed := testbed.ProcessTPM2(t)
	os.Setenv("KEYGRID_E2E_TPM_PIN", tpmPIN)
	return bed
}

func tpmGatewayConfig(bed *testbed.TPM2) string {
	return fmt.Sprintf(`
default_provider: tpm
providers:
  tpm:
    type: pkcs11
    config:
      library_path: %s
      token_label: %s
      pin_env: KEYGRID_E2E_TPM_PIN
      max_sessions: 4
reconcile:
  grace: 1ms
  interval: 1h
keys:
  min_deletion_window: 1s
  deletion_sweep_interval: 200ms
`, bed.Module, bed.Label)
}

// The gateway on a tpm2-pkcs11 token, through the REST API: the providers
// list shows what the module really has; RSA and EC keys are made, sign
// (checked by openssl) and decrypt RSA-OAEP-256 ciphertexts openssl made;
// what the token lacks is refused with 400 UNSUPPORTED_ALGORITHM naming
// provider and algorithm, leaving nothing on the token; keys survive a
// restart of the gateway and deleting one destroys its objects.
func TestTPM2ThroughTheAPI(t *testing.T) {
	bed := requireTPM2(t)
	g := startGateway(t, tpmGatewayConfig(bed), "")
	ctx := context.Background()

	ps, err := g.C.Providers(ctx)
	if err != nil || len(ps.Providers) != 1 || !ps.Providers[0].Healthy {
		t.Fatalf("providers: %+v %v", ps, err)
	}
	caps := ps.Providers[0].Capabilities
	for _, want := range []string{"RS256", "PS256", "ES256", "ES384", "RSA-OAEP-256", "RSA-2048", "EC-P-256"} {
		if !slices.Contains(caps, want) {
			t.Errorf("capabilities %v lack %s", caps, want)
		}
	}
	for _, lacks := range []string{"A256GCM", "EdDSA", "ES512", "RSA-4096", "AES-256", "AES-KWP"} {
		if slices.Contains(caps, lacks) {
			t.Errorf("capabilities %v list %s, which tpm2-pkcs11 lacks", caps, lacks)
		}
	}

	objects := func() int {
		out, err := bed.Tool("--list-objects").CombinedOutput()
		if err != nil {
			t.Fatalf("pkcs11-tool: %v\n%s", err, out)
		}
		return strings.Count(string(out), "Key Object")
	}
	before := objects()
	for _, c := range []struct {
		name string
		spec apitypes.KeySpec
		what string
	}{
		{"aes", apitypes.KeySpec{KeyType: "AES", KeySize: 256}, "AES-256"},
		{"ed25519", apitypes.KeySpec{KeyType: "Ed25519"}, "Ed25519"},
		{"rsa4096", apitypes.KeySpec{KeyType: "RSA", KeySize: 4096}, "RSA-4096"},
		{"p521", apitypes.KeySpec{KeyType: "EC", Curve: "P-521"}, "P-521"},
	} {
		_, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "tpm-refused-" + c.name, KeySpec: c.spec})
		var ae *client.Error
		if !errors.As(err, &ae) || ae.Status != 400 || ae.Code != apitypes.CodeUnsupportedAlgorithm ||
			!strings.Contains(ae.Message, `"tpm"`) || !strings.Contains(ae.Message, c.what) {
			t.Errorf("create %s: %v, want 400 UNSUPPORTED_ALGORITHM naming provider tpm and %s", c.name, err, c.what)
		}
	}
	if n := objects(); n != before {
		t.Fatalf("refused creations changed the token's objects: %d before, %d after", before, n)
	}

	for _, c := range []struct {
		name string
		spec apitypes.KeySpec
		algs []string
	}{
		{"rsa", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048}, []string{"RS256", "PS384"}},
		{"ec", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}, []string{"ES256"}},
	} {
		k, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "tpm-" + c.name, KeySpec: c.spec})
		if err != nil {
			t.Fatalf("create %s: %v", c.name, err)
		}
		if !strings.HasPrefix(k.Versions[0].ProviderRef, "pkcs11:token="+bed.Label+";id=%") {
			t.Fatalf("key not on the TPM token: %+v", k)
		}
		pub, err := g.C.PublicKey(ctx, k.Name, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range c.algs {
			data := []byte("signed on the TPM with " + a)
			s, err := g.C.Sign(ctx, k.Name, apitypes.SignRequest{Data: data, Algorithm: a})
			if err != nil {
				t.Fatalf("%s %s: %v", c.name, a, err)
			}
			testbed.OpenSSLVerify(t, pub.PublicKey, a, data, s.Signature)
		}
	}

	dk, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "tpm-oaep", KeySpec: apitypes.KeySpec{KeyType: "RSA", KeySize: 2048,
		Algorithm: "RSA-OAEP-256", Usage: []string{"encrypt", "decrypt"}}})
	if err != nil {
		t.Fatal(err)
	}
	dpub, _ := g.C.PublicKey(ctx, dk.Name, 0)
	msg := []byte("sealed for the TPM")
	ct := testbed.OpenSSLEncryptOAEP(t, dpub.PublicKey, "sha256", msg)
	d, err := g.C.Decrypt(ctx, dk.Name, apitypes.DecryptRequest{Ciphertext: ct, Algorithm: "RSA-OAEP-256"})
	if err != nil || !bytes.Equal(d.Plaintext, msg) {
		t.Fatalf("decrypt RSA-OAEP-256: %v", err)
	}
	// A signing key does not decrypt, though the TPM ties the usages
	// together: the gateway enforces usage.
	if _, err := g.C.Decrypt(ctx, "tpm-rsa", apitypes.DecryptRequest{Ciphertext: ct, Algorithm: "RSA-OAEP-256"}); err == nil {
		t.Fatal("a signing key decrypted")
	}

	// Restart on the same data directory: the keys are still on the token.
	g.Close()
	g2 := startGateway(t, tpmGatewayConfig(bed), g.DataDir)
	data := []byte("after restart")
	s, err := g2.C.Sign(ctx, "tpm-ec", apitypes.SignRequest{Data: data, Algorithm: "ES256"})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := g2.C.PublicKey(ctx, "tpm-ec", 0)
	testbed.OpenSSLVerify(t, pub.PublicKey, "ES256", data, s.Signature)
	withKeys := objects()
	if _, err := g2.C.DeleteKey(ctx, "tpm-ec", client.DeleteOptions{PendingWindow: time.Second}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, g2.C, "tpm-ec")
	if n := objects(); n != withKeys-2 {
		t.Fatalf("%d objects after deleting a key pair, want %d", n, withKeys-2)
	}
}
