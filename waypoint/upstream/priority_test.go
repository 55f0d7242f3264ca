package upstream

import (
	"testing"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

func sickEp(addr string) model.Endpoint {
	e := ep(addr, 1)
	e.Healthy = false
	return e
}

// Envoy gives a priority min(100, 1.4 × healthy/total) of the load and
// spills the rest to the next one: P0 with 2 of 5 healthy gets 56 %.
func TestPrioritySpillover(t *testing.T) {
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{
		{ep("10.0.0.1:80", 1), ep("10.0.0.2:80", 1), sickEp("10.0.0.3:80"), sickEp("10.0.0.4:80"), sickEp("10.0.0.5:80")},
		{ep("10.0.1.1:80", 1)},
	}})
	const n = 20000
	got := counts(t, c, n, nil)
	within(t, "share of P1", float64(got["10.0.1.1:80"])/n, 0.44, 0.02)
	for _, a := range []string{"10.0.0.3:80", "10.0.0.4:80", "10.0.0.5:80"} {
		if got[a] != 0 {
			t.Errorf("unhealthy %s got %d", a, got[a])
		}
	}
}

// 80 % healthy × 1.4 is over 100 %: no spillover.
func TestPriorityNoSpilloverWhenMostlyHealthy(t *testing.T) {
	p0 := []model.Endpoint{sickEp("10.0.0.9:80")}
	for _, a := range []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"} {
		p0 = append(p0, ep(a, 1))
	}
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{p0, {ep("10.0.1.1:80", 1)}}})
	if got := counts(t, c, 2000, nil); got["10.0.1.1:80"] != 0 {
		t.Errorf("P1 got %d of 2000 with P0 at 80 %% healthy", got["10.0.1.1:80"])
	}
}

// The overprovisioning factor comes from the assignment's policy.
func TestOverprovisioningFactor(t *testing.T) {
	_, c := one(t, &model.Cluster{Name: "c", OverprovisioningFactor: 100, Endpoints: [][]model.Endpoint{
		{ep("10.0.0.1:80", 1), ep("10.0.0.2:80", 1), ep("10.0.0.3:80", 1), sickEp("10.0.0.4:80")},
		{ep("10.0.1.1:80", 1)},
	}})
	const n = 20000
	got := counts(t, c, n, nil)
	within(t, "share of P1 (factor 1.0, P0 75 % healthy)", float64(got["10.0.1.1:80"])/n, 0.25, 0.02)
}

// DEGRADED endpoints take load only when healthy ones are not enough,
// across all priorities.
func TestDegradedUsedWhenNoHealthy(t *testing.T) {
	deg := func(a string) model.Endpoint {
		e := ep(a, 1)
		e.Healthy, e.Degraded = false, true
		return e
	}
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{deg("10.0.0.1:80"), deg("10.0.0.2:80")}}})
	got := counts(t, c, 10, nil)
	if got["10.0.0.1:80"]+got["10.0.0.2:80"] != 10 {
		t.Errorf("all-degraded cluster: %v", got)
	}
	// A healthy P1 is preferred over a degraded P0.
	_, c2 := one(t, &model.Cluster{Name: "c2", Endpoints: [][]model.Endpoint{{deg("10.0.0.1:80")}, {ep("10.0.1.1:80", 1)}}})
	if got := counts(t, c2, 100, nil); got["10.0.1.1:80"] != 100 {
		t.Errorf("degraded P0 took load from healthy P1: %v", got)
	}
	// Half healthy, half degraded: 70 % to healthy, the rest degraded.
	_, c3 := one(t, &model.Cluster{Name: "c3", Endpoints: [][]model.Endpoint{{ep("10.0.0.1:80", 1), deg("10.0.0.2:80")}}})
	const n = 20000
	got = counts(t, c3, n, nil)
	within(t, "share of the degraded host", float64(got["10.0.0.2:80"])/n, 0.30, 0.02)
}

// Hash policies choose the priority from the hash too, so a key sticks.
func TestPrioritySpilloverHashSticks(t *testing.T) {
	_, c := one(t, &model.Cluster{Name: "c", LB: "ring_hash", Endpoints: [][]model.Endpoint{
		{ep("10.0.0.1:80", 1), sickEp("10.0.0.2:80"), sickEp("10.0.0.3:80")},
		{ep("10.0.1.1:80", 1)},
	}})
	for k := range 50 {
		h := HashKey(string(rune('a' + k)))
		a, _ := c.Pick(&PickOptions{Hash: h, HasHash: true})
		for range 5 {
			b, _ := c.Pick(&PickOptions{Hash: h, HasHash: true})
			if b.Addr != a.Addr {
				t.Fatalf("key %d moved from %s to %s", k, a.Key, b.Key)
			}
		}
	}
}

// Envoy's least_request with unequal weights shares idle hosts' load by
// weight (weight / (active + 1)), not always the heavier of two.
func TestLeastRequestWeightedIdle(t *testing.T) {
	_, c := one(t, &model.Cluster{Name: "c", LB: "least_request", Endpoints: [][]model.Endpoint{{ep("10.0.0.1:80", 4), ep("10.0.0.2:80", 1)}}})
	const n = 20000
	got := counts(t, c, n, nil)
	within(t, "share of weight 4 of 5", float64(got["10.0.0.1:80"])/n, 0.80, 0.02)
	// Busy hosts lose weight: 4/(3+1) against 1/(0+1) is an even split.
	h, _ := c.Pick(&PickOptions{})
	for h.Key != "10.0.0.1:80" {
		h, _ = c.Pick(&PickOptions{})
	}
	for range 3 {
		h.Started()
	}
	got = counts(t, c, n, nil)
	within(t, "share of the busy heavy host", float64(got["10.0.0.1:80"])/n, 0.50, 0.02)
}

// Envoy's Maglev honours endpoint weights.
func TestMaglevWeighted(t *testing.T) {
	_, c := one(t, &model.Cluster{Name: "c", LB: "maglev", Endpoints: [][]model.Endpoint{{ep("10.0.0.1:80", 3), ep("10.0.0.2:80", 1)}}})
	const n = 20000
	got := counts(t, c, n, func(i int) *PickOptions { return &PickOptions{Hash: mix64(uint64(i)), HasHash: true} })
	within(t, "share of weight 3 of 4", float64(got["10.0.0.1:80"])/n, 0.75, 0.03)
}
