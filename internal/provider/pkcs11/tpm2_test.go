package pkcs11

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/providertest"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// The tests of this file run the provider on a second, differently built
// module: tpm2-pkcs11 over a software TPM. Its capabilities are discovered
// from the module, as on any token; the tests check that what it lacks is
// refused up front and what it has works, checked by openssl and
// pkcs11-tool.

const tpmPIN = "kg-tpm-pin-1357"

// requireTPM2 returns the binary's tpm2-pkcs11 bed (testbed.WithTPM2).
func requireTPM2(t testing.TB) *testbed.TPM2 {
	t.Helper()
	return testbed.ProcessTPM2(t)
}

func tpmConfig(maxSessions int) Config {
	os.Setenv("KEYGRID_TPM_PIN", tpmPIN)
	return Config{Settings: Settings{LibraryPath: testbed.TPM2Module(), TokenLabel: "keygrid-tpm2", PinEnv: "KEYGRID_TPM_PIN", MaxSessions: maxSessions}}
}

func openTPM2(t testing.TB, maxSessions int) *Provider {
	t.Helper()
	requireTPM2(t)
	p, err := Open(context.Background(), "tpm", TypePKCS11, tpmConfig(maxSessions), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

var (
	specP256    = alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}
	specP384    = alg.Spec{Type: alg.EC, Size: 384, Curve: "P-384"}
	specRSA2048 = alg.Spec{Type: alg.RSA, Size: 2048}
	signUsage   = []alg.Usage{alg.UsageSign, alg.UsageVerify}
	cryptUsage  = []alg.Usage{alg.UsageEncrypt, alg.UsageDecrypt}
)

// What the module has and lacks, discovered (mechanism list and probes),
// never taken from a list of known modules: OAEP with SHA-256 works (its
// probe needs token objects here), P-521 keys are made but do not sign, and
// AES keys, AES-GCM, AES-KWP, EdDSA and RSA-4096 are absent. Each refusal
// says why.
func TestTPM2Capabilities(t *testing.T) {
	p := openTPM2(t, 4)
	c := p.Capabilities()
	for _, a := range []alg.Algorithm{alg.RS256, alg.RS384, alg.RS512, alg.PS256, alg.PS384, alg.PS512,
		alg.RSAOAEP, alg.RSAOAEP256, alg.ES256, alg.ES384} {
		if err := c.CheckAlgorithm(a); err != nil {
			t.Errorf("tpm2-pkcs11 should support %s: %v", a, err)
		}
	}
	for a, why := range map[alg.Algorithm]string{alg.A256GCM: "CKM_AES_GCM", alg.A128GCM: "CKM_AES_GCM",
		alg.AESKWP: "CKM_AES_KEY_WRAP_PAD", alg.EdDSA: "CKM_EC_EDWARDS", alg.ES512: "P-521 keys do not work: its public key (CKA_EC_POINT) does not decode"} {
		err := c.CheckAlgorithm(a)
		if !errors.Is(err, kgerr.ErrUnsupportedAlgorithm) || !strings.Contains(kgerr.Classify(err).Message, why) {
			t.Errorf("%s on tpm2-pkcs11: %v, want UNSUPPORTED_ALGORITHM naming %s", a, err, why)
		}
	}
	for _, s := range []alg.Spec{specRSA2048, {Type: alg.RSA, Size: 3072}, specP256, specP384} {
		if err := c.CheckSpec(s); err != nil {
			t.Errorf("tpm2-pkcs11 should make %s keys: %v", s, err)
		}
	}
	for _, s := range []alg.Spec{{Type: alg.RSA, Size: 4096}, {Type: alg.EC, Size: 521, Curve: "P-521"},
		{Type: alg.AES, Size: 256}, {Type: alg.Ed25519, Size: 256}} {
		if err := c.CheckSpec(s); !errors.Is(err, kgerr.ErrUnsupportedAlgorithm) {
			t.Errorf("%s keys on tpm2-pkcs11: %v, want UNSUPPORTED_ALGORITHM", s, err)
		}
	}
}

// The provider conformance suite, on the tpm2-pkcs11 token.
func TestTPM2Conformance(t *testing.T) {
	requireTPM2(t)
	providertest.Run(t, func(t *testing.T) provider.Provider {
		p, err := Open(context.Background(), "tpm", TypePKCS11, tpmConfig(8), slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return p
	})
}

// tpmObjectIDs lists the CKA_IDs (hex) of the token's objects as
// pkcs11-tool sees them, with the number of objects of each.
func tpmObjectIDs(t *testing.T, bed *testbed.TPM2) (map[string]int, string) {
	t.Helper()
	out, err := bed.Tool("--list-objects").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool --list-objects: %v\n%s", err, out)
	}
	ids := map[string]int{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "ID:" {
			ids[f[1]]++
		}
	}
	return ids, string(out)
}

// Keys made by the gateway, read back with pkcs11-tool: token objects with
// the gateway's labels and ids, private keys sensitive and never
// extractable, the usages asked for present.
func TestTPM2KeyAttributesWithPkcs11Tool(t *testing.T) {
	p := openTPM2(t, 4)
	bed := requireTPM2(t)
	ec := create(t, p, specP256, signUsage, "tpm-attr-ec")
	rsaKey := create(t, p, specRSA2048, cryptUsage, "tpm-attr-rsa")
	if !p.mod.refusesDenials.Load() {
		t.Error("tpm2-pkcs11 refuses usage attributes set to false; the provider did not learn it")
	}
	_, text := tpmObjectIDs(t, bed)
	for _, c := range []struct {
		ref, label, header string
		want               []string
	}{
		{ec.Ref, "tpm-attr-ec", "Private Key Object", []string{"EC", "sign", "Access:     sensitive, always sensitive, never extractable, local"}},
		{ec.Ref, "tpm-attr-ec", "Public Key Object", []string{"EC", "verify"}},
		{rsaKey.Ref, "tpm-attr-rsa", "Private Key Object", []string{"RSA", "decrypt", "Access:     sensitive, always sensitive, never extractable, local"}},
		{rsaKey.Ref, "tpm-attr-rsa", "Public Key Object", []string{"RSA 2048", "encrypt"}},
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
	// The public key pkcs11-tool reads is the one the gateway reports.
	u, _ := ParseURI(ec.Ref)
	out, err := bed.Tool("--read-object", "--type", "pubkey", "--id", hex.EncodeToString(u.ID)).Output()
	if err != nil {
		t.Fatalf("pkcs11-tool --read-object: %v", err)
	}
	if !bytes.Equal(out, ec.PublicKey) {
		t.Fatalf("pkcs11-tool's public key differs from the gateway's:\n%x\n%x", out, ec.PublicKey)
	}
}

// Signatures the gateway makes on the TPM verify with openssl, from the
// public key PEM alone.
func TestTPM2SignaturesVerifyWithOpenSSL(t *testing.T) {
	p := openTPM2(t, 4)
	ctx := context.Background()
	for _, c := range []struct {
		spec alg.Spec
		algs []alg.Algorithm
	}{
		{specRSA2048, []alg.Algorithm{alg.RS256, alg.RS384, alg.RS512, alg.PS256, alg.PS384, alg.PS512}},
		{specP256, []alg.Algorithm{alg.ES256}},
		{specP384, []alg.Algorithm{alg.ES384}},
	} {
		k := create(t, p, c.spec, []alg.Usage{alg.UsageSign}, "tpm-ossl-"+c.spec.String())
		pemKey := alg.PublicKeyPEM(k.PublicKey)
		for _, a := range c.algs {
			t.Run(c.spec.String()+" "+string(a), func(t *testing.T) {
				info, _ := alg.Lookup(string(a))
				data := []byte("signed by the TPM with " + string(a))
				sig, err := p.Sign(ctx, provider.SignRequest{Ref: k.Ref, Spec: c.spec, Algorithm: info, Input: alg.Digest(info, data)})
				if err != nil {
					t.Fatal(err)
				}
				if c.spec.Type == alg.EC {
					if sig, err = alg.ECDSARawToDER(sig); err != nil {
						t.Fatal(err)
					}
				}
				testbed.OpenSSLVerify(t, pemKey, string(a), data, sig)
			})
		}
	}
}

// Ciphertexts openssl makes with the public key decrypt on the TPM, with
// RSA-OAEP (SHA-1) and RSA-OAEP-256; a damaged one fails as a decryption
// failure.
func TestTPM2DecryptsOpenSSLCiphertext(t *testing.T) {
	p := openTPM2(t, 4)
	ctx := context.Background()
	k := create(t, p, specRSA2048, []alg.Usage{alg.UsageDecrypt}, "tpm-oaep")
	for a, hash := range map[alg.Algorithm]string{alg.RSAOAEP: "sha1", alg.RSAOAEP256: "sha256"} {
		info, _ := alg.Lookup(string(a))
		msg := []byte("secret for " + string(a))
		ct := testbed.OpenSSLEncryptOAEP(t, alg.PublicKeyPEM(k.PublicKey), hash, msg)
		pt, err := p.Decrypt(ctx, provider.DecryptRequest{Ref: k.Ref, Spec: specRSA2048, Algorithm: info, Ciphertext: ct})
		if err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("%s: %q, %v", a, pt, err)
		}
		ct[10] ^= 0x40
		if _, err := p.Decrypt(ctx, provider.DecryptRequest{Ref: k.Ref, Spec: specRSA2048, Algorithm: info, Ciphertext: ct}); !errors.Is(err, kgerr.ErrDecryptionFailed) {
			t.Fatalf("%s damaged ciphertext: %v, want DECRYPTION_FAILED", a, err)
		}
	}
}

// Keys outlive the process's use of the module (close, C_Finalize, open
// again); deleting a key destroys its objects, as pkcs11-tool sees.
func TestTPM2RestartAndDelete(t *testing.T) {
	bed := requireTPM2(t)
	ctx := context.Background()
	p1 := openTPM2(t, 2)
	k := create(t, p1, specP256, []alg.Usage{alg.UsageSign}, "tpm-restart")
	p1.Close()
	p2 := openTPM2(t, 2)
	info, _ := alg.Lookup("ES256")
	d := alg.Digest(info, []byte("after restart"))
	raw, err := p2.Sign(ctx, provider.SignRequest{Ref: k.Ref, Spec: specP256, Algorithm: info, Input: d})
	if err != nil {
		t.Fatal(err)
	}
	der, _ := alg.ECDSARawToDER(raw)
	pub, _ := alg.ParsePublicKey(k.PublicKey)
	if ok, _ := alg.Verify(pub, info, d, der); !ok {
		t.Fatal("signature after restart does not verify")
	}
	u, _ := ParseURI(k.Ref)
	id := hex.EncodeToString(u.ID)
	if ids, text := tpmObjectIDs(t, bed); ids[id] != 2 {
		t.Fatalf("%d objects with the key's CKA_ID, want 2:\n%s", ids[id], text)
	}
	if err := p2.DeleteKey(ctx, k.Ref); err != nil {
		t.Fatal(err)
	}
	if ids, text := tpmObjectIDs(t, bed); ids[id] != 0 {
		t.Fatalf("%d objects left after delete:\n%s", ids[id], text)
	}
	if _, found, err := p2.FindKey(ctx, id); err != nil || found {
		t.Fatalf("FindKey after delete: %v %v", found, err)
	}
	if _, err := p2.Sign(ctx, provider.SignRequest{Ref: k.Ref, Spec: specP256, Algorithm: info, Input: d}); !errors.Is(err, kgerr.ErrKeyNotFound) {
		t.Fatalf("sign with a deleted key: %v, want KEY_NOT_FOUND", err)
	}
}

// What the token lacks is refused before any HSM call, with
// UNSUPPORTED_ALGORITHM, and nothing is left on the token.
func TestTPM2RefusesWhatItLacks(t *testing.T) {
	p := openTPM2(t, 4)
	bed := requireTPM2(t)
	ctx := context.Background()
	before, _ := tpmObjectIDs(t, bed)
	for _, s := range []alg.Spec{{Type: alg.AES, Size: 256}, {Type: alg.Ed25519, Size: 256}, {Type: alg.RSA, Size: 4096},
		{Type: alg.EC, Size: 521, Curve: "P-521"}} {
		_, err := p.CreateKey(ctx, provider.CreateKeyRequest{ObjectID: newID(), Label: "tpm-refused", Spec: s, Usage: signUsage})
		if !errors.Is(err, kgerr.ErrUnsupportedAlgorithm) {
			t.Errorf("create %s: %v, want UNSUPPORTED_ALGORITHM", s, err)
		}
	}
	k := create(t, p, specP256, []alg.Usage{alg.UsageSign}, "tpm-refused-alg")
	es512, _ := alg.Lookup("ES512")
	if _, err := p.Sign(ctx, provider.SignRequest{Ref: k.Ref, Spec: specP256, Algorithm: es512, Input: make([]byte, 64)}); !errors.Is(err, kgerr.ErrUnsupportedAlgorithm) {
		t.Errorf("ES512: %v, want UNSUPPORTED_ALGORITHM", err)
	}
	gcm, _ := alg.Lookup("A256GCM")
	if _, err := p.Encrypt(ctx, provider.EncryptRequest{Ref: k.Ref, Spec: alg.Spec{Type: alg.AES, Size: 256}, Algorithm: gcm, Plaintext: []byte("x")}); !errors.Is(err, kgerr.ErrUnsupportedAlgorithm) {
		t.Errorf("A256GCM: %v, want UNSUPPORTED_ALGORITHM", err)
	}
	p.DeleteKey(ctx, k.Ref)
	after, text := tpmObjectIDs(t, bed)
	for id, n := range after {
		if before[id] != n {
			t.Fatalf("the refused requests left objects on the token (id %s):\n%s", id, text)
		}
	}
}

// A wrong PIN is refused as such and does not lock the token out (the bed
// disabled the TPM's dictionary-attack lockout; a production TPM locks out
// after a few failures: see docs/cloudhsm.md).
func TestTPM2WrongPIN(t *testing.T) {
	requireTPM2(t)
	c := tpmConfig(2)
	os.Setenv("KEYGRID_TPM_WRONG_PIN", "not-the-tpm-pin")
	c.PinEnv = "KEYGRID_TPM_WRONG_PIN"
	for range 4 {
		p, err := Open(context.Background(), "tpm", TypePKCS11, c, slog.New(slog.DiscardHandler))
		if err == nil {
			p.Close()
			t.Fatal("opened with a wrong PIN")
		}
		if !errors.Is(err, kgerr.ErrAuthenticationFailed) || strings.Contains(err.Error(), "not-the-tpm-pin") {
			t.Fatalf("wrong PIN: %v", err)
		}
	}
	openTPM2(t, 2)
}

// doctor on the tpm2-pkcs11 token: every check passes (its sign/verify
// makes a temporary token key, since the token makes no session objects,
// and leaves nothing behind) and the missing mechanisms are named.
func TestTPM2Doctor(t *testing.T) {
	bed := requireTPM2(t)
	before, _ := tpmObjectIDs(t, bed)
	var out strings.Builder
	caps, ok := Doctor("tpm", TypePKCS11, tpmConfig(2), &out)
	if !ok {
		t.Fatalf("doctor failed:\n%s", out.String())
	}
	for _, w := range []string{"PASS  sign/verify", "CKM_AES_GCM", "CKM_EDDSA", "CKM_AES_KEY_WRAP_PAD", "PASS  capabilities"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("doctor output lacks %q:\n%s", w, out.String())
		}
	}
	// What the token lacks, and why, is returned (the CLI's doctor lists it).
	for a, why := range map[alg.Algorithm]string{alg.ES512: "token's P-521 keys do not work", alg.A256GCM: "token lacks CKM_AES_GCM"} {
		if !strings.Contains(caps.Missing[a], why) {
			t.Errorf("missing %s: %q, want %q", a, caps.Missing[a], why)
		}
	}
	if caps.CheckAlgorithm(alg.RSAOAEP256) != nil {
		t.Errorf("tpm2-pkcs11 performs RSA-OAEP-256; capabilities %v", caps.Missing)
	}
	if strings.Contains(out.String(), tpmPIN) {
		t.Fatal("doctor printed the PIN")
	}
	after, text := tpmObjectIDs(t, bed)
	if len(after) != len(before) {
		t.Fatalf("doctor left objects on the token:\n%s", text)
	}
}

// CKA_EC_POINT as modules return it: DER (SoftHSM2) and the raw point are
// read; tpm2-pkcs11's P-521 encoding with a one-byte length (04 85 <point>),
// which is neither, is refused, not misread.
func TestECPointEncodings(t *testing.T) {
	for _, c := range []struct {
		curve elliptic.Curve
		name  string
	}{{elliptic.P256(), "P-256"}, {elliptic.P521(), "P-521"}} {
		k, _ := ecdsa.GenerateKey(c.curve, rand.Reader)
		pk, _ := k.PublicKey.ECDH()
		point := pk.Bytes()
		der, _ := asn1.Marshal(point)
		read := func(enc []byte) (any, error) {
			return publicKeyFromAttrs(pkcs11.CKK_EC, func(a uint) ([]byte, error) {
				if a == pkcs11.CKA_EC_PARAMS {
					return curveOIDs[c.name], nil
				}
				return enc, nil
			})
		}
		for name, enc := range map[string][]byte{"der": der, "raw": point} {
			got, err := read(enc)
			if err != nil || !got.(*ecdsa.PublicKey).Equal(&k.PublicKey) {
				t.Errorf("%s %s: %v", c.name, name, err)
			}
		}
		if len(point) > 127 {
			if _, err := read(append([]byte{0x04, byte(len(point))}, point...)); err == nil {
				t.Errorf("%s: a point with a one-byte long length was accepted", c.name)
			}
		}
	}
	// A raw P-256 point whose second byte is its remaining length (04 3f …)
	// is also a valid DER OCTET STRING; its length says it is the raw point.
	for {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		pk, _ := k.PublicKey.ECDH()
		if point := pk.Bytes(); point[1] == 63 {
			got, err := publicKeyFromAttrs(pkcs11.CKK_EC, func(a uint) ([]byte, error) {
				if a == pkcs11.CKA_EC_PARAMS {
					return curveOIDs["P-256"], nil
				}
				return point, nil
			})
			if err != nil || !got.(*ecdsa.PublicKey).Equal(&k.PublicKey) {
				t.Errorf("P-256 raw point 04 3f …: %v", err)
			}
			break
		}
	}
}

// grantsOnly leaves out the usage attributes set to false, nothing else.
func TestGrantsOnly(t *testing.T) {
	_, pub, priv, err := templates(provider.CreateKeyRequest{Label: "x", Spec: specRSA2048, Usage: []alg.Usage{alg.UsageSign}}, make([]byte, 16))
	if err != nil {
		t.Fatal(err)
	}
	if !hasDenials(pub, priv) {
		t.Fatal("a signing key's templates hold no denials")
	}
	gp, gv := grantsOnly(pub), grantsOnly(priv)
	if hasDenials(gp, gv) {
		t.Fatal("grantsOnly left a denial")
	}
	has := func(t []*pkcs11.Attribute, typ uint) bool {
		for _, a := range t {
			if a.Type == typ {
				return true
			}
		}
		return false
	}
	for _, a := range []uint{pkcs11.CKA_VERIFY, pkcs11.CKA_TOKEN, pkcs11.CKA_ID, pkcs11.CKA_MODULUS_BITS, pkcs11.CKA_PRIVATE} {
		if !has(gp, a) {
			t.Errorf("the public template lost %#x", a)
		}
	}
	for _, a := range []uint{pkcs11.CKA_SIGN, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_PRIVATE} {
		if !has(gv, a) {
			t.Errorf("the private template lost %#x", a)
		}
	}
	for _, a := range []uint{pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE} {
		if has(gv, a) {
			t.Errorf("the private template kept the denial %#x", a)
		}
	}
}

// On SoftHSM2, which takes denials, keys stay least-privilege: a signing
// key's private object cannot decrypt, unwrap or derive.
func TestTemplatesKeepDenialsWhereTaken(t *testing.T) {
	p := openTest(t, 2)
	k := create(t, p, alg.Spec{Type: alg.RSA, Size: 2048}, []alg.Usage{alg.UsageSign}, "least-privilege")
	if p.mod.refusesDenials.Load() {
		t.Fatal("SoftHSM2 was taken for a module that refuses denials")
	}
	id, _ := objectID(k.Ref)
	err := p.run(context.Background(), true, opOther, func(sh pkcs11.SessionHandle) error {
		h, err := p.handle(sh, id, pkcs11.CKO_PRIVATE_KEY)
		if err != nil {
			return err
		}
		for _, a := range []uint{pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE} {
			v, err := p.mod.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(a, nil)})
			if err != nil {
				return err
			}
			if len(v[0].Value) != 1 || v[0].Value[0] != 0 {
				t.Errorf("attribute %#x of a signing key is %v, want false", a, v[0].Value)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
