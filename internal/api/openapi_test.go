package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/keygrid/keygrid-hsm/docs"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// TestEveryDocumentedOperationIsRouted: each operation of the OpenAPI
// document the server serves reaches a handler of its own (no 404 NOT_FOUND,
// no 405), so that the document describes routes that exist.
func TestEveryDocumentedOperationIsRouted(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(docs.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Paths) < 35 {
		t.Fatalf("the document has %d paths", len(doc.Paths))
	}
	s := newAuditedStack(t)
	n := 0
	for path, ops := range doc.Paths {
		p := strings.NewReplacer("{key}", "no-such-key", "{name}", "software").Replace(path)
		for m := range ops {
			method := strings.ToUpper(m)
			switch method {
			case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
			default:
				continue // parameters, summary, …
			}
			n++
			code, _, body := s.do(method, p, testAdminToken, nil)
			var e apitypes.ErrorBody
			_ = json.Unmarshal(body, &e)
			if code == http.StatusMethodNotAllowed || e.Error.Code == apitypes.CodeNotFound {
				t.Errorf("%s %s is documented but not routed: %d %s", method, path, code, body)
			}
		}
	}
	if n < 40 {
		t.Fatalf("only %d operations found", n)
	}
}
