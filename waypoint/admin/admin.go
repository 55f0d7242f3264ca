// Package admin serves kmesh-waypoint's HTTP endpoints: readiness for the
// kubelet's probe, Prometheus metrics, the configuration as the engine runs
// it (what `kmeshctl waypoint` reads) and pprof.
//
// Two listeners, as Istio's proxies have them: the status address (probes
// and metrics, reachable from the node) and the admin address (config
// dump and profiles, loopback only by default: the dump shows every route
// and endpoint).
package admin

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Source is what the endpoints report on.
type Source struct {
	// Ready: a configuration is running and its listeners are open.
	Ready func() bool
	// Snapshot is the running configuration (nil before the first).
	Snapshot func() *model.Snapshot
	// Status adds the configuration source's own fields to /debug/status
	// (xDS session counters, the file's last error).
	Status func() any
}

// StatusHandler serves /ready (and Istio's /healthz/ready) and /metrics.
func StatusHandler(src Source, gather prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	ready := func(w http.ResponseWriter, _ *http.Request) {
		if src.Ready() {
			_, _ = w.Write([]byte("ready\n"))
			return
		}
		http.Error(w, "not ready: no configuration running yet", http.StatusServiceUnavailable)
	}
	mux.HandleFunc("/ready", ready)
	mux.HandleFunc("/healthz/ready", ready)
	mux.Handle("/metrics", promhttp.HandlerFor(gather, promhttp.HandlerOpts{}))
	return mux
}

// AdminHandler serves everything StatusHandler does, plus
// /debug/config_dump, /debug/status and /debug/pprof/.
func AdminHandler(src Source, gather prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", StatusHandler(src, gather))
	mux.HandleFunc("/debug/config_dump", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, model.Dump(src.Snapshot()))
	})
	mux.HandleFunc("/debug/status", func(w http.ResponseWriter, _ *http.Request) {
		var st any
		if src.Status != nil {
			st = src.Status()
		}
		writeJSON(w, map[string]any{"ready": src.Ready(), "source": st})
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
