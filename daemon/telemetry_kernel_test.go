package main

// Kernel tests of telemetry and acceleration through the whole daemon:
// flags, /metrics, the access log file, /debug/connections, kmeshctl, and a
// daemon restart under an accelerated stream.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"golang.org/x/sys/unix"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/daemon/xds"
	"github.com/kmesh-go/kmesh/daemon/xds/xdstest"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// telFixture: a client pod and a server pod, both enrolled through the
// daemon and both known to istiod (the fake), a service in front of the
// server, and a listener in the server pod inside the data path's cgroup.
type telFixture struct {
	t         *testing.T
	cg        *testbed.Cgroup
	pins      string
	network   *testbed.Network
	xds       *xdstest.Server
	client    *testbed.Pod
	server    *testbed.Pod
	d         *daemon
	ln        net.Listener
	accessLog string
}

func newTelFixture(t *testing.T, extra ...string) *telFixture {
	testbed.Require(t)
	f := &telFixture{t: t}
	f.cg = testbed.NewCgroup(t)
	f.pins = testbed.PinDir(t)
	f.network = testbed.NewNetwork(t)
	f.client = f.network.AddPod(t, "client")
	f.server = f.network.AddPod(t, "server")
	x, err := xdstest.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Stop)
	f.xds = x
	res := map[string]types.Resource{}
	n, svc := xdstest.Service("default", "web", []string{"10.96.0.10"}, map[uint32]uint32{80: 8080})
	res[n] = svc
	canon := func(name, rev string) func(*workloadapi.Workload) {
		return func(w *workloadapi.Workload) {
			w.CanonicalName, w.CanonicalRevision, w.WorkloadName, w.ServiceAccount = name, rev, name, name
		}
	}
	n, w := xdstest.Workload("uid-server", "default", "web-0", []string{f.server.IP4.String()}, []string{webKey}, canon("web", "v2"))
	res[n] = w
	n, w = xdstest.Workload("uid-client", "default", "sleep-0", []string{f.client.IP4.String()}, nil, canon("sleep", "v1"))
	res[n] = w
	if err := x.Set(xds.TypeAddress, res); err != nil {
		t.Fatal(err)
	}
	f.accessLog = filepath.Join(t.TempDir(), "access.log")
	args := append([]string{"--xds-address", x.Addr, "--xds-plaintext", "--access-log", f.accessLog}, extra...)
	f.d = startDaemon(t, f.cg, f.pins, args...)
	f.d.waitReady(10 * time.Second)
	f.cg.Join(t)
	f.d.enroll(f.client, "client-sandbox")
	f.d.enroll(f.server, "server-sandbox")
	f.ln, err = f.server.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.ln.Close() })
	return f
}

// pair connects the client to the service and returns both ends.
func (f *telFixture) pair() (c, s *net.TCPConn) {
	f.t.Helper()
	acc := make(chan net.Conn, 1)
	go func() {
		s, err := f.ln.Accept()
		if err != nil {
			f.t.Error(err)
		}
		acc <- s
	}()
	conn, err := f.client.Dial("tcp", "10.96.0.10:80", 2*time.Second)
	if err != nil {
		f.t.Fatal(err)
	}
	sc := <-acc
	if sc == nil {
		f.t.FailNow()
	}
	f.t.Cleanup(func() { conn.Close(); sc.Close() })
	return conn.(*net.TCPConn), sc.(*net.TCPConn)
}

// exchange: req bytes up, half-close, resp bytes down, close.
func (f *telFixture) exchange(req, resp int) {
	f.t.Helper()
	c, s := f.pair()
	done := make(chan error, 1)
	go func() {
		got, err := io.ReadAll(s)
		if err == nil && len(got) != req {
			err = fmt.Errorf("server got %d of %d", len(got), req)
		}
		if err == nil {
			_, err = s.Write(bytes.Repeat([]byte{1}, resp))
		}
		s.Close()
		done <- err
	}()
	if _, err := c.Write(bytes.Repeat([]byte{2}, req)); err != nil {
		f.t.Fatal(err)
	}
	_ = c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || len(got) != resp {
		f.t.Fatalf("client got %d of %d: %v", len(got), resp, err)
	}
	c.Close()
	if err := <-done; err != nil {
		f.t.Fatal(err)
	}
}

func (f *telFixture) waitMetric(value float64, name string, want ...string) {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := f.d.metric(f.t, name, want...)
		if got == value {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("%s%v = %v, want %v", name, want, got, value)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (f *telFixture) ctl(args ...string) string {
	f.t.Helper()
	out, err := exec.Command(ctlBin.get(f.t), append([]string{"-admin", f.d.admin}, args...)...).CombinedOutput()
	if err != nil {
		f.t.Fatalf("kmeshctl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func TestKernelDaemonTelemetryAndAccessLog(t *testing.T) {
	f := newTelFixture(t, "--telemetry-interval", "300ms", "--sockmap-accel")

	// kmeshctl logs -f follows the stream from before the first connection.
	follow := exec.Command(ctlBin.get(t), "-admin", f.d.admin, "logs", "-f", "-o", "json")
	stdout, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = follow.Process.Kill(); _ = follow.Wait() })
	followed := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			followed <- sc.Text()
		}
		close(followed)
	}()
	time.Sleep(300 * time.Millisecond) // the follower is connected

	sizes := [][2]int{{10, 20}, {70000, 3}, {1, 250000}}
	var req, resp float64
	for _, s := range sizes {
		f.exchange(s[0], s[1])
		req += float64(s[0])
		resp += float64(s[1])
	}
	labels := []string{`destination_service="web.default.svc.cluster.local"`, `destination_workload="web"`,
		`destination_canonical_revision="v2"`, `source_workload="sleep"`, `source_canonical_revision="v1"`,
		`source_principal="spiffe://cluster.local/ns/default/sa/sleep"`, `request_protocol="tcp"`, `response_flags="-"`}
	for _, r := range []string{`reporter="source"`, `reporter="destination"`} {
		l := append([]string{r}, labels...)
		f.waitMetric(float64(len(sizes)), "istio_tcp_connections_closed_total", l...)
		f.waitMetric(float64(len(sizes)), "istio_tcp_connections_opened_total", l...)
		f.waitMetric(req, "istio_tcp_received_bytes_total", l...)
		f.waitMetric(resp, "istio_tcp_sent_bytes_total", l...)
	}
	if v := f.d.metric(f.t, "kmesh_tcp_connection_duration_seconds_count", `reporter="source"`); v != float64(len(sizes)) {
		t.Errorf("duration histogram count %v", v)
	}

	// The access log file: one line per connection end, exact bytes.
	checkLines := func(what string, lines []string) {
		t.Helper()
		if len(lines) != 2*len(sizes) {
			t.Fatalf("%s: %d lines, want %d:\n%s", what, len(lines), 2*len(sizes), strings.Join(lines, "\n"))
		}
		seen := map[string]int{}
		for _, l := range lines {
			var e struct {
				Reporter      string `json:"reporter"`
				RequestBytes  int    `json:"request_bytes"`
				ResponseBytes int    `json:"response_bytes"`
				Service       string `json:"service"`
				Result        string `json:"result"`
				Accelerated   bool   `json:"accelerated"`
			}
			if err := json.Unmarshal([]byte(l), &e); err != nil {
				t.Fatalf("%s: line %q: %v", what, l, err)
			}
			if e.Service != "web.default.svc.cluster.local" || e.Result != "closed" || !e.Accelerated {
				t.Errorf("%s: line %s", what, l)
			}
			seen[fmt.Sprintf("%s %d %d", e.Reporter, e.RequestBytes, e.ResponseBytes)]++
		}
		for _, s := range sizes {
			for _, r := range []string{"source", "destination"} {
				if k := fmt.Sprintf("%s %d %d", r, s[0], s[1]); seen[k] != 1 {
					t.Errorf("%s: %q seen %d times", what, k, seen[k])
				}
			}
		}
	}
	var fileLines []string
	deadline := time.Now().Add(5 * time.Second)
	for len(fileLines) < 2*len(sizes) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		b, _ := os.ReadFile(f.accessLog)
		fileLines = strings.Split(strings.TrimSpace(string(b)), "\n")
	}
	checkLines("access log file", fileLines)
	var streamed []string
	for len(streamed) < 2*len(sizes) {
		select {
		case l := <-followed:
			streamed = append(streamed, l)
		case <-time.After(5 * time.Second):
			t.Fatalf("kmeshctl logs -f printed %d lines", len(streamed))
		}
	}
	checkLines("kmeshctl logs -f", streamed)
	if out := f.ctl("logs"); strings.Count(out, "sleep") != 2*len(sizes) || !strings.Contains(out, "accelerated") {
		t.Errorf("kmeshctl logs:\n%s", out)
	}

	// A connection that stays open is reported by the sweep and listed live.
	c, s := f.pair()
	if _, err := c.Write(make([]byte, 4321)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s, make([]byte, 4321)); err != nil {
		t.Fatal(err)
	}
	f.waitMetric(req+4321, "istio_tcp_received_bytes_total", `reporter="source"`)
	out := f.ctl("connections")
	if !strings.Contains(out, "default/sleep") || !strings.Contains(out, "default/web") || !strings.Contains(out, "4.2KiB") {
		t.Errorf("kmeshctl connections:\n%s", out)
	}
	if out := f.ctl("top", "-n", "1"); !strings.Contains(out, "2 open connection ends") {
		t.Errorf("kmeshctl top:\n%s", out)
	}
}

// SIGKILL and restart the daemon while an accelerated connection streams:
// the stream goes on byte-exact, and new connections are accelerated.
func TestKernelDaemonRestartKeepsAcceleratedStream(t *testing.T) {
	f := newTelFixture(t, "--sockmap-accel")
	c, s := f.pair()
	sent := testbed.StreamAcross(t, c, s, 16384, func() {
		for range 2 {
			time.Sleep(300 * time.Millisecond)
			f.d.stop(syscall.SIGKILL)
			time.Sleep(200 * time.Millisecond)
			f.d.start()
			f.d.waitReady(10 * time.Second)
		}
		time.Sleep(200 * time.Millisecond)
	})
	t.Logf("%d MiB streamed across 2 SIGKILL restarts", sent>>20)
	if v := f.d.metric(f.t, "kmesh_datapath_events_total", `event="msg_redirect"`); v == 0 {
		t.Error("nothing was redirected")
	}
	before := f.d.metric(f.t, "kmesh_datapath_events_total", `event="msg_redirect"`)
	f.exchange(100, 100)
	if after := f.d.metric(f.t, "kmesh_datapath_events_total", `event="msg_redirect"`); after <= before {
		t.Error("a connection after the restarts was not accelerated")
	}
}

// Accelerated data passes no veth, so the tc authorization never sees it;
// but a new DENY still ends an accelerated connection (the enforcer
// destroys the server's socket, which is a TCP socket like any other), and
// new connections are refused at connect().
func TestKernelDaemonDenyResetsAcceleratedConnection(t *testing.T) {
	f := newTelFixture(t, "--sockmap-accel")
	err := podns.Do(testbed.NSPath(f.network.Node), func() error {
		ifc, err := net.InterfaceByName(f.server.HostVeth)
		if err != nil {
			return err
		}
		return loader.AttachPodTC(f.pins, loader.PodTCKey("server-sandbox", f.server.HostVeth), ifc.Index)
	})
	if err != nil {
		t.Fatal(err)
	}
	c, s := f.pair()
	before := f.d.metric(f.t, "kmesh_datapath_events_total", `event="msg_redirect"`)
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	if f.d.metric(f.t, "kmesh_datapath_events_total", `event="msg_redirect"`) == before {
		t.Fatal("the connection is not accelerated")
	}

	// The client (namespace default) may no longer reach the server.
	pn, p := denyNamespace("deny-default", "default", false)
	if err := f.xds.Set(xds.TypeAuthorization, map[string]types.Resource{pn: p}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("accelerated connection after the DENY: %v, want a reset", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := f.client.Dial("tcp", "10.96.0.10:80", time.Second)
		if errors.Is(err, unix.EACCES) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new connection after the DENY: %v, want EACCES", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
