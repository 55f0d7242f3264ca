package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/admin"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/internal/unixsock"
	wpmodel "github.com/kmesh-go/kmesh/waypoint/model"
)

// fakeDaemon answers the daemon's admin paths kmeshctl reads with the
// admin API's own types.
func fakeDaemon(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v any
		switch r.URL.Path {
		case "/debug/status":
			v = admin.Status{Ready: true, Node: "node-a", Source: "file:/etc/kmesh/mesh.json"}
		case "/debug/config_dump":
			v = admin.ConfigDump{Node: model.Node{Name: "node-a"}, Services: []admin.ServiceDump{
				{Service: &model.Service{Key: "default/web.default.svc.cluster.local", Name: "web"}, ID: 1}}}
		case "/debug/connections":
			v = []admin.Connection{}
		case "/metrics":
			_, _ = w.Write([]byte("# HELP x y\nx 1\n"))
			return
		default:
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// cli runs kmeshctl's command line and returns its exit code and output.
func cli(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := runCLI(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// Flags may come after the command, in every spelling the flag package
// knows, and an unknown or bad flag is a usage error (exit 2) wherever it
// is.
func TestFlagsAnywhere(t *testing.T) {
	srv := fakeDaemon(t)
	addr := strings.TrimPrefix(srv.URL, "http://")
	t.Setenv("KMESH_ADMIN", addr)

	code, out, errOut := cli("dump", "services", "-o=json")
	var svcs []admin.ServiceDump
	if code != 0 || json.Unmarshal([]byte(out), &svcs) != nil || len(svcs) != 1 {
		t.Errorf("dump services -o=json: exit %d, %q %s", code, out, errOut)
	}
	// -admin after the command points kmeshctl at that address.
	t.Setenv("KMESH_ADMIN", "127.0.0.1:1")
	for _, args := range [][]string{{"status", "-admin", addr}, {"status", "--admin=" + addr}, {"-o", "json", "status", "-admin", addr}} {
		if code, out, errOut := cli(args...); code != 0 || !strings.Contains(out, "node-a") {
			t.Errorf("%v: exit %d, %q %s", args, code, out, errOut)
		}
	}
	if code, out, _ := cli("top", "-admin", addr, "-n=1", "-interval", "10ms"); code != 0 || !strings.Contains(out, "0 open connection ends") {
		t.Errorf("top -n=1: exit %d, %q", code, out)
	}
	for _, args := range [][]string{{"status", "-x"}, {"top", "-n", "abc"}, {"top", "-n", "-1"}, {"top", "-interval", "0s"}, {"bogus"}, {"dump"}, {}} {
		if code, _, errOut := cli(args...); code != 2 || errOut == "" {
			t.Errorf("%v: exit %d, stderr %q; want a usage error, exit 2", args, code, errOut)
		}
	}
	if code, _, errOut := cli("-h"); code != 0 || !strings.Contains(errOut, "usage: kmeshctl") {
		t.Errorf("-h: exit %d, %q", code, errOut)
	}
	// An unreachable admin is a failure, exit 1.
	if code, _, errOut := cli("status"); code != 1 || !strings.Contains(errOut, "is kmesh-daemon running?") {
		t.Errorf("unreachable: exit %d, %q", code, errOut)
	}
}

// -o takes table or json, and json only where there is JSON to print: a
// script asking for JSON must not get a table or Prometheus text with exit
// 0.
func TestOutputFormat(t *testing.T) {
	srv := fakeDaemon(t)
	t.Setenv("KMESH_ADMIN", strings.TrimPrefix(srv.URL, "http://"))
	for _, args := range [][]string{{"-o", "yaml", "status"}, {"status", "-o", "wide"}, {"metrics", "-o", "json"}, {"-o", "json", "top", "-n", "1"}} {
		code, out, errOut := cli(args...)
		if code != 2 || out != "" || !strings.Contains(errOut, "-o") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want a usage error naming -o, exit 2", args, code, out, errOut)
		}
	}
	for _, args := range [][]string{{"-o", "table", "status"}, {"-o", "json", "status"}, {"metrics"}, {"top", "-n", "1"}} {
		if code, _, errOut := cli(args...); code != 0 {
			t.Errorf("%v: exit %d: %s", args, code, errOut)
		}
	}
}

// Both kmesh-daemon and kmesh-waypoint serve /debug/config_dump; pointed
// at the wrong one, kmeshctl must say so instead of printing an empty
// table with exit 0. An answer that is not JSON names the server too.
func TestWrongServer(t *testing.T) {
	daemon := fakeDaemon(t)
	waypoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/debug/config_dump":
			_ = json.NewEncoder(w).Encode(wpmodel.ConfigDump{Version: "file:1", Listeners: []wpmodel.ListenerDump{{Name: "waypoint"}}})
		case "/debug/status":
			_ = json.NewEncoder(w).Encode(map[string]any{"ready": true, "source": map[string]any{"version": "x"}})
		default:
			http.NotFound(w, r)
		}
	}))
	defer waypoint.Close()
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte("<html>hello</html>"))
	}))
	defer web.Close()

	for _, what := range []string{"services", "workloads", "policies"} {
		err := client{base: waypoint.URL, out: &bytes.Buffer{}}.dump(what)
		if err == nil || !strings.Contains(err.Error(), "kmesh-daemon") {
			t.Errorf("dump %s from a waypoint: %v", what, err)
		}
	}
	for _, view := range waypointViews {
		err := client{base: daemon.URL, server: "kmesh-waypoint", out: &bytes.Buffer{}}.waypoint(view)
		if err == nil || !strings.Contains(err.Error(), "kmesh-waypoint") {
			t.Errorf("waypoint %s from a daemon: %v", view, err)
		}
	}
	if err := (client{base: waypoint.URL, out: &bytes.Buffer{}}).status(); err == nil || !strings.Contains(err.Error(), "kmesh-daemon") {
		t.Errorf("status from a waypoint: %v", err)
	}
	if err := (client{base: web.URL, out: &bytes.Buffer{}}).status(); err == nil || !strings.Contains(err.Error(), "not JSON") {
		t.Errorf("status from a web page: %v", err)
	}
	// The right servers still work.
	if err := (client{base: daemon.URL, out: &bytes.Buffer{}}).dump("services"); err != nil {
		t.Error(err)
	}
	if err := (client{base: waypoint.URL, server: "kmesh-waypoint", out: &bytes.Buffer{}}).waypoint("listeners"); err != nil {
		t.Error(err)
	}
}

// A dump with entries missing their object (a null policy, a service with
// only its id: another version's or another server's answer) is reported,
// not a nil-pointer panic.
func TestDumpWithNullEntries(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"node":{},"services":[{"id":1}],"workloads":[{"id":2}],"policies":[null]}`))
	}))
	defer srv.Close()
	for _, what := range []string{"services", "workloads", "policies"} {
		var out bytes.Buffer
		err := client{base: srv.URL, out: &out}.dump(what)
		if err == nil || !strings.Contains(err.Error(), "without") {
			t.Errorf("dump %s: %v\n%s", what, err, out.String())
		}
	}
}

// The daemon's tables write "-" for an empty cell, so a row keeps its
// columns: a kernel service or backend without a waypoint, a workload with
// no node, a pod with no sandbox, IPs or reason.
func TestDaemonEmptyCells(t *testing.T) {
	fields := func(table, first string) int {
		for _, l := range strings.Split(table, "\n") {
			if f := strings.Fields(l); len(f) > 0 && f[0] == first {
				return len(f)
			}
		}
		t.Fatalf("no row %q in\n%s", first, table)
		return 0
	}
	var out bytes.Buffer
	c := client{out: &out}
	m := admin.MapDump{Services: []maps.Service{{ID: 7, Endpoints: [][]uint32{{1}}}}, Backends: []maps.Backend{{ID: 9}}}
	if err := c.showMaps(&m); err != nil {
		t.Fatal(err)
	}
	if fields(out.String(), "7") != 5 || fields(out.String(), "9") != 4 {
		t.Errorf("maps:\n%s", out.String())
	}
	out.Reset()
	if err := c.showPods(admin.Pods{{Name: "p", Namespace: "ns"}}); err != nil {
		t.Fatal(err)
	}
	if fields(out.String(), "ns/p") != 5 {
		t.Errorf("pods:\n%s", out.String())
	}
	out.Reset()
	d := admin.ConfigDump{Workloads: []admin.WorkloadDump{{Workload: &model.Workload{Name: "w", Shared: model.ShareOf(model.Shared{Namespace: "ns"})}, ID: 3}}}
	if err := c.showConfig(&d, "workloads"); err != nil {
		t.Fatal(err)
	}
	if fields(out.String(), "ns/w") != 5 {
		t.Errorf("workloads:\n%s", out.String())
	}
}

// -admin takes host:port, and also the admin's URL as curl and a browser
// take it (httptest's srv.URL is one).
func TestAdminAsURL(t *testing.T) {
	srv := fakeDaemon(t)
	for _, addr := range []string{srv.URL, srv.URL + "/", strings.TrimPrefix(srv.URL, "http://")} {
		if code, out, errOut := cli("-admin", addr, "status"); code != 0 || !strings.Contains(out, "node-a") {
			t.Errorf("-admin %s: exit %d, %q %s", addr, code, out, errOut)
		}
	}
	t.Setenv("KMESH_WAYPOINT_ADMIN", srv.URL)
	if code, _, errOut := cli("waypoint", "listeners"); code != 1 || !strings.Contains(errOut, `without "listeners"`) {
		t.Errorf("KMESH_WAYPOINT_ADMIN as a URL: exit %d, %s", code, errOut)
	}
	if code, _, errOut := cli("-admin", "https://"+strings.TrimPrefix(srv.URL, "http://"), "status"); code != 2 || !strings.Contains(errOut, "-admin") {
		t.Errorf("-admin https://: exit %d, %s; want a usage error", code, errOut)
	}
}

// A daemon with nothing of a kind writes null for it (a nil slice);
// -o json prints a list view as a list either way, so jq '.[]' and a
// script's len() work on an empty mesh.
func TestJSONEmptyListIsArray(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/debug/config_dump":
			_, _ = w.Write([]byte(`{"node":{},"services":null,"workloads":null,"policies":null}`))
		case "/debug/pods", "/debug/connections":
			_, _ = w.Write([]byte(`null`))
		}
	}))
	defer srv.Close()
	c := client{base: srv.URL, json: true}
	for _, what := range []string{"services", "workloads", "policies", "pods"} {
		var out bytes.Buffer
		c.out = &out
		if err := c.dump(what); err != nil || strings.TrimSpace(out.String()) != "[]" {
			t.Errorf("dump %s -o json: %q %v, want []", what, out.String(), err)
		}
	}
	var out bytes.Buffer
	c.out = &out
	if err := c.showConnections(); err != nil || strings.TrimSpace(out.String()) != "[]" {
		t.Errorf("connections -o json: %q %v, want []", out.String(), err)
	}
}

// -admin unix:/path (and KMESH_ADMIN) reach the daemon's admin socket,
// for every command, logs included; a daemon that is not there is named.
func TestAdminOverUnixSocket(t *testing.T) {
	tcp := fakeDaemon(t)
	path := filepath.Join(t.TempDir(), "admin.sock")
	l, err := unixsock.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: l, Config: &http.Server{Handler: tcp.Config.Handler}}
	srv.Start()
	t.Cleanup(srv.Close)
	if code, out, errOut := cli("-admin", "unix:"+path, "status"); code != 0 || !strings.Contains(out, "node-a") {
		t.Errorf("-admin unix:%s status: exit %d, %q %s", path, code, out, errOut)
	}
	t.Setenv("KMESH_ADMIN", "unix:"+path)
	for _, args := range [][]string{{"dump", "services"}, {"metrics"}, {"connections"}} {
		if code, _, errOut := cli(args...); code != 0 {
			t.Errorf("KMESH_ADMIN=unix:%s %v: exit %d, %s", path, args, code, errOut)
		}
	}
	gone := filepath.Join(t.TempDir(), "none.sock")
	if code, _, errOut := cli("-admin", "unix:"+gone, "status"); code != 1 || !strings.Contains(errOut, gone) && !strings.Contains(errOut, "kmesh-daemon") {
		t.Errorf("no daemon at the socket: exit %d, %s", code, errOut)
	}
}

// With no -admin and no daemon socket (not there, or not root: the
// socket's folder is root's), kmeshctl asks the old loopback port, which
// on a DaemonSet node is the status address (/ready and /metrics only).
// Its 404, or a refused connection, must say the socket was not used.
func TestDefaultAdminFallbackNamesTheSocket(t *testing.T) {
	status := httptest.NewServer(admin.StatusHandler(func() bool { return true }, prometheus.NewRegistry()))
	t.Cleanup(status.Close)
	sock, legacy := daemonSocket, legacyDaemonAdmin
	t.Cleanup(func() { daemonSocket, legacyDaemonAdmin = sock, legacy })
	daemonSocket = filepath.Join(t.TempDir(), "admin.sock")
	legacyDaemonAdmin = strings.TrimPrefix(status.URL, "http://")
	t.Setenv("KMESH_ADMIN", "")
	for _, args := range [][]string{{"status"}, {"logs"}} {
		code, _, errOut := cli(args...)
		if code != 1 || !strings.Contains(errOut, daemonSocket) {
			t.Errorf("%v against the status address: exit %d, %q; want the socket %s named", args, code, errOut, daemonSocket)
		}
	}
	status.Close()
	if code, _, errOut := cli("status"); code != 1 || !strings.Contains(errOut, daemonSocket) {
		t.Errorf("no daemon: exit %d, %q; want the socket %s named", code, errOut, daemonSocket)
	}
	// Asked for by name, the address is the whole story.
	if code, _, errOut := cli("-admin", legacyDaemonAdmin, "status"); code != 1 || strings.Contains(errOut, daemonSocket) {
		t.Errorf("-admin given: exit %d, %q", code, errOut)
	}
}

// Every request over the admin socket reuses one connection: top asks
// every interval until ^C, and a connection per round would stay open,
// idle, on both sides until the daemon's idle timeout.
func TestAdminSocketReusesTheConnection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.sock")
	l, err := unixsock.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	conns := 0
	srv := &httptest.Server{Listener: l, Config: &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("{}")) }),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				mu.Lock()
				conns++
				mu.Unlock()
			}
		},
	}}
	srv.Start()
	t.Cleanup(srv.Close)
	c := client{base: "http://localhost", sock: path, out: &bytes.Buffer{}}
	for range 5 {
		if _, err := c.get("/debug/status"); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if conns != 1 {
		t.Errorf("5 requests opened %d connections to the admin socket, want 1", conns)
	}
}
