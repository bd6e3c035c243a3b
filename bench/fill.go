package main

import (
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/miekg/pkcs11"
)

// fillMain generates count EC P-256 key pairs as token objects, one at a
// time (SoftHSM2 fails concurrent object creation).
func fillMain(args []string) error {
	fs := flag.NewFlagSet("fill", flag.ContinueOnError)
	module := fs.String("module", "/usr/lib/softhsm/libsofthsm2.so", "PKCS#11 module")
	token := fs.String("token", "", "token label")
	count := fs.Int("count", 0, "key pairs to make")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p := pkcs11.New(*module)
	if p == nil {
		return fmt.Errorf("cannot load %s", *module)
	}
	if err := p.Initialize(); err != nil {
		return err
	}
	defer p.Finalize()
	slots, err := p.GetSlotList(true)
	if err != nil {
		return err
	}
	var sh pkcs11.SessionHandle
	found := false
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && strings.TrimSpace(ti.Label) == *token {
			if sh, err = p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err != nil {
				return err
			}
			found = true
		}
	}
	if !found {
		return fmt.Errorf("no token %q", *token)
	}
	if err := p.Login(sh, pkcs11.CKU_USER, os.Getenv("BENCH_PIN")); err != nil {
		return err
	}
	p256 := []byte{0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07}
	for i := 0; i < *count; i++ {
		id := make([]byte, 16)
		rand.Read(id)
		label := fmt.Sprintf("fill-%d", i)
		_, _, err := p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
			[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
				pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256), pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)},
			[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
				pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)})
		if err != nil {
			return fmt.Errorf("key pair %d: %w", i, err)
		}
		if (i+1)%500 == 0 {
			fmt.Fprintf(os.Stderr, "bench: %d key pairs on the token\n", i+1)
		}
	}
	return nil
}
