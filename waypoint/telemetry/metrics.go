// Package telemetry is what kmesh-waypoint reports about the traffic it
// proxies: Istio's standard request and TCP metrics (reporter "waypoint",
// Istio's label names, so Istio's dashboards and Kiali read them as they
// are) with a bound on label sets, and a JSON access log.
//
// Identities come from the caller: the source is the workload at the TCP
// peer address (never the PROXY header's source, which a client could
// forge), the destination the workload at the endpoint the request went to.
package telemetry

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Istio's request metric labels.
var requestLabels = []string{
	"reporter",
	"source_workload",
	"source_canonical_service",
	"source_canonical_revision",
	"source_workload_namespace",
	"source_principal",
	"source_app",
	"source_version",
	"source_cluster",
	"destination_service",
	"destination_service_namespace",
	"destination_service_name",
	"destination_workload",
	"destination_workload_namespace",
	"destination_canonical_service",
	"destination_canonical_revision",
	"destination_principal",
	"destination_app",
	"destination_version",
	"destination_cluster",
	"request_protocol",
	"response_code",
	"grpc_response_status",
	"response_flags",
	"connection_security_policy",
}

// tcpLabels are the request labels without response_code and
// grpc_response_status, as Istio's TCP metrics have them.
var tcpLabels = func() []string {
	var out []string
	for _, l := range requestLabels {
		if l != "response_code" && l != "grpc_response_status" {
			out = append(out, l)
		}
	}
	return out
}()

const (
	reporter = "waypoint"
	unknown  = "unknown"
	latest   = "latest"
	// overflow replaces every identity label of the series that takes
	// what comes beyond the cap.
	overflow = "overflow"
	// The waypoint's hop is plaintext (the kernel redirects the client's
	// own connection), so there is no mTLS to report.
	securityPolicy = "none"
	// DefaultMaxSeries caps distinct label sets per metric family.
	DefaultMaxSeries = 10000
)

// durationBuckets are Envoy's default histogram buckets, which Istio's
// request duration and size histograms use.
var durationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

// RequestKey is one request's labels, as the proxy knows them.
type RequestKey struct {
	Source, Dest *model.Peer
	// Service is the destination service (nil or empty: unknown). A
	// pointer into the snapshot: the key hashes an address, not strings.
	Service *model.ServiceRef
	// Protocol is "http" or "grpc".
	Protocol   string
	Code       int
	GRPCStatus string
	Flags      string
}

// TCPKey is one TCP connection's labels.
type TCPKey struct {
	Source, Dest *model.Peer
	Service      *model.ServiceRef
	Flags        string
}

// Metrics are the Istio metrics. Safe for concurrent use.
type Metrics struct {
	max int

	requests                      *prometheus.CounterVec
	duration, reqBytes, respBytes *prometheus.HistogramVec
	tcpOpened, tcpClosed          *prometheus.CounterVec
	tcpSent, tcpReceived          *prometheus.CounterVec
	overflowed                    prometheus.Counter

	// fast maps keys (peer pointers of the current snapshots) to series
	// without building label strings (a typed map: a sync.Map would box
	// every key it is asked for); slow dedups by label values.
	fastMu  sync.RWMutex
	fast    map[RequestKey]*requestSeries
	fastTCP map[TCPKey]*TCPSeries
	mu      sync.Mutex
	slow    map[string]*requestSeries
	slowTCP map[string]*TCPSeries
}

type requestSeries struct {
	requests                      prometheus.Counter
	duration, reqBytes, respBytes prometheus.Observer
}

// TCPSeries is one TCP label set's counters.
type TCPSeries struct {
	Opened, Closed, Sent, Received prometheus.Counter
}

// NewMetrics makes the metrics with a cap on label sets per family
// (<= 0: DefaultMaxSeries).
func NewMetrics(maxSeries int) *Metrics {
	if maxSeries <= 0 {
		maxSeries = DefaultMaxSeries
	}
	hist := func(name, help string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: durationBuckets}, requestLabels)
	}
	tcp := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, tcpLabels)
	}
	return &Metrics{
		max:         maxSeries,
		requests:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total", Help: "Requests (Istio standard metric)."}, requestLabels),
		duration:    hist("istio_request_duration_milliseconds", "Request duration in milliseconds (Istio standard metric)."),
		reqBytes:    hist("istio_request_bytes", "Request sizes in bytes as on the wire, head and body (Istio standard metric)."),
		respBytes:   hist("istio_response_bytes", "Response sizes in bytes as on the wire, head and body (Istio standard metric)."),
		tcpOpened:   tcp("istio_tcp_connections_opened_total", "TCP connections opened (Istio standard metric)."),
		tcpClosed:   tcp("istio_tcp_connections_closed_total", "TCP connections closed (Istio standard metric)."),
		tcpSent:     tcp("istio_tcp_sent_bytes_total", "Bytes sent during response, server to client (Istio standard metric)."),
		tcpReceived: tcp("istio_tcp_received_bytes_total", "Bytes received during request, client to server (Istio standard metric)."),
		overflowed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmesh_waypoint_telemetry_series_overflow_total",
			Help: "Requests and connections counted under the overflow label set because the series cap was reached.",
		}),
		slow:    map[string]*requestSeries{},
		slowTCP: map[string]*TCPSeries{},
		fast:    map[RequestKey]*requestSeries{},
		fastTCP: map[TCPKey]*TCPSeries{},
	}
}

// Register adds the metrics to reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	cs := []prometheus.Collector{m.requests, m.duration, m.reqBytes, m.respBytes, m.tcpOpened, m.tcpClosed, m.tcpSent, m.tcpReceived, m.overflowed,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kmesh_waypoint_telemetry_series", Help: "Label sets in use by the Istio request and TCP metrics."},
			func() float64 { return float64(m.Series()) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Series is the number of label sets in use (overflow sets included).
func (m *Metrics) Series() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.slow) + len(m.slowTCP)
}

// ObserveRequest counts one finished request.
func (m *Metrics) ObserveRequest(k *RequestKey, d time.Duration, requestBytes, responseBytes int64) {
	s := m.requestSeries(k)
	s.requests.Inc()
	// Whole milliseconds, the fraction dropped, as Istio's filter records
	// it (an integer division of the duration by a millisecond).
	s.duration.Observe(float64(d.Milliseconds()))
	s.reqBytes.Observe(float64(requestBytes))
	s.respBytes.Observe(float64(responseBytes))
}

func (m *Metrics) requestSeries(k *RequestKey) *requestSeries {
	return lookup(m, m.fast, m.slow, k, func() []string { return requestValues(k) },
		func(v []string) []string {
			return overflowValues(v, k.Protocol, strconv.Itoa(k.Code), k.GRPCStatus, k.Flags)
		},
		func(v []string) *requestSeries {
			return &requestSeries{
				requests:  m.requests.WithLabelValues(v...),
				duration:  m.duration.WithLabelValues(v...),
				reqBytes:  m.reqBytes.WithLabelValues(v...),
				respBytes: m.respBytes.WithLabelValues(v...),
			}
		})
}

// TCP returns the series of a TCP connection: count it opened now, closed
// and its bytes when it ends.
func (m *Metrics) TCP(k *TCPKey) *TCPSeries {
	return lookup(m, m.fastTCP, m.slowTCP, k, func() []string { return tcpValues(k) },
		func(v []string) []string { return overflowValues(v, "tcp", k.Flags) },
		func(v []string) *TCPSeries {
			return &TCPSeries{
				Opened:   m.tcpOpened.WithLabelValues(v...),
				Closed:   m.tcpClosed.WithLabelValues(v...),
				Sent:     m.tcpSent.WithLabelValues(v...),
				Received: m.tcpReceived.WithLabelValues(v...),
			}
		})
}

// lookup finds a key's series in the fast cache, else by its label values
// (those of the overflow set once the family has m.max label sets), made
// with newSeries when the label set is new; then caches it under the key.
func lookup[K comparable, S any](m *Metrics, fast map[K]*S, slow map[string]*S, k *K,
	values func() []string, overflow func([]string) []string, newSeries func([]string) *S) *S {
	m.fastMu.RLock()
	s, ok := fast[*k]
	m.fastMu.RUnlock()
	if ok {
		return s
	}
	v := values()
	key := strings.Join(v, "\xff")
	m.mu.Lock()
	s = slow[key]
	if s == nil {
		if len(slow) >= m.max {
			m.overflowed.Inc()
			v = overflow(v)
			key = strings.Join(v, "\xff")
			s = slow[key]
		}
		if s == nil {
			s = newSeries(v)
			slow[key] = s
		}
	}
	m.mu.Unlock()
	m.fastMu.Lock()
	m.bound()
	fast[*k] = s
	m.fastMu.Unlock()
	return s
}

// Reset forgets the series cache keyed by the previous snapshots' peers
// (the series themselves stay: counters never go backwards).
func (m *Metrics) Reset() {
	m.fastMu.Lock()
	clear(m.fast)
	clear(m.fastTCP)
	m.fastMu.Unlock()
}

// bound starts the cache over when it holds many keys: keys hold peer
// pointers of one snapshot, so every swap brings new keys for the same
// series. Called with fastMu held.
func (m *Metrics) bound() {
	if len(m.fast)+len(m.fastTCP) >= 4*m.max {
		clear(m.fast)
		clear(m.fastTCP)
	}
}

func requestValues(k *RequestKey) []string {
	v := make([]string, 0, len(requestLabels))
	v = append(v, reporter)
	v = appendPeer(v, k.Source)
	v = appendService(v, k.Service)
	v = appendDest(v, k.Dest)
	code := "0"
	if k.Code > 0 {
		code = strconv.Itoa(k.Code)
	}
	return append(v, k.Protocol, code, k.GRPCStatus, flags(k.Flags), securityPolicy)
}

func tcpValues(k *TCPKey) []string {
	v := make([]string, 0, len(tcpLabels))
	v = append(v, reporter)
	v = appendPeer(v, k.Source)
	v = appendService(v, k.Service)
	v = appendDest(v, k.Dest)
	return append(v, "tcp", flags(k.Flags), securityPolicy)
}

// overflowValues keeps reporter, the protocol, the response labels and
// the security policy (few values each) and blanks the identities.
func overflowValues(v []string, tail ...string) []string {
	out := make([]string, 0, len(v))
	out = append(out, reporter)
	for range len(v) - 1 - len(tail) - 1 {
		out = append(out, overflow)
	}
	for i, t := range tail {
		if i == len(tail)-1 {
			t = flags(t)
		}
		out = append(out, t)
	}
	return append(out, securityPolicy)
}

func flags(f string) string {
	if f == "" {
		return "-"
	}
	return f
}

// appendPeer adds workload, canonical service, canonical revision,
// namespace, principal, app, version and cluster, Istio's way: app and
// version are the canonical service and revision (Istio reads them from
// the same workload fields), and only the source's canonical revision
// defaults to "latest", an unknown peer's too.
func appendPeer(v []string, p *model.Peer) []string {
	if p == nil {
		return append(v, unknown, unknown, latest, unknown, unknown, unknown, unknown, unknown)
	}
	svc, rev := or(p.CanonicalName), or(p.CanonicalRevision)
	srcRev := p.CanonicalRevision
	if srcRev == "" {
		srcRev = latest
	}
	return append(v, or(workload(p)), svc, srcRev, or(p.Namespace), or(p.Principal()), svc, rev, or(p.ClusterID))
}

// appendDest adds the destination workload labels in Istio's order for
// the destination side; a missing revision is "unknown" here.
func appendDest(v []string, p *model.Peer) []string {
	if p == nil {
		return append(v, unknown, unknown, unknown, unknown, unknown, unknown, unknown, unknown)
	}
	svc, rev := or(p.CanonicalName), or(p.CanonicalRevision)
	return append(v, or(workload(p)), or(p.Namespace), svc, rev, or(p.Principal()), svc, rev, or(p.ClusterID))
}

func appendService(v []string, s *model.ServiceRef) []string {
	if s == nil {
		return append(v, unknown, unknown, unknown)
	}
	return append(v, or(s.Hostname), or(s.Namespace), or(s.Name))
}

func workload(p *model.Peer) string {
	if p.WorkloadName != "" {
		return p.WorkloadName
	}
	return p.Name
}

func or(s string) string {
	if s == "" {
		return unknown
	}
	return s
}
