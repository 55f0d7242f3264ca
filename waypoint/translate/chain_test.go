package translate

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

func typed(url string) *anypb.Any { return &anypb.Any{TypeUrl: url} }

func httpFilter(name string, a *anypb.Any) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}
}

func hcmChain(filters ...*hcmv3.HttpFilter) *listenerv3.Listener {
	h := &hcmv3.HttpConnectionManager{StatPrefix: "t", RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
		VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*routev3.Route{{Match: prefix("/"), Action: fwd(toCluster("c"))}}}}}},
		HttpFilters: filters}
	return staticListener(&listenerv3.Filter{Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(h)}})
}

func staticListener(filters ...*listenerv3.Filter) *listenerv3.Listener {
	return &listenerv3.Listener{Name: "l", Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 15019}}}},
		FilterChains: []*listenerv3.FilterChain{{Name: "only", Filters: filters}}}
}

func router() *hcmv3.HttpFilter {
	return httpFilter("envoy.filters.http.router", mustAny(&routerv3.Router{}))
}

func TestFilterClasses(t *testing.T) {
	peerMeta := mustAny(&xdstypev3.TypedStruct{TypeUrl: "type.googleapis.com/io.istio.http.peer_metadata.Config", Value: &structpb.Struct{}})
	for _, tc := range []struct {
		name       string
		l          *listenerv3.Listener
		denyStatus int // 0: the chain runs
		failClosed bool
		err        string
	}{
		{name: "router only", l: hcmChain(router())},
		{name: "harmless behind a TypedStruct", l: hcmChain(httpFilter("peer", peerMeta), router())},
		{name: "rbac", l: hcmChain(httpFilter("envoy.filters.http.rbac", typed("type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC")), router()), denyStatus: 403, failClosed: true},
		{name: "ext_authz", l: hcmChain(httpFilter("authz", typed("type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")), router()), denyStatus: 403, failClosed: true},
		{name: "jwt", l: hcmChain(httpFilter("jwt", typed("type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication")), router()), denyStatus: 403, failClosed: true},
		{name: "local rate limit", l: hcmChain(httpFilter("rl", typed("type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit")), router()), denyStatus: 503, failClosed: true},
		{name: "unknown", l: hcmChain(httpFilter("acme", typed("type.googleapis.com/acme.Filter")), router()), denyStatus: 503, failClosed: true},
		{name: "ecds", l: hcmChain(&hcmv3.HttpFilter{Name: "wasm", ConfigType: &hcmv3.HttpFilter_ConfigDiscovery{ConfigDiscovery: &corev3.ExtensionConfigSource{}}}, router()), denyStatus: 503, failClosed: true},
		{name: "router not last", l: hcmChain(router(), httpFilter("peer", peerMeta)), err: "router must be the last"},
		{name: "no router", l: hcmChain(), err: "router"},
		{name: "network rbac before tcp_proxy", l: staticListener(
			&listenerv3.Filter{Name: "rbac", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed("type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC")}},
			&listenerv3.Filter{Name: "tcp", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxyv3.TcpProxy{StatPrefix: "t", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "c"}})}}),
			denyStatus: 403, failClosed: true},
		{name: "tcp_proxy not last", l: staticListener(
			&listenerv3.Filter{Name: "tcp", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxyv3.TcpProxy{StatPrefix: "t", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "c"}})}},
			&listenerv3.Filter{Name: "peer", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: peerMeta}}),
			err: "terminal filter"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap, err := Translate(Input{Listeners: []*listenerv3.Listener{tc.l}}, Options{})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				if CheckListener(tc.l, Options{}) == nil {
					t.Fatal("CheckListener accepts what Translate refuses")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l := snap.Listeners[0]
			if l.Address != netip.MustParseAddrPort("127.0.0.1:15019") || l.ProxyProtocol {
				t.Errorf("listener %s proxy=%v", l.Address, l.ProxyProtocol)
			}
			c := l.Chains["only"]
			if l.Select.Select(model.ConnInfo{Destination: netip.MustParseAddrPort("10.0.0.1:80")}) != "only" {
				t.Error("the only chain (no filter_chain_match) is not selected")
			}
			switch {
			case tc.denyStatus == 0 && (c.Deny != nil || (c.HTTP == nil && c.TCP == nil)):
				t.Errorf("chain %+v should run", c)
			case tc.denyStatus != 0 && (c.Deny == nil || c.Deny.HTTPStatus != tc.denyStatus || c.HTTP != nil || c.TCP != nil):
				t.Errorf("chain %+v, want deny %d", c, tc.denyStatus)
			}
			closed := false
			for _, u := range snap.Unsupported {
				closed = closed || u.FailClosed
			}
			if closed != tc.failClosed {
				t.Errorf("unsupported %+v", snap.Unsupported)
			}
		})
	}
}

func socketEndpoint(ip string, port uint32, health corev3.HealthStatus, weight uint32) *endpointv3.LbEndpoint {
	e := &endpointv3.LbEndpoint{HealthStatus: health, HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: ip,
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}}}
	if weight != 0 {
		e.LoadBalancingWeight = wrapperspb.UInt32(weight)
	}
	return e
}

func TestClusters(t *testing.T) {
	h2 := mustAny(&httpv3.HttpProtocolOptions{
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(time.Minute), MaxRequestsPerConnection: wrapperspb.UInt32(100)},
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}}})
	tls := &corev3.TransportSocket{Name: "tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{Sni: "x"})}}
	static := &endpointv3.ClusterLoadAssignment{ClusterName: "s", Endpoints: []*endpointv3.LocalityLbEndpoints{
		{LbEndpoints: []*endpointv3.LbEndpoint{socketEndpoint("10.0.0.1", 80, corev3.HealthStatus_HEALTHY, 5), socketEndpoint("10.0.0.2", 80, corev3.HealthStatus_UNHEALTHY, 0)}},
		{Priority: 1, LbEndpoints: []*endpointv3.LbEndpoint{socketEndpoint("10.0.1.1", 80, corev3.HealthStatus_UNKNOWN, 0)}},
	}}
	for _, tc := range []struct {
		name  string
		c     *clusterv3.Cluster
		check func(t *testing.T, c *model.Cluster, unsup []model.Unsupported)
		err   string
	}{
		{name: "static with priorities", c: &clusterv3.Cluster{Name: "s", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			LbPolicy: clusterv3.Cluster_MAGLEV, LoadAssignment: static, TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2},
			CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{
				{Priority: corev3.RoutingPriority_HIGH, MaxConnections: wrapperspb.UInt32(1)},
				{MaxConnections: wrapperspb.UInt32(7), MaxRetries: wrapperspb.UInt32(2)}}}},
			check: func(t *testing.T, c *model.Cluster, _ []model.Unsupported) {
				if c.Kind != "static" || c.LB != "maglev" || c.Protocol != "http2" || c.IdleTimeout != time.Minute || c.MaxRequestsPerConnection != 100 ||
					c.MaxConnections != 7 || c.MaxRetries != 2 || c.ConnectTimeout != 5*time.Second {
					t.Errorf("%+v", c)
				}
				if len(c.Endpoints) != 2 || c.Endpoints[0][0].Weight != 5 || c.Endpoints[0][1].Healthy || !c.Endpoints[1][0].Healthy {
					t.Errorf("endpoints %+v", c.Endpoints)
				}
			}},
		{name: "original destination", c: &clusterv3.Cluster{Name: "o", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
			LbPolicy: clusterv3.Cluster_CLUSTER_PROVIDED, ProtocolSelection: clusterv3.Cluster_USE_DOWNSTREAM_PROTOCOL},
			check: func(t *testing.T, c *model.Cluster, _ []model.Unsupported) {
				if c.Kind != "original_dst" || c.Protocol != "downstream" {
					t.Errorf("%+v", c)
				}
			}},
		{name: "typed LB policy", c: &clusterv3.Cluster{Name: "t", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			LoadBalancingPolicy: &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
				{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "x", TypedConfig: typed("type.googleapis.com/acme.Policy")}},
				{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "r", TypedConfig: typed("type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random")}}}}},
			check: func(t *testing.T, c *model.Cluster, _ []model.Unsupported) {
				if c.LB != "random" || c.Kind != "eds" || len(c.Endpoints) != 0 {
					t.Errorf("%+v", c)
				}
			}},
		{name: "TLS upstream fails closed", c: &clusterv3.Cluster{Name: "tls", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			LoadAssignment: static, TransportSocket: tls},
			check: func(t *testing.T, c *model.Cluster, unsup []model.Unsupported) {
				if len(c.Endpoints) != 0 || len(unsup) != 1 || !unsup[0].FailClosed {
					t.Errorf("%+v %+v", c, unsup)
				}
			}},
		{name: "DNS names fail closed", c: &clusterv3.Cluster{Name: "dns", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
			LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "dns", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{
				socketEndpoint("backend.example", 80, corev3.HealthStatus_UNKNOWN, 0)}}}}},
			check: func(t *testing.T, c *model.Cluster, unsup []model.Unsupported) {
				if len(c.Endpoints) != 0 || len(unsup) != 1 || !unsup[0].FailClosed {
					t.Errorf("%+v %+v", c, unsup)
				}
			}},
		{name: "outlier detection with Envoy's defaults", c: &clusterv3.Cluster{Name: "od", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			OutlierDetection: &clusterv3.OutlierDetection{}},
			check: func(t *testing.T, c *model.Cluster, unsup []model.Unsupported) {
				want := model.OutlierDetection{Consecutive5xx: 5, EnforcingConsecutive5xx: 100, ConsecutiveGatewayFailure: 5,
					ConsecutiveLocalOriginFailure: 5, EnforcingConsecutiveLocalOriginFailure: 100, Interval: 10 * time.Second,
					BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 10}
				if c.Outlier == nil || *c.Outlier != want || c.PanicThreshold != 50 {
					t.Errorf("outlier %+v panic threshold %v", c.Outlier, c.PanicThreshold)
				}
				// Envoy's default success-rate ejection is not applied: said so.
				if len(unsup) != 1 || unsup[0].FailClosed || unsup[0].Name != "outlier_detection.enforcing_success_rate" {
					t.Errorf("%+v", unsup)
				}
			}},
		{name: "outlier detection as istiod writes it", c: &clusterv3.Cluster{Name: "od", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			CommonLbConfig: &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{}},
			OutlierDetection: &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(3), EnforcingConsecutive_5Xx: wrapperspb.UInt32(100),
				ConsecutiveGatewayFailure: wrapperspb.UInt32(2), EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
				EnforcingSuccessRate: wrapperspb.UInt32(0), Interval: durationpb.New(time.Second), BaseEjectionTime: durationpb.New(time.Minute),
				MaxEjectionPercent: wrapperspb.UInt32(100)}},
			check: func(t *testing.T, c *model.Cluster, unsup []model.Unsupported) {
				o := c.Outlier
				if o == nil || o.Consecutive5xx != 3 || o.ConsecutiveGatewayFailure != 2 || o.EnforcingConsecutiveGatewayFailure != 100 ||
					o.Interval != time.Second || o.BaseEjectionTime != time.Minute || o.MaxEjectionTime != 300*time.Second ||
					o.MaxEjectionPercent != 100 || c.PanicThreshold != 0 {
					t.Errorf("outlier %+v panic threshold %v", o, c.PanicThreshold)
				}
				if len(unsup) != 0 {
					t.Errorf("%+v", unsup)
				}
			}},
		{name: "outlier max ejection time under the base", c: &clusterv3.Cluster{Name: "od", OutlierDetection: &clusterv3.OutlierDetection{
			BaseEjectionTime: durationpb.New(time.Minute), MaxEjectionTime: durationpb.New(time.Second)}}, err: "max_ejection_time"},
		{name: "panic threshold rounded to a whole percent", c: &clusterv3.Cluster{Name: "p", CommonLbConfig: &clusterv3.Cluster_CommonLbConfig{
			HealthyPanicThreshold: &typev3.Percent{Value: 0.4}}},
			check: func(t *testing.T, c *model.Cluster, _ []model.Unsupported) {
				if c.PanicThreshold != 0 {
					t.Errorf("panic threshold %v, want 0 (Envoy rounds 0.4 down)", c.PanicThreshold)
				}
			}},
		{name: "panic threshold over 100", c: &clusterv3.Cluster{Name: "p", CommonLbConfig: &clusterv3.Cluster_CommonLbConfig{
			HealthyPanicThreshold: &typev3.Percent{Value: 101}}}, err: "healthy_panic_threshold"},
		{name: "negative connect timeout", c: &clusterv3.Cluster{Name: "neg", ConnectTimeout: durationpb.New(-time.Second)}, err: "connect_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &translator{in: Input{}}
			c, err := tr.cluster(tc.c)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c, tr.unsup)
		})
	}
}

func TestEndpointErrors(t *testing.T) {
	noMeta := &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
		Address: &corev3.Address_EnvoyInternalAddress{EnvoyInternalAddress: &corev3.EnvoyInternalAddress{
			AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: "connect_originate"}}}}}}}
	for name, cla := range map[string]*endpointv3.ClusterLoadAssignment{
		"internal without metadata": {ClusterName: "x", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{noMeta}}}},
		"hostname":                  {ClusterName: "x", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{socketEndpoint("a.b", 80, 0, 0)}}}},
	} {
		if err := CheckEndpoints(cla); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestWeightedTCP(t *testing.T) {
	tp := &tcpproxyv3.TcpProxy{StatPrefix: "t", IdleTimeout: durationpb.New(time.Minute), MaxDownstreamConnectionDuration: durationpb.New(time.Hour),
		ClusterSpecifier: &tcpproxyv3.TcpProxy_WeightedClusters{WeightedClusters: &tcpproxyv3.TcpProxy_WeightedCluster{
			Clusters: []*tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{{Name: "a", Weight: 80}, {Name: "b", Weight: 20}, {Name: "off", Weight: 0}}}}}
	snap, err := Translate(Input{Listeners: []*listenerv3.Listener{staticListener(
		&listenerv3.Filter{Name: "tcp", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(tp)}})}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := snap.Listeners[0].Chains["only"].TCP
	if m == nil || m.Weighted == nil || m.Weighted.Total != 100 || len(m.Weighted.Clusters) != 2 || m.Weighted.Clusters[0].Weight != 80 ||
		m.IdleTimeout != time.Minute || m.MaxConnectionDuration != time.Hour {
		t.Fatalf("%+v", m)
	}
}

func TestRouterSuppressEnvoyHeaders(t *testing.T) {
	for _, suppress := range []bool{false, true} {
		l := hcmChain(httpFilter("envoy.filters.http.router", mustAny(&routerv3.Router{SuppressEnvoyHeaders: suppress})))
		snap, err := Translate(Input{Listeners: []*listenerv3.Listener{l}}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := snap.Listeners[0].Chains["only"].HTTP.SuppressEnvoyHeaders; got != suppress {
			t.Errorf("suppress_envoy_headers %v translated to %v", suppress, got)
		}
	}
}

// use_remote_address and xff_num_trusted_hops decide the client address a
// source-IP hash policy reads (istiod's waypoint sets use_remote_address
// false: X-Forwarded-For's last address).
func TestHCMClientAddressSettings(t *testing.T) {
	for _, tc := range []struct {
		use  *wrapperspb.BoolValue
		hops uint32
	}{{nil, 0}, {wrapperspb.Bool(false), 2}, {wrapperspb.Bool(true), 0}} {
		h := &hcmv3.HttpConnectionManager{StatPrefix: "t", UseRemoteAddress: tc.use, XffNumTrustedHops: tc.hops,
			RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{}},
			HttpFilters:    []*hcmv3.HttpFilter{router()}}
		l := staticListener(&listenerv3.Filter{Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(h)}})
		snap, err := Translate(Input{Listeners: []*listenerv3.Listener{l}}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		m := snap.Listeners[0].Chains["only"].HTTP
		if m.UseRemoteAddress != tc.use.GetValue() || m.XffNumTrustedHops != tc.hops {
			t.Errorf("use_remote_address %v, xff_num_trusted_hops %d: translated %v, %d", tc.use, tc.hops, m.UseRemoteAddress, m.XffNumTrustedHops)
		}
	}
}

// idle_timeout 0s is Envoy's "no idle timeout", not its 1 h default.
func TestTCPIdleTimeoutZeroDisables(t *testing.T) {
	for _, tc := range []struct {
		idle *durationpb.Duration
		want time.Duration
	}{{nil, 0}, {durationpb.New(0), model.NoTimeout}, {durationpb.New(time.Minute), time.Minute}} {
		tp := &tcpproxyv3.TcpProxy{StatPrefix: "t", IdleTimeout: tc.idle, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "c"}}
		snap, err := Translate(Input{Listeners: []*listenerv3.Listener{staticListener(
			&listenerv3.Filter{Name: "tcp", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(tp)}})}}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := snap.Listeners[0].Chains["only"].TCP.IdleTimeout; got != tc.want {
			t.Errorf("idle_timeout %v: model %v, want %v", tc.idle, got, tc.want)
		}
	}
}

// tcp_proxy's hash_policy: source_ip is applied; a filter-state key (set
// by filters the waypoint does not run) is reported.
func TestTCPHashPolicy(t *testing.T) {
	tp := &tcpproxyv3.TcpProxy{StatPrefix: "t", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "c"},
		HashPolicy: []*typev3.HashPolicy{{PolicySpecifier: &typev3.HashPolicy_FilterState_{FilterState: &typev3.HashPolicy_FilterState{Key: "k"}}},
			{PolicySpecifier: &typev3.HashPolicy_SourceIp_{SourceIp: &typev3.HashPolicy_SourceIp{}}}}}
	snap, err := Translate(Input{Listeners: []*listenerv3.Listener{staticListener(
		&listenerv3.Filter{Name: "tcp", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(tp)}})}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m := snap.Listeners[0].Chains["only"].TCP; !m.HashSourceIP {
		t.Errorf("hash_policy source_ip not applied: %+v", m)
	}
	found := false
	for _, u := range snap.Unsupported {
		found = found || u.Name == "hash_policy" && !u.FailClosed
	}
	if !found {
		t.Errorf("filter_state hash policy not reported: %+v", snap.Unsupported)
	}
}

// tcp_proxy fields the waypoint reads: max_connect_attempts applied, the
// ones it does not apply reported.
func TestTCPProxyFieldsAppliedOrReported(t *testing.T) {
	tp := &tcpproxyv3.TcpProxy{StatPrefix: "t", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "c"},
		MaxConnectAttempts: wrapperspb.UInt32(3),
		TunnelingConfig:    &tcpproxyv3.TcpProxy_TunnelingConfig{Hostname: "h:443"},
		MetadataMatch:      &corev3.Metadata{},
		OnDemand:           &tcpproxyv3.TcpProxy_OnDemand{},
	}
	snap, err := Translate(Input{Listeners: []*listenerv3.Listener{staticListener(
		&listenerv3.Filter{Name: "tcp", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(tp)}})}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m := snap.Listeners[0].Chains["only"].TCP; m.MaxConnectAttempts != 3 {
		t.Errorf("max_connect_attempts: %+v", m)
	}
	reported := map[string]bool{}
	for _, u := range snap.Unsupported {
		reported[u.Name] = true
	}
	for _, name := range []string{"tunneling_config", "metadata_match", "on_demand"} {
		if !reported[name] {
			t.Errorf("%s not reported: %+v", name, snap.Unsupported)
		}
	}
}

// listener_filters_timeout: unset is Envoy's 15 s, 0s no timeout at all.
func TestListenerFiltersTimeoutZero(t *testing.T) {
	for _, tc := range []struct {
		d    *durationpb.Duration
		want time.Duration
	}{{nil, 15 * time.Second}, {durationpb.New(0), model.NoTimeout}, {durationpb.New(time.Second), time.Second}} {
		l := hcmChain(router())
		l.ListenerFiltersTimeout = tc.d
		snap, err := Translate(Input{Listeners: []*listenerv3.Listener{l}}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := snap.Listeners[0].HeaderTimeout; got != tc.want {
			t.Errorf("listener_filters_timeout %v: %v, want %v", tc.d, got, tc.want)
		}
	}
}

// continue_on_listener_filters_timeout is read (istiod's waypoint listener
// leaves it false: an undetected connection is closed at the timeout).
func TestContinueOnListenerFiltersTimeout(t *testing.T) {
	for _, want := range []bool{false, true} {
		l := hcmChain(router())
		l.ContinueOnListenerFiltersTimeout = want
		snap, err := Translate(Input{Listeners: []*listenerv3.Listener{l}}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := snap.Listeners[0].ContinueOnFilterTimeout; got != want {
			t.Errorf("continue_on_listener_filters_timeout %v: got %v", want, got)
		}
	}
}
