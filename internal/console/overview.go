package console

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// countLimit bounds the keys the overview counts (it pages through the
// listing the principal may see).
const countLimit = 10000

type providerView struct {
	Name, Type, State string
	Healthy           bool
	Reasons           []string
	LastErrorKind     string
	LastError         string
	LastCheck         any
	LastSuccess       any
	LatencyMS         string
	Details           map[string]any
	KeyTypes          []string
	Algorithms        []string
}

type stateCount struct {
	State string
	Count int
}

type chainView struct {
	Shown    bool
	Status   audit.ChainStatus
	HeadSeq  uint64
	HeadHash string
	OK       bool
}

type overviewData struct {
	Providers []providerView
	Counts    []stateCount
	Total     int
	Capped    bool
	CountErr  string
	Chain     chainView
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var d overviewData
	for _, p := range c.svc.Providers(ctx) {
		v := providerView{Name: p.Name, Type: p.Type, Healthy: p.Healthy}
		for _, kt := range p.Capabilities.KeyTypes {
			switch {
			case len(kt.Curves) > 0:
				v.KeyTypes = append(v.KeyTypes, fmt.Sprintf("%s %s", kt.Type, strings.Join(kt.Curves, "/")))
			case len(kt.Sizes) > 0:
				v.KeyTypes = append(v.KeyTypes, fmt.Sprintf("%s %s", kt.Type, joinInts(kt.Sizes, "/")))
			default:
				v.KeyTypes = append(v.KeyTypes, string(kt.Type))
			}
		}
		for _, a := range p.Capabilities.Algorithms {
			v.Algorithms = append(v.Algorithms, string(a))
		}
		if h, err := c.svc.ProviderHealth(ctx, p.Name); err == nil {
			v.State, v.Healthy, v.Reasons, v.Details = h.State, h.Healthy, h.Reasons, h.Details
			v.LastErrorKind, v.LastError = string(h.LastErrorKind), h.LastError
			v.LastCheck, v.LastSuccess = h.LastCheck, h.LastSuccess
			v.LatencyMS = fmt.Sprintf("%.1f ms", float64(h.Latency.Microseconds())/1000)
		}
		d.Providers = append(d.Providers, v)
	}
	counts, total, capped, err := c.countKeys(r)
	if err != nil {
		d.CountErr = err.Error()
	}
	for _, s := range []store.State{store.StateActive, store.StateInactive, store.StatePendingDeletion, store.StatePending, store.StateDeleting} {
		d.Counts = append(d.Counts, stateCount{string(s), counts[string(s)]})
	}
	d.Total, d.Capped = total, capped
	d.Chain = c.chainView()
	c.render(w, r, http.StatusOK, "overview", page{Title: "Overview", Nav: "overview", Data: d})
}

// countKeys counts the keys the principal may list, by state.
func (c *Console) countKeys(r *http.Request) (map[string]int, int, bool, error) {
	counts := map[string]int{}
	total, token := 0, ""
	for {
		l, err := c.svc.ListKeys(r.Context(), service.ListOptions{Limit: store.MaxPageSize, PageToken: token})
		if err != nil {
			return counts, total, false, publicMessage(err)
		}
		for _, k := range l.Keys {
			counts[k.State]++
			total++
		}
		if token = l.NextPageToken; token == "" {
			return counts, total, false, nil
		}
		if total >= countLimit {
			return counts, total, true, nil
		}
	}
}

// chainView checks the audit chain (the part appended since the last check).
func (c *Console) chainView() chainView {
	if c.chain == nil {
		return chainView{}
	}
	v := chainView{Shown: true, Status: c.chain.Check()}
	if c.auditHead != nil {
		v.HeadSeq, v.HeadHash = c.auditHead()
	}
	v.OK = v.Status.Problem == nil
	return v
}
