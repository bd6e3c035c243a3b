package service

import (
	"context"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// auditReady refuses a state change (503) before it is made when the audit
// log could not record it now. finish refuses any operation whose record
// fails; for a change that is already made by then, this preflight is what
// keeps "refused" meaning "not done". A recorder without a preflight is
// trusted.
func (s *Service) auditReady(ctx context.Context) error {
	p, ok := s.audit.(audit.Preflighter)
	if !ok {
		return nil
	}
	if err := p.Ready(); err != nil {
		s.log.Error("audit log cannot take records; refusing a state change", "request_id", CallerFrom(ctx).RequestID, "err", err)
		return kgerr.Wrap(kgerr.KindUnavailable, err, "the audit log cannot be written; the operation is refused")
	}
	return nil
}
