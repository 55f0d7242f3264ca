package main

// The L7 table: one proxy hop that speaks HTTP between the same client and
// server pods as the L4 table.
//
//   - direct: the client pod to the server pod's IP, no proxy (the limit);
//   - HAProxy (Debian) in HTTP mode, standing in for Envoy (not installable
//     here), in a pod of its own: client -> proxy pod -> server pod, the
//     position a waypoint has;
//   - kmesh's waypoint: the client dials a service VIP, kmesh's connect hook
//     sends the connection to the waypoint pod's port 15019 with a PROXY v2
//     header naming the VIP, and kmesh-waypoint (from an Envoy bootstrap
//     file) routes it to the server pod.
//
// HTTP/1.1 with fortio's 1 KiB echo, and gRPC (fortio's ping, h2c) on the
// same three paths. The waypoint's memory with istiod-shaped configuration
// of 1000 services is measured on a second waypoint pod fed over xDS
// (wpmem.go).

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/tests/nodebox"
)

// The L7 pods come after the client (.10) and the server (.11).
var (
	proxyIP      = netip.MustParseAddr("10.244.0.12") // HAProxy's pod
	waypointIP   = netip.MustParseAddr("10.244.0.13") // kmesh-waypoint from a bootstrap file
	waypointXIP  = netip.MustParseAddr("10.244.0.14") // kmesh-waypoint fed over xDS (memory)
	l7VIP        = netip.MustParseAddr("10.96.0.30")  // the service behind the bootstrap waypoint
	waypointVIP  = netip.MustParseAddr("10.96.0.40")  // the waypoint's own service
	waypointXVIP = netip.MustParseAddr("10.96.0.41")
	// l7XVIP is the service behind the xDS-fed waypoint: one of the 1000
	// synthetic services (number 968, see wpmem.go), rerouted to the server.
	l7XVIP = netip.MustParseAddr("10.96.3.200")
)

const (
	grpcPort         = 8079  // the fortio server's gRPC port (and the service's)
	haproxyH2Port    = 15003 // HAProxy's h2c frontend
	waypointPort     = 15019 // where the kernel sends waypoint-bound connections
	waypointAdmin    = "127.0.0.1:15000"
	waypointStatus   = 15021
	l7WaypointHost   = "waypoint.bench.svc.cluster.local"
	l7WaypointXHost  = "waypoint-xds.bench.svc.cluster.local"
	l7ServiceHost    = "bench-l7.bench.svc.cluster.local"
	l7ServiceXHost   = "bench-l7x.bench.svc.cluster.local"
	waypointXDSPort  = 15010
	defaultWPService = 1000
)

// l7Options are the L7 table's flags.
type l7Options struct {
	fixed, sat, nc time.Duration
	services       int
	workloads      int
	waypointEnv    string
	inMesh         bool
	grpc           bool
	paths          string
	mem            bool
	hold           bool
	profileDir     string
}

func (o *l7Options) flags() {
	flag.DurationVar(&o.fixed, "l7-fixed", 5*time.Second, "L7: length of each fixed-rate run (1000 qps, 16 connections)")
	flag.DurationVar(&o.sat, "l7-sat", 2*time.Second, "L7: length of each saturation run")
	flag.DurationVar(&o.nc, "l7-newconn", 2*time.Second, "L7: length of each new-connection-per-request run")
	flag.BoolVar(&o.grpc, "l7-grpc", true, "L7: also gRPC (fortio's ping over h2c)")
	flag.StringVar(&o.paths, "l7-paths", "direct,haproxy,waypoint", "L7: comma-separated paths")
	flag.BoolVar(&o.mem, "l7-mem", true, "L7: the waypoint's memory with -wp-services services fed over xDS")
	flag.IntVar(&o.services, "wp-services", defaultWPService, "L7 memory: services in the xDS-fed waypoint's configuration")
	flag.IntVar(&o.workloads, "wp-workloads", 3000, "L7 memory: workloads in its address xDS")
	flag.StringVar(&o.waypointEnv, "wp-env", "", "L7: extra environment for kmesh-waypoint (e.g. GOGC=200), space-separated")
	flag.StringVar(&o.profileDir, "wp-profile", "", "L7 memory: write the xDS-fed waypoint's heap profile and /proc smaps at rest and after the load into this folder")
	flag.BoolVar(&o.hold, "l7-hold", false, "L7: set the paths up, print how to load and profile them, and wait for ^C instead of measuring")
	flag.BoolVar(&o.inMesh, "wp-in-mesh", true, "L7: the waypoint pod is enrolled and kmesh-waypoint runs in the mesh's cgroup (as on a node); false runs it beside, like HAProxy")
}

// l7Mesh is what the daemon's mesh gains for the L7 table: the service
// whose VIP names the bootstrap waypoint, that waypoint's service and pod,
// and the same for the xDS-fed waypoint. The services behind waypoints
// have no endpoints in the kernel: every connection to them goes to the
// waypoint, which knows the server pod.
func l7Mesh() []*workloadapi.Address {
	svc := func(name, host string, vip netip.Addr, ports []*workloadapi.Port, wp string) *workloadapi.Address {
		s := &workloadapi.Service{Name: name, Namespace: "bench", Hostname: host,
			Addresses: []*workloadapi.NetworkAddress{{Address: vip.AsSlice()}}, Ports: ports}
		if wp != "" {
			s.Waypoint = &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Hostname{
				Hostname: &workloadapi.NamespacedHostname{Namespace: "bench", Hostname: wp}}, HboneMtlsPort: 15008}
		}
		return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
	}
	pod := func(name, host string, ip netip.Addr) *workloadapi.Address {
		return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
			Uid: "Kubernetes//Pod/bench/" + name, Name: name, Namespace: "bench",
			Addresses: [][]byte{ip.AsSlice()}, TrustDomain: "cluster.local", ServiceAccount: "waypoint",
			Services: map[string]*workloadapi.PortList{"bench/" + host: {Ports: []*workloadapi.Port{{ServicePort: 15008, TargetPort: 15008}}}},
			Status:   workloadapi.WorkloadStatus_HEALTHY,
		}}}
	}
	hbone := []*workloadapi.Port{{ServicePort: 15008, TargetPort: 15008}}
	app := []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: grpcPort, TargetPort: grpcPort}}
	return []*workloadapi.Address{
		svc("waypoint", l7WaypointHost, waypointVIP, hbone, ""),
		pod("waypoint-0", l7WaypointHost, waypointIP),
		svc("bench-l7", l7ServiceHost, l7VIP, app, l7WaypointHost),
		svc("waypoint-xds", l7WaypointXHost, waypointXVIP, hbone, ""),
		pod("waypoint-xds-0", l7WaypointXHost, waypointXIP),
		svc("bench-l7x", l7ServiceXHost, l7XVIP, app[:1], l7WaypointXHost),
	}
}

// waypointBootstrap is the bootstrap waypoint's configuration: an Envoy
// bootstrap (Envoy runs it unchanged) with one listener on the waypoint
// port reading the PROXY header, a chain per port of the bench's service
// shaped as istiod writes a waypoint's inbound-vip chains (its HCM
// settings: no stream idle timeout, normalized paths; fault, CORS and the
// router; the retry policy istiod gives every route), and the server pod
// as a static endpoint (h2c towards it for gRPC).
func waypointBootstrap() string {
	return fmt.Sprintf(`static_resources:
  listeners:
  - name: waypoint
    address: { socket_address: { address: 0.0.0.0, port_value: %[1]d } }
    listener_filters:
    - name: envoy.filters.listener.proxy_protocol
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol
    filter_chains:
%[2]s%[3]s  clusters:
  - name: server-http
    type: STATIC
    connect_timeout: 10s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: server-http
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: %[4]s, port_value: 8080 } } }
  - name: server-grpc
    type: STATIC
    connect_timeout: 10s
    lb_policy: ROUND_ROBIN
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: server-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: %[4]s, port_value: %[5]d } } }
`, waypointPort, bootstrapChain("http", 80, "server-http"), bootstrapChain("grpc", grpcPort, "server-grpc"), serverIP, grpcPort)
}

func bootstrapChain(name string, port int, cluster string) string {
	return fmt.Sprintf(`    - name: %[1]s
      filter_chain_match:
        prefix_ranges: [{ address_prefix: %[2]s, prefix_len: 32 }]
        destination_port: %[3]d
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: %[1]s
          codec_type: AUTO
          server_name: istio-envoy
          stream_idle_timeout: 0s
          normalize_path: true
          path_with_escaped_slashes_action: KEEP_UNCHANGED
          use_remote_address: false
          route_config:
            name: %[1]s
            virtual_hosts:
            - name: %[1]s
              domains: ["*"]
              routes:
              - match: { prefix: / }
                route:
                  cluster: %[4]s
                  timeout: 0s
                  retry_policy:
                    retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
                    num_retries: 2
                    retriable_status_codes: [503]
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                    host_selection_retry_max_attempts: 5
          http_filters:
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
`, name, l7VIP, port, cluster)
}

// haproxyL7Config is the HAProxy hop of the L7 table, in its own pod:
// HTTP/1.1 on port 80 (the same port the waypoint's service has, so the
// client's URLs differ only in the address), h2c for gRPC.
func haproxyL7Config() string {
	return fmt.Sprintf(`global
    maxconn 8000
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend http_in
    mode http
    bind 0.0.0.0:80
    default_backend http_out
backend http_out
    mode http
    http-reuse always
    server s %s
frontend h2_in
    mode http
    bind 0.0.0.0:%d proto h2
    default_backend h2_out
backend h2_out
    mode http
    http-reuse always
    server s %s proto h2
`, netip.AddrPortFrom(serverIP, 8080), grpcPort, netip.AddrPortFrom(serverIP, grpcPort))
}

// l7State is what the L7 table set up.
type l7State struct {
	proxyPod, wpPod *nodebox.Pod
	haproxy, wp     *nodebox.Proc
	grpcServer      *nodebox.Proc
	paths           []*path
	res             *results
	idleRSS         map[string]rssInfo // before the runs
	afterRSS        map[string]rssInfo // after them
	mem             *wpMemResult
	load1, load2    []string
	took            time.Duration
}

// setUpL7 adds the proxy and waypoint pods and their processes.
func (b *bench) setUpL7(ctx context.Context) (*l7State, error) {
	st := &l7State{}
	var err error
	// The gRPC side of the server pod: a fortio server of its own, so the
	// L4 table's server is the one it always was.
	st.grpcServer, err = b.box.Start(nodebox.ProcSpec{Name: "fortio-server-grpc", Cgroup: b.outside, Pod: b.server, Argv: []string{
		b.bins.Fortio, "server", "-http-port", "8082", "-grpc-port", strconv.Itoa(grpcPort), "-redirect-port", "disabled",
		"-tcp-port", "disabled", "-udp-port", "disabled", "-ui-path", "", "-quiet",
	}})
	if err != nil {
		return nil, err
	}
	if err := b.client.WaitListening(ctx, netip.AddrPortFrom(serverIP, grpcPort), 10*time.Second); err != nil {
		return nil, fmt.Errorf("fortio gRPC server: %w", err)
	}

	// HAProxy's pod is out of the mesh, its process beside the mesh's
	// cgroup, as HAProxy's paths in the L4 table.
	if st.proxyPod, err = b.box.AddPod(ctx, nodebox.PodSpec{Name: "proxy", Namespace: "bench", OutOfMesh: true}); err != nil {
		return nil, err
	}
	if st.proxyPod.IP != proxyIP {
		return nil, fmt.Errorf("host-local gave the proxy pod %s, want %s", st.proxyPod.IP, proxyIP)
	}
	hcfg := filepath.Join(b.box.Dir, "haproxy-l7.cfg")
	if err := os.WriteFile(hcfg, []byte(haproxyL7Config()), 0o644); err != nil {
		return nil, err
	}
	st.haproxy, err = b.box.Start(nodebox.ProcSpec{Name: "haproxy-l7", Cgroup: b.outside, Pod: st.proxyPod, Argv: []string{"/usr/sbin/haproxy", "-db", "-f", hcfg}})
	if err != nil {
		return nil, err
	}
	for _, port := range []uint16{80, grpcPort} {
		if err := b.client.WaitListening(ctx, netip.AddrPortFrom(proxyIP, port), 10*time.Second); err != nil {
			return nil, fmt.Errorf("haproxy: %w; end of its log:\n%s", err, nodebox.Tail(st.haproxy.LogPath, 2000))
		}
	}

	// The waypoint's pod: enrolled (a waypoint's pods are in the mesh; the
	// daemon flags them so nothing they dial goes to a waypoint), and
	// kmesh-waypoint in the mesh's cgroup, as on a node.
	if st.wpPod, err = b.box.AddPod(ctx, nodebox.PodSpec{Name: "waypoint-0", Namespace: "bench", OutOfMesh: !b.l7.inMesh}); err != nil {
		return nil, err
	}
	if st.wpPod.IP != waypointIP {
		return nil, fmt.Errorf("host-local gave the waypoint pod %s, want %s", st.wpPod.IP, waypointIP)
	}
	bcfg := filepath.Join(b.box.Dir, "waypoint-bootstrap.yaml")
	if err := os.WriteFile(bcfg, []byte(waypointBootstrap()), 0o644); err != nil {
		return nil, err
	}
	st.wp, err = b.startWaypoint(st.wpPod, "kmesh-waypoint", "--config-file", bcfg)
	if err != nil {
		return nil, err
	}
	if err := b.waitWaypointReady(ctx, st.wpPod, st.wp); err != nil {
		return nil, err
	}

	all := []*path{
		{key: "direct", label: "direct to the pod IP, no proxy", url: serverURL,
			grpcTarget: netip.AddrPortFrom(serverIP, grpcPort).String(), grpcServer: st.grpcServer},
		{key: "haproxy", label: "HAProxy HTTP hop in a pod (Envoy stand-in)", url: fmt.Sprintf("http://%s:80/", proxyIP), proxy: st.haproxy,
			grpcTarget: netip.AddrPortFrom(proxyIP, grpcPort).String(), grpcServer: st.grpcServer},
		{key: "waypoint", label: "kmesh: VIP -> waypoint (kernel redirect, PROXY v2)", url: fmt.Sprintf("http://%s:80/", l7VIP), proxy: st.wp, inMesh: true,
			grpcTarget: netip.AddrPortFrom(l7VIP, grpcPort).String(), grpcServer: st.grpcServer},
	}
	for _, p := range all {
		if strings.Contains(","+b.l7.paths+",", ","+p.key+",") {
			st.paths = append(st.paths, p)
		}
	}
	if len(st.paths) == 0 {
		return nil, fmt.Errorf("no path matches -l7-paths %q", b.l7.paths)
	}
	return st, nil
}

// startWaypoint runs kmesh-waypoint in a pod: in the mesh's cgroup when
// the pod is enrolled (-wp-in-mesh), beside it otherwise.
func (b *bench) startWaypoint(pod *nodebox.Pod, name string, args ...string) (*nodebox.Proc, error) {
	spec := nodebox.ProcSpec{Name: name, Pod: pod, Argv: append([]string{b.bins.Waypoint,
		"--admin-address", waypointAdmin, "--status-address", fmt.Sprintf("0.0.0.0:%d", waypointStatus), "--log-level", "warn"}, args...)}
	if b.l7.inMesh {
		spec.InCgroup = true
	} else {
		spec.Cgroup = b.outside
	}
	if b.l7.waypointEnv != "" {
		spec.Env = append(os.Environ(), strings.Fields(b.l7.waypointEnv)...)
	}
	return b.box.Start(spec)
}

// waitWaypointReady polls the waypoint's /ready (its status port, from the
// client pod) until it serves a configuration.
func (b *bench) waitWaypointReady(ctx context.Context, pod *nodebox.Pod, wp *nodebox.Proc) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, _, err := podGet(ctx, pod, fmt.Sprintf("http://%s/ready", waypointAdmin))
		if err == nil && code == http.StatusOK {
			return nil
		}
		if ok, werr := wp.Exited(); ok {
			return fmt.Errorf("kmesh-waypoint exited (%v); end of %s:\n%s", werr, wp.LogPath, nodebox.Tail(wp.LogPath, 3000))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("kmesh-waypoint not ready (%v, %d); end of %s:\n%s", err, code, wp.LogPath, nodebox.Tail(wp.LogPath, 3000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// podGet GETs url from inside pod (the waypoint's admin is on its
// loopback).
func podGet(ctx context.Context, pod *nodebox.Pod, url string) (int, []byte, error) {
	client := &http.Client{
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return pod.DialContext(ctx, network, addr)
		}},
		Timeout: 5 * time.Second,
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var body []byte
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		body = append(body, buf[:n]...)
		if err != nil {
			break
		}
	}
	return resp.StatusCode, body, nil
}

// l7Measurements are the L7 table's runs: what the L4 table measures
// (fixed rate, saturation at 4, 16 and 64 connections, a new connection
// per request), then gRPC's ping at the fixed rate and at saturation.
func l7Measurements(o l7Options) []kind {
	k := []kind{{
		name:  "fixed 1000qps c16",
		group: "fixed",
		args:  []string{"-qps", "1000", "-c", "16", "-t", o.fixed.String(), "-payload-size", payload},
	}}
	for _, c := range []int{4, 16, 64} {
		k = append(k, kind{
			name:  fmt.Sprintf("max qps c%d", c),
			group: "sat",
			args:  []string{"-qps", "0", "-c", strconv.Itoa(c), "-t", o.sat.String(), "-payload-size", payload},
		})
	}
	k = append(k, kind{
		name:  "new conn c4",
		group: "newconn",
		args:  []string{"-qps", "0", "-c", "4", "-keepalive=false", "-t", o.nc.String(), "-payload-size", payload},
	})
	if o.grpc {
		k = append(k, kind{
			name: "grpc 1000qps c16", group: "grpc", grpc: true,
			args: []string{"-grpc", "-ping", "-qps", "1000", "-c", "16", "-t", o.fixed.String(), "-payload-size", payload},
		}, kind{
			name: "grpc max qps c16", group: "grpc", grpc: true,
			args: []string{"-grpc", "-ping", "-qps", "0", "-c", "16", "-t", o.sat.String(), "-payload-size", payload},
		})
	}
	return k
}

// runL7 sets the L7 paths up, runs them interleaved, measures the xDS-fed
// waypoint's memory, and prints the L7 tables.
func (b *bench) runL7(ctx context.Context) error {
	fmt.Println("\n(L7: a proxy pod with HAProxy, a waypoint pod with kmesh-waypoint, a gRPC server)")
	st, err := b.setUpL7(ctx)
	if err != nil {
		return err
	}
	b.l7st = st
	kinds := l7Measurements(b.l7)
	for _, p := range st.paths {
		if err := b.check(ctx, p); err != nil {
			return fmt.Errorf("L7 path %s does not work: %w", p.key, err)
		}
		if b.l7.grpc {
			if err := b.checkGRPC(ctx, p); err != nil {
				return fmt.Errorf("L7 path %s does not work for gRPC: %w", p.key, err)
			}
		}
	}
	if b.l7.hold {
		return b.holdL7(ctx, st)
	}
	// Warm every path up (pools, the CPU frequency, the waypoint's heap).
	for _, p := range st.paths {
		if _, err := b.fortio(ctx, p, p.url, "-qps", "0", "-c", "16", "-t", "1s", "-payload-size", payload); err != nil {
			return fmt.Errorf("L7 warm-up of %s: %w", p.key, err)
		}
	}
	st.idleRSS = map[string]rssInfo{}
	for _, p := range st.paths {
		if p.proxy != nil {
			st.idleRSS[p.key] = readRSS(p.proxy.Pid())
		}
	}
	l1, _ := os.ReadFile("/proc/loadavg")
	st.load1 = strings.Fields(string(l1))
	start := time.Now()
	if st.res, err = b.interleave(ctx, st.paths, kinds); err != nil {
		return err
	}
	st.took = time.Since(start)
	l2, _ := os.ReadFile("/proc/loadavg")
	st.load2 = strings.Fields(string(l2))
	st.afterRSS = map[string]rssInfo{}
	for _, p := range st.paths {
		if p.proxy != nil {
			st.afterRSS[p.key] = readRSS(p.proxy.Pid())
		}
	}
	fmt.Printf("\r%80s\r", "")
	if b.l7.mem {
		if st.mem, err = b.waypointMemory(ctx); err != nil {
			return fmt.Errorf("waypoint memory: %w", err)
		}
	}
	b.printL7(st)
	return nil
}

// holdL7 leaves the L7 paths up for a person with a profiler.
func (b *bench) holdL7(ctx context.Context, st *l7State) error {
	fmt.Println("\nL7 paths are up; ^C removes everything. From the client pod (fortio beside the mesh's cgroup")
	fmt.Printf("for direct and HAProxy: %s; inside it for the waypoint: %s):\n", b.outside, b.box.Cgroup)
	for _, p := range st.paths {
		cg := b.outside
		if p.inMesh {
			cg = b.box.Cgroup
		}
		fmt.Printf("  %-9s sh -c 'echo $$ > %s/cgroup.procs && exec ip netns exec %s %s load -qps 1000 -c 16 -t 10s -payload-size 1024 %s'\n",
			p.key, cg, b.client.NetNS, b.bins.Fortio, p.url)
	}
	fmt.Printf("kmesh-waypoint: pid %d in %s, pprof: ip netns exec %s curl http://%s/debug/pprof/profile\n", st.wp.Pid(), st.wpPod.NetNS, st.wpPod.NetNS, waypointAdmin)
	fmt.Printf("HAProxy: pid %d in %s\n", st.haproxy.Pid(), st.proxyPod.NetNS)
	<-ctx.Done()
	return nil
}

// checkGRPC sends a short burst of gRPC pings down a path.
func (b *bench) checkGRPC(ctx context.Context, p *path) error {
	r, err := b.fortio(ctx, p, p.grpcTarget, "-grpc", "-ping", "-qps", "50", "-c", "1", "-t", "1s")
	if err != nil {
		return err
	}
	if r.failed() > 0 || r.count() == 0 {
		return fmt.Errorf("%d of %d pings failed (codes %v)", r.failed(), r.count(), r.RetCodes)
	}
	return nil
}

// rssInfo is a process's resident memory from /proc/<pid>/status, KiB.
type rssInfo struct {
	rss, anon, file, hwm int64
}

func readRSS(pid int) rssInfo {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return rssInfo{}
	}
	var r rssInfo
	for _, l := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		switch k {
		case "VmRSS":
			r.rss = n
		case "RssAnon":
			r.anon = n
		case "RssFile":
			r.file = n
		case "VmHWM":
			r.hwm = n
		}
	}
	return r
}

func mib(kib int64) string { return fmt.Sprintf("%.1f", float64(kib)/1024) }

// writeCSV writes the L4 samples to name and the L7 ones beside it
// (name with -l7 before its extension).
func (b *bench) writeCSV(name string) error {
	if b.results != nil {
		if err := b.results.writeCSV(name); err != nil {
			return err
		}
	}
	if b.l7st != nil && b.l7st.res != nil {
		ext := filepath.Ext(name)
		return b.l7st.res.writeCSV(strings.TrimSuffix(name, ext) + "-l7" + ext)
	}
	return nil
}
