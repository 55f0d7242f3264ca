package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// Serve on "unix:/path" listens on a socket only root can open, and
// serves the API there; the socket goes when the server stops.
func TestServeOnAUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "admin.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, "unix:"+path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	}()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
	var resp *http.Response
	var err error
	for i := 0; i < 100; i++ {
		if resp, err = c.Get("http://admin/ready"); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Fatalf("body %q", b)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v, want mode 0600", fi, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after the server stopped: %v", err)
	}
}

// A bad --admin-address or --status-address is refused at start with the
// form it should take; a path without "unix:" was taken for host:port and
// failed only once the daemon's programs were attached.
func TestCheckAddress(t *testing.T) {
	for _, ok := range []string{"unix:/var/run/kmesh/admin.sock", "127.0.0.1:15200", ":15020", "[::1]:0", "localhost:80"} {
		if err := CheckAddress(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for bad, want := range map[string]string{
		"/var/run/kmesh/admin.sock": "unix:/var/run/kmesh/admin.sock",
		"unix:admin.sock":           "absolute path",
		"":                          "host:port",
		"unix:":                     "host:port",
		"127.0.0.1":                 "host:port",
		"127.0.0.1:":                "host:port",
		"127.0.0.1:http-alt":        "port number",
		"127.0.0.1:70000":           "port number",
	} {
		err := CheckAddress(bad)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error saying %q", bad, err, want)
		}
	}
}
