package server_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// The requests of the original KeyGrid HSM project's Postman collection
// (docs/postman-collection.json of github.com/jimmytoenners/keygridhsm,
// schema v2.1), each written here as the collection writes it: method, URL
// with its {{variables}}, headers, raw body. The collection authenticates
// every request with its API key (collection-level auth: header X-API-Key:
// {{api_key}}). checks are what the collection's test scripts read of the
// response; sets are the variables they set from it.
type postmanRequest struct {
	folder, name string
	method, url  string
	headers      map[string]string
	body         string
	status       int
	checks       func(t *testing.T, r map[string]any)
	sets         map[string]string // variable → response field
}

const jsonHeader = "application/json"

var postmanCollection = []postmanRequest{
	// Health & Status
	{folder: "Health & Status", name: "Health Check", method: "GET", url: "{{base_url}}/health", status: 200,
		checks: func(t *testing.T, r map[string]any) { has(t, r, "status", "timestamp", "version") }},
	{folder: "Health & Status", name: "Readiness Check", method: "GET", url: "{{base_url}}/ready", status: 200,
		checks: func(t *testing.T, r map[string]any) { has(t, r, "status", "timestamp", "providers") }},
	{folder: "Health & Status", name: "Prometheus Metrics", method: "GET", url: "{{base_url}}/metrics", status: 200},

	// Provider Management
	{folder: "Provider Management", name: "List Providers", method: "GET", url: "{{base_url}}/api/v1/providers", status: 200,
		checks: func(t *testing.T, r map[string]any) {
			has(t, r, "providers", "count")
			if r["count"] != float64(2) {
				t.Errorf("count %v, want 2", r["count"])
			}
		}},
	{folder: "Provider Management", name: "Get Provider Info", method: "GET", url: "{{base_url}}/api/v1/providers/{{provider}}/info", status: 200,
		checks: func(t *testing.T, r map[string]any) {
			has(t, r, "provider", "status", "capabilities")
			if r["provider"] != "mock-hsm" || r["status"] != "active" {
				t.Errorf("provider info %v", r)
			}
		}},
	{folder: "Provider Management", name: "Check Provider Health", method: "GET", url: "{{base_url}}/api/v1/providers/{{provider}}/health", status: 200,
		checks: func(t *testing.T, r map[string]any) {
			has(t, r, "provider", "status", "last_check", "response_time")
			if r["provider"] != "mock-hsm" || r["status"] != "healthy" {
				t.Errorf("provider health %v", r)
			}
		}},

	// Key Management
	{folder: "Key Management", name: "Generate RSA Key", method: "POST", url: "{{base_url}}/api/v1/keys", headers: map[string]string{"Content-Type": jsonHeader},
		body:   "{\n    \"provider\": \"{{provider}}\",\n    \"name\": \"rsa-test-key-{{$timestamp}}\",\n    \"key_spec\": {\n        \"key_type\": \"RSA\",\n        \"key_size\": 2048,\n        \"key_usage\": [\"sign\", \"verify\", \"encrypt\", \"decrypt\"]\n    }\n}",
		status: 201, checks: keyCreated("RSA"), sets: map[string]string{"key_id": "id"}},
	{folder: "Key Management", name: "Generate ECDSA Key", method: "POST", url: "{{base_url}}/api/v1/keys", headers: map[string]string{"Content-Type": jsonHeader},
		body:   "{\n    \"provider\": \"{{provider}}\",\n    \"name\": \"ecdsa-test-key-{{$timestamp}}\",\n    \"key_spec\": {\n        \"key_type\": \"ECDSA\",\n        \"curve\": \"P-256\",\n        \"key_usage\": [\"sign\", \"verify\"]\n    }\n}",
		status: 201, checks: keyCreated("EC"), sets: map[string]string{"ecdsa_key_id": "id"}},
	{folder: "Key Management", name: "Generate Azure KeyVault Key", method: "POST", url: "{{base_url}}/api/v1/keys", headers: map[string]string{"Content-Type": jsonHeader},
		body:   "{\n    \"provider\": \"azure-keyvault\",\n    \"name\": \"azure-rsa-key-{{$timestamp}}\",\n    \"key_spec\": {\n        \"key_type\": \"RSA\",\n        \"key_size\": 2048,\n        \"key_usage\": [\"sign\", \"verify\", \"encrypt\", \"decrypt\"]\n    },\n    \"config\": {\n        \"vault_url\": \"https://your-keyvault.vault.azure.net/\"\n    }\n}",
		status: 201, checks: keyCreated("RSA")},
	{folder: "Key Management", name: "List Keys", method: "GET", url: "{{base_url}}/api/v1/keys?provider={{provider}}&limit=10", status: 200,
		checks: func(t *testing.T, r map[string]any) {
			has(t, r, "keys", "count", "limit", "offset")
			if r["count"] != float64(2) || len(r["keys"].([]any)) != 2 || r["limit"] != float64(10) {
				t.Errorf("list of mock-hsm's keys: count %v, limit %v", r["count"], r["limit"])
			}
		}},
	{folder: "Key Management", name: "Get Key Information", method: "GET", url: "{{base_url}}/api/v1/keys/{{key_id}}", status: 200,
		checks: func(t *testing.T, r map[string]any) {
			has(t, r, "id", "name", "provider", "key_spec", "status", "created_at")
		}},
	{folder: "Key Management", name: "Activate Key", method: "POST", url: "{{base_url}}/api/v1/keys/{{key_id}}/activate", status: 200,
		checks: operation("active")},
	{folder: "Key Management", name: "Deactivate Key", method: "POST", url: "{{base_url}}/api/v1/keys/{{key_id}}/deactivate", status: 200,
		checks: operation("inactive")},
	{folder: "Key Management", name: "Delete Key", method: "DELETE", url: "{{base_url}}/api/v1/keys/{{key_id}}", status: 200,
		checks: operation("pending_deletion")},

	// Cryptographic Operations. The folder needs an active key: as a
	// Postman user does after the Key Management folder deleted its key,
	// it starts by generating one (the collection's own request).
	{folder: "Cryptographic Operations", name: "Generate RSA Key", method: "POST", url: "{{base_url}}/api/v1/keys", headers: map[string]string{"Content-Type": jsonHeader},
		body:   "{\n    \"provider\": \"{{provider}}\",\n    \"name\": \"rsa-test-key-{{$timestamp}}\",\n    \"key_spec\": {\n        \"key_type\": \"RSA\",\n        \"key_size\": 2048,\n        \"key_usage\": [\"sign\", \"verify\", \"encrypt\", \"decrypt\"]\n    }\n}",
		status: 201, checks: keyCreated("RSA"), sets: map[string]string{"key_id": "id"}},
	{folder: "Cryptographic Operations", name: "Sign Data", method: "POST", url: "{{base_url}}/api/v1/keys/{{key_id}}/sign", headers: map[string]string{"Content-Type": jsonHeader},
		body:   "{\n    \"data\": \"SGVsbG8sIFdvcmxkIQ==\",\n    \"algorithm\": \"RS256\"\n}",
		status: 200, checks: fields(map[string]any{"algorithm": "RS256"}, "key_id", "signature"), sets: map[string]string{"signature": "signature"}},
	{folder: "Cryptographic Operations", name: "Verify Signature", method: "POST", url: "{{base_url}}/api/v1/keys/{{key_id}}/verify", headers: map[string]string{"Content-Type": jsonHeader},
		body:   "{\n    \"data\": \"SGVsbG8sIFdvcmxkIQ==\",\n    \"signature\": \"{{signature}}\",\n    \"algorithm\": \"RS256\"\n}",
		status: 200, checks: fields(map[string]any{"valid": true, "algorithm": "RS256"}, "key_id")},
	{folder: "Cryptographic Operations", name: "Encrypt Data", method: "POST", url: "{{base_url}}/api/v1/keys/{{key_id}}/encrypt", headers: map[string]string{"Content-Type": jsonHeader},
		body:   "{\n    \"data\": \"U2VjcmV0IG1lc3NhZ2U=\",\n    \"algorithm\": \"RSA-OAEP\"\n}",
		status: 200, checks: fields(map[string]any{"algorithm": "RSA-OAEP"}, "key_id", "ciphertext"), sets: map[string]string{"ciphertext": "ciphertext"}},
	{folder: "Cryptographic Operations", name: "Decrypt Data", method: "POST", url: "{{base_url}}/api/v1/keys/{{key_id}}/decrypt", headers: map[string]string{"Content-Type": jsonHeader},
		body:   "{\n    \"ciphertext\": \"{{ciphertext}}\",\n    \"algorithm\": \"RSA-OAEP\"\n}",
		status: 200, checks: fields(map[string]any{"plaintext": "U2VjcmV0IG1lc3NhZ2U=", "algorithm": "RSA-OAEP"}, "key_id")},
	// "Sign data using ECDSA algorithm (use with ECDSA keys)": key_id is
	// the ECDSA key's for this request.
	{folder: "Cryptographic Operations", name: "Sign with ECDSA", method: "POST", url: "{{base_url}}/api/v1/keys/{{ecdsa_key_id}}/sign", headers: map[string]string{"Content-Type": jsonHeader},
		body:   "{\n    \"data\": \"SGVsbG8sIFdvcmxkIQ==\",\n    \"algorithm\": \"ES256\"\n}",
		status: 200, checks: fields(map[string]any{"algorithm": "ES256"}, "key_id", "signature")},

	// Examples & Workflows
	{folder: "Examples & Workflows", name: "Complete RSA Workflow", method: "POST", url: "{{base_url}}/api/v1/keys", headers: map[string]string{"Content-Type": jsonHeader},
		body:   "{\n    \"provider\": \"mock-hsm\",\n    \"name\": \"workflow-rsa-key-{{$timestamp}}\",\n    \"key_spec\": {\n        \"key_type\": \"RSA\",\n        \"key_size\": 2048,\n        \"key_usage\": [\"sign\", \"verify\", \"encrypt\", \"decrypt\"]\n    }\n}",
		status: 201, checks: keyCreated("RSA"), sets: map[string]string{"workflow_key_id": "id"}},
	{folder: "Examples & Workflows", name: "Sign Workflow Data", method: "POST", url: "{{base_url}}/api/v1/keys/{{workflow_key_id}}/sign", headers: map[string]string{"Content-Type": jsonHeader},
		body:   "{\n    \"data\": \"V29ya2Zsb3cgVGVzdCBEYXRh\",\n    \"algorithm\": \"RS256\"\n}",
		status: 200, checks: fields(map[string]any{"algorithm": "RS256"}, "signature"), sets: map[string]string{"workflow_signature": "signature"}},
	{folder: "Examples & Workflows", name: "Verify Workflow Signature", method: "POST", url: "{{base_url}}/api/v1/keys/{{workflow_key_id}}/verify", headers: map[string]string{"Content-Type": jsonHeader},
		body:   "{\n    \"data\": \"V29ya2Zsb3cgVGVzdCBEYXRh\",\n    \"signature\": \"{{workflow_signature}}\",\n    \"algorithm\": \"RS256\"\n}",
		status: 200, checks: fields(map[string]any{"valid": true})},
}

func has(t *testing.T, r map[string]any, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, ok := r[n]; !ok {
			t.Errorf("response lacks %q: %v", n, r)
		}
	}
}

// keyCreated is the collection's check of a generated key: id, status
// "active", key_spec.key_type.
func keyCreated(keyType string) func(t *testing.T, r map[string]any) {
	return func(t *testing.T, r map[string]any) {
		t.Helper()
		has(t, r, "id", "name", "provider", "key_spec", "status", "created_at", "provider_id", "provider_key_id")
		spec, _ := r["key_spec"].(map[string]any)
		if r["status"] != "active" || spec["key_type"] != keyType || spec["key_usage"] == nil {
			t.Errorf("created key: status %v, key_spec %v", r["status"], spec)
		}
	}
}

// operation checks the original API's OperationResponse: key_id, status,
// timestamp (and message).
func operation(status string) func(t *testing.T, r map[string]any) {
	return func(t *testing.T, r map[string]any) {
		t.Helper()
		has(t, r, "key_id", "status", "timestamp", "message")
		if r["status"] != status {
			t.Errorf("status %v, want %s", r["status"], status)
		}
	}
}

// fields checks values and the presence of names.
func fields(want map[string]any, names ...string) func(t *testing.T, r map[string]any) {
	return func(t *testing.T, r map[string]any) {
		t.Helper()
		has(t, r, names...)
		for k, v := range want {
			if r[k] != v {
				t.Errorf("%s = %v, want %v", k, r[k], v)
			}
		}
	}
}

var postmanVar = regexp.MustCompile(`\{\{(\$?[a-z_]+)\}\}`)

// TestOriginalCollectionReplayed runs the collection's requests, folder by
// folder, against a gateway whose providers carry the collection's names
// (mock-hsm, azure-keyvault: software keystores here), authenticated with
// an API key as the collection does.
func TestOriginalCollectionReplayed(t *testing.T) {
	t.Parallel()
	mk := filepath.Join(t.TempDir(), "master.key")
	if err := os.WriteFile(mk, []byte(masterKeyHx), 0o600); err != nil {
		t.Fatal(err)
	}
	const apiKey = "kgt_postman-collection-api-key-01"
	e := startYAML(t, fmt.Sprintf(`
providers:
  mock-hsm:
    type: software
    config:
      master_key_file: %[1]s
  azure-keyvault:
    type: software
    config:
      master_key_file: %[1]s
default_provider: mock-hsm
auth:
  principals:
    - {name: postman, role: admin, token_sha256: %[2]s}
`, mk, auth.HashToken(apiKey)), nil)
	vars := map[string]string{"base_url": e.ts.URL, "provider": "mock-hsm", "api_key": apiKey}
	var stamp atomic.Int64
	stamp.Store(time.Now().Unix())
	subst := func(s string) string {
		return postmanVar.ReplaceAllStringFunc(s, func(m string) string {
			name := m[2 : len(m)-2]
			if name == "$timestamp" {
				// Postman's $timestamp is the Unix time in seconds: two
				// requests in one second would repeat it; here it moves on.
				return fmt.Sprint(stamp.Add(1))
			}
			v, ok := vars[name]
			if !ok {
				t.Fatalf("variable %s is not set", name)
			}
			return v
		})
	}
	for _, pr := range postmanCollection {
		t.Run(pr.folder+"/"+pr.name, func(t *testing.T) {
			var body io.Reader
			if pr.body != "" {
				body = strings.NewReader(subst(pr.body))
			}
			req, err := http.NewRequest(pr.method, subst(pr.url), body)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range pr.headers {
				req.Header.Set(k, v)
			}
			req.Header.Set("X-API-Key", subst("{{api_key}}"))
			resp, err := e.ts.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != pr.status {
				t.Fatalf("%s %s: %d %s, want %d", pr.method, req.URL, resp.StatusCode, b, pr.status)
			}
			if pr.checks == nil && pr.sets == nil {
				return
			}
			var r map[string]any
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatalf("response is not a JSON object: %v: %s", err, b)
			}
			if pr.checks != nil {
				pr.checks(t, r)
			}
			for v, field := range pr.sets {
				s, ok := r[field].(string)
				if !ok || s == "" {
					t.Fatalf("response field %s for {{%s}}: %v", field, v, r[field])
				}
				vars[v] = s
			}
		})
	}
	// The signature the collection verified is a real RS256 signature of
	// its data under the key's public key.
	e = e.as(apiKey)
	sig, _ := base64.StdEncoding.DecodeString(vars["workflow_signature"])
	if err := goVerify(parsePEM(t, e.publicPEM(t, vars["workflow_key_id"], 0)), "RS256", []byte("Workflow Test Data"), sig); err != nil {
		t.Fatalf("the workflow's signature does not verify independently: %v", err)
	}
	// The Azure request's config was not taken as provider settings: its
	// key is in the configured azure-keyvault keystore.
	var l apitypes.KeyList
	e.ok(t, http.MethodGet, "/api/v1/keys?provider=azure-keyvault", nil, http.StatusOK, &l)
	if len(l.Keys) != 1 || l.Keys[0].Provider != "azure-keyvault" {
		t.Fatalf("azure-keyvault keys %+v", l.Keys)
	}
	if m := keyFilesBut(t, e.srv, filepath.Join(e.dataDir, "keystore", "azure-keyvault")); len(m) != 1 {
		t.Fatalf("azure-keyvault keystore holds %d key files", len(m))
	}
}

// TestOriginalShapes: the original API's listing parameters (status,
// offset) and the fields its clients read, beside ours.
func TestOriginalShapes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var names []string
	for i := range 5 {
		names = append(names, e.createKey(t, fmt.Sprintf("shape-%d", i), apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}).Name)
	}
	e.ok(t, http.MethodPost, keyPath("shape-1", "/deactivate"), nil, http.StatusOK, nil)
	var l apitypes.KeyList
	e.ok(t, http.MethodGet, "/api/v1/keys?limit=2&offset=2", nil, http.StatusOK, &l)
	if l.Count != 2 || l.Limit != 2 || l.Offset != 2 || l.Keys[0].Name != names[2] || l.Keys[1].Name != names[3] {
		t.Fatalf("offset 2 limit 2: %+v", l)
	}
	l = apitypes.KeyList{}
	e.ok(t, http.MethodGet, "/api/v1/keys?status=inactive", nil, http.StatusOK, &l)
	if len(l.Keys) != 1 || l.Keys[0].Name != "shape-1" || l.Keys[0].Status != "inactive" {
		t.Fatalf("status=inactive: %+v", l.Keys)
	}
	e.fails(t, http.MethodGet, "/api/v1/keys?status=active&state=inactive", nil, http.StatusBadRequest, apitypes.CodeInvalidInput)
	e.fails(t, http.MethodGet, "/api/v1/keys?offset=-1", nil, http.StatusBadRequest, apitypes.CodeInvalidInput)
	e.fails(t, http.MethodGet, "/api/v1/keys?offset=1&page_token=abc", nil, http.StatusBadRequest, apitypes.CodeInvalidInput)

	var k apitypes.Key
	e.ok(t, http.MethodGet, keyPath("shape-0", ""), nil, http.StatusOK, &k)
	if k.Status != k.State || k.ProviderID != "software" || k.ProviderKeyID == "" || k.ProviderKeyID != k.Versions[0].ProviderRef ||
		k.KeySpec == nil || k.KeySpec.KeyType != "EC" || strings.Join(k.KeySpec.KeyUsage, ",") != "sign,verify" {
		t.Fatalf("original fields of a key: %+v spec %+v", k, k.KeySpec)
	}
	// usage and key_usage: either, or both when equal.
	e.ok(t, http.MethodPost, "/api/v1/keys", `{"name":"both","key_spec":{"key_type":"EC","curve":"P-256","usage":["sign"],"key_usage":["sign"]}}`, http.StatusCreated, nil)
	e.fails(t, http.MethodPost, "/api/v1/keys", `{"name":"differ","key_spec":{"key_type":"EC","curve":"P-256","usage":["sign"],"key_usage":["verify"]}}`,
		http.StatusBadRequest, apitypes.CodeInvalidInput)
	e.fails(t, http.MethodPost, "/api/v1/keys", `{"name":"cfg","key_spec":{"key_type":"EC","curve":"P-256"},"config":"not an object"}`,
		http.StatusBadRequest, apitypes.CodeInvalidInput)

	var h apitypes.Health
	e.ok(t, http.MethodGet, "/health", nil, http.StatusOK, &h)
	if h.Status != "ok" || h.Timestamp.IsZero() || time.Since(h.Timestamp) > time.Minute {
		t.Fatalf("health %+v", h)
	}
	var rd apitypes.Ready
	e.ok(t, http.MethodGet, "/ready", nil, http.StatusOK, &rd)
	if rd.Timestamp.IsZero() || len(rd.Providers) == 0 {
		t.Fatalf("ready %+v", rd)
	}
	var pl apitypes.ProviderList
	e.ok(t, http.MethodGet, "/api/v1/providers", nil, http.StatusOK, &pl)
	if pl.Count != len(pl.Providers) || pl.Count != 1 || pl.Providers[0].Provider != "software" || pl.Providers[0].Status != "active" {
		t.Fatalf("providers %+v", pl)
	}
	var info apitypes.ProviderInfo
	e.ok(t, http.MethodGet, "/api/v1/providers/software/info", nil, http.StatusOK, &info)
	if info.Name != "software" || info.Provider != "software" || !info.Healthy || len(info.Capabilities) == 0 {
		t.Fatalf("provider info %+v", info)
	}
	e.fails(t, http.MethodGet, "/api/v1/providers/nope/info", nil, http.StatusNotFound, apitypes.CodeProviderNotFound)
	var ph apitypes.ProviderHealth
	e.ok(t, http.MethodGet, "/api/v1/providers/software/health", nil, http.StatusOK, &ph)
	if ph.Provider != "software" || ph.Status != "healthy" || ph.ResponseTime == "" || ph.LastSuccess == nil {
		t.Fatalf("provider health %+v", ph)
	}
}
