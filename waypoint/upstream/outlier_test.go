package upstream

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// od is outlier detection that ejects after n 5xx in a row, any share
// of the cluster, for short times.
func od(n uint32) *model.OutlierDetection {
	return &model.OutlierDetection{Consecutive5xx: n, EnforcingConsecutive5xx: 100, ConsecutiveGatewayFailure: 5,
		ConsecutiveLocalOriginFailure: 5, EnforcingConsecutiveLocalOriginFailure: 100,
		Interval: 20 * time.Millisecond, BaseEjectionTime: 150 * time.Millisecond, MaxEjectionTime: time.Minute, MaxEjectionPercent: 100}
}

func threeHosts(o *model.OutlierDetection) *model.Cluster {
	return &model.Cluster{Name: "c", Outlier: o, Endpoints: [][]model.Endpoint{{ep("10.0.0.1:80", 1), ep("10.0.0.2:80", 1), ep("10.0.0.3:80", 1)}}}
}

// hostOf picks until it gets addr (round robin: within a few picks).
func hostOf(t *testing.T, c *Cluster, addr string) *Host {
	t.Helper()
	for range 100 {
		h, err := c.Pick(&PickOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if h.Key == addr {
			return h
		}
	}
	t.Fatalf("%s never picked", addr)
	return nil
}

func TestOutlierConsecutive5xxEjectsAndBringsBack(t *testing.T) {
	_, c := one(t, threeHosts(od(3)))
	bad := hostOf(t, c, "10.0.0.1:80")
	c.Report(bad, 503)
	c.Report(bad, 500)
	c.Report(bad, 200) // a success in between starts the count over
	c.Report(bad, 503)
	c.Report(bad, 503)
	if got := c.Ejected(); len(got) != 0 {
		t.Fatalf("ejected %v after two 5xx in a row", got)
	}
	c.Report(bad, 502)
	if got := c.Ejected(); !slices.Equal(got, []string{"10.0.0.1:80"}) {
		t.Fatalf("ejected %v after three 5xx in a row", got)
	}
	if got := counts(t, c, 300, nil); got["10.0.0.1:80"] != 0 || got["10.0.0.2:80"] == 0 || got["10.0.0.3:80"] == 0 {
		t.Errorf("picks while ejected: %v", got)
	}
	// Back at the first interval after the base ejection time.
	time.Sleep(150 * time.Millisecond)
	deadline := time.Now().Add(time.Second)
	for len(c.Ejected()) != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := counts(t, c, 300, nil); got["10.0.0.1:80"] == 0 {
		t.Errorf("picks after the ejection ran out: %v", got)
	}
}

// Envoy ejects only while the ejected share stays within
// max_ejection_percent (10 % by default: none of 3 hosts), unless
// always_eject_one_host.
func TestOutlierMaxEjectionPercent(t *testing.T) {
	o := od(1)
	o.MaxEjectionPercent = 10
	_, c := one(t, threeHosts(o))
	c.Report(hostOf(t, c, "10.0.0.1:80"), 500)
	if got := c.Ejected(); len(got) != 0 {
		t.Errorf("ejected %v of 3 with max 10 %%", got)
	}
	o = od(1)
	o.MaxEjectionPercent, o.AlwaysEjectOneHost = 10, true
	_, c = one(t, threeHosts(o))
	c.Report(hostOf(t, c, "10.0.0.1:80"), 500)
	c.Report(hostOf(t, c, "10.0.0.2:80"), 500)
	if got := c.Ejected(); !slices.Equal(got, []string{"10.0.0.1:80"}) {
		t.Errorf("always_eject_one_host: ejected %v", got)
	}
	o = od(1)
	o.MaxEjectionPercent = 34
	_, c = one(t, threeHosts(o))
	c.Report(hostOf(t, c, "10.0.0.1:80"), 500)
	c.Report(hostOf(t, c, "10.0.0.2:80"), 500)
	if got := c.Ejected(); len(got) != 1 {
		t.Errorf("max 34 %% of 3: ejected %v", got)
	}
}

// Gateway failures (502-504) have their own count, enforced only when
// configured (Envoy's default enforcement is 0 %); a 500 starts it over.
func TestOutlierGatewayFailure(t *testing.T) {
	o := od(10)
	o.ConsecutiveGatewayFailure = 2
	_, c := one(t, threeHosts(o))
	h := hostOf(t, c, "10.0.0.1:80")
	c.Report(h, 503)
	c.Report(h, 504)
	if got := c.Ejected(); len(got) != 0 {
		t.Errorf("ejected %v without enforcement", got)
	}
	o = od(10)
	o.ConsecutiveGatewayFailure, o.EnforcingConsecutiveGatewayFailure = 2, 100
	_, c = one(t, threeHosts(o))
	h = hostOf(t, c, "10.0.0.1:80")
	c.Report(h, 503)
	c.Report(h, 500)
	c.Report(h, 503)
	if got := c.Ejected(); len(got) != 0 {
		t.Errorf("ejected %v though a 500 came between the gateway errors", got)
	}
	c.Report(h, 504)
	if got := c.Ejected(); len(got) != 1 {
		t.Errorf("two gateway errors in a row: ejected %v", got)
	}
}

// Without split_external_local_origin_errors a connect failure counts as
// a 503 and a timeout as a 504; with it they have their own count, which
// a working connection starts over.
func TestOutlierLocalOrigin(t *testing.T) {
	_, c := one(t, threeHosts(od(2)))
	h := hostOf(t, c, "10.0.0.1:80")
	c.ReportLocal(h, ConnectFailed)
	c.ReportLocal(h, TimedOut)
	if got := c.Ejected(); len(got) != 1 {
		t.Errorf("connect failure + timeout with 2 consecutive 5xx: ejected %v", got)
	}
	o := od(2)
	o.SplitLocalOrigin, o.ConsecutiveLocalOriginFailure = true, 3
	_, c = one(t, threeHosts(o))
	h = hostOf(t, c, "10.0.0.1:80")
	c.ReportLocal(h, ConnectFailed)
	c.ReportLocal(h, ConnectFailed)
	c.ReportLocal(h, Connected)
	c.ReportLocal(h, ConnectFailed)
	c.ReportLocal(h, TimedOut)
	if got := c.Ejected(); len(got) != 0 {
		t.Errorf("split: ejected %v after 2 local failures in a row", got)
	}
	c.ReportLocal(h, ConnectFailed)
	if got := c.Ejected(); len(got) != 1 {
		t.Errorf("split: 3 local failures in a row, ejected %v", got)
	}
}

// Each ejection lasts base × backoff, the backoff growing by one per
// ejection (Envoy's ejection time backoff).
func TestOutlierEjectionBackoff(t *testing.T) {
	_, c := one(t, threeHosts(od(1)))
	h := hostOf(t, c, "10.0.0.1:80")
	out := func() time.Duration {
		c.Report(h, 500)
		start := time.Now()
		for len(c.Ejected()) != 0 {
			if time.Since(start) > 2*time.Second {
				t.Fatal("never came back")
			}
			time.Sleep(2 * time.Millisecond)
		}
		return time.Since(start)
	}
	first := out()
	second := out()
	if first < 150*time.Millisecond || second < 300*time.Millisecond {
		t.Errorf("ejections lasted %v and %v, want at least 150 ms and 300 ms", first, second)
	}
}

// An endpoint that leaves the configuration while ejected no longer
// counts against max_ejection_percent.
func TestOutlierEjectedEndpointRemoved(t *testing.T) {
	o := od(1)
	o.MaxEjectionPercent = 50
	s, c := one(t, threeHosts(o))
	c.Report(hostOf(t, c, "10.0.0.1:80"), 500)
	if len(c.Ejected()) != 1 {
		t.Fatal("not ejected")
	}
	m := threeHosts(o)
	m.Endpoints[0] = m.Endpoints[0][1:]
	s.Update(map[string]*model.Cluster{"c": m})
	c.Report(hostOf(t, c, "10.0.0.2:80"), 500)
	if got := c.Ejected(); !slices.Equal(got, []string{"10.0.0.2:80"}) {
		t.Errorf("ejected %v: one of two is within 50 %%", got)
	}
	// Outlier detection turned off: everything back, timer stopped.
	m = threeHosts(nil)
	s.Update(map[string]*model.Cluster{"c": m})
	c.mu.Lock()
	timer := c.odTimer
	c.mu.Unlock()
	if got := c.Ejected(); len(got) != 0 || timer != nil {
		t.Errorf("detection off: ejected %v, timer %v", got, timer)
	}
}

// Envoy's panic mode: a priority with less than the threshold healthy
// sends its share to all its endpoints; with the threshold at 0 (istiod's
// setting with outlierDetection) only to the healthy ones.
func TestPanicMode(t *testing.T) {
	p0 := []model.Endpoint{ep("10.0.0.1:80", 1), sickEp("10.0.0.2:80"), sickEp("10.0.0.3:80"), sickEp("10.0.0.4:80")}
	_, c := one(t, &model.Cluster{Name: "c", PanicThreshold: 50, Endpoints: [][]model.Endpoint{p0}})
	got := counts(t, c, 4000, nil)
	for _, a := range []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"} {
		within(t, "panic share of "+a, float64(got[a])/4000, 0.25, 0.03)
	}
	_, c = one(t, &model.Cluster{Name: "c", PanicThreshold: 0, Endpoints: [][]model.Endpoint{p0}})
	if got := counts(t, c, 400, nil); got["10.0.0.1:80"] != 400 {
		t.Errorf("panic off: %v", got)
	}
	// A panicking P0 keeps its availability share (1/4 × 1.4 = 35 %),
	// spread over all its endpoints; P1 takes the rest.
	_, c = one(t, &model.Cluster{Name: "c", PanicThreshold: 50, Endpoints: [][]model.Endpoint{p0, {ep("10.0.1.1:80", 1)}}})
	got = counts(t, c, 20000, nil)
	within(t, "P1 share", float64(got["10.0.1.1:80"])/20000, 0.65, 0.02)
	within(t, "a sick P0 endpoint's share", float64(got["10.0.0.2:80"])/20000, 0.35/4, 0.02)
}

// No endpoint healthy anywhere: with panic on, the load goes to all of
// them by count; with it off, nowhere (503 UH).
func TestTotalPanic(t *testing.T) {
	eps := [][]model.Endpoint{{sickEp("10.0.0.1:80")}, {sickEp("10.0.1.1:80"), sickEp("10.0.1.2:80"), sickEp("10.0.1.3:80")}}
	_, c := one(t, &model.Cluster{Name: "c", PanicThreshold: 50, Endpoints: eps})
	got := counts(t, c, 20000, nil)
	within(t, "P0's one of four", float64(got["10.0.0.1:80"])/20000, 0.25, 0.02)
	_, c = one(t, &model.Cluster{Name: "c", PanicThreshold: 0, Endpoints: eps})
	if _, err := c.Pick(&PickOptions{}); !errors.Is(err, ErrNoHealthy) {
		t.Errorf("panic off, none healthy: %v", err)
	}
}

// Ejecting every endpoint (max_ejection_percent 100): Envoy's panic sends
// to them all with the default threshold; istiod's 0 leaves none.
func TestOutlierAllEjected(t *testing.T) {
	for _, threshold := range []float64{50, 0} {
		m := threeHosts(od(1))
		m.PanicThreshold = threshold
		_, c := one(t, m)
		for _, a := range []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"} {
			c.Report(hostOf(t, c, a), 500)
		}
		if len(c.Ejected()) != 3 {
			t.Fatalf("ejected %v", c.Ejected())
		}
		_, err := c.Pick(&PickOptions{})
		if threshold > 0 && err != nil || threshold == 0 && !errors.Is(err, ErrNoHealthy) {
			t.Errorf("threshold %v, all ejected: %v", threshold, err)
		}
	}
}

// A tick of a timer that was stopped, or replaced when detection went off
// and on again while it waited for the lock, does nothing: only the
// newest timer ticks (two would shrink the backoff twice an interval).
func TestOutlierStaleTickDoesNothing(t *testing.T) {
	s, c := one(t, threeHosts(od(1)))
	c.mu.Lock()
	stale := c.odGen
	c.mu.Unlock()
	s.Update(map[string]*model.Cluster{"c": threeHosts(nil)})
	s.Update(map[string]*model.Cluster{"c": threeHosts(od(1))})
	c.mu.Lock()
	current := c.odTimer
	c.mu.Unlock()
	c.outlierTick(stale)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.odTimer != current {
		t.Errorf("a stale tick replaced the running timer")
	}
}
