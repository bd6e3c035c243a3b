// Package client is the Go SDK of KeyGrid HSM: a typed client for the HTTP
// API v1, and crypto.Signer / crypto.Decrypter backed by gateway keys.
//
//	c, _ := client.New("http://127.0.0.1:8080", client.WithToken(tok))
//	k, _ := c.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "api-signing", KeySpec: apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}})
//	signer, _ := c.Signer(ctx, k.Name)   // use with crypto/x509, JOSE libraries, …
//
// Errors from the server are *Error; match them with errors.Is against the
// sentinels (client.ErrKeyNotFound, …) or errors.As.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// Client talks to one KeyGrid HSM server. It is safe for concurrent use.
type Client struct {
	base   string
	hc     *http.Client
	header http.Header
	tls    *tls.Config
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sets the HTTP client (TLS settings, timeouts, transport).
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithToken authenticates with a bearer token.
func WithToken(token string) Option {
	return func(c *Client) {
		if token != "" {
			c.header.Set("Authorization", "Bearer "+token)
		}
	}
}

// WithAPIKey authenticates with an API key (X-API-Key).
func WithAPIKey(key string) Option {
	return func(c *Client) {
		if key != "" {
			c.header.Set("X-API-Key", key)
		}
	}
}

// WithTLSConfig sets the TLS configuration for an https:// server: the CAs
// to trust and a client certificate (see LoadTLSConfig). It applies to the
// transport of the HTTP client (a copy of WithHTTPClient's, when given).
func WithTLSConfig(tc *tls.Config) Option { return func(c *Client) { c.tls = tc } }

// LoadTLSConfig builds a TLS configuration from PEM files: caFile holds the
// CA certificates to trust (empty: the system's), certFile and keyFile a
// client certificate and its key (empty: none).
func LoadTLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("client: CA file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client: CA file %s holds no PEM certificate", caFile)
		}
	}
	switch {
	case certFile != "" && keyFile != "":
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client: client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	case certFile != "" || keyFile != "":
		return nil, errors.New("client: a client certificate needs both its certificate and its key file")
	}
	return tc, nil
}

// New returns a client for the server at baseURL ("http://127.0.0.1:8080").
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("client: server address %q must be http(s)://host:port", baseURL)
	}
	c := &Client{base: strings.TrimRight(baseURL, "/"), header: http.Header{}}
	c.hc = &http.Client{Timeout: 60 * time.Second}
	for _, o := range opts {
		o(c)
	}
	if c.tls != nil {
		var t *http.Transport
		switch tr := c.hc.Transport.(type) {
		case nil:
			t = http.DefaultTransport.(*http.Transport).Clone()
		case *http.Transport:
			t = tr.Clone()
		default:
			return nil, errors.New("client: WithTLSConfig needs an *http.Transport (or none) in WithHTTPClient")
		}
		t.TLSClientConfig = c.tls
		hc := *c.hc
		hc.Transport = t
		c.hc = &hc
	}
	return c, nil
}

// Error is an error answered by the server.
type Error struct {
	Status     int
	Code       apitypes.ErrorCode
	Message    string
	RequestID  string
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s (%d): %s", e.Code, e.Status, e.Message)
	if e.RequestID != "" {
		s += " [request " + e.RequestID + "]"
	}
	return s
}

// Is matches another *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels for errors.Is.
var (
	ErrInvalidInput         = &Error{Code: apitypes.CodeInvalidInput}
	ErrUnsupportedAlgorithm = &Error{Code: apitypes.CodeUnsupportedAlgorithm}
	ErrKeyNotFound          = &Error{Code: apitypes.CodeKeyNotFound}
	ErrKeyAlreadyExists     = &Error{Code: apitypes.CodeKeyAlreadyExists}
	ErrKeyInactive          = &Error{Code: apitypes.CodeKeyInactive}
	ErrKeyExpired           = &Error{Code: apitypes.CodeKeyExpired}
	ErrKeyPendingDeletion   = &Error{Code: apitypes.CodeKeyPendingDeletion}
	ErrKeyVersionDisabled   = &Error{Code: apitypes.CodeKeyVersionDisabled}
	ErrConflict             = &Error{Code: apitypes.CodeConflict}
	ErrDecryptionFailed     = &Error{Code: apitypes.CodeDecryptionFailed}
	ErrAuthenticationFailed = &Error{Code: apitypes.CodeAuthenticationFailed}
	ErrAuthorizationFailed  = &Error{Code: apitypes.CodeAuthorizationFailed}
	ErrRateLimited          = &Error{Code: apitypes.CodeRateLimited}
	ErrServiceUnavailable   = &Error{Code: apitypes.CodeServiceUnavailable}
)

// do sends a request with a JSON body (nil: none) and decodes a JSON answer
// into out (nil: discard).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func decodeError(resp *http.Response) error {
	e := &Error{Status: resp.StatusCode, RequestID: resp.Header.Get("X-Request-Id")}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	var body apitypes.ErrorBody
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err := json.Unmarshal(b, &body); err != nil || body.Error.Code == "" {
		e.Code, e.Message = apitypes.CodeInternal, strings.TrimSpace(string(b))
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
		return e
	}
	e.Code, e.Message = body.Error.Code, body.Error.Message
	if body.Error.RequestID != "" {
		e.RequestID = body.Error.RequestID
	}
	return e
}

func keyPath(key, suffix string) string {
	return "/api/v1/keys/" + url.PathEscape(key) + suffix
}

// Health calls GET /health.
func (c *Client) Health(ctx context.Context) (*apitypes.Health, error) {
	var out apitypes.Health
	return &out, c.do(ctx, http.MethodGet, "/health", nil, &out)
}

// Ready calls GET /ready. When the server is not ready it returns the body
// (which providers are unavailable) with an *Error of status 503.
func (c *Client) Ready(ctx context.Context) (*apitypes.Ready, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/ready", nil)
	if err != nil {
		return nil, err
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out apitypes.Ready
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil || out.Status == "" {
		return nil, &Error{Status: resp.StatusCode, Code: apitypes.CodeInternal, Message: "no readiness body"}
	}
	if resp.StatusCode != http.StatusOK {
		return &out, &Error{Status: resp.StatusCode, Code: apitypes.CodeServiceUnavailable, Message: "not ready",
			RequestID: resp.Header.Get("X-Request-Id")}
	}
	return &out, nil
}

// Providers lists the providers.
func (c *Client) Providers(ctx context.Context) (*apitypes.ProviderList, error) {
	var out apitypes.ProviderList
	return &out, c.do(ctx, http.MethodGet, "/api/v1/providers", nil, &out)
}

// ProviderHealth returns one provider's health.
func (c *Client) ProviderHealth(ctx context.Context, name string) (*apitypes.ProviderHealth, error) {
	var out apitypes.ProviderHealth
	return &out, c.do(ctx, http.MethodGet, "/api/v1/providers/"+url.PathEscape(name)+"/health", nil, &out)
}

// CreateKey creates a key.
func (c *Client) CreateKey(ctx context.Context, req apitypes.CreateKeyRequest) (*apitypes.Key, error) {
	var out apitypes.Key
	return &out, c.do(ctx, http.MethodPost, "/api/v1/keys", req, &out)
}

// GetKey returns a key by id or name.
func (c *Client) GetKey(ctx context.Context, key string) (*apitypes.Key, error) {
	var out apitypes.Key
	return &out, c.do(ctx, http.MethodGet, keyPath(key, ""), nil, &out)
}

// ListOptions filter and page ListKeys. Offset skips keys (the original
// KeyGrid API's paging); it does not go with PageToken.
type ListOptions struct {
	Provider  string
	State     string
	Limit     int
	PageToken string
	Offset    int
}

// ListKeys lists one page of keys.
func (c *Client) ListKeys(ctx context.Context, o ListOptions) (*apitypes.KeyList, error) {
	q := url.Values{}
	for k, v := range map[string]string{"provider": o.Provider, "state": o.State, "page_token": o.PageToken} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.Offset > 0 {
		q.Set("offset", strconv.Itoa(o.Offset))
	}
	path := "/api/v1/keys"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out apitypes.KeyList
	return &out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// DeleteOptions choose a deletion's pending window: whole days, or any
// duration the server's floor allows; neither: the server's default.
type DeleteOptions struct {
	PendingWindowDays int
	PendingWindow     time.Duration
}

// DeleteKey schedules the deletion of a key: it answers the key, pending
// deletion, with its deletion date. Until then CancelKeyDeletion undoes it;
// after it the server destroys the key's material and record.
func (c *Client) DeleteKey(ctx context.Context, key string, o DeleteOptions) (*apitypes.Key, error) {
	q := url.Values{}
	if o.PendingWindowDays > 0 {
		q.Set("pending_window_days", strconv.Itoa(o.PendingWindowDays))
	}
	if o.PendingWindow > 0 {
		q.Set("pending_window", o.PendingWindow.String())
	}
	path := keyPath(key, "")
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out apitypes.KeyOperation
	if err := c.do(ctx, http.MethodDelete, path, nil, &out); err != nil {
		return nil, err
	}
	return &out.Key, nil
}

// CancelKeyDeletion takes a key out of pending deletion; it is inactive
// afterwards.
func (c *Client) CancelKeyDeletion(ctx context.Context, key string) (*apitypes.Key, error) {
	return c.keyOperation(ctx, key, "/cancel-deletion")
}

// UpdateKey changes a key's metadata, description, expiry, rotation period
// or min_decrypt_version (PATCH).
func (c *Client) UpdateKey(ctx context.Context, key string, req apitypes.UpdateKeyRequest) (*apitypes.Key, error) {
	var out apitypes.Key
	return &out, c.do(ctx, http.MethodPatch, keyPath(key, ""), req, &out)
}

// ProviderInfo returns one provider as the list shows it.
func (c *Client) ProviderInfo(ctx context.Context, name string) (*apitypes.ProviderInfo, error) {
	var out apitypes.ProviderInfo
	return &out, c.do(ctx, http.MethodGet, "/api/v1/providers/"+url.PathEscape(name)+"/info", nil, &out)
}

func (c *Client) keyOperation(ctx context.Context, key, suffix string) (*apitypes.Key, error) {
	var out apitypes.KeyOperation
	if err := c.do(ctx, http.MethodPost, keyPath(key, suffix), nil, &out); err != nil {
		return nil, err
	}
	return &out.Key, nil
}

// ActivateKey activates a key.
func (c *Client) ActivateKey(ctx context.Context, key string) (*apitypes.Key, error) {
	return c.keyOperation(ctx, key, "/activate")
}

// DeactivateKey deactivates a key.
func (c *Client) DeactivateKey(ctx context.Context, key string) (*apitypes.Key, error) {
	return c.keyOperation(ctx, key, "/deactivate")
}

// RotateKey adds a new current version to a key.
func (c *Client) RotateKey(ctx context.Context, key string) (*apitypes.Key, error) {
	var out apitypes.Key
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/rotate"), nil, &out)
}

// PublicKey returns the public key of a version (0: current).
func (c *Client) PublicKey(ctx context.Context, key string, version int) (*apitypes.PublicKey, error) {
	path := keyPath(key, "/public")
	if version > 0 {
		path += "?version=" + strconv.Itoa(version)
	}
	var out apitypes.PublicKey
	return &out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// Sign signs data or a digest.
func (c *Client) Sign(ctx context.Context, key string, req apitypes.SignRequest) (*apitypes.SignResponse, error) {
	var out apitypes.SignResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/sign"), req, &out)
}

// Verify checks a signature.
func (c *Client) Verify(ctx context.Context, key string, req apitypes.VerifyRequest) (*apitypes.VerifyResponse, error) {
	var out apitypes.VerifyResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/verify"), req, &out)
}

// Encrypt encrypts plaintext.
func (c *Client) Encrypt(ctx context.Context, key string, req apitypes.EncryptRequest) (*apitypes.EncryptResponse, error) {
	var out apitypes.EncryptResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/encrypt"), req, &out)
}

// Decrypt decrypts ciphertext.
func (c *Client) Decrypt(ctx context.Context, key string, req apitypes.DecryptRequest) (*apitypes.DecryptResponse, error) {
	var out apitypes.DecryptResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/decrypt"), req, &out)
}

// Wrap wraps key material under a key-encryption key.
func (c *Client) Wrap(ctx context.Context, key string, req apitypes.WrapRequest) (*apitypes.WrapResponse, error) {
	var out apitypes.WrapResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/wrap"), req, &out)
}

// Unwrap unwraps key material.
func (c *Client) Unwrap(ctx context.Context, key string, req apitypes.UnwrapRequest) (*apitypes.UnwrapResponse, error) {
	var out apitypes.UnwrapResponse
	return &out, c.do(ctx, http.MethodPost, keyPath(key, "/unwrap"), req, &out)
}

// IsRetryable reports whether err is worth retrying later (503, 504, 429).
func IsRetryable(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Status == http.StatusServiceUnavailable || e.Status == http.StatusGatewayTimeout || e.Status == http.StatusTooManyRequests
}
