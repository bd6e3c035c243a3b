// Package docs holds the documents the server itself serves: the OpenAPI
// description of the REST API (openapi.yaml, at GET /api/v1/openapi.yaml).
package docs

import _ "embed"

// OpenAPI is docs/openapi.yaml, the OpenAPI 3 description of the REST API.
//
//go:embed openapi.yaml
var OpenAPI []byte
