package cloudhsm

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// Doctor describes the cluster once and reports through line (status PASS,
// WARN or FAIL; a check name; a sentence): whether the management API is
// reachable and authorizes DescribeClusters (FAIL otherwise), and the HSM
// count and zone spread (WARN when the cluster is at risk: a one-HSM
// cluster can be deliberate, with the key-availability check disabled). It
// returns false after a FAIL. No credential is printed.
func Doctor(ctx context.Context, o Options, line func(status, check, msg string)) bool {
	o.Logger = slog.New(slog.DiscardHandler)
	p := NewPoller(o, nil)
	defer p.Close()
	st := p.Poll(ctx)
	if st.ErrorCode != "" {
		msg := fmt.Sprintf("DescribeClusters %s in %s: %s", o.ClusterID, o.Region, st.Error)
		if !strings.Contains(st.Error, st.ErrorCode) {
			msg += " [" + st.ErrorCode + "]"
		}
		line("FAIL", "cluster", msg)
		return false
	}
	p.mu.Lock()
	c := *p.last
	p.mu.Unlock()
	line("PASS", "cluster", fmt.Sprintf("%s in %s: reachable, DescribeClusters authorized; state %s, HSM type %s",
		o.ClusterID, o.Region, orUnknown(c.state), c.hsmType))
	if len(st.Risks) > 0 {
		line("WARN", "cluster-hsms", c.summary()+": "+strings.Join(st.Risks, "; "))
	} else {
		line("PASS", "cluster-hsms", c.summary())
	}
	return true
}
