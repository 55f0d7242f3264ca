package admin

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/dataplane"
)

// Counters a source exposes.
type Counters struct {
	Connected func() bool
	Pushes    func() uint64
	NACKs     func() uint64
	Pods      func() (all, enrolled int)
	Swept     func() uint64
	// KernelMaps reports entries and capacity of the maps the kernel
	// fills (km_tcp_sock), as last counted.
	KernelMaps func() map[string][2]int
}

// Metrics registers the daemon's metrics and returns the registry.
func Metrics(d *dataplane.Dataplane, c Counters) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))

	programming := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "kmesh_programming_duration_seconds",
		Help:    "Time to turn one mesh update into kernel map writes.",
		Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5},
	})
	failures := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kmesh_programming_failures_total",
		Help: "Mesh updates the kernel refused (the previous state was kept).",
	})
	reg.MustRegister(programming, failures)
	d.Observe(func(e dataplane.Event) {
		programming.Observe(e.Took.Seconds())
		if e.Err != nil {
			failures.Inc()
		}
	})
	if c.Connected != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kmesh_xds_connected", Help: "1 while the mesh source (istiod) is connected.",
		}, func() float64 {
			if c.Connected() {
				return 1
			}
			return 0
		}))
	}
	if c.Pushes != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kmesh_xds_pushes_total", Help: "Mesh updates received.",
		}, func() float64 { return float64(c.Pushes()) }))
	}
	if c.NACKs != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kmesh_xds_nacks_total", Help: "Mesh updates with a rejected resource (NACKed).",
		}, func() float64 { return float64(c.NACKs()) }))
	}
	if c.Pods != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kmesh_pods", Help: "Pod sandboxes known to the daemon on this node.",
		}, func() float64 { a, _ := c.Pods(); return float64(a) }))
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kmesh_pods_enrolled", Help: "Pod sandboxes enrolled in the data path.",
		}, func() float64 { _, e := c.Pods(); return float64(e) }))
	}
	reg.MustRegister(&mapCollector{d: d, kernel: c.KernelMaps})
	if c.Swept != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kmesh_authz_connections_closed_total", Help: "Established connections closed because a new policy denies them.",
		}, func() float64 { return float64(c.Swept()) }))
	}
	return reg
}

var (
	entriesDesc  = prometheus.NewDesc("kmesh_map_entries", "Entries in use per BPF map.", []string{"map"}, nil)
	capacityDesc = prometheus.NewDesc("kmesh_map_capacity", "Maximum entries per BPF map.", []string{"map"}, nil)
	eventsDesc   = prometheus.NewDesc("kmesh_datapath_events_total", "Kernel data-path decisions, by kind.", []string{"event"}, nil)
	authzDesc    = prometheus.NewDesc("kmesh_authz_connections_total",
		"New connections decided by authorization, by deciding policy and outcome (allowed, denied, dry_run_denied: a dry-run policy would have denied).",
		[]string{"policy", "outcome"}, nil)
)

type mapCollector struct {
	d      *dataplane.Dataplane
	kernel func() map[string][2]int
}

func (m *mapCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- entriesDesc
	ch <- capacityDesc
	ch <- eventsDesc
	ch <- authzDesc
}

func (m *mapCollector) Collect(ch chan<- prometheus.Metric) {
	usage := m.d.Maps().Usage()
	if m.kernel != nil {
		for name, u := range m.kernel() {
			usage[name] = u
		}
	}
	for name, u := range usage {
		ch <- prometheus.MustNewConstMetric(entriesDesc, prometheus.GaugeValue, float64(u[0]), name)
		ch <- prometheus.MustNewConstMetric(capacityDesc, prometheus.GaugeValue, float64(u[1]), name)
	}
	if st, err := m.d.Maps().Stats(); err == nil {
		for k, v := range st {
			ch <- prometheus.MustNewConstMetric(eventsDesc, prometheus.CounterValue, float64(v), k)
		}
	}
	if st, err := m.d.Maps().AuthzStats(); err == nil {
		keys := m.d.PolicyKeys()
		for id, counts := range st {
			name := keys[id]
			switch {
			case id == 0:
				name = "(no policies)"
			case id == ^uint32(0):
				name = "(no ALLOW policy matched)"
			case name == "":
				name = "(removed policy)"
			}
			for outcome, n := range counts {
				if n > 0 {
					ch <- prometheus.MustNewConstMetric(authzDesc, prometheus.CounterValue, float64(n), name, [maps.AuthzOutcomes]string{"allowed", "denied", "dry_run_denied"}[outcome])
				}
			}
		}
	}
}
