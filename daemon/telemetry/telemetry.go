// Package telemetry turns the kernel's connection records into Istio's
// standard TCP metrics, our own connection histograms, access logs and a
// live view of open connections.
//
// The kernel (bpf/src/sockops.c) sends one event when an enrolled TCP end
// closes; the daemon sweeps the records of open connections every interval
// (bpf/src/conn_iter.c) so long-lived ones are reported before they close.
// A connection end is counted opened when the daemon first sees it: at its
// close, or at the first sweep that finds it open. (An event at open as
// well cost the kernel ~0.3 us per connection end, in the softirq that
// establishes it, and the daemon a record more to read.) Every record
// carries byte totals, not increments, so a lost event costs no bytes: the
// next record of the connection carries them.
package telemetry

import (
	"io"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/loader"
)

// Config configures telemetry.
type Config struct {
	Resolver Resolver
	// Interval is how often open connections are reported.
	Interval time.Duration
	// MaxSeries caps the distinct label sets of the Istio metrics.
	MaxSeries int
	// AccessLog, when set, gets one JSON line per closed connection end.
	AccessLog io.Writer
	// KernelStats reads the data path's counters (maps.Maps.Stats): the
	// events the ring buffer had no room for, and the enrolled TCP ends
	// recorded open and closed. Without it there is no lost-events counter
	// and the gauge of open connections counts the ends the daemon has seen
	// (sweeps find new ones late).
	KernelStats func() (map[string]uint64, error)
	// Namespaces lists the network namespaces (paths) of the enrolled
	// pods: a sweep reads each one's TCP sockets there (the kernel's TCP
	// iterator walks one namespace). Without it a sweep reads the
	// daemon's own namespace only.
	Namespaces func() []string
	// LocalPod reports whether an address is a pod on this node. Only a
	// pod here can have its server end recorded here, so a client whose
	// server is elsewhere files nothing for pairing, and a server end
	// whose client is elsewhere does not wait for the client's record
	// (most connections in a cluster cross nodes). Without it any address
	// may be local. It is called per record: keep it a lookup.
	LocalPod func(netip.Addr) bool
	Logger   *slog.Logger
}

// Defaults.
const (
	DefaultInterval  = 10 * time.Second
	DefaultMaxSeries = 10000
	recentLines      = 1000
)

// Telemetry accounts connections. Its methods are safe for concurrent use.
type Telemetry struct {
	cfg Config
	log *slog.Logger
	// bootWall is the wall time of kernel monotonic time zero.
	bootWall time.Time

	// sweepMu serialises sweeps (the ticker and on-demand ones).
	sweepMu   sync.Mutex
	mu        sync.Mutex
	iter      *loader.ConnIter
	socks     *ebpf.Map // km_tcp_sock: which ends are open
	lastSweep time.Time
	conns     map[uint64]*conn
	// sweeping is set while a sweep's snapshots are being applied; the
	// connections that close meanwhile are remembered in closedInSweep, so
	// a snapshot taken just before a close and read after it is ignored.
	// (A snapshot cannot be taken after a close: the kernel marks the
	// record closed before it sends the close event.)
	sweeping      bool
	closedInSweep map[uint64]bool
	// finalized holds ends closed by endSweep for lack of a close event,
	// with the sweep that did it, so a close event that was only late
	// (not lost) is not counted twice. Normally empty.
	finalized map[uint64]uint64
	// dialled holds what client ends on this node dialled, under the
	// client's tuple, until the server end (if it is enrolled here) takes
	// it or pairWait after the client closed: the kernel records the
	// service only at the client, which is the end that knows it.
	dialled map[layout.Tuple]dialled
	// waiting holds close events of server ends seen for the first time
	// with no dialled entry, under their client's tuple, for up to
	// pairWait: the client's record, if the client is on this node, comes
	// right behind (a server that closes first is done before its client).
	waiting       map[layout.Tuple]layout.ConnEvent
	waitingCookie map[uint64]bool
	// waitQ and closedQ hold the waiting server ends and the dialled
	// entries of closed clients in the order they began to wait, so
	// expiring them looks at the due ones only.
	waitQ, closedQ fifo
	lastExpire     uint64 // kernel clock of the last expirePairs by the reader
	lastEventNs    uint64 // the newest record's kernel time
	// spare holds conn records of closed ends for reuse: one per new
	// connection end otherwise, which keeps the collector busy.
	spare  []*conn
	series *seriesSet
	cache  map[resolveKey]*resolved
	gen    uint64
	sweeps uint64

	istio    istioMetrics
	duration *prometheus.HistogramVec
	rtt      *prometheus.HistogramVec
	retrans  *prometheus.CounterVec
	events   *prometheus.CounterVec
	ovf      prometheus.Counter
	// The same, looked up once: label lookups per record add up.
	byKind     [4]prometheus.Counter // by event type
	byReporter map[Reporter]*reporterMetrics

	stream *stream
	out    *lineWriter
}

type reporterMetrics struct {
	duration, rtt prometheus.Observer
	retrans       prometheus.Counter
}

// conn is one connection end being accounted.
type conn struct {
	rec      layout.ConnValue
	reporter Reporter
	res      *resolved
	// request and response bytes already counted.
	request, response uint64
	srtt, retrans     uint32
	lastNs            uint64
	missed            uint64 // sweeps that did not see it
}

// dialled is what a client end asked its connect() for.
type dialled struct {
	cookie    uint64 // the client end's
	orig      layout.Addr
	origPort  uint16
	serviceID uint32
}

// pairWait is how long one end of a connection on this node waits for the
// other's record (kernel clock): the two ends close within a round trip
// and the ring keeps their order, so this only has to cover a reader that
// is behind.
const pairWait = uint64(500 * time.Millisecond)

// maxWaiting bounds the server ends held for their client's record.
const maxWaiting = 65536

func tupleOf(c *layout.ConnValue) layout.Tuple {
	return layout.Tuple{Local: c.Local, Remote: c.Remote, LocalPort: c.LocalPort, RemotePort: c.RemotePort}
}

// resolveKey is what the labels of a connection end depend on.
type resolveKey struct {
	reporter      Reporter
	local, remote netip.Addr
	orig          netip.Addr
}

// resolved is a connection end's identities and its label set for an
// orderly life ("-" response flags).
type resolved struct {
	src, dst *Peer
	svc      *Service
	open     *series
	// byFlags holds the label sets of abnormal ends, made on demand.
	byFlags map[string]*series
}

// New builds telemetry; Register its metrics and Run it on a data path.
func New(cfg Config) *Telemetry {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.MaxSeries <= 0 {
		cfg.MaxSeries = DefaultMaxSeries
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	t := &Telemetry{
		cfg:           cfg,
		log:           cfg.Logger,
		bootWall:      bootWall(),
		conns:         map[uint64]*conn{},
		closedInSweep: map[uint64]bool{},
		finalized:     map[uint64]uint64{},
		dialled:       map[layout.Tuple]dialled{},
		waiting:       map[layout.Tuple]layout.ConnEvent{},
		waitingCookie: map[uint64]bool{},
		cache:         map[resolveKey]*resolved{},
		istio:         newIstioMetrics(),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kmesh_tcp_connection_duration_seconds",
			Help:    "How long enrolled TCP connections lived, from established to closed.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 12),
		}, []string{"reporter"}),
		rtt: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kmesh_tcp_rtt_seconds",
			Help:    "Smoothed round-trip time of enrolled TCP connections when they closed.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 4, 10),
		}, []string{"reporter"}),
		retrans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmesh_tcp_retransmits_total",
			Help: "Segments enrolled TCP connections retransmitted, counted when they closed.",
		}, []string{"reporter"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmesh_telemetry_records_total",
			Help: "Connection records read from the kernel, by kind (open, close, snapshot).",
		}, []string{"kind"}),
		ovf: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmesh_telemetry_series_overflow_total",
			Help: "Connections counted under the overflow label set because the cap on label sets was reached.",
		}),
		stream: newStream(recentLines),
	}
	t.series = newSeriesSet(t.istio, cfg.MaxSeries)
	for _, typ := range []layout.EventType{layout.EvOpen, layout.EvClose, layout.EvSnapshot} {
		t.byKind[typ] = t.events.WithLabelValues(typ.String())
	}
	t.byReporter = map[Reporter]*reporterMetrics{}
	for _, r := range []Reporter{ReporterSource, ReporterDestination} {
		t.byReporter[r] = &reporterMetrics{
			duration: t.duration.WithLabelValues(string(r)),
			rtt:      t.rtt.WithLabelValues(string(r)),
			retrans:  t.retrans.WithLabelValues(string(r)),
		}
	}
	if cfg.AccessLog != nil {
		t.out = newLineWriter(cfg.AccessLog)
	}
	return t
}

// Register adds the metrics to reg.
func (t *Telemetry) Register(reg prometheus.Registerer) error {
	cs := []prometheus.Collector{
		t.istio.opened, t.istio.closed, t.istio.sent, t.istio.received,
		t.duration, t.rtt, t.retrans, t.events, t.ovf,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kmesh_telemetry_series",
			Help: "Label sets in use by the Istio TCP metrics (capped by --metrics-max-series).",
		}, func() float64 {
			t.mu.Lock()
			defer t.mu.Unlock()
			return float64(t.series.size())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kmesh_tcp_connections_open",
			Help: "Enrolled TCP connection ends open on this node.",
		}, func() float64 {
			if t.cfg.KernelStats != nil {
				st, err := t.cfg.KernelStats()
				if err != nil || st["conn_close"] > st["conn_open"] {
					return 0
				}
				return float64(st["conn_open"] - st["conn_close"])
			}
			t.mu.Lock()
			defer t.mu.Unlock()
			return float64(len(t.conns))
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kmesh_accesslog_stream_dropped_total",
			Help: "Access log lines a slow /debug/accesslog follower missed.",
		}, func() float64 { return float64(t.stream.dropped.Load()) }),
	}
	if t.cfg.KernelStats != nil {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kmesh_telemetry_events_lost_total",
			Help: "Connection events the kernel dropped because the ring buffer was full (their bytes arrive with the connection's next record).",
		}, func() float64 {
			st, err := t.cfg.KernelStats()
			if err != nil {
				return 0
			}
			return float64(st["events_lost"])
		}))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// handle accounts one record as it is read. Caller holds t.mu.
func (t *Telemetry) handle(e *layout.ConnEvent) {
	if e.Type == 0 || int(e.Type) >= len(t.byKind) {
		return
	}
	t.byKind[e.Type].Inc()
	t.lastEventNs = max(t.lastEventNs, e.NowNs)
	t.handleEvent(e, true)
}

// handleEvent accounts one record; mayWait lets a server end's close wait
// for its client's record (see wait), which then comes back here. Caller
// holds t.mu.
func (t *Telemetry) handleEvent(e *layout.ConnEvent, mayWait bool) {
	cookie := e.Conn.Cookie
	if e.Type == layout.EvSnapshot && t.closedInSweep[cookie] {
		// Taken before the close, read after it.
		return
	}
	if _, gone := t.finalized[cookie]; gone {
		return
	}
	if t.waitingCookie[cookie] {
		// A snapshot taken before the close that is waiting: the close
		// carries everything.
		return
	}
	x := t.conns[cookie]
	if x == nil {
		if mayWait && t.wait(e) {
			return
		}
		x = t.track(e)
		if e.Type != layout.EvClose {
			// (An end first seen at its close is done with below.)
			t.conns[cookie] = x
		}
		if x.reporter == ReporterSource {
			// Its server end may be waiting; once this record is
			// accounted (a close leaves the dialled entry behind).
			defer t.release(tupleOf(&x.rec))
		}
	}
	x.lastNs = max(x.lastNs, e.NowNs)
	x.missed = 0
	x.rec.Flags |= e.Conn.Flags
	if e.Type == layout.EvSnapshot && e.SRTTUs != 0 {
		x.srtt, x.retrans = e.SRTTUs, e.TotalRetrans
	}
	if e.Type != layout.EvClose {
		t.account(x, x.res.open, e)
		return
	}
	flags := responseFlags(x.reporter, e.End)
	s := t.withFlags(x, flags)
	t.account(x, s, e)
	s.closed.Inc()
	rm := t.byReporter[x.reporter]
	if e.NowNs > x.rec.StartNs {
		rm.duration.Observe(float64(e.NowNs-x.rec.StartNs) / 1e9)
	}
	if e.SRTTUs != 0 {
		rm.rtt.Observe(float64(e.SRTTUs) / 1e6)
	}
	if e.TotalRetrans != 0 {
		rm.retrans.Add(float64(e.TotalRetrans))
	}
	x.srtt, x.retrans = e.SRTTUs, e.TotalRetrans
	if t.logging() {
		t.emit(t.entry(x, e.NowNs, endName(e.End), flags))
	}
	t.forget(cookie, x)
}

// wait holds the close event of a server end seen for the first time
// when no client record has told what the client dialled: the client's
// close, if the client is on this node, comes within a round trip. It
// reports whether it kept the event.
func (t *Telemetry) wait(e *layout.ConnEvent) bool {
	c := &e.Conn
	if e.Type != layout.EvClose || c.Role != layout.RoleServer || c.Flags&layout.ConnRewritten != 0 ||
		!t.mayBeLocal(c.Remote) {
		return false
	}
	k := tupleOf(c).Reverse()
	if _, ok := t.dialled[k]; ok {
		return false
	}
	if len(t.waiting) >= maxWaiting {
		return false
	}
	if old, ok := t.waiting[k]; ok {
		// The same tuple again before the first one's client showed up:
		// the older end goes unpaired.
		delete(t.waiting, k)
		delete(t.waitingCookie, old.Conn.Cookie)
		t.handleEvent(&old, false)
	}
	t.waiting[k] = *e
	t.waitingCookie[c.Cookie] = true
	t.waitQ.push(due{k: k, cookie: c.Cookie, ns: e.NowNs})
	return true
}

// release accounts the server end waiting for the client end filed under
// tuple k, now that the client's record is in.
func (t *Telemetry) release(k layout.Tuple) {
	if len(t.waiting) == 0 {
		return
	}
	e, ok := t.waiting[k]
	if !ok {
		return
	}
	delete(t.waiting, k)
	delete(t.waitingCookie, e.Conn.Cookie)
	t.handleEvent(&e, false)
}

// expirePairs gives up waiting at nowNs (kernel clock): server ends whose
// client never reported are accounted without what it dialled, and what
// closed clients dialled is dropped. Caller holds t.mu.
func (t *Telemetry) expirePairs(nowNs uint64) {
	expired := func(ns uint64) bool { return ns > nowNs || nowNs-ns >= pairWait }
	for d, ok := t.waitQ.front(); ok && expired(d.ns); d, ok = t.waitQ.front() {
		t.waitQ.pop()
		e, ok := t.waiting[d.k]
		if !ok || e.Conn.Cookie != d.cookie {
			continue // released already
		}
		delete(t.waiting, d.k)
		delete(t.waitingCookie, d.cookie)
		t.handleEvent(&e, false)
	}
	for d, ok := t.closedQ.front(); ok && expired(d.ns); d, ok = t.closedQ.front() {
		t.closedQ.pop()
		if x, ok := t.dialled[d.k]; ok && x.cookie == d.cookie {
			delete(t.dialled, d.k)
		}
	}
}

// due is something that waits, from when.
type due struct {
	k      layout.Tuple
	cookie uint64
	ns     uint64
}

// fifo is a queue of dues.
type fifo struct {
	q    []due
	head int
}

func (f *fifo) push(d due) { f.q = append(f.q, d) }

func (f *fifo) front() (due, bool) {
	if f.head == len(f.q) {
		return due{}, false
	}
	return f.q[f.head], true
}

func (f *fifo) pop() {
	f.head++
	if f.head == len(f.q) {
		f.q, f.head = f.q[:0], 0
	} else if f.head >= 1024 && f.head*2 >= len(f.q) {
		f.q = f.q[:copy(f.q, f.q[f.head:])]
		f.head = 0
	}
}

func (f *fifo) len() int { return len(f.q) - f.head }

// pairOrigin files what a client end dialled for its server end, or gives
// a server end what its client dialled. Sweeps read client records before
// server records, so a server end first seen open pairs there; a server
// end first seen at its close waits for its client's record (see wait),
// and a client's entry outlives its close by pairWait for a server end
// that closes after it.
func (t *Telemetry) pairOrigin(x *conn) {
	c := &x.rec
	if x.reporter == ReporterSource {
		if c.Flags&layout.ConnRewritten != 0 && t.mayBeLocal(c.Remote) {
			t.dialled[tupleOf(c)] = dialled{cookie: c.Cookie, orig: c.Orig, origPort: c.OrigPort, serviceID: c.ServiceID}
		}
		return
	}
	if c.Flags&layout.ConnRewritten != 0 {
		return
	}
	k := tupleOf(c).Reverse()
	d, ok := t.dialled[k]
	if !ok {
		return
	}
	delete(t.dialled, k)
	c.Orig, c.OrigPort, c.ServiceID = d.orig, d.origPort, d.serviceID
	c.Flags |= layout.ConnRewritten
}

// mayBeLocal tells whether a is, or may be, a pod on this node.
func (t *Telemetry) mayBeLocal(a layout.Addr) bool {
	return t.cfg.LocalPod == nil || t.cfg.LocalPod(a.Netip())
}

// forget drops a closed connection end; nothing may use x afterwards.
func (t *Telemetry) forget(cookie uint64, x *conn) {
	delete(t.conns, cookie)
	if x.reporter == ReporterSource && x.rec.Flags&layout.ConnRewritten != 0 {
		// Its server end, if it is enrolled here and not done yet, has
		// pairWait to show up.
		k := tupleOf(&x.rec)
		if d, ok := t.dialled[k]; ok && d.cookie == cookie {
			t.closedQ.push(due{k: k, cookie: cookie, ns: x.lastNs})
		}
	}
	if t.sweeping {
		t.closedInSweep[cookie] = true
	}
	if len(t.spare) < maxSpare {
		*x = conn{}
		t.spare = append(t.spare, x)
	}
}

// maxSpare bounds the closed ends kept for reuse.
const maxSpare = 4096

// track starts accounting a connection end seen for the first time (by its
// close event, or by a sweep while it is open).
func (t *Telemetry) track(e *layout.ConnEvent) *conn {
	var x *conn
	if n := len(t.spare); n > 0 {
		x = t.spare[n-1]
		t.spare = t.spare[:n-1]
	} else {
		x = &conn{}
	}
	x.rec, x.reporter = e.Conn, ReporterSource
	if e.Conn.Role == layout.RoleServer {
		x.reporter = ReporterDestination
	}
	x.srtt = e.SRTTUs
	t.pairOrigin(x)
	x.res = t.resolve(x)
	x.res.open.opened.Inc()
	if x.res.open.overflow {
		t.ovf.Inc()
	}
	return x
}

// account adds what a record says beyond what was counted. Request bytes
// go client to server, response bytes server to client, whichever end
// reports (Istio's received and sent).
func (t *Telemetry) account(x *conn, s *series, e *layout.ConnEvent) {
	req, resp := e.BytesSent, e.BytesReceived
	if x.reporter == ReporterDestination {
		req, resp = resp, req
	}
	if req > x.request {
		s.received.Add(float64(req - x.request))
		x.request = req
	}
	if resp > x.response {
		s.sent.Add(float64(resp - x.response))
		x.response = resp
	}
}

func (t *Telemetry) resolve(x *conn) *resolved {
	r := t.cfg.Resolver
	if g := r.Generation(); g != t.gen || len(t.cache) > 4*t.cfg.MaxSeries+1024 {
		clear(t.cache)
		t.gen = g
	}
	k := resolveKey{reporter: x.reporter, local: x.rec.Local.Netip(), remote: x.rec.Remote.Netip()}
	if x.rec.Flags&layout.ConnRewritten != 0 {
		k.orig = x.rec.Orig.Netip()
	}
	if res, ok := t.cache[k]; ok {
		return res
	}
	res := &resolved{}
	local, remote := r.Peer(k.local), r.Peer(k.remote)
	if x.reporter == ReporterSource {
		res.src, res.dst = local, remote
	} else {
		res.src, res.dst = remote, local
	}
	if k.orig.IsValid() {
		res.svc = r.Service(k.orig)
	}
	res.open = t.series.get(labelValues(x.reporter, res.src, res.dst, res.svc, noFlags))
	t.cache[k] = res
	return res
}

func (t *Telemetry) withFlags(x *conn, flags string) *series {
	if flags == noFlags {
		return x.res.open
	}
	if s := x.res.byFlags[flags]; s != nil {
		return s
	}
	s := t.series.get(labelValues(x.reporter, x.res.src, x.res.dst, x.res.svc, flags))
	if x.res.byFlags == nil {
		x.res.byFlags = map[string]*series{}
	}
	x.res.byFlags[flags] = s
	return s
}

// startSweep marks the start of a sweep. Caller holds t.mu.
func (t *Telemetry) startSweep() {
	t.sweeping = true
}

// abortSweep ends a sweep that failed midway. Caller holds t.mu.
func (t *Telemetry) abortSweep() {
	t.sweeping = false
	clear(t.closedInSweep)
}

// endSweep finishes one sweep over the kernel's open connections: a
// connection missing from two sweeps in a row is gone although its close
// event was lost, and is closed here with what was last known. Caller
// holds t.mu.
func (t *Telemetry) endSweep(seen map[uint64]bool, startNs uint64) {
	t.sweeps++
	t.sweeping = false
	clear(t.closedInSweep)
	for cookie, x := range t.conns {
		if seen[cookie] || x.lastNs >= startNs {
			continue
		}
		x.missed++
		if x.missed < 2 {
			continue
		}
		x.res.open.closed.Inc()
		if t.logging() {
			t.emit(t.entry(x, x.lastNs, "unknown", noFlags))
		}
		t.forget(cookie, x)
		t.finalized[cookie] = t.sweeps
	}
	for cookie, n := range t.finalized {
		if t.sweeps-n > 3 {
			delete(t.finalized, cookie)
		}
	}
	t.flush()
}

// Entry is one connection end: an access log line, or a live connection in
// /debug/connections.
type Entry struct {
	Time          time.Time `json:"time"`
	Start         time.Time `json:"start"`
	Reporter      Reporter  `json:"reporter"`
	Source        Endpoint  `json:"source"`
	Destination   Endpoint  `json:"destination"`
	Dialled       string    `json:"dialled,omitempty"`
	Service       string    `json:"service,omitempty"`
	RequestBytes  uint64    `json:"request_bytes"`
	ResponseBytes uint64    `json:"response_bytes"`
	DurationMs    float64   `json:"duration_ms"`
	RTTMicros     uint32    `json:"rtt_us"`
	Retransmits   uint32    `json:"retransmits"`
	Result        string    `json:"result,omitempty"`
	ResponseFlags string    `json:"response_flags,omitempty"`
	Accelerated   bool      `json:"accelerated,omitempty"`
	ID            uint64    `json:"id"`
}

// Endpoint is one end of a connection.
type Endpoint struct {
	Address   string `json:"address"`
	Workload  string `json:"workload,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Principal string `json:"principal,omitempty"`
}

func (t *Telemetry) entry(x *conn, nowNs uint64, result, flags string) Entry {
	local := netip.AddrPortFrom(x.rec.Local.Netip(), x.rec.LocalPort)
	remote := netip.AddrPortFrom(x.rec.Remote.Netip(), x.rec.RemotePort)
	e := Entry{
		Time:          t.wall(nowNs),
		Start:         t.wall(x.rec.StartNs),
		Reporter:      x.reporter,
		RequestBytes:  x.request,
		ResponseBytes: x.response,
		RTTMicros:     x.srtt,
		Retransmits:   x.retrans,
		Result:        result,
		ResponseFlags: flags,
		Accelerated:   x.rec.Flags&(layout.ConnRedirect|layout.ConnRedirectIn) != 0,
		ID:            x.rec.Cookie,
	}
	if nowNs > x.rec.StartNs {
		e.DurationMs = float64(nowNs-x.rec.StartNs) / 1e6
	}
	src, dst := local, remote
	if x.reporter == ReporterDestination {
		src, dst = remote, local
	}
	e.Source, e.Destination = endpoint(src, x.res.src), endpoint(dst, x.res.dst)
	if x.rec.Flags&layout.ConnRewritten != 0 {
		e.Dialled = netip.AddrPortFrom(x.rec.Orig.Netip(), x.rec.OrigPort).String()
	}
	if x.res.svc != nil {
		e.Service = x.res.svc.Hostname
	}
	return e
}

func endpoint(a netip.AddrPort, p *Peer) Endpoint {
	ep := Endpoint{Address: a.String()}
	if p != nil {
		ep.Workload, ep.Namespace, ep.Principal = p.Workload, p.Namespace, p.Principal
	}
	return ep
}

// Connections lists the open connection ends as last reported, oldest
// first.
func (t *Telemetry) Connections() []Entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Entry, 0, len(t.conns))
	for _, x := range t.conns {
		out = append(out, t.entry(x, x.lastNs, "", ""))
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Start.Equal(out[j].Start) {
			return out[i].Start.Before(out[j].Start)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// wall converts kernel monotonic nanoseconds to wall time.
func (t *Telemetry) wall(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return t.bootWall.Add(time.Duration(ns)).UTC()
}

func monotonicNs() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}

func bootWall() time.Time {
	return time.Now().Add(-time.Duration(monotonicNs()))
}
