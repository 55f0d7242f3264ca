package translate

import (
	"encoding/json"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/waypoint/model"

	// What istiod's fixtures name in Any fields, to read them back.
	_ "github.com/cncf/xds/go/udpa/type/v1"
	_ "github.com/cncf/xds/go/xds/type/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/grpc_stats/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/set_filter_state/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/formatter/cel/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/request_id/uuid/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// The demo the fixtures were captured from (tests/e2e/waypoint).
const (
	webHost     = "web.wp.svc.cluster.local"
	reviewsHost = "reviews.wp.svc.cluster.local"
)

func vip(port int, proto, host string) string {
	return "inbound-vip|" + strconv.Itoa(port) + "|" + proto + "|" + host
}

// readFixture reads one type's fixture file into messages.
func readFixture[T proto.Message](t *testing.T, set, file string) map[string]T {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", set, file))
	if err != nil {
		t.Fatalf("%v (capture with the e2e test tests/e2e/waypoint and KMESH_UPDATE_GOLDEN=1)", err)
	}
	var entries []struct {
		Name     string          `json:"name"`
		Resource json.RawMessage `json:"resource"`
	}
	if err := json.Unmarshal(b, &entries); err != nil {
		t.Fatal(err)
	}
	out := map[string]T{}
	for _, e := range entries {
		var a anypb.Any
		if err := protojson.Unmarshal(e.Resource, &a); err != nil {
			t.Fatalf("%s %s: %v", file, e.Name, err)
		}
		var v T
		v = v.ProtoReflect().Type().New().Interface().(T)
		if err := a.UnmarshalTo(v); err != nil {
			t.Fatalf("%s %s: %v", file, e.Name, err)
		}
		out[e.Name] = v
	}
	return out
}

func loadIstiod(t *testing.T, set string) Input {
	t.Helper()
	in := Input{Version: set, Endpoints: map[string]*endpointv3.ClusterLoadAssignment{}, Routes: map[string]*routev3.RouteConfiguration{}}
	for _, n := range slices.Sorted(mapKeys(readFixture[*listenerv3.Listener](t, set, "lds.json"))) {
		in.Listeners = append(in.Listeners, readFixture[*listenerv3.Listener](t, set, "lds.json")[n])
	}
	if _, err := os.Stat(filepath.Join("testdata", set, "cds.json")); err == nil {
		cs := readFixture[*clusterv3.Cluster](t, set, "cds.json")
		for _, n := range slices.Sorted(mapKeys(cs)) {
			in.Clusters = append(in.Clusters, cs[n])
		}
		in.Endpoints = readFixture[*endpointv3.ClusterLoadAssignment](t, set, "eds.json")
		in.Routes = readFixture[*routev3.RouteConfiguration](t, set, "rds.json")
		as := readFixture[*workloadapi.Address](t, set, "address.json")
		for _, n := range slices.Sorted(mapKeys(as)) {
			in.Addresses = append(in.Addresses, as[n])
		}
	}
	return in
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func TestIstiodWaypoint(t *testing.T) {
	in := loadIstiod(t, "istiod")
	// Each resource passes the checks the xDS layer makes on arrival.
	for _, l := range in.Listeners {
		if err := CheckListener(l, IstiodOptions()); err != nil {
			t.Errorf("listener %s: %v", l.GetName(), err)
		}
	}
	for _, c := range in.Clusters {
		if err := CheckCluster(c, IstiodOptions()); err != nil {
			t.Errorf("cluster %s: %v", c.GetName(), err)
		}
	}
	for n, e := range in.Endpoints {
		if err := CheckEndpoints(e); err != nil {
			t.Errorf("endpoints %s: %v", n, err)
		}
	}
	snap, err := Translate(in, IstiodOptions())
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Listeners) != 1 {
		t.Fatalf("%d listeners, want the one waypoint listener", len(snap.Listeners))
	}
	l := snap.Listeners[0]
	if l.Name != "waypoint" || l.Address != DefaultListenAddress || !l.ProxyProtocol {
		t.Fatalf("listener %s %s proxy=%v", l.Name, l.Address, l.ProxyProtocol)
	}

	t.Run("ChainSelection", func(t *testing.T) {
		for _, tc := range []struct {
			dst, proto, want string
			needs            bool
		}{
			{"10.96.10.10:80", "", vip(80, "http", webHost), false},
			{"10.96.10.10:8081", model.ProtocolHTTP1, vip(8081, "http", webHost), true},
			{"10.96.10.10:8081", model.ProtocolHTTP2, vip(8081, "http", webHost), true},
			{"10.96.10.10:8081", model.ProtocolTCP, vip(8081, "tcp", webHost), true},
			{"10.96.10.20:9080", "", vip(9080, "http", reviewsHost), false},
			{"10.96.10.30:9090", "", vip(9090, "http", "grpc-echo.wp.svc.cluster.local"), false},
			{"10.96.10.40:5432", "", vip(5432, "tcp", "db.wp.svc.cluster.local"), false},
			{"10.96.10.10:81", "", "", false},                             // a VIP's unknown port
			{"10.250.1.1:8080", model.ProtocolHTTP1, "direct-http", true}, // a pod, addressed directly
			{"10.250.1.1:8080", model.ProtocolTCP, "direct-tcp", true},
			{"10.1.2.3:80", "", "", false},
		} {
			dst := netip.MustParseAddrPort(tc.dst)
			if got := l.Select.Select(model.ConnInfo{Destination: dst, Protocol: tc.proto}); got != tc.want {
				t.Errorf("%s %q -> %q, want %q", tc.dst, tc.proto, got, tc.want)
			}
			if got := l.Select.NeedsProtocol(dst); got != tc.needs {
				t.Errorf("NeedsProtocol(%s) = %v, want %v", tc.dst, got, tc.needs)
			}
			if tc.want != "" && l.Chains[tc.want] == nil {
				t.Errorf("selected chain %q is not on the listener", tc.want)
			}
		}
	})

	t.Run("HTTPRouteSplit", func(t *testing.T) {
		c := l.Chains[vip(80, "http", webHost)]
		if c.HTTP == nil || c.Service.Name != "web" || c.Service.Namespace != "wp" {
			t.Fatalf("web chain %+v", c)
		}
		h := c.HTTP
		if !maps.Equal(h.Upgrades, map[string]bool{"websocket": true}) {
			t.Errorf("upgrades %v, want websocket (istiod's upgrade_configs)", h.Upgrades)
		}
		if h.Codec != "auto" || !h.NormalizePath || h.ServerName != "istio-envoy" || h.StreamIdleTimeout != 0 {
			t.Errorf("HCM %+v", h)
		}
		names := []string{}
		for _, f := range h.Filters {
			names = append(names, f.Name)
		}
		if !slices.Equal(names, []string{"envoy.filters.http.fault", "envoy.filters.http.cors", "envoy.filters.http.router"}) {
			t.Errorf("filters %v (grpc_stats and peer metadata are skipped)", names)
		}
		r := h.Routes.VirtualHosts[0].Routes[0]
		w := r.Forward.Weighted
		if w == nil || w.Total != 100 || len(w.Clusters) != 2 ||
			w.Clusters[0].Name != vip(80, "http", "web-v1.wp.svc.cluster.local") || w.Clusters[0].Weight != 90 ||
			w.Clusters[1].Name != vip(80, "http", "web-v2.wp.svc.cluster.local") || w.Clusters[1].Weight != 10 {
			t.Fatalf("split %+v", w)
		}
		// istiod's default retry policy and no timeout.
		rp := r.Forward.Retry
		want := []string{"cancelled", "connect-failure", "refused-stream", "retriable-status-codes", "unavailable"}
		if rp == nil || !slices.Equal(slices.Sorted(mapKeysBool(rp.On)), want) || rp.NumRetries != 2 || !rp.PreviousHosts || rp.HostSelectionAttempts != 5 {
			t.Errorf("retry %+v", rp)
		}
		if r.Forward.Timeout != 0 {
			t.Errorf("timeout %v, want none", r.Forward.Timeout)
		}
	})

	t.Run("VirtualService", func(t *testing.T) {
		routes := l.Chains[vip(9080, "http", reviewsHost)].HTTP.Routes.VirtualHosts[0].Routes
		if len(routes) != 3 {
			t.Fatalf("%d routes", len(routes))
		}
		old, v2, def := routes[0], routes[1], routes[2]
		if old.Match.Prefix != "/old" || old.Redirect == nil || old.Redirect.Path != "/new" || old.Redirect.Status != 301 {
			t.Errorf("redirect route %+v %+v", old.Match, old.Redirect)
		}
		if v2.Match.Prefix != "/v2" || len(v2.Match.Headers) != 1 || v2.Match.Headers[0].Name != "x-user" ||
			v2.Match.Headers[0].Value.Kind != "exact" || v2.Match.Headers[0].Value.Exact != "alice" {
			t.Errorf("v2 match %+v", v2.Match)
		}
		f := v2.Forward
		if f.Cluster != vip(9080, "http", reviewsHost) || f.PrefixRewrite != "/" || f.Timeout != 10*time.Second ||
			f.MaxGRPCTimeout == nil || *f.MaxGRPCTimeout != 10*time.Second || !f.RewriteGRPCTimeout {
			t.Errorf("v2 forward %+v", f)
		}
		if f.Retry == nil || f.Retry.NumRetries != 3 || f.Retry.PerTryTimeout != 2*time.Second ||
			!f.Retry.On["5xx"] || !f.Retry.On["gateway-error"] || !f.Retry.On["connect-failure"] || len(f.Retry.On) != 3 {
			t.Errorf("v2 retry %+v", f.Retry)
		}
		if len(f.Mirrors) != 1 || f.Mirrors[0] != (model.Mirror{Cluster: vip(80, "http", "mirror.wp.svc.cluster.local"), Percent: 50, KeepHost: true}) {
			t.Errorf("mirrors %+v", f.Mirrors)
		}
		fl := v2.PerFilter.Fault
		if fl == nil || fl.Delay != 5*time.Second || fl.DelayPercent != 10 || fl.AbortHTTPStatus != 503 || fl.AbortPercent != 5 {
			t.Errorf("fault %+v", fl)
		}
		if len(v2.Headers.RequestAdd) != 1 || v2.Headers.RequestAdd[0] != (model.HeaderValue{Name: "x-vs", Value: "reviews"}) ||
			!slices.Equal(v2.Headers.ResponseRemove, []string{"x-internal"}) {
			t.Errorf("header ops %+v", v2.Headers)
		}
		cors := def.PerFilter.CORS
		if cors == nil || cors.Disabled || cors.AllowMethods != "GET,POST" || len(cors.AllowOrigins) != 1 || cors.AllowOrigins[0].Exact != "https://example.com" {
			t.Errorf("cors %+v", cors)
		}
		if def.Forward.Timeout != 0 || def.Forward.MaxGRPCTimeout == nil || *def.Forward.MaxGRPCTimeout != 0 || !def.Forward.RewriteGRPCTimeout {
			t.Errorf("default route %+v", def.Forward)
		}
	})

	t.Run("RBACFailsClosed", func(t *testing.T) {
		c := l.Chains[vip(80, "http", "secure.wp.svc.cluster.local")]
		if c.Deny == nil || c.Deny.HTTPStatus != 403 || !strings.Contains(c.Deny.Reason, "RBAC") || c.HTTP != nil {
			t.Fatalf("secure chain %+v", c)
		}
		if l.Chains[vip(80, "http", webHost)].Deny != nil {
			t.Fatal("web's chain denies: the policy targets secure only")
		}
	})

	t.Run("TCP", func(t *testing.T) {
		// A VirtualService's tcp route splits db 70/30 with its replica.
		c := l.Chains[vip(5432, "tcp", "db.wp.svc.cluster.local")]
		if c.TCP == nil || c.TCP.Weighted == nil || c.TCP.Weighted.Total != 100 ||
			c.TCP.Weighted.Clusters[0].Name != vip(5432, "tcp", "db.wp.svc.cluster.local") || c.TCP.Weighted.Clusters[0].Weight != 70 ||
			c.TCP.Weighted.Clusters[1].Name != vip(5432, "tcp", "db-replica.wp.svc.cluster.local") || c.TCP.Weighted.Clusters[1].Weight != 30 {
			t.Fatalf("db chain %+v", c.TCP)
		}
		if r := l.Chains[vip(5432, "tcp", "db-replica.wp.svc.cluster.local")]; r == nil || r.TCP == nil || r.TCP.Cluster == "" {
			t.Fatalf("db-replica chain %+v", r)
		}
		if d := l.Chains["direct-tcp"]; d.TCP == nil || d.TCP.Cluster != "encap" {
			t.Fatalf("direct-tcp %+v", d)
		}
	})

	t.Run("Clusters", func(t *testing.T) {
		if len(snap.Clusters) != 13 {
			t.Errorf("%d clusters: %v", len(snap.Clusters), slices.Sorted(mapKeys(snap.Clusters)))
		}
		web1 := snap.Clusters[vip(80, "http", "web-v1.wp.svc.cluster.local")]
		if web1.Kind != "eds" || web1.LB != "least_request" || web1.ConnectTimeout != 10*time.Second || web1.Protocol != "http1" ||
			web1.MaxConnections != 4294967295 || web1.Service != (model.ServiceRef{Hostname: "web-v1.wp.svc.cluster.local", Name: "web-v1", Namespace: "wp"}) {
			t.Errorf("web-v1 cluster %+v", web1)
		}
		eps := web1.Endpoints[0]
		if len(eps) != 2 || eps[0].Address != netip.MustParseAddrPort("10.250.1.1:8080") || eps[0].Workload != "wp/web-v1-0" || !eps[0].Healthy {
			t.Errorf("web-v1 endpoints %+v", eps)
		}
		if p := snap.Clusters[vip(9090, "http", "grpc-echo.wp.svc.cluster.local")].Protocol; p != "http2" {
			t.Errorf("grpc cluster protocol %q", p)
		}
		if p := snap.Clusters[vip(8081, "http", webHost)].Protocol; p != "downstream" {
			t.Errorf("sniffed port's cluster protocol %q", p)
		}
		db := snap.Clusters[vip(5432, "tcp", "db.wp.svc.cluster.local")]
		if db.Endpoints[0][0].Address != netip.MustParseAddrPort("10.250.4.1:5432") {
			t.Errorf("db endpoints (plain, not HBONE) %+v", db.Endpoints)
		}
		// A DestinationRule's traffic policy, and its subset.
		for _, name := range []string{vip(9080, "http", reviewsHost), vip(9080, "http/v1", reviewsHost)} {
			r := snap.Clusters[name]
			if r == nil || r.LB != "round_robin" || r.ConnectTimeout != 3*time.Second || r.MaxConnections != 100 ||
				r.MaxPendingRequests != 50 || r.MaxRequestsPerConnection != 10 || r.Protocol != "http1" {
				t.Errorf("%s %+v", name, r)
			}
			// outlierDetection: 5 consecutive 5xx every 10 s, panic mode
			// off (istiod's empty healthy_panic_threshold).
			if o := r.Outlier; o == nil || o.Consecutive5xx != 5 || o.EnforcingConsecutive5xx != 100 || o.Interval != 10*time.Second ||
				o.EnforcingConsecutiveGatewayFailure != 0 || r.PanicThreshold != 0 {
				t.Errorf("%s outlier %+v panic threshold %v", name, o, r.PanicThreshold)
			}
		}
		if v1 := snap.Clusters[vip(9080, "http/v1", reviewsHost)].Endpoints; len(v1) != 1 || len(v1[0]) != 1 ||
			v1[0][0].Address != netip.MustParseAddrPort("10.250.2.1:9080") {
			t.Errorf("subset v1 endpoints %+v", v1)
		}
		if e := snap.Clusters["encap"]; e == nil || e.Kind != "original_dst" {
			t.Errorf("encap %+v", e)
		}
		for _, plumbing := range []string{"main_internal", "connect_originate"} {
			if snap.Clusters[plumbing] != nil {
				t.Errorf("plumbing cluster %s in the snapshot", plumbing)
			}
		}
	})

	t.Run("Peers", func(t *testing.T) {
		p := snap.Peers.Lookup(netip.MustParseAddr("10.250.1.3"))
		if p == nil || p.Name != "web-v2-0" || p.Namespace != "wp" || p.ServiceAccount != "default" || p.CanonicalRevision != "v2" {
			t.Fatalf("peer %+v", p)
		}
		if p.Principal() != "spiffe://cluster.local/ns/wp/sa/default" {
			t.Errorf("principal %s", p.Principal())
		}
		if snap.Peers.Lookup(netip.MustParseAddr(waypointPodIP)) == nil {
			t.Error("the waypoint pod itself is no peer")
		}
	})

	t.Run("Unsupported", func(t *testing.T) {
		var failClosed, harmless []string
		for _, u := range snap.Unsupported {
			if u.FailClosed {
				failClosed = append(failClosed, u.Name)
			} else {
				harmless = append(harmless, u.Name)
			}
		}
		if !slices.Equal(failClosed, []string{"envoy.filters.http.rbac"}) {
			t.Errorf("fail-closed %v", failClosed)
		}
		for _, want := range []string{"connect_terminate", "connect_originate", "main_internal", "envoy.filters.http.grpc_stats",
			"waypoint_upstream_peer_metadata", "istio.metadata_exchange", "connect_authority"} {
			if !slices.Contains(harmless, want) {
				t.Errorf("%s not recorded as skipped: %v", want, harmless)
			}
		}
	})

	t.Run("Dump", func(t *testing.T) {
		d := model.Dump(snap)
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		var back model.ConfigDump
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if len(back.Listeners) != 1 || len(back.Listeners[0].Chains) != len(l.Chains) || len(back.Clusters) != len(snap.Clusters) ||
			len(back.Routes) == 0 || len(back.Endpoints) == 0 || back.Peers == 0 || len(back.Listeners[0].Rules) == 0 {
			t.Fatalf("dump %s", b[:min(len(b), 500)])
		}
		if !strings.Contains(string(b), `"weight":90`) || !strings.Contains(string(b), `"deny":{"httpStatus":403`) {
			t.Errorf("dump misses the split or the deny")
		}
	})

	t.Run("Memo", func(t *testing.T) {
		// Translating with a memo, twice, gives what translating without
		// one does.
		in2 := in
		in2.Memo = NewMemo()
		for range 2 {
			s2, err := Translate(in2, IstiodOptions())
			if err != nil {
				t.Fatal(err)
			}
			a, _ := json.Marshal(model.Dump(snap))
			b, _ := json.Marshal(model.Dump(s2))
			if string(a) != string(b) {
				t.Fatal("a memoized translation differs")
			}
		}
	})
}

const waypointPodIP = "10.250.0.2"

func mapKeysBool(m map[string]bool) func(func(string) bool) { return mapKeys(m) }

// TestIstiodWaypointPolicy: a policy on the whole waypoint puts RBAC on
// every HTTP chain, and every one of them denies.
func TestIstiodWaypointPolicy(t *testing.T) {
	in := loadIstiod(t, "istiod-authz")
	snap, err := Translate(in, IstiodOptions())
	if err != nil {
		t.Fatal(err)
	}
	l := snap.Listeners[0]
	http := 0
	for name, c := range l.Chains {
		if strings.Contains(name, "|http|") || name == "direct-http" {
			http++
			if c.Deny == nil || c.Deny.HTTPStatus != 403 {
				t.Errorf("%s does not deny: %+v", name, c)
			}
		}
	}
	if http < 8 {
		t.Errorf("only %d HTTP chains", http)
	}
}
