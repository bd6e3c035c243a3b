package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
)

// rawMain is the raw limit: miekg/pkcs11 calls on the token key, one
// session per worker, doing the same work per operation as the gateway's
// provider (hash, DigestInfo, random GCM IV).
func rawMain(args []string) (Result, error) {
	fs := flag.NewFlagSet("raw", flag.ContinueOnError)
	var c common
	c.register(fs)
	module := fs.String("module", "/usr/lib/softhsm/libsofthsm2.so", "PKCS#11 module")
	token := fs.String("token", "", "token label")
	pinEnv := fs.String("pin-env", "BENCH_PIN", "environment variable with the user PIN")
	idHex := fs.String("id", "", "CKA_ID of the key, hex")
	if err := fs.Parse(args); err != nil {
		return Result{}, err
	}
	a, err := alg.Lookup(c.alg)
	if err != nil {
		return Result{}, err
	}
	id, err := hex.DecodeString(*idHex)
	if err != nil || len(id) == 0 {
		return Result{}, errors.New("--id must be the key's CKA_ID in hex")
	}
	p := pkcs11.New(*module)
	if p == nil {
		return Result{}, fmt.Errorf("cannot load %s", *module)
	}
	if err := p.Initialize(); err != nil {
		return Result{}, err
	}
	defer p.Finalize()
	slots, err := p.GetSlotList(true)
	if err != nil {
		return Result{}, err
	}
	slot, found := uint(0), false
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && strings.TrimSpace(ti.Label) == *token {
			slot, found = s, true
		}
	}
	if !found {
		return Result{}, fmt.Errorf("no token %q", *token)
	}
	sessions := make([]pkcs11.SessionHandle, c.concurrency)
	for i := range sessions {
		if sessions[i], err = p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err != nil {
			return Result{}, err
		}
	}
	if err := p.Login(sessions[0], pkcs11.CKU_USER, os.Getenv(*pinEnv)); err != nil {
		return Result{}, err
	}
	class := uint(pkcs11.CKO_PRIVATE_KEY)
	if a.KeyType == alg.AES {
		class = pkcs11.CKO_SECRET_KEY
	}
	if err := p.FindObjectsInit(sessions[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}); err != nil {
		return Result{}, err
	}
	hs, _, err := p.FindObjects(sessions[0], 1)
	p.FindObjectsFinal(sessions[0])
	if err != nil || len(hs) == 0 {
		return Result{}, fmt.Errorf("key %x not found: %v", id, err)
	}
	key := hs[0]
	data := make([]byte, c.size)
	rand.Read(data)

	var op func(sh pkcs11.SessionHandle) error
	sign := func(m *pkcs11.Mechanism, in func() []byte) func(pkcs11.SessionHandle) error {
		return func(sh pkcs11.SessionHandle) error {
			if err := p.SignInit(sh, []*pkcs11.Mechanism{m}, key); err != nil {
				return err
			}
			_, err := p.Sign(sh, in())
			return err
		}
	}
	hashMech := map[string]uint{"RS256": pkcs11.CKM_SHA256, "PS256": pkcs11.CKM_SHA256}
	switch {
	case a.Name == alg.EdDSA:
		op = sign(pkcs11.NewMechanism(0x1057, nil), func() []byte { return data })
	case a.KeyType == alg.EC:
		op = sign(pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil), func() []byte { return alg.Digest(a, data) })
	case a.KeyType == alg.RSA && a.PSS:
		op = sign(pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS, pkcs11.NewPSSParams(hashMech[c.alg], pkcs11.CKG_MGF1_SHA256, 32)),
			func() []byte { return alg.Digest(a, data) })
	case a.KeyType == alg.RSA:
		op = sign(pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil), func() []byte {
			di, _ := alg.DigestInfo(a.Hash, alg.Digest(a, data))
			return di
		})
	case a.KeyType == alg.AES:
		op = func(sh pkcs11.SessionHandle) error {
			iv := make([]byte, 12)
			rand.Read(iv)
			params := pkcs11.NewGCMParams(iv, nil, 128)
			defer params.Free()
			if err := p.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, key); err != nil {
				return err
			}
			_, err := p.Encrypt(sh, data)
			return err
		}
	default:
		return Result{}, fmt.Errorf("no raw loop for %s", c.alg)
	}
	return measure(c.concurrency, c.warmup, c.duration, func(w int) error { return op(sessions[w]) }), nil
}
