package console

import (
	"errors"
	"net/http"
	"strings"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// The audit page reads the audit log file back (audit.ReadRecent: the most
// recent records, a bounded read from the end). A principal scoped to some
// keys sees only the records of keys in its scope; any other principal
// sees every record. Records hold no secret (audit.Event never carries a
// token, PIN, key byte or plaintext), and the page shows their fields as
// text.

type auditData struct {
	Principal, Key, Operation, Outcome string
	Outcomes                           []string
	Records                            []audit.Record
	Error                              string
	Limit                              int
}

func (c *Console) auditPage(w http.ResponseWriter, r *http.Request) {
	if !principal(r).Can(auth.ActionAuditRead) {
		c.fail(w, r, kgerr.New(kgerr.KindPermissionDenied, "the audit log is for admins and auditors"))
		return
	}
	q := r.URL.Query()
	d := auditData{Principal: strings.TrimSpace(q.Get("principal")), Key: strings.TrimSpace(q.Get("key")),
		Operation: strings.TrimSpace(q.Get("operation")), Outcome: q.Get("outcome"),
		Outcomes: []string{audit.OutcomeSuccess, audit.OutcomeFailure, audit.OutcomeDenied}, Limit: c.maxRecords}
	recs, err := c.recentRecords(r, c.maxRecords, func(rec *audit.Record) bool {
		return (d.Principal == "" || rec.Principal == d.Principal) &&
			(d.Key == "" || rec.KeyID == d.Key || rec.KeyName == d.Key) &&
			(d.Operation == "" || rec.Operation == d.Operation) &&
			(d.Outcome == "" || rec.Outcome == d.Outcome)
	})
	d.Records = recs
	if err != nil {
		d.Error = err.Error()
	}
	c.render(w, r, http.StatusOK, "audit", page{Title: "Audit log", Nav: "audit", Data: d})
}

// recentRecords reads up to n recent records that keep accepts and the
// principal may see: a scoped principal only those of keys in its scope.
func (c *Console) recentRecords(r *http.Request, n int, keep func(*audit.Record) bool) ([]audit.Record, error) {
	if c.auditPath == "" {
		return nil, errors.New("the audit log is not readable here")
	}
	p := principal(r)
	recs, err := audit.ReadRecent(c.auditPath, n, 0, func(rec *audit.Record) bool {
		if p.Scoped() && (rec.KeyName == "" || !p.InScope(rec.KeyName, rec.Provider)) {
			return false
		}
		return keep(rec)
	})
	if err != nil {
		c.log.Warn("console: reading the audit log failed", "err", err)
		return recs, errors.New("the audit log could not be read completely")
	}
	return recs, nil
}
