package server_test

import (
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// GET /api/v1/audit/checkpoints: every interval a checkpoint while records
// are written, none while the log is idle; newest first, each verifying
// with the listed public key and matching the log; for admin and auditor
// only (not an operator, not a scoped principal); the audit key is no key
// of the API.
func TestAuditCheckpointsRoute(t *testing.T) {
	e := startYAML(t, securityYAML(t, "audit:\n  checkpoint_interval: 200ms\n"), nil)
	e.ok(t, http.MethodPost, "/api/v1/keys", map[string]any{"name": "payments-ec", "key_spec": map[string]any{"key_type": "EC", "curve": "P-256"}}, http.StatusCreated, nil)
	list := func(t *testing.T, as string) apitypes.CheckpointList {
		var l apitypes.CheckpointList
		e.as(as).ok(t, http.MethodGet, "/api/v1/audit/checkpoints", nil, http.StatusOK, &l)
		return l
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(list(t, auditorTok).Checkpoints) < 2 {
		e.ok(t, http.MethodPost, "/api/v1/keys/payments-ec/sign", map[string]any{"data": b64([]byte("m")), "algorithm": "ES256"}, http.StatusOK, nil)
		if time.Now().After(deadline) {
			t.Fatal("no two interval checkpoints within 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Idle: the last record is a checkpoint's own line; no more come.
	time.Sleep(300 * time.Millisecond)
	idle := len(list(t, adminTok).Checkpoints)
	time.Sleep(700 * time.Millisecond)
	l := list(t, auditorTok)
	if len(l.Checkpoints) != idle {
		t.Fatalf("%d checkpoints signed while idle", len(l.Checkpoints)-idle)
	}
	if len(l.SigningKeys) != 1 || !strings.HasPrefix(l.SigningKeys[0].Key, "software/keygrid-audit@") {
		t.Fatalf("signing keys %+v", l.SigningKeys)
	}
	block, _ := pem.Decode([]byte(l.SigningKeys[0].PublicKey))
	if block == nil {
		t.Fatal("the audit public key is not PEM")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	var cps []audit.Checkpoint
	for i, c := range l.Checkpoints {
		if i > 0 && c.Time.After(l.Checkpoints[i-1].Time) {
			t.Fatalf("not newest first: %v after %v", c.Time, l.Checkpoints[i-1].Time)
		}
		if c.Replica != e.srv.ReplicaID() || c.Key != l.SigningKeys[0].Key {
			t.Fatalf("checkpoint %+v", c)
		}
		cps = append(cps, audit.Checkpoint{Replica: c.Replica, File: c.File, Seq: c.Seq, Head: c.Head, Time: c.Time, KeyRef: c.Key, Signature: c.Signature})
	}
	files, err := audit.LogFiles(e.dataDir + "/audit.log")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.VerifyLog(audit.VerifyOptions{Paths: files, Replica: e.srv.ReplicaID(), Checkpoints: cps, Keys: audit.KeySet{l.SigningKeys[0].Key: pub}})
	if err != nil || rep.Checkpoints != len(cps) {
		t.Fatalf("the log against the listed checkpoints: %+v, %v", rep, err)
	}
	// Pages and a filter.
	var page apitypes.CheckpointList
	e.ok(t, http.MethodGet, "/api/v1/audit/checkpoints?limit=1&replica="+e.srv.ReplicaID(), nil, http.StatusOK, &page)
	if len(page.Checkpoints) != 1 || page.NextPageToken == "" || page.Checkpoints[0].Seq != l.Checkpoints[0].Seq {
		t.Fatalf("first page of 1: %+v", page)
	}
	e.ok(t, http.MethodGet, "/api/v1/audit/checkpoints?replica=nobody", nil, http.StatusOK, &page)
	if len(page.Checkpoints) != 0 {
		t.Fatalf("another replica's: %+v", page.Checkpoints)
	}
	e.fails(t, http.MethodGet, "/api/v1/audit/checkpoints?limit=5000", nil, http.StatusBadRequest, apitypes.CodeInvalidInput)
	e.fails(t, http.MethodGet, "/api/v1/audit/checkpoints?limit=-1", nil, http.StatusBadRequest, apitypes.CodeInvalidInput)
	e.fails(t, http.MethodGet, "/api/v1/audit/checkpoints?limit=0", nil, http.StatusBadRequest, apitypes.CodeInvalidInput)
	e.fails(t, http.MethodGet, "/api/v1/audit/checkpoints?limit=", nil, http.StatusBadRequest, apitypes.CodeInvalidInput)
	e.fails(t, http.MethodGet, "/api/v1/audit/checkpoints?page_token=%21%21", nil, http.StatusBadRequest, apitypes.CodeInvalidInput)
	e.fails(t, http.MethodGet, "/api/v1/audit/checkpoints?since=1", nil, http.StatusBadRequest, apitypes.CodeInvalidInput)
	// Who may read them.
	e.as(payTok).fails(t, http.MethodGet, "/api/v1/audit/checkpoints", nil, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
	e.as(hsmOnlyTok).fails(t, http.MethodGet, "/api/v1/audit/checkpoints", nil, http.StatusForbidden, apitypes.CodeAuthorizationFailed)
	e.as(wrongTok).fails(t, http.MethodGet, "/api/v1/audit/checkpoints", nil, http.StatusUnauthorized, apitypes.CodeAuthenticationFailed)
	// The audit key is not a key of the API.
	var keys apitypes.KeyList
	e.ok(t, http.MethodGet, "/api/v1/keys", nil, http.StatusOK, &keys)
	for _, k := range keys.Keys {
		if strings.Contains(k.Name, "keygrid-audit") {
			t.Fatalf("the audit key is listed: %+v", k)
		}
	}
	e.fails(t, http.MethodPost, "/api/v1/keys/keygrid-audit/sign", map[string]any{"data": b64([]byte("m")), "algorithm": "ES256"}, http.StatusNotFound, apitypes.CodeKeyNotFound)
}
