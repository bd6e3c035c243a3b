package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"time"

	"github.com/keygrid/keygrid-hsm/docs"
)

// openAPIPath serves the OpenAPI document of this API, without a
// credential (it describes the routes; it holds nothing of any key).
const openAPIPath = "/api/v1/openapi.yaml"

// openAPIETag is the entity tag of the document (it changes only with the
// binary).
var openAPIETag = func() string {
	sum := sha256.Sum256(docs.OpenAPI)
	return `"` + hex.EncodeToString(sum[:16]) + `"`
}()

// openAPI serves docs/openapi.yaml as built into the binary: YAML, with an
// ETag (If-None-Match answers 304) and revalidated on every use.
func (a *API) openAPI(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "application/yaml")
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", openAPIETag)
	h.Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(w, r, "openapi.yaml", time.Time{}, bytes.NewReader(docs.OpenAPI))
}
