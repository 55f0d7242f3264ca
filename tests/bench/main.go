// Side-by-side benchmark of the paths a request can take from a client pod
// to a server pod, in one run, on the same two pods, with fortio:
//
//   - direct to the server pod's IP, no mesh (the limit);
//   - kube-proxy style: a service VIP DNATed by iptables;
//   - a userspace proxy hop: HAProxy (Debian) beside the client, in TCP mode
//     (standing in for a ztunnel-like L4 proxy) and in HTTP mode (standing
//     in for an Envoy sidecar);
//   - ours: the VIP rewritten at connect() by kmesh's cgroup hook, and the
//     same with kmesh's tc program also on the server pod's veth.
//
// Each measurement runs several times, paths interleaved, and the tables
// show medians. Nothing fails on a number: the targets are read off the
// table. The pods are a node in a box (see tests/nodebox): nothing touches
// the host's interfaces, and everything is removed at the end, also on
// Ctrl-C.
//
//	make bench                      # or: cd tests && go run ./bench
//	go run ./bench -runs 5 -fixed 30s
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/tests/nodebox"
)

// Addresses in the box. host-local hands out .10 (client) then .11 (server).
var (
	clientIP  = netip.MustParseAddr("10.244.0.10")
	serverIP  = netip.MustParseAddr("10.244.0.11")
	meshVIP   = netip.MustParseAddr("10.96.0.10") // kmesh's service address
	dnatVIP   = netip.MustParseAddr("10.96.0.20") // the iptables one
	serverURL = fmt.Sprintf("http://%s:8080/", serverIP)
)

const (
	dnatPort        = 8081 // the DNAT path's server port (see setUp)
	haproxyTCPPort  = 15001
	haproxyHTTPPort = 15002
)

// path is one way from the client to the server.
type path struct {
	key, label string
	url        string
	// inMesh runs fortio inside the box's cgroup, where kmesh's hook is.
	inMesh bool
	// proxy is the userspace hop whose CPU counts for this path.
	proxy *nodebox.Proc
	// serverTC attaches kmesh's tc program to the server's veth while
	// this path runs (both ends enrolled).
	serverTC bool
	// server is the fortio server this path reaches (the one on 8080
	// unless set).
	server *nodebox.Proc
	// grpcTarget and grpcServer: where gRPC measurements go (L7 table).
	grpcTarget string
	grpcServer *nodebox.Proc
}

type bench struct {
	box            *nodebox.Box
	bins           nodebox.Bins
	client, server *nodebox.Pod
	fortioServer   *nodebox.Proc
	dnatServer     *nodebox.Proc
	daemon         *nodebox.Proc
	haproxy        *nodebox.Proc
	paths          []*path
	fixed, sat, nc time.Duration
	runs           int
	kinds          string
	telemetry      bool
	sameDepth      bool   // -same-depth
	outside        string // the cgroup beside the mesh's, with -same-depth
	results        *results
	clientTCOn     bool // kmesh's tc program is on the client's veth
	cost           *costResult
	seq            int
	tables         map[string]bool // -tables
	l7             l7Options
	l7st           *l7State
}

func main() {
	// Many short runs beat a few long ones on a shared machine: each run's
	// ratio to direct is taken next to direct, and the median of those
	// shrugs off the runs another build disturbed.
	runs := flag.Int("runs", 9, "times each measurement runs (the tables show medians)")
	fixed := flag.Duration("fixed", 5*time.Second, "length of each fixed-rate run (1000 qps, 16 connections)")
	sat := flag.Duration("sat", 2*time.Second, "length of each saturation run (qps 0)")
	nc := flag.Duration("newconn", 2*time.Second, "length of each new-connection-per-request run")
	only := flag.String("paths", "", "comma-separated path keys to run (default: all): direct,dnat,haproxy-tcp,haproxy-http,kmesh,kmesh-tc,direct-in-mesh")
	which := flag.String("measure", "fixed,sat,newconn", "measurements to run: fixed, sat, newconn")
	telemetry := flag.Bool("telemetry", true, "run kmesh-daemon with telemetry (its default); false shows what the connection records cost")
	sameDepth := flag.Bool("same-depth", true, "run every process outside the mesh in a cgroup beside the mesh's (same depth, nothing attached), as pods on a node all sit at one depth; false leaves them where the bench runs")
	samples := flag.String("samples", "", "also write every run's figures to this CSV file (run, position in the run's order, path, measurement, ...)")
	tables := flag.String("tables", "l4,l7", "which tables: l4 (direct, DNAT, HAProxy, kmesh's connect-time rewrite), l7 (direct, HAProxy HTTP hop in a pod, kmesh's waypoint; gRPC; the waypoint's memory with 1000 services over xDS)")
	var l7 l7Options
	l7.flags()
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &bench{fixed: *fixed, sat: *sat, nc: *nc, runs: *runs, kinds: *which, telemetry: *telemetry, sameDepth: *sameDepth,
		tables: map[string]bool{}, l7: l7}
	for _, t := range strings.Split(*tables, ",") {
		if t = strings.TrimSpace(t); t != "l4" && t != "l7" {
			fmt.Fprintf(os.Stderr, "bench: -tables: unknown table %q (l4, l7)\n", t)
			os.Exit(2)
		}
		b.tables[strings.TrimSpace(t)] = true
	}
	err := b.run(ctx, *only)
	if err == nil && *samples != "" {
		err = b.writeCSV(*samples)
	}
	if ctx.Err() != nil {
		fmt.Println("\nInterrupted.")
		err = nil
	}
	if b.box != nil {
		if cerr := b.box.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func (b *bench) run(ctx context.Context, only string) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root (network namespaces, iptables in a pod, BPF)")
	}
	if _, err := os.Stat("/usr/sbin/haproxy"); err != nil {
		return errors.New("haproxy not found (.ci/deps installs Debian's)")
	}
	fmt.Println("kmesh benchmark: one client pod, one server pod, every path side by side")
	fmt.Println("(setting up: building, a node in a box, fortio server, HAProxy, iptables DNAT, kmesh-daemon)")
	var err error
	b.bins, err = nodebox.Build(ctx, nodebox.BuildOptions{Fortio: true})
	if err != nil {
		return err
	}
	if err := b.setUp(ctx); err != nil {
		return err
	}
	if only == "" {
		only = "direct,dnat,haproxy-tcp,haproxy-http,kmesh,kmesh-tc"
	}
	for _, p := range b.paths {
		if !strings.Contains(","+only+",", ","+p.key+",") {
			p.key = ""
		}
	}
	var chosen []*path
	for _, p := range b.paths {
		if p.key != "" {
			chosen = append(chosen, p)
		}
	}
	b.paths = chosen
	if len(b.paths) == 0 && b.tables["l4"] {
		return fmt.Errorf("no path matches -paths %q", only)
	}
	if b.tables["l4"] {
		if err := b.runL4(ctx); err != nil {
			return err
		}
	}
	if b.tables["l7"] {
		if err := b.runL7(ctx); err != nil {
			return err
		}
	}
	return nil
}

// runL4 runs and prints the L4 tables (and the cost pass).
func (b *bench) runL4(ctx context.Context) error {
	// Each path must work before anything is measured.
	for _, p := range b.paths {
		if err := b.check(ctx, p); err != nil {
			return fmt.Errorf("path %s does not work: %w", p.key, err)
		}
	}
	load1, _ := os.ReadFile("/proc/loadavg")
	start := time.Now()
	var kinds []kind
	for _, k := range measurements(b.fixed, b.sat, b.nc) {
		if strings.Contains(","+b.kinds+",", ","+k.group+",") {
			kinds = append(kinds, k)
		}
	}
	var err error
	if b.results, err = b.interleave(ctx, b.paths, kinds); err != nil {
		return err
	}
	for _, k := range kinds {
		if k.group != "newconn" {
			continue
		}
		for _, p := range b.paths {
			if p.key == "kmesh" {
				fmt.Printf("\r  cost pass: %-28s %-14s                 ", k.name, p.key)
				if b.cost, err = b.costPass(ctx, p, k); err != nil {
					return fmt.Errorf("cost pass: %w", err)
				}
			}
		}
	}
	fmt.Printf("\r%80s\r", "")
	load2, _ := os.ReadFile("/proc/loadavg")
	b.print(time.Since(start), strings.Fields(string(load1)), strings.Fields(string(load2)))
	return nil
}

// interleave runs every measurement on every path b.runs times, the paths
// in turn (their order reversed every other run), so that each run's
// paths share the machine's mood of the moment.
func (b *bench) interleave(ctx context.Context, paths []*path, kinds []kind) (*results, error) {
	res := newResults()
	total := b.runs * len(kinds) * len(paths)
	seq := 0
	for run := 1; run <= b.runs; run++ {
		order := slices.Clone(paths)
		if run%2 == 0 {
			slices.Reverse(order)
		}
		for _, k := range kinds {
			for pos, p := range order {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				seq++
				fmt.Printf("\r  run %d/%d: %-28s %-14s (%d/%d)   ", run, b.runs, k.name, p.key, seq, total)
				s, err := b.measure(ctx, p, k)
				if err != nil && k.grpc && strings.Contains(err.Error(), "Error in first grpc call") {
					// fortio gives up on a run whose first call fails: that
					// call is counted as failed, and the run made again.
					res.aborted[p.key+"\x00"+k.name]++
					s, err = b.measure(ctx, p, k)
				}
				if err != nil {
					return nil, fmt.Errorf("%s on %s: %w", k.name, p.key, err)
				}
				s.run, s.pos = run, pos
				res.add(p.key, k.name, s)
			}
		}
	}
	return res, nil
}

// setUp makes the node, the pods and every path's machinery.
func (b *bench) setUp(ctx context.Context) error {
	var err error
	b.box, err = nodebox.New(ctx, nodebox.Config{Prefix: "kmbench", Bins: b.bins, DefaultEnroll: true})
	if err != nil {
		return err
	}
	// The daemon first (kmesh-cni enrolls into its pinned maps), with a
	// mesh of one service whose one backend is the server pod.
	cfg := filepath.Join(b.box.Dir, "mesh.json")
	if err := writeMesh(cfg, b.tables["l7"]); err != nil {
		return err
	}
	b.daemon, err = b.box.StartDaemon("--config-file", cfg, "--node-name", "bench", fmt.Sprintf("--telemetry=%v", b.telemetry))
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := b.box.WaitDaemonReady(rctx, b.daemon); err != nil {
		return err
	}

	if b.sameDepth {
		if b.outside, err = b.box.OutsideCgroup(); err != nil {
			return err
		}
	}
	// The client is enrolled; the server is not (its namespace would not
	// be labelled): the "direct" path has no kmesh anywhere, and kmesh's
	// server-side cost is its own row (kmesh-tc).
	if b.client, err = b.box.AddPod(ctx, nodebox.PodSpec{Name: "client", Namespace: "bench"}); err != nil {
		return err
	}
	b.clientTCOn = true // kmesh-cni enrolled it
	if b.server, err = b.box.AddPod(ctx, nodebox.PodSpec{Name: "server", Namespace: "bench", OutOfMesh: true}); err != nil {
		return err
	}
	if b.client.IP != clientIP || b.server.IP != serverIP {
		return fmt.Errorf("host-local gave client %s and server %s, want %s and %s", b.client.IP, b.server.IP, clientIP, serverIP)
	}

	b.fortioServer, err = b.box.Start(nodebox.ProcSpec{Name: "fortio-server", Cgroup: b.outside, Pod: b.server, Argv: []string{
		b.bins.Fortio, "server", "-http-port", "8080", "-grpc-port", "disabled", "-redirect-port", "disabled",
		"-tcp-port", "disabled", "-udp-port", "disabled", "-ui-path", "", "-quiet",
	}})
	if err != nil {
		return err
	}
	if err := b.client.WaitListening(ctx, netip.AddrPortFrom(serverIP, 8080), 10*time.Second); err != nil {
		return fmt.Errorf("fortio server: %w", err)
	}
	// The DNAT path's target: the same server pod, another port. With one
	// port, a DNATed connection's conntrack entry (its reply tuple is
	// server:8080 -> client:port) outlives the socket by two minutes, and a
	// later connection of another path from the same client port to
	// server:8080 meets it as a packet of the wrong direction: its SYN is
	// dropped and retried a second later. That collapsed the other paths'
	// new-connection rate in the same run (direct fell from ~9800/s to
	// ~1400/s in one) and made the rows measure each other.
	b.dnatServer, err = b.box.Start(nodebox.ProcSpec{Name: "fortio-server-dnat", Cgroup: b.outside, Pod: b.server, Argv: []string{
		b.bins.Fortio, "server", "-http-port", strconv.Itoa(dnatPort), "-grpc-port", "disabled", "-redirect-port", "disabled",
		"-tcp-port", "disabled", "-udp-port", "disabled", "-ui-path", "", "-quiet",
	}})
	if err != nil {
		return err
	}
	if err := b.client.WaitListening(ctx, netip.AddrPortFrom(serverIP, dnatPort), 10*time.Second); err != nil {
		return fmt.Errorf("fortio server for DNAT: %w", err)
	}

	// kube-proxy style: DNAT in the client pod's own netfilter (the node
	// namespace cannot do it for bridged pod traffic without br_netfilter,
	// a host-wide module). A route makes the VIP routable before DNAT.
	for _, c := range [][]string{
		{"ip", "route", "add", dnatVIP.String() + "/32", "dev", "eth0"},
		{"iptables", "-t", "nat", "-A", "OUTPUT", "-d", dnatVIP.String() + "/32", "-p", "tcp", "--dport", "80",
			"-j", "DNAT", "--to-destination", netip.AddrPortFrom(serverIP, dnatPort).String()},
	} {
		if err := b.client.Run(c[0], c[1:]...); err != nil {
			return err
		}
	}

	// HAProxy next to the client, as a sidecar would be.
	hcfg := filepath.Join(b.box.Dir, "haproxy.cfg")
	if err := os.WriteFile(hcfg, []byte(haproxyConfig()), 0o644); err != nil {
		return err
	}
	b.haproxy, err = b.box.Start(nodebox.ProcSpec{Name: "haproxy", Cgroup: b.outside, Pod: b.client, Argv: []string{"/usr/sbin/haproxy", "-db", "-f", hcfg}})
	if err != nil {
		return err
	}
	for _, port := range []uint16{haproxyTCPPort, haproxyHTTPPort} {
		if err := b.client.WaitListening(ctx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), 10*time.Second); err != nil {
			return fmt.Errorf("haproxy: %w; end of its log:\n%s", err, nodebox.Tail(b.haproxy.LogPath, 2000))
		}
	}

	b.paths = []*path{
		{key: "direct", label: "direct to the pod IP, no mesh", url: serverURL},
		{key: "dnat", label: "iptables DNAT on a VIP (kube-proxy)", url: fmt.Sprintf("http://%s:80/", dnatVIP), server: b.dnatServer},
		{key: "haproxy-tcp", label: "HAProxy TCP hop (ztunnel-like)", url: fmt.Sprintf("http://127.0.0.1:%d/", haproxyTCPPort), proxy: b.haproxy},
		{key: "haproxy-http", label: "HAProxy HTTP hop (sidecar-like)", url: fmt.Sprintf("http://127.0.0.1:%d/", haproxyHTTPPort), proxy: b.haproxy},
		{key: "kmesh", label: "kmesh: VIP rewritten at connect()", url: fmt.Sprintf("http://%s:80/", meshVIP), inMesh: true},
		{key: "kmesh-tc", label: "kmesh + tc on the server's veth", url: fmt.Sprintf("http://%s:80/", meshVIP), inMesh: true, serverTC: true},
		// Not run by default: the pod IP from inside the mesh, to tell the
		// cost of the cgroup programs from the cost of the rewrite.
		{key: "direct-in-mesh", label: "pod IP from an enrolled client", url: serverURL, inMesh: true},
	}
	return nil
}

func haproxyConfig() string {
	srv := netip.AddrPortFrom(serverIP, 8080).String()
	return fmt.Sprintf(`global
    maxconn 8000
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend tcp_in
    mode tcp
    bind 127.0.0.1:%d
    default_backend tcp_out
backend tcp_out
    mode tcp
    server s %s
frontend http_in
    mode http
    bind 127.0.0.1:%d
    default_backend http_out
backend http_out
    mode http
    http-reuse always
    server s %s
`, haproxyTCPPort, srv, haproxyHTTPPort, srv)
}

// writeMesh writes the daemon's --config-file: service bench.bench at
// meshVIP:80 -> 8080 on the server pod, and with l7 the services whose
// waypoints the L7 table goes through (l7Mesh).
func writeMesh(path string, l7 bool) error {
	const host = "bench.bench.svc.cluster.local"
	port := []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}
	addrs := []*workloadapi.Address{
		{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
			Name: "bench", Namespace: "bench", Hostname: host,
			Addresses: []*workloadapi.NetworkAddress{{Address: meshVIP.AsSlice()}},
			Ports:     port,
		}}},
		{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
			Uid: "Kubernetes//Pod/bench/server", Name: "server", Namespace: "bench",
			Addresses: [][]byte{serverIP.AsSlice()}, TrustDomain: "cluster.local", ServiceAccount: "server",
			Services: map[string]*workloadapi.PortList{"bench/" + host: {Ports: port}},
			Status:   workloadapi.WorkloadStatus_HEALTHY,
		}}},
	}
	if l7 {
		addrs = append(addrs, l7Mesh()...)
	}
	var doc struct {
		Addresses []json.RawMessage `json:"addresses"`
	}
	for _, a := range addrs {
		raw, err := protojson.Marshal(a)
		if err != nil {
			return err
		}
		doc.Addresses = append(doc.Addresses, raw)
	}
	raw, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, raw, 0o644)
}

// check sends a short burst down a path.
func (b *bench) check(ctx context.Context, p *path) error {
	r, err := b.fortio(ctx, p, p.url, "-qps", "50", "-c", "1", "-t", "1s")
	if err != nil {
		return err
	}
	if r.failed() > 0 || r.count() == 0 {
		return fmt.Errorf("%d of %d requests failed (codes %v)", r.failed(), r.count(), r.RetCodes)
	}
	return nil
}

// measure runs one measurement on one path and collects CPU use.
func (b *bench) measure(ctx context.Context, p *path, k kind) (sample, error) {
	if err := b.clientTC(p.inMesh); err != nil {
		return sample{}, err
	}
	if p.serverTC {
		if err := b.podTC(b.server, true); err != nil {
			return sample{}, err
		}
		defer b.podTC(b.server, false)
	}
	server := b.fortioServer
	if p.server != nil {
		server = p.server
	}
	target := p.url
	if k.grpc {
		server, target = p.grpcServer, p.grpcTarget
	}
	watch := []*nodebox.Proc{server}
	if p.proxy != nil {
		watch = append(watch, p.proxy)
	}
	if p.inMesh {
		watch = append(watch, b.daemon)
	}
	before := make([]time.Duration, len(watch))
	for i, w := range watch {
		u, s, err := w.CPU()
		if err != nil {
			return sample{}, err
		}
		before[i] = u + s
	}
	r, err := b.fortio(ctx, p, target, k.args...)
	if err != nil {
		return sample{}, err
	}
	s := sample{
		qps: r.ActualQPS, p50: r.percentile(50), p90: r.percentile(90), p99: r.percentile(99),
		requests: r.count(), failed: r.failed(), clientCPU: r.cpu,
	}
	for i, w := range watch {
		u, sy, err := w.CPU()
		if err != nil {
			return sample{}, err
		}
		d := u + sy - before[i]
		switch w {
		case server:
			s.serverCPU = d
		case b.daemon:
			s.meshCPU = d
		default:
			s.proxyCPU = d
		}
	}
	return s, nil
}

// podTC attaches or detaches kmesh's tc program on a pod's host-side
// veth, as kmesh-cni does for an enrolled pod.
func (b *bench) podTC(pod *nodebox.Pod, on bool) error {
	key := loader.PodTCKey(pod.ContainerID, pod.HostVeth)
	if !on {
		return loader.DetachPodTC(b.box.PinDir, key)
	}
	// A detach the kernel finishes late (a tcx link unpinned is released
	// after an RCU grace period) makes an attach right after it EEXIST:
	// the next run may start at once, so give it a moment.
	deadline := time.Now().Add(3 * time.Second)
	for {
		err := b.box.InNode(func() error {
			ifc, err := net.InterfaceByName(pod.HostVeth)
			if err != nil {
				return err
			}
			return loader.AttachPodTC(b.box.PinDir, key, ifc.Index)
		})
		if err == nil || !errors.Is(err, syscall.EEXIST) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clientTC puts kmesh's tc program on the client pod's veth for the mesh
// paths and takes it off for the others: the client pod is enrolled (so
// kmesh-cni attached it), but a path without the mesh must meet no kmesh
// program, not even on the packets coming back into the client.
func (b *bench) clientTC(on bool) error {
	if b.clientTCOn == on {
		return nil
	}
	if err := b.podTC(b.client, on); err != nil {
		return err
	}
	b.clientTCOn = on
	return nil
}
