package xds

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	xdsmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	networkv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/network/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/internal/xdsclient"
	"github.com/kmesh-go/kmesh/internal/xdsclient/xdstest"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/translate"
	"github.com/kmesh-go/kmesh/waypoint/translate/translatetest"
)

// fakeIstiod is a delta ADS server serving the waypoint's types.
type fakeIstiod struct{ *xdstest.Server }

var waypointTypes = []string{translate.TypeCluster, translate.TypeEndpoint, translate.TypeListener, translate.TypeRoute, translate.TypeAddress}

func startIstiod(t *testing.T) *fakeIstiod { return &fakeIstiod{xdstest.Start(t, waypointTypes...)} }

// serve puts a translate.Input on the server.
func (f *fakeIstiod) serve(in translate.Input) {
	ls, cs, es := map[string]types.Resource{}, map[string]types.Resource{}, map[string]types.Resource{}
	for _, l := range in.Listeners {
		ls[l.GetName()] = l
	}
	for _, c := range in.Clusters {
		cs[c.GetName()] = c
	}
	for n, e := range in.Endpoints {
		es[n] = e
	}
	f.Set(translate.TypeCluster, cs)
	f.Set(translate.TypeEndpoint, es)
	f.Set(translate.TypeListener, ls)
}

// applied collects the snapshots a session hands over.
type applied struct {
	mu    sync.Mutex
	snaps []*model.Snapshot
}

func (a *applied) apply(s *model.Snapshot) error {
	a.mu.Lock()
	a.snaps = append(a.snaps, s)
	a.mu.Unlock()
	return nil
}

func (a *applied) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.snaps)
}

func (a *applied) wait(t *testing.T, what string, cond func(*model.Snapshot) bool) *model.Snapshot {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		a.mu.Lock()
		var last *model.Snapshot
		if len(a.snaps) > 0 {
			last = a.snaps[len(a.snaps)-1]
		}
		a.mu.Unlock()
		if last != nil && cond(last) {
			return last
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no snapshot with %s", what)
	return nil
}

// runSession starts a session with cfg; it ends with the test.
func runSession(t *testing.T, cfg Config) *Session {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func testNode() Node {
	return Node{PodIP: netip.MustParseAddr("10.250.0.2"), PodName: "waypoint-0", Namespace: "wp", ServiceAccount: "waypoint", GatewayName: "waypoint"}
}

func workload(name, ip string) (string, *workloadapi.Address) {
	a := netip.MustParseAddr(ip).As4()
	w := &workloadapi.Workload{Uid: "Kubernetes//Pod/wp/" + name, Name: name, Namespace: "wp", ServiceAccount: "default",
		Addresses: [][]byte{a[:]}}
	return w.Uid, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

func chains(s *model.Snapshot) int {
	if len(s.Listeners) == 0 {
		return 0
	}
	return len(s.Listeners[0].Chains)
}

func TestSession(t *testing.T) {
	srv := startIstiod(t)
	srv.serve(translatetest.Synthetic(2))
	n, w := workload("client-0", "10.250.9.9")
	srv.Set(translate.TypeAddress, map[string]types.Resource{n: w})

	var got applied
	s := runSession(t, Config{Address: srv.Addr(), Plaintext: true, Node: testNode(), Apply: got.apply,
		WarmTimeout: time.Second, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})

	first := got.wait(t, "two services and the peer", func(sn *model.Snapshot) bool {
		return chains(sn) == 2 && len(sn.Clusters) == 2 && sn.Peers.Lookup(netip.MustParseAddr("10.250.9.9")) != nil
	})
	l := first.Listeners[0]
	if l.Address != translate.DefaultListenAddress || l.Select.Select(model.ConnInfo{Destination: netip.MustParseAddrPort("10.96.0.1:80")}) != "inbound-vip|80|http|svc-1.ns-1.svc.cluster.local" {
		t.Fatalf("listener %+v", l)
	}
	if c := first.Clusters["inbound-vip|80|http|svc-1.ns-1.svc.cluster.local"]; len(c.Endpoints) != 1 || len(c.Endpoints[0]) != 3 {
		t.Fatalf("cluster %+v", c)
	}
	if !s.Ready() {
		t.Fatal("not ready after the first snapshot")
	}

	t.Run("Warming", func(t *testing.T) {
		// A third service: its cluster and chain arrive, its endpoints
		// not yet. No snapshot routes to a cluster without endpoints.
		three := translatetest.Synthetic(3)
		newCluster := three.Clusters[2]
		before := got.count()
		srv.Set(translate.TypeCluster, map[string]types.Resource{newCluster.GetName(): newCluster})
		srv.Set(translate.TypeListener, map[string]types.Resource{"main_internal": three.Listeners[0]})
		time.Sleep(200 * time.Millisecond)
		if got.count() != before {
			t.Fatalf("a snapshot while %s warms", newCluster.GetName())
		}
		if s.Stats().Warming != 1 {
			t.Fatalf("warming %d", s.Stats().Warming)
		}
		srv.Set(translate.TypeEndpoint, map[string]types.Resource{newCluster.GetName(): three.Endpoints[newCluster.GetName()]})
		sn := got.wait(t, "the third service with endpoints", func(sn *model.Snapshot) bool { return chains(sn) == 3 })
		if c := sn.Clusters[newCluster.GetName()]; c == nil || len(c.Endpoints) != 1 || len(c.Endpoints[0]) != 3 {
			t.Fatalf("warmed cluster %+v", c)
		}
	})

	t.Run("WarmingTimesOut", func(t *testing.T) {
		four := translatetest.Synthetic(4)
		c := four.Clusters[3]
		start := time.Now()
		srv.Set(translate.TypeCluster, map[string]types.Resource{c.GetName(): c})
		srv.Set(translate.TypeListener, map[string]types.Resource{"main_internal": four.Listeners[0]})
		sn := got.wait(t, "the fourth service", func(sn *model.Snapshot) bool { return chains(sn) == 4 })
		if d := time.Since(start); d < 900*time.Millisecond {
			t.Fatalf("published after %v, before the warming timeout", d)
		}
		if ep := sn.Clusters[c.GetName()].Endpoints; len(ep) != 0 {
			t.Fatalf("endpoints %+v for a cluster that never got any", ep)
		}
	})

	t.Run("NACKBadListener", func(t *testing.T) {
		// A matcher naming a chain the listener lacks: Envoy would refuse
		// the listener; so do we, keeping the last good one.
		good := s.Snapshot()
		bad := proto.Clone(translatetest.Synthetic(4).Listeners[0]).(*listenerv3.Listener)
		bad.FilterChains = bad.FilterChains[:3]
		n := len(srv.Requests())
		before := got.count()
		srv.Set(translate.TypeListener, map[string]types.Resource{"main_internal": bad})
		reason := srv.NACK(n, translate.TypeListener)
		if !strings.Contains(reason, "main_internal") || !strings.Contains(reason, "does not have") {
			t.Fatalf("NACK reason %q", reason)
		}
		time.Sleep(100 * time.Millisecond)
		if got.count() != before || s.Snapshot() != good || chains(s.Snapshot()) != 4 {
			t.Fatal("the last good listener was not kept")
		}
		if st := s.Stats(); st.NACKs != 1 || !strings.Contains(st.LastNACK, "does not have") {
			t.Fatalf("stats %+v", st.Stats)
		}
	})

	t.Run("NACKUnsupportedCluster", func(t *testing.T) {
		name := "inbound-vip|80|http|svc-0.ns-0.svc.cluster.local"
		c := proto.Clone(translatetest.Synthetic(1).Clusters[0]).(*clusterv3.Cluster)
		po := &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http3ProtocolOptions{
				Http3ProtocolOptions: &corev3.Http3ProtocolOptions{}}}}}
		a, _ := anypb.New(po)
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": a}
		n := len(srv.Requests())
		srv.Set(translate.TypeCluster, map[string]types.Resource{name: c})
		if reason := srv.NACK(n, translate.TypeCluster); !strings.Contains(reason, name) || !strings.Contains(reason, "HTTP/3") {
			t.Fatalf("NACK reason %q", reason)
		}
		if p := s.Snapshot().Clusters[name].Protocol; p != "http1" {
			t.Fatalf("cluster protocol %q: the last good version was not kept", p)
		}
	})

	t.Run("IstiodAway", func(t *testing.T) {
		last := s.Snapshot()
		connects := s.Stats().Connects
		srv.Stop()
		time.Sleep(150 * time.Millisecond)
		if s.Snapshot() != last {
			t.Fatal("the snapshot changed while istiod was away")
		}
		// While away, the fourth service's endpoints appear; the resumed
		// stream brings them.
		four := translatetest.Synthetic(4)
		name := four.Clusters[3].GetName()
		srv.Set(translate.TypeEndpoint, map[string]types.Resource{name: four.Endpoints[name]})
		srv.Restart()
		got.wait(t, "the fourth service's endpoints after the restart", func(sn *model.Snapshot) bool {
			c := sn.Clusters[name]
			return c != nil && len(c.Endpoints) == 1 && len(c.Endpoints[0]) == 3
		})
		if st := s.Stats(); st.Connects <= connects {
			t.Fatalf("no reconnect: %+v", st.Stats)
		}
	})

	st := s.Stats()
	t.Logf("snapshots %d, response-to-snapshot p50 %v p99 %v", st.Snapshots, st.P50Latency, st.P99Latency)
}

func TestNode(t *testing.T) {
	n := testNode()
	n.defaults()
	if id := n.ID(); id != "waypoint~10.250.0.2~waypoint-0.wp~wp.svc.cluster.local" {
		t.Fatalf("id %s", id)
	}
	m := n.Metadata()
	if m["NAMESPACE"] != "wp" || m["SERVICE_ACCOUNT"] != "waypoint" || m["INSTANCE_IPS"] != "10.250.0.2" || m["CLUSTER_ID"] != "Kubernetes" ||
		m["WORKLOAD_NAME"] != "waypoint" || m["LABELS"].(map[string]string)[GatewayNameLabel] != "waypoint" {
		t.Fatalf("metadata %v", m)
	}
	if _, err := New(Config{Node: Node{}, Apply: func(*model.Snapshot) error { return nil }}); err == nil {
		t.Fatal("a node without identity accepted")
	}
}

// rdsConfig is a dispatch listener whose one chain takes its routes from
// RDS, and the route and cluster it names.
func rdsConfig(routeWeight uint32) (*listenerv3.Listener, *routev3.RouteConfiguration) {
	hcm := &hcmv3.HttpConnectionManager{StatPrefix: "rds",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "web-routes",
			ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: translatetest.MustAny(&routerv3.Router{})}}}}
	l := &listenerv3.Listener{Name: "main_internal",
		ListenerSpecifier: &listenerv3.Listener_InternalListener{InternalListener: &listenerv3.Listener_InternalListenerConfig{}},
		FilterChains: []*listenerv3.FilterChain{{Name: "web", Filters: []*listenerv3.Filter{{Name: "hcm",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: translatetest.MustAny(hcm)}}}}},
		FilterChainMatcher: translatetest.ExactTree(&networkv3.DestinationPortInput{},
			map[string]*xdsmatcher.Matcher_OnMatch{"80": translatetest.ToChain("web")}, nil)}
	rc := &routev3.RouteConfiguration{Name: "web-routes", VirtualHosts: []*routev3.VirtualHost{{Name: "web", Domains: []string{"*"},
		Routes: []*routev3.Route{{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{
				WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
					{Name: "a", Weight: wrapperspb.UInt32(routeWeight)}, {Name: "b", Weight: wrapperspb.UInt32(100 - routeWeight)}}}}}}}}}}}
	return l, rc
}

// TestSessionRDS: a listener naming a route configuration subscribes it,
// waits for it (listener warming, as Envoy's), and follows its changes.
func TestSessionRDS(t *testing.T) {
	srv := startIstiod(t)
	l, rc := rdsConfig(90)
	srv.Set(translate.TypeListener, map[string]types.Resource{"main_internal": l})
	srv.Set(translate.TypeCluster, map[string]types.Resource{})
	var got applied
	s := runSession(t, Config{Address: srv.Addr(), Plaintext: true, Node: testNode(), Apply: got.apply, WarmTimeout: 5 * time.Second})

	weight := func(sn *model.Snapshot) uint32 {
		rt := sn.Listeners[0].Chains["web"].HTTP.Routes
		if rt == nil {
			return 0
		}
		return rt.VirtualHosts[0].Routes[0].Forward.Weighted.Clusters[0].Weight
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Warming == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got.count() != 0 || s.Stats().Warming != 1 {
		t.Fatalf("snapshots %d, warming %d: the listener should wait for its routes", got.count(), s.Stats().Warming)
	}
	srv.Set(translate.TypeRoute, map[string]types.Resource{"web-routes": rc})
	got.wait(t, "the routes from RDS", func(sn *model.Snapshot) bool { return weight(sn) == 90 })
	_, rc2 := rdsConfig(50)
	srv.Set(translate.TypeRoute, map[string]types.Resource{"web-routes": rc2})
	got.wait(t, "the changed routes", func(sn *model.Snapshot) bool { return weight(sn) == 50 })

	// A delta removal of the route configuration the listener still names
	// is ignored, as Envoy ignores it: the last routes keep serving
	// (without them every request would get 503
	// route_configuration_missing).
	n := len(srv.Requests())
	srv.Set(translate.TypeRoute, map[string]types.Resource{"web-routes": nil})
	srv.WaitRequest(n, func(r *discoveryv3.DeltaDiscoveryRequest) bool { return r.GetTypeUrl() == translate.TypeRoute })
	time.Sleep(100 * time.Millisecond)
	if w := weight(s.Snapshot()); w != 50 {
		t.Errorf("after an RDS removal of routes in use: weight %d, want the last routes (50)", w)
	}
}

// The latency the session reports runs to the end of Apply (the engine
// has the snapshot in effect), and Recent lists each snapshot applied.
func TestSessionLatencyIncludesApply(t *testing.T) {
	srv := startIstiod(t)
	srv.serve(translatetest.Synthetic(2))
	const slow = 30 * time.Millisecond
	var got applied
	s := runSession(t, Config{Address: srv.Addr(), Plaintext: true, Node: testNode(),
		Apply: func(sn *model.Snapshot) error { time.Sleep(slow); return got.apply(sn) }, MinBackoff: 20 * time.Millisecond})
	got.wait(t, "two services", func(sn *model.Snapshot) bool { return chains(sn) == 2 })
	three := translatetest.Synthetic(3)
	c := three.Clusters[2]
	srv.Set(translate.TypeEndpoint, map[string]types.Resource{c.GetName(): three.Endpoints[c.GetName()]})
	srv.Set(translate.TypeCluster, map[string]types.Resource{c.GetName(): c})
	srv.Set(translate.TypeListener, map[string]types.Resource{"main_internal": three.Listeners[0]})
	last := got.wait(t, "three services", func(sn *model.Snapshot) bool { return chains(sn) == 3 })

	var st Stats
	deadline := time.Now().Add(5 * time.Second)
	for {
		st = s.Stats()
		if n := len(st.Recent); n > 0 && st.Recent[n-1].Version == last.Version || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := len(st.Recent); n == 0 || st.Recent[n-1].Version != last.Version {
		t.Fatalf("Recent %+v does not end with %s", st.Recent, last.Version)
	}
	if n := got.count(); len(st.Recent) != n {
		t.Errorf("Recent has %d entries for %d snapshots applied", len(st.Recent), n)
	}
	for _, a := range st.Recent {
		if a.Latency < slow || a.At.IsZero() {
			t.Errorf("snapshot %s: latency %v with an Apply of %v, at %v", a.Version, a.Latency, slow, a.At)
		}
	}
	if st.LastLatency < slow || st.P50Latency < slow {
		t.Errorf("last %v, p50 %v: Apply's %v not counted", st.LastLatency, st.P50Latency, slow)
	}
}

// An answer settles only its own type's warming: an EDS cluster and an
// RDS route configuration may share a name.
func TestSettleIsPerType(t *testing.T) {
	s := &Session{warming: map[string]time.Time{
		warmKey(translate.TypeRoute, "x"):    time.Now(),
		warmKey(translate.TypeEndpoint, "y"): time.Now(),
	}}
	s.settle(translate.TypeEndpoint, []xdsclient.Resource{{Name: "x"}}, []string{"x"})
	if _, ok := s.warming[warmKey(translate.TypeRoute, "x")]; !ok {
		t.Fatal("an EDS answer for x settled the RDS name x")
	}
	s.settle(translate.TypeEndpoint, []xdsclient.Resource{{Name: "y"}}, nil)
	s.settle(translate.TypeRoute, nil, []string{"x"})
	if len(s.warming) != 0 {
		t.Fatalf("still warming: %v", s.warming)
	}
}

// A cluster whose endpoints timed out once does not warm again on a CDS
// response that changes nothing (istiod resends every cluster on each
// full push; here a response whose only cluster is rejected): nothing
// timed that warming out, and the stale entry then let the next new
// cluster be published at once, without its endpoints, rather than warm.
// Envoy warms only a cluster that is added or changed.
func TestTimedOutClusterDoesNotWarmAgain(t *testing.T) {
	srv := startIstiod(t)
	srv.serve(translatetest.Synthetic(2))
	var got applied
	const warm = 400 * time.Millisecond
	s := runSession(t, Config{Address: srv.Addr(), Plaintext: true, Node: testNode(), Apply: got.apply,
		WarmTimeout: warm, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	got.wait(t, "two services", func(sn *model.Snapshot) bool { return len(sn.Clusters) == 2 })

	// x never gets endpoints: published without them after the timeout.
	four := translatetest.Synthetic(4)
	x, y := four.Clusters[2], four.Clusters[3]
	srv.Set(translate.TypeCluster, map[string]types.Resource{x.GetName(): x})
	got.wait(t, "x after its warming timed out", func(sn *model.Snapshot) bool { return sn.Clusters[x.GetName()] != nil })

	// A CDS response that changes nothing: its one cluster is NACKed.
	n := len(srv.Requests())
	bad := proto.Clone(y).(*clusterv3.Cluster)
	bad.Name = "bad"
	bad.ConnectTimeout = durationpb.New(-time.Second)
	srv.Set(translate.TypeCluster, map[string]types.Resource{"bad": bad})
	srv.NACK(n, translate.TypeCluster)
	time.Sleep(50 * time.Millisecond)
	if w := s.Stats().Warming; w != 0 {
		t.Errorf("warming %d after a CDS response that changed nothing", w)
	}
	time.Sleep(warm + 100*time.Millisecond)

	// A new cluster y warms for its own timeout: its endpoints, 100 ms
	// later, are in the first snapshot that has y.
	before := got.count()
	srv.Set(translate.TypeCluster, map[string]types.Resource{y.GetName(): y})
	time.Sleep(100 * time.Millisecond)
	srv.Set(translate.TypeEndpoint, map[string]types.Resource{y.GetName(): four.Endpoints[y.GetName()]})
	got.wait(t, "y", func(sn *model.Snapshot) bool { return sn.Clusters[y.GetName()] != nil })
	got.mu.Lock()
	defer got.mu.Unlock()
	for _, sn := range got.snaps[before:] {
		if c := sn.Clusters[y.GetName()]; c != nil {
			if len(c.Endpoints) == 0 {
				t.Fatalf("snapshot %s has y without endpoints, %v after y arrived (warming timeout %v)", sn.Version, "<100ms", warm)
			}
			break
		}
	}
}

// The first snapshot waits for listeners and clusters that were accepted:
// a first LDS response whose dispatch listener is NACKed is not a
// configuration to start serving (and be reported ready) with. Istio's
// readiness for Envoy likewise waits for a successful LDS and CDS update;
// a rejected one is "config received from XDS server, but was rejected".
func TestFirstSnapshotWaitsForAcceptedListeners(t *testing.T) {
	srv := startIstiod(t)
	in := translatetest.Synthetic(2)
	srv.serve(in)
	bad := proto.Clone(in.Listeners[0]).(*listenerv3.Listener)
	bad.FilterChains = bad.FilterChains[:1] // the matcher names a chain it lacks
	srv.Set(translate.TypeListener, map[string]types.Resource{"main_internal": bad})
	var got applied
	s := runSession(t, Config{Address: srv.Addr(), Plaintext: true, Node: testNode(), Apply: got.apply,
		WarmTimeout: time.Second, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})

	srv.NACK(0, translate.TypeListener)
	time.Sleep(200 * time.Millisecond)
	if n := got.count(); n != 0 || s.Ready() {
		t.Fatalf("%d snapshots (ready %v) after the only listener was NACKed", n, s.Ready())
	}
	srv.Set(translate.TypeListener, map[string]types.Resource{"main_internal": in.Listeners[0]})
	got.wait(t, "two services once the listener is good", func(sn *model.Snapshot) bool { return chains(sn) == 2 })
}

// A snapshot the engine refuses (a listener it cannot bind) leaves the
// last one running: the listener response that brought it is NACKed
// with the engine's reason and undone, so the session neither reports
// nor rebuilds on what is not running, and the next good listener
// update applies.
func TestEngineRefusalNACKsTheListenerResponse(t *testing.T) {
	srv := startIstiod(t)
	srv.serve(translatetest.Synthetic(2))
	var got applied
	refuse := func(sn *model.Snapshot) error {
		if chains(sn) == 3 {
			return errors.New("listen on 0.0.0.0:15019: address already in use")
		}
		return got.apply(sn)
	}
	s := runSession(t, Config{Address: srv.Addr(), Plaintext: true, Node: testNode(), Apply: refuse,
		WarmTimeout: time.Second, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	got.wait(t, "two services", func(sn *model.Snapshot) bool { return chains(sn) == 2 })
	n := len(srv.Requests())
	applies := got.count()

	srv.Set(translate.TypeListener, map[string]types.Resource{"main_internal": translatetest.Synthetic(3).Listeners[0]})
	if msg := srv.NACK(n, translate.TypeListener); !strings.Contains(msg, "address already in use") {
		t.Errorf("NACK %q: want the engine's reason", msg)
	}
	if sn := s.Snapshot(); sn == nil || chains(sn) != 2 || got.count() != applies {
		t.Errorf("after the refusal the session reports %d chains, %d snapshots applied (want 2 and %d)", chains(sn), got.count(), applies)
	}
	srv.Set(translate.TypeListener, map[string]types.Resource{"main_internal": translatetest.Synthetic(1).Listeners[0]})
	got.wait(t, "one service once a listener the engine takes comes", func(sn *model.Snapshot) bool { return chains(sn) == 1 })
}

// A refused listener response is undone whole: the route configurations
// the restored listeners name stay held and subscribed. The response
// dropped them (its listener named none) before the engine refused it;
// left so, the restored listener's chain lost its routes in the next
// snapshot, and istiod, told to unsubscribe, would not send them again.
func TestEngineRefusalKeepsTheRestoredListenersRoutes(t *testing.T) {
	srv := startIstiod(t)
	l, rc := rdsConfig(90)
	srv.Set(translate.TypeListener, map[string]types.Resource{"main_internal": l})
	srv.Set(translate.TypeCluster, map[string]types.Resource{})
	srv.Set(translate.TypeRoute, map[string]types.Resource{"web-routes": rc})
	var got applied
	refuse := func(sn *model.Snapshot) error {
		if len(sn.Listeners) > 0 && sn.Listeners[0].Chains["web"] == nil {
			return errors.New("listen on 0.0.0.0:15019: address already in use")
		}
		return got.apply(sn)
	}
	s := runSession(t, Config{Address: srv.Addr(), Plaintext: true, Node: testNode(), Apply: refuse,
		WarmTimeout: time.Second, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	weight := func(sn *model.Snapshot) uint32 {
		c := sn.Listeners[0].Chains["web"]
		if c == nil || c.HTTP == nil || c.HTTP.Routes == nil {
			return 0
		}
		return c.HTTP.Routes.VirtualHosts[0].Routes[0].Forward.Weighted.Clusters[0].Weight
	}
	got.wait(t, "the routes from RDS", func(sn *model.Snapshot) bool { return weight(sn) == 90 })

	n := len(srv.Requests())
	srv.Set(translate.TypeListener, map[string]types.Resource{"main_internal": translatetest.Synthetic(1).Listeners[0]})
	srv.NACK(n, translate.TypeListener)
	if names := s.client.Names(translate.TypeRoute); !slices.Contains(names, "web-routes") {
		t.Errorf("route subscription %v after the refused listener was undone; want web-routes", names)
	}

	// Something else changes: the next snapshot still routes the chain.
	one := translatetest.Synthetic(1)
	c := one.Clusters[0]
	srv.Set(translate.TypeEndpoint, map[string]types.Resource{c.GetName(): one.Endpoints[c.GetName()]})
	srv.Set(translate.TypeCluster, map[string]types.Resource{c.GetName(): c})
	sn := got.wait(t, "the new cluster", func(sn *model.Snapshot) bool { return sn.Clusters[c.GetName()] != nil })
	if w := weight(sn); w != 90 {
		t.Errorf("after the refused listener response: the restored listener's routes give weight %d, want 90", w)
	}
}

// Each name warms for its own timeout, as each of Envoy's clusters has its
// own init timer: when x times out, the snapshot that goes out has x
// (without endpoints) but not y, which started warming later and is still
// within its time; y comes in a later snapshot with its endpoints. The
// session used to end every warming at the first timeout, publishing y
// without endpoints.
func TestWarmingTimesOutPerName(t *testing.T) {
	srv := startIstiod(t)
	srv.serve(translatetest.Synthetic(2))
	var got applied
	const warm = 600 * time.Millisecond
	s := runSession(t, Config{Address: srv.Addr(), Plaintext: true, Node: testNode(), Apply: got.apply,
		WarmTimeout: warm, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	got.wait(t, "two services", func(sn *model.Snapshot) bool { return len(sn.Clusters) == 2 })

	four := translatetest.Synthetic(4)
	x, y := four.Clusters[2], four.Clusters[3]
	before := got.count()
	srv.Set(translate.TypeCluster, map[string]types.Resource{x.GetName(): x})
	time.Sleep(warm * 2 / 3)
	srv.Set(translate.TypeCluster, map[string]types.Resource{y.GetName(): y})
	sn := got.wait(t, "x after its warming timed out", func(sn *model.Snapshot) bool { return sn.Clusters[x.GetName()] != nil })
	if c := sn.Clusters[y.GetName()]; c != nil {
		t.Fatalf("snapshot %s has y (endpoints %v) while y still warms", sn.Version, c.Endpoints)
	}
	if w := s.Stats().Warming; w != 1 {
		t.Errorf("warming %d after x timed out, want 1 (y)", w)
	}
	srv.Set(translate.TypeEndpoint, map[string]types.Resource{y.GetName(): four.Endpoints[y.GetName()]})
	got.wait(t, "y", func(sn *model.Snapshot) bool { return sn.Clusters[y.GetName()] != nil })
	got.mu.Lock()
	defer got.mu.Unlock()
	for _, sn := range got.snaps[before:] {
		if c := sn.Clusters[y.GetName()]; c != nil && len(c.Endpoints) == 0 {
			t.Fatalf("snapshot %s has y without endpoints", sn.Version)
		}
	}
}

// A name that is still warming when another times out gets its own
// timeout: y, which never answers, is published (without endpoints) once
// its own time is up, with no other change to carry it.
func TestWarmingHeldBackNameTimesOutAlone(t *testing.T) {
	srv := startIstiod(t)
	srv.serve(translatetest.Synthetic(2))
	var got applied
	const warm = 400 * time.Millisecond
	runSession(t, Config{Address: srv.Addr(), Plaintext: true, Node: testNode(), Apply: got.apply,
		WarmTimeout: warm, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	got.wait(t, "two services", func(sn *model.Snapshot) bool { return len(sn.Clusters) == 2 })
	four := translatetest.Synthetic(4)
	x, y := four.Clusters[2], four.Clusters[3]
	srv.Set(translate.TypeCluster, map[string]types.Resource{x.GetName(): x})
	time.Sleep(warm / 2)
	start := time.Now()
	srv.Set(translate.TypeCluster, map[string]types.Resource{y.GetName(): y})
	got.wait(t, "y after its own warming timed out", func(sn *model.Snapshot) bool { return sn.Clusters[y.GetName()] != nil })
	if d := time.Since(start); d < warm*3/4 {
		t.Errorf("y published %v after it came, before its own warming timeout %v", d, warm)
	}
}

// A warming timeout while the first listeners or clusters are not in yet
// publishes nothing; it must not leave the session marked to publish the
// next snapshot regardless of what warms then. Here x's time ran out
// before LDS was answered; y started warming after that: once LDS is in,
// the first snapshot still waits for y (Envoy's initialization waits for
// every warming cluster), where a leftover mark published it without y.
func TestWarmingTimeoutBeforeFirstAnswersDoesNotSkipLaterWarming(t *testing.T) {
	const warm = time.Minute
	s, err := New(Config{Address: "127.0.0.1:1", Plaintext: true, Node: testNode(), Apply: func(*model.Snapshot) error { return nil },
		WarmTimeout: warm})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() {
		if s.warmTimer != nil {
			s.warmTimer.Stop()
		}
	}()
	now := time.Now()
	s.answered[translate.TypeCluster] = true
	s.warming[warmKey(translate.TypeEndpoint, "x")] = now.Add(-2 * warm)
	s.pending = now
	if snap, _ := s.buildLocked(); snap != nil {
		t.Fatal("a snapshot before the first LDS answer")
	}
	s.warming[warmKey(translate.TypeEndpoint, "y")] = time.Now()
	s.answered[translate.TypeListener] = true
	if snap, _ := s.buildLocked(); snap != nil {
		t.Fatalf("snapshot %s built while y warms (within its timeout)", snap.Version)
	}
}
