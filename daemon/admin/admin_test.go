package admin

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// The status handler is meant for an address other pods reach: readiness
// and metrics only, never the dumps, the pod registry or pprof.
func TestStatusHandlerServesOnlyReadyAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "kmesh_test_total", Help: "test"})
	reg.MustRegister(c)
	ready := false
	srv := httptest.NewServer(StatusHandler(func() bool { return ready }, reg))
	defer srv.Close()
	get := func(path string) int {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get("/ready"); got != http.StatusServiceUnavailable {
		t.Fatalf("/ready before the first state: %d", got)
	}
	ready = true
	for path, want := range map[string]int{
		"/ready":                 http.StatusOK,
		"/metrics":               http.StatusOK,
		"/debug/config_dump":     http.StatusNotFound,
		"/debug/maps":            http.StatusNotFound,
		"/debug/pods":            http.StatusNotFound,
		"/debug/status":          http.StatusNotFound,
		"/debug/accesslog":       http.StatusNotFound,
		"/debug/pprof/":          http.StatusNotFound,
		"/debug/pprof/cmdline":   http.StatusNotFound,
		"/debug/pprof/goroutine": http.StatusNotFound,
	} {
		if got := get(path); got != want {
			t.Errorf("GET %s: %d, want %d", path, got, want)
		}
	}
}

// The admin and status servers close a kept connection left idle: the
// status address is open to the node's network, and Go's server otherwise
// holds an idle connection for ever.
func TestServerClosesIdleConnections(t *testing.T) {
	if s := newServer(http.NotFoundHandler()); s.IdleTimeout <= 0 {
		t.Errorf("idle timeout %v: idle connections are held for ever", s.IdleTimeout)
	}
}
