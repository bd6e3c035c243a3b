package api

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/keygrid/keygrid-hsm/internal/httpstack"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// Import, export, data keys, rewrap, HMAC, random and batch.

// MaterialService is what these routes need of the key service.
type MaterialService interface {
	WrappingKey(ctx context.Context, provider string) (*service.WrappingKeyInfo, error)
	ImportKey(ctx context.Context, req service.ImportKeyRequest) (*service.Key, error)
	ImportKeyVersion(ctx context.Context, req service.ImportVersionRequest) (*service.Key, error)
	ExportKey(ctx context.Context, req service.ExportKeyRequest) (*service.ExportResult, error)
	GenerateDataKey(ctx context.Context, req service.DataKeyRequest) (*service.DataKeyResult, error)
	Rewrap(ctx context.Context, req service.RewrapRequest) (*service.EncryptResult, error)
	MAC(ctx context.Context, req service.MACRequest) (*service.MACResult, error)
	VerifyMAC(ctx context.Context, req service.VerifyMACRequest) (*service.VerifyResult, error)
	Random(ctx context.Context, req service.RandomRequest) ([]byte, error)
}

// Batch limits.
const (
	// MaxBatchItems caps the items of one batch.
	MaxBatchItems = 1000
	// batchParallel is how many items of one batch run at once.
	batchParallel = 16
)

// publicKeyDER decodes a PEM public key of a request field.
func publicKeyDER(field, s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "PUBLIC KEY" {
		return nil, kgerr.Invalid(field + " must be a PEM PUBLIC KEY (SubjectPublicKeyInfo)")
	}
	return b.Bytes, nil
}

func (a *API) wrappingKey(w http.ResponseWriter, r *http.Request) {
	wk, err := a.svc.WrappingKey(r.Context(), r.PathValue("name"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, apitypes.WrappingKeyResponse{ID: wk.ID, Provider: wk.Provider, Algorithm: wk.Algorithm,
		PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: wk.PublicKey}))})
}

func (a *API) importKey(w http.ResponseWriter, r *http.Request) {
	var req apitypes.ImportKeyRequest
	if err := a.decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	in, err := importKeyRequest(req)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	k, err := a.svc.ImportKey(r.Context(), in)
	clear(req.WrappedKey)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/keys/"+k.ID)
	a.write(w, http.StatusCreated, keyOut(k))
}

func importKeyRequest(r apitypes.ImportKeyRequest) (service.ImportKeyRequest, error) {
	pub, err := publicKeyDER("public_key", r.PublicKey)
	if err != nil {
		return service.ImportKeyRequest{}, err
	}
	c, err := createKeyRequest(apitypes.CreateKeyRequest{Provider: r.Provider, Name: r.Name, KeySpec: r.KeySpec, Metadata: r.Metadata, ExpiresAt: r.ExpiresAt})
	if err != nil {
		return service.ImportKeyRequest{}, err
	}
	return service.ImportKeyRequest{CreateKeyRequest: c,
		WrappingKeyID: r.WrappingKeyID, WrappingAlgorithm: r.WrappingAlgorithm, WrappedKey: r.WrappedKey, PublicKey: pub}, nil
}

func importVersionRequest(key string, r apitypes.ImportVersionRequest) (service.ImportVersionRequest, error) {
	pub, err := publicKeyDER("public_key", r.PublicKey)
	if err != nil {
		return service.ImportVersionRequest{}, err
	}
	return service.ImportVersionRequest{Key: key, WrappedMaterial: service.WrappedMaterial{
		WrappingKeyID: r.WrappingKeyID, WrappingAlgorithm: r.WrappingAlgorithm, WrappedKey: r.WrappedKey, PublicKey: pub}}, nil
}

func exportRequest(key string, r apitypes.ExportKeyRequest) (service.ExportKeyRequest, error) {
	if r.PublicKey == "" {
		return service.ExportKeyRequest{}, kgerr.Invalid("public_key is required")
	}
	pub, err := publicKeyDER("public_key", r.PublicKey)
	if err != nil {
		return service.ExportKeyRequest{}, err
	}
	return service.ExportKeyRequest{Key: key, Version: r.Version, PublicKey: pub}, nil
}

func exportOut(r *service.ExportResult) apitypes.ExportKeyResponse {
	return apitypes.ExportKeyResponse{WrappedKey: r.WrappedKey, Algorithm: r.Algorithm, KeyID: r.KeyID, KeyVersion: r.KeyVersion}
}

func dataKeyRequest(key string, r apitypes.DataKeyRequest) (service.DataKeyRequest, error) {
	return service.DataKeyRequest{Key: key, KeySize: r.KeySize, IncludePlaintext: r.IncludePlaintext, AAD: r.AAD, Format: envelope{}}, nil
}

func dataKeyOut(r *service.DataKeyResult) apitypes.DataKeyResponse {
	e := encryptOut(&r.EncryptResult)
	return apitypes.DataKeyResponse{Plaintext: r.Plaintext, Ciphertext: e.Ciphertext, Algorithm: e.Algorithm, KeyID: e.KeyID, KeyVersion: e.KeyVersion}
}

func rewrapRequest(key string, r apitypes.RewrapRequest) (service.RewrapRequest, error) {
	return service.RewrapRequest{Key: key, Ciphertext: r.Ciphertext, AAD: r.AAD, Format: envelope{}}, nil
}

func macRequest(key string, r apitypes.MACRequest) (service.MACRequest, error) {
	return service.MACRequest{Key: key, Algorithm: r.Algorithm, Data: r.Data}, nil
}

func macOut(r *service.MACResult) apitypes.MACResponse {
	return apitypes.MACResponse{MAC: r.MAC, Algorithm: r.Algorithm, KeyID: r.KeyID, KeyVersion: r.KeyVersion}
}

func verifyMACRequest(key string, r apitypes.VerifyMACRequest) (service.VerifyMACRequest, error) {
	return service.VerifyMACRequest{Key: key, Algorithm: r.Algorithm, Data: r.Data, MAC: r.MAC, KeyVersion: r.KeyVersion}, nil
}

func (a *API) random(w http.ResponseWriter, r *http.Request) {
	var req apitypes.RandomRequest
	if err := a.decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	b, err := a.svc.Random(r.Context(), service.RandomRequest{Provider: req.Provider, Bytes: req.Bytes})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.write(w, http.StatusOK, apitypes.RandomResponse{Random: b})
}

// batchOps are the operations a batch item may name, each the same
// keyOpFunc as its single route.
func (a *API) batchOps() map[string]keyOpFunc {
	return map[string]keyOpFunc{
		"sign":       keyOpOf(signRequest, a.svc.Sign, signOut),
		"verify":     keyOpOf(verifyRequest, a.svc.Verify, verifyOut),
		"encrypt":    keyOpOf(encryptRequest, a.svc.Encrypt, encryptOut),
		"decrypt":    keyOpOf(decryptRequest, a.svc.Decrypt, decryptOut),
		"mac":        keyOpOf(macRequest, a.svc.MAC, macOut),
		"verify-mac": keyOpOf(verifyMACRequest, a.svc.VerifyMAC, verifyOut),
	}
}

// batch runs the items of a batch in parallel, each authorized, audited and
// rate-counted as if sent alone (the first rides on the request's own
// count), and answers their results in order.
func (a *API) batch(w http.ResponseWriter, r *http.Request) {
	var req apitypes.BatchRequest
	if err := a.decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	switch {
	case len(req.Items) == 0:
		a.fail(w, r, kgerr.Invalid("items is required: one to 1000 operations"))
		return
	case len(req.Items) > MaxBatchItems:
		a.fail(w, r, kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("a batch has at most %d items", MaxBatchItems)))
		return
	}
	principal := service.CallerFrom(r.Context()).Auth
	results := make([]json.RawMessage, len(req.Items))
	// Rate first, in order, as if the items came one after the other (the
	// first rides on the request's own count); then the admitted items run
	// on a few workers, which keep their grown stacks from item to item.
	run := make([]int, 0, len(req.Items))
	for i := range req.Items {
		if i > 0 {
			if err := a.stack.TakeRate(principal); err != nil {
				results[i] = a.itemError(r, err)
				continue
			}
		}
		run = append(run, i)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(batchParallel, len(run)) {
		wg.Go(func() {
			for {
				n := int(next.Add(1)) - 1
				if n >= len(run) {
					return
				}
				i := run[n]
				results[i] = a.runItem(r, req.Items[i])
			}
		})
	}
	wg.Wait()
	a.write(w, http.StatusOK, apitypes.BatchResponse{Results: results})
}

// runItem runs one batch item: its op and key taken out, the rest decoded
// strictly as the single request.
func (a *API) runItem(r *http.Request, item json.RawMessage) json.RawMessage {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(item, &fields); err != nil || fields == nil {
		return a.itemError(r, kgerr.Invalid("each item must be a JSON object with op and key"))
	}
	var op, key string
	if json.Unmarshal(fields["op"], &op) != nil || json.Unmarshal(fields["key"], &key) != nil || key == "" {
		return a.itemError(r, kgerr.Invalid("each item needs op and key strings"))
	}
	f, ok := a.ops[op]
	if !ok {
		return a.itemError(r, kgerr.Invalid(fmt.Sprintf("op %q is not one of sign, verify, encrypt, decrypt, mac, verify-mac", clipOp(op))))
	}
	delete(fields, "op")
	delete(fields, "key")
	rest, err := json.Marshal(fields)
	if err != nil {
		return a.itemError(r, err)
	}
	res, err := f(r.Context(), key, func(v any) error { return httpstack.Decode(rest, 16, v) })
	if err != nil {
		return a.itemError(r, err)
	}
	b, err := json.Marshal(res)
	if err != nil {
		return a.itemError(r, err)
	}
	return b
}

func clipOp(s string) string {
	if len(s) > 20 {
		return s[:20] + "…"
	}
	return s
}

// itemError is the result of a failed item, from the one error table.
func (a *API) itemError(r *http.Request, err error) json.RawMessage {
	e := kgerr.Classify(err)
	re := rest(e.Kind)
	if re.status >= 500 && re.status != http.StatusServiceUnavailable {
		a.log.Error("batch item failed", "request_id", httpstack.RequestID(r.Context()), "code", re.code, "err", err)
	}
	b, _ := json.Marshal(apitypes.BatchError{Status: re.status,
		Error: apitypes.ErrorDetail{Code: re.code, Message: e.Message, RequestID: httpstack.RequestID(r.Context())}})
	return b
}
