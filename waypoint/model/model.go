// Package model is kmesh-waypoint's configuration as the proxy engine runs
// it: listeners, filter chains and how one is chosen, HTTP route tables,
// clusters and their endpoints, and the workload identities of peers. It is
// plain Go, immutable once built, with everything a request needs already
// compiled (regexes, header matchers, weights), so the hot path never
// touches a protobuf.
//
// Two sources build it: istiod's xDS for a waypoint (package
// waypoint/translate) and a standard Envoy bootstrap's static_resources
// (the same translator). The engine (package waypoint/proxy) swaps whole
// Snapshots atomically; per-cluster runtime state (pools, cursors) is kept
// by cluster name across swaps.
//
// The types follow Envoy's API closely (names in comments), so a reader who
// knows Envoy's config knows these; what Envoy does that we do not emulate
// (internal listeners, HBONE tunnelling) is described where it is dropped.
package model

import (
	"net/netip"
	"regexp"
	"strconv"
	"time"
)

// Snapshot is one complete, consistent configuration.
type Snapshot struct {
	// Version identifies the snapshot in logs, the config dump and the
	// metrics (e.g. the xDS versions it was built from, or a file's hash).
	Version string
	// Listeners in the order they were given.
	Listeners []*Listener
	// Clusters by name.
	Clusters map[string]*Cluster
	// Peers maps workload addresses to their identities (from istiod's
	// address xDS), for telemetry labels and, later, L7 policy. May be nil.
	Peers *Peers
	// Unsupported lists every piece of configuration that was read but is
	// not enforced: the config dump shows it and a counter counts it.
	Unsupported []Unsupported
}

// Unsupported is configuration the translator met and did not apply.
type Unsupported struct {
	// Where: "listener main_internal / chain inbound-vip|80|http|x / http filter".
	Where string `json:"where"`
	// Name and TypeURL of the filter or field.
	Name    string `json:"name"`
	TypeURL string `json:"typeUrl,omitempty"`
	// FailClosed: it could deny traffic, so the chain or route carrying it
	// answers with Deny instead of running without it.
	FailClosed bool   `json:"failClosed,omitempty"`
	Reason     string `json:"reason"`
	// Count is how many places this entry stands for (the same filter on
	// every chain is one entry); 0 means 1.
	Count int `json:"count,omitempty"`
}

// Listener accepts connections and hands each to one filter chain.
type Listener struct {
	Name string
	// Address to listen on. For istiod's waypoint config this is the
	// waypoint's own listen address (the kernel sends to it), not what
	// istiod names (an internal listener).
	Address netip.AddrPort
	// ProxyProtocol: the connection starts with a PROXY protocol header
	// (v1 or v2) whose destination is the original destination used to
	// choose a chain and, for pass-through clusters, where to connect.
	ProxyProtocol bool
	// AllowWithoutProxyProtocol accepts connections that start without a
	// header (Envoy's allow_requests_without_proxy_protocol); their original
	// destination is the listener's local address.
	AllowWithoutProxyProtocol bool
	// HeaderTimeout bounds the wait for the PROXY header and protocol
	// sniffing (Envoy's listener_filters_timeout; 0: the engine's default;
	// NoTimeout: none, Envoy's 0s).
	HeaderTimeout time.Duration
	// ContinueOnFilterTimeout is Envoy's continue_on_listener_filters_timeout:
	// a connection whose protocol is still unknown when HeaderTimeout ends
	// goes on to chain selection (as TCP) instead of being closed. istiod
	// leaves it false on the waypoint's listener, so Envoy closes a
	// server-first client on a port that needs sniffing.
	ContinueOnFilterTimeout bool
	// Chains by name; Select names one of them.
	Chains map[string]*FilterChain
	// Select picks a chain for a connection. Nil: DefaultChain for all.
	Select ChainSelector
	// DefaultChain is used when Select finds nothing (Envoy's
	// default_filter_chain). Nil: such connections are closed.
	DefaultChain *FilterChain
}

// ConnInfo is what a chain is chosen by.
type ConnInfo struct {
	// Destination is the original destination (PROXY header, or the local
	// address without one).
	Destination netip.AddrPort
	// Source is the client address (PROXY header, or the TCP peer).
	Source netip.AddrPort
	// Protocol as detected by sniffing the first bytes: ProtocolHTTP1,
	// ProtocolHTTP10, ProtocolHTTP2 (h2c prior knowledge) or ProtocolTCP.
	// Empty when the selector did not ask for it (NeedsProtocol false).
	Protocol string
}

// Detected application protocols, as Envoy's http_inspector names them.
const (
	ProtocolHTTP1 = "http/1.1"
	// ProtocolHTTP10: any HTTP/1.x request line but HTTP/1.1.
	ProtocolHTTP10 = "http/1.0"
	ProtocolHTTP2  = "h2c"
	ProtocolTCP    = "" // nothing HTTP was recognised
)

// ChainSelector chooses a filter chain by connection attributes.
type ChainSelector interface {
	// Select returns the chain's name, or "" for no match.
	Select(ci ConnInfo) string
	// NeedsProtocol reports whether Select may depend on the sniffed
	// protocol for a connection to this destination; when false the
	// engine does not wait for the client's first bytes to choose.
	NeedsProtocol(dst netip.AddrPort) bool
}

// RuleLister is implemented by selectors that can say what they match, for
// the config dump (optional: a selector without it dumps no rules).
type RuleLister interface {
	Rules() []SelectorRule
}

// SelectorRule is one way to reach a chain: every listed condition must
// hold; an empty list means any value.
type SelectorRule struct {
	Chain string `json:"chain"`
	// Destinations and Sources are CIDR prefixes.
	Destinations []string `json:"destinations,omitempty"`
	Ports        []uint32 `json:"ports,omitempty"`
	// Protocols as in ConnInfo.Protocol; "tcp" stands for ProtocolTCP
	// (nothing HTTP recognised).
	Protocols []string `json:"protocols,omitempty"`
	Sources   []string `json:"sources,omitempty"`
	// Other conditions the selector evaluates, in words (e.g. a filter
	// state input that never has data here).
	Other []string `json:"other,omitempty"`
}

// FilterChain is one way of handling a connection. Exactly one of HTTP,
// TCP or Deny is set.
type FilterChain struct {
	Name string
	HTTP *HTTPConnectionManager
	TCP  *TCPProxy
	// Deny closes (TCP) or answers (HTTP, when the engine can tell it is
	// HTTP) every connection with its reason logged: the fail-closed form
	// of a chain whose configuration we cannot enforce.
	Deny *Deny
	// Metadata for telemetry: the service this chain serves ("" for
	// direct-to-pod chains).
	Service ServiceRef
}

// ServiceRef names the destination service of a chain or cluster.
type ServiceRef struct {
	Hostname  string // reviews.default.svc.cluster.local
	Name      string // reviews
	Namespace string // default
}

// Deny is a fail-closed answer.
type Deny struct {
	// HTTPStatus for HTTP requests (403 for policy we cannot evaluate, 503
	// for anything else); TCP connections are closed.
	HTTPStatus int    `json:"httpStatus"`
	Reason     string `json:"reason"`
}

// HTTPConnectionManager is Envoy's HCM: how HTTP is served on a chain.
type HTTPConnectionManager struct {
	StatPrefix string
	// Codec: "auto" (HTTP/1.1 or h2c prior knowledge), "http1", "http2".
	Codec string
	// Routes is the route table (inline, or RDS resolved by the
	// translator). Nil with RDSName set: not received yet (503 NR).
	Routes  *RouteTable
	RDSName string
	// Filters in order, the router last. Filters not in this list were
	// either harmless and skipped (recorded in Snapshot.Unsupported) or
	// turned the chain into a Deny.
	Filters []HTTPFilter
	// GenerateRequestID adds x-request-id when missing (default true).
	GenerateRequestID bool
	// StreamIdleTimeout, RequestTimeout: 0 means none.
	StreamIdleTimeout time.Duration
	RequestTimeout    time.Duration
	// ServerName is the Server header on local replies ("istio-envoy"
	// in istiod's config); empty: none.
	ServerName string
	// NormalizePath: normalize :path per RFC 3986 (resolve "." and "..",
	// decode unreserved characters) before routing, as Envoy's
	// normalize_path (istiod sets it); MergeSlashes: collapse "//".
	NormalizePath bool
	MergeSlashes  bool
	// EscapedSlashes is Envoy's path_with_escaped_slashes_action for
	// %2F and %5C in the path: "" keeps them, "reject" answers 400,
	// "redirect" redirects (307) to the path with them unescaped,
	// "forward" unescapes them and routes and forwards that (istiod's
	// choice with DECODE_AND_MERGE_SLASHES path normalization).
	EscapedSlashes string
	// SuppressEnvoyHeaders is the router's suppress_envoy_headers: no
	// x-envoy-upstream-service-time on responses, no
	// x-envoy-expected-rq-timeout-ms and x-envoy-original-path upstream.
	// istiod sets it when the mesh's proxyHeaders turn Envoy's debug
	// headers off; by default they go out, as Envoy sends them.
	SuppressEnvoyHeaders bool
	// UseRemoteAddress and XffNumTrustedHops: where the stream's client
	// address (Envoy's downstream remote address, which a source-IP hash
	// policy reads) comes from. UseRemoteAddress: the connection's (the
	// PROXY header's source). Otherwise (istiod's waypoint HCM) the last
	// X-Forwarded-For address once XffNumTrustedHops more are skipped
	// from the right, the connection's when that is no IP address.
	UseRemoteAddress  bool
	XffNumTrustedHops uint32
	// Upgrades are the upgrade types (lower case) the HCM lets through,
	// Envoy's upgrade_configs (istiod: websocket); a request asking for
	// another is refused with 403. Nil: any (a model built by hand).
	Upgrades map[string]bool
}

// HTTPFilter is one HTTP filter with its listener-level config. Per-route
// overrides live on Route/VirtualHost (PerFilter).
type HTTPFilter struct {
	// Name as configured ("envoy.filters.http.fault").
	Name  string
	Fault *Fault // envoy.filters.http.fault
	CORS  *CORS  // envoy.filters.http.cors (policy is per route/vhost)
	// Router marks envoy.filters.http.router.
	Router bool
	// Off: disabled in the HTTP connection manager; it runs only where a
	// route or virtual host enables it (PerFilterConfig.Enabled).
	Off bool
}

// RouteTable is Envoy's RouteConfiguration.
type RouteTable struct {
	Name         string
	VirtualHosts []*VirtualHost
	// IgnorePortInHostMatching: the authority's port is dropped before
	// it is matched against the domains (ignore_port_in_host_matching).
	IgnorePortInHostMatching bool
	// Header operations applied to every request/response (after the
	// route's and the virtual host's, as in Envoy).
	Headers HeaderOps
	// PerFilter: the route configuration's own typed_per_filter_config,
	// the least specific level (after the route's and the virtual
	// host's).
	PerFilter PerFilterConfig
}

// VirtualHost groups routes by authority.
type VirtualHost struct {
	Name string
	// Domains: exact, "*.suffix", "prefix.*", "*"; with or without port.
	Domains []string
	Routes  []*Route
	// Retry is the default for routes without their own.
	Retry     *RetryPolicy
	Headers   HeaderOps
	PerFilter PerFilterConfig
	// AttemptCount: x-envoy-attempt-count on every upstream request (the
	// try's number), and AttemptCountInResponse: on the answer to the
	// client (the tries made). Envoy's include_request_attempt_count and
	// include_attempt_count_in_response; both off unless configured.
	AttemptCount, AttemptCountInResponse bool
}

// Route is one match and what to do with it.
type Route struct {
	Name  string
	Match RouteMatch
	// Exactly one of Forward, Redirect, Direct is set.
	Forward  *ForwardAction
	Redirect *RedirectAction
	Direct   *DirectResponse
	// Deny: a route whose configuration we cannot enforce.
	Deny      *Deny
	Headers   HeaderOps
	PerFilter PerFilterConfig
}

// RouteMatch is Envoy's RouteMatch; all conditions must hold.
type RouteMatch struct {
	// One of Prefix, Path, Regex, PathSeparatedPrefix (none set: match
	// every path, as Envoy's prefix "/"). Regex is compiled anchored
	// (^(?:...)$): Envoy's safe_regex must match the whole path, so
	// MatchString on the path without its query is the test.
	Prefix              string
	Path                string
	Regex               *regexp.Regexp
	PathSeparatedPrefix string
	// CaseInsensitive applies to Prefix and Path (Envoy's case_sensitive
	// false).
	CaseInsensitive bool
	Headers         []HeaderMatch
	Query           []QueryMatch
	// GRPC: only requests with content-type application/grpc*.
	GRPC bool
}

// StringMatch is Envoy's StringMatcher. Regex is compiled anchored, as
// Envoy's safe_regex matches whole values.
type StringMatch struct {
	Exact, Prefix, Suffix, Contains string
	Regex                           *regexp.Regexp
	IgnoreCase                      bool
	// Kind says which field is in use: "exact", "prefix", "suffix",
	// "contains", "regex".
	Kind string
}

// HeaderMatch is Envoy's HeaderMatcher.
type HeaderMatch struct {
	Name string // lower case
	// One of: Value (string match), Present, Range.
	Value   *StringMatch
	Present *bool
	// Range: [Start, End) on the header's integer value.
	Range *struct{ Start, End int64 }
	// Invert the result (invert_match).
	Invert bool
	// TreatMissingAsEmpty (treat_missing_header_as_empty).
	TreatMissingAsEmpty bool
}

// QueryMatch is Envoy's QueryParameterMatcher.
type QueryMatch struct {
	Name string
	// Value nil with Present true: the parameter must be there.
	Value   *StringMatch
	Present bool
}

// ForwardAction is Envoy's RouteAction.
type ForwardAction struct {
	// One of Cluster, Weighted.
	Cluster string
	// Upgrades turn upgrade types (lower case) on or off for this route
	// over the HCM's (the route action's upgrade_configs).
	Upgrades map[string]bool
	Weighted *WeightedClusters
	// ClusterNotFoundStatus answers a request whose cluster is not
	// there (Envoy's cluster_not_found_response_code; istiod sets 500
	// for waypoints); 0: 503, Envoy's default.
	ClusterNotFoundStatus int
	// PrefixRewrite replaces the matched prefix (or path); RegexRewrite
	// substitutes in the path.
	PrefixRewrite string
	RegexRewrite  *RegexRewrite
	// HostRewrite sets :authority to a literal; AutoHostRewrite to the
	// upstream host's address.
	HostRewrite     string
	AutoHostRewrite bool
	// AppendXForwardedHost: a host rewrite appends the authority it
	// replaces to x-forwarded-host (append_x_forwarded_host; istiod sets
	// it with a rewrite when the mesh turns x-forwarded-host on).
	AppendXForwardedHost bool
	// Timeout for the whole request including retries (Envoy's default is
	// 15 s; istiod sets 0 = none unless a VirtualService says otherwise).
	Timeout     time.Duration
	IdleTimeout time.Duration
	// Retry overrides the virtual host's policy; nil: use the vhost's.
	Retry *RetryPolicy
	// Mirrors: copies of the request sent fire-and-forget.
	Mirrors []Mirror
	// MaxGRPCTimeout: honour grpc-timeout up to this (0: Envoy's
	// max_stream_duration.grpc_timeout_header_max unset, ignore it).
	MaxGRPCTimeout *time.Duration
	// RewriteGRPCTimeout: a gRPC request's grpc-timeout goes upstream as
	// the time this try is given (Envoy's router does so for the
	// deprecated max_grpc_timeout, which istiod sets on every route, not
	// for max_stream_duration), so the server knows its real deadline.
	RewriteGRPCTimeout bool
	// Hash is the route's hash_policy, for ring-hash and Maglev
	// clusters: the policies that give a value are combined in order,
	// up to the first terminal one that does (Envoy's HashPolicyImpl).
	Hash []HashPolicy
}

// HashPolicy is one entry of a route's hash_policy; one of Header,
// Cookie, SourceIP and QueryParameter is set (istiod makes one from a
// DestinationRule's consistentHash: httpHeaderName, httpCookie,
// useSourceIp, httpQueryParameterName).
type HashPolicy struct {
	// Header hashes the values of a request header, in canonical form
	// ("X-User"); several values are sorted first, so their order does
	// not matter.
	Header string
	// Cookie hashes a request cookie's value, and makes the cookie when
	// the request has none and the policy has a TTL (sticky sessions).
	Cookie *HashCookie
	// SourceIP hashes the client's address (the PROXY header's).
	SourceIP bool
	// QueryParameter hashes the first value of the named query
	// parameter, as sent (not decoded).
	QueryParameter string
	// Terminal: once a hash is made here or before, later policies are
	// not looked at.
	Terminal bool
}

// String is the policy as the config dump shows it.
func (p HashPolicy) String() string {
	var s string
	switch {
	case p.Header != "":
		s = "header " + p.Header
	case p.Cookie != nil:
		s = "cookie " + p.Cookie.Name
		if p.Cookie.TTL != nil {
			s += " ttl=" + strconv.FormatInt(*p.Cookie.TTL, 10) + "s"
		}
		if p.Cookie.Path != "" {
			s += " path=" + p.Cookie.Path
		}
	case p.SourceIP:
		s = "source_ip"
	case p.QueryParameter != "":
		s = "query " + p.QueryParameter
	}
	if p.Terminal {
		s += " terminal"
	}
	return s
}

// HashCookie is a cookie hash policy (Envoy's HashPolicy.Cookie).
type HashCookie struct {
	Name string
	// TTL in whole seconds, as Envoy keeps it: nil, no cookie is made for
	// a request without one (no hash then); 0, a session cookie;
	// otherwise its Max-Age. Seconds, not a time.Duration: a protobuf
	// Duration reaches 10000 years, a time.Duration 292.
	TTL  *int64
	Path string
	// Attributes are added to a cookie made here ("; name=value", or
	// "; name" without a value).
	Attributes []CookieAttribute
}

// CookieAttribute is one attribute of a made cookie.
type CookieAttribute struct{ Name, Value string }

// NoTimeout is a timeout turned off where 0 stands for a default.
const NoTimeout time.Duration = -1

// WeightedClusters splits traffic (gray release).
type WeightedClusters struct {
	Clusters []WeightedCluster
	Total    uint32 // sum of weights (Envoy's total_weight or computed)
}

// WeightedCluster is one share of a split.
type WeightedCluster struct {
	Name    string
	Weight  uint32
	Headers HeaderOps
	// HostRewrite sets :authority for the requests this cluster takes
	// (its host_rewrite_literal); the route's HostRewrite, when set, wins.
	HostRewrite string
}

// RegexRewrite is Envoy's regex_rewrite.
type RegexRewrite struct {
	Pattern      *regexp.Regexp
	Substitution string // Go regexp.Expand syntax, translated from RE2's \1
}

// Mirror is Envoy's RequestMirrorPolicy.
type Mirror struct {
	Cluster string `json:"cluster"`
	// Percent of requests mirrored, 0..100 (default 100).
	Percent float64 `json:"percent"`
	// KeepHost: disable_shadow_host_suffix_append, the copy keeps the
	// authority as is instead of "host-shadow[:port]" (istiod sets it).
	KeepHost bool `json:"keepHost,omitempty"`
}

// RedirectAction is Envoy's RedirectAction.
type RedirectAction struct {
	Scheme        string `json:"scheme,omitempty"`
	Host          string `json:"host,omitempty"`
	Port          uint32 `json:"port,omitempty"`
	Path          string `json:"path,omitempty"`
	PrefixRewrite string `json:"prefixRewrite,omitempty"`
	StripQuery    bool   `json:"stripQuery,omitempty"`
	// Status: 301 (default), 302, 303, 307, 308.
	Status int `json:"status"`
}

// DirectResponse answers from the waypoint.
type DirectResponse struct {
	Status int
	Body   []byte
}

// RetryPolicy is Envoy's RetryPolicy.
type RetryPolicy struct {
	// On is the set of retry_on conditions: "5xx", "gateway-error",
	// "reset", "connect-failure", "refused-stream", "retriable-4xx",
	// "retriable-status-codes", "retriable-headers", and gRPC's
	// "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
	// "unavailable".
	On         map[string]bool
	NumRetries int // default 1 when the policy exists
	// PerTryTimeout: 0 means the route timeout applies to each try.
	PerTryTimeout        time.Duration
	RetriableStatusCodes []int
	// Backoff: base 25 ms and max 10x base when zero, as in Envoy.
	BackoffBase, BackoffMax time.Duration
	// PreviousHosts: try another endpoint than the ones already tried
	// (previous_hosts retry predicate).
	PreviousHosts bool
	// HostSelectionAttempts bounds how often a host is re-picked to avoid
	// previous hosts (host_selection_retry_max_attempts).
	HostSelectionAttempts int
}

// HeaderOps adds and removes headers.
type HeaderOps struct {
	RequestAdd     []HeaderValue
	RequestRemove  []string
	ResponseAdd    []HeaderValue
	ResponseRemove []string
}

// HeaderValue is one header to add.
type HeaderValue struct {
	Name  string
	Value string
	// Append: add beside existing values; false: overwrite (Envoy's
	// append_action OVERWRITE_IF_EXISTS_OR_ADD). AddIfAbsent: only when
	// missing (ADD_IF_ABSENT).
	Append      bool
	AddIfAbsent bool
	// OnlyIfPresent: overwrite the header when it is there, never add it
	// (OVERWRITE_IF_EXISTS).
	OnlyIfPresent bool
	// KeepEmpty: add the header even when its value is, or its operators
	// come out, empty (keep_empty_value).
	KeepEmpty bool
}

// PerFilterConfig holds per-route (or per-vhost, or per-route-table)
// overrides of HTTP filters, Envoy's typed_per_filter_config, by filter
// name.
type PerFilterConfig struct {
	Fault *Fault
	CORS  *CORS
	// Disabled names filters turned off for this route.
	Disabled map[string]bool
	// Enabled names filters this level configures without turning them
	// off (a FilterConfig with disabled false, or a config of their own):
	// a filter the HTTP connection manager disables by default runs here
	// (Envoy: the most specific level that names a filter decides).
	Enabled map[string]bool
}

// Fault is Envoy's HTTPFault.
type Fault struct {
	// Delay: Fixed for Percent of requests (0..100, fractional allowed).
	Delay        time.Duration
	DelayPercent float64
	// Abort with HTTPStatus, or GRPCStatus (then HTTP 200 with
	// grpc-status), for AbortPercent of requests.
	AbortHTTPStatus int
	AbortGRPCStatus *int
	AbortPercent    float64
	// DelayDenominator / AbortDenominator: the configured percentage's
	// denominator (100, 10000 or 1000000; 0 reads as 100). A percentage
	// header is a numerator over it, as in Envoy.
	DelayDenominator int
	AbortDenominator int
	// HeaderDelay / HeaderAbort: the x-envoy-fault-* request headers
	// choose (Envoy's header_delay / header_abort).
	HeaderDelay bool
	HeaderAbort bool
	// MaxActive bounds concurrent faults; nil is unbounded, and 0 lets
	// none in, as in Envoy.
	MaxActive *int
	// Only for requests to these upstream clusters / with these headers.
	UpstreamClusters []string
	Headers          []HeaderMatch
}

// CORS is Envoy's CorsPolicy.
type CORS struct {
	AllowOrigins     []StringMatch
	AllowMethods     string
	AllowHeaders     string
	ExposeHeaders    string
	MaxAge           string
	AllowCredentials *bool
	// AllowPrivateNetworkAccess: a preflight asking for private network
	// access is granted it.
	AllowPrivateNetworkAccess *bool
	// ForwardNotMatchingPreflights: a preflight from an origin not
	// allowed goes upstream (nil: Envoy's default, true) or is answered
	// here without Access-Control-Allow-Origin (false).
	ForwardNotMatchingPreflights *bool
	// Disabled: the filter is off for this route (filter_enabled 0).
	Disabled bool
}

// TCPProxy forwards bytes to a cluster.
type TCPProxy struct {
	StatPrefix string
	// One of Cluster, Weighted.
	Cluster  string
	Weighted *WeightedClusters
	// IdleTimeout: 0 is Envoy's default of 1 h; NoTimeout turns it off
	// (Envoy's idle_timeout of 0s).
	IdleTimeout time.Duration
	// MaxConnectionDuration: 0 means none.
	MaxConnectionDuration time.Duration
	// HashSourceIP hashes the client's address (the PROXY header's
	// source) for ring-hash and Maglev clusters (hash_policy source_ip).
	HashSourceIP bool
	// MaxConnectAttempts: how many connects (each to a host picked again)
	// before the connection fails; 0 is Envoy's default of 1.
	MaxConnectAttempts uint32
}

// Cluster is an upstream: how to pick and reach its endpoints.
type Cluster struct {
	Name string
	// Kind: "eds", "static" (endpoints given), "original_dst" (connect to
	// the connection's original destination: istiod's encap/direct
	// chains, and Envoy's ORIGINAL_DST clusters).
	Kind string
	// LB: "round_robin" (default), "least_request", "random",
	// "ring_hash", "maglev".
	LB             string
	ConnectTimeout time.Duration // default 10 s (Envoy's 5 s is istiod's 10 s)
	// Protocol towards endpoints: "http1", "http2", or "downstream" (the
	// client's own protocol, Envoy's use_downstream_protocol_config).
	Protocol string
	// Endpoints by locality priority. Each priority takes a share of the
	// load by its health, as Envoy's priority load: see
	// OverprovisioningFactor.
	Endpoints [][]Endpoint
	// OverprovisioningFactor in percent (the assignment's
	// policy.overprovisioning_factor): a priority with this share of
	// healthy endpoints or more takes all the load it is offered. 0 means
	// Envoy's 140.
	OverprovisioningFactor int
	// LocalityWeighted: Envoy's locality weighted LB (common_lb_config
	// locality_weighted_lb_config), where each locality of a priority
	// takes the share of its LocalityWeight, scaled by its availability.
	LocalityWeighted bool
	// Limits (circuit breakers, default priority): 0 means Envoy's
	// default of 1024 for connections, pending and requests, 3 retries.
	MaxConnections, MaxPendingRequests, MaxRequests, MaxRetries int
	// MaxRequestsPerConnection: 0 means unlimited.
	MaxRequestsPerConnection int
	IdleTimeout              time.Duration
	Service                  ServiceRef
	// PanicThreshold is Envoy's healthy_panic_threshold in percent: a
	// priority whose healthy (and degraded) share of endpoints falls
	// under it sends its load to all its endpoints, healthy or not. 0
	// turns panic mode off (istiod's setting whenever a DestinationRule
	// has outlierDetection); the translation fills Envoy's default, 50.
	PanicThreshold float64
	// Outlier: eject endpoints that fail in a row (nil: no detection).
	Outlier *OutlierDetection
}

// OutlierDetection is Envoy's consecutive-error outlier detection (what
// istiod makes of a DestinationRule's outlierDetection), every field
// filled in (the translation applies Envoy's defaults).
type OutlierDetection struct {
	// Consecutive5xx answers (and, unless SplitLocalOrigin, connect
	// failures, resets and timeouts, counted as 503 and 504) eject an
	// endpoint, EnforcingConsecutive5xx percent of the time.
	Consecutive5xx          uint32
	EnforcingConsecutive5xx uint32
	// ConsecutiveGatewayFailure: 502, 503 and 504 (and local failures
	// unless split) in a row; Envoy enforces it 0 % of the time unless
	// told (istiod: 100 % when consecutiveGatewayErrors is set).
	ConsecutiveGatewayFailure          uint32
	EnforcingConsecutiveGatewayFailure uint32
	// SplitLocalOrigin counts connect failures, resets and timeouts
	// apart, against ConsecutiveLocalOriginFailure.
	SplitLocalOrigin                       bool
	ConsecutiveLocalOriginFailure          uint32
	EnforcingConsecutiveLocalOriginFailure uint32
	Interval, BaseEjectionTime             time.Duration
	MaxEjectionTime, MaxEjectionTimeJitter time.Duration
	MaxEjectionPercent                     uint32
	AlwaysEjectOneHost                     bool
}

// Endpoint is one upstream address.
type Endpoint struct {
	Address netip.AddrPort `json:"address"`
	Weight  uint32         `json:"weight"` // default 1
	Healthy bool           `json:"healthy"`
	// Degraded (EDS DEGRADED, not Healthy): used only for the load that
	// healthy endpoints of all priorities cannot take.
	Degraded bool `json:"degraded,omitempty"`
	// Locality ("region/zone/subzone") and its weight, for LocalityWeighted
	// clusters.
	Locality       string `json:"locality,omitempty"`
	LocalityWeight uint32 `json:"localityWeight,omitempty"`
	// Workload identity for telemetry, when known ("" otherwise).
	Workload string `json:"workload,omitempty"`
	// Hostname is the endpoint's (Envoy's endpoint.hostname): what
	// auto_host_rewrite puts in Host; none, no rewrite.
	Hostname string `json:"hostname,omitempty"`
}

// Peers are the workloads istiod's address xDS names, by address.
type Peers struct {
	ByAddress map[netip.Addr]*Peer
}

// Peer is a workload's identity as Istio's telemetry labels it.
type Peer struct {
	Name              string // pod name
	Namespace         string
	WorkloadName      string // deployment
	ServiceAccount    string
	TrustDomain       string
	CanonicalName     string // app
	CanonicalRevision string // version
	ClusterID         string
}

// Principal is the peer's SPIFFE id, or "" when unknown.
func (p *Peer) Principal() string {
	if p == nil || p.ServiceAccount == "" {
		return ""
	}
	td := p.TrustDomain
	if td == "" {
		td = "cluster.local"
	}
	return "spiffe://" + td + "/ns/" + p.Namespace + "/sa/" + p.ServiceAccount
}

// Lookup returns the peer at an address (nil if unknown or no Peers).
func (p *Peers) Lookup(a netip.Addr) *Peer {
	if p == nil {
		return nil
	}
	return p.ByAddress[a.Unmap()]
}
