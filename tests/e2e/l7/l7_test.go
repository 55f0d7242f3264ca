// Package l7 runs the L7 path end to end against the real istiod and
// kube-apiserver, with real traffic: a node in a box (package cluster:
// kmesh-daemon on istiod's TLS xDS, pods made by the real CNI chain and
// enrolled by kmesh-cni from their namespace's label), a waypoint Gateway
// whose Pod is a real pod of the box running the kmesh-waypoint binary on
// istiod's TLS xDS with a token of its ServiceAccount, backends as
// in-process HTTP and gRPC servers in their pods, and an enrolled client
// pod whose connections to the services' VIPs (and to a pod's IP) the
// kernel sends to the waypoint with a PROXY v2 header.
//
// Run with KMESH_E2E=1 as root (see tests/e2e/README.md).
package l7

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kmesh-go/kmesh/internal/enrollment"
	"github.com/kmesh-go/kmesh/tests/e2e/cluster"
	"github.com/kmesh-go/kmesh/tests/e2e/controlplane"
	"github.com/kmesh-go/kmesh/tests/nodebox"
	"github.com/kmesh-go/kmesh/waypoint/model"
	wpxds "github.com/kmesh-go/kmesh/waypoint/xds"
)

const (
	ns          = "l7"        // the waypoint, the services and their pods
	clientNS    = "l7-client" // the client
	gwName      = "waypoint"
	useWaypoint = "istio.io/use-waypoint"
	httpPort    = 8080
	grpcPort    = 9090
	// The waypoint's ports in its pod: where the kernel sends (the
	// daemon's --waypoint-port), admin on loopback, status.
	waypointPort = 15019
	adminAddr    = "127.0.0.1:15000"
	statusPort   = 15021
)

var theWaypoint = cluster.Waypoint{Namespace: ns, Name: gwName, ServiceAccount: "waypoint", VIP: "10.96.20.2"}

func host(svc string) string { return svc + "." + ns + ".svc.cluster.local" }

// suite is the running system the scenarios share.
type suite struct {
	*cluster.Cluster
	wpPod    *cluster.Pod
	waypoint *nodebox.Proc
	// accessLog is the waypoint's access log file.
	accessLog string
	client    *cluster.Pod
	backends  map[string]*cluster.Pod
	flaky     *flakyServer
	// softnetAtStart is softnetDropped() when the scenarios began, and
	// linksAtStart the node's, the client's and the waypoint's link
	// counters (linkDrops).
	softnetAtStart int64
	linksAtStart   [3]map[string][4]int64
	// stealAtStart is stealTicks() then.
	stealAtStart int64
}

func TestWaypointTraffic(t *testing.T) {
	if os.Getenv("KMESH_E2E") != "1" {
		t.Skip("end-to-end test: set KMESH_E2E=1 (needs root, etcd and tests/e2e/tools/build.sh)")
	}
	began := time.Now()
	s := &suite{Cluster: cluster.Start(t, cluster.Options{Prefix: "kml7", GatewayAPI: true}),
		backends: map[string]*cluster.Pod{}}
	s.startWaypoint(t)
	s.startWorkloads(t)
	t.Logf("set up in %s", time.Since(began).Round(time.Millisecond))
	s.softnetAtStart, s.stealAtStart = softnetDropped(), stealTicks()
	for i, p := range []string{s.Box.NodeNSPath, s.client.NSPath, s.wpPod.NSPath} {
		s.linksAtStart[i], _ = linkDrops(p)
	}

	steps := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"WaypointResolved", s.testWaypointResolved},
		{"HTTPRouteSplit", s.testSplit},
		{"H2CRoutedLikeHTTP1", s.testH2C},
		{"GRPCMethodRoute", s.testGRPC},
		{"RetryTurnsFailuresIntoSuccess", s.testRetry},
		{"OutlierDetectionEjectsBrokenPod", s.testOutlier},
		{"StickySessionCookie", s.testSticky},
		{"FaultAbortAndDelay", s.testFaults},
		{"MetricsAndAccessLog", s.testMetrics},
		{"PodAddressedDirectlyNoLoop", s.testDirect},
		{"RouteChangeUnderLoad", s.testRouteChange},
		{"AuthorizationPolicyFailsClosed", s.testAuthorization},
	}
	for _, st := range steps {
		start := time.Now()
		ok := t.Run(st.name, st.fn)
		t.Logf("%s: %s in %s", st.name, map[bool]string{true: "passed", false: "FAILED"}[ok], time.Since(start).Round(time.Millisecond))
	}
	t.Logf("suite ran in %s; %d requests took over a second (the fault delay is 200 ms)", time.Since(began).Round(time.Millisecond), slowRequests.Load())
	// Packets lost under the suite, by whoever: a lost SYN is a request
	// that waits a second or more for TCP's retransmit.
	t.Logf("during the scenarios the machine's CPU backlogs (netdev_max_backlog) dropped %d packets; the box's links dropped: node: %s; client: %s; waypoint: %s",
		softnetDropped()-s.softnetAtStart, linkDropsSince(s.Box.NodeNSPath, s.linksAtStart[0]),
		linkDropsSince(s.client.NSPath, s.linksAtStart[1]), linkDropsSince(s.wpPod.NSPath, s.linksAtStart[2]))
	// The pods' namespaces are the suite's own: their counters are this
	// run's. TCPSynRetrans counts SYNs in the client's and SYN-ACKs in the
	// waypoint's.
	t.Logf("TCP counters at the end, client pod: %s\nwaypoint pod: %s\nthe hypervisor took %d ms of CPU (steal) during the scenarios",
		tcpCounters(s.client.Do), tcpCounters(s.wpPod.Do), (stealTicks()-s.stealAtStart)*10)
	slowMu.Lock()
	for _, l := range slowLog {
		t.Logf("slow request: %s", l)
	}
	slowMu.Unlock()
}

// startWaypoint does what istiod's deployment controller, the scheduler
// and the kubelet would for the waypoint Gateway: its ServiceAccount,
// Gateway and Service, then a pod of the box (CNI chain, enrolled: its
// namespace is labelled) running kmesh-waypoint, and the Service's
// EndpointSlice.
func (s *suite) startWaypoint(t *testing.T) {
	inMesh := map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh}
	s.Namespace(t, ns, inMesh)
	s.Namespace(t, clientNS, inMesh)
	if err := theWaypoint.Create(s.Ctx, s.K8s, s.Dyn); err != nil {
		t.Fatal(err)
	}
	s.wpPod = s.AddPod(t, ns, "waypoint-0", cluster.PodOpts{Labels: theWaypoint.PodLabels(), ServiceAccount: theWaypoint.ServiceAccount,
		Ports: []corev1.ContainerPort{{ContainerPort: waypointPort}, {ContainerPort: statusPort}}})
	if err := theWaypoint.WriteEndpointSlice(s.Ctx, s.K8s, map[string]string{s.wpPod.Name: s.wpPod.IP.String()}, cluster.NodeName); err != nil {
		t.Fatal(err)
	}

	// The pod's projected token for its ServiceAccount, and istiod's root
	// cert; istiod is reached through a "Service" on the node (the pods
	// have no route to the node's loopback, where it listens).
	token := filepath.Join(s.Box.Dir, "waypoint-token")
	if err := s.WriteToken(ns, theWaypoint.ServiceAccount, token); err != nil {
		t.Fatal(err)
	}
	istiod := s.forwardIstiod(t)
	s.accessLog = filepath.Join(s.Box.Dir, "waypoint-access.log")
	var err error
	s.waypoint, err = s.Box.Start(nodebox.ProcSpec{Name: "waypoint", Pod: s.wpPod.Pod, InCgroup: true, Argv: []string{
		s.Bins.Waypoint,
		"--xds-address", istiod,
		"--xds-root-cert", s.RootCertFile,
		"--xds-token-file", token,
		"--xds-server-name", controlplane.IstiodServerName,
		"--pod-ip", s.wpPod.IP.String(),
		"--pod-name", s.wpPod.Name,
		"--pod-namespace", ns,
		"--service-account", theWaypoint.ServiceAccount,
		"--gateway-name", gwName,
		"--node-name", cluster.NodeName,
		"--listen", fmt.Sprintf("0.0.0.0:%d", waypointPort),
		"--admin-address", adminAddr,
		"--status-address", fmt.Sprintf("0.0.0.0:%d", statusPort),
		"--access-log", s.accessLog,
		// The pod goes when the test ends: no need to wait for requests.
		"--drain", "500ms",
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("end of waypoint.log:\n%s", nodebox.Tail(s.waypoint.LogPath, 6000))
		}
	})
	// A request that hangs: the waypoint's goroutines at that moment,
	// once, for the failure report.
	var (
		once sync.Once
		// mu keeps the test's end waiting for a dump under way (it
		// logs through t); ended: too late to start one.
		mu    sync.Mutex
		ended bool
	)
	slowRequest = func(method, u string) {
		mu.Lock()
		defer mu.Unlock()
		if ended {
			return
		}
		once.Do(func() {
			_, g, err := s.wpAdmin("/debug/pprof/goroutine?debug=2")
			path := filepath.Join(os.TempDir(), fmt.Sprintf("kmesh-e2e-l7-waypoint-goroutines-%d.txt", os.Getpid()))
			if err == nil {
				err = os.WriteFile(path, g, 0o644)
			}
			var own []string
			if _, m, err := s.wpAdmin("/metrics"); err == nil {
				for _, l := range strings.Split(string(m), "\n") {
					if strings.HasPrefix(l, "kmesh_") {
						own = append(own, l)
					}
				}
			}
			var kernel map[string]uint64
			if code, b, err := s.Box.Admin(s.Ctx, "/debug/maps"); err == nil && code == http.StatusOK {
				var d cluster.MapDump
				if json.Unmarshal(b, &d) == nil {
					kernel = d.Stats
				}
			}
			t.Logf("%s %s has taken 2 s: the waypoint's goroutines are in %s (%v); its own metrics:\n%s\nkernel events: %v\n"+
				"TCP counters, client pod: %s\nwaypoint pod: %s\nnode: %s",
				method, u, path, err, strings.Join(own, "\n"), kernel, tcpCounters(s.client.Do), tcpCounters(s.wpPod.Do), tcpCounters(s.Box.InNode))
			t.Logf("the namespaces at that moment:\n%s", s.netState())
		})
	}
	t.Cleanup(func() {
		slowRequest = nil
		mu.Lock()
		ended = true
		mu.Unlock()
	})
	start := time.Now()
	cluster.Eventually(t, time.Minute, "kmesh-waypoint ready", func() (bool, string) {
		if done, err := s.waypoint.Exited(); done {
			t.Fatalf("kmesh-waypoint exited: %v\n%s", err, nodebox.Tail(s.waypoint.LogPath, 3000))
		}
		code, body, err := s.wpAdmin("/ready")
		return err == nil && code == http.StatusOK, fmt.Sprint(code, " ", strings.TrimSpace(string(body)), " ", err)
	})
	t.Logf("kmesh-waypoint ready %s after its start: TLS xDS from istiod, listening on %s:%d", time.Since(start).Round(time.Millisecond), s.wpPod.IP, waypointPort)
}

// forwardIstiod listens on the node's bridge address and forwards to
// istiod's TLS port on the node's loopback, as a Service would.
func (s *suite) forwardIstiod(t *testing.T) string {
	addr := net.JoinHostPort(s.Box.Gateway.String(), "15012")
	var ln net.Listener
	err := s.Box.InNode(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := s.CP.DialContext(s.Ctx, "tcp", s.CP.IstiodTLSAddr)
			if err != nil {
				down.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, down, up)
			mu.Unlock()
			wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				_, _ = io.Copy(dst, src)
				dst.Close()
				src.Close()
			}
			go pipe(up, down)
			go pipe(down, up)
		}
	}()
	return addr
}

// wpAdmin GETs path from the waypoint's admin, on its pod's loopback.
func (s *suite) wpAdmin(path string) (int, []byte, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: s.wpPod.DialContext, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + adminAddr + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (s *suite) wpJSON(t *testing.T, path string, v any) {
	t.Helper()
	code, b, err := s.wpAdmin(path)
	if err != nil || code != http.StatusOK {
		t.Fatalf("waypoint admin %s: %d %v %s", path, code, err, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("waypoint admin %s: %v", path, err)
	}
}

// wpStatus is the waypoint's /debug/status: the xDS session's counters.
type wpStatus struct {
	Ready  bool        `json:"ready"`
	Source wpxds.Stats `json:"source"`
}

func (s *suite) wpStatus(t *testing.T) wpStatus {
	t.Helper()
	var st wpStatus
	s.wpJSON(t, "/debug/status", &st)
	return st
}

func (s *suite) wpConfig(t *testing.T) *model.ConfigDump {
	t.Helper()
	var d model.ConfigDump
	s.wpJSON(t, "/debug/config_dump", &d)
	return &d
}

// backend is a pod behind the waypoint and the services that select it.
type backend struct {
	name   string
	labels map[string]string
	grpc   bool
}

var backends = []backend{
	{name: "v1-0", labels: map[string]string{"app": "web", "version": "v1"}},
	{name: "v1-1", labels: map[string]string{"app": "web", "version": "v1"}},
	{name: "v2-0", labels: map[string]string{"app": "web", "version": "v2", "pool": "outlier"}},
	{name: "flaky-0", labels: map[string]string{"app": "flaky"}},
	{name: "broken-0", labels: map[string]string{"app": "broken", "pool": "outlier"}},
	{name: "grpc-a-0", labels: map[string]string{"app": "grpc", "version": "a"}, grpc: true},
	{name: "grpc-b-0", labels: map[string]string{"app": "grpc", "version": "b"}, grpc: true},
}

// service is a Service behind the waypoint.
type service struct {
	name, vip string
	selector  map[string]string
	grpc      bool
}

var services = []service{
	{name: "web", vip: "10.96.20.10", selector: map[string]string{"app": "web"}},
	{name: "web-v1", vip: "10.96.20.11", selector: map[string]string{"app": "web", "version": "v1"}},
	{name: "web-v2", vip: "10.96.20.12", selector: map[string]string{"app": "web", "version": "v2"}},
	{name: "flip", vip: "10.96.20.13", selector: map[string]string{"app": "web"}},
	{name: "flaky", vip: "10.96.20.20", selector: map[string]string{"app": "flaky"}},
	{name: "outlier", vip: "10.96.20.21", selector: map[string]string{"pool": "outlier"}},
	{name: "sticky", vip: "10.96.20.22", selector: map[string]string{"app": "web"}},
	{name: "fault-abort", vip: "10.96.20.30", selector: map[string]string{"app": "web", "version": "v1"}},
	{name: "fault-delay", vip: "10.96.20.31", selector: map[string]string{"app": "web", "version": "v1"}},
	{name: "grpc", vip: "10.96.20.40", selector: map[string]string{"app": "grpc"}, grpc: true},
	{name: "grpc-a", vip: "10.96.20.41", selector: map[string]string{"app": "grpc", "version": "a"}, grpc: true},
	{name: "grpc-b", vip: "10.96.20.42", selector: map[string]string{"app": "grpc", "version": "b"}, grpc: true},
}

func url(svc string) string {
	for _, sv := range services {
		if sv.name == svc {
			return "http://" + sv.vip + "/"
		}
	}
	panic("no service " + svc)
}

func vip(svc string) string {
	for _, sv := range services {
		if sv.name == svc {
			return sv.vip
		}
	}
	panic("no service " + svc)
}

// startWorkloads makes the backends (pods opted in with
// istio.io/use-waypoint, so a pod addressed directly goes through the
// waypoint too), the services (opted in likewise) with their
// EndpointSlices, and the client.
func (s *suite) startWorkloads(t *testing.T) {
	s.flaky = &flakyServer{}
	for _, b := range backends {
		labels := map[string]string{useWaypoint: gwName}
		for k, v := range b.labels {
			labels[k] = v
		}
		o := cluster.PodOpts{Labels: labels, ServiceAccount: "backend"}
		switch {
		case b.grpc:
			o.Serve = func(p *cluster.Pod) error { return serveGRPC(p, grpcPort) }
			o.Ports = []corev1.ContainerPort{{ContainerPort: grpcPort}}
		case b.labels["app"] == "flaky":
			o.Serve = func(p *cluster.Pod) error { return p.ServeHTTP(httpPort, s.flaky) }
			o.Ports = []corev1.ContainerPort{{ContainerPort: httpPort}}
		case b.labels["app"] == "broken":
			o.Serve = func(p *cluster.Pod) error {
				return p.ServeHTTP(httpPort, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					http.Error(w, "broken-0 fails them all", http.StatusServiceUnavailable)
				}))
			}
			o.Ports = []corev1.ContainerPort{{ContainerPort: httpPort}}
		default:
			o.Serve = func(p *cluster.Pod) error { return p.ServeHTTP(httpPort, echo(p.Name)) }
			o.Ports = []corev1.ContainerPort{{ContainerPort: httpPort}}
		}
		s.backends[b.name] = s.AddPod(t, ns, b.name, o)
	}
	for _, sv := range services {
		port := corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(httpPort), Protocol: corev1.ProtocolTCP}
		if sv.grpc {
			port = corev1.ServicePort{Name: "grpc", Port: grpcPort, TargetPort: intstr.FromInt32(grpcPort), Protocol: corev1.ProtocolTCP, AppProtocol: ptr("grpc")}
		}
		_, err := s.K8s.CoreV1().Services(ns).Create(s.Ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: sv.name, Labels: map[string]string{useWaypoint: gwName}},
			Spec:       corev1.ServiceSpec{ClusterIP: sv.vip, Selector: sv.selector, Ports: []corev1.ServicePort{port}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create service %s: %v", sv.name, err)
		}
		pods := map[string]string{}
		for _, b := range backends {
			if matches(sv.selector, b.labels) {
				pods[b.name] = s.backends[b.name].IP.String()
			}
		}
		if err := cluster.WriteEndpointSlice(s.Ctx, s.K8s, ns, sv.name, []corev1.ServicePort{port}, pods, cluster.NodeName); err != nil {
			t.Fatal(err)
		}
	}
	s.client = s.AddPod(t, clientNS, "client", cluster.PodOpts{ServiceAccount: "client", Labels: map[string]string{"app": "client"}})
}

func matches(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func ptr[T any](v T) *T { return &v }

// echo answers with the pod's name in the body and in x-served-by, the
// TCP peer it saw in x-peer and the protocol in x-proto.
func echo(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("x-served-by", name)
		w.Header().Set("x-peer", r.RemoteAddr)
		w.Header().Set("x-proto", r.Proto)
		io.WriteString(w, name)
	})
}

// flakyServer fails every other request it gets with 500.
type flakyServer struct {
	mu       sync.Mutex
	n        int
	failures int
}

func (f *flakyServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.n++
	fail := f.n%2 == 1
	if fail {
		f.failures++
	}
	f.mu.Unlock()
	if fail {
		http.Error(w, "flaky-0 fails this one", http.StatusInternalServerError)
		return
	}
	io.WriteString(w, "flaky-0")
}

func (f *flakyServer) counts() (requests, failures int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n, f.failures
}

// response is what a request from the client saw.
type response struct {
	code     int
	who      string // x-served-by (empty for the waypoint's own answers)
	peer     string
	proto    string // the backend's view
	gotProto string // the client's view
	took     time.Duration
	body     string
	cookies  []string // Set-Cookie
}

// requestTimeout bounds a request from the client. Generous: on this
// 2-core machine shared with builds and benchmarks, a new connection's
// handshake has been seen to wait 2-5 s for TCP's SYN retransmits (1 s
// apart for the first four on this kernel: tcp_syn_linear_timeouts) in
// about one run of ten beside a benchmark (see slowRequest and
// tests/e2e/README.md); a request counts as failed only when TCP gives up
// far later than that.
const requestTimeout = 10 * time.Second

// slowRequests counts requests that took over a second.
var slowRequests atomic.Int64

// slowRequest, when set, is called (from a timer) when a request has
// taken more than two seconds: it saves what the waypoint was doing.
var slowRequest func(method, u string)

// do sends one request from the client with c and reads the answer.
func do(ctx context.Context, c *http.Client, method, u string, h http.Header) (_ response, err error) {
	if f := slowRequest; f != nil {
		tm := time.AfterFunc(2*time.Second, func() { f(method, u) })
		defer tm.Stop()
	}
	tr := &reqTrace{begin: time.Now()}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, tr.clientTrace()), method, u, nil)
	if err != nil {
		return response{}, err
	}
	begin := tr.begin
	defer func() {
		if took := time.Since(begin); took > time.Second {
			slowRequests.Add(1)
			noteSlow(method, u, took, tr, err)
		}
	}()
	for k, v := range h {
		req.Header[k] = v
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{code: resp.StatusCode, who: resp.Header.Get("x-served-by"), peer: resp.Header.Get("x-peer"),
		proto: resp.Header.Get("x-proto"), gotProto: resp.Proto, took: time.Since(start), body: string(b),
		cookies: resp.Header.Values("Set-Cookie")}, nil
}

// newConnClient is an HTTP/1.1 client from the client pod that opens a
// new connection per request.
func (s *suite) newConnClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: s.client.DialContext, DisableKeepAlives: true}, Timeout: requestTimeout}
}

// keptConnClient keeps one HTTP/1.1 connection.
func (s *suite) keptConnClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: s.client.DialContext, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}, Timeout: requestTimeout}
}

// h2cClient speaks HTTP/2 with prior knowledge (no TLS, no upgrade) on
// one kept connection.
func (s *suite) h2cClient() *http.Client {
	tr := &http.Transport{DialContext: s.client.DialContext, Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr, Timeout: requestTimeout}
}

// waitRouted sends requests until check accepts one (istiod's push has
// reached the waypoint), and says how long it took.
func (s *suite) waitRouted(t *testing.T, c *http.Client, u string, timeout time.Duration, what string, check func(response) bool) time.Duration {
	t.Helper()
	return cluster.Eventually(t, timeout, what, func() (bool, string) {
		r, err := do(s.Ctx, c, http.MethodGet, u, nil)
		if err != nil {
			return false, err.Error()
		}
		return check(r), fmt.Sprintf("last answer %d from %q: %.200s", r.code, r.who, r.body)
	})
}

// percentile of sorted durations.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[max(0, min(len(s)-1, i))]
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + " ms"
}

// tcpCounters are the non-zero TCP counters of a network namespace that
// tell lost handshakes apart (SYN retransmits, listen drops, TIME_WAIT
// and PAWS rejections), read from a thread inside it.
func tcpCounters(in func(func() error) error) string {
	var out []string
	_ = in(func() error {
		for _, f := range []string{"/proc/thread-self/net/netstat", "/proc/thread-self/net/snmp"} {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			lines := strings.Split(string(b), "\n")
			for i := 0; i+1 < len(lines); i += 2 {
				names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
				for j := 1; j < len(names) && j < len(values); j++ {
					n := names[j]
					if values[j] != "0" && (strings.Contains(n, "Syn") || strings.Contains(n, "Listen") || strings.Contains(n, "TW") ||
						strings.Contains(n, "PAWS") || strings.Contains(n, "Retrans") || strings.Contains(n, "Drop") || strings.Contains(n, "Reset") ||
						strings.Contains(n, "AttemptFails") || strings.Contains(n, "InErrs")) {
						out = append(out, n+"="+values[j])
					}
				}
			}
		}
		return nil
	})
	return strings.Join(out, " ")
}
