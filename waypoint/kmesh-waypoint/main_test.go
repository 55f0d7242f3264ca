package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// The binary as a user runs it: an Envoy bootstrap file on loopback,
// connections with a PROXY v2 header, the admin and status endpoints, a
// reload of the file, a bad file that keeps the last good configuration,
// and a drain on SIGTERM.
func TestBinaryWithBootstrapFile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := filepath.Join(t.TempDir(), "kmesh-waypoint")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}

	v1 := backend(t, "v1")
	v2 := backend(t, "v2")
	listen, admin, status := freePort(t), freePort(t), freePort(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "waypoint.yaml")
	write := func(body string) {
		t.Helper()
		// Written beside and renamed over, as editors and ConfigMaps do.
		tmp := cfg + ".tmp"
		if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, cfg); err != nil {
			t.Fatal(err)
		}
	}
	write(bootstrapFile(listen, v1, "v1"))

	cmd := exec.Command(bin, "--config-file", cfg,
		"--admin-address", admin.String(), "--status-address", status.String(), "--drain", "3s")
	// exec copies the process's output on its own goroutine while the
	// test reads it.
	var logs lockedBuilder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("kmesh-waypoint's log:\n%s", logs.String())
		}
	})

	waitFor(t, "ready on the status port", func() bool { return httpCode(t, "http://"+status.String()+"/ready") == 200 })
	if got := request(t, listen, "/"); got != "v1" {
		t.Fatalf("through the waypoint: %q, want v1", got)
	}

	// The admin's dump is what kmeshctl reads.
	var dump model.ConfigDump
	getJSON(t, "http://"+admin.String()+"/debug/config_dump", &dump)
	if len(dump.Listeners) != 1 || len(dump.Clusters) != 1 || dump.Clusters[0].Name != "web" {
		t.Errorf("config dump: %d listeners, clusters %+v", len(dump.Listeners), dump.Clusters)
	}
	if code := httpCode(t, "http://"+status.String()+"/debug/config_dump"); code != 404 {
		t.Errorf("the status port serves the config dump (%d): it must stay on the admin port", code)
	}
	metrics := body(t, "http://"+status.String()+"/metrics")
	if !strings.Contains(metrics, `istio_requests_total{`) || !strings.Contains(metrics, `reporter="waypoint"`) {
		t.Errorf("no istio_requests_total with reporter=waypoint in /metrics")
	}

	// A changed file is applied; a broken one is refused and the last good
	// configuration keeps serving.
	write(bootstrapFile(listen, v2, "v2"))
	waitFor(t, "the reloaded file in effect", func() bool { return request(t, listen, "/") == "v2" })
	write("static_resources: {listeners: [{name: broken, address: {}}]}\n")
	time.Sleep(500 * time.Millisecond)
	if got := request(t, listen, "/"); got != "v2" {
		t.Errorf("after a broken file: %q, want the last good configuration (v2)", got)
	}
	if !strings.Contains(logs.String(), "broken") && !strings.Contains(logs.String(), "invalid") {
		t.Errorf("the broken file is not reported in the log")
	}

	// SIGTERM: the listener closes, the process exits cleanly.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10s of SIGTERM")
	}
}

func bootstrapFile(listen, backend netip.AddrPort, name string) string {
	return fmt.Sprintf(`static_resources:
  listeners:
  - name: waypoint
    address: {socket_address: {address: %s, port_value: %d}}
    listener_filters:
    - name: envoy.filters.listener.proxy_protocol
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol}
    filter_chains:
    - filter_chain_match: {prefix_ranges: [{address_prefix: 10.96.0.10, prefix_len: 32}], destination_port: 80}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          route_config:
            virtual_hosts:
            - {name: web, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: web}}]}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: web
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: web
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: %s, port_value: %d}}}}]}]
# %s
`, listen.Addr(), listen.Port(), backend.Addr(), backend.Port(), name)
}

// request sends one HTTP/1.1 request as the kernel delivers it: a PROXY v2
// header naming the VIP the client dialled, then the request.
func request(t *testing.T, waypoint netip.AddrPort, path string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", waypoint.String(), 2*time.Second)
	if err != nil {
		return "dial: " + err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(10, 244, 0, 9), Port: 40000}, &net.TCPAddr{IP: net.IPv4(10, 96, 0, 10), Port: 80})
	if _, err := h.WriteTo(c); err != nil {
		return "header: " + err.Error()
	}
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "read: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func backend(t *testing.T, name string) netip.AddrPort {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, name) }))
	t.Cleanup(s.Close)
	return netip.MustParseAddrPort(s.Listener.Addr().String())
}

func freePort(t *testing.T) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return netip.MustParseAddrPort(ln.Addr().String())
}

func httpCode(t *testing.T, url string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func body(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(body(t, url)), v); err != nil {
		t.Fatalf("%s: %v", url, err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// lockedBuilder is a strings.Builder safe for a writer and a reader at once.
type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
