package service

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// Deep health checks: a real AES-GCM round trip in a provider with a probe
// key of its own, never a customer key. The probe key has no record in the
// metadata store (it is no managed key: no API lists, uses or deletes it);
// it lives in the provider under a fixed object id and the label
// "keygrid-probe", so every gateway on one token finds and shares it.

// probeObjectID is the object id of every provider's probe key.
var probeObjectID = func() string {
	h := sha256.Sum256([]byte("keygrid aes-gcm probe key v1"))
	return hex.EncodeToString(h[:16])
}()

var probeSpec = alg.Spec{Type: alg.AES, Size: 256}

// ProbeAESGCM encrypts and decrypts a random block with provider name's
// probe key (made on first use) and reports whether the round trip worked.
// A provider that cannot do A256GCM fails with UNSUPPORTED_ALGORITHM.
func (s *Service) ProbeAESGCM(ctx context.Context, name string) error {
	p, ok := s.providers[name]
	if !ok {
		return kgerr.New(kgerr.KindProviderNotFound, fmt.Sprintf("provider %s is not configured", kgerr.Quote(name)))
	}
	a, err := alg.Lookup(string(alg.A256GCM))
	if err != nil {
		return err
	}
	if err := p.Capabilities().CheckAlgorithm(a.Name); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		ref, err := s.probeKey(ctx, p)
		if err != nil {
			return err
		}
		err = probeRoundTrip(ctx, p, ref, a)
		if errors.Is(err, kgerr.ErrKeyNotFound) && attempt == 0 {
			// The token lost the key (re-initialized): make it again.
			s.probeMu.Lock()
			delete(s.probeRefs, name)
			s.probeMu.Unlock()
			continue
		}
		return err
	}
}

// probeKey returns the reference of p's probe key, found or made.
func (s *Service) probeKey(ctx context.Context, p provider.Provider) (string, error) {
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	if ref, ok := s.probeRefs[p.Name()]; ok {
		return ref, nil
	}
	ref, found, err := p.FindKey(ctx, probeObjectID)
	if err != nil {
		return "", err
	}
	if !found {
		created, err := p.CreateKey(ctx, provider.CreateKeyRequest{ObjectID: probeObjectID, Label: "keygrid-probe",
			Spec: probeSpec, Usage: []alg.Usage{alg.UsageEncrypt, alg.UsageDecrypt}})
		if err != nil {
			return "", err
		}
		ref = created.Ref
	}
	if s.probeRefs == nil {
		s.probeRefs = map[string]string{}
	}
	s.probeRefs[p.Name()] = ref
	return ref, nil
}

func probeRoundTrip(ctx context.Context, p provider.Provider, ref string, a alg.Info) error {
	pt := make([]byte, 32)
	rand.Read(pt)
	aad := []byte("keygrid health probe")
	r, err := p.Encrypt(ctx, provider.EncryptRequest{Ref: ref, Spec: probeSpec, Algorithm: a, Plaintext: pt, AAD: aad})
	if err != nil {
		return err
	}
	got, err := p.Decrypt(ctx, provider.DecryptRequest{Ref: ref, Spec: probeSpec, Algorithm: a, Ciphertext: r.Ciphertext, Nonce: r.Nonce, AAD: aad})
	if err != nil {
		return err
	}
	if !bytes.Equal(got, pt) {
		return kgerr.New(kgerr.KindInternal, "the probe's AES-GCM round trip returned other bytes")
	}
	return nil
}
