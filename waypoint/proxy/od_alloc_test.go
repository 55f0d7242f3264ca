package proxy

import (
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/internal/synth"
	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Outlier detection on a route without a timeout (istiod's default: 0s,
// none) costs a request nothing: what a try reports to it needs no trace
// of its connection then. Allocations per proxied HTTP/1.1 request, as
// BenchmarkHTTP1Proxy measures them, with and without it.
func TestOutlierDetectionWithoutRouteTimeoutAllocatesNothingMore(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under the race detector")
	}
	perRequest := func(od bool) float64 {
		var edit func(*model.Snapshot)
		if od {
			edit = func(snap *model.Snapshot) {
				for _, c := range snap.Clusters {
					c.Outlier = &model.OutlierDetection{Consecutive5xx: 5, EnforcingConsecutive5xx: 100,
						Interval: time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 10}
				}
			}
		}
		c, req := rawProxyRig(t, synth.Options{Services: 10}, edit)
		buf := make([]byte, 16<<10)
		one := func() {
			if _, err := c.Write(req); err != nil {
				t.Fatal(err)
			}
			if err := readMessage(c, buf); err != nil {
				t.Fatal(err)
			}
		}
		for range 100 {
			one() // warm the pools and caches
		}
		return testing.AllocsPerRun(2000, one)
	}
	without, with := perRequest(false), perRequest(true)
	if with > without+0.5 {
		t.Errorf("%.1f allocations per request with outlier detection, %.1f without", with, without)
	}
}
