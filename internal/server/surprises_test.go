package server_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/keygrid/keygrid-hsm/docs"
	"github.com/keygrid/keygrid-hsm/internal/store/storetest"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// TestListRefusesWhatItCannotMean: a listing whose query cannot mean what
// it says (a page token the server never made, a page size out of range, a
// provider no key and no configuration knows, a state that is none, a
// misspelt or repeated parameter) is 400 INVALID_INPUT naming what is
// wrong, never a 200 with an empty or unfiltered list; good listings answer
// as before.
func TestListRefusesWhatItCannotMean(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, n := range []string{"list-a", "list-b", "list-c"} {
		e.createKey(t, n, apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})
	}
	before := len(e.listKeys(t))
	upper := base64.RawURLEncoding.EncodeToString([]byte(strings.ToUpper(e.listKeys(t)[0].ID)))
	for _, tc := range []struct{ name, query, says string }{
		{"page_token garbage", "page_token=garbage", "page_token"},
		{"page_token not base64", "page_token=!!", "page_token"},
		{"page_token of no key id", "page_token=" + base64.RawURLEncoding.EncodeToString([]byte("nothing")), "page_token"},
		{"page_token of an id in upper case", "page_token=" + upper, "page_token"},
		{"page_token empty", "page_token=", "page_token"},
		{"limit 0", "limit=0", "limit"},
		{"limit negative", "limit=-5", "limit"},
		{"limit over the max", "limit=1001", "limit"},
		{"limit huge", "limit=99999999999999999999", "limit"},
		{"limit not a number", "limit=ten", "limit"},
		{"limit empty", "limit=", "limit"},
		{"limit twice", "limit=5&limit=1", "limit"},
		{"provider not configured", "provider=nope", `"nope"`},
		{"provider empty", "provider=", "provider"},
		{"state bogus", "state=bogus", `"bogus"`},
		{"status bogus", "status=bogus", `"bogus"`},
		{"unknown parameter", "stat=active", `"stat"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := e.fails(t, http.MethodGet, "/api/v1/keys?"+tc.query, nil, http.StatusBadRequest, apitypes.CodeInvalidInput)
			if !strings.Contains(d.Message, tc.says) {
				t.Fatalf("message %q does not name %s", d.Message, tc.says)
			}
		})
	}
	if n := len(e.listKeys(t)); n != before {
		t.Fatalf("%d keys after the refused listings, want %d", n, before)
	}

	// What is valid still lists.
	var l apitypes.KeyList
	e.ok(t, http.MethodGet, "/api/v1/keys?limit=1", nil, http.StatusOK, &l)
	if len(l.Keys) != 1 || l.NextPageToken == "" || l.Limit != 1 {
		t.Fatalf("limit=1: %d keys, next %q, limit %d", len(l.Keys), l.NextPageToken, l.Limit)
	}
	var next apitypes.KeyList
	e.ok(t, http.MethodGet, "/api/v1/keys?limit=1000&page_token="+l.NextPageToken, nil, http.StatusOK, &next)
	if len(next.Keys) != before-1 || next.Keys[0].ID == l.Keys[0].ID {
		t.Fatalf("the page after the first: %d keys, want %d", len(next.Keys), before-1)
	}
	for _, q := range []string{"provider=software", "state=active", "status=active", "offset=1"} {
		e.ok(t, http.MethodGet, "/api/v1/keys?"+q, nil, http.StatusOK, &l)
		if len(l.Keys) == 0 {
			t.Fatalf("%s: no keys", q)
		}
	}

	// A provider this gateway does not configure but whose keys are in the
	// store (another gateway's, or one removed from the configuration)
	// lists its keys.
	retired := storetest.NewKey("retired-1", "retired-hsm")
	if err := e.srv.Store().CreateKey(context.Background(), retired); err != nil {
		t.Fatal(err)
	}
	e.ok(t, http.MethodGet, "/api/v1/keys?provider=retired-hsm", nil, http.StatusOK, &l)
	if len(l.Keys) != 1 || l.Keys[0].ID != retired.ID {
		t.Fatalf("keys of retired-hsm: %+v", l.Keys)
	}
}

// TestOpenAPIAndUnknownPathsWithoutCredential: the OpenAPI document is
// served at /api/v1/openapi.yaml without a credential (the document built
// into the binary, as YAML, with an ETag); a path no route has answers 404
// NOT_FOUND, pointing at it, with or without a credential and leaving no
// audit record; every route keeps its credential (a known path with another
// method included) and the open routes stay open.
func TestOpenAPIAndUnknownPathsWithoutCredential(t *testing.T) {
	t.Parallel()
	e := startYAML(t, securityYAML(t, "limits:\n  auth_failure_burst: 100\n"), nil)
	e.createKey(t, "payments-1", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"})

	r := e.send(t, http.MethodGet, "/api/v1/openapi.yaml", nil, "Authorization", "")
	if r.status != http.StatusOK {
		t.Fatalf("GET /api/v1/openapi.yaml without a credential: %d %s", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/yaml" {
		t.Fatalf("Content-Type %q, want application/yaml", ct)
	}
	if !bytes.Equal(r.body, docs.OpenAPI) {
		t.Fatal("the document served is not docs/openapi.yaml")
	}
	var doc struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(r.body, &doc); err != nil || !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("not an OpenAPI 3 document: %q, %v", doc.OpenAPI, err)
	}
	if _, ok := doc.Paths["/api/v1/openapi.yaml"]["get"]; !ok {
		t.Fatal("the document does not describe GET /api/v1/openapi.yaml")
	}
	etag := r.header.Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	if r := e.send(t, http.MethodGet, "/api/v1/openapi.yaml", nil, "Authorization", "", "If-None-Match", etag); r.status != http.StatusNotModified {
		t.Fatalf("If-None-Match the ETag: %d, want 304", r.status)
	}
	// A wrong credential does not matter to an open route.
	if r := e.send(t, http.MethodGet, "/api/v1/openapi.yaml", nil, "Authorization", "Bearer "+wrongTok); r.status != http.StatusOK {
		t.Fatalf("with a wrong token: %d", r.status)
	}

	for i, p := range []string{"/", "/openapi.yaml", "/favicon.ico", "/api/v2/keys", "/api/v1/no-such-route",
		"/api/v1/keys/payments-1/teleport", "/api/v1/keys/payments-1/sign/extra", "/.well-known/other"} {
		for _, cred := range []string{"", "Bearer " + wrongTok, "Bearer " + adminTok} {
			rid := fmt.Sprintf("unknown-%d-%d", i, len(cred))
			d := e.fails(t, http.MethodGet, p, nil, http.StatusNotFound, apitypes.CodeNotFound, "Authorization", cred, "X-Request-Id", rid)
			if !strings.Contains(d.Message, "/api/v1/openapi.yaml") {
				t.Errorf("GET %s: 404 message %q does not point at the OpenAPI document", p, d.Message)
			}
			if rs := e.auditByRID(t, rid); len(rs) != 0 {
				t.Errorf("GET %s (credential %v): %d audit records, want none", p, cred != "", len(rs))
			}
		}
	}

	// Routes keep their credential, a known path with another method too.
	for _, rt := range []struct{ method, path string }{
		{http.MethodGet, "/api/v1/keys"}, {http.MethodGet, "/api/v1/keys/payments-1"}, {http.MethodDelete, "/api/v1/providers"},
		{http.MethodPost, "/api/v1/keys/payments-1/sign"}, {http.MethodGet, "/api/v1/audit/checkpoints"},
	} {
		e.fails(t, rt.method, rt.path, nil, http.StatusUnauthorized, apitypes.CodeAuthenticationFailed, "Authorization", "")
	}
	r = e.send(t, http.MethodDelete, "/api/v1/providers", nil)
	if r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != "GET" {
		t.Fatalf("DELETE /api/v1/providers with a credential: %d, Allow %q", r.status, r.header.Get("Allow"))
	}
	for _, p := range []string{"/health", "/ready", "/metrics", "/.well-known/jwks.json"} {
		if r := e.send(t, http.MethodGet, p, nil, "Authorization", ""); r.status != http.StatusOK {
			t.Errorf("GET %s without a credential: %d", p, r.status)
		}
	}
	// The console (on: the listener is a loopback address) still answers
	// its own paths with its sign-in, not the REST API's 404.
	noRedirect := *e.ts.Client()
	noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := noRedirect.Get(e.ts.URL + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound || strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /ui/: %d %s, want the console's answer", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}
