package translate

import (
	"maps"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/route"
)

func fwd(a *routev3.RouteAction) *routev3.Route_Route { return &routev3.Route_Route{Route: a} }

func toCluster(c string) *routev3.RouteAction {
	return &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: c}}
}

func prefix(p string) *routev3.RouteMatch {
	return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p}}
}

func TestRoutes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		route *routev3.Route
		check func(t *testing.T, r *model.Route)
		err   string
	}{
		{name: "defaults", route: &routev3.Route{Match: prefix("/"), Action: fwd(toCluster("c"))},
			check: func(t *testing.T, r *model.Route) {
				if r.Forward.Cluster != "c" || r.Forward.Timeout != 15*time.Second || r.Forward.Retry != nil || r.Match.Prefix != "/" {
					t.Errorf("%+v", r.Forward)
				}
			}},
		{name: "path case-insensitive", route: &routev3.Route{Match: &routev3.RouteMatch{
			PathSpecifier: &routev3.RouteMatch_Path{Path: "/Exact"}, CaseSensitive: wrapperspb.Bool(false)}, Action: fwd(toCluster("c"))},
			check: func(t *testing.T, r *model.Route) {
				if r.Match.Path != "/Exact" || !r.Match.CaseInsensitive {
					t.Errorf("%+v", r.Match)
				}
			}},
		{name: "regex is anchored", route: &routev3.Route{Match: &routev3.RouteMatch{
			PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/api/v[0-9]+"}}}, Action: fwd(toCluster("c"))},
			check: func(t *testing.T, r *model.Route) {
				if !r.Match.Regex.MatchString("/api/v2") || r.Match.Regex.MatchString("/api/v2/x") || r.Match.Regex.MatchString("x/api/v2") {
					t.Errorf("regex %s", r.Match.Regex)
				}
			}},
		{name: "bad regex", route: &routev3.Route{Match: &routev3.RouteMatch{
			PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "("}}}, Action: fwd(toCluster("c"))},
			err: "regex"},
		{name: "path separated prefix", route: &routev3.Route{Match: &routev3.RouteMatch{
			PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/api"}}, Action: fwd(toCluster("c"))},
			check: func(t *testing.T, r *model.Route) {
				if r.Match.PathSeparatedPrefix != "/api" {
					t.Errorf("%+v", r.Match)
				}
			}},
		{name: "headers query grpc", route: &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			Grpc: &routev3.RouteMatch_GrpcRouteMatchOptions{},
			Headers: []*routev3.HeaderMatcher{
				{Name: "X-Exact", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "a"}, IgnoreCase: true}}},
				{Name: "x-present", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}, InvertMatch: true},
				{Name: "x-range", HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{RangeMatch: &typev3.Int64Range{Start: 1, End: 10}}},
				{Name: "x-legacy-prefix", HeaderMatchSpecifier: &routev3.HeaderMatcher_PrefixMatch{PrefixMatch: "pre"}},
			},
			QueryParameters: []*routev3.QueryParameterMatcher{
				{Name: "q", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: "z"}}}},
				{Name: "p", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}},
			}}, Action: fwd(toCluster("c"))},
			check: func(t *testing.T, r *model.Route) {
				h := r.Match.Headers
				if len(h) != 4 || h[0].Name != "x-exact" || !h[0].Value.IgnoreCase || h[0].Value.Exact != "a" ||
					*h[1].Present != true || !h[1].Invert || h[2].Range.Start != 1 || h[2].Range.End != 10 || h[3].Value.Kind != "prefix" {
					t.Errorf("headers %+v", h)
				}
				q := r.Match.Query
				if len(q) != 2 || q[0].Value.Suffix != "z" || !q[1].Present || !r.Match.GRPC {
					t.Errorf("query %+v grpc %v", q, r.Match.GRPC)
				}
			}},
		{name: "weighted", route: &routev3.Route{Match: prefix("/"), Action: fwd(&routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{
			WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
				{Name: "a", Weight: wrapperspb.UInt32(3), RequestHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-w", Value: "a"}}}},
				{Name: "b", Weight: wrapperspb.UInt32(1)}}}}})},
			check: func(t *testing.T, r *model.Route) {
				w := r.Forward.Weighted
				if w.Total != 4 || w.Clusters[0].Weight != 3 || w.Clusters[0].Headers.RequestAdd[0].Name != "x-w" || !w.Clusters[0].Headers.RequestAdd[0].Append {
					t.Errorf("%+v", w)
				}
			}},
		{name: "weighted host rewrite", route: &routev3.Route{Match: prefix("/"), Action: fwd(&routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{
			WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
				{Name: "a", Weight: wrapperspb.UInt32(1), HostRewriteSpecifier: &routev3.WeightedCluster_ClusterWeight_HostRewriteLiteral{HostRewriteLiteral: "a.example"}},
				{Name: "b", Weight: wrapperspb.UInt32(1)}}}}})},
			check: func(t *testing.T, r *model.Route) {
				w := r.Forward.Weighted
				if w.Clusters[0].HostRewrite != "a.example" || w.Clusters[1].HostRewrite != "" {
					t.Errorf("%+v", w)
				}
			}},
		{name: "append x-forwarded-host", route: &routev3.Route{Match: prefix("/"), Action: fwd(&routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"}, AppendXForwardedHost: true,
			HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "backend.example"}})},
			check: func(t *testing.T, r *model.Route) {
				if !r.Forward.AppendXForwardedHost {
					t.Errorf("%+v", r.Forward)
				}
			}},
		{name: "weights against total_weight", route: &routev3.Route{Match: prefix("/"), Action: fwd(&routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{
			WeightedClusters: &routev3.WeightedCluster{TotalWeight: wrapperspb.UInt32(100), Clusters: []*routev3.WeightedCluster_ClusterWeight{{Name: "a", Weight: wrapperspb.UInt32(3)}}}}})},
			err: "total_weight"},
		{name: "rewrites", route: &routev3.Route{Match: prefix("/"), Action: fwd(&routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"}, PrefixRewrite: "/v2/",
			RegexRewrite:         &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^/service/([^/]+)(/.*)$"}, Substitution: `\2/instance/\1$`},
			HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "backend.example"}})},
			check: func(t *testing.T, r *model.Route) {
				f := r.Forward
				got := f.RegexRewrite.Pattern.ReplaceAllString("/service/foo/v1/api", f.RegexRewrite.Substitution)
				if f.PrefixRewrite != "/v2/" || f.HostRewrite != "backend.example" || got != "/v1/api/instance/foo$" {
					t.Errorf("rewrite %q -> %q", f.RegexRewrite.Substitution, got)
				}
			}},
		{name: "retry", route: &routev3.Route{Match: prefix("/"), Action: fwd(&routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"},
			Timeout: durationpb.New(0), IdleTimeout: durationpb.New(time.Minute),
			RetryPolicy: &routev3.RetryPolicy{RetryOn: "5xx, retriable-status-codes", NumRetries: wrapperspb.UInt32(4), PerTryTimeout: durationpb.New(time.Second),
				RetriableStatusCodes: []uint32{409}, RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(10 * time.Millisecond), MaxInterval: durationpb.New(time.Second)},
				RetryHostPredicate: []*routev3.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts"}}, HostSelectionRetryMaxAttempts: 3}})},
			check: func(t *testing.T, r *model.Route) {
				p := r.Forward.Retry
				if !p.On["5xx"] || !p.On["retriable-status-codes"] || p.NumRetries != 4 || p.PerTryTimeout != time.Second || p.RetriableStatusCodes[0] != 409 ||
					p.BackoffBase != 10*time.Millisecond || p.BackoffMax != time.Second || !p.PreviousHosts || p.HostSelectionAttempts != 3 ||
					r.Forward.Timeout != 0 || r.Forward.IdleTimeout != time.Minute {
					t.Errorf("%+v", p)
				}
			}},
		{name: "mirror and hash", route: &routev3.Route{Match: prefix("/"), Action: fwd(&routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"},
			RequestMirrorPolicies: []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "m", RuntimeFraction: &corev3.RuntimeFractionalPercent{
				DefaultValue: &typev3.FractionalPercent{Numerator: 2500, Denominator: typev3.FractionalPercent_TEN_THOUSAND}}}, {Cluster: "all", DisableShadowHostSuffixAppend: true}},
			HashPolicy: []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: "X-User"}}}}})},
			check: func(t *testing.T, r *model.Route) {
				m := r.Forward.Mirrors
				if len(m) != 2 || m[0] != (model.Mirror{Cluster: "m", Percent: 25}) || m[1] != (model.Mirror{Cluster: "all", Percent: 100, KeepHost: true}) || len(r.Forward.Hash) != 1 || r.Forward.Hash[0].Header != "X-User" {
					t.Errorf("%+v %+v", m, r.Forward.Hash)
				}
			}},
		{name: "redirect", route: &routev3.Route{Match: prefix("/"), Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{
			SchemeRewriteSpecifier: &routev3.RedirectAction_HttpsRedirect{HttpsRedirect: true}, HostRedirect: "h", PortRedirect: 8443,
			PathRewriteSpecifier: &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: "/new"}, ResponseCode: routev3.RedirectAction_PERMANENT_REDIRECT, StripQuery: true}}},
			check: func(t *testing.T, r *model.Route) {
				if *r.Redirect != (model.RedirectAction{Scheme: "https", Host: "h", Port: 8443, PrefixRewrite: "/new", StripQuery: true, Status: 308}) {
					t.Errorf("%+v", r.Redirect)
				}
			}},
		{name: "direct response", route: &routev3.Route{Match: prefix("/"), Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: 418, Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "teapot"}}}}},
			check: func(t *testing.T, r *model.Route) {
				if r.Direct.Status != 418 || string(r.Direct.Body) != "teapot" {
					t.Errorf("%+v", r.Direct)
				}
			}},
		{name: "header ops append semantics", route: &routev3.Route{Match: prefix("/"), Action: fwd(toCluster("c")),
			RequestHeadersToAdd: []*corev3.HeaderValueOption{
				{Header: &corev3.HeaderValue{Key: "X-Default", Value: "1"}},                                // append is the default
				{Header: &corev3.HeaderValue{Key: "x-legacy", Value: "1"}, Append: wrapperspb.Bool(false)}, // the deprecated flag wins
				{Header: &corev3.HeaderValue{Key: "x-absent", Value: "1"}, AppendAction: corev3.HeaderValueOption_ADD_IF_ABSENT},
				{Header: &corev3.HeaderValue{Key: "x-set", Value: "1"}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD},
				{Header: &corev3.HeaderValue{Key: "x-only", Value: "1"}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS},
				{Header: &corev3.HeaderValue{Key: "x-empty", Value: ""}}, // dropped
				{Header: &corev3.HeaderValue{Key: "x-keep", Value: ""}, KeepEmptyValue: true},
			},
			RequestHeadersToRemove: []string{"X-Gone"}},
			check: func(t *testing.T, r *model.Route) {
				want := []model.HeaderValue{{Name: "x-default", Value: "1", Append: true}, {Name: "x-legacy", Value: "1"},
					{Name: "x-absent", Value: "1", AddIfAbsent: true}, {Name: "x-set", Value: "1"}, {Name: "x-only", Value: "1", OnlyIfPresent: true},
					{Name: "x-keep", Value: "", Append: true, KeepEmpty: true}}
				got := r.Headers.RequestAdd
				if len(got) != len(want) {
					t.Fatalf("%+v", got)
				}
				for i := range want {
					if got[i] != want[i] {
						t.Errorf("#%d %+v, want %+v", i, got[i], want[i])
					}
				}
				if r.Headers.RequestRemove[0] != "x-gone" {
					t.Errorf("%+v", r.Headers.RequestRemove)
				}
			}},
		{name: "unsupported match denies", route: &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 50}}}, Action: fwd(toCluster("c"))},
			check: func(t *testing.T, r *model.Route) {
				if r.Deny == nil || r.Deny.HTTPStatus != 503 || r.Forward != nil || !strings.Contains(r.Deny.Reason, "runtime_fraction") {
					t.Errorf("%+v", r)
				}
			}},
		{name: "cluster_header denies", route: &routev3.Route{Match: prefix("/"), Action: fwd(&routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_ClusterHeader{ClusterHeader: "x-c"}})},
			check: func(t *testing.T, r *model.Route) {
				if r.Deny == nil {
					t.Errorf("%+v", r)
				}
			}},
		{name: "no action", route: &routev3.Route{Match: prefix("/")}, err: "no action"},
		{name: "header value operators kept", route: &routev3.Route{Match: prefix("/"), Action: fwd(toCluster("c")),
			RequestHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-real-ip", Value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}}},
			check: func(t *testing.T, r *model.Route) {
				if v := r.Headers.RequestAdd[0].Value; v != "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" {
					t.Errorf("%q", v)
				}
			}},
		{name: "header value with a lone percent", route: &routev3.Route{Match: prefix("/"), Action: fwd(toCluster("c")),
			ResponseHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-p", Value: "100%"}}}},
			err: "header x-p: \"100%\": a '%' at 3 starts no operator"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &translator{}
			r, err := tr.route(tc.route, "test")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, r)
		})
	}
}

func TestConnectMatcherNeverMatches(t *testing.T) {
	tr := &translator{}
	r, err := tr.route(&routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_ConnectMatcher_{ConnectMatcher: &routev3.RouteMatch_ConnectMatcher{}}},
		Action: fwd(toCluster("c"))}, "test")
	if err != nil || r != nil {
		t.Fatalf("route %+v err %v", r, err)
	}
	if len(tr.unsup) != 1 || tr.unsup[0].FailClosed {
		t.Fatalf("unsupported %+v", tr.unsup)
	}
}

func TestPercent(t *testing.T) {
	for _, tc := range []struct {
		p    *typev3.FractionalPercent
		want float64
	}{
		{nil, 100},
		{&typev3.FractionalPercent{Numerator: 7}, 7},
		{&typev3.FractionalPercent{Numerator: 50000, Denominator: typev3.FractionalPercent_MILLION}, 5},
		{&typev3.FractionalPercent{Numerator: 2500, Denominator: typev3.FractionalPercent_TEN_THOUSAND}, 25},
		{&typev3.FractionalPercent{Numerator: 500}, 100},
	} {
		if got := percent(tc.p); got != tc.want {
			t.Errorf("percent(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
}

func TestVirtualHostAttemptCount(t *testing.T) {
	tr := &translator{}
	for _, tc := range []struct {
		vh          *routev3.VirtualHost
		req, inResp bool
	}{
		{vh: &routev3.VirtualHost{Name: "off", Domains: []string{"*"}}},
		{vh: &routev3.VirtualHost{Name: "on", Domains: []string{"*"}, IncludeRequestAttemptCount: true, IncludeAttemptCountInResponse: true}, req: true, inResp: true},
	} {
		v, err := tr.virtualHost(tc.vh, "test")
		if err != nil {
			t.Fatal(err)
		}
		if v.AttemptCount != tc.req || v.AttemptCountInResponse != tc.inResp {
			t.Errorf("%s: attempt count %v, in response %v", tc.vh.Name, v.AttemptCount, v.AttemptCountInResponse)
		}
	}
}

// An operator Envoy knows and the waypoint does not fill in is reported,
// not refused: the route runs, the header comes out empty.
func TestHeaderValueOperatorNotFilledInIsReported(t *testing.T) {
	tr := &translator{}
	r, err := tr.route(&routev3.Route{Match: prefix("/"), Action: fwd(toCluster("c")),
		RequestHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-u", Value: "%UPSTREAM_HOST%"}}}}, "rt")
	if err != nil {
		t.Fatal(err)
	}
	if r.Forward == nil || len(r.Headers.RequestAdd) != 1 {
		t.Fatalf("%+v", r)
	}
	if len(tr.unsup) != 1 || tr.unsup[0].Name != "%UPSTREAM_HOST%" || tr.unsup[0].FailClosed || !strings.Contains(tr.unsup[0].Where, "header x-u") {
		t.Errorf("reported %+v", tr.unsup)
	}
}

// Route and virtual-host fields that change Envoy's behaviour but that the
// proxy does not apply are reported, not dropped silently; none can deny
// traffic, so the route still forwards.
func TestRouteFieldsNotAppliedReported(t *testing.T) {
	tr := &translator{}
	vh := &routev3.VirtualHost{Name: "vh", Domains: []string{"*"},
		HedgePolicy:                &routev3.HedgePolicy{HedgeOnPerTryTimeout: true},
		PerRequestBufferLimitBytes: wrapperspb.UInt32(1024),
		RequestMirrorPolicies:      []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "m"}},
		Routes: []*routev3.Route{{Match: prefix("/"), RequestBodyBufferLimit: wrapperspb.UInt64(2048),
			Action: fwd(&routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"},
				HedgePolicy:            &routev3.HedgePolicy{HedgeOnPerTryTimeout: true},
				InternalRedirectPolicy: &routev3.InternalRedirectPolicy{},
				MaxStreamDuration: &routev3.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(time.Second),
					GrpcTimeoutHeaderOffset: durationpb.New(time.Millisecond)},
				RequestMirrorPolicies: []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "m", HostRewriteLiteral: "other",
					RequestHeadersMutations: []*mutationv3.HeaderMutation{{Action: &mutationv3.HeaderMutation_Remove{Remove: "x"}}}}},
			})}},
	}
	v, err := tr.virtualHost(vh, "test")
	if err != nil {
		t.Fatal(err)
	}
	if r := v.Routes[0]; r.Forward == nil || r.Deny != nil || len(r.Forward.Mirrors) != 1 {
		t.Fatalf("route %+v", r)
	}
	got := map[string]bool{}
	for _, u := range tr.unsup {
		if u.FailClosed {
			t.Errorf("fail-closed %+v", u)
		}
		got[u.Name] = true
	}
	for _, n := range []string{"hedge_policy", "per_request_buffer_limit_bytes", "request_mirror_policies",
		"request_body_buffer_limit", "internal_redirect_policy", "max_stream_duration", "grpc_timeout_header_offset",
		"request_mirror_policies host_rewrite_literal", "request_mirror_policies request_headers_mutations"} {
		if !got[n] {
			t.Errorf("%s not reported; reported %v", n, got)
		}
	}
}

// Envoy rewrites grpc-timeout upstream only on the deprecated
// max_grpc_timeout (what istiod sends), not when the route has
// max_stream_duration.
func TestGRPCTimeoutRewriteOnlyOnTheDeprecatedField(t *testing.T) {
	for _, c := range []struct {
		name    string
		a       *routev3.RouteAction
		max     time.Duration
		rewrite bool
	}{
		{"max_grpc_timeout", &routev3.RouteAction{MaxGrpcTimeout: durationpb.New(3 * time.Second)}, 3 * time.Second, true}, //nolint:staticcheck // istiod's field
		{"grpc_timeout_header_max", &routev3.RouteAction{MaxStreamDuration: &routev3.RouteAction_MaxStreamDuration{
			GrpcTimeoutHeaderMax: durationpb.New(2 * time.Second)}}, 2 * time.Second, false},
		{"both", &routev3.RouteAction{MaxGrpcTimeout: durationpb.New(3 * time.Second), //nolint:staticcheck // istiod's field
			MaxStreamDuration: &routev3.RouteAction_MaxStreamDuration{GrpcTimeoutHeaderMax: durationpb.New(2 * time.Second)}}, 2 * time.Second, false},
	} {
		c.a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: "c"}
		tr := &translator{}
		v, err := tr.virtualHost(&routev3.VirtualHost{Name: "vh", Domains: []string{"*"},
			Routes: []*routev3.Route{{Match: prefix("/"), Action: fwd(c.a)}}}, "test")
		if err != nil {
			t.Fatal(err)
		}
		f := v.Routes[0].Forward
		if f.MaxGRPCTimeout == nil || *f.MaxGRPCTimeout != c.max || f.RewriteGRPCTimeout != c.rewrite {
			t.Errorf("%s: max %v rewrite %v, want %v %v", c.name, f.MaxGRPCTimeout, f.RewriteGRPCTimeout, c.max, c.rewrite)
		}
	}
}

// ignore_port_in_host_matching (istiod sets it on sidecar and gateway
// route tables) reaches the table.
func TestIgnorePortInHostMatchingTranslated(t *testing.T) {
	tr := &translator{}
	rt, err := tr.routeTable(&routev3.RouteConfiguration{Name: "rc", IgnorePortInHostMatching: true,
		VirtualHosts: []*routev3.VirtualHost{{Name: "vh", Domains: []string{"a"}, Routes: []*routev3.Route{{Match: prefix("/"), Action: fwd(toCluster("c"))}}}}}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if !rt.IgnorePortInHostMatching {
		t.Error("ignore_port_in_host_matching dropped")
	}
}

// The deprecated exact_match with an empty value matches any value of a
// header that is there (Envoy's HeaderDataExactMatch), not only an empty
// one; a missing header still fails, inverted or not.
func TestLegacyEmptyExactMatchIsAnyValue(t *testing.T) {
	for _, c := range []struct {
		invert       bool
		value        *string
		want         bool
		treatMissing bool
	}{
		{value: ptrTo("abc"), want: true},
		{value: ptrTo(""), want: true},
		{value: nil, want: false},
		{invert: true, value: ptrTo("abc"), want: false},
		{invert: true, value: nil, want: false},
		{treatMissing: true, value: nil, want: true},
	} {
		hm, err := headerMatch(&routev3.HeaderMatcher{Name: "x-h", InvertMatch: c.invert, TreatMissingHeaderAsEmpty: c.treatMissing,
			HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: ""}}) //nolint:staticcheck // the deprecated field is the point
		if err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest("GET", "/", nil)
		if c.value != nil {
			r.Header.Set("X-H", *c.value)
		}
		if got := route.CompileHeaders([]model.HeaderMatch{hm}).Match(r); got != c.want {
			t.Errorf("invert %v treat-missing %v value %v: %v, want %v", c.invert, c.treatMissing, c.value, got, c.want)
		}
	}
}

func ptrTo[T any](v T) *T { return &v }

// Route fields that change what a request matches or where it goes and
// that the waypoint does not apply are never dropped silently: a match
// condition or a rewrite it cannot do denies the route (fail closed), a
// route-table option is reported.
func TestRouteFieldsNotUnderstoodAreReported(t *testing.T) {
	tr := &translator{}
	rc := &routev3.RouteConfiguration{Name: "rc", VhostHeader: "x-vhost", MostSpecificHeaderMutationsWins: true,
		IgnorePathParametersInPathMatching: true, InternalOnlyHeaders: []string{"x-internal"},
		VirtualHosts: []*routev3.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: []*routev3.Route{
			{Name: "cookie", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/c"},
				Cookies: []*routev3.CookieMatcher{{Name: "user", StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "a"}}}}},
				Action: fwd(toCluster("c"))},
			{Name: "path-formatter", Match: prefix("/p"), Action: fwd(&routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"}, PathRewrite: "/x"})},
			{Name: "host-formatter", Match: prefix("/h"), Action: fwd(&routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"},
				HostRewriteSpecifier: &routev3.RouteAction_HostRewrite{HostRewrite: "%REQ(x-host)%"}})},
			{Name: "redirect-formatter", Match: prefix("/r"), Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{
				PathRewriteSpecifier: &routev3.RedirectAction_PathRewrite{PathRewrite: "/y"}}}},
		}}}}
	rt, err := tr.routeTable(rc, "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rt.VirtualHosts[0].Routes {
		if r.Deny == nil {
			t.Errorf("route %s runs without what it asks for: %+v", r.Name, r)
		}
	}
	got := map[string]bool{}
	for _, u := range tr.unsup {
		got[u.Name] = true
	}
	for _, n := range []string{"vhost_header", "most_specific_header_mutations_wins", "ignore_path_parameters_in_path_matching", "internal_only_headers"} {
		if !got[n] {
			t.Errorf("%s not reported; reported %v", n, got)
		}
	}
}

func TestRouteUpgradeConfigs(t *testing.T) {
	tr := &translator{}
	v, err := tr.virtualHost(&routev3.VirtualHost{Name: "vh", Domains: []string{"*"}, Routes: []*routev3.Route{{Match: prefix("/"),
		Action: fwd(&routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"},
			UpgradeConfigs: []*routev3.RouteAction_UpgradeConfig{{UpgradeType: "WebSocket", Enabled: wrapperspb.Bool(false)}, {UpgradeType: "echo"}}})}}}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if got := v.Routes[0].Forward.Upgrades; !maps.Equal(got, map[string]bool{"websocket": false, "echo": true}) {
		t.Errorf("upgrades %v", got)
	}
}

// Every hash policy istiod makes from a DestinationRule's consistentHash
// (httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName) is
// translated, in order with its terminal flag; what is not applied is
// reported, not dropped.
func TestHashPolicies(t *testing.T) {
	hp := func(spec any, terminal bool) *routev3.RouteAction_HashPolicy {
		p := &routev3.RouteAction_HashPolicy{Terminal: terminal}
		switch s := spec.(type) {
		case *routev3.RouteAction_HashPolicy_Header:
			p.PolicySpecifier = &routev3.RouteAction_HashPolicy_Header_{Header: s}
		case *routev3.RouteAction_HashPolicy_Cookie:
			p.PolicySpecifier = &routev3.RouteAction_HashPolicy_Cookie_{Cookie: s}
		case *routev3.RouteAction_HashPolicy_ConnectionProperties:
			p.PolicySpecifier = &routev3.RouteAction_HashPolicy_ConnectionProperties_{ConnectionProperties: s}
		case *routev3.RouteAction_HashPolicy_QueryParameter:
			p.PolicySpecifier = &routev3.RouteAction_HashPolicy_QueryParameter_{QueryParameter: s}
		case *routev3.RouteAction_HashPolicy_FilterState:
			p.PolicySpecifier = &routev3.RouteAction_HashPolicy_FilterState_{FilterState: s}
		}
		return p
	}
	a := toCluster("c")
	a.HashPolicy = []*routev3.RouteAction_HashPolicy{
		hp(&routev3.RouteAction_HashPolicy_Header{HeaderName: "x-user"}, false),
		// The longest a protobuf Duration holds (10000 years): past what a
		// time.Duration does.
		hp(&routev3.RouteAction_HashPolicy_Cookie{Name: "session", Ttl: &durationpb.Duration{Seconds: 315576000000}, Path: "/app",
			Attributes: []*routev3.RouteAction_HashPolicy_CookieAttribute{{Name: "SameSite", Value: "Strict"}, {Name: "Secure"}}}, false),
		hp(&routev3.RouteAction_HashPolicy_Cookie{Name: "plain"}, false),
		hp(&routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: false}, false),
		hp(&routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}, true),
		hp(&routev3.RouteAction_HashPolicy_QueryParameter{Name: "user"}, false),
		hp(&routev3.RouteAction_HashPolicy_FilterState{Key: "k"}, false),
		hp(&routev3.RouteAction_HashPolicy_Header{HeaderName: "x-rw", RegexRewrite: &matcherv3.RegexMatchAndSubstitute{
			Pattern: &matcherv3.RegexMatcher{Regex: "a"}, Substitution: "b"}}, false),
	}
	tr := &translator{}
	r, err := tr.route(&routev3.Route{Match: prefix("/"), Action: fwd(a)}, "rt")
	if err != nil {
		t.Fatal(err)
	}
	ttl := int64(315576000000)
	want := []model.HashPolicy{
		{Header: "X-User"},
		{Cookie: &model.HashCookie{Name: "session", TTL: &ttl, Path: "/app",
			Attributes: []model.CookieAttribute{{Name: "SameSite", Value: "Strict"}, {Name: "Secure"}}}},
		{Cookie: &model.HashCookie{Name: "plain"}},
		{SourceIP: true, Terminal: true},
		{QueryParameter: "user"},
		{Header: "X-Rw"},
	}
	got := r.Forward.Hash
	if len(got) != len(want) {
		t.Fatalf("got %d policies %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Header != w.Header || g.SourceIP != w.SourceIP || g.QueryParameter != w.QueryParameter || g.Terminal != w.Terminal ||
			(g.Cookie == nil) != (w.Cookie == nil) {
			t.Errorf("policy %d: %+v, want %+v", i, g, w)
			continue
		}
		if w.Cookie != nil {
			gc, wc := g.Cookie, w.Cookie
			if gc.Name != wc.Name || gc.Path != wc.Path || (gc.TTL == nil) != (wc.TTL == nil) || gc.TTL != nil && *gc.TTL != *wc.TTL ||
				len(gc.Attributes) != len(wc.Attributes) || len(wc.Attributes) > 0 && gc.Attributes[1] != wc.Attributes[1] {
				t.Errorf("cookie %d: %+v, want %+v", i, gc, wc)
			}
		}
	}
	var names []string
	for _, u := range tr.unsup {
		if u.FailClosed {
			t.Errorf("%+v fails closed: a hash policy cannot deny", u)
		}
		names = append(names, u.Name)
	}
	if strings.Join(names, ",") != "hash_policy,hash_policy.header.regex_rewrite" {
		t.Errorf("reported %v", names)
	}
}
