package upstream

import (
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Outlier detection, as Envoy's consecutive-error detectors (the ones
// istiod configures from a DestinationRule's outlierDetection): each
// endpoint counts answers that fail in a row; at the threshold it is
// ejected (taken out of load balancing as if unhealthy) if no more than
// max_ejection_percent of the cluster's endpoints would then be out, and
// comes back at the first interval tick after base_ejection_time times
// its backoff (which grows with each ejection, up to max_ejection_time,
// and shrinks by one for each interval it stays in). Success-rate and
// failure-percentage detection are not implemented (istiod turns the
// first off and never sets the second); the translation reports them.

// LocalResult is the outcome of an attempt that got no answer, or the
// connection part of one that did.
type LocalResult int

const (
	// ConnectFailed: the connection could not be made, or was reset
	// before the answer (Envoy counts both as a connect failure, 503).
	ConnectFailed LocalResult = iota
	// TimedOut: no answer in time (per-try or route timeout; 504).
	TimedOut
	// Connected: the connection worked (clears the local-origin count
	// when local errors are split; nothing otherwise).
	Connected
	// ConnectedFinal: the connection worked and is all there is to the
	// exchange (TCP proxying): counted as a success, a 200.
	ConnectedFinal
)

// outlierHost is an endpoint's detector state, shared by the Host values
// of successive configurations with the same address (as active is).
type outlierHost struct {
	c5xx, gateway, local atomic.Uint32
	ejected              atomic.Bool

	// Under the cluster's mu.
	backoff     uint32 // Envoy's ejection time backoff
	ejectedAt   time.Time
	unejectedAt time.Time
	jitter      time.Duration
}

// ReportLocal tells outlier detection how an attempt to h went when it
// got no answer (or, Connected, that its connection worked).
func (c *Cluster) ReportLocal(h *Host, r LocalResult) {
	od := c.state.Load().m.Outlier
	if od == nil || h == nil || h.od == nil {
		return
	}
	if od.SplitLocalOrigin {
		switch r {
		case Connected, ConnectedFinal:
			h.od.local.Store(0)
		default:
			if h.od.local.Add(1) == od.ConsecutiveLocalOriginFailure {
				c.consecutive(h, od, &h.od.local, od.EnforcingConsecutiveLocalOriginFailure)
			}
		}
		return
	}
	switch r {
	case ConnectFailed:
		c.report(h, od, 503)
	case TimedOut:
		c.report(h, od, 504)
	case ConnectedFinal:
		c.report(h, od, 200)
	}
}

// Report tells outlier detection the status of h's answer (for gRPC, the
// HTTP status its grpc-status maps to, when the head carried one).
func (c *Cluster) Report(h *Host, status int) {
	od := c.state.Load().m.Outlier
	if od == nil || h == nil || h.od == nil {
		return
	}
	if od.SplitLocalOrigin {
		h.od.local.Store(0)
	}
	c.report(h, od, status)
}

func (c *Cluster) report(h *Host, od *model.OutlierDetection, status int) {
	o := h.od
	if status < 500 || status > 599 {
		o.c5xx.Store(0)
		o.gateway.Store(0)
		return
	}
	if status >= 502 && status <= 504 {
		if o.gateway.Add(1) == od.ConsecutiveGatewayFailure {
			c.consecutive(h, od, &o.gateway, od.EnforcingConsecutiveGatewayFailure)
		}
	} else {
		o.gateway.Store(0)
	}
	if o.c5xx.Add(1) == od.Consecutive5xx {
		c.consecutive(h, od, &o.c5xx, od.EnforcingConsecutive5xx)
	}
}

// consecutive is a detector reaching its threshold for h: the count
// starts over, and h is ejected if the cluster allows it and the
// detector is enforced this time.
func (c *Cluster) consecutive(h *Host, od *model.OutlierDetection, count *atomic.Uint32, enforcing uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	count.Store(0)
	o := h.od
	if o.ejected.Load() || c.outliers[h.Addr] != o || c.closed.Load() {
		return // already out, or no longer in the cluster
	}
	total := len(c.outliers)
	allowed := 100*(c.ejections+1) <= int(od.MaxEjectionPercent)*total
	if od.AlwaysEjectOneHost && c.ejections == 0 {
		allowed = true
	}
	if !allowed || enforcing == 0 || enforcing < 100 && rand.Uint32N(100) >= enforcing {
		return
	}
	o.ejected.Store(true)
	o.ejectedAt = time.Now()
	o.jitter = 0
	if j := od.MaxEjectionTimeJitter; j > 0 {
		o.jitter = time.Duration(rand.Int64N(int64(j) + 1))
	}
	if time.Duration(o.backoff)*od.BaseEjectionTime < od.MaxEjectionTime+od.BaseEjectionTime {
		o.backoff++
	}
	c.ejections++
	c.ejectionsTotal.Add(1)
	c.log.Info("waypoint: endpoint ejected by outlier detection", "cluster", c.Name, "endpoint", h.Key,
		"ejections", c.ejections, "of", total)
	c.rebuild(c.state.Load().m)
}

// outlierTick is the detector's interval: endpoints whose ejection has
// run its time come back, and those left in a whole interval since they
// came back shrink their backoff.
func (c *Cluster) outlierTick(gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.odGen {
		// This timer was stopped or replaced while it waited for mu
		// (detection turned off and on again): the newer one ticks.
		return
	}
	od := c.state.Load().m.Outlier
	if od == nil || c.closed.Load() {
		c.odTimer = nil
		return
	}
	now := time.Now()
	back := false
	for addr, o := range c.outliers {
		if !o.ejected.Load() {
			continue
		}
		d := min(time.Duration(o.backoff)*od.BaseEjectionTime, od.MaxEjectionTime) + o.jitter
		if now.Sub(o.ejectedAt) >= d {
			o.ejected.Store(false)
			o.unejectedAt = now
			o.c5xx.Store(0)
			o.gateway.Store(0)
			o.local.Store(0)
			c.ejections--
			back = true
			c.log.Info("waypoint: endpoint back from outlier ejection", "cluster", c.Name, "endpoint", addr.String())
		}
	}
	for _, o := range c.outliers {
		if !o.ejected.Load() && !o.unejectedAt.IsZero() && now.Sub(o.unejectedAt) >= od.Interval && o.backoff > 0 {
			o.backoff--
		}
	}
	if back {
		c.rebuild(c.state.Load().m)
	}
	c.odTimer = time.AfterFunc(od.Interval, func() { c.outlierTick(gen) })
}

// armOutlier starts or stops the interval timer for m (under mu).
func (c *Cluster) armOutlier(m *model.Cluster) {
	switch {
	case m.Outlier != nil && c.odTimer == nil && !c.closed.Load():
		c.odGen++
		gen := c.odGen
		c.odTimer = time.AfterFunc(m.Outlier.Interval, func() { c.outlierTick(gen) })
	case m.Outlier == nil && c.odTimer != nil:
		c.odTimer.Stop()
		c.odTimer = nil
		c.odGen++
	}
}

// Ejected lists the endpoints outlier detection has out (for dumps and
// tests).
func (c *Cluster) Ejected() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for a, o := range c.outliers {
		if o.ejected.Load() {
			out = append(out, a.String())
		}
	}
	return out
}
