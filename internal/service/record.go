package service

import (
	"context"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// errAuditUnwritten is the error of a request whose audit record could not
// be written: it is refused.
func errAuditUnwritten(cause error) error {
	return kgerr.Wrap(kgerr.KindUnavailable, cause, "the audit log cannot be written; the operation is refused")
}

// Record audits a request a front end answered itself: an operation of its
// own protocol that no audited service operation performs (the XKS proxy's
// key metadata and health calls), or a request it refused (err) before any
// service operation saw it. The record carries the caller in ctx (with its
// attributes), the key when known, and the time since start. A non-nil
// result means the record was not written: the front end must then refuse
// the request.
func (s *Service) Record(ctx context.Context, operation string, key *Key, start time.Time, err error) error {
	c := CallerFrom(ctx)
	e := c.event(start, operation)
	e.DurationMS = float64(s.now().Sub(start).Microseconds()) / 1000
	if key != nil {
		e.KeyID, e.KeyName, e.KeyVersion, e.Provider = key.ID, key.Name, key.Version, key.Provider
	}
	if err != nil {
		c.fail(&e, err)
	}
	if aerr := s.audit.Record(ctx, e); aerr != nil {
		s.metrics.AuditFailures.Inc()
		s.log.Error("audit record not written; refusing the request", "operation", operation, "request_id", c.RequestID, "err", aerr)
		return errAuditUnwritten(aerr)
	}
	return nil
}

// OpRefused is the operation of the record of a request a front end or the
// shared HTTP stack refused before any service operation saw it.
const OpRefused = "refused"

// Refused audits a request refused before the service (a malformed or
// oversized body, a rate limit): the caller in ctx (principal when known,
// client address), the error's kind, and detail, which is server-chosen
// text (route, reason, a count when the stack coalesced a flood). The
// request is refused whatever the log does.
func (s *Service) Refused(ctx context.Context, detail string, err error) {
	c := CallerFrom(ctx)
	e := c.event(s.now(), OpRefused)
	e.Detail = clip(detail, 200)
	c.fail(&e, err)
	if aerr := s.audit.Record(ctx, e); aerr != nil {
		s.metrics.AuditFailures.Inc()
		s.log.Error("audit record of a refused request not written", "request_id", c.RequestID, "err", aerr)
	}
}

// RecordEvent audits an event of the gateway itself (a configuration
// reload), by the caller in ctx if any, failed with err when err is set;
// detail is server-chosen text. A non-nil result means the record was not
// written.
func (s *Service) RecordEvent(ctx context.Context, operation, detail string, err error) error {
	c := CallerFrom(ctx)
	e := c.event(s.now(), operation)
	e.Detail = clip(detail, 500)
	if err != nil {
		c.fail(&e, err)
	}
	if aerr := s.audit.Record(ctx, e); aerr != nil {
		s.metrics.AuditFailures.Inc()
		s.log.Error("audit record not written", "operation", operation, "err", aerr)
		return errAuditUnwritten(aerr)
	}
	return nil
}
