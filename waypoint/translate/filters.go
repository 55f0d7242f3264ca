package translate

import (
	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	"google.golang.org/protobuf/types/known/anypb"

	udpatypev1 "github.com/cncf/xds/go/udpa/type/v1"
)

// Filter type URLs the translator acts on.
const (
	typeHCM      = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	typeTCPProxy = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
	typeRouter   = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
	typeFault    = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
	typeCORS     = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
	typeCORSPol  = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
	typeRouteFC  = "type.googleapis.com/envoy.config.route.v3.FilterConfig"

	typeTypedStructXDS  = "type.googleapis.com/xds.type.v3.TypedStruct"
	typeTypedStructUDPA = "type.googleapis.com/udpa.type.v1.TypedStruct"

	typeProxyProtocolLF = "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"
	typeHTTPInspector   = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
	typeTLSInspector    = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
	typeOriginalDstLF   = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"

	typeHTTPProtocolOptions = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	previousHostsPredicate  = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)

// filterClass says what to do with a filter we do not run.
type filterClass struct {
	// harmless: skipped, recorded. Otherwise the chain denies with
	// status.
	harmless bool
	status   int
	reason   string
}

// Filters that may deny or change traffic in ways we do not enforce yet.
// RBAC and local rate limits are next; until then their chains deny.
var denyingFilters = map[string]filterClass{
	"type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC":                           {status: 403, reason: "RBAC (AuthorizationPolicy) is not enforced yet: denied rather than allowed unchecked"},
	"type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC":                        {status: 403, reason: "RBAC (AuthorizationPolicy) is not enforced yet: denied rather than allowed unchecked"},
	"type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz":                  {status: 403, reason: "external authorization is not supported: denied rather than allowed unchecked"},
	"type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz":               {status: 403, reason: "external authorization is not supported: denied rather than allowed unchecked"},
	"type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication":         {status: 403, reason: "JWT authentication (RequestAuthentication) is not supported: denied rather than allowed unchecked"},
	"type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit":      {status: 503, reason: "local rate limit is not enforced yet: denied rather than unlimited"},
	"type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit":   {status: 503, reason: "local rate limit is not enforced yet: denied rather than unlimited"},
	"type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit":                 {status: 503, reason: "global rate limit is not supported"},
	"type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm":                           {status: 503, reason: "Wasm plugins do not run here"},
	"type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm":                        {status: 503, reason: "Wasm plugins do not run here"},
	"type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua":                             {status: 503, reason: "Lua filters do not run here"},
	"type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor":          {status: 503, reason: "external processing is not supported"},
	"type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation":      {status: 503, reason: "header mutation (e.g. XFCC from the peer identity) is not applied: denied rather than forwarding unverified headers"},
	"type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit": {status: 503, reason: "connection limits are not enforced"},
}

// Filters istiod adds that only observe or annotate (metadata exchange,
// stats, filter state for Envoy's own plumbing): skipping them changes no
// routing or policy decision.
var harmlessFilters = map[string]string{
	"type.googleapis.com/io.istio.http.peer_metadata.Config":                            "peer metadata for telemetry: peers come from the address xDS",
	"type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange":            "metadata exchange for telemetry",
	"type.googleapis.com/envoy.extensions.network_filters.peer_metadata.Config":         "HBONE peer metadata for telemetry",
	"type.googleapis.com/envoy.extensions.network_filters.peer_metadata.UpstreamConfig": "HBONE peer metadata for telemetry",
	"type.googleapis.com/stats.PluginConfig":                                            "Istio stats: the waypoint keeps its own metrics",
	"type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config":      "filter state for Envoy's internal routing (original destination, authority), which the PROXY header carries here",
	"type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config":   "filter state for Envoy's internal routing (original destination, authority), which the PROXY header carries here",
	"type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig":      "gRPC stats",
	"type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig":     "upstream ALPN override for mTLS, which this data path does not do",
}

// classify says what to do with a filter other than the ones translated.
func classify(typeURL string) filterClass {
	if r, ok := harmlessFilters[typeURL]; ok {
		return filterClass{harmless: true, reason: r}
	}
	if c, ok := denyingFilters[typeURL]; ok {
		return c
	}
	return filterClass{status: 503, reason: "unknown filter: denied rather than run without it"}
}

// innerType is a filter's type URL, looking through TypedStruct wrappers
// (istiod wraps its own filters' configs in them).
func innerType(a *anypb.Any) string {
	switch a.GetTypeUrl() {
	case typeTypedStructXDS:
		var ts xdstypev3.TypedStruct
		if a.UnmarshalTo(&ts) == nil {
			return ts.GetTypeUrl()
		}
	case typeTypedStructUDPA:
		var ts udpatypev1.TypedStruct
		if a.UnmarshalTo(&ts) == nil {
			return ts.GetTypeUrl()
		}
	}
	return a.GetTypeUrl()
}
