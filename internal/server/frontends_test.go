package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/httpstack"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

const xksAccessKey = "AKIAXKSTESTFRONTEND1"

// xksLike is a second front end in the shape of the XKS proxy API: routes
// POST /{uri_prefix}/kms/xks/v1/..., routed on the raw path, errors
// {"errorName","errorMessage"}, its own credential (an access key header
// standing in for SigV4), over the server's HTTP stack and key service.
func xksLike(srv *server.Server) http.Handler {
	stack := srv.HTTPStack()
	principal := auth.NewPrincipal("xks-proxy", auth.RoleOperator, "", []string{"xks-*"}, nil)
	names := map[kgerr.Kind]struct {
		status int
		name   string
	}{
		kgerr.KindInvalidInput:     {http.StatusBadRequest, "ValidationException"},
		kgerr.KindTooLarge:         {http.StatusBadRequest, "ValidationException"},
		kgerr.KindUnauthenticated:  {http.StatusUnauthorized, "AuthenticationFailedException"},
		kgerr.KindPermissionDenied: {http.StatusForbidden, "AccessDeniedException"},
		kgerr.KindKeyNotFound:      {http.StatusBadRequest, "KeyNotFoundException"},
		kgerr.KindRateLimited:      {http.StatusTooManyRequests, "ThrottlingException"},
	}
	fail := func(w http.ResponseWriter, _ *http.Request, err error) {
		e := kgerr.Classify(err)
		n, ok := names[e.Kind]
		if !ok {
			n.status, n.name = http.StatusInternalServerError, "InternalException"
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(n.status)
		json.NewEncoder(w).Encode(map[string]string{"errorName": n.name, "errorMessage": e.Message})
	}
	// route is the part of the raw path after /kms/xks/v1/.
	route := func(r *http.Request) string {
		_, rest, _ := strings.Cut(r.URL.EscapedPath(), "/kms/xks/v1/")
		switch {
		case r.Method != http.MethodPost:
		case rest == "health":
			return "xks POST health"
		case strings.HasPrefix(rest, "keys/") && strings.HasSuffix(rest, "/encrypt"):
			return "xks POST keys/{keyId}/encrypt"
		}
		return ""
	}
	fe := httpstack.FrontEnd{
		Name: "xks-test", Fail: fail, Route: route,
		Authenticate: func(r *http.Request) (*auth.Principal, error) {
			if r.Header.Get("X-Test-Access-Key") != xksAccessKey {
				return nil, kgerr.Wrap(kgerr.KindUnauthenticated, fmt.Errorf("unknown access key"), "the request signature is not valid")
			}
			return principal, nil
		},
		AuthFailed: srv.Service().AuthenticationFailed,
	}
	return stack.Wrap(fe, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, rest, _ := strings.Cut(r.URL.EscapedPath(), "/kms/xks/v1/")
		switch route(r) {
		case "xks POST health":
			json.NewEncoder(w).Encode(map[string]string{"status": "ok", "requestId": httpstack.RequestID(r.Context())})
		case "xks POST keys/{keyId}/encrypt":
			var body struct {
				Plaintext []byte `json:"plaintext"`
			}
			if err := stack.DecodeJSON(r, &body); err != nil {
				fail(w, r, err)
				return
			}
			key := strings.TrimSuffix(strings.TrimPrefix(rest, "keys/"), "/encrypt")
			res, err := srv.Service().Encrypt(r.Context(), service.EncryptRequest{Key: key, Plaintext: body.Plaintext})
			if err != nil {
				fail(w, r, err)
				return
			}
			json.NewEncoder(w).Encode(map[string]any{"ciphertext": res.Ciphertext, "principal": service.CallerFrom(r.Context()).Principal})
		default:
			fail(w, r, kgerr.New(kgerr.KindInvalidInput, "no such XKS route"))
		}
	}))
}

// TestFrontEndsOnOneListener: the REST API and a second front end share one
// TLS listener, each reached in its own path space with its own error
// format and credential, over one HTTP stack and one key service; the
// second front end's routes are matched on the raw path (no redirect of
// "//kms/xks/v1/health").
func TestFrontEndsOnOneListener(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	url, e := serveTLS(t, securityYAML(t, fmt.Sprintf("server:\n  max_body_bytes: 4096\n  tls:\n    cert_file: %s\n    key_file: %s\n", pki.certFile, pki.keyFile)))
	if err := e.srv.Mount(server.FrontEnd{Name: "xks-test", Claims: server.PathContains("/kms/xks/v1/"), Handler: xksLike(e.srv)}); err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.caPool}},
		// A redirect is an answer here, not something to follow.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	type answer struct {
		status int
		header http.Header
		body   map[string]any
		raw    []byte
	}
	send := func(method, path string, body string, hdr ...string) answer {
		t.Helper()
		req, err := http.NewRequest(method, url+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		a := answer{status: resp.StatusCode, header: resp.Header}
		a.raw, _ = io.ReadAll(resp.Body)
		json.Unmarshal(a.raw, &a.body)
		return a
	}
	key := []string{"X-Test-Access-Key", xksAccessKey}
	rest := []string{"Authorization", "Bearer " + adminTok}

	// REST, on the same listener: its routes, its credential, its errors.
	tc, _ := client.LoadTLSConfig(pki.caFile, "", "")
	c, _ := client.New(url, client.WithTLSConfig(tc), client.WithToken(adminTok))
	ctx := context.Background()
	for _, name := range []string{"xks-aes", "payments-aes"} {
		if _, err := c.CreateKey(ctx, apitypes.CreateKeyRequest{Name: name, KeySpec: apitypes.KeySpec{KeyType: "AES", KeySize: 256}}); err != nil {
			t.Fatalf("create %s over REST: %v", name, err)
		}
	}
	if a := send(http.MethodGet, "/health", ""); a.status != http.StatusOK || a.body["status"] != "ok" {
		t.Fatalf("REST /health: %d %s", a.status, a.raw)
	}
	a := send(http.MethodGet, "/api/v1/keys", "", key...)
	if a.status != http.StatusUnauthorized || !strings.HasPrefix(a.header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("REST with the other front end's credential: %d %v", a.status, a.header)
	}
	var eb apitypes.ErrorBody
	if err := json.Unmarshal(a.raw, &eb); err != nil || eb.Error.Code != apitypes.CodeAuthenticationFailed || eb.Error.RequestID != a.header.Get("X-Request-Id") {
		t.Fatalf("REST error body %s", a.raw)
	}
	if a := send(http.MethodGet, "/api/v1/no-such-route", "", rest...); a.status != http.StatusNotFound || !bytes.Contains(a.raw, []byte(`"code":"NOT_FOUND"`)) {
		t.Fatalf("REST 404: %d %s", a.status, a.raw)
	}

	// The second front end under an empty and a non-empty URI prefix.
	for _, path := range []string{"/kms/xks/v1/health", "//kms/xks/v1/health", "/example/prefix/kms/xks/v1/health"} {
		a := send(http.MethodPost, path, "", append(key, "X-Request-Id", "xks-health-1")...)
		if a.status != http.StatusOK || a.body["status"] != "ok" || a.body["requestId"] != a.header.Get("X-Request-Id") || a.header.Get("X-Client-Request-Id") != "xks-health-1" {
			t.Fatalf("POST %s: %d %v %s", path, a.status, a.header, a.raw)
		}
	}
	a = send(http.MethodPost, "/p/kms/xks/v1/keys/xks-aes/encrypt", `{"plaintext":"aGVsbG8="}`, append(key, "X-Request-Id", "xks-enc-1")...)
	if a.status != http.StatusOK || a.body["principal"] != "xks-proxy" || a.body["ciphertext"] == nil {
		t.Fatalf("XKS-like encrypt: %d %s", a.status, a.raw)
	}
	if r := e.oneRecord(t, "xks-enc-1"); r.Operation != "encrypt" || r.Principal != "xks-proxy" || r.KeyName != "xks-aes" || r.Outcome != "success" {
		t.Fatalf("audit record of the XKS-like encrypt: %+v", r)
	}
	// Its errors are its own format; no REST header.
	for _, tc := range []struct {
		name, path, body string
		hdr              []string
		status           int
		errorName        string
	}{
		{"no credential", "/kms/xks/v1/health", "", nil, http.StatusUnauthorized, "AuthenticationFailedException"},
		{"REST token", "/kms/xks/v1/health", "", rest, http.StatusUnauthorized, "AuthenticationFailedException"},
		{"unknown field", "/kms/xks/v1/keys/xks-aes/encrypt", `{"plaintext":"aGVsbG8=","x":1}`, key, http.StatusBadRequest, "ValidationException"},
		{"body over the cap", "/kms/xks/v1/keys/xks-aes/encrypt", `{"plaintext":"` + strings.Repeat("A", 8192) + `"}`, key, http.StatusBadRequest, "ValidationException"},
		{"key out of scope", "/kms/xks/v1/keys/payments-aes/encrypt", `{"plaintext":"aGVsbG8="}`, key, http.StatusForbidden, "AccessDeniedException"},
		{"no such route", "/kms/xks/v1/keys/xks-aes/sign", `{}`, key, http.StatusBadRequest, "ValidationException"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := send(http.MethodPost, tc.path, tc.body, tc.hdr...)
			if msg, _ := a.body["errorMessage"].(string); a.status != tc.status || a.body["errorName"] != tc.errorName || msg == "" || a.body["error"] != nil {
				t.Fatalf("%d %s, want %d %s", a.status, a.raw, tc.status, tc.errorName)
			}
			if a.header.Get("WWW-Authenticate") != "" || a.header.Get("X-Request-Id") == "" {
				t.Fatalf("headers %v", a.header)
			}
		})
	}
	// One metrics registry counts both front ends by their route labels.
	m := send(http.MethodGet, "/metrics", "")
	for _, w := range []string{
		`keygrid_http_requests_total{route="xks POST health",status="200"} 3`,
		`keygrid_http_requests_total{route="xks POST keys/{keyId}/encrypt",status="403"} 1`,
		`keygrid_http_requests_total{route="GET /health",status="200"} 1`,
	} {
		if !bytes.Contains(m.raw, []byte(w)) {
			t.Errorf("metrics lack %s", w)
		}
	}
}

// TestMountRefusesRESTPaths: a front end may not claim the REST API's
// path space.
func TestMountRefusesRESTPaths(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := http.NotFoundHandler()
	for _, claims := range []func(*http.Request) bool{server.PathPrefix("/api/"), server.PathPrefix("/health"), server.PathContains("/keys")} {
		if err := e.srv.Mount(server.FrontEnd{Name: "greedy", Claims: claims, Handler: h}); err == nil {
			t.Fatal("a front end claiming REST paths was mounted")
		}
	}
	if err := e.srv.Mount(server.FrontEnd{Name: "console", Claims: server.PathPrefix("/console/"), Handler: h}); err != nil {
		t.Fatalf("a front end of its own path space: %v", err)
	}
	// REST still answers its own paths and everything unclaimed.
	for path, want := range map[string]int{"/health": http.StatusOK, "/console/x": http.StatusNotFound, "/api/v1/keys": http.StatusOK} {
		resp, err := e.ts.Client().Do(mustRequest(t, e, path))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
		}
		if path == "/console/x" && bytes.Contains(b, []byte(`"error"`)) {
			t.Fatalf("GET %s reached REST: %s", path, b)
		}
	}
}

func mustRequest(t *testing.T, e *env, path string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.ts.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.token)
	return req
}
