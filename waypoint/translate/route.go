package translate

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	commonfaultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kmesh-go/kmesh/waypoint/filter"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/route"
)

// defaultRouteTimeout is Envoy's when a route sets none.
const defaultRouteTimeout = 15 * time.Second

func (t *translator) routeTable(rc *routev3.RouteConfiguration, where string) (*model.RouteTable, error) {
	rt := &model.RouteTable{Name: rc.GetName(), IgnorePortInHostMatching: rc.GetIgnorePortInHostMatching()}
	var err error
	if rt.Headers, err = t.headerOps(where, rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove(),
		rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove()); err != nil {
		return nil, errorf(where, "%v", err)
	}
	if rc.GetVhds() != nil {
		return nil, errorf(where, "VHDS is not supported")
	}
	if rt.PerFilter, err = t.perFilter(rc.GetTypedPerFilterConfig(), where); err != nil {
		return nil, err
	}
	// Table options that change which virtual host, route or headers a
	// request gets; reported so the difference from Envoy is visible.
	if rc.GetVhostHeader() != "" {
		t.unsupported(model.Unsupported{Where: where, Name: "vhost_header",
			Reason: "the virtual host is chosen by :authority, not by " + rc.GetVhostHeader()})
	}
	if rc.GetMostSpecificHeaderMutationsWins() {
		t.unsupported(model.Unsupported{Where: where, Name: "most_specific_header_mutations_wins",
			Reason: "header operations run route first, table last: the least specific level wins"})
	}
	if rc.GetIgnorePathParametersInPathMatching() {
		t.unsupported(model.Unsupported{Where: where, Name: "ignore_path_parameters_in_path_matching",
			Reason: "path parameters (;...) take part in path matching"})
	}
	if len(rc.GetInternalOnlyHeaders()) > 0 {
		t.unsupported(model.Unsupported{Where: where, Name: "internal_only_headers",
			Reason: "these headers are not removed from requests"})
	}
	seen := map[string]string{}
	for _, vh := range rc.GetVirtualHosts() {
		v, err := t.virtualHost(vh, where+" / virtual host "+vh.GetName())
		if err != nil {
			return nil, err
		}
		for _, d := range v.Domains {
			if other, dup := seen[d]; dup {
				return nil, errorf(where, "domain %q is in virtual hosts %s and %s", d, other, vh.GetName())
			}
			seen[d] = vh.GetName()
		}
		rt.VirtualHosts = append(rt.VirtualHosts, v)
	}
	return rt, nil
}

func (t *translator) virtualHost(vh *routev3.VirtualHost, where string) (*model.VirtualHost, error) {
	v := &model.VirtualHost{Name: vh.GetName(), AttemptCount: vh.GetIncludeRequestAttemptCount(),
		AttemptCountInResponse: vh.GetIncludeAttemptCountInResponse()}
	if len(vh.GetDomains()) == 0 {
		return nil, errorf(where, "no domains")
	}
	for _, d := range vh.GetDomains() {
		v.Domains = append(v.Domains, strings.ToLower(d))
	}
	var err error
	if vh.GetRetryPolicy() != nil {
		if v.Retry, err = t.retryPolicy(vh.GetRetryPolicy(), where); err != nil {
			return nil, err
		}
	}
	if v.Headers, err = t.headerOps(where, vh.GetRequestHeadersToAdd(), vh.GetRequestHeadersToRemove(),
		vh.GetResponseHeadersToAdd(), vh.GetResponseHeadersToRemove()); err != nil {
		return nil, errorf(where, "%v", err)
	}
	if v.PerFilter, err = t.perFilter(vh.GetTypedPerFilterConfig(), where); err != nil {
		return nil, err
	}
	if c := vh.GetCors(); c != nil && v.PerFilter.CORS == nil {
		if v.PerFilter.CORS, err = legacyCORS(c); err != nil {
			return nil, errorf(where, "%v", err)
		}
	}
	t.notApplied(where, vh.GetHedgePolicy(), vh.GetPerRequestBufferLimitBytes(), vh.GetRequestBodyBufferLimit())
	if len(vh.GetRequestMirrorPolicies()) > 0 {
		t.unsupported(model.Unsupported{Where: where, Name: "request_mirror_policies",
			Reason: "virtual host mirrors are not sent"})
	}
	if vh.GetRequireTls() != routev3.VirtualHost_NONE {
		// Plaintext is all the waypoint sees: Envoy would redirect every
		// request to https.
		t.unsupported(model.Unsupported{Where: where, Name: "require_tls", FailClosed: true,
			Reason: "require_tls on a plaintext listener: every route denies"})
	}
	for i, r := range vh.GetRoutes() {
		name := r.GetName()
		if name == "" {
			name = fmt.Sprintf("#%d", i)
		}
		mr, err := t.route(r, where+" / route "+name)
		if err != nil {
			return nil, err
		}
		if mr == nil {
			continue
		}
		if vh.GetRequireTls() != routev3.VirtualHost_NONE {
			mr.Forward, mr.Redirect, mr.Direct = nil, nil, nil
			mr.Deny = &model.Deny{HTTPStatus: 503, Reason: "require_tls on a plaintext listener"}
		}
		v.Routes = append(v.Routes, mr)
	}
	return v, nil
}

// route translates one route; nil means the route can never match here
// (e.g. a CONNECT matcher, or a TLS condition on plaintext).
func (t *translator) route(r *routev3.Route, where string) (*model.Route, error) {
	mr := &model.Route{Name: r.GetName()}
	m, denyMatch, never, err := t.routeMatch(r.GetMatch(), where)
	if err != nil {
		return nil, err
	}
	if never {
		return nil, nil
	}
	mr.Match = m
	if mr.Headers, err = t.headerOps(where, r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove(),
		r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove()); err != nil {
		return nil, errorf(where, "%v", err)
	}
	if mr.PerFilter, err = t.perFilter(r.GetTypedPerFilterConfig(), where); err != nil {
		return nil, err
	}
	t.notApplied(where, nil, r.GetPerRequestBufferLimitBytes(), r.GetRequestBodyBufferLimit())
	deny := denyMatch
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		f, d, err := t.forward(a.Route, where)
		if err != nil {
			return nil, err
		}
		mr.Forward = f
		if deny == "" {
			deny = d
		}
		if c := a.Route.GetCors(); c != nil && mr.PerFilter.CORS == nil {
			if mr.PerFilter.CORS, err = legacyCORS(c); err != nil {
				return nil, errorf(where, "%v", err)
			}
		}
	case *routev3.Route_Redirect:
		rd, d, err := redirect(a.Redirect, where)
		if err != nil {
			return nil, err
		}
		mr.Redirect = rd
		if deny == "" {
			deny = d
		}
	case *routev3.Route_DirectResponse:
		dr := &model.DirectResponse{Status: int(a.DirectResponse.GetStatus())}
		if dr.Status < 200 || dr.Status > 599 {
			return nil, errorf(where, "direct_response status %d", dr.Status)
		}
		if b := a.DirectResponse.GetBody(); b != nil {
			switch s := b.GetSpecifier().(type) {
			case *corev3.DataSource_InlineString:
				dr.Body = []byte(s.InlineString)
			case *corev3.DataSource_InlineBytes:
				dr.Body = s.InlineBytes
			default:
				return nil, errorf(where, "direct_response body from %T is not supported (inline only)", s)
			}
		}
		mr.Direct = dr
	case *routev3.Route_NonForwardingAction, *routev3.Route_FilterAction:
		deny = fmt.Sprintf("route action %T is not supported", a)
	default:
		return nil, errorf(where, "no action")
	}
	if deny != "" {
		t.unsupported(model.Unsupported{Where: where, Name: "route", FailClosed: true, Reason: deny})
		mr.Forward, mr.Redirect, mr.Direct = nil, nil, nil
		mr.Deny = &model.Deny{HTTPStatus: 503, Reason: deny}
	}
	return mr, nil
}

// routeMatch translates a RouteMatch. deny names a condition we cannot
// evaluate (the route then denies what else it matches); never means the
// route cannot match on the waypoint's plaintext connections.
func (t *translator) routeMatch(m *routev3.RouteMatch, where string) (model.RouteMatch, string, bool, error) {
	var out model.RouteMatch
	if cs := m.GetCaseSensitive(); cs != nil && !cs.GetValue() {
		out.CaseInsensitive = true
	}
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		out.Prefix = p.Prefix
		if out.Prefix == "" {
			out.Prefix = "/"
		}
	case *routev3.RouteMatch_Path:
		out.Path = p.Path
	case *routev3.RouteMatch_SafeRegex:
		re, err := anchored(p.SafeRegex.GetRegex())
		if err != nil {
			return out, "", false, errorf(where, "%v", err)
		}
		out.Regex = re
	case *routev3.RouteMatch_PathSeparatedPrefix:
		if strings.ContainsAny(p.PathSeparatedPrefix, "?#") || strings.HasSuffix(p.PathSeparatedPrefix, "/") {
			return out, "", false, errorf(where, "path_separated_prefix %q", p.PathSeparatedPrefix)
		}
		out.PathSeparatedPrefix = p.PathSeparatedPrefix
	case *routev3.RouteMatch_ConnectMatcher_:
		t.unsupported(model.Unsupported{Where: where, Name: "connect_matcher",
			Reason: "CONNECT requests are not proxied by the waypoint: the route never matches"})
		return out, "", true, nil
	case *routev3.RouteMatch_PathMatchPolicy:
		return out, "path_match_policy (URI templates) is not supported", false, nil
	default:
		return out, "", false, errorf(where, "no path specifier")
	}
	for _, h := range m.GetHeaders() {
		hm, err := headerMatch(h)
		if err != nil {
			return out, "", false, errorf(where, "%v", err)
		}
		out.Headers = append(out.Headers, hm)
	}
	for _, q := range m.GetQueryParameters() {
		qm := model.QueryMatch{Name: q.GetName()}
		switch s := q.GetQueryParameterMatchSpecifier().(type) {
		case *routev3.QueryParameterMatcher_StringMatch:
			sm, err := stringMatch(s.StringMatch)
			if err != nil {
				return out, "", false, errorf(where, "query parameter %s: %v", q.GetName(), err)
			}
			qm.Value = sm
		case *routev3.QueryParameterMatcher_PresentMatch:
			if !s.PresentMatch {
				// Envoy rejects present_match false.
				return out, "", false, errorf(where, "query parameter %s: present_match false", q.GetName())
			}
			qm.Present = true
		default:
			qm.Present = true
		}
		out.Query = append(out.Query, qm)
	}
	out.GRPC = m.GetGrpc() != nil
	if len(m.GetCookies()) > 0 {
		// A condition not evaluated would let the route take requests
		// Envoy sends elsewhere.
		return out, "cookie matching is not supported", false, nil
	}
	if tc := m.GetTlsContext(); tc != nil {
		if tc.GetPresented().GetValue() || tc.GetValidated().GetValue() {
			return out, "", true, nil
		}
	}
	switch {
	case m.GetRuntimeFraction() != nil:
		return out, "runtime_fraction matching is not supported", false, nil
	case len(m.GetDynamicMetadata()) > 0:
		return out, "dynamic_metadata matching is not supported", false, nil
	case len(m.GetFilterState()) > 0:
		return out, "filter_state matching is not supported", false, nil
	}
	return out, "", false, nil
}

func headerMatch(h *routev3.HeaderMatcher) (model.HeaderMatch, error) {
	hm := model.HeaderMatch{Name: strings.ToLower(h.GetName()), Invert: h.GetInvertMatch(),
		TreatMissingAsEmpty: h.GetTreatMissingHeaderAsEmpty()}
	if hm.Name == "" {
		return hm, fmt.Errorf("header matcher without a name")
	}
	var err error
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_ExactMatch:
		hm.Value = &model.StringMatch{Kind: "exact", Exact: s.ExactMatch}
		if s.ExactMatch == "" {
			// Envoy's legacy exact_match: an empty value matches any value
			// (a missing header still fails, as for other values).
			hm.Value = &model.StringMatch{Kind: "prefix"}
		}
	case *routev3.HeaderMatcher_SafeRegexMatch:
		re, err := anchored(s.SafeRegexMatch.GetRegex())
		if err != nil {
			return hm, fmt.Errorf("header %s: %v", hm.Name, err)
		}
		hm.Value = &model.StringMatch{Kind: "regex", Regex: re}
	case *routev3.HeaderMatcher_RangeMatch:
		if s.RangeMatch.GetStart() >= s.RangeMatch.GetEnd() {
			return hm, fmt.Errorf("header %s: empty range [%d,%d)", hm.Name, s.RangeMatch.GetStart(), s.RangeMatch.GetEnd())
		}
		hm.Range = &struct{ Start, End int64 }{s.RangeMatch.GetStart(), s.RangeMatch.GetEnd()}
	case *routev3.HeaderMatcher_PresentMatch:
		v := s.PresentMatch
		hm.Present = &v
	case *routev3.HeaderMatcher_PrefixMatch:
		hm.Value = &model.StringMatch{Kind: "prefix", Prefix: s.PrefixMatch}
	case *routev3.HeaderMatcher_SuffixMatch:
		hm.Value = &model.StringMatch{Kind: "suffix", Suffix: s.SuffixMatch}
	case *routev3.HeaderMatcher_ContainsMatch:
		hm.Value = &model.StringMatch{Kind: "contains", Contains: s.ContainsMatch}
	case *routev3.HeaderMatcher_StringMatch:
		if hm.Value, err = stringMatch(s.StringMatch); err != nil {
			return hm, fmt.Errorf("header %s: %v", hm.Name, err)
		}
	default:
		// No specifier: the header must be present (Envoy's legacy
		// meaning).
		v := true
		hm.Present = &v
	}
	return hm, nil
}

// stringMatch translates Envoy's StringMatcher.
func stringMatch(m *matcherv3.StringMatcher) (*model.StringMatch, error) {
	out := &model.StringMatch{IgnoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		out.Kind, out.Exact = "exact", p.Exact
	case *matcherv3.StringMatcher_Prefix:
		out.Kind, out.Prefix = "prefix", p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		out.Kind, out.Suffix = "suffix", p.Suffix
	case *matcherv3.StringMatcher_Contains:
		out.Kind, out.Contains = "contains", p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := anchored(p.SafeRegex.GetRegex())
		if err != nil {
			return nil, err
		}
		out.Kind, out.Regex = "regex", re
	default:
		return nil, fmt.Errorf("string matcher %T is not supported", p)
	}
	return out, nil
}

// forward translates a RouteAction; deny names a part we cannot enforce.
func (t *translator) forward(a *routev3.RouteAction, where string) (*model.ForwardAction, string, error) {
	f := &model.ForwardAction{Timeout: defaultRouteTimeout}
	for _, u := range a.GetUpgradeConfigs() {
		if f.Upgrades == nil {
			f.Upgrades = map[string]bool{}
		}
		f.Upgrades[strings.ToLower(u.GetUpgradeType())] = u.GetEnabled() == nil || u.GetEnabled().GetValue()
		if u.GetConnectConfig() != nil {
			t.unsupported(model.Unsupported{Where: where, Name: "upgrade_configs.connect_config",
				Reason: "CONNECT is not terminated on HTTP routes"})
		}
	}
	switch a.GetClusterNotFoundResponseCode() {
	case routev3.RouteAction_SERVICE_UNAVAILABLE:
	case routev3.RouteAction_NOT_FOUND:
		f.ClusterNotFoundStatus = 404
	case routev3.RouteAction_INTERNAL_SERVER_ERROR:
		f.ClusterNotFoundStatus = 500
	default:
		return nil, "", errorf(where, "cluster_not_found_response_code %s is not supported", a.GetClusterNotFoundResponseCode())
	}
	deny := ""
	switch cs := a.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		if cs.Cluster == "" {
			return nil, "", errorf(where, "empty cluster")
		}
		f.Cluster = cs.Cluster
	case *routev3.RouteAction_WeightedClusters:
		w := &model.WeightedClusters{}
		for _, c := range cs.WeightedClusters.GetClusters() {
			if c.GetName() == "" {
				if c.GetClusterHeader() != "" {
					deny = "weighted cluster_header is not supported"
					continue
				}
				return nil, "", errorf(where, "weighted cluster without a name")
			}
			ops, err := t.headerOps(where+" / weighted cluster "+c.GetName(), c.GetRequestHeadersToAdd(), c.GetRequestHeadersToRemove(),
				c.GetResponseHeadersToAdd(), c.GetResponseHeadersToRemove())
			if err != nil {
				return nil, "", errorf(where, "weighted cluster %s: %v", c.GetName(), err)
			}
			if len(c.GetTypedPerFilterConfig()) > 0 {
				t.unsupported(model.Unsupported{Where: where + " / weighted cluster " + c.GetName(), Name: "typed_per_filter_config",
					Reason: "per-cluster filter overrides are not applied"})
			}
			weight := c.GetWeight().GetValue()
			// istiod sets host_rewrite_literal here for a destination whose
			// headers set the authority.
			w.Clusters = append(w.Clusters, model.WeightedCluster{Name: c.GetName(), Weight: weight, Headers: ops,
				HostRewrite: c.GetHostRewriteLiteral()})
			w.Total += weight
		}
		if tw := cs.WeightedClusters.GetTotalWeight(); tw != nil && tw.GetValue() != w.Total {
			return nil, "", errorf(where, "weights add up to %d, total_weight says %d", w.Total, tw.GetValue())
		}
		if w.Total == 0 && deny == "" {
			return nil, "", errorf(where, "weighted clusters with no weight")
		}
		f.Weighted = w
	case *routev3.RouteAction_ClusterHeader:
		deny = "cluster_header is not supported"
	case *routev3.RouteAction_ClusterSpecifierPlugin, *routev3.RouteAction_InlineClusterSpecifierPlugin:
		deny = "cluster specifier plugins are not supported"
	default:
		return nil, "", errorf(where, "route action without a cluster")
	}
	f.PrefixRewrite = a.GetPrefixRewrite()
	if rr := a.GetRegexRewrite(); rr != nil {
		re, err := regexpSubst(rr)
		if err != nil {
			return nil, "", errorf(where, "regex_rewrite: %v", err)
		}
		f.RegexRewrite = re
	}
	if a.GetPathRewritePolicy() != nil {
		deny = "path_rewrite_policy (URI templates) is not supported"
	}
	if a.GetPathRewrite() != "" {
		deny = "path_rewrite (a formatted path) is not supported"
	}
	switch h := a.GetHostRewriteSpecifier().(type) {
	case *routev3.RouteAction_HostRewriteLiteral:
		f.HostRewrite = h.HostRewriteLiteral
	case *routev3.RouteAction_AutoHostRewrite:
		f.AutoHostRewrite = h.AutoHostRewrite.GetValue()
	case *routev3.RouteAction_HostRewriteHeader, *routev3.RouteAction_HostRewritePathRegex:
		deny = "host rewrite from a header or the path is not supported"
	case *routev3.RouteAction_HostRewrite:
		deny = "host_rewrite (a formatted host) is not supported"
	}
	if a.GetAppendXForwardedHost() {
		f.AppendXForwardedHost = true
	}
	if d := a.GetTimeout(); d != nil {
		f.Timeout = d.AsDuration()
	}
	if d := a.GetIdleTimeout(); d != nil {
		f.IdleTimeout = d.AsDuration()
	}
	if rp := a.GetRetryPolicy(); rp != nil {
		r, err := t.retryPolicy(rp, where)
		if err != nil {
			return nil, "", err
		}
		f.Retry = r
	}
	for _, mp := range a.GetRequestMirrorPolicies() {
		if mp.GetCluster() == "" {
			t.unsupported(model.Unsupported{Where: where, Name: "request_mirror_policies",
				Reason: "a mirror by cluster_header is not sent"})
			continue
		}
		if mp.GetHostRewriteLiteral() != "" {
			t.unsupported(model.Unsupported{Where: where, Name: "request_mirror_policies host_rewrite_literal",
				Reason: "the copy's authority is not rewritten"})
		}
		if len(mp.GetRequestHeadersMutations()) > 0 {
			t.unsupported(model.Unsupported{Where: where, Name: "request_mirror_policies request_headers_mutations",
				Reason: "the copy's headers are not changed"})
		}
		m := model.Mirror{Cluster: mp.GetCluster(), Percent: 100, KeepHost: mp.GetDisableShadowHostSuffixAppend()}
		if rf := mp.GetRuntimeFraction(); rf != nil {
			m.Percent = percent(rf.GetDefaultValue())
		}
		f.Mirrors = append(f.Mirrors, m)
	}
	if ms := a.GetMaxStreamDuration(); ms != nil && ms.GetGrpcTimeoutHeaderMax() != nil {
		d := ms.GetGrpcTimeoutHeaderMax().AsDuration()
		f.MaxGRPCTimeout = &d
	} else if mg := a.GetMaxGrpcTimeout(); mg != nil { //nolint:staticcheck // istiod still sends the deprecated field
		d := mg.AsDuration()
		f.MaxGRPCTimeout = &d
		f.RewriteGRPCTimeout = a.GetMaxStreamDuration() == nil
	}
	t.notApplied(where, a.GetHedgePolicy(), nil, nil)
	if a.GetInternalRedirectPolicy() != nil || a.GetInternalRedirectAction() == routev3.RouteAction_HANDLE_INTERNAL_REDIRECT { //nolint:staticcheck // the deprecated action still turns it on
		t.unsupported(model.Unsupported{Where: where, Name: "internal_redirect_policy",
			Reason: "redirects are passed to the client, not followed"})
	}
	if a.GetMaxStreamDuration().GetMaxStreamDuration() != nil {
		t.unsupported(model.Unsupported{Where: where, Name: "max_stream_duration",
			Reason: "a stream is not cut at max_stream_duration"})
	}
	if a.GetMaxStreamDuration().GetGrpcTimeoutHeaderOffset() != nil || a.GetGrpcTimeoutOffset() != nil { //nolint:staticcheck // deprecated twin
		t.unsupported(model.Unsupported{Where: where, Name: "grpc_timeout_header_offset",
			Reason: "grpc-timeout is honoured without the offset"})
	}
	for _, hp := range a.GetHashPolicy() {
		p := model.HashPolicy{Terminal: hp.GetTerminal()}
		switch spec := hp.GetPolicySpecifier().(type) {
		case *routev3.RouteAction_HashPolicy_Header_:
			p.Header = http.CanonicalHeaderKey(spec.Header.GetHeaderName())
			if spec.Header.GetRegexRewrite() != nil {
				t.unsupported(model.Unsupported{Where: where, Name: "hash_policy.header.regex_rewrite",
					Reason: "the header's value is hashed as sent, not rewritten"})
			}
		case *routev3.RouteAction_HashPolicy_Cookie_:
			c := &model.HashCookie{Name: spec.Cookie.GetName(), Path: spec.Cookie.GetPath()}
			if ttl := spec.Cookie.GetTtl(); ttl != nil {
				// Envoy keeps whole seconds (Max-Age).
				secs := ttl.GetSeconds()
				c.TTL = &secs
			}
			for _, at := range spec.Cookie.GetAttributes() {
				c.Attributes = append(c.Attributes, model.CookieAttribute{Name: at.GetName(), Value: at.GetValue()})
			}
			p.Cookie = c
		case *routev3.RouteAction_HashPolicy_ConnectionProperties_:
			if !spec.ConnectionProperties.GetSourceIp() {
				continue // Envoy makes no policy of it
			}
			p.SourceIP = true
		case *routev3.RouteAction_HashPolicy_QueryParameter_:
			p.QueryParameter = spec.QueryParameter.GetName()
		default:
			t.unsupported(model.Unsupported{Where: where, Name: "hash_policy",
				Reason: fmt.Sprintf("hash policy %T is not applied: the other policies hash without it", spec)})
			continue
		}
		f.Hash = append(f.Hash, p)
	}
	return f, deny, nil
}

// notApplied reports route and virtual-host fields that change Envoy's
// behaviour but are not applied; none can deny traffic, so nothing fails
// closed.
func (t *translator) notApplied(where string, hp *routev3.HedgePolicy, perReq *wrapperspb.UInt32Value, body *wrapperspb.UInt64Value) {
	if hp.GetHedgeOnPerTryTimeout() {
		// Envoy implements only hedge_on_per_try_timeout (a second try
		// races the first when it times out).
		t.unsupported(model.Unsupported{Where: where, Name: "hedge_policy",
			Reason: "a timed-out try is not hedged: it ends before any retry starts"})
	}
	// Envoy's retry and mirror buffer limit (and the buffer filter's).
	if perReq != nil {
		t.unsupported(model.Unsupported{Where: where, Name: "per_request_buffer_limit_bytes",
			Reason: "the proxy's own buffer limit applies"})
	}
	if body != nil {
		t.unsupported(model.Unsupported{Where: where, Name: "request_body_buffer_limit",
			Reason: "the proxy's own buffer limit applies"})
	}
}

// regexpSubst translates regex_rewrite: RE2's \1 references become Go's
// ${1}; the pattern replaces every match (not anchored).
func regexpSubst(rr *matcherv3.RegexMatchAndSubstitute) (*model.RegexRewrite, error) {
	re, err := compileUnanchored(rr.GetPattern().GetRegex())
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	s := rr.GetSubstitution()
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			b.WriteString("${" + string(s[i+1]) + "}")
			i++
		case c == '\\' && i+1 < len(s) && s[i+1] == '\\':
			b.WriteByte('\\')
			i++
		case c == '$':
			b.WriteString("$$")
		default:
			b.WriteByte(c)
		}
	}
	return &model.RegexRewrite{Pattern: re, Substitution: b.String()}, nil
}

func (t *translator) retryPolicy(rp *routev3.RetryPolicy, where string) (*model.RetryPolicy, error) {
	r := &model.RetryPolicy{On: map[string]bool{}, NumRetries: 1}
	for _, c := range strings.Split(rp.GetRetryOn(), ",") {
		if c = strings.TrimSpace(c); c != "" {
			r.On[c] = true
			if !filter.RetryConditions[c] {
				t.unsupported(model.Unsupported{Where: where, Name: "retry_on " + c,
					Reason: "retry condition not known here: it retries nothing"})
			}
		}
	}
	if n := rp.GetNumRetries(); n != nil {
		r.NumRetries = int(n.GetValue())
	}
	if d := rp.GetPerTryTimeout(); d != nil {
		r.PerTryTimeout = d.AsDuration()
	}
	// Not validated, as in Envoy: a code no response has just never matches.
	for _, c := range rp.GetRetriableStatusCodes() {
		r.RetriableStatusCodes = append(r.RetriableStatusCodes, int(c))
	}
	if b := rp.GetRetryBackOff(); b != nil {
		if b.GetBaseInterval().AsDuration() <= 0 {
			return nil, errorf(where, "retry_back_off base_interval must be positive")
		}
		r.BackoffBase = wholeMillis(b.GetBaseInterval().AsDuration())
		if b.GetMaxInterval() != nil {
			r.BackoffMax = wholeMillis(b.GetMaxInterval().AsDuration())
			if r.BackoffMax < r.BackoffBase {
				return nil, errorf(where, "retry_back_off max_interval below base_interval")
			}
		}
	}
	for _, p := range rp.GetRetryHostPredicate() {
		if p.GetName() == "envoy.retry_host_predicates.previous_hosts" || p.GetTypedConfig().GetTypeUrl() == previousHostsPredicate {
			r.PreviousHosts = true
			continue
		}
		t.unsupported(model.Unsupported{Where: where, Name: p.GetName(), TypeURL: p.GetTypedConfig().GetTypeUrl(),
			Reason: "retry host predicate not applied: retries may pick any host"})
	}
	r.HostSelectionAttempts = int(rp.GetHostSelectionRetryMaxAttempts())
	if rp.GetRetryPriority() != nil {
		t.unsupported(model.Unsupported{Where: where, Name: rp.GetRetryPriority().GetName(),
			Reason: "retry priority not applied: retries use the same priority order"})
	}
	if len(rp.GetRetriableHeaders())+len(rp.GetRetriableRequestHeaders()) > 0 || rp.GetRateLimitedRetryBackOff() != nil {
		t.unsupported(model.Unsupported{Where: where, Name: "retry_policy",
			Reason: "retriable headers and rate-limited back-off are not applied"})
	}
	if rp.GetPerTryIdleTimeout() != nil {
		t.unsupported(model.Unsupported{Where: where, Name: "retry_policy per_try_idle_timeout",
			Reason: "per-try idle timeout not applied: an idle try is not cut short"})
	}
	for _, p := range rp.GetRetryOptionsPredicates() {
		t.unsupported(model.Unsupported{Where: where, Name: p.GetName(), TypeURL: p.GetTypedConfig().GetTypeUrl(),
			Reason: "retry options predicate not applied"})
	}
	return r, nil
}

// wholeMillis is a back-off interval as Envoy keeps it: in whole
// milliseconds (truncated), at least 1 ms.
func wholeMillis(d time.Duration) time.Duration {
	return max(d.Truncate(time.Millisecond), time.Millisecond)
}

func redirect(r *routev3.RedirectAction, where string) (*model.RedirectAction, string, error) {
	out := &model.RedirectAction{Host: r.GetHostRedirect(), Port: r.GetPortRedirect(), StripQuery: r.GetStripQuery()}
	if r.GetHttpsRedirect() {
		out.Scheme = "https"
	} else if s := r.GetSchemeRedirect(); s != "" {
		out.Scheme = s
	}
	deny := ""
	switch p := r.GetPathRewriteSpecifier().(type) {
	case *routev3.RedirectAction_PathRedirect:
		out.Path = p.PathRedirect
	case *routev3.RedirectAction_PrefixRewrite:
		out.PrefixRewrite = p.PrefixRewrite
	case *routev3.RedirectAction_RegexRewrite:
		deny = "redirect with regex_rewrite is not supported"
	case *routev3.RedirectAction_PathRewrite:
		deny = "redirect with path_rewrite (a formatted path) is not supported"
	}
	switch r.GetResponseCode() {
	case routev3.RedirectAction_MOVED_PERMANENTLY:
		out.Status = 301
	case routev3.RedirectAction_FOUND:
		out.Status = 302
	case routev3.RedirectAction_SEE_OTHER:
		out.Status = 303
	case routev3.RedirectAction_TEMPORARY_REDIRECT:
		out.Status = 307
	case routev3.RedirectAction_PERMANENT_REDIRECT:
		out.Status = 308
	default:
		return nil, "", errorf(where, "redirect response code %s", r.GetResponseCode())
	}
	return out, deny, nil
}

// headerOps translates header additions and removals with Envoy's append
// semantics: the deprecated append flag wins when set, else append_action
// (APPEND_IF_EXISTS_OR_ADD by default); an empty value is not added unless
// keep_empty_value.
func (t *translator) headerOps(where string, reqAdd []*corev3.HeaderValueOption, reqRemove []string, respAdd []*corev3.HeaderValueOption, respRemove []string) (model.HeaderOps, error) {
	var ops model.HeaderOps
	conv := func(in []*corev3.HeaderValueOption) ([]model.HeaderValue, error) {
		var out []model.HeaderValue
		for _, o := range in {
			h := o.GetHeader()
			name := strings.ToLower(h.GetKey())
			if name == "" {
				return nil, fmt.Errorf("header to add without a name")
			}
			v := h.GetValue()
			if len(h.GetRawValue()) > 0 {
				v = string(h.GetRawValue())
			}
			if v == "" && !o.GetKeepEmptyValue() {
				continue
			}
			unsupported, err := route.CheckHeaderValue(v)
			if err != nil {
				// Malformed: Envoy refuses the configuration too.
				return nil, fmt.Errorf("header %s: %v", name, err)
			}
			for _, op := range unsupported {
				// Envoy fills it in; here it comes out empty. Reported,
				// not refused: one header is no reason to keep a whole
				// configuration from running.
				t.unsupported(model.Unsupported{Where: where + " / header " + name, Name: op,
					Reason: "header value operator not filled in: it comes out empty (an empty value adds no header)"})
			}
			hv := model.HeaderValue{Name: name, Value: v, KeepEmpty: o.GetKeepEmptyValue()}
			if a := o.GetAppend(); a != nil {
				hv.Append = a.GetValue()
			} else {
				switch o.GetAppendAction() {
				case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
					hv.Append = true
				case corev3.HeaderValueOption_ADD_IF_ABSENT:
					hv.AddIfAbsent = true
				case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
				case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
					hv.OnlyIfPresent = true
				default:
					return nil, fmt.Errorf("header %s: append_action %s", name, o.GetAppendAction())
				}
			}
			out = append(out, hv)
		}
		return out, nil
	}
	var err error
	if ops.RequestAdd, err = conv(reqAdd); err != nil {
		return ops, err
	}
	if ops.ResponseAdd, err = conv(respAdd); err != nil {
		return ops, err
	}
	for _, n := range reqRemove {
		ops.RequestRemove = append(ops.RequestRemove, strings.ToLower(n))
	}
	for _, n := range respRemove {
		ops.ResponseRemove = append(ops.ResponseRemove, strings.ToLower(n))
	}
	return ops, nil
}

// perFilter translates typed_per_filter_config: fault and CORS overrides,
// and filters turned off. Overrides of filters we do not run change
// nothing (a chain with a denying filter denies already).
func (t *translator) perFilter(m map[string]*anypb.Any, where string) (model.PerFilterConfig, error) {
	var pf model.PerFilterConfig
	for _, name := range slicesSortedKeys(m) {
		a := m[name]
		if a.GetTypeUrl() == typeRouteFC {
			var fc routev3.FilterConfig
			if err := a.UnmarshalTo(&fc); err != nil {
				return pf, errorf(where, "typed_per_filter_config[%s]: %v", name, err)
			}
			if fc.GetDisabled() {
				if pf.Disabled == nil {
					pf.Disabled = map[string]bool{}
				}
				pf.Disabled[name] = true
				continue
			}
			if pf.Enabled == nil {
				pf.Enabled = map[string]bool{}
			}
			pf.Enabled[name] = true
			if fc.GetConfig() == nil {
				continue
			}
			a = fc.GetConfig()
		} else {
			if pf.Enabled == nil {
				pf.Enabled = map[string]bool{}
			}
			pf.Enabled[name] = true
		}
		switch innerType(a) {
		case typeFault:
			f, err := t.faultFromAny(a, where)
			if err != nil {
				return pf, errorf(where, "typed_per_filter_config[%s]: %v", name, err)
			}
			pf.Fault = f
		case typeCORSPol:
			var cp corsv3.CorsPolicy
			if err := a.UnmarshalTo(&cp); err != nil {
				return pf, errorf(where, "typed_per_filter_config[%s]: %v", name, err)
			}
			c, err := corsPolicy(&cp)
			if err != nil {
				return pf, errorf(where, "typed_per_filter_config[%s]: %v", name, err)
			}
			pf.CORS = c
		default:
			t.unsupported(model.Unsupported{Where: where, Name: name, TypeURL: innerType(a),
				Reason: "per-route config of a filter that does not run here"})
		}
	}
	return pf, nil
}

// faultFromAny translates an HTTPFault, recording what of it is not
// applied.
func (t *translator) faultFromAny(a *anypb.Any, where string) (*model.Fault, error) {
	var hf faultv3.HTTPFault
	if err := a.UnmarshalTo(&hf); err != nil {
		return nil, err
	}
	if len(hf.GetDownstreamNodes()) > 0 || hf.GetResponseRateLimit() != nil {
		t.unsupported(model.Unsupported{Where: where, Name: "fault",
			Reason: "downstream_nodes and response_rate_limit are not applied"})
	}
	return fault(&hf)
}

func fault(hf *faultv3.HTTPFault) (*model.Fault, error) {
	f := &model.Fault{}
	if m := hf.GetMaxActiveFaults(); m != nil {
		n := int(m.GetValue())
		f.MaxActive = &n
	}
	if c := hf.GetUpstreamCluster(); c != "" {
		f.UpstreamClusters = []string{c}
	}

	if d := hf.GetDelay(); d != nil {
		switch s := d.GetFaultDelaySecifier().(type) {
		case *commonfaultv3.FaultDelay_FixedDelay:
			f.Delay = s.FixedDelay.AsDuration()
			if f.Delay < 0 {
				return nil, fmt.Errorf("negative fixed_delay")
			}
		case *commonfaultv3.FaultDelay_HeaderDelay_:
			f.HeaderDelay = true
		default:
			return nil, fmt.Errorf("delay without fixed_delay or header_delay")
		}
		f.DelayPercent, f.DelayDenominator = faultPercent(d.GetPercentage())
	}
	if ab := hf.GetAbort(); ab != nil {
		switch s := ab.GetErrorType().(type) {
		case *faultv3.FaultAbort_HttpStatus:
			if s.HttpStatus < 200 || s.HttpStatus > 599 {
				return nil, fmt.Errorf("abort http_status %d", s.HttpStatus)
			}
			f.AbortHTTPStatus = int(s.HttpStatus)
		case *faultv3.FaultAbort_GrpcStatus:
			g := int(s.GrpcStatus)
			f.AbortGRPCStatus = &g
		case *faultv3.FaultAbort_HeaderAbort_:
			f.HeaderAbort = true
		default:
			return nil, fmt.Errorf("abort without http_status, grpc_status or header_abort")
		}
		f.AbortPercent, f.AbortDenominator = faultPercent(ab.GetPercentage())
	}
	for _, h := range hf.GetHeaders() {
		hm, err := headerMatch(h)
		if err != nil {
			return nil, err
		}
		f.Headers = append(f.Headers, hm)
	}
	return f, nil
}

// faultPercent is a fault's delay or abort percentage: a missing one is
// 0%, as in Envoy (the proto's default) and in Istio's API ("if not
// specified, no request will be aborted"; istiod leaves it unset then).
// The denominator is kept: a percentage header is a numerator over it.
func faultPercent(p *typev3.FractionalPercent) (float64, int) {
	if p == nil {
		return 0, 100
	}
	d := 100
	switch p.GetDenominator() {
	case typev3.FractionalPercent_TEN_THOUSAND:
		d = 10000
	case typev3.FractionalPercent_MILLION:
		d = 1000000
	}
	return percent(p), d
}

// percent is a FractionalPercent as 0..100; a missing one is 100%, as a
// mirror without a fraction mirrors every request.
func percent(p *typev3.FractionalPercent) float64 {
	if p == nil {
		return 100
	}
	n := float64(p.GetNumerator())
	var v float64
	switch p.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		v = n
	case typev3.FractionalPercent_TEN_THOUSAND:
		v = n / 100
	case typev3.FractionalPercent_MILLION:
		v = n / 10000
	}
	return min(v, 100)
}

// corsFields are the getters the CORS filter's policy (corsv3) and the
// deprecated route-level cors field (routev3) share.
type corsFields interface {
	GetAllowMethods() string
	GetAllowHeaders() string
	GetExposeHeaders() string
	GetMaxAge() string
	GetAllowCredentials() *wrapperspb.BoolValue
	GetAllowOriginStringMatch() []*matcherv3.StringMatcher
	GetFilterEnabled() *corev3.RuntimeFractionalPercent
	GetForwardNotMatchingPreflights() *wrapperspb.BoolValue
	GetAllowPrivateNetworkAccess() *wrapperspb.BoolValue
}

func corsPolicy(cp *corsv3.CorsPolicy) (*model.CORS, error) { return cors(cp, "allow_origin") }

// legacyCORS is the deprecated route-level cors field.
func legacyCORS(cp *routev3.CorsPolicy) (*model.CORS, error) { return cors(cp, "cors allow_origin") }

func cors(cp corsFields, originField string) (*model.CORS, error) {
	c := &model.CORS{AllowMethods: cp.GetAllowMethods(), AllowHeaders: cp.GetAllowHeaders(),
		ExposeHeaders: cp.GetExposeHeaders(), MaxAge: cp.GetMaxAge()}
	if v := cp.GetAllowCredentials(); v != nil {
		b := v.GetValue()
		c.AllowCredentials = &b
	}
	if v := cp.GetAllowPrivateNetworkAccess(); v != nil {
		b := v.GetValue()
		c.AllowPrivateNetworkAccess = &b
	}
	if v := cp.GetForwardNotMatchingPreflights(); v != nil {
		b := v.GetValue()
		c.ForwardNotMatchingPreflights = &b
	}
	for _, o := range cp.GetAllowOriginStringMatch() {
		sm, err := stringMatch(o)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", originField, err)
		}
		c.AllowOrigins = append(c.AllowOrigins, *sm)
	}
	if fe := cp.GetFilterEnabled(); fe != nil && percent(fe.GetDefaultValue()) == 0 {
		c.Disabled = true
	}
	return c, nil
}
