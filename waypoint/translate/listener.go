package translate

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	proxyprotocolv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/proxy_protocol/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Envoy's defaults where a field is unset.
const (
	defaultStreamIdleTimeout = 5 * time.Minute
	defaultListenerFilters   = 15 * time.Second
)

// plumbing explains the istiod listeners and clusters that only exist for
// Envoy's HBONE tunnelling.
var plumbing = map[string]string{
	"connect_terminate":       "HBONE termination (mTLS CONNECT on 15008): the kernel hands the waypoint plaintext with a PROXY header instead",
	"connect_originate":       "HBONE origination to pods: the waypoint connects to the pod directly",
	"main_internal":           "internal hop from HBONE termination to the dispatch listener",
	"encap":                   "internal hop to HBONE origination",
	"inner_connect_originate": "double-HBONE (multi-network) origination",
	"outer_connect_originate": "double-HBONE (multi-network) origination",
	"forward_inner_connect":   "east-west gateway forwarding of inner HBONE",
}

func (t *translator) listener(l *listenerv3.Listener) (*model.Listener, error) {
	where := "listener " + l.GetName()
	if l.GetName() == "" {
		return nil, fmt.Errorf("listener without a name")
	}
	ml := &model.Listener{Name: l.GetName(), Chains: map[string]*model.FilterChain{}, HeaderTimeout: defaultListenerFilters}
	if d := l.GetListenerFiltersTimeout(); d != nil {
		ml.HeaderTimeout = d.AsDuration()
		if ml.HeaderTimeout <= 0 {
			// Envoy: 0s is no timeout (istiod's sidecar listeners with the
			// default protocolDetectionTimeout), not a default.
			ml.HeaderTimeout = model.NoTimeout
		}
	}
	ml.ContinueOnFilterTimeout = l.GetContinueOnListenerFiltersTimeout()
	dispatch := t.opts.Dispatch != "" && l.GetName() == t.opts.Dispatch
	switch {
	case dispatch:
		ml.Name = t.opts.ListenerName
		ml.Address = t.opts.ListenAddress
		ml.ProxyProtocol = true
		if t.opts.HeaderTimeout != 0 {
			ml.HeaderTimeout = t.opts.HeaderTimeout
		}
	case t.opts.Dispatch != "":
		reason := plumbing[l.GetName()]
		if reason == "" {
			reason = "not the dispatch listener " + t.opts.Dispatch + ": the waypoint opens only that one"
		}
		t.unsupported(model.Unsupported{Where: where, Name: l.GetName(), Reason: "Envoy plumbing, read for meaning only: " + reason})
		return nil, nil
	default:
		if l.GetInternalListener() != nil {
			t.unsupported(model.Unsupported{Where: where, Name: l.GetName(), Reason: "internal listeners are Envoy plumbing; not served"})
			return nil, nil
		}
		sa := l.GetAddress().GetSocketAddress()
		if sa == nil {
			return nil, errorf(where, "only socket addresses can be listened on")
		}
		if sa.GetProtocol() != corev3.SocketAddress_TCP {
			return nil, errorf(where, "only TCP listeners are supported, not %s", sa.GetProtocol())
		}
		a, err := netip.ParseAddr(sa.GetAddress())
		if err != nil {
			return nil, errorf(where, "address %q: %v", sa.GetAddress(), err)
		}
		port := sa.GetPortValue()
		if port == 0 || port > 65535 {
			return nil, errorf(where, "port %d: want a fixed port", port)
		}
		ml.Address = netip.AddrPortFrom(a, uint16(port))
	}

	var listenerDeny *model.Deny
	for i, lf := range l.GetListenerFilters() {
		lwhere := fmt.Sprintf("%s / listener filter %s", where, lf.GetName())
		tu := innerType(lf.GetTypedConfig())
		switch tu {
		case typeProxyProtocolLF:
			var pp proxyprotocolv3.ProxyProtocol
			if err := lf.GetTypedConfig().UnmarshalTo(&pp); err != nil {
				return nil, errorf(lwhere, "%v", err)
			}
			ml.ProxyProtocol = true
			if !dispatch {
				ml.AllowWithoutProxyProtocol = pp.GetAllowRequestsWithoutProxyProtocol()
			}
		case typeHTTPInspector, typeTLSInspector:
			// Sniffing is the engine's, on demand (NeedsProtocol).
		case typeOriginalDstLF:
			if !dispatch {
				t.unsupported(model.Unsupported{Where: lwhere, Name: lf.GetName(), TypeURL: tu,
					Reason: "the original destination comes from the PROXY header, not from the socket"})
			}
			// On istiod's internal listener it reads the destination the
			// HBONE layer passed on: the PROXY header's role here.
		case "":
			return nil, errorf(lwhere, "listener_filters[%d] has no typed_config", i)
		default:
			c := classify(tu)
			t.unsupported(model.Unsupported{Where: lwhere, Name: lf.GetName(), TypeURL: tu, FailClosed: !c.harmless, Reason: c.reason})
			if !c.harmless && listenerDeny == nil {
				listenerDeny = &model.Deny{HTTPStatus: c.status, Reason: lf.GetName() + ": " + c.reason}
			}
		}
	}

	names := map[string]bool{}
	var list []listChain
	for i, fc := range l.GetFilterChains() {
		name := fc.GetName()
		if name == "" {
			name = fmt.Sprintf("chain-%d", i)
		}
		if names[name] {
			return nil, errorf(where, "two filter chains named %q", name)
		}
		names[name] = true
		c, err := t.memoChain(fc, name, where, listenerDeny)
		if err != nil {
			return nil, err
		}
		ml.Chains[name] = c
		if l.GetFilterChainMatcher() == nil {
			lc, err := compileFilterChainMatch(name, fc.GetFilterChainMatch())
			if err != nil {
				return nil, errorf(where+" / chain "+name, "filter_chain_match: %v", err)
			}
			list = append(list, lc)
		}
	}
	if dfc := l.GetDefaultFilterChain(); dfc != nil {
		name := dfc.GetName()
		if name == "" {
			name = "default"
		}
		c, err := t.chain(dfc, name, where, listenerDeny)
		if err != nil {
			return nil, err
		}
		ml.DefaultChain = c
	}
	if m := l.GetFilterChainMatcher(); m != nil {
		sel, err := t.memoMatcher(m, names, where)
		if err != nil {
			return nil, errorf(where, "filter_chain_matcher: %v", err)
		}
		ml.Select = sel
	} else if len(list) > 0 {
		ml.Select = &listSelector{chains: list}
	}
	return ml, nil
}

// chain translates one filter chain. A chain whose filters we cannot all
// enforce denies.
func (t *translator) chain(fc *listenerv3.FilterChain, name, lwhere string, listenerDeny *model.Deny) (*model.FilterChain, error) {
	where := lwhere + " / chain " + name
	c := &model.FilterChain{Name: name, Service: serviceFromName(name)}
	var deny *model.Deny
	if listenerDeny != nil {
		// This chain's own: its reasons must not reach its siblings.
		d := *listenerDeny
		deny = &d
	}
	addDeny := func(status int, reason string) {
		if deny == nil {
			deny = &model.Deny{HTTPStatus: status, Reason: reason}
			return
		}
		if status == 403 && deny.HTTPStatus != 403 {
			deny.HTTPStatus = 403
		}
		deny.Reason += "; " + reason
	}
	if ts := fc.GetTransportSocket(); ts != nil && !rawBuffer(ts.GetName(), ts.GetTypedConfig().GetTypeUrl()) {
		tu := ts.GetTypedConfig().GetTypeUrl()
		t.unsupported(model.Unsupported{Where: where, Name: ts.GetName(), TypeURL: tu, FailClosed: true,
			Reason: "TLS termination is not supported on the waypoint's listener"})
		addDeny(503, "transport socket "+ts.GetName()+" is not supported")
	}
	filters := fc.GetFilters()
	if len(filters) == 0 {
		return nil, errorf(where, "no network filters")
	}
	for i, f := range filters {
		fwhere := where + " / network filter " + f.GetName()
		tc := f.GetTypedConfig()
		if tc == nil {
			if f.GetConfigDiscovery() != nil {
				t.unsupported(model.Unsupported{Where: fwhere, Name: f.GetName(), FailClosed: true, Reason: "filter config from ECDS is not supported"})
				addDeny(503, f.GetName()+": filter config from ECDS is not supported")
				continue
			}
			return nil, errorf(fwhere, "no typed_config")
		}
		tu := innerType(tc)
		terminal := tu == typeHCM || tu == typeTCPProxy
		if terminal != (i == len(filters)-1) {
			if terminal {
				return nil, errorf(fwhere, "a terminal filter must be the last network filter")
			}
		}
		switch tu {
		case typeHCM:
			var h hcmv3.HttpConnectionManager
			if err := tc.UnmarshalTo(&h); err != nil {
				return nil, errorf(fwhere, "%v", err)
			}
			m, d, err := t.hcm(&h, fwhere)
			if err != nil {
				return nil, err
			}
			c.HTTP = m
			if d != nil {
				addDeny(d.HTTPStatus, d.Reason)
			}
		case typeTCPProxy:
			var tp tcpproxyv3.TcpProxy
			if err := tc.UnmarshalTo(&tp); err != nil {
				return nil, errorf(fwhere, "%v", err)
			}
			m, err := t.tcpProxy(&tp, fwhere)
			if err != nil {
				return nil, err
			}
			c.TCP = m
		default:
			cls := classify(tu)
			t.unsupported(model.Unsupported{Where: fwhere, Name: f.GetName(), TypeURL: tu, FailClosed: !cls.harmless, Reason: cls.reason})
			if !cls.harmless {
				addDeny(cls.status, f.GetName()+": "+cls.reason)
			}
		}
	}
	if c.HTTP == nil && c.TCP == nil {
		return nil, errorf(where, "the last network filter is neither http_connection_manager nor tcp_proxy")
	}
	if deny != nil {
		// Exactly one of HTTP, TCP, Deny: the engine still answers HTTP
		// with the status when it can tell the connection is HTTP.
		c.HTTP, c.TCP, c.Deny = nil, nil, deny
	}
	return c, nil
}

func (t *translator) hcm(h *hcmv3.HttpConnectionManager, where string) (*model.HTTPConnectionManager, *model.Deny, error) {
	m := &model.HTTPConnectionManager{StatPrefix: h.GetStatPrefix(), GenerateRequestID: true,
		StreamIdleTimeout: defaultStreamIdleTimeout, ServerName: h.GetServerName()}
	if v := h.GetGenerateRequestId(); v != nil {
		m.GenerateRequestID = v.GetValue()
	}
	if d := h.GetStreamIdleTimeout(); d != nil {
		m.StreamIdleTimeout = d.AsDuration()
	}
	if d := h.GetRequestTimeout(); d != nil {
		m.RequestTimeout = d.AsDuration()
	}
	m.Upgrades = map[string]bool{}
	for _, u := range h.GetUpgradeConfigs() {
		m.Upgrades[strings.ToLower(u.GetUpgradeType())] = u.GetEnabled() == nil || u.GetEnabled().GetValue()
		if len(u.GetFilters()) > 0 {
			t.unsupported(model.Unsupported{Where: where, Name: "upgrade_configs.filters",
				Reason: "an upgrade's own filter chain is not applied: upgrades go through the HCM's filters"})
		}
	}
	m.UseRemoteAddress = h.GetUseRemoteAddress().GetValue()
	m.XffNumTrustedHops = h.GetXffNumTrustedHops()
	if len(h.GetOriginalIpDetectionExtensions()) > 0 {
		t.unsupported(model.Unsupported{Where: where, Name: "original_ip_detection_extensions",
			Reason: "the client's address is taken from X-Forwarded-For as without them"})
	}
	m.NormalizePath = h.GetNormalizePath().GetValue()
	m.MergeSlashes = h.GetMergeSlashes()
	switch h.GetPathWithEscapedSlashesAction() {
	case hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT, hcmv3.HttpConnectionManager_KEEP_UNCHANGED:
		// Envoy's default keeps them.
	case hcmv3.HttpConnectionManager_REJECT_REQUEST:
		m.EscapedSlashes = "reject"
	case hcmv3.HttpConnectionManager_UNESCAPE_AND_REDIRECT:
		m.EscapedSlashes = "redirect"
	case hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD:
		m.EscapedSlashes = "forward"
	default:
		return nil, nil, errorf(where, "path_with_escaped_slashes_action %s is not supported", h.GetPathWithEscapedSlashesAction())
	}
	switch h.GetCodecType() {
	case hcmv3.HttpConnectionManager_AUTO:
		m.Codec = "auto"
	case hcmv3.HttpConnectionManager_HTTP1:
		m.Codec = "http1"
	case hcmv3.HttpConnectionManager_HTTP2:
		m.Codec = "http2"
	default:
		return nil, nil, errorf(where, "codec %s is not supported", h.GetCodecType())
	}
	var deny *model.Deny
	addDeny := func(status int, reason string) {
		if deny == nil {
			deny = &model.Deny{HTTPStatus: status, Reason: reason}
			return
		}
		if status == 403 {
			deny.HTTPStatus = 403
		}
		deny.Reason += "; " + reason
	}
	switch rs := h.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_RouteConfig:
		rt, err := t.routeTable(rs.RouteConfig, where+" / route_config")
		if err != nil {
			return nil, nil, err
		}
		m.Routes = rt
	case *hcmv3.HttpConnectionManager_Rds:
		t.usedRDS = true
		m.RDSName = rs.Rds.GetRouteConfigName()
		if m.RDSName == "" {
			return nil, nil, errorf(where, "rds without route_config_name")
		}
		if rc := t.in.Routes[m.RDSName]; rc != nil {
			rt, err := t.routeTable(rc, "route "+m.RDSName)
			if err != nil {
				return nil, nil, err
			}
			m.Routes = rt
		}
	case *hcmv3.HttpConnectionManager_ScopedRoutes:
		t.unsupported(model.Unsupported{Where: where, Name: "scoped_routes", FailClosed: true, Reason: "scoped routes are not supported"})
		addDeny(503, "scoped routes are not supported")
	default:
		return nil, nil, errorf(where, "no route_config or rds")
	}
	hf := h.GetHttpFilters()
	for i, f := range hf {
		fwhere := where + " / http filter " + f.GetName()
		tc := f.GetTypedConfig()
		if tc == nil {
			if f.GetConfigDiscovery() != nil {
				t.unsupported(model.Unsupported{Where: fwhere, Name: f.GetName(), FailClosed: true, Reason: "filter config from ECDS is not supported"})
				addDeny(503, f.GetName()+": filter config from ECDS is not supported")
				continue
			}
			return nil, nil, errorf(fwhere, "no typed_config")
		}
		tu := innerType(tc)
		if (tu == typeRouter) != (i == len(hf)-1) {
			return nil, nil, errorf(fwhere, "the router must be the last HTTP filter, and only the last")
		}
		switch tu {
		case typeRouter:
			m.Filters = append(m.Filters, model.HTTPFilter{Name: f.GetName(), Router: true})
			var rc routerv3.Router
			if tc.GetTypeUrl() == typeRouter {
				if err := tc.UnmarshalTo(&rc); err != nil {
					return nil, nil, errorf(fwhere, "%v", err)
				}
				m.SuppressEnvoyHeaders = rc.GetSuppressEnvoyHeaders()
			}
		case typeFault, typeCORS:
			// disabled: off unless a route or virtual host turns it on
			// (typed_per_filter_config). Never a filter that denies:
			// those fail closed below whatever the flag says.
			off := f.GetDisabled()
			if tu == typeCORS {
				m.Filters = append(m.Filters, model.HTTPFilter{Name: f.GetName(), CORS: &model.CORS{}, Off: off})
				continue
			}
			fl, err := t.faultFromAny(tc, fwhere)
			if err != nil {
				return nil, nil, errorf(fwhere, "%v", err)
			}
			m.Filters = append(m.Filters, model.HTTPFilter{Name: f.GetName(), Fault: fl, Off: off})
		default:
			cls := classify(tu)
			t.unsupported(model.Unsupported{Where: fwhere, Name: f.GetName(), TypeURL: tu, FailClosed: !cls.harmless, Reason: cls.reason})
			if !cls.harmless {
				addDeny(cls.status, f.GetName()+": "+cls.reason)
			}
		}
	}
	if len(hf) == 0 {
		return nil, nil, errorf(where, "no HTTP filters (the router is required)")
	}
	return m, deny, nil
}

func (t *translator) tcpProxy(tp *tcpproxyv3.TcpProxy, where string) (*model.TCPProxy, error) {
	m := &model.TCPProxy{StatPrefix: tp.GetStatPrefix()}
	switch cs := tp.GetClusterSpecifier().(type) {
	case *tcpproxyv3.TcpProxy_Cluster:
		if cs.Cluster == "" {
			return nil, errorf(where, "empty cluster")
		}
		m.Cluster = cs.Cluster
	case *tcpproxyv3.TcpProxy_WeightedClusters:
		w := &model.WeightedClusters{}
		for _, c := range cs.WeightedClusters.GetClusters() {
			if c.GetName() == "" {
				return nil, errorf(where, "weighted cluster without a name")
			}
			if c.GetWeight() == 0 {
				continue
			}
			w.Clusters = append(w.Clusters, model.WeightedCluster{Name: c.GetName(), Weight: c.GetWeight()})
			w.Total += c.GetWeight()
		}
		if w.Total == 0 {
			return nil, errorf(where, "weighted clusters with no weight")
		}
		m.Weighted = w
	default:
		return nil, errorf(where, "no cluster")
	}
	if d := tp.GetIdleTimeout(); d != nil {
		m.IdleTimeout = d.AsDuration()
		if m.IdleTimeout <= 0 {
			// Envoy: 0s turns the idle timeout off; only unset is 1 h.
			m.IdleTimeout = model.NoTimeout
		}
	}
	if d := tp.GetMaxDownstreamConnectionDuration(); d != nil {
		m.MaxConnectionDuration = d.AsDuration()
	}
	if n := tp.GetMaxConnectAttempts(); n != nil {
		m.MaxConnectAttempts = n.GetValue()
	}
	// Fields that change where or how the bytes go and that the engine
	// does not apply: said, not dropped.
	for _, f := range []struct {
		set          bool
		name, reason string
	}{
		{tp.GetTunnelingConfig() != nil, "tunneling_config", "the bytes go to the endpoint as they are, not tunnelled in an HTTP CONNECT or POST"},
		{tp.GetOnDemand() != nil, "on_demand", "clusters are not discovered on demand: a cluster missing from the configuration fails the connection (NC)"},
		{tp.GetMetadataMatch() != nil, "metadata_match", "endpoints are not narrowed by metadata: any endpoint of the cluster may be picked"},
		{tp.GetBackoffOptions() != nil, "backoff_options", "connect attempts follow one another without a backoff"},
		{tp.GetDownstreamIdleTimeout() != nil || tp.GetUpstreamIdleTimeout() != nil, "downstream_idle_timeout",
			"only idle_timeout (no byte either way) closes an idle connection; per-direction idle timeouts are not applied"},
		{tp.GetMaxDownstreamConnectionDurationJitterPercentage() != nil, "max_downstream_connection_duration_jitter_percentage",
			"max_downstream_connection_duration is applied without jitter"},
		{len(tp.GetProxyProtocolTlvs()) > 0, "proxy_protocol_tlvs", "no PROXY protocol TLVs are sent upstream"},
		{tp.GetUpstreamConnectMode() != tcpproxyv3.UpstreamConnectMode_IMMEDIATE, "upstream_connect_mode",
			"the upstream connection is made at once, not on the first downstream data"},
	} {
		if f.set {
			t.unsupported(model.Unsupported{Where: where, Name: f.name, Reason: f.reason})
		}
	}
	// Envoy hashes with the first policy that yields a key; the source
	// address always does.
	for _, hp := range tp.GetHashPolicy() {
		switch hp.GetPolicySpecifier().(type) {
		case *typev3.HashPolicy_SourceIp_:
			m.HashSourceIP = true
		default:
			t.unsupported(model.Unsupported{Where: where, Name: "hash_policy",
				Reason: fmt.Sprintf("hash policy %T is not applied: connections spread without it", hp.GetPolicySpecifier())})
		}
	}
	return m, nil
}

// serviceFromName reads the service from istiod's chain and cluster names
// ("inbound-vip|80|http|reviews.default.svc.cluster.local",
// "outbound|80|v1|reviews.default.svc.cluster.local").
func serviceFromName(name string) model.ServiceRef {
	parts := strings.Split(name, "|")
	if len(parts) != 4 || (parts[0] != "inbound-vip" && parts[0] != "outbound" && parts[0] != "inbound") {
		return model.ServiceRef{}
	}
	host := parts[3]
	ref := model.ServiceRef{Hostname: host}
	if labels := strings.Split(host, "."); len(labels) >= 3 && labels[2] == "svc" {
		ref.Name, ref.Namespace = labels[0], labels[1]
	}
	return ref
}

// rawBuffer tells a plaintext transport socket: by its typed config's
// type, as Envoy picks the factory, and by name only without one.
func rawBuffer(name, typeURL string) bool {
	if typeURL != "" {
		return typeURL == "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
	}
	return name == "envoy.transport_sockets.raw_buffer" || name == "raw_buffer"
}
