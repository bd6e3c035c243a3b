package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/pkcs11"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// Signatures made through the API with SoftHSM2 keys verify with openssl,
// from the PEM of /public alone, and through /verify.
func TestHSMSignaturesVerifyWithOpenSSL(t *testing.T) {
	hsm := testbed.ProcessSoftHSM(t)
	g := startGateway(t, hsmConfig(t), "")
	ctx := context.Background()
	cases := []struct {
		name string
		spec apitypes.KeySpec
		algs []string
	}{
		{"rsa-2048", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048}, []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}},
		{"ec-p256", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}, []string{"ES256"}},
		{"ec-p384", apitypes.KeySpec{KeyType: "EC", Curve: "P-384"}, []string{"ES384"}},
		{"ec-p521", apitypes.KeySpec{KeyType: "EC", Curve: "P-521"}, []string{"ES512"}},
		{"ed25519", apitypes.KeySpec{KeyType: "Ed25519"}, []string{"EdDSA"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "ossl-" + c.name, KeySpec: c.spec})
			if err != nil {
				t.Fatal(err)
			}
			if k.Provider != "hsm" || !strings.HasPrefix(k.Versions[0].ProviderRef, "pkcs11:token="+hsm.Label+";id=%") {
				t.Fatalf("key not on the HSM: %+v", k)
			}
			pub, err := g.C.PublicKey(ctx, k.Name, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range c.algs {
				data := []byte("signed by the HSM with " + a)
				s, err := g.C.Sign(ctx, k.Name, apitypes.SignRequest{Data: data, Algorithm: a})
				if err != nil {
					t.Fatalf("%s: %v", a, err)
				}
				testbed.OpenSSLVerify(t, pub.PublicKey, a, data, s.Signature)
				v, err := g.C.Verify(ctx, k.Name, apitypes.VerifyRequest{Data: data, Signature: s.Signature, Algorithm: a})
				if err != nil || !v.Valid {
					t.Fatalf("%s: /verify = %+v, %v", a, v, err)
				}
			}
		})
	}
}

// A signature made by an independent PKCS#11 client (pkcs11-tool) with a
// key the gateway made is accepted by /verify.
func TestPkcs11ToolSignatureAcceptedByVerify(t *testing.T) {
	hsm := testbed.ProcessSoftHSM(t)
	testbed.Require(t, "pkcs11-tool")
	g := startGateway(t, hsmConfig(t), "")
	ctx := context.Background()
	k, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "tool-signed", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}})
	if err != nil {
		t.Fatal(err)
	}
	u, err := pkcs11.ParseURI(k.Versions[0].ProviderRef)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("message signed outside the gateway"))
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "digest"), d[:], 0o600)
	out, err := hsm.Tool("--sign", "--id", hex.EncodeToString(u.ID), "--mechanism", "ECDSA", "--signature-format", "openssl",
		"--input-file", filepath.Join(dir, "digest"), "--output-file", filepath.Join(dir, "sig")).CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool --sign: %v\n%s", err, out)
	}
	sig, _ := os.ReadFile(filepath.Join(dir, "sig"))
	v, err := g.C.Verify(ctx, k.Name, apitypes.VerifyRequest{Digest: d[:], Signature: sig, Algorithm: "ES256"})
	if err != nil || !v.Valid {
		t.Fatalf("/verify of pkcs11-tool's signature: %+v %v", v, err)
	}
	sig[len(sig)-1] ^= 1
	if v, err := g.C.Verify(ctx, k.Name, apitypes.VerifyRequest{Digest: d[:], Signature: sig, Algorithm: "ES256"}); err != nil || v.Valid {
		t.Fatalf("/verify of a damaged signature: %+v %v", v, err)
	}
}

// The seed's aws-cloudhsm block (DESIGN.md §4), pointed at SoftHSM2's
// library and token, starts and serves.
func TestCloudHSMSeedBlockServes(t *testing.T) {
	hsm := testbed.ProcessSoftHSM(t)
	yaml := fmt.Sprintf(`
providers:
  aws-cloudhsm:
    enabled: true
    config:
      region: "us-west-2"
      cluster_id: "cluster-123456789abcdef0"
      pkcs11:
        library_path: %q
        slot_id: 0
        token_label: %q
        pin_env: "KEYGRID_E2E_PIN"
`, testbed.SoftHSMModule, hsm.Label)
	g := startGateway(t, yaml, "")
	ctx := context.Background()
	ps, err := g.C.Providers(ctx)
	if err != nil || len(ps.Providers) != 1 || ps.Providers[0].Type != "aws-cloudhsm" || !ps.Providers[0].Healthy {
		t.Fatalf("providers: %+v %v", ps, err)
	}
	k, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "cloud-key", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}})
	if err != nil || k.Provider != "aws-cloudhsm" {
		t.Fatalf("create: %+v %v", k, err)
	}
	s, err := g.C.Sign(ctx, "cloud-key", apitypes.SignRequest{Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := g.C.PublicKey(ctx, "cloud-key", 0)
	testbed.OpenSSLVerify(t, pub.PublicKey, "ES256", []byte("x"), s.Signature)
	if _, err := g.C.Ready(ctx); err != nil {
		t.Fatalf("/ready: %v", err)
	}
}

// listObjectIDs returns the CKA_IDs (hex) of every object on the token, as
// pkcs11-tool sees them.
func listObjectIDs(t *testing.T) map[string]int {
	t.Helper()
	out, err := testbed.ProcessSoftHSM(t).Tool("--list-objects").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool --list-objects: %v\n%s", err, out)
	}
	ids := map[string]int{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "ID:" {
			ids[f[1]]++
		}
	}
	return ids
}

func idOf(t *testing.T, k *apitypes.Key) string {
	t.Helper()
	u, err := pkcs11.ParseURI(k.Versions[0].ProviderRef)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(u.ID)
}

// A deletion destroys the key's token objects once its window has passed;
// if the process dies between marking the key deleting and destroying its
// objects, the reconciler finishes the deletion, so metadata and token
// agree.
func TestDeleteDestroysObjectsAndSurvivesACrash(t *testing.T) {
	testbed.ProcessSoftHSM(t)
	testbed.Require(t, "pkcs11-tool")
	g := startGateway(t, hsmConfig(t), "")
	ctx := context.Background()

	k, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "to-delete", KeySpec: apitypes.KeySpec{KeyType: "RSA", KeySize: 2048}})
	if err != nil {
		t.Fatal(err)
	}
	id := idOf(t, k)
	if n := listObjectIDs(t)[id]; n != 2 {
		t.Fatalf("%d objects with the key's CKA_ID, want 2 (private and public)", n)
	}
	if _, err := g.C.DeleteKey(ctx, k.Name, client.DeleteOptions{PendingWindow: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if n := listObjectIDs(t)[id]; n != 2 {
		t.Fatalf("%d objects while the deletion is pending, want the 2 still there", n)
	}
	waitGone(t, g.C, k.Name)
	if n := listObjectIDs(t)[id]; n != 0 {
		t.Fatalf("%d objects left after the deletion", n)
	}

	// The crash: a delete that marked the record and died before the token.
	k2, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "crash-delete", KeySpec: apitypes.KeySpec{KeyType: "AES", KeySize: 256}})
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
	st, err := store.OpenSQLite(ctx, filepath.Join(g.DataDir, "keygrid.db"))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := st.GetKey(ctx, k2.ID)
	if err != nil {
		t.Fatal(err)
	}
	rec.State = store.StateDeleting
	if err := st.UpdateKey(ctx, rec); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if n := listObjectIDs(t)[idOf(t, k2)]; n != 1 {
		t.Fatalf("before reconcile: %d objects, want the secret key", n)
	}
	g2 := startGateway(t, hsmConfig(t), g.DataDir)
	// The restarted gateway's reconciler may have finished the deletion
	// already; until it has, the key refuses every operation.
	if _, err := g2.C.Sign(ctx, k2.Name, apitypes.SignRequest{Data: []byte("x")}); !errors.Is(err, client.ErrKeyPendingDeletion) && !errors.Is(err, client.ErrKeyNotFound) {
		t.Fatalf("a key being deleted must refuse operations: %v", err)
	}
	if err := g2.srv.Service().Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if n := listObjectIDs(t)[idOf(t, k2)]; n != 0 {
		t.Fatalf("after reconcile: %d objects left", n)
	}
	if _, err := g2.C.GetKey(ctx, k2.Name); !errors.Is(err, client.ErrKeyNotFound) {
		t.Fatalf("after reconcile the record must be gone: %v", err)
	}
}

// A create interrupted after the token made the key but before the record
// was activated is completed by the reconciler; one interrupted before the
// token made anything is removed. Either way store and token agree.
func TestInterruptedCreatesAreReconciled(t *testing.T) {
	testbed.ProcessSoftHSM(t)
	g := startGateway(t, hsmConfig(t), "")
	ctx := context.Background()
	svc := g.srv.Service()
	p, _ := svc.Provider("hsm")

	pending := func(name, objectID string) *store.Key {
		now := time.Now().Add(-time.Minute).UTC()
		return &store.Key{ID: "01900000-0000-7000-8000-" + objectID[:12], Name: name, Provider: "hsm", KeyType: "EC", KeySize: 256,
			Curve: "P-256", Algorithm: "ES256", Usage: []string{"sign", "verify"}, State: store.StatePending,
			CreatedAt: now, UpdatedAt: now,
			Versions: []store.Version{{Version: 1, ObjectID: objectID, State: store.StatePending, CreatedAt: now}}}
	}
	st := g.srv.Store()
	made := pending("made-before-crash", "0123456789abcdef0123456789abcdef")
	lost := pending("lost-in-crash", "fedcba9876543210fedcba9876543210")
	for _, k := range []*store.Key{made, lost} {
		if err := st.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	// The token made the first key; the process died before activating it.
	created, err := p.CreateKey(ctx, provider.CreateKeyRequest{ObjectID: made.Versions[0].ObjectID, Label: made.Name,
		Spec: alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}, Usage: []alg.Usage{alg.UsageSign, alg.UsageVerify}})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	k, err := g.C.GetKey(ctx, made.Name)
	if err != nil || k.State != "active" || k.Versions[0].ProviderRef != created.Ref {
		t.Fatalf("completed create: %+v %v", k, err)
	}
	if _, err := g.C.GetKey(ctx, lost.Name); !errors.Is(err, client.ErrKeyNotFound) {
		t.Fatalf("a create that made nothing must be removed: %v", err)
	}
	pub, _ := g.C.PublicKey(ctx, made.Name, 0)
	if !bytes.Contains([]byte(pub.PublicKey), []byte("BEGIN PUBLIC KEY")) {
		t.Fatalf("public key of the completed key: %+v", pub)
	}
}

// waitGone waits (up to 30s) until the key is 404 KEY_NOT_FOUND.
func waitGone(t *testing.T, c *client.Client, key string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.GetKey(context.Background(), key)
		if errors.Is(err, client.ErrKeyNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("key %s not destroyed 30s after its window: %v", key, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
