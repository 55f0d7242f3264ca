// Package translatetest builds istiod-shaped waypoint configuration for
// tests and benchmarks of the translator, the xDS session and the engine.
package translatetest

import (
	"fmt"
	"net/netip"
	"time"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	xdsmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	networkv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/network/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kmesh-go/kmesh/waypoint/translate"
)

// MustAny wraps a message in an Any.
func MustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

// ToChain is a matcher action naming a filter chain, as istiod writes it.
func ToChain(name string) *xdsmatcher.Matcher_OnMatch {
	return &xdsmatcher.Matcher_OnMatch{OnMatch: &xdsmatcher.Matcher_OnMatch_Action{
		Action: &xdscore.TypedExtensionConfig{Name: name, TypedConfig: MustAny(wrapperspb.String(name))}}}
}

// ToMatcher nests a matcher.
func ToMatcher(m *xdsmatcher.Matcher) *xdsmatcher.Matcher_OnMatch {
	return &xdsmatcher.Matcher_OnMatch{OnMatch: &xdsmatcher.Matcher_OnMatch_Matcher{Matcher: m}}
}

// ExactTree is an exact-match map over an input.
func ExactTree(input proto.Message, m map[string]*xdsmatcher.Matcher_OnMatch, onNo *xdsmatcher.Matcher_OnMatch) *xdsmatcher.Matcher {
	return &xdsmatcher.Matcher{OnNoMatch: onNo, MatcherType: &xdsmatcher.Matcher_MatcherTree_{MatcherTree: &xdsmatcher.Matcher_MatcherTree{
		Input:    &xdscore.TypedExtensionConfig{Name: "in", TypedConfig: MustAny(input)},
		TreeType: &xdsmatcher.Matcher_MatcherTree_ExactMatchMap{ExactMatchMap: &xdsmatcher.Matcher_MatcherTree_MatchMap{Map: m}},
	}}}
}

// Synthetic builds istiod-shaped waypoint config for n HTTP services with
// three pods each: one main_internal listener (VIP -> port -> chain),
// inline routes with a retry policy, inbound-vip EDS clusters and their
// internal endpoints. For benchmarks and the memory budget.
func Synthetic(n int) translate.Input {
	in := translate.Input{Version: "synthetic", Endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}
	ipm := &xdsmatcher.IPMatcher{}
	l := &listenerv3.Listener{Name: "main_internal",
		ListenerSpecifier: &listenerv3.Listener_InternalListener{InternalListener: &listenerv3.Listener_InternalListenerConfig{}}}
	router := MustAny(&routerv3.Router{})
	for i := range n {
		host := fmt.Sprintf("svc-%d.ns-%d.svc.cluster.local", i, i%10)
		vip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		cluster := "inbound-vip|80|http|" + host
		hcm := &hcmv3.HttpConnectionManager{StatPrefix: cluster, CodecType: hcmv3.HttpConnectionManager_AUTO,
			RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{Name: cluster,
				VirtualHosts: []*routev3.VirtualHost{{Name: "inbound|http|80", Domains: []string{"*"}, Routes: []*routev3.Route{{
					Name:  "default",
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
						Timeout:          durationpb.New(0),
						RetryPolicy: &routev3.RetryPolicy{RetryOn: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
							NumRetries: wrapperspb.UInt32(2), RetryHostPredicate: []*routev3.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts"}},
							HostSelectionRetryMaxAttempts: 5, RetriableStatusCodes: []uint32{503}},
					}},
				}}}}}},
			HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
		}
		l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{Name: cluster, Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: MustAny(hcm)}}}})
		ports := ExactTree(&networkv3.DestinationPortInput{}, map[string]*xdsmatcher.Matcher_OnMatch{"80": ToChain(cluster)}, nil)
		ipm.RangeMatchers = append(ipm.RangeMatchers, &xdsmatcher.IPMatcher_IPRangeMatcher{
			Ranges:  []*xdscore.CidrRange{{AddressPrefix: vip.String(), PrefixLen: wrapperspb.UInt32(32)}},
			OnMatch: ToMatcher(ports)})

		in.Clusters = append(in.Clusters, &clusterv3.Cluster{Name: cluster,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
			ConnectTimeout:       durationpb.New(10 * time.Second), LbPolicy: clusterv3.Cluster_LEAST_REQUEST,
			CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				MaxConnections: wrapperspb.UInt32(4294967295), MaxRequests: wrapperspb.UInt32(4294967295),
				MaxPendingRequests: wrapperspb.UInt32(4294967295), MaxRetries: wrapperspb.UInt32(4294967295)}}},
		})
		cla := &endpointv3.ClusterLoadAssignment{ClusterName: cluster, Endpoints: []*endpointv3.LocalityLbEndpoints{{}}}
		for p := range 3 {
			pod := netip.AddrFrom4([4]byte{10, 244, byte(i >> 6), byte(i<<2 | p)})
			md, _ := structpb.NewStruct(map[string]any{"local": netip.AddrPortFrom(pod, 8080).String()})
			cla.Endpoints[0].LbEndpoints = append(cla.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
					Address: &corev3.Address_EnvoyInternalAddress{EnvoyInternalAddress: &corev3.EnvoyInternalAddress{
						AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: "connect_originate"},
						EndpointId:           netip.AddrPortFrom(pod, 8080).String()}}}}},
				Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.listener.original_dst": md}},
			})
		}
		in.Endpoints[cluster] = cla
	}
	l.FilterChainMatcher = &xdsmatcher.Matcher{MatcherType: &xdsmatcher.Matcher_MatcherTree_{MatcherTree: &xdsmatcher.Matcher_MatcherTree{
		Input:    &xdscore.TypedExtensionConfig{Name: "ip", TypedConfig: MustAny(&networkv3.DestinationIPInput{})},
		TreeType: &xdsmatcher.Matcher_MatcherTree_CustomMatch{CustomMatch: &xdscore.TypedExtensionConfig{Name: "ip", TypedConfig: MustAny(ipm)}},
	}}}
	in.Listeners = []*listenerv3.Listener{l}
	return in
}
