package main

// The waypoint's memory with a mesh's worth of configuration: kmesh-waypoint
// (the real binary) in a pod of its own, connected with --xds-plaintext to
// a delta ADS server in this process (go-control-plane, serving what
// istiod sends a waypoint: the main_internal listener with a chain per
// service, inbound-vip EDS clusters, their endpoints, and the address xDS
// with a workload per endpoint). One of the services is routed to the
// bench's server pod, so the same waypoint can be loaded through the
// kernel's redirect.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/tests/nodebox"
	"github.com/kmesh-go/kmesh/waypoint/translate"
	"github.com/kmesh-go/kmesh/waypoint/translate/translatetest"
)

// wpMemResult is the memory table's figures (KiB, from /proc).
type wpMemResult struct {
	services, workloads int
	firstPush           rssInfo       // as soon as /ready says the configuration runs
	pushTook            time.Duration // process start to ready
	steady              rssInfo       // 10 s later, idle
	underLoad           rssInfo       // the highest VmRSS seen while loaded
	afterLoad           rssInfo
	heapSteady          float64 // MiB: the Go heap in use at steady state (/metrics)
	heapLoad            float64
	loadQPS             float64 // the saturation run's requests/s
	loadFailed          int64
}

// xdsIstiod is a delta ADS server with a linear cache per waypoint type.
type xdsIstiod struct {
	gs     *grpc.Server
	cancel context.CancelFunc
}

// startXDS serves cfg on addr inside the node's network namespace.
func (b *bench) startXDS(addr string, res map[string]map[string]types.Resource) (*xdsIstiod, error) {
	var l net.Listener
	err := b.box.InNode(func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	caches := map[string]cachev3.Cache{}
	for _, u := range []string{translate.TypeCluster, translate.TypeEndpoint, translate.TypeListener, translate.TypeRoute, translate.TypeAddress} {
		caches[u] = cachev3.NewLinearCache(u, cachev3.WithInitialResources(res[u]))
	}
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        caches,
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &xdsIstiod{gs: grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20)), cancel: cancel}
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s.gs, serverv3.NewServer(ctx, mux, serverv3.CallbackFuncs{}))
	go func() { _ = s.gs.Serve(l) }()
	return s, nil
}

func (s *xdsIstiod) stop() { s.gs.Stop(); s.cancel() }

// xdsConfig is istiod-shaped configuration for n services with three pods
// each (translatetest.Synthetic), the service at l7XVIP's endpoints
// pointed at the bench's server pod, and an address xDS with a workload
// per endpoint (up to workloads of them).
func xdsConfig(n, workloads int) (map[string]map[string]types.Resource, error) {
	in := translatetest.Synthetic(n)
	res := map[string]map[string]types.Resource{}
	for _, u := range []string{translate.TypeCluster, translate.TypeEndpoint, translate.TypeListener, translate.TypeRoute, translate.TypeAddress} {
		res[u] = map[string]types.Resource{}
	}
	for _, l := range in.Listeners {
		res[translate.TypeListener][l.GetName()] = l
	}
	for _, c := range in.Clusters {
		res[translate.TypeCluster][c.GetName()] = c
	}
	// Synthetic's service i has VIP 10.96.<i/256>.<i%256>.
	v := l7XVIP.As4()
	bench := int(v[2])<<8 | int(v[3])
	if bench >= n {
		return nil, fmt.Errorf("-wp-services %d: the service at %s (number %d) is not among them", n, l7XVIP, bench)
	}
	server := netip.AddrPortFrom(serverIP, 8080).String()
	host := regexp.MustCompile(`^svc-(\d+)\.`)
	nw := 0
	for name, cla := range in.Endpoints {
		i := -1
		if _, h, ok := strings.Cut(name, "|http|"); ok {
			if m := host.FindStringSubmatch(h); m != nil {
				i, _ = strconv.Atoi(m[1])
			}
		}
		for _, lle := range cla.GetEndpoints() {
			for _, e := range lle.GetLbEndpoints() {
				md := e.GetMetadata().GetFilterMetadata()["envoy.filters.listener.original_dst"]
				if i == bench {
					// The bench's service: its pods are the server pod.
					md.Fields["local"] = structpb.NewStringValue(server)
					e.GetEndpoint().GetAddress().GetEnvoyInternalAddress().EndpointId = server
					continue
				}
				ap, err := netip.ParseAddrPort(md.GetFields()["local"].GetStringValue())
				if err != nil || nw >= workloads || ap.Addr().As4()[2] == 0 {
					// 10.244.0.x are the box's own pods.
					continue
				}
				nw++
				w := &workloadapi.Workload{Uid: fmt.Sprintf("Kubernetes//Pod/ns-%d/svc-%d-%s", i%10, i, ap.Addr()),
					Name: fmt.Sprintf("svc-%d-%s", i, ap.Addr()), Namespace: fmt.Sprintf("ns-%d", i%10),
					Addresses: [][]byte{ap.Addr().AsSlice()}, TrustDomain: "cluster.local", ServiceAccount: fmt.Sprintf("svc-%d", i),
					WorkloadName: fmt.Sprintf("svc-%d", i), CanonicalName: fmt.Sprintf("svc-%d", i), CanonicalRevision: "v1",
					Node: "bench", ClusterId: "Kubernetes", Status: workloadapi.WorkloadStatus_HEALTHY,
					Services: map[string]*workloadapi.PortList{fmt.Sprintf("ns-%d/svc-%d.ns-%d.svc.cluster.local", i%10, i, i%10): {
						Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}},
				}
				res[translate.TypeAddress][w.Uid] = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
			}
		}
		res[translate.TypeEndpoint][name] = cla
	}
	// The bench's own pods, as istiod would list them.
	for _, p := range []struct {
		name string
		ip   netip.Addr
	}{{"client", clientIP}, {"server", serverIP}} {
		w := &workloadapi.Workload{Uid: "Kubernetes//Pod/bench/" + p.name, Name: p.name, Namespace: "bench",
			Addresses: [][]byte{p.ip.AsSlice()}, TrustDomain: "cluster.local", ServiceAccount: p.name,
			WorkloadName: p.name, CanonicalName: p.name, Status: workloadapi.WorkloadStatus_HEALTHY}
		res[translate.TypeAddress][w.Uid] = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
	}
	return res, nil
}

// waypointMemory runs the xDS-fed waypoint and reads its memory after the
// first push, at rest, under load and after it.
func (b *bench) waypointMemory(ctx context.Context) (*wpMemResult, error) {
	r := &wpMemResult{services: b.l7.services}
	cfg, err := xdsConfig(b.l7.services, b.l7.workloads)
	if err != nil {
		return nil, err
	}
	r.workloads = len(cfg[translate.TypeAddress])
	xds, err := b.startXDS(fmt.Sprintf("%s:%d", b.box.Gateway, waypointXDSPort), cfg)
	if err != nil {
		return nil, err
	}
	defer xds.stop()
	cfg = nil

	pod, err := b.box.AddPod(ctx, nodebox.PodSpec{Name: "waypoint-xds-0", Namespace: "bench", OutOfMesh: !b.l7.inMesh})
	if err != nil {
		return nil, err
	}
	defer b.box.RemovePod(context.Background(), pod)
	if pod.IP != waypointXIP {
		return nil, fmt.Errorf("host-local gave the xDS waypoint's pod %s, want %s", pod.IP, waypointXIP)
	}
	fmt.Printf("\r  waypoint memory: %d services, %d workloads over xDS   ", r.services, r.workloads)
	start := time.Now()
	wp, err := b.startWaypoint(pod, "kmesh-waypoint-xds",
		"--xds-address", fmt.Sprintf("%s:%d", b.box.Gateway, waypointXDSPort), "--xds-plaintext",
		"--pod-ip", waypointXIP.String(), "--pod-name", "waypoint-xds-0", "--pod-namespace", "bench",
		"--service-account", "waypoint", "--gateway-name", "waypoint-xds", "--node-name", "bench")
	if err != nil {
		return nil, err
	}
	defer wp.Stop(5 * time.Second)
	if err := b.waitWaypointReady(ctx, pod, wp); err != nil {
		return nil, err
	}
	r.pushTook = time.Since(start)
	r.firstPush = readRSS(wp.Pid())
	select {
	case <-time.After(10 * time.Second):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	r.steady = readRSS(wp.Pid())
	r.heapSteady = b.heapInuse(ctx, pod)
	b.saveProfile(ctx, pod, wp, "steady")

	// Load it through the kernel's redirect: the fixed rate, then
	// saturation, sampling its RSS.
	p := &path{key: "waypoint-xds", url: fmt.Sprintf("http://%s:80/", l7XVIP), inMesh: true, proxy: wp}
	if err := b.check(ctx, p); err != nil {
		return nil, fmt.Errorf("through the xDS-fed waypoint: %w", err)
	}
	stop := make(chan struct{})
	peak := make(chan rssInfo)
	go func() {
		var m rssInfo
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				peak <- m
				return
			case <-t.C:
				if x := readRSS(wp.Pid()); x.rss > m.rss {
					m = x
				}
			}
		}
	}()
	for _, args := range [][]string{
		{"-qps", "1000", "-c", "16", "-t", b.l7.fixed.String(), "-payload-size", payload},
		{"-qps", "0", "-c", "64", "-t", b.l7.fixed.String(), "-payload-size", payload},
	} {
		fr, err := b.fortio(ctx, p, p.url, args...)
		if err != nil {
			close(stop)
			<-peak
			return nil, err
		}
		r.loadFailed += fr.failed()
		r.loadQPS = fr.ActualQPS
	}
	r.heapLoad = b.heapInuse(ctx, pod)
	b.saveProfile(ctx, pod, wp, "load")
	close(stop)
	r.underLoad = <-peak
	r.afterLoad = readRSS(wp.Pid())
	return r, nil
}

// heapInuse reads go_memstats_heap_inuse_bytes from the waypoint's
// /metrics, in MiB.
func (b *bench) heapInuse(ctx context.Context, pod *nodebox.Pod) float64 {
	_, body, err := podGet(ctx, pod, fmt.Sprintf("http://%s/metrics", waypointAdmin))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, "go_memstats_heap_inuse_bytes "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f / (1 << 20)
		}
	}
	return 0
}

// saveProfile writes the waypoint's heap profile and smaps (-wp-profile).
func (b *bench) saveProfile(ctx context.Context, pod *nodebox.Pod, wp *nodebox.Proc, when string) {
	dir := b.l7.profileDir
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	if _, body, err := podGet(ctx, pod, fmt.Sprintf("http://%s/debug/pprof/heap", waypointAdmin)); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "heap-"+when+".pprof"), body, 0o644)
	}
	if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", wp.Pid())); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "smaps-"+when), raw, 0o644)
	}
}
