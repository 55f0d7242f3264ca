package model

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unique"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pkg/workloadapi"
)

// ExtensionLB is the name of the service extension that carries what
// Istio's workload API cannot say: the policy within a priority and session
// affinity. Its config is a google.protobuf.Struct:
//
//	{"policy": "random" | "round_robin" | "maglev", "affinityTimeout": "30s"}
const ExtensionLB = "kmesh.net/load-balancing"

// DefaultHBONEPort is used for a waypoint that names no port.
const DefaultHBONEPort = 15008

// FromAddress validates an istio.workload.Address and converts it. The
// error says what is wrong in terms an operator can act on.
func FromAddress(a *workloadapi.Address) (*Service, *Workload, error) {
	switch t := a.GetType().(type) {
	case *workloadapi.Address_Service:
		s, err := FromService(t.Service)
		return s, nil, err
	case *workloadapi.Address_Workload:
		w, err := FromWorkload(t.Workload)
		return nil, w, err
	}
	return nil, nil, fmt.Errorf("address holds neither a service nor a workload")
}

// FromService converts one istio.workload.Service.
func FromService(s *workloadapi.Service) (*Service, error) {
	if s.GetNamespace() == "" || s.GetHostname() == "" {
		return nil, fmt.Errorf("service %q: namespace and hostname are required", s.GetName())
	}
	out := &Service{
		Key:       ServiceKey(intern(s.GetNamespace() + "/" + s.GetHostname())),
		Name:      s.GetName(),
		Namespace: intern(s.GetNamespace()),
		Hostname:  s.GetHostname(),
		LB:        LoadBalancing{Policy: PolicyRandom},
	}
	where := func(format string, args ...any) error {
		return fmt.Errorf("service %s: %s", out.Key, fmt.Sprintf(format, args...))
	}
	for i, na := range s.GetAddresses() {
		ip, err := addrFromBytes(na.GetAddress())
		if err != nil {
			return nil, where("addresses[%d]: %v", i, err)
		}
		// A ServiceEntry address may be a CIDR range (istiod sends its
		// first address and prefix length). The data path matches a VIP
		// exactly, so a range cannot be one: its first address (0.0.0.0
		// for 0.0.0.0/0) would be taken for the whole range.
		if na.Length != nil && int(na.GetLength()) < ip.BitLen() {
			continue
		}
		// istiod keeps one VIP per network and IP: a service merged from
		// clusters on two networks that share a service CIDR (clusters
		// made with the same defaults) lists the same IP once per network.
		// The data path matches a VIP by IP alone, so it is one VIP.
		if slices.Contains(out.VIPs, ip) {
			continue
		}
		out.VIPs = append(out.VIPs, ip)
	}
	for i, p := range s.GetPorts() {
		port, err := portFrom(p)
		if err != nil {
			return nil, where("ports[%d]: %v", i, err)
		}
		// A Kubernetes Service lists a port number once per protocol
		// (kube-dns: 53/UDP and 53/TCP) and istiod passes each on. The
		// data path maps a port without its protocol, so the first
		// listing stands for all of them, as Workload.TargetPort reads
		// the first of a workload's own.
		if slices.ContainsFunc(out.Ports, func(q Port) bool { return q.ServicePort == port.ServicePort }) {
			continue
		}
		out.Ports = append(out.Ports, port)
	}
	if lb := s.GetLoadBalancing(); lb != nil {
		switch lb.GetMode() {
		case workloadapi.LoadBalancing_UNSPECIFIED_MODE:
			out.LB.Mode = LBModeUnspecified
		case workloadapi.LoadBalancing_STRICT:
			out.LB.Mode = LBModeStrict
		case workloadapi.LoadBalancing_FAILOVER:
			out.LB.Mode = LBModeFailover
		case workloadapi.LoadBalancing_PASSTHROUGH:
			out.LB.Mode = LBModePassthrough
		default:
			return nil, where("unknown load-balancing mode %d (known: UNSPECIFIED_MODE, STRICT, FAILOVER, PASSTHROUGH)", lb.GetMode())
		}
		for i, sc := range lb.GetRoutingPreference() {
			if sc < workloadapi.LoadBalancing_REGION || sc > workloadapi.LoadBalancing_NETWORK {
				return nil, where("loadBalancing.routingPreference[%d]: unknown scope %d", i, sc)
			}
			out.LB.RoutingPreference = append(out.LB.RoutingPreference, Scope(sc))
		}
		switch lb.GetHealthPolicy() {
		case workloadapi.LoadBalancing_ONLY_HEALTHY:
		case workloadapi.LoadBalancing_ALLOW_ALL:
			out.LB.AllowUnhealthy = true
		default:
			return nil, where("unknown health policy %d", lb.GetHealthPolicy())
		}
	}
	for _, ext := range s.GetExtensions() {
		if ext.GetName() != ExtensionLB {
			continue
		}
		if err := lbExtension(ext.GetConfig().GetValue(), ext.GetConfig().GetTypeUrl(), &out.LB); err != nil {
			return nil, where("extension %s: %v", ExtensionLB, err)
		}
	}
	if s.GetWaypoint() != nil {
		g, err := gatewayFrom(s.GetWaypoint())
		if err != nil {
			return nil, where("waypoint: %v", err)
		}
		out.Waypoint = g
	}
	return out, nil
}

func lbExtension(raw []byte, typeURL string, lb *LoadBalancing) error {
	if typeURL != "type.googleapis.com/google.protobuf.Struct" {
		return fmt.Errorf("config must be a google.protobuf.Struct, got %q", typeURL)
	}
	var st structpb.Struct
	if err := proto.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("decode config: %v", err)
	}
	for k, v := range st.GetFields() {
		switch k {
		case "policy":
			switch p := Policy(v.GetStringValue()); p {
			case PolicyRandom, PolicyRoundRobin, PolicyMaglev:
				lb.Policy = p
			default:
				return fmt.Errorf("unknown policy %q (known: random, round_robin, maglev)", v.GetStringValue())
			}
		case "affinityTimeout":
			d, err := time.ParseDuration(v.GetStringValue())
			if err != nil || d < 0 || d > 24*time.Hour {
				return fmt.Errorf("affinityTimeout %q: want a duration between 0s and 24h", v.GetStringValue())
			}
			lb.Affinity = d
		default:
			return fmt.Errorf("unknown field %q", k)
		}
	}
	return nil
}

// workloadBlock holds a workload and room for its usual address and
// service.
type workloadBlock struct {
	w        Workload
	addrs    [1]netip.Addr
	services [1]ServicePorts
}

// FromWorkload converts one istio.workload.Workload.
func FromWorkload(w *workloadapi.Workload) (*Workload, error) {
	if w.GetUid() == "" {
		return nil, fmt.Errorf("workload %s/%s: uid is required", w.GetNamespace(), w.GetName())
	}
	// Most workloads have one address and back one service: the three
	// are one allocation then, rather than three small ones scattered
	// among the decoder's garbage (which would keep half-empty pages).
	block := new(workloadBlock)
	out := &block.w
	*out = Workload{
		// Copies: the message's strings sit among its garbage.
		UID:     strings.Clone(w.GetUid()),
		Name:    strings.Clone(w.GetName()),
		Node:    intern(w.GetNode()),
		Healthy: w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY,
		// Any other mode (none yet) is an address of the workload's own,
		// as STANDARD.
		HostNetwork: w.GetNetworkMode() == workloadapi.NetworkMode_HOST_NETWORK,
	}
	if len(w.GetAddresses()) <= len(block.addrs) {
		out.Addresses = block.addrs[:0]
	}
	if len(w.GetServices()) <= len(block.services) {
		out.Services = block.services[:0]
	}
	sh := Shared{
		Namespace:         w.GetNamespace(),
		Network:           w.GetNetwork(),
		ClusterID:         w.GetClusterId(),
		TrustDomain:       w.GetTrustDomain(),
		ServiceAccount:    w.GetServiceAccount(),
		CanonicalName:     w.GetCanonicalName(),
		CanonicalRevision: w.GetCanonicalRevision(),
		WorkloadName:      w.GetWorkloadName(),
	}
	if l := w.GetLocality(); l != nil {
		sh.Locality = Locality{Region: l.GetRegion(), Zone: l.GetZone(), Subzone: l.GetSubzone()}
	}
	out.Shared = ShareOf(sh)
	for _, p := range w.GetAuthorizationPolicies() {
		out.Policies = append(out.Policies, intern(p))
	}
	where := func(format string, args ...any) error {
		return fmt.Errorf("workload %s (%s/%s): %s", out.UID, out.Namespace, out.Name, fmt.Sprintf(format, args...))
	}
	if w.GetStatus() != workloadapi.WorkloadStatus_HEALTHY && w.GetStatus() != workloadapi.WorkloadStatus_UNHEALTHY {
		return nil, where("unknown status %d", w.GetStatus())
	}
	for i, b := range w.GetAddresses() {
		ip, err := addrFromBytes(b)
		if err != nil {
			return nil, where("addresses[%d]: %v", i, err)
		}
		// istiod copies an EndpointSlice endpoint's addresses as a user
		// wrote them, repeats (or an IPv4-mapped twin) included; the data
		// path keys addresses by IP, so a repeat is the same address.
		if slices.Contains(out.Addresses, ip) {
			continue
		}
		out.Addresses = append(out.Addresses, ip)
	}
	if len(w.GetServices()) > cap(out.Services) {
		out.Services = make([]ServicePorts, 0, len(w.GetServices()))
	}
	for key, pl := range w.GetServices() {
		if ns, host, ok := strings.Cut(key, "/"); !ok || ns == "" || host == "" {
			return nil, where("services key %q is not namespace/hostname", key)
		}
		sp := ServicePorts{Service: ServiceKey(intern(key))}
		for i, p := range pl.GetPorts() {
			port, err := portFrom(p)
			if err != nil {
				return nil, where("services[%s].ports[%d]: %v", key, i, err)
			}
			sp.Ports = append(sp.Ports, port)
		}
		out.Services = append(out.Services, sp)
	}
	slices.SortFunc(out.Services, func(a, b ServicePorts) int { return strings.Compare(string(a.Service), string(b.Service)) })
	if w.GetWaypoint() != nil {
		g, err := gatewayFrom(w.GetWaypoint())
		if err != nil {
			return nil, where("waypoint: %v", err)
		}
		out.Waypoint = g
	}
	return out, nil
}

// intern shares one copy of equal strings.
func intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}

func addrFromBytes(b []byte) (netip.Addr, error) {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, fmt.Errorf("invalid address bytes: %d bytes, want 4 (IPv4) or 16 (IPv6)", len(b))
	}
	return a.Unmap(), nil
}

func portFrom(p *workloadapi.Port) (Port, error) {
	if p.GetServicePort() == 0 || p.GetServicePort() > 65535 {
		return Port{}, fmt.Errorf("service port %d out of range 1-65535", p.GetServicePort())
	}
	if p.GetTargetPort() > 65535 {
		return Port{}, fmt.Errorf("target port %d out of range 0-65535", p.GetTargetPort())
	}
	return Port{ServicePort: uint16(p.GetServicePort()), TargetPort: uint16(p.GetTargetPort())}, nil
}

func gatewayFrom(g *workloadapi.GatewayAddress) (*Gateway, error) {
	if g.GetHboneMtlsPort() > 65535 {
		return nil, fmt.Errorf("HBONE port %d out of range", g.GetHboneMtlsPort())
	}
	out := &Gateway{Port: uint16(g.GetHboneMtlsPort())}
	if out.Port == 0 {
		out.Port = DefaultHBONEPort
	}
	switch d := g.GetDestination().(type) {
	case *workloadapi.GatewayAddress_Address:
		ip, err := addrFromBytes(d.Address.GetAddress())
		if err != nil {
			return nil, err
		}
		out.Address = ip
	case *workloadapi.GatewayAddress_Hostname:
		if d.Hostname.GetNamespace() == "" || d.Hostname.GetHostname() == "" {
			return nil, fmt.Errorf("hostname reference needs namespace and hostname")
		}
		out.Service = ServiceKey(d.Hostname.GetNamespace() + "/" + d.Hostname.GetHostname())
	default:
		return nil, fmt.Errorf("no destination (address or hostname)")
	}
	return out, nil
}
