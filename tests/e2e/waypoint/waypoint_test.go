// Package waypoint runs kmesh-waypoint's xDS side against the real istiod:
// a waypoint Gateway with its ServiceAccount, Service and Pod (istiod's
// deployment controller is off: there is no kubelet to run what it would
// deploy), services and pods that use it, an HTTPRoute split, a
// VirtualService with most of what it can say, gRPC and TCP services and
// AuthorizationPolicies. It captures what istiod sends a waypoint into
// waypoint/translate/testdata (KMESH_UPDATE_GOLDEN=1) or checks that the
// structure is unchanged, and measures how fast a route change reaches a
// snapshot.
package waypoint

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"istio.io/istio/pkg/workloadapi"
	"k8s.io/client-go/dynamic"

	"github.com/kmesh-go/kmesh/internal/xdsclient"
	"github.com/kmesh-go/kmesh/tests/e2e/controlplane"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/translate"
	wpxds "github.com/kmesh-go/kmesh/waypoint/xds"
)

type (
	clusterProto  = clusterv3.Cluster
	listenerProto = listenerv3.Listener
)

func host(name string) string { return name + "." + ns + ".svc.cluster.local" }

func TestWaypoint(t *testing.T) {
	if os.Getenv("KMESH_E2E") != "1" {
		t.Skip("end-to-end: set KMESH_E2E=1 (needs root and tests/e2e/.bin)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	netns, dir := controlplane.Sandbox(t, "kmesh-e2e-wp")
	crds, err := controlplane.GatewayAPICRDs(ctx, "experimental")
	if err != nil {
		t.Fatal(err)
	}
	cp, err := controlplane.Start(ctx, controlplane.Options{Dir: dir, NetNS: netns, ExtraCRDFiles: crds,
		// Its templates need injection config this setup lacks; the test
		// creates the waypoint's Service and Pod itself.
		IstiodEnv: []string{"PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER=false"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("istiod.log (end):\n%s", cp.LogTail("istiod", 6000))
			// The sandbox goes with the test; keep the whole log.
			if b, err := os.ReadFile(cp.LogPath("istiod")); err == nil {
				keep := filepath.Join(os.TempDir(), "kmesh-e2e-waypoint-istiod.log")
				if os.WriteFile(keep, b, 0o644) == nil {
					t.Logf("istiod.log kept at %s", keep)
				}
			}
		}
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	dyn, err := dynamic.NewForConfig(cp.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{ctx: ctx, k8s: cp.Clientset, dyn: dyn}
	w.setup(t)

	// istiod writes the waypoint's address into the Gateway's status; only
	// then do services name it as their waypoint.
	waitFor(t, time.Minute, "Gateway.status.addresses", func() (bool, string) {
		a, err := w.gatewayAddresses()
		return err == nil && len(a) > 0, fmt.Sprint(a, err, "; ", w.gatewayStatus())
	})
	addrs, _ := w.gatewayAddresses()
	t.Logf("Gateway %s/%s status.addresses: %v", ns, gatewayName, addrs)

	// The waypoint's identity on 15012: a token for its ServiceAccount.
	token, err := cp.ServiceAccountToken(ctx, ns, waypointSA, controlplane.IstioCAAudience)
	if err != nil {
		t.Fatal(err)
	}
	root, err := cp.RootCertPEM(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile, rootFile := filepath.Join(dir, "waypoint-token"), filepath.Join(dir, "root-cert.pem")
	must(t, os.WriteFile(tokenFile, []byte(token), 0o600))
	must(t, os.WriteFile(rootFile, root, 0o644))
	node := wpxds.Node{PodIP: netip.MustParseAddr(waypointIP), PodName: "waypoint-0", Namespace: ns,
		ServiceAccount: waypointSA, GatewayName: gatewayName, NodeName: "node-a"}
	dial := func(ctx context.Context, addr string) (net.Conn, error) { return cp.DialContext(ctx, "tcp", addr) }

	t.Run("Capture", func(t *testing.T) { capture(t, ctx, cp, w, node, tokenFile, rootFile, dial) })
	t.Run("SessionLatency", func(t *testing.T) { sessionLatency(t, ctx, cp, w, node, tokenFile, rootFile, dial) })
	t.Run("GatewayPolicy", func(t *testing.T) { gatewayPolicyCapture(t, ctx, cp, w, node, tokenFile, rootFile, dial) })
}

// connectRecorder connects to istiod as the waypoint and records.
func connectRecorder(t *testing.T, ctx context.Context, cp *controlplane.ControlPlane, node wpxds.Node, tokenFile, rootFile string,
	dial func(context.Context, string) (net.Conn, error)) *recorder {
	t.Helper()
	r := newRecorder()
	var subs []xdsclient.Subscription
	for _, u := range []string{translate.TypeCluster, translate.TypeEndpoint, translate.TypeListener, translate.TypeRoute, translate.TypeAddress} {
		subs = append(subs, xdsclient.Subscription{TypeURL: u, Wildcard: u != translate.TypeEndpoint && u != translate.TypeRoute})
	}
	c, err := xdsclient.New(xdsclient.Config{Address: cp.IstiodTLSAddr, RootCertFile: rootFile, TokenFile: tokenFile,
		ServerName: controlplane.IstiodServerName, NodeID: node.ID(), Metadata: node.Metadata(), Subscriptions: subs, Dialer: dial}, r)
	if err != nil {
		t.Fatal(err)
	}
	r.client = c
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { c.Run(cctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// chainNames lists main_internal's chains and, per chain, its HTTP
// filters' type URLs.
func chainNames(r *recorder) map[string][]string {
	out := map[string][]string{}
	a := r.snapshot(translate.TypeListener)["main_internal"]
	if a == nil {
		return out
	}
	l, err := decode[*listenerv3.Listener](a)
	if err != nil {
		return out
	}
	for _, fc := range l.GetFilterChains() {
		var filters []string
		for _, f := range fc.GetFilters() {
			filters = append(filters, f.GetTypedConfig().GetTypeUrl())
			if h, err := decode[*hcmv3.HttpConnectionManager](f.GetTypedConfig()); err == nil && strings.HasSuffix(f.GetTypedConfig().GetTypeUrl(), "HttpConnectionManager") {
				for _, hf := range h.GetHttpFilters() {
					filters = append(filters, hf.GetTypedConfig().GetTypeUrl())
				}
			}
		}
		out[fc.GetName()] = filters
	}
	return out
}

func hasRBAC(filters []string) bool {
	return slices.Contains(filters, "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC")
}

var wantChains = []string{
	"inbound-vip|80|http|" + host("web"), "inbound-vip|8081|http|" + host("web"), "inbound-vip|8081|tcp|" + host("web"),
	"inbound-vip|9080|http|" + host("reviews"), "inbound-vip|9090|http|" + host("grpc-echo"),
	"inbound-vip|5432|tcp|" + host("db"), "inbound-vip|5432|tcp|" + host("db-replica"), "inbound-vip|80|http|" + host("secure"),
	"direct-http", "direct-tcp",
}

func capture(t *testing.T, ctx context.Context, cp *controlplane.ControlPlane, w *world, node wpxds.Node, tokenFile, rootFile string,
	dial func(context.Context, string) (net.Conn, error)) {
	r := connectRecorder(t, ctx, cp, node, tokenFile, rootFile, dial)
	waitFor(t, time.Minute, "istiod's waypoint config", func() (bool, string) {
		chains := chainNames(r)
		for _, c := range wantChains {
			if _, ok := chains[c]; !ok {
				return false, "no chain " + c + fmt.Sprint(" in ", slices.Sorted(mapsKeys(chains)))
			}
		}
		if !hasRBAC(chains["inbound-vip|80|http|"+host("secure")]) {
			return false, "secure's chain has no RBAC yet"
		}
		if hasRBAC(chains["inbound-vip|80|http|"+host("web")]) {
			return false, "web's chain has RBAC"
		}
		if _, ok := r.snapshot(translate.TypeCluster)["inbound-vip|9080|http/v1|"+host("reviews")]; !ok {
			return false, "no subset cluster for reviews v1 yet"
		}
		// Every EDS cluster answered.
		eds := r.snapshot(translate.TypeEndpoint)
		for _, n := range r.client.Names(translate.TypeEndpoint) {
			if eds[n] == nil {
				return false, "no endpoints for " + n
			}
		}
		if len(eds) == 0 {
			return false, "no EDS yet"
		}
		// The address xDS names the waypoint for the service.
		svc := serviceAddress(r, "web")
		if svc.GetWaypoint() == nil {
			return false, "the address xDS has no waypoint for web yet"
		}
		return true, ""
	})
	svc := serviceAddress(r, "web")
	t.Logf("address xDS: service web waypoint = %v", svc.GetWaypoint())
	if h := svc.GetWaypoint().GetHostname(); h == nil || h.GetHostname() != host(gatewayName) {
		t.Errorf("web's waypoint %v, want hostname %s", svc.GetWaypoint(), host(gatewayName))
	}
	for typeURL, res := range r.state {
		t.Logf("%s: %d resources", typeURL, len(res))
	}
	writeOrCompare(t, "istiod", []string{translate.TypeListener, translate.TypeCluster, translate.TypeEndpoint, translate.TypeRoute, translate.TypeAddress}, r)
}

// serviceAddress is a service of the demo namespace from the address xDS.
func serviceAddress(r *recorder, name string) *workloadapi.Service {
	for _, a := range r.snapshot(translate.TypeAddress) {
		addr, err := decode[*workloadapi.Address](a)
		if err != nil {
			continue
		}
		if s := addr.GetService(); s != nil && s.GetName() == name && s.GetNamespace() == ns {
			return s
		}
	}
	return nil
}

// sessionLatency runs the waypoint's own session and changes the split
// again and again: each change must reach a snapshot, and the time from
// istiod's response to the snapshot handed over stays within budget.
func sessionLatency(t *testing.T, ctx context.Context, cp *controlplane.ControlPlane, w *world, node wpxds.Node, tokenFile, rootFile string,
	dial func(context.Context, string) (net.Conn, error)) {
	var mu sync.Mutex
	var snaps []*model.Snapshot
	var at []time.Time
	s, err := wpxds.New(wpxds.Config{Address: cp.IstiodTLSAddr, RootCertFile: rootFile, TokenFile: tokenFile,
		ServerName: controlplane.IstiodServerName, Dialer: dial, Node: node, MinBackoff: 50 * time.Millisecond,
		Apply: func(sn *model.Snapshot) error {
			mu.Lock()
			snaps = append(snaps, sn)
			at = append(at, time.Now())
			mu.Unlock()
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.Run(sctx); close(done) }()
	defer func() { cancel(); <-done }()
	latest := func() (*model.Snapshot, time.Time) {
		mu.Lock()
		defer mu.Unlock()
		if len(snaps) == 0 {
			return nil, time.Time{}
		}
		return snaps[len(snaps)-1], at[len(at)-1]
	}
	weights := func(sn *model.Snapshot) (uint32, uint32) {
		if sn == nil || len(sn.Listeners) == 0 {
			return 0, 0
		}
		c := sn.Listeners[0].Chains["inbound-vip|80|http|"+host("web")]
		if c == nil || c.HTTP == nil || c.HTTP.Routes == nil {
			return 0, 0
		}
		for _, vh := range c.HTTP.Routes.VirtualHosts {
			for _, r := range vh.Routes {
				if r.Forward != nil && r.Forward.Weighted != nil && len(r.Forward.Weighted.Clusters) == 2 {
					return r.Forward.Weighted.Clusters[0].Weight, r.Forward.Weighted.Clusters[1].Weight
				}
			}
		}
		return 0, 0
	}
	waitFor(t, time.Minute, "first snapshot with the 90/10 split", func() (bool, string) {
		sn, _ := latest()
		a, b := weights(sn)
		return a == 90 && b == 10, fmt.Sprintf("weights %d/%d", a, b)
	})
	sn, _ := latest()
	checkLiveSnapshot(t, sn)

	var e2e []time.Duration
	change := func(i int) {
		w1 := int64(90 - i)
		start := time.Now()
		w.apply(t, gvrHTTPRoute, httpRoute(w1, 100-w1))
		waitFor(t, 30*time.Second, fmt.Sprintf("split %d/%d in a snapshot", w1, 100-w1), func() (bool, string) {
			sn, when := latest()
			a, b := weights(sn)
			if a == uint32(w1) && b == uint32(100-w1) {
				e2e = append(e2e, when.Sub(start))
				return true, ""
			}
			return false, fmt.Sprintf("weights %d/%d", a, b)
		})
	}
	for i := 1; i <= 20; i++ {
		change(i)
	}
	// istiod restarts: the session keeps its snapshot, resumes, and the
	// next change arrives as before.
	before := s.Stats()
	must(t, cp.RestartIstiod(ctx))
	if sn, _ := latest(); sn == nil {
		t.Fatal("no snapshot kept while istiod was away")
	}
	change(21)
	st := s.Stats()
	if st.Connects <= before.Connects {
		t.Errorf("no reconnect after istiod's restart: %+v", st.Stats)
	}
	slices.Sort(e2e)
	t.Logf("route change, Kubernetes write -> snapshot (istiod's debounce included): p50 %v, max %v over %d changes",
		e2e[len(e2e)/2], e2e[len(e2e)-1], len(e2e))
	t.Logf("istiod response -> snapshot handed over: last %v, p50 %v, p99 %v over %d snapshots; NACKs %d, unsupported %d (%d fail closed)",
		st.LastLatency, st.P50Latency, st.P99Latency, st.Snapshots, st.NACKs, st.Unsupported, st.FailClosed)
	if st.P99Latency > 100*time.Millisecond {
		t.Errorf("p99 response-to-snapshot latency %v, budget 100ms", st.P99Latency)
	}
	if st.NACKs != 0 {
		t.Errorf("the session NACKed istiod's config: %s", st.LastNACK)
	}
}

// checkLiveSnapshot checks the translated snapshot of the live config.
func checkLiveSnapshot(t *testing.T, sn *model.Snapshot) {
	t.Helper()
	l := sn.Listeners[0]
	if l.Address.Port() != 15019 || !l.ProxyProtocol {
		t.Errorf("listener %s at %s, PROXY %v", l.Name, l.Address, l.ProxyProtocol)
	}
	for dst, want := range map[string]string{
		"10.96.10.10:80":   "inbound-vip|80|http|" + host("web"),
		"10.96.10.40:5432": "inbound-vip|5432|tcp|" + host("db"),
		"10.96.10.30:9090": "inbound-vip|9090|http|" + host("grpc-echo"),
	} {
		if got := l.Select.Select(model.ConnInfo{Destination: netip.MustParseAddrPort(dst), Protocol: model.ProtocolHTTP1}); got != want {
			t.Errorf("%s -> %q, want %q", dst, got, want)
		}
	}
	if c := l.Chains["inbound-vip|80|http|"+host("secure")]; c == nil || c.Deny == nil || c.Deny.HTTPStatus != 403 {
		t.Errorf("secure's chain does not deny: %+v", c)
	}
}

// gatewayPolicyCapture adds a policy on the whole waypoint: every HTTP
// chain gets RBAC (and denies here). Only the listeners are captured.
func gatewayPolicyCapture(t *testing.T, ctx context.Context, cp *controlplane.ControlPlane, w *world, node wpxds.Node, tokenFile, rootFile string,
	dial func(context.Context, string) (net.Conn, error)) {
	w.apply(t, gvrAuthz, gatewayPolicy())
	r := connectRecorder(t, ctx, cp, node, tokenFile, rootFile, dial)
	waitFor(t, time.Minute, "RBAC on every HTTP chain", func() (bool, string) {
		chains := chainNames(r)
		if len(chains) == 0 {
			return false, "no listener yet"
		}
		for name, f := range chains {
			if strings.Contains(name, "|http|") && !hasRBAC(f) {
				return false, name + " has no RBAC"
			}
		}
		return true, ""
	})
	writeOrCompare(t, "istiod-authz", []string{translate.TypeListener}, r)
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
