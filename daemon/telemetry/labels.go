package telemetry

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Istio's standard TCP metric labels, in the order ztunnel exports them, so
// that existing dashboards (Grafana's Istio dashboards, Kiali) work as they
// are.
var istioLabels = []string{
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
	"destination_canonical_service",
	"destination_canonical_revision",
	"destination_workload_namespace",
	"destination_principal",
	"destination_app",
	"destination_version",
	"destination_cluster",
	"request_protocol",
	"response_flags",
	"connection_security_policy",
}

// Values Istio uses when it knows nothing better.
const (
	unknown         = "unknown"
	defaultRevision = "latest"
	noFlags         = "-"
	// overflow fills every label but reporter, request_protocol and
	// response_flags of the series that takes the connections beyond the
	// cardinality cap.
	overflow = "overflow"
)

// Reporter is which end of the connection reports: the client's
// ("source") or the server's ("destination").
type Reporter string

const (
	ReporterSource      Reporter = "source"
	ReporterDestination Reporter = "destination"
)

// Peer is a workload as the labels name it.
type Peer struct {
	UID               string
	Workload          string
	Namespace         string
	CanonicalService  string
	CanonicalRevision string
	Principal         string
	Cluster           string
}

// Service is a service as the labels name it.
type Service struct {
	Hostname  string
	Name      string
	Namespace string
}

// labelValues builds one label set in istioLabels order. Unknown peers and
// services read "unknown". Without mTLS in the data path the destination
// reports connection_security_policy "none"; the source cannot tell and
// reports "unknown", as Istio does.
func labelValues(r Reporter, src, dst *Peer, svc *Service, flags string) []string {
	v := make([]string, 0, len(istioLabels))
	v = append(v, string(r))
	v = appendPeer(v, src)
	if svc != nil {
		v = append(v, or(svc.Hostname), or(svc.Namespace), or(svc.Name))
	} else {
		v = append(v, unknown, unknown, unknown)
	}
	v = appendPeer(v, dst)
	policy := unknown
	if r == ReporterDestination {
		policy = "none"
	}
	return append(v, "tcp", flags, policy)
}

// appendPeer adds workload, canonical service, canonical revision,
// namespace, principal, app, version and cluster. For the ambient data path
// Istio sets app and version to the canonical service and revision.
func appendPeer(v []string, p *Peer) []string {
	if p == nil {
		return append(v, unknown, unknown, unknown, unknown, unknown, unknown, unknown, unknown)
	}
	svc := or(p.CanonicalService)
	rev := p.CanonicalRevision
	if rev == "" {
		rev = defaultRevision
	}
	if p.CanonicalService == "" {
		rev = unknown
	}
	return append(v, or(p.Workload), svc, rev, or(p.Namespace), or(p.Principal), svc, rev, or(p.Cluster))
}

// overflowValues is the label set connections beyond the cap are counted
// under.
func overflowValues(r Reporter, flags string) []string {
	v := make([]string, len(istioLabels))
	for i := range v {
		v[i] = overflow
	}
	v[0] = string(r)
	v[20], v[21] = "tcp", flags
	if r == ReporterDestination {
		v[22] = "none"
	} else {
		v[22] = unknown
	}
	return v
}

func or(s string) string {
	if s == "" {
		return unknown
	}
	return s
}

// istioMetrics are Istio's four TCP counters.
type istioMetrics struct {
	opened, closed, sent, received *prometheus.CounterVec
}

func newIstioMetrics() istioMetrics {
	c := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, istioLabels)
	}
	return istioMetrics{
		opened:   c("istio_tcp_connections_opened_total", "TCP connections opened (Istio standard metric)."),
		closed:   c("istio_tcp_connections_closed_total", "TCP connections closed (Istio standard metric)."),
		sent:     c("istio_tcp_sent_bytes_total", "Bytes sent during response, server to client (Istio standard metric)."),
		received: c("istio_tcp_received_bytes_total", "Bytes received during request, client to server (Istio standard metric)."),
	}
}

// series is one label set's counters, looked up once and kept.
type series struct {
	opened, closed, sent, received prometheus.Counter
	overflow                       bool
}

// seriesSet hands out series and bounds how many distinct label sets
// exist: past max, a new label set is counted under its reporter's overflow
// set instead. So each of the four metrics has at most max + 4 series
// (overflow sets per reporter, with and without abnormal-end flags), no
// matter how many workloads and services come and go. Sets, once made, are
// kept: counters must not go backwards.
type seriesSet struct {
	m        istioMetrics
	max      int
	byKey    map[string]*series
	overflow map[string]*series
}

func newSeriesSet(m istioMetrics, max int) *seriesSet {
	return &seriesSet{m: m, max: max, byKey: map[string]*series{}, overflow: map[string]*series{}}
}

// get returns the series for a label set, made on first use.
func (s *seriesSet) get(values []string) *series {
	key := strings.Join(values, "\xff")
	if x, ok := s.byKey[key]; ok {
		return x
	}
	if len(s.byKey) >= s.max {
		ov := overflowValues(Reporter(values[0]), values[21])
		okey := strings.Join(ov, "\xff")
		x := s.overflow[okey]
		if x == nil {
			x = s.make(ov)
			x.overflow = true
			s.overflow[okey] = x
		}
		return x
	}
	x := s.make(values)
	s.byKey[key] = x
	return x
}

func (s *seriesSet) make(values []string) *series {
	return &series{
		opened:   s.m.opened.WithLabelValues(values...),
		closed:   s.m.closed.WithLabelValues(values...),
		sent:     s.m.sent.WithLabelValues(values...),
		received: s.m.received.WithLabelValues(values...),
	}
}

// size is the number of label sets in use, overflow sets included.
func (s *seriesSet) size() int { return len(s.byKey) + len(s.overflow) }
