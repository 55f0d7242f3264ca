package main

// Kernel tests of the whole daemon: a real kmesh-daemon process, an
// in-test delta xDS server, real maps and real traffic between pod
// namespaces. Run with KMESH_KERNEL_TESTS=1 as root.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"istio.io/istio/pkg/workloadapi"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/api/cni/v1/podregistry"
	"github.com/kmesh-go/kmesh/daemon/xds"
	"github.com/kmesh-go/kmesh/daemon/xds/xdstest"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// binary is a program the tests build once per run, into a directory of
// its own that TestMain removes.
type binary struct {
	name, pkg string // pkg relative to daemon/
	once      sync.Once
	path      string
	err       error
}

var (
	daemonBin = &binary{name: "kmesh-daemon", pkg: "."}
	cniBin    = &binary{name: "kmesh-cni", pkg: "../plugins/kmesh-cni"}
	ctlBin    = &binary{name: "kmeshctl", pkg: "../kmeshctl"}
)

// get builds the binary on first use and returns its path.
func (b *binary) get(t *testing.T) string {
	t.Helper()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", b.name+"-bin")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, b.name)
		cmd := exec.Command("go", "build", "-o", b.path, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("build %s: %v\n%s", b.name, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, b := range []*binary{daemonBin, cniBin, ctlBin} {
		if b.path != "" {
			os.RemoveAll(filepath.Dir(b.path))
		}
	}
	os.Exit(code)
}

// daemon is one kmesh-daemon process started by a test.
type daemon struct {
	t     *testing.T
	args  []string
	cmd   *exec.Cmd
	admin string
	sock  string
	log   *os.File
	done  chan struct{}
	// netns, when set, is the network namespace the process runs in (a
	// test's "node", where the pods' host veths are).
	netns string
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startDaemon(t *testing.T, cg *testbed.Cgroup, pins string, extra ...string) *daemon {
	t.Helper()
	return startDaemonIn(t, "", cg, pins, extra...)
}

// startDaemonIn starts the daemon in the network namespace at netns ("":
// the test's own). Its admin address is then reachable only from there.
func startDaemonIn(t *testing.T, netns string, cg *testbed.Cgroup, pins string, extra ...string) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{t: t, admin: freePort(t), sock: filepath.Join(dir, "cni.sock"), netns: netns}
	d.args = append([]string{
		"--cgroup-root", cg.Path, "--bpf-dir", pins, "--cni-socket", d.sock,
		"--admin-address", d.admin, "--state-dir", dir, "--cni-state-dir", filepath.Join(dir, "cni"), "--node-name", "node-a",
	}, extra...)
	var err error
	d.log, err = os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	d.start()
	t.Cleanup(func() {
		d.stop(syscall.SIGTERM)
		if t.Failed() {
			b, _ := os.ReadFile(d.log.Name())
			t.Logf("daemon log:\n%s", tail(string(b), 40))
		}
		d.log.Close()
	})
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	d.cmd = exec.Command(daemonBin.get(d.t), d.args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	start := d.cmd.Start
	if d.netns != "" {
		// Started from a thread inside the namespace, the child is in it.
		start = func() error { return podns.Do(d.netns, d.cmd.Start) }
	}
	if err := start(); err != nil {
		d.t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(d.cmd, d.done)
}

// stop ends the process this test started, by its PID.
func (d *daemon) stop(sig syscall.Signal) {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	select {
	case <-d.done:
		return
	default:
	}
	_ = d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

func (d *daemon) get(path string) (int, []byte, error) {
	resp, err := http.Get("http://" + d.admin + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// metric sums the samples of name in the daemon's /metrics whose labels
// include every want.
func (d *daemon) metric(t *testing.T, name string, want ...string) float64 {
	t.Helper()
	_, b, err := d.get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(line, w)
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q", line)
		}
		sum += v
	}
	return sum
}

func (d *daemon) waitReady(timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if code, _, err := d.get("/ready"); err == nil && code == 200 {
			return
		}
		select {
		case <-d.done:
			d.t.Fatal("daemon exited before becoming ready")
		default:
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.t.Fatalf("daemon not ready within %s", timeout)
}

type mapDump struct {
	Services []struct {
		ID        uint32
		VIPs      []string
		Endpoints [][]uint32
	} `json:"services"`
	Backends []struct {
		ID        uint32
		Addresses []string
	} `json:"backends"`
	Enrolled map[string]any `json:"enrolled"`
}

func (d *daemon) maps() (mapDump, string) {
	d.t.Helper()
	code, b, err := d.get("/debug/maps")
	if err != nil || code != 200 {
		d.t.Fatalf("/debug/maps: %d %v", code, err)
	}
	var m mapDump
	if err := json.Unmarshal(b, &m); err != nil {
		d.t.Fatal(err)
	}
	// The raw dump minus counters that change with traffic.
	var raw map[string]json.RawMessage
	_ = json.Unmarshal(b, &raw)
	delete(raw, "stats")
	delete(raw, "enrolled")
	norm, _ := json.Marshal(raw)
	return m, string(norm)
}

// enroll tells the daemon about a pod the way kmesh-cni does.
func (d *daemon) enroll(p *testbed.Pod, id string) {
	d.t.Helper()
	cookie, err := podns.Cookie(p.NSPath)
	if err != nil {
		d.t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+d.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		d.t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := podregistry.NewPodRegistryClient(conn).EnrollPod(ctx, &cniv1.EnrollPodRequest{Pod: &cniv1.Pod{
		Name: p.Name, Namespace: "default", Uid: id, ContainerId: id, NetnsPath: p.NSPath,
		NetnsCookie: cookie, Ips: []string{p.IP4.String()}, Enrolled: true,
	}})
	if err != nil || !resp.Enrolled {
		d.t.Fatalf("enroll %s: %v %v", p.Name, resp, err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

const webKey = "default/web.default.svc.cluster.local"

// meshFixture: pods, an xDS server describing them, a daemon.
type meshFixture struct {
	t       *testing.T
	cg      *testbed.Cgroup
	pins    string
	net     *testbed.Network
	client  *testbed.Pod
	servers []*testbed.Pod
	xds     *xdstest.Server
	d       *daemon
}

func newMeshFixture(t *testing.T, nServers int) *meshFixture {
	return newMeshFixtureWith(t, nServers, map[uint32]uint32{80: 8080}, func(p *testbed.Pod) { p.ServeTCP(t, 8080, p.Name) })
}

// newMeshFixtureWith is newMeshFixture with the service's ports and what
// each server pod runs.
func newMeshFixtureWith(t *testing.T, nServers int, ports map[uint32]uint32, serve func(*testbed.Pod)) *meshFixture {
	testbed.Require(t)
	f := &meshFixture{t: t}
	f.cg = testbed.NewCgroup(t)
	f.pins = testbed.PinDir(t)
	f.net = testbed.NewNetwork(t)
	f.client = f.net.AddPod(t, "client")
	for i := range nServers {
		p := f.net.AddPod(t, fmt.Sprintf("s%d", i))
		serve(p)
		f.servers = append(f.servers, p)
	}
	var err error
	f.xds, err = xdstest.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.xds.Stop)
	res := map[string]types.Resource{}
	n, svc := xdstest.Service("default", "web", []string{"10.96.0.10", "fd00:96::10"}, ports)
	res[n] = svc
	for i, p := range f.servers {
		n, w := xdstest.Workload(fmt.Sprintf("uid-s%d", i), "default", p.Name, []string{p.IP4.String(), p.IP6.String()}, []string{webKey})
		res[n] = w
	}
	if err := f.xds.Set(xds.TypeAddress, res); err != nil {
		t.Fatal(err)
	}
	f.d = startDaemon(t, f.cg, f.pins, "--xds-address", f.xds.Addr, "--xds-plaintext")
	f.d.waitReady(10 * time.Second)
	f.cg.Join(t)
	f.d.enroll(f.client, "client-sandbox")
	return f
}

func (f *meshFixture) ask(addr string) (string, error) {
	return f.client.Ask("tcp", addr, 2*time.Second)
}

// spread connects n times and counts answers.
func (f *meshFixture) spread(addr string, n int) map[string]int {
	f.t.Helper()
	out := map[string]int{}
	for range n {
		who, err := f.ask(addr)
		if err != nil {
			f.t.Fatalf("connect %s: %v", addr, err)
		}
		out[who]++
	}
	return out
}

// loop connects until stop is closed, counting failures.
func (f *meshFixture) loop(addr string) (stop func() (ok, failed int64, first string)) {
	return testbed.Repeat(f.t, 1, func() error {
		_, err := f.ask(addr)
		return err
	})
}

func (f *meshFixture) waitFor(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.t.Fatalf("timed out waiting for %s", what)
}

func TestKernelDaemonServesIstiodState(t *testing.T) {
	f := newMeshFixture(t, 3)

	for _, vip := range []string{"10.96.0.10:80", "[fd00:96::10]:80"} {
		got := f.spread(vip, 60)
		if len(got) != 3 {
			t.Fatalf("%s reached %v, want all three backends", vip, got)
		}
	}
	// The admin API reports what is in the kernel.
	m, _ := f.d.maps()
	if len(m.Services) != 1 || len(m.Backends) != 3 || len(m.Services[0].Endpoints[0]) != 3 {
		t.Fatalf("/debug/maps: %+v", m)
	}
	_, metrics, _ := f.d.get("/metrics")
	for _, want := range []string{"kmesh_xds_connected 1", `kmesh_map_entries{map="km_endpoint"} 3`, "kmesh_programming_duration_seconds_count", "kmesh_pods_enrolled 1",
		`kmesh_map_capacity{map="km_tcp_sock"} 262144`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// A workload turning unhealthy leaves the endpoints, keeps its backend.
	n, w := xdstest.Workload("uid-s1", "default", "s1", []string{f.servers[1].IP4.String(), f.servers[1].IP6.String()}, []string{webKey},
		func(w *workloadapi.Workload) { w.Status = workloadapi.WorkloadStatus_UNHEALTHY })
	if err := f.xds.Set(xds.TypeAddress, map[string]types.Resource{n: w}); err != nil {
		t.Fatal(err)
	}
	f.waitFor("s1 out of the endpoints", func() bool {
		m, _ := f.d.maps()
		return len(m.Services[0].Endpoints[0]) == 2 && len(m.Backends) == 3
	})
	if got := f.spread("10.96.0.10:80", 40); got["s1"] != 0 || len(got) != 2 {
		t.Fatalf("unhealthy s1 still used: %v", got)
	}
}

func TestKernelDaemonNACKsBadResourcesAndKeepsMaps(t *testing.T) {
	f := newMeshFixture(t, 2)
	_, before := f.d.maps()

	bad := map[string]struct {
		res    types.Resource
		reason string
	}{}
	{
		n, w := xdstest.Workload("uid-bad-ip", "default", "bad", []string{"10.244.0.99"}, []string{webKey},
			func(w *workloadapi.Workload) { w.Addresses[0] = []byte{1, 2, 3, 4, 5} })
		bad[n] = struct {
			res    types.Resource
			reason string
		}{w, "invalid address bytes: 5 bytes"}
	}
	{
		n, s := xdstest.Service("default", "badport", []string{"10.96.0.30"}, map[uint32]uint32{70000: 80})
		bad[n] = struct {
			res    types.Resource
			reason string
		}{s, "service port 70000 out of range"}
	}
	{
		n, s := xdstest.Service("default", "badlb", []string{"10.96.0.31"}, map[uint32]uint32{80: 80},
			func(s *workloadapi.Service) { s.LoadBalancing = &workloadapi.LoadBalancing{Mode: 9} })
		bad[n] = struct {
			res    types.Resource
			reason string
		}{s, "unknown load-balancing mode 9"}
	}
	for name, b := range bad {
		seen := len(f.xds.Replies())
		if err := f.xds.Set(xds.TypeAddress, map[string]types.Resource{name: b.res}); err != nil {
			t.Fatal(err)
		}
		r, err := f.xds.WaitReply(seen, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(r.NACK, b.reason) {
			t.Errorf("%s: reply %q, want a NACK saying %q", name, r.NACK, b.reason)
		}
		if _, after := f.d.maps(); after != before {
			t.Fatalf("%s changed the maps:\n%s\n%s", name, before, after)
		}
	}

	// A good update still applies after NACKs, and a response with one bad
	// and one good resource applies the good one.
	seen := len(f.xds.Replies())
	n, s := xdstest.Service("default", "api", []string{"10.96.0.40"}, map[uint32]uint32{80: 8080})
	if err := f.xds.Set(xds.TypeAddress, map[string]types.Resource{n: s,
		"uid-bad-2": func() types.Resource {
			_, w := xdstest.Workload("uid-bad-2", "default", "bad2", []string{"10.244.0.98"}, nil, func(w *workloadapi.Workload) { w.Addresses[0] = []byte{9} })
			return w
		}()}); err != nil {
		t.Fatal(err)
	}
	r, _ := f.xds.WaitReply(seen, 5*time.Second)
	if !strings.Contains(r.NACK, "uid-bad-2") || strings.Contains(r.NACK, "api") {
		t.Fatalf("mixed update reply %q", r.NACK)
	}
	f.waitFor("the good service", func() bool { m, _ := f.d.maps(); return len(m.Services) == 2 })
	if _, err := f.ask("10.96.0.40:80"); err == nil || !strings.Contains(err.Error(), "refused") {
		// It has no endpoints: refused, but translated (not unreachable).
		t.Fatalf("new service without endpoints: %v, want connection refused", err)
	}
	_, metrics, _ := f.d.get("/metrics")
	if !strings.Contains(string(metrics), "kmesh_xds_nacks_total 4") {
		t.Errorf("NACK counter not 4 in /metrics")
	}
}

// istiod goes away: traffic keeps flowing on the last good state; deletions
// made while it was away apply after the resync, live entries untouched.
func TestKernelDaemonSurvivesXDSRestart(t *testing.T) {
	f := newMeshFixture(t, 3)
	stop := f.loop("10.96.0.10:80")

	f.xds.Stop()
	time.Sleep(500 * time.Millisecond)
	f.xds.SetWhileDown(xds.TypeAddress, map[string]types.Resource{"uid-s2": nil})
	if code, _, _ := f.d.get("/ready"); code != 200 {
		t.Fatal("daemon dropped readiness while istiod was away")
	}
	time.Sleep(300 * time.Millisecond)
	if err := f.xds.Restart(); err != nil {
		t.Fatal(err)
	}
	f.waitFor("s2 removed after the resync", func() bool {
		m, _ := f.d.maps()
		return len(m.Backends) == 2 && len(m.Services) == 1 && len(m.Services[0].Endpoints[0]) == 2
	})
	time.Sleep(200 * time.Millisecond)
	ok, failed, first := stop()
	t.Logf("%d connects during the xDS outage and resync, %d failed", ok, failed)
	if failed != 0 {
		t.Fatalf("%d connects failed: %s", failed, first)
	}
	if got := f.spread("10.96.0.10:80", 40); got["s2"] != 0 || len(got) != 2 {
		t.Fatalf("after resync: %v", got)
	}
	if f.xds.Connects() < 2 {
		t.Fatal("the daemon did not reconnect")
	}
}

// SIGKILL the daemon under load and start it again: not one connect fails,
// and the restarted daemon rewrites nothing that was right.
func TestKernelDaemonKilledAndRestartedLosesNoConnect(t *testing.T) {
	f := newMeshFixture(t, 3)
	_, before := f.d.maps()
	stop := f.loop("10.96.0.10:80")

	for range 3 {
		time.Sleep(200 * time.Millisecond)
		f.d.stop(syscall.SIGKILL)
		time.Sleep(300 * time.Millisecond) // no daemon at all for a while
		f.d.start()
		f.d.waitReady(10 * time.Second)
	}
	time.Sleep(200 * time.Millisecond)
	ok, failed, first := stop()
	t.Logf("%d connects across 3 SIGKILL restarts, %d failed", ok, failed)
	if failed != 0 {
		t.Fatalf("%d connects failed: %s", failed, first)
	}
	if _, after := f.d.maps(); after != before {
		t.Fatalf("maps differ after restarts:\n%s\n%s", before, after)
	}
	// The enrolled client is still known after the restarts.
	_, b, _ := f.d.get("/debug/pods")
	if !strings.Contains(string(b), "client-sandbox") {
		t.Fatalf("registry forgot the client: %s", b)
	}
}
