package pkcs11

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/duration"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/providertest"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

const testPIN = "kg-cu:test-pin-1234" // also has CloudHSM's user:password form

// The tests of this binary share one SoftHSM2 token and one tpm2-pkcs11
// bed (started by the first test that needs it).
func TestMain(m *testing.M) {
	testbed.Main(m, testbed.WithSoftHSM("keygrid-test", testPIN), testbed.WithTPM2("keygrid-tpm2", tpmPIN))
}

// testConfig is a provider configuration on the binary's token.
func testConfig(t testing.TB, maxSessions int) Config {
	t.Helper()
	hsm := testbed.ProcessSoftHSM(t)
	os.Setenv("KEYGRID_TEST_PIN", testPIN)
	return Config{Settings: Settings{LibraryPath: testbed.SoftHSMModule, TokenLabel: hsm.Label, PinEnv: "KEYGRID_TEST_PIN", MaxSessions: maxSessions}}
}

func openTest(t testing.TB, maxSessions int) *Provider {
	t.Helper()
	p, err := Open(context.Background(), "hsm", TypePKCS11, testConfig(t, maxSessions), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func newID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func create(t testing.TB, p *Provider, spec alg.Spec, usage []alg.Usage, label string) provider.CreatedKey {
	t.Helper()
	k, err := p.CreateKey(context.Background(), provider.CreateKeyRequest{ObjectID: newID(), Label: label, Spec: spec, Usage: usage})
	if err != nil {
		t.Fatalf("create %s: %v", spec, err)
	}
	return k
}

func TestCapabilitiesOfSoftHSM(t *testing.T) {
	p := openTest(t, 4)
	c := p.Capabilities()
	for _, a := range []alg.Algorithm{alg.RS256, alg.PS256, alg.ES256, alg.ES384, alg.ES512, alg.EdDSA, alg.RSAOAEP, alg.A256GCM, alg.AESKWP} {
		if err := c.CheckAlgorithm(a); err != nil {
			t.Errorf("SoftHSM2 should support %s: %v", a, err)
		}
	}
	// SoftHSM2 does OAEP with SHA-1 only: the probe must find that, and the
	// refusal must say what the token lacks.
	err := c.CheckAlgorithm(alg.RSAOAEP256)
	if !errors.Is(err, kgerr.ErrUnsupportedAlgorithm) || !strings.Contains(kgerr.Classify(err).Message, "SHA-256") {
		t.Fatalf("RSA-OAEP-256 on SoftHSM2: %v", err)
	}
	if !c.WrapMultipleOf8 {
		t.Errorf("SoftHSM2 2.6's AES-KWP padding defect was not detected")
	}
}

// Keys made by the gateway, read back independently with pkcs11-tool: token
// objects, private keys sensitive and not extractable, the gateway's labels
// and ids.
func TestKeyAttributesWithPkcs11Tool(t *testing.T) {
	p := openTest(t, 4)
	testbed.Require(t, "pkcs11-tool")
	ec := create(t, p, alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}, []alg.Usage{alg.UsageSign, alg.UsageVerify}, "attr-ec")
	aes := create(t, p, alg.Spec{Type: alg.AES, Size: 256}, []alg.Usage{alg.UsageEncrypt, alg.UsageDecrypt}, "attr-aes")
	out, err := testbed.ProcessSoftHSM(t).Tool("--list-objects").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	text := string(out)
	for _, c := range []struct {
		ref, label, header string
		want               []string
	}{
		{ec.Ref, "attr-ec", "Private Key Object", []string{"Usage:      sign", "Access:     sensitive, always sensitive, never extractable, local"}},
		{ec.Ref, "attr-ec", "Public Key Object", []string{"Usage:      verify"}},
		{aes.Ref, "attr-aes", "Secret Key Object", []string{"AES length 32", "Usage:      encrypt, decrypt", "Access:     sensitive, always sensitive, never extractable, local"}},
	} {
		u, _ := ParseURI(c.ref)
		block := objectBlock(text, c.header, hex.EncodeToString(u.ID))
		if block == "" {
			t.Fatalf("pkcs11-tool shows no %s with id %x:\n%s", c.header, u.ID, text)
		}
		if !strings.Contains(block, `label:      `+c.label) {
			t.Errorf("%s %s: label not %q:\n%s", c.label, c.header, c.label, block)
		}
		for _, w := range c.want {
			if !strings.Contains(block, w) {
				t.Errorf("%s %s: missing %q:\n%s", c.label, c.header, w, block)
			}
		}
	}
}

// objectBlock returns the pkcs11-tool --list-objects block of the object
// with header and CKA_ID id.
func objectBlock(out, header, id string) string {
	for _, b := range regexp.MustCompile(`\n(?:Private|Public|Secret) Key Object`).Split("\n"+out, -1) {
		full := b
		if strings.Contains(out, header+b) && strings.Contains(strings.ReplaceAll(full, " ", ""), "ID:"+id) {
			return header + b
		}
	}
	return ""
}

// An independent PKCS#11 client signs with a key the gateway made; the
// signature verifies with the public key the gateway reports.
func TestPkcs11ToolSignsWithGatewayKey(t *testing.T) {
	p := openTest(t, 4)
	testbed.Require(t, "pkcs11-tool")
	k := create(t, p, alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}, []alg.Usage{alg.UsageSign, alg.UsageVerify}, "tool-signs")
	u, _ := ParseURI(k.Ref)
	dir := t.TempDir()
	msg := []byte("signed by pkcs11-tool")
	d := sha256.Sum256(msg)
	os.WriteFile(dir+"/digest", d[:], 0o600)
	// SoftHSM2 has raw CKM_ECDSA only: pkcs11-tool signs the digest.
	cmd := testbed.ProcessSoftHSM(t).Tool("--sign", "--id", hex.EncodeToString(u.ID), "--mechanism", "ECDSA", "--signature-format", "openssl",
		"--input-file", dir+"/digest", "--output-file", dir+"/sig")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pkcs11-tool --sign: %v\n%s", err, out)
	}
	sig, _ := os.ReadFile(dir + "/sig")
	pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("pkcs11-tool's signature does not verify with the gateway's public key")
	}
}

// After the provider is closed and opened again (a restart), keys still
// sign: no handle was kept.
func TestRestartKeepsKeys(t *testing.T) {
	testbed.ProcessSoftHSM(t)
	p1 := openTest(t, 2)
	k := create(t, p1, alg.Spec{Type: alg.EC, Size: 384, Curve: "P-384"}, []alg.Usage{alg.UsageSign, alg.UsageVerify}, "restart")
	p1.Close()
	p2 := openTest(t, 2)
	info, _ := alg.Lookup("ES384")
	d := alg.Digest(info, []byte("after restart"))
	raw, err := p2.Sign(context.Background(), provider.SignRequest{Ref: k.Ref, Spec: alg.Spec{Type: alg.EC, Size: 384, Curve: "P-384"}, Algorithm: info, Input: d})
	if err != nil {
		t.Fatal(err)
	}
	der, _ := alg.ECDSARawToDER(raw)
	pub, _ := alg.ParsePublicKey(k.PublicKey)
	if ok, _ := alg.Verify(pub, info, d, der); !ok {
		t.Fatal("signature after restart does not verify")
	}
	again, err := p2.PublicKey(context.Background(), k.Ref)
	if err != nil || string(again) != string(k.PublicKey) {
		t.Fatalf("public key after restart differs: %v", err)
	}
}

// 16 goroutines over a pool of 4 sessions: every signature is valid and no
// session is ever used by two goroutines at once.
func TestConcurrentSigningOverSmallPool(t *testing.T) {
	p := openTest(t, 4)
	spec := alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}
	k := create(t, p, spec, []alg.Usage{alg.UsageSign}, "concurrent")
	pub, _ := alg.ParsePublicKey(k.PublicKey)
	info, _ := alg.Lookup("ES256")
	id, _ := objectID(k.Ref)

	var mu sync.Mutex
	inUse := map[pkcs11.SessionHandle]bool{}
	maxOut := 0
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				d := alg.Digest(info, []byte(fmt.Sprintf("g%d-%d", g, i)))
				var sig []byte
				err := p.run(context.Background(), true, opOther, func(sh pkcs11.SessionHandle) error {
					mu.Lock()
					if inUse[sh] {
						mu.Unlock()
						return fmt.Errorf("session %d used by two goroutines", sh)
					}
					inUse[sh] = true
					if len(inUse) > maxOut {
						maxOut = len(inUse)
					}
					mu.Unlock()
					defer func() { mu.Lock(); delete(inUse, sh); mu.Unlock() }()
					h, err := p.handle(sh, id, pkcs11.CKO_PRIVATE_KEY)
					if err != nil {
						return err
					}
					sig, _, err = p.mod.ctx.Crypt(sh, useSign, callMech{Code: pkcs11.CKM_ECDSA}, h, d)
					return err
				})
				if err != nil {
					errs <- err
					return
				}
				der, _ := alg.ECDSARawToDER(sig)
				if ok, _ := alg.Verify(pub, info, d, der); !ok {
					errs <- fmt.Errorf("goroutine %d: signature %d does not verify", g, i)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if maxOut > 4 {
		t.Fatalf("%d sessions out at once, pool max is 4", maxOut)
	}
	if n := p.pool.idleCount(); n > 4 {
		t.Fatalf("%d idle sessions, pool max is 4", n)
	}
}

func TestOpenErrorsAreClear(t *testing.T) {
	hsm := testbed.ProcessSoftHSM(t)
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	os.Setenv("KEYGRID_WRONG_PIN", "not-the-pin")
	for name, tc := range map[string]struct {
		cfg  Config
		want error
		text string
	}{
		"wrong pin": {Config{Settings: Settings{LibraryPath: testbed.SoftHSMModule, TokenLabel: hsm.Label, PinEnv: "KEYGRID_WRONG_PIN"}},
			kgerr.ErrAuthenticationFailed, "CKR_PIN_INCORRECT"},
		"missing token": {Config{Settings: Settings{LibraryPath: testbed.SoftHSMModule, TokenLabel: "no-such-token", PinEnv: "KEYGRID_WRONG_PIN"}},
			kgerr.ErrServiceUnavailable, "no-such-token"},
		"wrong path": {Config{Settings: Settings{LibraryPath: "/nonexistent/libnothing.so", PinEnv: "KEYGRID_WRONG_PIN"}},
			errModule, "/nonexistent/libnothing.so"},
		"no pin": {Config{Settings: Settings{LibraryPath: testbed.SoftHSMModule, TokenLabel: hsm.Label, PinEnv: "KEYGRID_UNSET_PIN_VAR"}},
			errNoPIN, "KEYGRID_UNSET_PIN_VAR"},
	} {
		t.Run(name, func(t *testing.T) {
			p, err := Open(ctx, "hsm", TypePKCS11, tc.cfg, log)
			if err == nil {
				p.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("error %q does not name %q", err, tc.text)
			}
			if strings.Contains(err.Error(), "not-the-pin") {
				t.Fatal("the PIN leaked into the error")
			}
		})
	}
}

// The seed's aws-cloudhsm shape (DESIGN.md §4), pointed at SoftHSM2, opens
// and serves.
func TestCloudHSMTypeOnSoftHSM(t *testing.T) {
	testbed.ProcessSoftHSM(t)
	os.Setenv("KEYGRID_TEST_CLOUD_PIN", testPIN)
	zero := uint(0)
	c := Config{Region: "us-west-2", ClusterID: "cluster-123456789abcdef0", PKCS11: &Settings{
		LibraryPath: testbed.SoftHSMModule, SlotID: &zero, TokenLabel: "keygrid-partition", PinEnv: "KEYGRID_TEST_CLOUD_PIN"}}
	// slot_id 0 and the label match nothing on SoftHSM2 (it renumbers
	// slots): CloudHSM's rule takes the first token.
	p, err := Open(context.Background(), "aws-cloudhsm", TypeAWSCloudHSM, c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Type() != TypeAWSCloudHSM || p.cfg.busyRetries != 3 || p.cfg.maxGCMBytes != 16*1024 {
		t.Fatalf("cloudhsm defaults not applied: %+v", p.cfg)
	}
	k := create(t, p, alg.Spec{Type: alg.AES, Size: 256}, []alg.Usage{alg.UsageEncrypt, alg.UsageDecrypt}, "cloud-aes")
	info, _ := alg.Lookup("A256GCM")
	spec := alg.Spec{Type: alg.AES, Size: 256}
	r, err := p.Encrypt(context.Background(), provider.EncryptRequest{Ref: k.Ref, Spec: spec, Algorithm: info, Plaintext: []byte("hello")})
	if err != nil {
		t.Fatal(err)
	}
	pt, err := p.Decrypt(context.Background(), provider.DecryptRequest{Ref: k.Ref, Spec: spec, Algorithm: info, Nonce: r.Nonce, Ciphertext: r.Ciphertext})
	if err != nil || string(pt) != "hello" {
		t.Fatalf("decrypt: %q %v", pt, err)
	}
	big := make([]byte, 16*1024+1)
	if _, err := p.Encrypt(context.Background(), provider.EncryptRequest{Ref: k.Ref, Spec: spec, Algorithm: info, Plaintext: big}); !errors.Is(err, kgerr.ErrPayloadTooLarge) {
		t.Fatalf("17 KiB AES-GCM on aws-cloudhsm: %v, want PAYLOAD_TOO_LARGE", err)
	}
}

// Keys of one process's provider are found by another instance sharing the
// module (one C_Initialize), and both keep working after one closes.
func TestTwoInstancesShareModule(t *testing.T) {
	a := openTest(t, 2)
	b := openTest(t, 2)
	if a.mod != b.mod {
		t.Fatal("two instances loaded the module twice")
	}
	k := create(t, a, alg.Spec{Type: alg.Ed25519, Size: 256}, []alg.Usage{alg.UsageSign}, "shared")
	u, _ := ParseURI(k.Ref)
	ref, found, err := b.FindKey(context.Background(), hex.EncodeToString(u.ID))
	if err != nil || !found || ref != k.Ref {
		t.Fatalf("b.FindKey = %q %v %v, want %q", ref, found, err, k.Ref)
	}
	a.Close()
	info, _ := alg.Lookup("EdDSA")
	if _, err := b.Sign(context.Background(), provider.SignRequest{Ref: k.Ref, Spec: alg.Spec{Type: alg.Ed25519, Size: 256}, Algorithm: info, Input: []byte("m")}); err != nil {
		t.Fatalf("b signs after a closed: %v", err)
	}
}

// The provider conformance suite, on a fresh SoftHSM2 token, with the
// module in a host process (the default) and in this process.
func TestConformance(t *testing.T) {
	testbed.ProcessSoftHSM(t)
	for _, isolation := range []string{IsolationProcess, IsolationInProcess} {
		t.Run(isolation, func(t *testing.T) {
			providertest.Run(t, func(t *testing.T) provider.Provider {
				c := testConfig(t, 8)
				c.Isolation = isolation
				// RSA-3072 and -4096 generation on a loaded 2-core machine
				// can take longer than the default 5 s.
				c.OperationTimeout = duration.Duration(30 * time.Second)
				p, err := Open(context.Background(), "hsm", TypePKCS11, c, slog.New(slog.DiscardHandler))
				if err != nil {
					t.Fatal(err)
				}
				return p
			})
		})
	}
}
