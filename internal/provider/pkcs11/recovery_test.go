package pkcs11

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// Injected CKR codes drive run() on a real SoftHSM2 token: each failure
// class gets its treatment.

func TestBrokenSessionIsReplacedAndRetriedOnce(t *testing.T) {
	p := openTest(t, 2)
	var calls atomic.Int32
	var first pkcs11.SessionHandle
	err := p.run(context.Background(), true, opOther, func(sh pkcs11.SessionHandle) error {
		if calls.Add(1) == 1 {
			first = sh
			return pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)
		}
		if sh == first {
			return errors.New("the broken session was reused")
		}
		return nil
	})
	if err != nil || calls.Load() != 2 {
		t.Fatalf("err %v after %d calls; want success on the second", err, calls.Load())
	}
	calls.Store(0)
	err = p.run(context.Background(), true, opOther, func(pkcs11.SessionHandle) error {
		calls.Add(1)
		return pkcs11.Error(pkcs11.CKR_SESSION_CLOSED)
	})
	if !errors.Is(err, kgerr.ErrServiceUnavailable) || calls.Load() != 2 {
		t.Fatalf("a session failure that persists: %v after %d calls; want SERVICE_UNAVAILABLE after 2", err, calls.Load())
	}
}

func TestOperationErrorIsNotRetried(t *testing.T) {
	p := openTest(t, 2)
	var calls atomic.Int32
	err := p.run(context.Background(), true, opDecrypt, func(pkcs11.SessionHandle) error {
		calls.Add(1)
		return pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID)
	})
	if !errors.Is(err, kgerr.ErrDecryptionFailed) || calls.Load() != 1 {
		t.Fatalf("%v after %d calls; want DECRYPTION_FAILED after 1", err, calls.Load())
	}
	if st := p.Stats(); !st.Up || st.Errors["CKR_ENCRYPTED_DATA_INVALID"] != 1 {
		t.Fatalf("stats after an operation error: %+v", st)
	}
}

// A device error marks the provider down and resets the module in the
// background; the idempotent call waits for the recovery and is retried once
// on the new module generation; keys work afterwards.
func TestDeviceErrorResetsModuleAndRetriesIdempotent(t *testing.T) {
	p := openTest(t, 2)
	k := create(t, p, alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}, []alg.Usage{alg.UsageSign}, "reset")
	gen := p.gen.Load()
	resets := p.state.resets.Load()
	var calls atomic.Int32
	err := p.run(context.Background(), true, opOther, func(pkcs11.SessionHandle) error {
		if calls.Add(1) == 1 {
			return pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)
		}
		return nil
	})
	if err != nil || calls.Load() != 2 {
		t.Fatalf("err %v after %d calls; want success after the reset", err, calls.Load())
	}
	if p.gen.Load() == gen || p.state.resets.Load() != resets+1 || !p.Stats().Up {
		t.Fatalf("no reset: generation %d → %d, resets %d → %d", gen, p.gen.Load(), resets, p.state.resets.Load())
	}
	info, _ := alg.Lookup("ES256")
	if _, err := p.Sign(context.Background(), provider.SignRequest{Ref: k.Ref, Spec: alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"},
		Algorithm: info, Input: alg.Digest(info, []byte("after reset"))}); err != nil {
		t.Fatalf("sign after the reset (stale handles must be looked up again): %v", err)
	}
}

// A non-idempotent call is not retried after a device error: it fails with
// 503 and the reset happens in the background.
func TestDeviceErrorNotRetriedForNonIdempotent(t *testing.T) {
	p := openTest(t, 2)
	var calls atomic.Int32
	err := p.run(context.Background(), false, opOther, func(pkcs11.SessionHandle) error {
		calls.Add(1)
		return pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT)
	})
	if !errors.Is(err, kgerr.ErrServiceUnavailable) || calls.Load() != 1 {
		t.Fatalf("%v after %d calls; want SERVICE_UNAVAILABLE after 1", err, calls.Load())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.state.waitUp(ctx); err != nil {
		t.Fatalf("the background reset did not bring the provider up: %v", err)
	}
}

// CloudHSM reports a busy HSM as CKR_FUNCTION_FAILED: idempotent calls get
// a bounded number of retries, others none; on the pkcs11 type it is an
// ordinary failure.
func TestBusyRetriesOnCloudHSMType(t *testing.T) {
	p := openTest(t, 2)
	p.cfg.busyRetries = 3
	var calls atomic.Int32
	err := p.run(context.Background(), true, opOther, func(pkcs11.SessionHandle) error {
		if calls.Add(1) <= 2 {
			return pkcs11.Error(pkcs11.CKR_FUNCTION_FAILED)
		}
		return nil
	})
	if err != nil || calls.Load() != 3 {
		t.Fatalf("busy twice then ok: %v after %d calls", err, calls.Load())
	}
	calls.Store(0)
	err = p.run(context.Background(), true, opOther, func(pkcs11.SessionHandle) error {
		calls.Add(1)
		return pkcs11.Error(pkcs11.CKR_FUNCTION_FAILED)
	})
	if !errors.Is(err, kgerr.ErrServiceUnavailable) || calls.Load() != 4 {
		t.Fatalf("always busy: %v after %d calls; want SERVICE_UNAVAILABLE after 1 + 3 retries", err, calls.Load())
	}
	calls.Store(0)
	p.run(context.Background(), false, opOther, func(pkcs11.SessionHandle) error {
		calls.Add(1)
		return pkcs11.Error(pkcs11.CKR_FUNCTION_FAILED)
	})
	if calls.Load() != 1 {
		t.Fatalf("a non-idempotent call was retried %d times", calls.Load()-1)
	}
	p.cfg.busyRetries = 0
	calls.Store(0)
	p.run(context.Background(), true, opOther, func(pkcs11.SessionHandle) error {
		calls.Add(1)
		return pkcs11.Error(pkcs11.CKR_FUNCTION_FAILED)
	})
	if calls.Load() != 1 {
		t.Fatalf("pkcs11 type retried CKR_FUNCTION_FAILED")
	}
}

// Waiting for a session honours the request's deadline: 503, not a hang.
func TestPoolWaitHonoursDeadline(t *testing.T) {
	p := openTest(t, 1)
	hold := make(chan struct{})
	held := make(chan struct{})
	go p.run(context.Background(), true, opOther, func(pkcs11.SessionHandle) error {
		close(held)
		<-hold
		return nil
	})
	<-held
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := p.run(ctx, true, opOther, func(pkcs11.SessionHandle) error { return nil })
	close(hold)
	if !errors.Is(err, kgerr.ErrServiceUnavailable) || time.Since(start) > time.Second {
		t.Fatalf("waiting for the only session: %v after %s; want SERVICE_UNAVAILABLE at the deadline", err, time.Since(start))
	}
	if p.Stats().WaitTimeouts == 0 {
		t.Fatal("the wait timeout was not counted")
	}
}

// A call the module never returns from (a hung HSM) does not hold the
// request past its deadline: it gets HSM_TIMEOUT, the provider is marked
// down (later requests fail fast), and once the call returns the provider
// resets and serves again. In process, where the call runs on a goroutine
// of its own (a blocking fn stands for the module here); a module host's
// calls give up on their lanes instead, with a module that really hangs
// (TestIsolatedModuleHangAndCrash).
func TestHungCallIsBoundedByTheDeadline(t *testing.T) {
	c := testConfig(t, 2)
	c.Isolation = IsolationInProcess
	p, err := Open(context.Background(), "hsm", TypePKCS11, c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	release := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = p.withSession(ctx, func(pkcs11.SessionHandle) error {
		<-release
		return nil
	})
	if !errors.Is(err, kgerr.ErrTimeout) || time.Since(start) > time.Second {
		t.Fatalf("hung call: %v after %s; want HSM_TIMEOUT at the deadline", err, time.Since(start))
	}
	if p.Stats().Up {
		t.Fatal("the provider must be down while a call hangs")
	}
	fast := time.Now()
	if err := p.CheckHealth(context.Background()); !errors.Is(err, kgerr.ErrServiceUnavailable) || time.Since(fast) > 100*time.Millisecond {
		t.Fatalf("while down: %v after %s; want a fast SERVICE_UNAVAILABLE", err, time.Since(fast))
	}
	close(release) // the module answers at last
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := p.state.waitUp(wctx); err != nil {
		t.Fatalf("no recovery after the hung call returned: %v", err)
	}
	if err := p.CheckHealth(context.Background()); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	// A cancelled request (the client went away) does not mark the HSM down.
	cctx, ccancel := context.WithCancel(context.Background())
	hold := make(chan struct{})
	go func() { time.Sleep(50 * time.Millisecond); ccancel() }()
	p.withSession(cctx, func(pkcs11.SessionHandle) error { <-hold; return nil })
	close(hold)
	if !p.Stats().Up {
		t.Fatal("a cancelled request marked the HSM down")
	}
}
