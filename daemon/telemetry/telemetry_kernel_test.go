package telemetry_test

// Kernel tests (TestKernel*): real programs, real connections between pod
// namespaces, the telemetry reader and sweeps as the daemon runs them. Run
// with KMESH_KERNEL_TESTS=1 as root.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/daemon/telemetry"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

const (
	serverPort = 8080
	vipPort    = 80
)

var vip = netip.MustParseAddr("10.96.0.20")

// node is one node's data path with telemetry running, a client pod and a
// server pod (both enrolled), a service VIP in front of the server, and a
// model that names them.
type node struct {
	t      *testing.T
	cg     *testbed.Cgroup
	dp     *loader.Datapath
	maps   *maps.Maps
	tel    *telemetry.Telemetry
	reg    *prometheus.Registry
	log    *syncBuffer
	client *testbed.Pod
	server *testbed.Pod
	ln     net.Listener
}

// syncBuffer is an access log the test can read while telemetry writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := strings.Split(strings.TrimSpace(s.b.String()), "\n")
	if len(out) == 1 && out[0] == "" {
		return nil
	}
	return out
}

func newNode(t *testing.T, feat loader.Features, interval time.Duration) *node {
	t.Helper()
	return newNodeWith(t, feat, interval, true, true)
}

// newNodeWith: accessLog keeps an access log; run reads the kernel's
// records (without it they pile up in the ring buffer).
func newNodeWith(t *testing.T, feat loader.Features, interval time.Duration, accessLog, run bool) *node {
	t.Helper()
	testbed.Require(t)
	n := &node{t: t, reg: prometheus.NewRegistry(), log: &syncBuffer{}}
	cg := testbed.NewCgroup(t)
	n.cg = cg
	n.dp, _ = testbed.DatapathWith(t, cg, loader.Config{Features: feat})
	m, err := maps.New(n.dp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	n.maps = m
	net := testbed.NewNetwork(t)
	n.client = net.AddPod(t, "client")
	n.server = net.AddPod(t, "server")
	manage := maps.NewManage(n.dp)
	for _, p := range []*testbed.Pod{n.client, n.server} {
		c, err := podns.Cookie(p.NSPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := manage.Enroll(c, maps.Enrollment{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.UpsertBackend(maps.Backend{ID: 7, Addresses: []netip.Addr{n.server.IP4}}); err != nil {
		t.Fatal(err)
	}
	if err := m.UpsertService(maps.Service{ID: 3, VIPs: []netip.Addr{vip},
		Ports: []maps.Port{{Port: vipPort, TargetPort: serverPort}}, Endpoints: [][]uint32{{7}}}); err != nil {
		t.Fatal(err)
	}

	store := model.NewStore()
	store.Apply([]model.Resource{
		{Name: "svc", Service: &model.Service{Key: "demo/echo.demo.svc.cluster.local", Name: "echo", Namespace: "demo",
			Hostname: "echo.demo.svc.cluster.local", VIPs: []netip.Addr{vip}}},
		{Name: "c", Workload: &model.Workload{UID: "c", Name: "sleep-1", Addresses: []netip.Addr{n.client.IP4},
			Shared: model.ShareOf(model.Shared{WorkloadName: "sleep", Namespace: "demo", ServiceAccount: "sleep", CanonicalName: "sleep", CanonicalRevision: "v1"})}},
		{Name: "s", Workload: &model.Workload{UID: "s", Name: "echo-1", Addresses: []netip.Addr{n.server.IP4},
			Shared: model.ShareOf(model.Shared{WorkloadName: "echo", Namespace: "demo", ServiceAccount: "echo", CanonicalName: "echo", CanonicalRevision: "v2"})}},
	}, nil)

	cfg := telemetry.Config{Resolver: telemetry.NewModelResolver(store), Interval: interval, KernelStats: m.Stats,
		// A pod can go between the listing and the sweep: its namespace is
		// skipped, the others still read.
		Namespaces: func() []string { return []string{n.client.NSPath, "/run/netns/kmesh-test-gone", n.server.NSPath} }}
	if accessLog {
		cfg.AccessLog = n.log
	}
	n.tel = telemetry.New(cfg)
	if err := n.tel.Register(n.reg); err != nil {
		t.Fatal(err)
	}
	if run {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- n.tel.Run(ctx, n.dp) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("telemetry: %v", err)
			}
		})
	}

	cg.Join(t)
	n.ln, err = n.server.Listen("tcp", fmt.Sprintf(":%d", serverPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.ln.Close() })
	return n
}

// open makes a connection through the VIP and leaves it open; the test's
// end closes both ends.
func (n *node) open() (client, server net.Conn) {
	n.t.Helper()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := n.ln.Accept()
		if err != nil {
			n.t.Error(err)
			close(acc)
			return
		}
		acc <- c
	}()
	c, err := n.client.Dial("tcp", netip.AddrPortFrom(vip, vipPort).String(), 2*time.Second)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { c.Close() })
	s := <-acc
	if s == nil {
		n.t.FailNow()
	}
	n.t.Cleanup(func() { s.Close() })
	return c, s
}

// exchange makes one connection through the VIP: the client sends req
// bytes and half-closes, the server reads them all, answers with resp
// bytes and closes, the client reads to EOF and closes.
func (n *node) exchange(req, resp int) {
	n.t.Helper()
	acc := make(chan error, 1)
	go func() {
		c, err := n.ln.Accept()
		if err != nil {
			acc <- err
			return
		}
		defer c.Close()
		got, err := io.ReadAll(c)
		if err != nil || len(got) != req {
			acc <- fmt.Errorf("server read %d of %d: %v", len(got), req, err)
			return
		}
		_, err = c.Write(bytes.Repeat([]byte{'r'}, resp))
		acc <- err
	}()
	c, err := n.client.Dial("tcp", netip.AddrPortFrom(vip, vipPort).String(), 2*time.Second)
	if err != nil {
		n.t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(bytes.Repeat([]byte{'q'}, req)); err != nil {
		n.t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || len(got) != resp {
		n.t.Fatalf("client read %d of %d: %v", len(got), resp, err)
	}
	if err := <-acc; err != nil {
		n.t.Fatal(err)
	}
}

// metric reads an Istio counter summed over label sets matching want.
func (n *node) metric(name string, want map[string]string) float64 {
	n.t.Helper()
	mfs, err := n.reg.Gather()
	if err != nil {
		n.t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

func (n *node) waitMetric(name string, want map[string]string, value float64) {
	n.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := n.metric(name, want)
		if got == value {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s%v = %v, want %v", name, want, got, value)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func src() map[string]string { return map[string]string{"reporter": "source"} }
func dst() map[string]string { return map[string]string{"reporter": "destination"} }

func checkExactTotals(t *testing.T, feat loader.Features) {
	n := newNode(t, feat, time.Hour)
	sizes := [][2]int{{1, 1}, {100, 2000}, {65536, 1}, {300000, 123457}, {0, 5}, {7, 0}}
	var req, resp float64
	for _, s := range sizes {
		n.exchange(s[0], s[1])
		req += float64(s[0])
		resp += float64(s[1])
	}
	conns := float64(len(sizes))
	for _, r := range []map[string]string{src(), dst()} {
		n.waitMetric("istio_tcp_connections_closed_total", r, conns)
		n.waitMetric("istio_tcp_connections_opened_total", r, conns)
		n.waitMetric("istio_tcp_received_bytes_total", r, req)
		n.waitMetric("istio_tcp_sent_bytes_total", r, resp)
	}
	// Every connection is labelled with the workloads and the service.
	full := map[string]string{
		"source_workload": "sleep", "source_workload_namespace": "demo", "source_canonical_revision": "v1",
		"source_principal":     "spiffe://cluster.local/ns/demo/sa/sleep",
		"destination_workload": "echo", "destination_canonical_service": "echo", "destination_canonical_revision": "v2",
		"destination_principal": "spiffe://cluster.local/ns/demo/sa/echo",
		"destination_service":   "echo.demo.svc.cluster.local", "destination_service_name": "echo",
		"destination_service_namespace": "demo", "request_protocol": "tcp", "response_flags": "-",
	}
	for _, r := range []string{"source", "destination"} {
		full["reporter"] = r
		if got := n.metric("istio_tcp_connections_closed_total", full); got != conns {
			t.Errorf("%s: closed with full labels %v, want %v", r, got, conns)
		}
	}

	// One access log line per connection end, with the exact bytes.
	var lines []telemetry.Entry
	deadline := time.Now().Add(3 * time.Second)
	for len(lines) < 2*len(sizes) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		lines = lines[:0]
		for _, l := range n.log.lines() {
			var e telemetry.Entry
			if err := json.Unmarshal([]byte(l), &e); err != nil {
				t.Fatalf("access log line %q: %v", l, err)
			}
			lines = append(lines, e)
		}
	}
	if len(lines) != 2*len(sizes) {
		t.Fatalf("%d access log lines for %d connections:\n%s", len(lines), len(sizes), strings.Join(n.log.lines(), "\n"))
	}
	type key struct {
		req, resp uint64
		reporter  telemetry.Reporter
	}
	got := map[key]int{}
	for _, e := range lines {
		got[key{e.RequestBytes, e.ResponseBytes, e.Reporter}]++
		if e.Result != "closed" || e.Source.Workload != "sleep" || e.Destination.Workload != "echo" ||
			e.Service != "echo.demo.svc.cluster.local" || e.Dialled != netip.AddrPortFrom(vip, vipPort).String() ||
			!strings.HasPrefix(e.Destination.Address, n.server.IP4.String()+":") ||
			!strings.HasPrefix(e.Source.Address, n.client.IP4.String()+":") || e.DurationMs <= 0 {
			t.Errorf("access log entry %+v", e)
		}
		if e.Accelerated != feat.SockmapAccel {
			t.Errorf("accelerated = %v in %+v", e.Accelerated, e)
		}
	}
	for _, s := range sizes {
		for _, r := range []telemetry.Reporter{telemetry.ReporterSource, telemetry.ReporterDestination} {
			if k := (key{uint64(s[0]), uint64(s[1]), r}); got[k] != 1 {
				t.Errorf("%s line for %d/%d bytes: %d", r, s[0], s[1], got[k])
			}
		}
	}
}

func TestKernelTelemetryCountsExactly(t *testing.T) {
	checkExactTotals(t, loader.Features{Telemetry: true})
}

// Only the client's record says what it dialled; the daemon gives it to
// the server end on this node (the destination reports the service too),
// and a client whose server is not enrolled leaves nothing waiting once
// its close is pairWait old.
func TestKernelTelemetryDestinationLearnsTheService(t *testing.T) {
	n := newNode(t, loader.Features{Telemetry: true}, time.Hour)
	for range 3 {
		n.exchange(10, 20)
	}
	n.waitMetric("istio_tcp_connections_closed_total", src(), 3)
	n.waitMetric("istio_tcp_connections_closed_total", dst(), 3)
	if got := n.metric("istio_tcp_connections_closed_total", map[string]string{
		"reporter": "destination", "destination_service": "echo.demo.svc.cluster.local"}); got != 3 {
		t.Errorf("destination reports with the service: %v, want 3", got)
	}
	if got := n.tel.PendingDialled(); got != 0 {
		t.Errorf("%d dialled services waiting after connections to an enrolled server, want 0", got)
	}

	cookie, err := podns.Cookie(n.server.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := maps.NewManage(n.dp).Release(cookie); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		n.exchange(10, 20)
	}
	n.waitMetric("istio_tcp_connections_closed_total", src(), 8)
	if got := n.metric("istio_tcp_connections_closed_total", dst()); got != 3 {
		t.Errorf("destination reports %v, want 3 (the server left the mesh)", got)
	}
	// Their clients' entries wait pairWait for a server end, then go.
	deadline := time.Now().Add(5 * time.Second)
	for n.tel.PendingDialled() != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := n.tel.PendingDialled(); got != 0 {
		t.Errorf("%d dialled services left by closed connections to a server out of the mesh, want 0", got)
	}
}

func TestKernelTelemetryCountsExactlyWhenAccelerated(t *testing.T) {
	checkExactTotals(t, loader.Features{Telemetry: true, SockmapAccel: true})
}

// A connection that lives past the interval is reported before it closes.
func TestKernelTelemetryReportsLongLivedConnections(t *testing.T) {
	for _, feat := range []loader.Features{{Telemetry: true}, {Telemetry: true, SockmapAccel: true}} {
		t.Run(fmt.Sprintf("accel=%v", feat.SockmapAccel), func(t *testing.T) {
			n := newNode(t, feat, 300*time.Millisecond)
			c, s := n.open()
			// Both ends are open now, with nothing sent to the daemon yet.
			if got := n.metric("kmesh_tcp_connections_open", nil); got != 2 {
				t.Errorf("open connection ends %v, want 2", got)
			}
			if _, err := c.Write(make([]byte, 12345)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(s, make([]byte, 12345)); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Write(make([]byte, 777)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 777)); err != nil {
				t.Fatal(err)
			}
			// Still open: the periodic sweep reports the bytes.
			n.waitMetric("istio_tcp_received_bytes_total", src(), 12345)
			n.waitMetric("istio_tcp_sent_bytes_total", src(), 777)
			n.waitMetric("istio_tcp_received_bytes_total", dst(), 12345)
			n.waitMetric("istio_tcp_sent_bytes_total", dst(), 777)
			if got := n.metric("istio_tcp_connections_closed_total", nil); got != 0 {
				t.Fatalf("closed %v while the connection is open", got)
			}
			live := n.tel.Connections()
			if len(live) != 2 {
				t.Fatalf("live connections %+v", live)
			}
			for _, e := range live {
				if e.RequestBytes != 12345 || e.ResponseBytes != 777 || e.Result != "" {
					t.Errorf("live entry %+v", e)
				}
			}
			if _, err := c.Write(make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(s, make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			c.Close()
			s.Close()
			for _, r := range []map[string]string{src(), dst()} {
				n.waitMetric("istio_tcp_connections_closed_total", r, 1)
				n.waitMetric("istio_tcp_received_bytes_total", r, 13345)
				n.waitMetric("istio_tcp_sent_bytes_total", r, 777)
			}
			if got := n.metric("kmesh_tcp_connections_open", nil); got != 0 {
				t.Errorf("open connection ends %v after both closed, want 0", got)
			}
		})
	}
}

// An aborted connection: the client resets it (SO_LINGER 0); the client
// end says aborted, the server end reset, with Envoy's flags.
func TestKernelTelemetryAbnormalEnd(t *testing.T) {
	n := newNode(t, loader.Features{Telemetry: true}, time.Hour)
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := n.ln.Accept()
		acc <- c
	}()
	c, err := n.client.Dial("tcp", netip.AddrPortFrom(vip, vipPort).String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	if s == nil {
		t.Fatal("accept failed")
	}
	defer s.Close()
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).SetLinger(0)
	c.Close()
	// The server learns of the reset when it next reads.
	_ = s.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, _ = s.Read(make([]byte, 1))

	n.waitMetric("istio_tcp_connections_closed_total", map[string]string{"reporter": "source", "response_flags": "UC"}, 1)
	n.waitMetric("istio_tcp_connections_closed_total", map[string]string{"reporter": "destination", "response_flags": "DC"}, 1)
	n.waitMetric("istio_tcp_received_bytes_total", src(), 2)
	results := map[telemetry.Reporter]string{}
	deadline := time.Now().Add(3 * time.Second)
	for len(results) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		for _, l := range n.log.lines() {
			var e telemetry.Entry
			_ = json.Unmarshal([]byte(l), &e)
			results[e.Reporter] = e.Result
		}
	}
	if results[telemetry.ReporterSource] != "aborted" || results[telemetry.ReporterDestination] != "reset" {
		t.Errorf("results %v, want the source aborted and the destination reset", results)
	}
}

// Connections that are open send nothing (and a restarted daemon missed
// whatever was sent before it); the first sweep finds them, reading the
// client ends before the server ends, so the destination still learns the
// service its client dialled.
func TestKernelTelemetrySweepPairsEndsAfterRestart(t *testing.T) {
	n := newNodeWith(t, loader.Features{Telemetry: true}, time.Hour, false, false)
	n.open()

	// Open connections send nothing: only a sweep finds them.
	rd, err := ringbuf.NewReader(n.dp.Map(loader.MapEvents))
	if err != nil {
		t.Fatal(err)
	}
	records := 0
	for {
		rd.SetDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := rd.Read(); err != nil {
			break
		}
		records++
	}
	rd.Close()
	if records != 0 {
		t.Fatalf("%d records in the ring for two open ends, want 0", records)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.tel.Run(ctx, n.dp) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("telemetry: %v", err)
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := n.tel.Sweep()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sweep: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	svc := map[string]string{"destination_service": "echo.demo.svc.cluster.local"}
	for _, r := range []string{"source", "destination"} {
		svc["reporter"] = r
		if got := n.metric("istio_tcp_connections_opened_total", svc); got != 1 {
			t.Errorf("%s: opened with the service %v, want 1", r, got)
		}
	}
	if got := n.tel.PendingDialled(); got != 0 {
		t.Errorf("%d dialled services waiting, want 0", got)
	}
}
