// Package api is the HTTP API v1 of KeyGrid HSM. Every route is listed in
// routes; every handler has one shape: decode → call the service → render.
// Errors become the body and status of one table (errors.go).
package api

import (
	"context"
	"log/slog"
	"net/http"
	"sync/atomic"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/httpstack"
	"github.com/keygrid/keygrid-hsm/internal/metrics"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// Service is what the API needs of the key service.
type Service interface {
	CreateKey(ctx context.Context, req service.CreateKeyRequest) (*service.Key, error)
	GetKey(ctx context.Context, ref string) (*service.Key, error)
	ListKeys(ctx context.Context, o service.ListOptions) (*service.KeyList, error)
	DeleteKey(ctx context.Context, req service.DeleteKeyRequest) (*service.Key, error)
	CancelDeletion(ctx context.Context, ref string) (*service.Key, error)
	UpdateKey(ctx context.Context, req service.UpdateKeyRequest) (*service.Key, error)
	ActivateKey(ctx context.Context, ref string) (*service.Key, error)
	DeactivateKey(ctx context.Context, ref string) (*service.Key, error)
	RotateKey(ctx context.Context, ref string) (*service.Key, error)
	PublicKey(ctx context.Context, ref string, version int) (*service.PublicKeyInfo, error)
	Sign(ctx context.Context, req service.SignRequest) (*service.SignResult, error)
	Verify(ctx context.Context, req service.VerifyRequest) (*service.VerifyResult, error)
	Encrypt(ctx context.Context, req service.EncryptRequest) (*service.EncryptResult, error)
	Decrypt(ctx context.Context, req service.DecryptRequest) (*service.DecryptResult, error)
	Wrap(ctx context.Context, req service.WrapRequest) (*service.WrapResult, error)
	Unwrap(ctx context.Context, req service.UnwrapRequest) (*service.UnwrapResult, error)
	CreateCSR(ctx context.Context, req service.CSRRequest) (*service.CSRResult, error)
	IssueCertificate(ctx context.Context, req service.IssueCertificateRequest) (*service.CertificateResult, error)
	AttachChain(ctx context.Context, req service.AttachChainRequest) (*service.ChainResult, error)
	GetChain(ctx context.Context, ref string, version int) (*service.ChainResult, error)
	KeyJWKS(ctx context.Context, ref string) ([]service.JWK, error)
	// PublishedJWKS needs no principal (/.well-known/jwks.json).
	PublishedJWKS(ctx context.Context) ([]service.JWK, error)
	SignJWT(ctx context.Context, req service.JWTRequest) (*service.TokenResult, error)
	SignJWS(ctx context.Context, req service.JWSRequest) (*service.TokenResult, error)
	Providers(ctx context.Context) []service.ProviderInfo
	ProviderHealth(ctx context.Context, name string) (*service.ProviderHealth, error)
	Ready(ctx context.Context) (bool, []service.ProviderStatus)
	MaterialService
	AuditCheckpoints(ctx context.Context, o service.CheckpointListOptions) (*service.CheckpointList, error)
	// AuthenticationFailed audits a request refused with 401.
	AuthenticationFailed(ctx context.Context, detail string)
}

// Options configure the API.
type Options struct {
	Service Service
	Metrics *metrics.Metrics
	Logger  *slog.Logger
	Version string
	// Stack is the HTTP machinery the API runs in (request ids, deadline,
	// body and JSON caps, rate limits, access log, metrics), shared with the
	// server's other front ends. nil: a stack of its own with the defaults,
	// Logger and Metrics.
	Stack *httpstack.Stack

	// Auth authenticates callers; nil refuses every protected route.
	Auth *auth.Authenticator
	// ProtectReady and ProtectMetrics require a credential on /ready and
	// /metrics; /health is always open.
	ProtectReady, ProtectMetrics bool
}

// API is the HTTP handler.
type API struct {
	svc     Service
	metrics *metrics.Metrics
	log     *slog.Logger
	version string
	stack   *httpstack.Stack
	mux     *http.ServeMux
	ops     map[string]keyOpFunc // the operations of batch items
	handler http.Handler         // the routes inside the stack

	auth                         atomic.Pointer[auth.Authenticator] // swapped by SetAuthenticator
	protectReady, protectMetrics bool
}

// SetAuthenticator replaces the principals and tokens requests are
// authenticated against (a configuration reload); requests already
// authenticated keep their principal.
func (a *API) SetAuthenticator(authn *auth.Authenticator) { a.auth.Store(authn) }

// New builds the handler.
func New(o Options) *API {
	a := &API{svc: o.Service, metrics: o.Metrics, log: o.Logger, version: o.Version, stack: o.Stack, mux: http.NewServeMux(),
		protectReady: o.ProtectReady, protectMetrics: o.ProtectMetrics}
	a.auth.Store(o.Auth)
	if a.log == nil {
		a.log = slog.Default()
	}
	if a.stack == nil {
		a.stack = httpstack.New(httpstack.Options{Logger: a.log, Metrics: a.metrics})
	}
	a.routes()
	a.handler = a.stack.Wrap(a.frontEnd(), a.mux)
	return a
}

func (a *API) routes() {
	m := a.mux
	m.HandleFunc("GET /health", a.health)
	m.HandleFunc("GET /ready", a.ready)
	m.Handle("GET /metrics", a.metrics.Handler())
	m.HandleFunc("GET "+openAPIPath, a.openAPI)

	m.HandleFunc("GET /api/v1/providers", a.listProviders)
	m.HandleFunc("GET /api/v1/providers/{name}/health", a.providerHealth)
	m.HandleFunc("GET /api/v1/providers/{name}/info", a.providerInfo)
	m.HandleFunc("GET /api/v1/providers/{name}/wrapping-key", a.wrappingKey)
	m.HandleFunc("POST /api/v1/random", a.random)
	m.HandleFunc("POST /api/v1/batch", a.batch)
	a.ops = a.batchOps()

	m.HandleFunc("POST /api/v1/keys", a.createKey)
	m.HandleFunc("POST /api/v1/keys/import", a.importKey)
	m.HandleFunc("GET /api/v1/keys", a.listKeys)
	m.HandleFunc("GET /api/v1/keys/{key}", a.getKey)
	m.HandleFunc("PATCH /api/v1/keys/{key}", a.updateKey)
	m.HandleFunc("DELETE /api/v1/keys/{key}", a.deleteKey)
	m.HandleFunc("POST /api/v1/keys/{key}/cancel-deletion", a.keyState(a.svc.CancelDeletion, "deletion cancelled"))
	m.HandleFunc("POST /api/v1/keys/{key}/activate", a.keyState(a.svc.ActivateKey, "activated"))
	m.HandleFunc("POST /api/v1/keys/{key}/deactivate", a.keyState(a.svc.DeactivateKey, "deactivated"))
	m.HandleFunc("POST /api/v1/keys/{key}/rotate", a.rotateKey)
	m.HandleFunc("GET /api/v1/keys/{key}/public", a.publicKey)
	m.HandleFunc("POST /api/v1/keys/{key}/sign", a.serveKeyOp(a.ops["sign"]))
	m.HandleFunc("POST /api/v1/keys/{key}/verify", a.serveKeyOp(a.ops["verify"]))
	m.HandleFunc("POST /api/v1/keys/{key}/encrypt", a.serveKeyOp(a.ops["encrypt"]))
	m.HandleFunc("POST /api/v1/keys/{key}/decrypt", a.serveKeyOp(a.ops["decrypt"]))
	m.HandleFunc("POST /api/v1/keys/{key}/wrap", keyOp(a, wrapRequest, a.svc.Wrap, wrapOut))
	m.HandleFunc("POST /api/v1/keys/{key}/unwrap", keyOp(a, unwrapRequest, a.svc.Unwrap, unwrapOut))
	m.HandleFunc("POST /api/v1/keys/{key}/import-version", keyOp(a, importVersionRequest, a.svc.ImportKeyVersion, keyOut))
	m.HandleFunc("POST /api/v1/keys/{key}/export", keyOp(a, exportRequest, a.svc.ExportKey, exportOut))
	m.HandleFunc("POST /api/v1/keys/{key}/datakey", keyOp(a, dataKeyRequest, a.svc.GenerateDataKey, dataKeyOut))
	m.HandleFunc("POST /api/v1/keys/{key}/rewrap", keyOp(a, rewrapRequest, a.svc.Rewrap, encryptOut))
	m.HandleFunc("POST /api/v1/keys/{key}/mac", a.serveKeyOp(a.ops["mac"]))
	m.HandleFunc("POST /api/v1/keys/{key}/verify-mac", a.serveKeyOp(a.ops["verify-mac"]))

	m.HandleFunc("POST /api/v1/keys/{key}/csr", keyOp(a, csrRequest, a.svc.CreateCSR, csrOut))
	m.HandleFunc("POST /api/v1/keys/{key}/certificate/issue", keyOp(a, issueRequest, a.svc.IssueCertificate, certificateOut))
	m.HandleFunc("PUT /api/v1/keys/{key}/certificate", keyOp(a, chainIn, a.svc.AttachChain, chainOut))
	m.HandleFunc("GET /api/v1/keys/{key}/certificate", a.getChain)
	m.HandleFunc("GET /api/v1/keys/{key}/jwks", a.keyJWKS)
	m.HandleFunc("POST /api/v1/keys/{key}/jwt", keyOp(a, jwtRequest, a.svc.SignJWT, tokenOut))
	m.HandleFunc("POST /api/v1/keys/{key}/jws", keyOp(a, jwsRequest, a.svc.SignJWS, tokenOut))
	m.HandleFunc("GET "+wellKnownJWKS, a.publishedJWKS)
	m.HandleFunc("GET /api/v1/audit/checkpoints", a.auditCheckpoints)

	m.HandleFunc("/", a.notFound)
}

// ServeHTTP implements http.Handler: the routes inside the HTTP stack.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.handler.ServeHTTP(w, r)
}
