package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

// A key on the SoftHSM2 token and one in the software keystore, deleted
// with a 2-second window (the floor lowered): pending, they refuse every
// operation and their material is still there (pkcs11-tool lists the
// objects, the keystore holds the file); after the window the sweeper
// destroys it — pkcs11-tool lists nothing, the file is gone — the keys are
// 404 and their names free. A third key's deletion is cancelled: after the
// window it is still there, inactive, and once activated it signs with
// the public key it had (checked with openssl).
func TestScheduledDeletionOnTheToken(t *testing.T) {
	testbed.ProcessSoftHSM(t)
	testbed.Require(t, "pkcs11-tool", "openssl")
	g := startGateway(t, hsmConfig(t), "")
	ctx := context.Background()
	prefix := fmt.Sprintf("sched-%d-", time.Now().UnixNano())
	ec, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: prefix + "ec", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}})
	if err != nil {
		t.Fatal(err)
	}
	soft, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: prefix + "soft", Provider: "software", KeySpec: apitypes.KeySpec{KeyType: "AES", KeySize: 256}})
	if err != nil {
		t.Fatal(err)
	}
	kept, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: prefix + "kept", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}})
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(g.DataDir, "keystore", "software", soft.Versions[0].ProviderRef+".key")
	if _, err := os.Stat(keyFile); err != nil {
		t.Fatalf("software key file: %v", err)
	}
	ecID := idOf(t, ec)
	if n := listObjectIDs(t)[ecID]; n != 2 {
		t.Fatalf("%d token objects of the EC key, want 2", n)
	}
	data := []byte("signed before the deletion")
	sig, err := g.C.Sign(ctx, ec.Name, apitypes.SignRequest{Data: data})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := g.C.Encrypt(ctx, soft.Name, apitypes.EncryptRequest{Plaintext: data})
	if err != nil {
		t.Fatal(err)
	}
	keptPEM, err := g.C.PublicKey(ctx, kept.Name, 0)
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	for _, k := range []*apitypes.Key{ec, soft, kept} {
		d, err := g.C.DeleteKey(ctx, k.Name, client.DeleteOptions{PendingWindow: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if d.State != "pending_deletion" || d.DeletionDate == nil || d.DeletionDate.Before(start.Add(2*time.Second-time.Millisecond)) ||
			d.DeletionDate.After(time.Now().Add(2*time.Second)) {
			t.Fatalf("delete %s answered %+v, want pending_deletion 2s out", k.Name, d)
		}
	}
	if c, err := g.C.CancelKeyDeletion(ctx, kept.Name); err != nil || c.State != "inactive" {
		t.Fatalf("cancel: %+v %v", c, err)
	}
	for name, err := range map[string]error{
		"sign": func() error { _, err := g.C.Sign(ctx, ec.Name, apitypes.SignRequest{Data: data}); return err }(),
		"verify": func() error {
			_, err := g.C.Verify(ctx, ec.Name, apitypes.VerifyRequest{Data: data, Signature: sig.Signature})
			return err
		}(),
		"encrypt": func() error {
			_, err := g.C.Encrypt(ctx, soft.Name, apitypes.EncryptRequest{Plaintext: data})
			return err
		}(),
		"decrypt": func() error {
			_, err := g.C.Decrypt(ctx, soft.Name, apitypes.DecryptRequest{Ciphertext: ct.Ciphertext})
			return err
		}(),
	} {
		if !errors.Is(err, client.ErrKeyPendingDeletion) {
			t.Errorf("%s while pending deletion: %v, want 409 KEY_PENDING_DELETION", name, err)
		}
	}
	if time.Since(start) < 2*time.Second {
		if n := listObjectIDs(t)[ecID]; n != 2 {
			t.Fatalf("%d token objects while pending, want the 2 still there", n)
		}
		if _, err := os.Stat(keyFile); err != nil {
			t.Fatalf("the software key file went before the window: %v", err)
		}
	}

	waitGone(t, g.C, ec.Name)
	waitGone(t, g.C, soft.Name)
	if n := listObjectIDs(t)[ecID]; n != 0 {
		t.Fatalf("pkcs11-tool still lists %d objects of the destroyed key", n)
	}
	if _, err := os.Stat(keyFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the software keystore still holds the destroyed key: %v", err)
	}
	for _, k := range []*apitypes.Key{ec, soft} {
		if _, err := g.C.PublicKey(ctx, k.ID, 0); !errors.Is(err, client.ErrKeyNotFound) {
			t.Fatalf("public key of a destroyed key: %v", err)
		}
	}
	if _, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: ec.Name, KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}}); err != nil {
		t.Fatalf("the name of a destroyed key is not free: %v", err)
	}

	// The cancelled one: still there past its old date, inactive.
	k, err := g.C.GetKey(ctx, kept.Name)
	if err != nil || k.State != "inactive" || k.DeletionDate != nil {
		t.Fatalf("the cancelled key: %+v %v", k, err)
	}
	if _, err := g.C.ActivateKey(ctx, kept.Name); err != nil {
		t.Fatal(err)
	}
	s, err := g.C.Sign(ctx, kept.Name, apitypes.SignRequest{Data: data})
	if err != nil {
		t.Fatal(err)
	}
	testbed.OpenSSLVerify(t, keptPEM.PublicKey, "ES256", data, s.Signature)

	ops := map[string]int{}
	for _, r := range gatewayAudit(t, g) {
		if id, _ := r["key_id"].(string); (id == ec.ID || id == soft.ID) && r["outcome"] == "success" {
			ops[r["operation"].(string)]++
		}
	}
	if ops["deletion_scheduled"] != 2 || ops["key_destroyed"] != 2 {
		t.Fatalf("audit of the two deletions: %v", ops)
	}
}

// gatewayAudit reads an in-process gateway's audit log.
func gatewayAudit(t *testing.T, g *gateway) []map[string]any {
	t.Helper()
	f, err := os.Open(filepath.Join(g.DataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}
