package upstream

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/internal/header"
	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Errors a request can meet before it reaches an endpoint.
var (
	// ErrNoHealthy: no endpoint to send to (Envoy's UH).
	ErrNoHealthy = errors.New("no healthy upstream")
	// ErrOverflow: a circuit breaker is open (Envoy's UO).
	ErrOverflow = errors.New("upstream overflow")
)

// ConnectError is a failure to connect to an endpoint (Envoy's UF).
type ConnectError struct {
	Addr string
	Err  error
}

func (e *ConnectError) Error() string { return "connect to " + e.Addr + ": " + e.Err.Error() }
func (e *ConnectError) Unwrap() error { return e.Err }

// Defaults, Envoy's unless said otherwise.
const (
	// DefaultConnectTimeout is istiod's 10 s (Envoy's own default is 5 s).
	DefaultConnectTimeout = 10 * time.Second
	// DefaultIdleTimeout of upstream connections (Envoy's 1 h).
	DefaultIdleTimeout = time.Hour
	defaultLimit       = 1024
	defaultMaxRetries  = 3
	// defaultOverprovisioning is Envoy's overprovisioning factor, 1.4.
	defaultOverprovisioning = 140
)

// Host is one endpoint of a cluster.
type Host struct {
	Addr netip.AddrPort
	// Key is Addr as "ip:port", the connection pool's key.
	Key      string
	Weight   uint32
	Healthy  bool
	Workload string
	// Hostname is the endpoint's own (auto_host_rewrite's Host).
	Hostname string
	// active counts requests in flight to this address; it is shared by
	// the Host values of successive configurations with the same address,
	// so least_request keeps its view across swaps.
	active *atomic.Int64
	// locality and its weight, for locality weighted clusters.
	locality       string
	localityWeight uint32
	// od is the address's outlier detection state (nil: none).
	od *outlierHost
}

// Active is the number of requests in flight to the host.
func (h *Host) Active() int64 { return h.active.Load() }

// Started and Done bracket a request to the host (least_request reads the
// count).
func (h *Host) Started() { h.active.Add(1) }
func (h *Host) Done()    { h.active.Add(-1) }

// Cluster is one cluster's runtime state.
type Cluster struct {
	Name string
	log  *slog.Logger

	state atomic.Pointer[state]
	// rr is the round-robin cursor, kept across swaps.
	rr atomic.Uint64
	// counters shared by all endpoints (Envoy's per-cluster breakers,
	// default priority).
	requests, retries, connections atomic.Int64
	overflows                      atomic.Uint64

	// active per address, under mu; survives swaps while the address
	// stays.
	mu      sync.Mutex
	actives map[netip.AddrPort]*atomic.Int64
	// outliers per address while the cluster has outlier detection,
	// ejections how many of them are out, odTimer the detector's
	// interval; under mu.
	outliers       map[netip.AddrPort]*outlierHost
	ejections      int
	odTimer        *time.Timer
	odGen          uint64 // which odTimer may tick: bumped when one is stopped or made
	ejectionsTotal atomic.Uint64
	pools          *pools
	h1             *h1Pool
	// netHTTP sends HTTP/1.1 through net/http's Transport instead of h1Pool
	// (for comparison; see h1.go).
	netHTTP bool
	closed  atomic.Bool
	// ctx ends when the cluster is closed (gone from the configuration,
	// or the engine closing): what is sent on the cluster's own account
	// rather than a client's (mirrors) ends with it.
	ctx    context.Context
	cancel context.CancelFunc
}

// state is what one configuration of the cluster says, precomputed.
type state struct {
	m      *model.Cluster
	limits limits
	// choices split the load (1..100) between the priorities' healthy
	// and degraded hosts, as Envoy's priority load; empty: no host to
	// send to.
	choices []choice
}

// choice is one priority's healthy or degraded hosts and the top of its
// share of the load.
type choice struct {
	upTo uint64
	lb   picker
}

type limits struct {
	connections, requests, pending, retries int64
}

func newCluster(name string, log *slog.Logger) *Cluster {
	c := &Cluster{Name: name, log: log, actives: map[netip.AddrPort]*atomic.Int64{}}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.pools = newPools(c)
	c.h1 = newH1Pool(c)
	return c
}

// Context ends when the cluster is closed: gone from the configuration
// (Envoy closes a removed cluster's connection pools, and the streams on
// them with it) or the engine closing.
func (c *Cluster) Context() context.Context { return c.ctx }

// Model is the cluster's current configuration.
func (c *Cluster) Model() *model.Cluster { return c.state.Load().m }

// Hashed reports a load balancer that picks by the request's hash (ring
// hash, Maglev): only those ask for it, as Envoy's computeHashKey is
// called by the hashing load balancers alone.
func (c *Cluster) Hashed() bool {
	lb := c.Model().LB
	return lb == "ring_hash" || lb == "maglev"
}

func (c *Cluster) update(m *model.Cluster) {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[netip.AddrPort]bool{}
	for _, prio := range m.Endpoints {
		for _, e := range prio {
			seen[e.Address] = true
			if c.actives[e.Address] == nil {
				c.actives[e.Address] = new(atomic.Int64)
			}
			if m.Outlier != nil && c.outliers[e.Address] == nil {
				if c.outliers == nil {
					c.outliers = map[netip.AddrPort]*outlierHost{}
				}
				c.outliers[e.Address] = &outlierHost{}
			}
		}
	}
	for a := range c.actives {
		if !seen[a] {
			delete(c.actives, a)
		}
	}
	for a, o := range c.outliers {
		if m.Outlier == nil || !seen[a] {
			if o.ejected.Load() {
				c.ejections--
			}
			delete(c.outliers, a)
		}
	}
	c.armOutlier(m)
	c.rebuild(m)
}

// rebuild makes the state for m with the endpoints outlier detection has
// ejected counted as unhealthy (under mu).
func (c *Cluster) rebuild(m *model.Cluster) {
	st := &state{m: m, limits: limitsOf(m)}
	all := make([][]*Host, len(m.Endpoints))
	healthy := make([][]*Host, len(m.Endpoints))
	degraded := make([][]*Host, len(m.Endpoints))
	for p, prio := range m.Endpoints {
		all[p] = make([]*Host, 0, len(prio))
		for _, e := range prio {
			a := e.Address
			w := e.Weight
			if w == 0 {
				w = 1
			}
			od := c.outliers[a]
			out := od != nil && od.ejected.Load()
			h := &Host{Addr: a, Key: a.String(), Weight: w, Healthy: e.Healthy && !out, Workload: e.Workload, Hostname: e.Hostname, active: c.actives[a],
				locality: e.Locality, localityWeight: e.LocalityWeight, od: od}
			all[p] = append(all[p], h)
			switch {
			case out:
			case e.Healthy:
				healthy[p] = append(healthy[p], h)
			case e.Degraded:
				degraded[p] = append(degraded[p], h)
			}
		}
	}
	st.choices = priorityLoad(m, all, healthy, degraded)
	old := c.state.Swap(st)
	c.pools.update(old, st)
}

// priorityLoad shares the load out as Envoy does: each priority is
// available in proportion to its healthy (then degraded) hosts times the
// overprovisioning factor, capped at 100 %; higher priorities take what
// they can and the rest spills down, healthy hosts of every priority
// before degraded ones. Shares are scaled up when the total availability
// is under 100 %. A priority whose healthy and degraded share is under
// the panic threshold sends its load to all its hosts; when every
// priority is in panic (or none has a host available and panic is on),
// the load goes by host count, to all hosts.
func priorityLoad(m *model.Cluster, all, healthy, degraded [][]*Host) []choice {
	of := uint64(m.OverprovisioningFactor)
	if of == 0 {
		of = defaultOverprovisioning
	}
	n := len(m.Endpoints)
	hAvail, dAvail := make([]uint64, n), make([]uint64, n)
	inPanic := make([]bool, n)
	totalPanic := true
	var total uint64
	for p := range n {
		t := uint64(len(all[p]))
		if t > 0 {
			hAvail[p] = min(100, of*uint64(len(healthy[p]))/t)
			dAvail[p] = min(100, of*uint64(len(degraded[p]))/t)
			inPanic[p] = 100*float64(len(healthy[p])+len(degraded[p]))/float64(t) < m.PanicThreshold
		} else {
			inPanic[p] = m.PanicThreshold > 0
		}
		totalPanic = totalPanic && inPanic[p]
		total += min(100, hAvail[p]+dAvail[p])
	}
	total = min(100, total)
	if m.PanicThreshold > 0 && (total == 0 || totalPanic) {
		return totalPanicLoad(m, all)
	}
	if total == 0 {
		return nil
	}
	hLoad, dLoad := make([]uint64, n), make([]uint64, n)
	left := uint64(100)
	firstH, firstD := -1, -1
	for p := range n {
		if firstH < 0 && hAvail[p] > 0 {
			firstH = p
		}
		hLoad[p] = min(left, hAvail[p]*100/total)
		left -= hLoad[p]
	}
	for p := range n {
		if firstD < 0 && dAvail[p] > 0 {
			firstD = p
		}
		dLoad[p] = min(left, dAvail[p]*100/total)
		left -= dLoad[p]
	}
	// Rounding leftovers go to the first available priority.
	if firstH >= 0 {
		hLoad[firstH] += left
	} else {
		dLoad[firstD] += left
	}
	var out []choice
	var upTo uint64
	add := func(load uint64, hosts []*Host, p int) {
		if inPanic[p] {
			// Envoy's panic: the priority's share, healthy and degraded
			// alike, over all its hosts, without locality weighting.
			hosts = all[p]
		} else if load > 0 && m.LocalityWeighted {
			hosts = localityWeighted(hosts, m.Endpoints[p], of)
		}
		if load == 0 || len(hosts) == 0 {
			return
		}
		upTo += load
		out = append(out, choice{upTo: upTo, lb: newPicker(m.LB, hosts)})
	}
	for p := range n {
		add(hLoad[p], healthy[p], p)
	}
	for p := range n {
		add(dLoad[p], degraded[p], p)
	}
	return out
}

// totalPanicLoad is Envoy's load when every priority is in panic: each
// takes the share of all hosts it has, the rounding left to the first
// with any, and sends it to all of them.
func totalPanicLoad(m *model.Cluster, all [][]*Host) []choice {
	var hosts uint64
	for _, a := range all {
		hosts += uint64(len(a))
	}
	if hosts == 0 {
		return nil
	}
	load := make([]uint64, len(all))
	left, first := uint64(100), -1
	for p, a := range all {
		if first < 0 && len(a) > 0 {
			first = p
		}
		load[p] = 100 * uint64(len(a)) / hosts
		left -= load[p]
	}
	load[first] += left
	var out []choice
	var upTo uint64
	for p, a := range all {
		if load[p] == 0 {
			continue
		}
		upTo += load[p]
		out = append(out, choice{upTo: upTo, lb: newPicker(m.LB, a)})
	}
	return out
}

// localityWeighted folds Envoy's locality weighted LB into host weights:
// a locality takes weight × min(100 %, factor × available/total) of the
// priority's load, shared among its hosts by their own weights. A
// locality without a weight takes none.
func localityWeighted(hosts []*Host, all []model.Endpoint, of uint64) []*Host {
	total := map[string]uint64{}
	for _, e := range all {
		total[e.Locality]++
	}
	avail, sum := map[string]uint64{}, map[string]float64{}
	for _, h := range hosts {
		avail[h.locality]++
		sum[h.locality] += float64(h.Weight)
	}
	share := make([]float64, len(hosts))
	var top float64
	for i, h := range hosts {
		eff := float64(h.localityWeight) * float64(min(100, of*avail[h.locality]/total[h.locality]))
		share[i] = eff * float64(h.Weight) / sum[h.locality]
		top = max(top, share[i])
	}
	if top == 0 {
		return nil
	}
	out := make([]*Host, 0, len(hosts))
	for i, h := range hosts {
		if share[i] == 0 {
			continue
		}
		c := *h
		// 2^16 steps for the largest share keep the ratios to 1 in 65536.
		c.Weight = uint32(max(1, math.Round(share[i]/top*(1<<16))))
		out = append(out, &c)
	}
	return out
}

func limitsOf(m *model.Cluster) limits {
	or := func(v, d int) int64 {
		if v <= 0 {
			return int64(d)
		}
		return int64(v)
	}
	return limits{
		connections: or(m.MaxConnections, defaultLimit),
		requests:    or(m.MaxRequests, defaultLimit),
		pending:     or(m.MaxPendingRequests, defaultLimit),
		retries:     or(m.MaxRetries, defaultMaxRetries),
	}
}

// PickOptions is what endpoint selection may use.
type PickOptions struct {
	// Hash is the request's hash (ring_hash, maglev) when HasHash.
	Hash    uint64
	HasHash bool
	// Avoid lists hosts already tried (the previous_hosts retry predicate)
	// and Attempts how many times to pick again to avoid them.
	Avoid    []*Host
	Attempts int
	// OrigDst is the connection's original destination, for original_dst
	// clusters.
	OrigDst netip.AddrPort
}

// Pick chooses an endpoint.
func (c *Cluster) Pick(o *PickOptions) (*Host, error) {
	st := c.state.Load()
	if st.m.Kind == "original_dst" {
		if !o.OrigDst.IsValid() || o.OrigDst.Port() == 0 {
			return nil, ErrNoHealthy
		}
		return &Host{Addr: o.OrigDst, Key: o.OrigDst.String(), Weight: 1, Healthy: true, active: new(atomic.Int64)}, nil
	}
	if len(st.choices) == 0 {
		return nil, ErrNoHealthy
	}
	h := st.pick(c, o)
	for i := 0; i < o.Attempts && len(o.Avoid) > 0 && avoided(h, o.Avoid); i++ {
		// A hash policy gives the same host again; other policies move on.
		if o.HasHash {
			o.Hash = mix64(o.Hash + uint64(i) + 1)
		}
		h = st.pick(c, o)
	}
	return h, nil
}

// pick chooses a priority by its share of the load (by the request's
// hash when a hash policy gives one, so a key keeps its priority), then a
// host in it.
func (st *state) pick(c *Cluster, o *PickOptions) *Host {
	ch := st.choices[0]
	if len(st.choices) > 1 {
		var x uint64
		if o.HasHash && ch.lb.hashed() {
			x = o.Hash%100 + 1
		} else {
			x = rand.Uint64N(100) + 1
		}
		for _, c := range st.choices {
			if x <= c.upTo {
				ch = c
				break
			}
		}
	}
	return ch.lb.pick(c, o)
}

func avoided(h *Host, avoid []*Host) bool {
	for _, a := range avoid {
		if a.Addr == h.Addr {
			return true
		}
	}
	return false
}

// StartRequest takes a slot of max_requests; false means the breaker is
// open (count it, answer 503 UO). EndRequest gives it back.
func (c *Cluster) StartRequest() bool {
	st := c.state.Load()
	if c.requests.Add(1) > st.limits.requests {
		c.requests.Add(-1)
		c.overflows.Add(1)
		return false
	}
	return true
}

func (c *Cluster) EndRequest() {
	c.requests.Add(-1)
	if c.closed.Load() {
		c.pools.closeIdle()
		c.h1.closeIdle(true)
	}
}

// StartRetry takes a slot of max_retries (Envoy's retry budget breaker);
// false means no retry. EndRetry gives it back.
func (c *Cluster) StartRetry() bool {
	if c.retries.Add(1) > c.state.Load().limits.retries {
		c.retries.Add(-1)
		c.overflows.Add(1)
		return false
	}
	return true
}

func (c *Cluster) EndRetry() { c.retries.Add(-1) }

// Stats are a cluster's counters now.
type Stats struct {
	Requests, Retries, Connections int64
	Overflows                      uint64
	// Ejected endpoints now, and ejections so far (outlier detection).
	Ejected   int
	Ejections uint64
}

func (c *Cluster) Stats() Stats {
	c.mu.Lock()
	ejected := c.ejections
	c.mu.Unlock()
	return Stats{Requests: c.requests.Load(), Retries: c.retries.Load(), Connections: c.connections.Load(), Overflows: c.overflows.Load(),
		Ejected: ejected, Ejections: c.ejectionsTotal.Load()}
}

func (c *Cluster) close() {
	c.closed.Store(true)
	c.cancel()
	c.mu.Lock()
	if c.odTimer != nil {
		c.odTimer.Stop()
		c.odTimer = nil
		c.odGen++
	}
	c.mu.Unlock()
	c.pools.closeIdle()
	c.h1.closeIdle(true)
}

// RoundTrip sends req to host: over h2c prior knowledge when h2, else
// HTTP/1.1 with the cluster's own pool (h1.go). Upgrades (WebSocket) go
// through net/http's Transport, which hands the connection over after the
// 101. req.URL.Host must be host's address. ctx bounds the exchange (the
// request's own context is not looked at on the HTTP/1.1 path, so the
// caller need not copy the request to give it one). The Transport gets
// a header map and URL of its own: it may still read them after
// RoundTrip returns (its HTTP/2 stream goroutine when ctx ended first),
// and the caller's may be filled again for the next request (package h1
// reuses a connection's header map) or the next try.
func (c *Cluster) RoundTrip(ctx context.Context, req *http.Request, host *Host, h2 bool) (*http.Response, error) {
	if h2 || c.netHTTP || header.Get(req.Header, "Upgrade") != "" {
		r := req.WithContext(ctx)
		r.Header = req.Header.Clone()
		if req.URL != nil {
			u := *req.URL
			r.URL = &u
		}
		if h2 {
			return c.pools.h2c.roundTrip(ctx, r, host.Key)
		}
		return c.Transport(false).RoundTrip(r)
	}
	return c.h1.roundTrip(ctx, req, host.Key)
}
