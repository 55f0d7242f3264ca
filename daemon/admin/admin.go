// Package admin serves the daemon's localhost HTTP API: readiness, dumps of
// the model and the kernel maps, Prometheus metrics and pprof.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/dataplane"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/daemon/telemetry"
	"github.com/kmesh-go/kmesh/internal/unixsock"
)

// Source is what the admin API reports on.
type Source struct {
	Dataplane *dataplane.Dataplane
	// Ready reports whether the first complete state is in the kernel.
	Ready func() bool
	// Status fills in the daemon's fields of /debug/status (its version,
	// node, source, pods).
	Status func(*Status)
	// Pods lists the CNI registry.
	Pods func() []*cniv1.Pod
	// Telemetry serves /debug/connections and /debug/accesslog; nil when
	// telemetry is off.
	Telemetry *telemetry.Telemetry
}

// The responses, as kmeshctl and other clients decode them.

// Status is /debug/status.
type Status struct {
	Ready     bool   `json:"ready"`
	Version   string `json:"version"`
	Node      string `json:"node"`
	Locality  string `json:"locality"`
	Services  int    `json:"services"`
	Workloads int    `json:"workloads"`
	Policies  int    `json:"policies"`
	// Source is where the mesh comes from: "xds:<address>" or
	// "file:<path>".
	Source    string `json:"source"`
	Connected bool   `json:"connected"`
	LastError string `json:"lastError"`
	Pushes    uint64 `json:"pushes"`
	NACKs     uint64 `json:"nacks"`
	// The xDS stream's counters (an istiod source only).
	XDSConnects  uint64 `json:"xdsConnects,omitempty"`
	XDSACKs      uint64 `json:"xdsACKs,omitempty"`
	XDSNACKs     uint64 `json:"xdsNACKs,omitempty"`
	Pods         int    `json:"pods"`
	EnrolledPods int    `json:"enrolledPods"`
}

// ConfigDump is /debug/config_dump: the model as the daemon holds it.
type ConfigDump struct {
	Node      model.Node           `json:"node"`
	Services  []ServiceDump        `json:"services"`
	Workloads []WorkloadDump       `json:"workloads"`
	Policies  []*model.AuthzPolicy `json:"policies"`
}

// ServiceDump is a service with its data-path id and the workloads
// backing it (by uid).
type ServiceDump struct {
	*model.Service
	ID        uint32   `json:"id"`
	Endpoints []string `json:"backing"`
}

// WorkloadDump is a workload with its data-path id.
type WorkloadDump struct {
	*model.Workload
	ID uint32 `json:"id"`
}

// MapDump is /debug/maps: the kernel's state, decoded.
type MapDump struct {
	Services []maps.Service `json:"services"`
	Backends []maps.Backend `json:"backends"`
	// Enrolled is the manage map: netns cookie -> enrollment.
	Enrolled map[uint64]maps.Enrollment `json:"enrolled"`
	// Usage is entries in use and capacity per map.
	Usage map[string][2]int `json:"usage"`
	// Stats are the kernel's event counters.
	Stats map[string]uint64 `json:"stats"`
}

// Pods is /debug/pods: the CNI registry, each pod attachment in the CNI
// API's JSON (protojson); a pod in several networks has a row per network.
type Pods []*cniv1.Pod

func (ps Pods) MarshalJSON() ([]byte, error) {
	out := make([]json.RawMessage, 0, len(ps))
	for _, p := range ps {
		b, err := protojson.Marshal(p)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return json.Marshal(out)
}

func (ps *Pods) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*ps = make(Pods, 0, len(raw))
	for i, r := range raw {
		p := &cniv1.Pod{}
		if err := protojson.Unmarshal(r, p); err != nil {
			return fmt.Errorf("pods[%d]: %w", i, err)
		}
		*ps = append(*ps, p)
	}
	return nil
}

// Connection is one connection end in /debug/connections, and one line
// of /debug/accesslog (an ended one).
type Connection = telemetry.Entry

// Endpoint is one end of a Connection.
type Endpoint = telemetry.Endpoint

// readyHandler answers the readiness probe.
func readyHandler(ready func() bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if ready() {
			w.Write([]byte("ready\n"))
			return
		}
		http.Error(w, "not ready: waiting for the first complete mesh state", http.StatusServiceUnavailable)
	}
}

// StatusHandler serves /ready and /metrics and nothing else: what the
// kubelet and Prometheus need, for an address beyond loopback. The daemon
// runs in the host's network, so its loopback admin API is out of
// Prometheus' reach; this is the port to open for it, as ztunnel opens its
// stats port 15020 on every address while its admin (config dump, pprof)
// stays on localhost:15000 (ztunnel src/config.rs: admin_addr and
// stats_addr).
func StatusHandler(ready func() bool, reg prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", readyHandler(ready))
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

// Handler builds the HTTP handler of the (loopback) admin API.
func Handler(src Source, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", readyHandler(src.Ready))
	mux.HandleFunc("/debug/config_dump", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, configDump(src.Dataplane))
	})
	mux.HandleFunc("/debug/maps", func(w http.ResponseWriter, r *http.Request) {
		d, err := mapDump(src.Dataplane)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, d)
	})
	mux.HandleFunc("/debug/status", func(w http.ResponseWriter, r *http.Request) {
		st := Status{Ready: src.Ready()}
		st.Services, st.Workloads, st.Policies = src.Dataplane.Store().Counts()
		if src.Status != nil {
			src.Status(&st)
		}
		writeJSON(w, st)
	})
	mux.HandleFunc("/debug/pods", func(w http.ResponseWriter, r *http.Request) {
		pods := Pods{}
		if src.Pods != nil {
			pods = src.Pods()
		}
		writeJSON(w, pods)
	})
	mux.HandleFunc("/debug/connections", func(w http.ResponseWriter, r *http.Request) {
		if src.Telemetry == nil {
			http.Error(w, "telemetry is off (--telemetry=false)", http.StatusNotFound)
			return
		}
		// A view at most a second old, without sweeping per request.
		if err := src.Telemetry.Fresh(time.Second); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, src.Telemetry.Connections())
	})
	mux.HandleFunc("/debug/accesslog", func(w http.ResponseWriter, r *http.Request) {
		if src.Telemetry == nil {
			http.Error(w, "telemetry is off (--telemetry=false)", http.StatusNotFound)
			return
		}
		accessLog(w, r, src.Telemetry)
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func configDump(d *dataplane.Dataplane) ConfigDump {
	st := d.Store()
	out := ConfigDump{Node: d.Node(), Policies: st.Policies()}
	for _, s := range st.Services() {
		out.Services = append(out.Services, ServiceDump{Service: s, ID: d.ServiceID(s.Key), Endpoints: st.Backing(s.Key)})
	}
	for _, w := range st.Workloads() {
		out.Workloads = append(out.Workloads, WorkloadDump{Workload: w, ID: d.WorkloadID(w.UID)})
	}
	return out
}

func mapDump(d *dataplane.Dataplane) (MapDump, error) {
	m := d.Maps()
	out := MapDump{Services: m.Services(), Backends: m.Backends(), Usage: m.Usage()}
	var err error
	if out.Enrolled, err = d.Manage().List(); err != nil {
		return out, err
	}
	if out.Stats, err = m.Stats(); err != nil {
		return out, err
	}
	return out, nil
}

// accessLog writes the recent access log lines (JSON, one per line) and,
// with ?follow=1, every new one as it comes until the client goes away.
// Lines are kept for this view from the first request on.
func accessLog(w http.ResponseWriter, r *http.Request, t *telemetry.Telemetry) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	follow := r.URL.Query().Get("follow") == "1"
	var lines <-chan []byte
	if follow {
		var cancel func()
		lines, cancel = t.Follow()
		defer cancel()
	}
	for _, l := range t.Recent() {
		if _, err := w.Write(l); err != nil {
			return
		}
	}
	if !follow {
		return
	}
	fl, _ := w.(http.Flusher)
	if fl != nil {
		fl.Flush()
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case l := <-lines:
			if _, err := w.Write(l); err != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Socket is where the daemon serves the admin API by default (its
// --admin-address, beside the CNI socket) and where kmeshctl looks first.
const Socket = "/var/run/kmesh/admin.sock"

// newServer is the HTTP server of the admin and status addresses. An idle
// kept connection is closed after two minutes: the status address is open
// to the node's network, and one left idle would otherwise be held for
// ever (a scraper reconnects at once).
func newServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
}

// CheckAddress says what is wrong with an address for Serve, so the
// daemon refuses a bad flag at start instead of failing once its programs
// are attached: "unix:" and an absolute path, or host:port.
func CheckAddress(addr string) error {
	if path, ok := unixsock.Path(addr); ok {
		if !filepath.IsAbs(path) {
			return fmt.Errorf("want an absolute path after unix:, got %q", addr)
		}
		return nil
	}
	if strings.HasPrefix(addr, "/") {
		return fmt.Errorf("%q is a path: a unix socket is written unix:%s", addr, addr)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Errorf("want unix:/path or host:port, got %q", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("want a port number 0-65535 in %q", addr)
	}
	return nil
}

// Serve listens on addr until ctx ends: "unix:/path", a socket only root
// can open (the admin API has no authentication, and on a node every
// host-network pod shares the loopback), or host:port (the status
// address, and tests).
func Serve(ctx context.Context, addr string, h http.Handler) error {
	var l net.Listener
	var err error
	if path, ok := unixsock.Path(addr); ok {
		l, err = unixsock.Listen(path)
	} else {
		l, err = net.Listen("tcp", addr)
	}
	if err != nil {
		return err
	}
	srv := newServer(h)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
