// Package filter holds the HTTP filters kmesh-waypoint honours besides
// routing itself, one file each, with Envoy's semantics: fault injection
// (fault.go), CORS (cors.go), and the router filter's retry policy
// (retry.go). Each is a pure decision over a request; the proxy applies
// what they decide.
package filter

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/route"
)

// Fault is a compiled model.Fault.
type Fault struct {
	M        *model.Fault
	headers  route.HeaderMatchers
	clusters map[string]bool
}

// CompileFault compiles m (nil gives nil).
func CompileFault(m *model.Fault) *Fault {
	if m == nil {
		return nil
	}
	f := &Fault{M: m, headers: route.CompileHeaders(m.Headers)}
	if len(m.UpstreamClusters) > 0 {
		f.clusters = map[string]bool{}
		for _, c := range m.UpstreamClusters {
			f.clusters[c] = true
		}
	}
	return f
}

// The request headers Envoy's fault filter reads when header_delay or
// header_abort is configured.
const (
	HeaderDelay        = "X-Envoy-Fault-Delay-Request"
	HeaderDelayPercent = "X-Envoy-Fault-Delay-Request-Percentage"
	HeaderAbort        = "X-Envoy-Fault-Abort-Request"
	HeaderAbortGRPC    = "X-Envoy-Fault-Abort-Grpc-Request"
	HeaderAbortPercent = "X-Envoy-Fault-Abort-Request-Percentage"
)

// Decision is what a fault does to one request.
type Decision struct {
	Delay time.Duration
	// AbortStatus (HTTP) or AbortGRPC (gRPC status, answered as HTTP 200
	// with grpc-status) when aborting.
	AbortStatus int
	AbortGRPC   *int
}

// Active reports whether the decision injects anything.
func (d Decision) Active() bool { return d.Delay > 0 || d.AbortStatus != 0 || d.AbortGRPC != nil }

// Faults counts faults in progress, for max_active_faults: one counter per
// engine, as Envoy keeps one per filter.
type Faults struct{ active atomic.Int64 }

// Decide draws whether a request to cluster gets a delay and/or an abort.
// When the decision is Active the caller must call Done when the request
// ends. A fault whose headers or upstream clusters do not match, or that
// would exceed max_active_faults, does nothing.
func (fs *Faults) Decide(f *Fault, r *http.Request, cluster string) Decision {
	if f == nil {
		return Decision{}
	}
	m := f.M
	if f.clusters != nil && !f.clusters[cluster] {
		return Decision{}
	}
	if !f.headers.Match(r) {
		return Decision{}
	}
	var d Decision
	if delay, pct := delayOf(m, r); delay > 0 && hit(pct) {
		d.Delay = delay
	}
	if status, grpc, pct := abortOf(m, r); (status != 0 || grpc != nil) && hit(pct) {
		d.AbortStatus, d.AbortGRPC = status, grpc
	}
	if !d.Active() {
		return d
	}
	if m.MaxActive != nil && fs.active.Load() >= int64(*m.MaxActive) {
		return Decision{}
	}
	fs.active.Add(1)
	return d
}

// Done ends a request that got an Active decision.
func (fs *Faults) Done() { fs.active.Add(-1) }

// ActiveFaults is the number of faults in progress.
func (fs *Faults) ActiveFaults() int64 { return fs.active.Load() }

// delayOf is the configured delay, or the header's when header_delay:
// the header's percentage may only lower the configured one.
func delayOf(m *model.Fault, r *http.Request) (time.Duration, float64) {
	if !m.HeaderDelay {
		return m.Delay, m.DelayPercent
	}
	ms, err := strconv.ParseUint(r.Header.Get(HeaderDelay), 10, 32)
	if err != nil {
		return 0, 0
	}
	return time.Duration(ms) * time.Millisecond, headerPercent(r, HeaderDelayPercent, m.DelayPercent, m.DelayDenominator)
}

func abortOf(m *model.Fault, r *http.Request) (int, *int, float64) {
	if !m.HeaderAbort {
		return m.AbortHTTPStatus, m.AbortGRPCStatus, m.AbortPercent
	}
	pct := headerPercent(r, HeaderAbortPercent, m.AbortPercent, m.AbortDenominator)
	// An HTTP status Envoy cannot use is as none: the gRPC header is next.
	if v := r.Header.Get(HeaderAbort); v != "" {
		if code, err := strconv.Atoi(v); err == nil && code >= 200 && code < 600 {
			return code, nil, pct
		}
	}
	if v := r.Header.Get(HeaderAbortGRPC); v != "" {
		if code, err := strconv.Atoi(v); err == nil && code >= 0 {
			return 0, &code, pct
		}
	}
	return 0, nil, 0
}

// headerPercent reads a percentage header, a numerator over the
// configured percentage's denominator (Envoy keeps that denominator),
// capped by the configured percentage; without the header the configured
// one.
func headerPercent(r *http.Request, name string, configured float64, denominator int) float64 {
	v := r.Header.Get(name)
	if v == "" {
		return configured
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return configured
	}
	if denominator <= 0 {
		denominator = 100
	}
	return min(float64(n)*100/float64(denominator), configured)
}

// hit draws with probability pct/100.
func hit(pct float64) bool {
	switch {
	case pct >= 100:
		return true
	case pct <= 0:
		return false
	}
	return rand.Float64()*100 < pct
}
