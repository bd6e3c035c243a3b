package api

import (
	"encoding/pem"
	"net/http"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// GET /api/v1/audit/checkpoints?replica=&limit=&page_token=: the signed
// audit checkpoints, newest first, with the audit public keys (admin and
// auditor roles).
func (a *API) auditCheckpoints(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, err := listLimit(q)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	for name := range q {
		switch name {
		case "replica", "limit", "page_token":
		default:
			a.fail(w, r, kgerr.Invalid("unknown query parameter "+kgerr.Quote(name)))
			return
		}
	}
	list, err := a.svc.AuditCheckpoints(r.Context(), service.CheckpointListOptions{Replica: q.Get("replica"), Limit: limit, PageToken: q.Get("page_token")})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := apitypes.CheckpointList{Checkpoints: make([]apitypes.Checkpoint, 0, len(list.Checkpoints)), NextPageToken: list.NextPageToken,
		SigningKeys: make([]apitypes.AuditSigningKey, 0, len(list.SigningKeys))}
	for _, c := range list.Checkpoints {
		out.Checkpoints = append(out.Checkpoints, apitypes.Checkpoint{ID: c.ID(), Replica: c.Replica, File: c.File, Seq: c.Seq, Head: c.Head,
			Time: c.Time, Key: c.KeyRef, Signature: c.Signature})
	}
	for _, k := range list.SigningKeys {
		out.SigningKeys = append(out.SigningKeys, apitypes.AuditSigningKey{Key: k.Ref,
			PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: k.PublicKey}))})
	}
	a.write(w, http.StatusOK, out)
}
