package proxy

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// stats are the engine's own counters (kmesh_waypoint_*). Every label has
// a fixed, small set of values.
type stats struct {
	headerFailures *prometheus.CounterVec // reason: timeout, invalid
	connections    *prometheus.CounterVec // chain kind: http, tcp, deny, none
	sniffed        *prometheus.CounterVec // protocol: http1, h2c, tcp, timeout, closed
	denied         *prometheus.CounterVec // where: chain, route
	retries        prometheus.Counter
	mirrors        *prometheus.CounterVec // result: sent, failed, skipped
	applies        prometheus.Counter
	unsupported    prometheus.Gauge

	// The same, readable without a registry (admin status, tests).
	headerTimeouts, headerInvalid atomic.Uint64
	retriesN                      atomic.Uint64
	mirrorsSent, mirrorsFailed    atomic.Uint64
}

func newStats() *stats {
	cv := func(name, help, label string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{label})
	}
	return &stats{
		headerFailures: cv("kmesh_waypoint_proxy_header_failures_total", "Connections closed for a missing or invalid PROXY protocol header.", "reason"),
		connections:    cv("kmesh_waypoint_connections_total", "Connections accepted, by the kind of filter chain that took them (none: no chain matched).", "chain"),
		sniffed:        cv("kmesh_waypoint_protocol_sniffs_total", "Protocol detections, by result (timeout: not decided before the deadline, closed unless the listener continues on timeout, then TCP; closed: the client left before its first byte).", "protocol"),
		denied:         cv("kmesh_waypoint_denied_total", "Connections and requests refused by a fail-closed Deny chain or route.", "where"),
		retries:        prometheus.NewCounter(prometheus.CounterOpts{Name: "kmesh_waypoint_upstream_retries_total", Help: "Upstream request retries."}),
		mirrors:        cv("kmesh_waypoint_mirrored_requests_total", "Mirrored (shadow) requests, by result (skipped: the body was too long to keep).", "result"),
		applies:        prometheus.NewCounter(prometheus.CounterOpts{Name: "kmesh_waypoint_config_applies_total", Help: "Snapshots applied."}),
		unsupported:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "kmesh_waypoint_config_unsupported", Help: "Pieces of configuration of the running snapshot that are read but not enforced."}),
	}
}

func (s *stats) register(reg prometheus.Registerer, e *Engine) error {
	for _, c := range []prometheus.Collector{s.headerFailures, s.connections, s.sniffed, s.denied, s.retries, s.mirrors, s.applies, s.unsupported,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kmesh_waypoint_ready", Help: "1 when a snapshot runs and all its listeners are open."}, func() float64 {
			if e.Ready() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kmesh_waypoint_faults_active", Help: "Injected faults in progress."}, func() float64 {
			return float64(e.faults.ActiveFaults())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kmesh_waypoint_outlier_ejections_active", Help: "Endpoints outlier detection has taken out of load balancing now, all clusters."}, func() float64 {
			n := 0
			for _, st := range e.ClusterStats() {
				n += st.Ejected
			}
			return float64(n)
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "kmesh_waypoint_outlier_ejections_total", Help: "Endpoint ejections by outlier detection, all clusters."}, func() float64 {
			var n uint64
			for _, st := range e.ClusterStats() {
				n += st.Ejections
			}
			return float64(n)
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "kmesh_waypoint_accesslog_failures_total", Help: "Access log lines the writer refused."}, func() float64 {
			return float64(e.access.Failed())
		}),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (s *stats) headerFailure(reason string) {
	s.headerFailures.WithLabelValues(reason).Inc()
	if reason == "timeout" {
		s.headerTimeouts.Add(1)
	} else {
		s.headerInvalid.Add(1)
	}
}

func (s *stats) applied(unsupported int) {
	s.applies.Inc()
	s.unsupported.Set(float64(unsupported))
}

func (s *stats) retry() {
	s.retries.Inc()
	s.retriesN.Add(1)
}

func (s *stats) mirror(result string) {
	s.mirrors.WithLabelValues(result).Inc()
	switch result {
	case "sent":
		s.mirrorsSent.Add(1)
	case "failed":
		s.mirrorsFailed.Add(1)
	}
}

// Stats are the engine's counters for an admin server.
type Stats struct {
	Version                       string
	Ready                         bool
	Listeners, Clusters           int
	HeaderTimeouts, HeaderInvalid uint64
	Retries                       uint64
	MirrorsSent, MirrorsFailed    uint64
	ActiveFaults                  int64
	AccessLogFailures             uint64
}

// Stats returns the engine's counters now.
func (e *Engine) Stats() Stats {
	st := Stats{
		Ready:             e.Ready(),
		HeaderTimeouts:    e.stats.headerTimeouts.Load(),
		HeaderInvalid:     e.stats.headerInvalid.Load(),
		Retries:           e.stats.retriesN.Load(),
		MirrorsSent:       e.stats.mirrorsSent.Load(),
		MirrorsFailed:     e.stats.mirrorsFailed.Load(),
		ActiveFaults:      e.faults.ActiveFaults(),
		AccessLogFailures: e.access.Failed(),
	}
	if cfg := e.cfg.Load(); cfg != nil {
		st.Version = cfg.snap.Version
		st.Listeners = len(cfg.listeners)
		st.Clusters = len(cfg.clusters)
	}
	return st
}
