package translate

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	internalupstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/internal_upstream/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

const (
	defaultConnectTimeout = 5 * time.Second // Envoy's
	// originalDstKey is the endpoint metadata namespace where istiod puts
	// the pod address behind an internal (HBONE) endpoint.
	originalDstKey = "envoy.filters.listener.original_dst"

	typeInternalUpstream = "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport"
	typeRawBuffer        = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
)

// LB policy names as the model spells them.
var lbPolicies = map[clusterv3.Cluster_LbPolicy]string{
	clusterv3.Cluster_ROUND_ROBIN:   "round_robin",
	clusterv3.Cluster_LEAST_REQUEST: "least_request",
	clusterv3.Cluster_RANDOM:        "random",
	clusterv3.Cluster_RING_HASH:     "ring_hash",
	clusterv3.Cluster_MAGLEV:        "maglev",
}

// Typed load_balancing_policy extensions and their model names.
var lbExtensions = map[string]string{
	"type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin":                                        "round_robin",
	"type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest":                                    "least_request",
	"type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random":                                                 "random",
	"type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash":                                            "ring_hash",
	"type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev":                                                 "maglev",
	"type.googleapis.com/envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin": "round_robin",
}

func (t *translator) cluster(c *clusterv3.Cluster) (*model.Cluster, error) {
	where := "cluster " + c.GetName()
	if c.GetName() == "" {
		return nil, fmt.Errorf("cluster without a name")
	}
	if t.opts.Dispatch != "" {
		switch c.GetName() {
		case "encap":
			// Where istiod's direct-to-pod chains send: a hop into HBONE
			// origination towards the address the client dialled.
			return &model.Cluster{Name: c.GetName(), Kind: "original_dst", LB: "round_robin",
				ConnectTimeout: defaultConnectTimeout, Protocol: "downstream"}, nil
		default:
			if r, ok := plumbing[c.GetName()]; ok {
				t.unsupported(model.Unsupported{Where: where, Name: c.GetName(), Reason: "Envoy plumbing, read for meaning only: " + r})
				return nil, nil
			}
		}
	}
	mc := &model.Cluster{Name: c.GetName(), LB: "round_robin", ConnectTimeout: defaultConnectTimeout, Protocol: "http1",
		Service: clusterService(c)}
	if d := c.GetConnectTimeout(); d != nil {
		mc.ConnectTimeout = d.AsDuration()
		if mc.ConnectTimeout <= 0 {
			return nil, errorf(where, "connect_timeout must be positive")
		}
	}
	if n, ok := lbPolicies[c.GetLbPolicy()]; ok {
		mc.LB = n
	} else if c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
		return nil, errorf(where, "lb_policy %s is not supported", c.GetLbPolicy())
	}
	if p := c.GetLoadBalancingPolicy(); p != nil {
		found := false
		for _, pol := range p.GetPolicies() {
			if n, ok := lbExtensions[pol.GetTypedExtensionConfig().GetTypedConfig().GetTypeUrl()]; ok {
				mc.LB, found = n, true
				break
			}
		}
		if !found {
			return nil, errorf(where, "no supported policy in load_balancing_policy")
		}
	}

	endpointsOK := true
	switch ct := c.GetClusterDiscoveryType().(type) {
	case *clusterv3.Cluster_Type:
		switch ct.Type {
		case clusterv3.Cluster_EDS:
			mc.Kind = "eds"
			eps, _, err := t.edsEndpoints(edsName(c))
			if err != nil {
				return nil, errorf(where, "endpoints: %v", err)
			}
			setEndpoints(mc, eps)
		case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
			mc.Kind = "static"
			if c.GetLoadAssignment() != nil {
				eps, err := endpoints(c.GetLoadAssignment())
				if err != nil {
					if ct.Type != clusterv3.Cluster_STATIC && errors.Is(err, errNotIP) {
						t.unsupported(model.Unsupported{Where: where, Name: "dns", FailClosed: true,
							Reason: "DNS resolution of endpoints is not supported: the cluster has no endpoints"})
						break
					}
					return nil, errorf(where, "load_assignment: %v", err)
				}
				setEndpoints(mc, eps)
			}
		case clusterv3.Cluster_ORIGINAL_DST:
			mc.Kind = "original_dst"
		default:
			return nil, errorf(where, "discovery type %s is not supported", ct.Type)
		}
	case *clusterv3.Cluster_ClusterType:
		mc.Kind = "static"
		t.unsupported(model.Unsupported{Where: where, Name: ct.ClusterType.GetName(), TypeURL: ct.ClusterType.GetTypedConfig().GetTypeUrl(),
			FailClosed: true, Reason: "custom cluster types are not supported: the cluster has no endpoints"})
	default:
		mc.Kind = "eds" // Envoy's default type is STATIC; EDS when eds_cluster_config is set
		if c.GetEdsClusterConfig() == nil {
			mc.Kind = "static"
			if c.GetLoadAssignment() != nil {
				eps, err := endpoints(c.GetLoadAssignment())
				if err != nil {
					return nil, errorf(where, "load_assignment: %v", err)
				}
				setEndpoints(mc, eps)
			}
		} else {
			eps, _, err := t.edsEndpoints(edsName(c))
			if err != nil {
				return nil, errorf(where, "endpoints: %v", err)
			}
			setEndpoints(mc, eps)
		}
	}

	// Protocol towards the endpoints.
	if c.GetHttp2ProtocolOptions() != nil {
		mc.Protocol = "http2"
	}
	if c.GetProtocolSelection() == clusterv3.Cluster_USE_DOWNSTREAM_PROTOCOL {
		mc.Protocol = "downstream"
	}
	if o := c.GetCommonHttpProtocolOptions(); o != nil {
		mc.IdleTimeout = o.GetIdleTimeout().AsDuration()
		mc.MaxRequestsPerConnection = int(o.GetMaxRequestsPerConnection().GetValue())
	}
	if v := c.GetMaxRequestsPerConnection(); v != nil {
		mc.MaxRequestsPerConnection = int(v.GetValue())
	}
	if a := c.GetTypedExtensionProtocolOptions()[strings.TrimPrefix(typeHTTPProtocolOptions, "type.googleapis.com/")]; a != nil {
		var po httpv3.HttpProtocolOptions
		if err := a.UnmarshalTo(&po); err != nil {
			return nil, errorf(where, "http protocol options: %v", err)
		}
		switch u := po.GetUpstreamProtocolOptions().(type) {
		case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_:
			switch u.ExplicitHttpConfig.GetProtocolConfig().(type) {
			case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions:
				mc.Protocol = "http1"
			case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions:
				mc.Protocol = "http2"
			default:
				return nil, errorf(where, "upstream HTTP/3 is not supported")
			}
		case *httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig:
			mc.Protocol = "downstream"
		case *httpv3.HttpProtocolOptions_AutoConfig:
			// ALPN needs TLS; over plaintext Envoy speaks HTTP/1.1.
			mc.Protocol = "http1"
		}
		if o := po.GetCommonHttpProtocolOptions(); o != nil {
			if o.GetIdleTimeout() != nil {
				mc.IdleTimeout = o.GetIdleTimeout().AsDuration()
			}
			if o.GetMaxRequestsPerConnection() != nil {
				mc.MaxRequestsPerConnection = int(o.GetMaxRequestsPerConnection().GetValue())
			}
		}
	}
	t.ignoredLB(c, where)
	if c.GetCommonLbConfig().GetLocalityWeightedLbConfig() != nil {
		// istiod sets it for a DestinationRule's localityLbSetting.distribute.
		mc.LocalityWeighted = true
	}
	for _, th := range c.GetCircuitBreakers().GetThresholds() {
		if th.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		mc.MaxConnections = int(th.GetMaxConnections().GetValue())
		mc.MaxPendingRequests = int(th.GetMaxPendingRequests().GetValue())
		mc.MaxRequests = int(th.GetMaxRequests().GetValue())
		mc.MaxRetries = int(th.GetMaxRetries().GetValue())
	}
	mc.PanicThreshold = 50 // Envoy's default
	if p := c.GetCommonLbConfig().GetHealthyPanicThreshold(); p != nil {
		if v := p.GetValue(); v < 0 || v > 100 {
			return nil, fmt.Errorf("cluster %s: healthy_panic_threshold %v is not a percentage", c.GetName(), v)
		}
		// Envoy rounds it to a whole percent (0.4 turns panic off).
		mc.PanicThreshold = math.Round(p.GetValue())
	}
	if c.GetOutlierDetection() != nil {
		od, err := t.outlierDetection(c.GetOutlierDetection(), where)
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.GetName(), err)
		}
		mc.Outlier = od
	}
	if ts := c.GetTransportSocket(); ts != nil {
		if reason := upstreamTransport(ts); reason != "" {
			// Never send in the clear what was meant to be encrypted.
			t.unsupported(model.Unsupported{Where: where, Name: ts.GetName(), TypeURL: ts.GetTypedConfig().GetTypeUrl(),
				FailClosed: true, Reason: reason + ": the cluster gets no endpoints"})
			endpointsOK = false
		}
	}
	if len(c.GetTransportSocketMatches()) > 0 {
		t.unsupported(model.Unsupported{Where: where, Name: "transport_socket_matches",
			Reason: "per-endpoint transport sockets are not applied: endpoints are dialled in plaintext"})
	}
	if !endpointsOK {
		mc.Endpoints = nil
	}
	return mc, nil
}

// ignoredLB records the load balancing settings istiod can emit from a
// DestinationRule that the engine does not apply, so they are not
// dropped silently.
func (t *translator) ignoredLB(c *clusterv3.Cluster, where string) {
	note := func(name, reason string) {
		t.unsupported(model.Unsupported{Where: where, Name: name, Reason: reason})
	}
	if c.GetRoundRobinLbConfig().GetSlowStartConfig() != nil || c.GetLeastRequestLbConfig().GetSlowStartConfig() != nil {
		note("slow_start_config", "slow start (warmupDurationSecs) is not applied: new endpoints take their full share at once")
	}
	if r := c.GetRingHashLbConfig(); r != nil {
		if v := r.GetMinimumRingSize(); v != nil && v.GetValue() != 1024 {
			note("ring_hash_lb_config.minimum_ring_size", "ring size is not applied: the ring has the default size")
		}
		if r.GetHashFunction() != clusterv3.Cluster_RingHashLbConfig_XX_HASH {
			note("ring_hash_lb_config.hash_function", "only xxHash is used: keys map to other hosts than Envoy's")
		}
	}
	if v := c.GetMaglevLbConfig().GetTableSize(); v != nil && v.GetValue() != 65537 {
		note("maglev_lb_config.table_size", "Maglev table size is not applied: the table has 65537 entries")
	}
	// In the typed protocol options (istiod's) or the deprecated field.
	maxDuration := c.GetCommonHttpProtocolOptions().GetMaxConnectionDuration() != nil
	if a := c.GetTypedExtensionProtocolOptions()[strings.TrimPrefix(typeHTTPProtocolOptions, "type.googleapis.com/")]; a != nil {
		var po httpv3.HttpProtocolOptions
		maxDuration = maxDuration || a.UnmarshalTo(&po) == nil && po.GetCommonHttpProtocolOptions().GetMaxConnectionDuration() != nil
	}
	if maxDuration {
		note("max_connection_duration", "upstream connections are not closed after max_connection_duration (maxConnectionDuration)")
	}
}

// upstreamTransport says why a cluster's transport socket cannot be used,
// or "" for plaintext (raw buffer, possibly behind istiod's internal
// upstream wrapper).
func upstreamTransport(ts *corev3.TransportSocket) string {
	for range 4 {
		tu := ts.GetTypedConfig().GetTypeUrl()
		switch tu {
		case typeRawBuffer:
			return ""
		case typeInternalUpstream:
			var iu internalupstreamv3.InternalUpstreamTransport
			if err := ts.GetTypedConfig().UnmarshalTo(&iu); err != nil {
				return "unreadable internal_upstream transport: " + err.Error()
			}
			if iu.GetTransportSocket() == nil {
				return ""
			}
			ts = iu.GetTransportSocket()
		case "":
			if ts.GetName() == "envoy.transport_sockets.raw_buffer" || ts.GetName() == "raw_buffer" {
				return ""
			}
			return "transport socket " + ts.GetName() + " without a config"
		default:
			return "upstream transport " + tu + " (TLS or PROXY protocol towards endpoints) is not supported"
		}
	}
	return "transport sockets nested too deep"
}

// clusterService reads istiod's cluster metadata
// (filter_metadata.istio.services[0]), else the cluster name.
func clusterService(c *clusterv3.Cluster) model.ServiceRef {
	svcs := c.GetMetadata().GetFilterMetadata()["istio"].GetFields()["services"].GetListValue().GetValues()
	if len(svcs) > 0 {
		f := svcs[0].GetStructValue().GetFields()
		if h := f["host"].GetStringValue(); h != "" {
			return model.ServiceRef{Hostname: h, Name: f["name"].GetStringValue(), Namespace: f["namespace"].GetStringValue()}
		}
	}
	return serviceFromName(c.GetName())
}

// endpoints translates a ClusterLoadAssignment into endpoints by
// priority.
func endpoints(cla *endpointv3.ClusterLoadAssignment) (*Endpoints, error) {
	var out [][]model.Endpoint
	for _, le := range cla.GetEndpoints() {
		prio := int(le.GetPriority())
		if prio > 128 {
			return nil, fmt.Errorf("priority %d out of range", prio)
		}
		for len(out) <= prio {
			out = append(out, nil)
		}
		var locality string
		if loc := le.GetLocality(); loc != nil {
			locality = loc.GetRegion() + "/" + loc.GetZone() + "/" + loc.GetSubZone()
		}
		for _, lb := range le.GetLbEndpoints() {
			e, err := endpoint(lb)
			if err != nil {
				return nil, err
			}
			e.Locality, e.LocalityWeight = locality, le.GetLoadBalancingWeight().GetValue()
			out[prio] = append(out[prio], e)
		}
	}
	for i := range out {
		if out[i] == nil {
			out[i] = []model.Endpoint{}
		}
	}
	eps := &Endpoints{byPriority: out}
	if f := cla.GetPolicy().GetOverprovisioningFactor(); f != nil {
		// Envoy's factor is in percent; 0 would make every priority
		// unavailable.
		eps.overprovisioning = max(1, int(f.GetValue()))
	}
	return eps, nil
}

// errNotIP is an endpoint address that is a name: fine for a DNS
// cluster's config, but not resolved here.
var errNotIP = errors.New("not an IP address")

func endpoint(lb *endpointv3.LbEndpoint) (model.Endpoint, error) {
	e := model.Endpoint{Weight: 1, Healthy: true}
	if w := lb.GetLoadBalancingWeight(); w != nil {
		if w.GetValue() == 0 {
			return e, fmt.Errorf("endpoint weight 0")
		}
		e.Weight = w.GetValue()
	}
	switch lb.GetHealthStatus() {
	case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
	case corev3.HealthStatus_DEGRADED:
		// Envoy still sends to degraded hosts what healthy ones cannot take.
		e.Healthy, e.Degraded = false, true
	default:
		e.Healthy = false
	}
	if lb.GetEndpoint() == nil {
		return e, fmt.Errorf("named endpoints are not supported")
	}
	e.Hostname = lb.GetEndpoint().GetHostname()
	md := lb.GetMetadata().GetFilterMetadata()
	addr := lb.GetEndpoint().GetAddress()
	switch {
	case addr.GetSocketAddress() != nil:
		sa := addr.GetSocketAddress()
		a, err := netip.ParseAddr(sa.GetAddress())
		if err != nil {
			return e, fmt.Errorf("endpoint %q: %w", sa.GetAddress(), errNotIP)
		}
		if sa.GetPortValue() == 0 || sa.GetPortValue() > 65535 {
			return e, fmt.Errorf("endpoint %s: port %d", sa.GetAddress(), sa.GetPortValue())
		}
		e.Address = netip.AddrPortFrom(a.Unmap(), uint16(sa.GetPortValue()))
	case addr.GetEnvoyInternalAddress() != nil:
		// istiod's HBONE endpoint: the pod is in the metadata the
		// internal listener would read.
		local := md[originalDstKey].GetFields()["local"].GetStringValue()
		if local == "" {
			return e, fmt.Errorf("internal endpoint %s without %s.local metadata",
				addr.GetEnvoyInternalAddress().GetServerListenerName(), originalDstKey)
		}
		ap, err := netip.ParseAddrPort(local)
		if err != nil {
			return e, fmt.Errorf("internal endpoint %s: %s.local %q: %v",
				addr.GetEnvoyInternalAddress().GetServerListenerName(), originalDstKey, local, err)
		}
		e.Address = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	default:
		return e, fmt.Errorf("endpoint address %T is not supported", addr.GetAddress())
	}
	e.Workload = workloadOf(md["istio"])
	return e, nil
}

// workloadOf reads istiod's endpoint metadata istio.workload
// ("name;namespace;canonical service;revision;cluster") as
// "namespace/name".
func workloadOf(s *structpb.Struct) string {
	w := s.GetFields()["workload"].GetStringValue()
	if w == "" {
		return ""
	}
	parts := strings.Split(w, ";")
	if len(parts) >= 2 && parts[0] != "" && parts[1] != "" {
		return parts[1] + "/" + parts[0]
	}
	return w
}

// setEndpoints gives a cluster its assignment (nil: none yet).
func setEndpoints(mc *model.Cluster, eps *Endpoints) {
	if eps == nil {
		return
	}
	mc.Endpoints = eps.byPriority
	mc.OverprovisioningFactor = eps.overprovisioning
}

// outlierDetection reads Envoy's outlier detection with its defaults. The
// consecutive-error detectors are applied; success-rate and
// failure-percentage detection are reported when they would eject
// (istiod turns success rate off and never sets failure percentage).
func (t *translator) outlierDetection(o *clusterv3.OutlierDetection, where string) (*model.OutlierDetection, error) {
	u32 := func(v *wrapperspb.UInt32Value, def uint32) uint32 {
		if v == nil {
			return def
		}
		return v.GetValue()
	}
	dur := func(d *durationpb.Duration, def time.Duration) time.Duration {
		if d == nil {
			return def
		}
		return d.AsDuration()
	}
	od := &model.OutlierDetection{
		Consecutive5xx:                         u32(o.GetConsecutive_5Xx(), 5),
		EnforcingConsecutive5xx:                u32(o.GetEnforcingConsecutive_5Xx(), 100),
		ConsecutiveGatewayFailure:              u32(o.GetConsecutiveGatewayFailure(), 5),
		EnforcingConsecutiveGatewayFailure:     u32(o.GetEnforcingConsecutiveGatewayFailure(), 0),
		SplitLocalOrigin:                       o.GetSplitExternalLocalOriginErrors(),
		ConsecutiveLocalOriginFailure:          u32(o.GetConsecutiveLocalOriginFailure(), 5),
		EnforcingConsecutiveLocalOriginFailure: u32(o.GetEnforcingConsecutiveLocalOriginFailure(), 100),
		Interval:                               dur(o.GetInterval(), 10*time.Second),
		BaseEjectionTime:                       dur(o.GetBaseEjectionTime(), 30*time.Second),
		MaxEjectionTimeJitter:                  dur(o.GetMaxEjectionTimeJitter(), 0),
		MaxEjectionPercent:                     min(100, u32(o.GetMaxEjectionPercent(), 10)),
		AlwaysEjectOneHost:                     o.GetAlwaysEjectOneHost().GetValue(),
	}
	od.MaxEjectionTime = dur(o.GetMaxEjectionTime(), max(300*time.Second, od.BaseEjectionTime))
	switch {
	case od.Interval <= 0:
		return nil, fmt.Errorf("outlier_detection.interval %v must be positive", od.Interval)
	case od.BaseEjectionTime <= 0:
		return nil, fmt.Errorf("outlier_detection.base_ejection_time %v must be positive", od.BaseEjectionTime)
	case od.MaxEjectionTime < od.BaseEjectionTime:
		// Envoy refuses the cluster too.
		return nil, fmt.Errorf("outlier_detection.max_ejection_time %v is shorter than base_ejection_time %v", od.MaxEjectionTime, od.BaseEjectionTime)
	}
	note := func(name, reason string) {
		t.unsupported(model.Unsupported{Where: where, Name: "outlier_detection." + name, Reason: reason})
	}
	if u32(o.GetEnforcingSuccessRate(), 100) > 0 {
		note("enforcing_success_rate", "success-rate ejection is not applied (only consecutive errors eject)")
	}
	if od.SplitLocalOrigin && u32(o.GetEnforcingLocalOriginSuccessRate(), 100) > 0 {
		note("enforcing_local_origin_success_rate", "local-origin success-rate ejection is not applied")
	}
	if u32(o.GetEnforcingFailurePercentage(), 0) > 0 || u32(o.GetEnforcingFailurePercentageLocalOrigin(), 0) > 0 {
		note("enforcing_failure_percentage", "failure-percentage ejection is not applied")
	}
	if len(o.GetMonitors()) > 0 {
		note("monitors", "outlier detection extensions are not applied")
	}
	return od, nil
}
