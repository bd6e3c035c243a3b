package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// TestRESTErrorTableCoversEveryKind: every domain kind has its own row, and
// the REST codes stay those of the original vocabulary.
func TestRESTErrorTableCoversEveryKind(t *testing.T) {
	if len(restErrors) != len(kgerr.Kinds) {
		t.Errorf("table has %d rows, kgerr has %d kinds", len(restErrors), len(kgerr.Kinds))
	}
	seen := map[apitypes.ErrorCode]kgerr.Kind{}
	for _, k := range kgerr.Kinds {
		r, ok := restErrors[k]
		if !ok {
			t.Errorf("kind %s has no REST row", k)
			continue
		}
		if string(r.code) != string(k) {
			t.Errorf("kind %s answers code %s: the REST vocabulary changed", k, r.code)
		}
		if other, dup := seen[r.code]; dup {
			t.Errorf("kinds %s and %s share code %s", k, other, r.code)
		}
		seen[r.code] = k
	}
}

// TestClassifyOnce: a deadline, wherever it passed, is a timeout (504) in
// the response and the same kind everywhere else; a cancellation is 503.
func TestClassifyOnce(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		kind   kgerr.Kind
		status int
	}{
		{"store deadline", fmt.Errorf("store: get key: %w", context.DeadlineExceeded), kgerr.KindTimeout, http.StatusGatewayTimeout},
		{"cancelled", fmt.Errorf("x: %w", context.Canceled), kgerr.KindUnavailable, http.StatusServiceUnavailable},
		{"plain", errors.New("boom"), kgerr.KindInternal, http.StatusInternalServerError},
		{"typed", kgerr.New(kgerr.KindKeyExpired, "expired"), kgerr.KindKeyExpired, http.StatusConflict},
		{"typed wrapping a deadline", kgerr.Wrap(kgerr.KindUnavailable, context.DeadlineExceeded, "x"), kgerr.KindUnavailable, http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if k := kgerr.KindOf(tc.err); k != tc.kind {
				t.Fatalf("kind %s, want %s", k, tc.kind)
			}
			if s := rest(kgerr.KindOf(tc.err)).status; s != tc.status {
				t.Fatalf("status %d, want %d", s, tc.status)
			}
		})
	}
}
