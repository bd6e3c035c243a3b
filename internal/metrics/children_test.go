package metrics

import (
	"sync"
	"testing"
	"time"
)

// The cached children count into the same series WithLabelValues names,
// from many goroutines at once.
func TestCachedChildrenCountIntoTheVectors(t *testing.T) {
	m := New("test")
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				m.CountHTTPRequest("POST /api/v1/keys/{key}/sign", 200)
				m.CountHTTPRequest("unmatched", 404)
				m.ObserveOperation("sign", "software", "ES256", time.Millisecond, false, "")
				m.ObserveOperation("sign", "software", "ES256", time.Millisecond, true, "KEY_NOT_FOUND")
			}
		}()
	}
	wg.Wait()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		for _, x := range f.GetMetric() {
			key := f.GetName()
			for _, l := range x.GetLabel() {
				key += " " + l.GetValue()
			}
			switch {
			case x.GetCounter() != nil:
				got[key] = x.GetCounter().GetValue()
			case x.GetHistogram() != nil:
				got[key] = float64(x.GetHistogram().GetSampleCount())
			}
		}
	}
	for key, want := range map[string]float64{
		"keygrid_http_requests_total POST /api/v1/keys/{key}/sign 200":     800,
		"keygrid_http_requests_total unmatched 404":                        800,
		"keygrid_operations_total ES256 sign success software":             800,
		"keygrid_operations_total ES256 sign failure software":             800,
		"keygrid_operation_errors_total ES256 KEY_NOT_FOUND sign software": 800,
		"keygrid_operation_duration_seconds ES256 sign software":           1600,
	} {
		if got[key] != want {
			t.Errorf("%s: %v, want %v (have %v)", key, got[key], want, got)
		}
	}
	if n := len(*m.cache.ops.m.Load()); n != 1 {
		t.Errorf("%d cached operation children, want 1", n)
	}
}
