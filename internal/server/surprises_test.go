package server_test

import (
	"context"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"

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
