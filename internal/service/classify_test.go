package service

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// slowStore is the real store whose key reads pass their deadline (an
// injected fault: a PostgreSQL that stops answering).
type slowStore struct {
	store.Store
	slow bool
}

func (s *slowStore) GetKey(ctx context.Context, ref string) (*store.Key, error) {
	if s.slow {
		return nil, fmt.Errorf("postgres: get key: %w", context.DeadlineExceeded)
	}
	return s.Store.GetKey(ctx, ref)
}

// A deadline that passes in the store is a timeout, in the error the
// front end answers and in the audit record alike (once it was answered
// as a timeout but audited as INTERNAL_ERROR).
func TestStoreDeadlineIsATimeoutEverywhere(t *testing.T) {
	var slow *slowStore
	f := newFixture(t, func(f *fixture, o *Options) {
		slow = &slowStore{Store: o.Store}
		o.Store = slow
	})
	f.create("ec", specP256)
	slow.slow = true
	_, err := f.svc.Sign(f.admin(), SignRequest{Key: "ec", Data: []byte("x")})
	if !errors.Is(err, kgerr.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("sign with a store past its deadline: %v; want a timeout wrapping the deadline", err)
	}
	if r := f.last(); r.Operation != "sign" || r.ErrorCode != string(kgerr.KindTimeout) {
		t.Fatalf("audit record %+v; want sign with error_code %s", r, kgerr.KindTimeout)
	}
}
