package upstream

import (
	"testing"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

func locEp(addr, loc string, lw uint32) model.Endpoint {
	e := ep(addr, 1)
	e.Locality, e.LocalityWeight = loc, lw
	return e
}

// With locality weighted LB (istiod's DestinationRule distribute), each
// locality takes its weight's share whatever its number of endpoints.
func TestLocalityWeights(t *testing.T) {
	eps := []model.Endpoint{locEp("10.0.0.1:80", "r/a", 80)}
	for _, a := range []string{"10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80"} {
		eps = append(eps, locEp(a, "r/b", 20))
	}
	for _, lb := range []string{"round_robin", "random", "least_request", "ring_hash", "maglev"} {
		_, c := one(t, &model.Cluster{Name: "c", LB: lb, LocalityWeighted: true, Endpoints: [][]model.Endpoint{eps}})
		const n = 20000
		got := counts(t, c, n, func(i int) *PickOptions { return &PickOptions{Hash: mix64(uint64(i)), HasHash: true} })
		within(t, lb+": share of r/a", float64(got["10.0.0.1:80"])/n, 0.80, 0.03)
	}
	// Without locality weighted LB the weights are ignored, as in Envoy.
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{eps}})
	if got := counts(t, c, 500, nil); got["10.0.0.1:80"] != 100 {
		t.Errorf("plain round robin: %v", got)
	}
}

// A locality's weight shrinks with its availability (factor 1.4); one
// without a weight takes no load.
func TestLocalityWeightsHealthAndZero(t *testing.T) {
	sick := locEp("10.0.0.2:80", "r/a", 1)
	sick.Healthy = false
	sick2 := locEp("10.0.0.3:80", "r/a", 1)
	sick2.Healthy = false
	_, c := one(t, &model.Cluster{Name: "c", LB: "random", LocalityWeighted: true, Endpoints: [][]model.Endpoint{{
		locEp("10.0.0.1:80", "r/a", 1), sick, sick2, locEp("10.0.1.1:80", "r/b", 1), locEp("10.0.2.1:80", "r/c", 0)}}})
	const n = 20000
	got := counts(t, c, n, nil)
	// r/a: 1 × min(100, 140/3) = 46; r/b: 100.
	within(t, "share of r/a at one third healthy", float64(got["10.0.0.1:80"])/n, 46.0/146, 0.02)
	if got["10.0.2.1:80"] != 0 {
		t.Errorf("locality without weight got %d", got["10.0.2.1:80"])
	}
}
