package cloudhsm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/cloudhsmv2"
	"github.com/aws/aws-sdk-go-v2/service/cloudhsmv2/types"

	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// EventHSMsChanged is the provider event (audit operation
// "provider_cluster_hsms_changed") of a describe that found a different
// number of HSMs, or of ACTIVE ones, than the one before.
const EventHSMsChanged = "cluster_hsms_changed"

// Poller watches one cluster: a describe at Start and every interval after,
// the last view in Status. It is safe for concurrent use.
type Poller struct {
	o      Options
	events func(provider.Event)

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	done   chan struct{}

	pollMu sync.Mutex // one describe at a time; guards client
	client *cloudhsmv2.Client

	mu   sync.Mutex
	st   provider.ClusterStatus
	last *cluster // the last successful describe
}

// NewPoller makes a poller; events, if not nil, receives an event when the
// number of HSMs changes (call it outside locks: it writes the audit log).
// The options must have passed Validate.
func NewPoller(o Options, events func(provider.Event)) *Poller {
	o = o.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Poller{o: o, events: events, ctx: ctx, cancel: cancel,
		st: provider.ClusterStatus{ID: o.ClusterID, Region: o.Region}}
}

// Start describes the cluster at once and then every interval, on its own
// goroutine, until Close.
func (p *Poller) Start() {
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		t := time.NewTicker(p.o.Interval)
		defer t.Stop()
		for {
			p.Poll(p.ctx)
			select {
			case <-p.ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// Close stops the poller and waits for a describe in flight to end.
func (p *Poller) Close() {
	p.cancel()
	if p.done != nil {
		<-p.done
	}
}

// Status is the last view of the cluster.
func (p *Poller) Status() provider.ClusterStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st // slices and maps are replaced, never changed in place
}

// Poll describes the cluster once, within the poller's timeout, records the
// result and returns the new view. A describe cut short by Close is not
// recorded.
func (p *Poller) Poll(ctx context.Context) provider.ClusterStatus {
	p.pollMu.Lock()
	defer p.pollMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, p.o.Timeout)
	defer cancel()
	c, err := p.describe(ctx)
	if err != nil && p.ctx.Err() != nil {
		return p.Status()
	}
	st, ev := p.record(time.Now(), c, err)
	if ev != nil && p.events != nil {
		p.events(*ev)
	}
	return st
}

func (p *Poller) describe(ctx context.Context) (cluster, error) {
	if p.client == nil {
		c, err := newClient(ctx, p.o)
		if err != nil {
			return cluster{}, &configError{err}
		}
		p.client = c
	}
	return describe(ctx, p.client, p.o.ClusterID)
}

// configError is a failure to load the SDK's configuration (a named
// profile that does not exist, an unreadable shared config file).
type configError struct{ err error }

func (e *configError) Error() string { return "loading the AWS configuration: " + e.err.Error() }
func (e *configError) Unwrap() error { return e.err }

// record stores the outcome of one describe and returns the new view and
// the event to report, if any.
func (p *Poller) record(now time.Time, c cluster, err error) (provider.ClusterStatus, *provider.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &p.st
	st.CheckedAt = now
	if err != nil {
		p.recordError(now, err)
		return p.st, nil
	}
	if st.ErrorCode != "" {
		p.o.Logger.Info("the CloudHSM management API answers again", "cluster", p.o.ClusterID,
			"failed_for", now.Sub(st.ErrorSince).Round(time.Second).String())
	}
	st.ErrorCode, st.Error, st.ErrorSince = "", "", time.Time{}
	st.DescribedAt, st.State, st.HSMType = now, c.state, c.hsmType
	st.HSMs = make([]provider.ClusterHSM, 0, len(c.hsms))
	for _, h := range c.hsms {
		st.HSMs = append(st.HSMs, provider.ClusterHSM{ID: h.id, AvailabilityZone: h.zone, State: h.state, ENIIP: h.ip})
	}
	st.HSMCounts = counts(c)
	st.Risks = c.risks()
	prev := p.last
	p.last = &c
	switch {
	case prev == nil:
		p.o.Logger.Info("CloudHSM cluster described", "cluster", p.o.ClusterID, "state", c.state, "hsms", c.summary(), "risks", st.Risks)
		return p.st, nil
	case !hsmCountChanged(*prev, c):
		return p.st, nil
	}
	detail := fmt.Sprintf("%s: %s, was %s", p.o.ClusterID, c.summary(), prev.summary())
	if len(st.Risks) > 0 {
		p.o.Logger.Warn("CloudHSM cluster changed and is at risk", "cluster", p.o.ClusterID, "hsms", c.summary(), "was", prev.summary(), "risks", st.Risks)
	} else {
		p.o.Logger.Info("CloudHSM cluster changed", "cluster", p.o.ClusterID, "hsms", c.summary(), "was", prev.summary())
	}
	return p.st, &provider.Event{Kind: EventHSMsChanged, Time: now, Detail: detail}
}

// recordError stores a failed describe; the caller holds mu. The HSMs of
// the last successful describe stay (DescribedAt tells their age).
func (p *Poller) recordError(now time.Time, err error) {
	st := &p.st
	code, msg, requestID := describeError(err, p.o)
	var ce *configError
	if errors.As(err, &ce) {
		code, msg = "aws_config", configSentence(ce.err)
	}
	st.Failures++
	log := p.o.Logger.Debug
	if st.ErrorCode != code {
		log = p.o.Logger.Warn // a new failure, or a different one
	}
	if st.ErrorCode == "" {
		st.ErrorSince = now
	}
	st.ErrorCode, st.Error = code, msg
	log("CloudHSM management API: DescribeClusters failed; key operations are not affected", "cluster", p.o.ClusterID,
		"code", code, "err", msg, "request_id", requestID, "failing_since", st.ErrorSince.UTC().Format(time.RFC3339))
}

// configSentence explains a configuration the SDK could not load, without
// quoting the files (which may hold credentials).
func configSentence(err error) string {
	var pe config.SharedConfigProfileNotExistError
	if errors.As(err, &pe) {
		return fmt.Sprintf("the AWS profile %q (AWS_PROFILE) does not exist in the shared config files", pe.Profile)
	}
	return "the AWS shared configuration cannot be loaded (check AWS_PROFILE, AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE)"
}

// hsmCountChanged reports whether the number of HSMs, or of ACTIVE ones,
// differs.
func hsmCountChanged(a, b cluster) bool {
	na, _ := a.active()
	nb, _ := b.active()
	return len(a.hsms) != len(b.hsms) || na != nb
}

// counts counts HSMs by state, with every state the API defines present.
func counts(c cluster) map[string]int {
	out := map[string]int{}
	for _, s := range types.HsmState("").Values() {
		out[string(s)] = 0
	}
	for _, h := range c.hsms {
		out[h.state]++
	}
	return out
}
