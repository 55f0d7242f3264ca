package model

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

func svc(mut func(*workloadapi.Service)) *workloadapi.Address {
	s := &workloadapi.Service{Name: "web", Namespace: "default", Hostname: "web.default.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: []byte{10, 96, 0, 10}}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}
	if mut != nil {
		mut(s)
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
}

func wl(mut func(*workloadapi.Workload)) *workloadapi.Address {
	w := &workloadapi.Workload{Uid: "u1", Name: "p", Namespace: "default", Addresses: [][]byte{{10, 244, 0, 1}},
		Status: workloadapi.WorkloadStatus_HEALTHY, ServiceAccount: "sa",
		Services: map[string]*workloadapi.PortList{"default/web.default.svc.cluster.local": {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 9090}}}}}
	if mut != nil {
		mut(w)
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

func TestConversionRejectsWithActionableReasons(t *testing.T) {
	lbExt := func(fields map[string]any) *workloadapi.Extension {
		st, _ := structpb.NewStruct(fields)
		a, _ := anypb.New(st)
		return &workloadapi.Extension{Name: ExtensionLB, Config: a}
	}
	cases := map[string]struct {
		a    *workloadapi.Address
		want string
	}{
		"5-byte VIP":      {svc(func(s *workloadapi.Service) { s.Addresses[0].Address = []byte{1, 2, 3, 4, 5} }), "invalid address bytes: 5 bytes"},
		"port 70000":      {svc(func(s *workloadapi.Service) { s.Ports[0].ServicePort = 70000 }), "service port 70000 out of range"},
		"target port":     {svc(func(s *workloadapi.Service) { s.Ports[0].TargetPort = 65536 }), "target port 65536 out of range"},
		"unknown LB mode": {svc(func(s *workloadapi.Service) { s.LoadBalancing = &workloadapi.LoadBalancing{Mode: 7} }), "unknown load-balancing mode 7"},
		"unknown scope": {svc(func(s *workloadapi.Service) {
			s.LoadBalancing = &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{9}}
		}), "unknown scope 9"},
		"no hostname":      {svc(func(s *workloadapi.Service) { s.Hostname = "" }), "namespace and hostname are required"},
		"waypoint nowhere": {svc(func(s *workloadapi.Service) { s.Waypoint = &workloadapi.GatewayAddress{} }), "no destination"},
		"bad LB policy": {svc(func(s *workloadapi.Service) {
			s.Extensions = []*workloadapi.Extension{lbExt(map[string]any{"policy": "fastest"})}
		}), `unknown policy "fastest"`},
		"bad affinity": {svc(func(s *workloadapi.Service) {
			s.Extensions = []*workloadapi.Extension{lbExt(map[string]any{"affinityTimeout": "forever"})}
		}), "affinityTimeout"},
		"workload no uid":  {wl(func(w *workloadapi.Workload) { w.Uid = "" }), "uid is required"},
		"workload bad ip":  {wl(func(w *workloadapi.Workload) { w.Addresses = [][]byte{{1}} }), "addresses[0]: invalid address bytes: 1 bytes"},
		"bad services key": {wl(func(w *workloadapi.Workload) { w.Services = map[string]*workloadapi.PortList{"web": {}} }), `services key "web" is not namespace/hostname`},
		"bad status":       {wl(func(w *workloadapi.Workload) { w.Status = 5 }), "unknown status 5"},
	}
	for name, c := range cases {
		_, _, err := FromAddress(c.a)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, c.want)
		}
	}
}

func TestConversionKeepsWhatMatters(t *testing.T) {
	st, _ := structpb.NewStruct(map[string]any{"policy": "maglev", "affinityTimeout": "30s"})
	cfg, _ := anypb.New(st)
	s, _, err := FromAddress(svc(func(s *workloadapi.Service) {
		s.LoadBalancing = &workloadapi.LoadBalancing{Mode: workloadapi.LoadBalancing_FAILOVER,
			RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE},
			HealthPolicy:      workloadapi.LoadBalancing_ALLOW_ALL}
		s.Extensions = []*workloadapi.Extension{{Name: ExtensionLB, Config: cfg}}
		s.Addresses = append(s.Addresses, &workloadapi.NetworkAddress{Address: make([]byte, 16)})
	}))
	if err != nil {
		t.Fatal(err)
	}
	if s.Key != "default/web.default.svc.cluster.local" || len(s.VIPs) != 2 || s.LB.Mode != LBModeFailover ||
		len(s.LB.RoutingPreference) != 2 || !s.LB.AllowUnhealthy || s.LB.Policy != PolicyMaglev || s.LB.Affinity.Seconds() != 30 {
		t.Fatalf("service %+v", s)
	}
	_, w, err := FromAddress(wl(func(w *workloadapi.Workload) {
		w.Status = workloadapi.WorkloadStatus_UNHEALTHY
		w.Locality = &workloadapi.Locality{Region: "r", Zone: "z"}
		w.AuthorizationPolicies = []string{"default/p"}
	}))
	if err != nil {
		t.Fatal(err)
	}
	if w.Healthy || w.Locality.Zone != "z" || w.Identity() != "spiffe://cluster.local/ns/default/sa/sa" ||
		w.TargetPort("default/web.default.svc.cluster.local", Port{ServicePort: 80, TargetPort: 8080}) != 9090 || w.Policies[0] != "default/p" {
		t.Fatalf("workload %+v", w)
	}
}

func TestAuthorizationConversion(t *testing.T) {
	a := &security.Authorization{Name: "p", Namespace: "ns", Scope: security.Scope_GLOBAL, Action: security.Action_DENY,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{
			SourceIps:        []*security.Address{{Address: []byte{10, 0, 0, 0}, Length: 8}},
			DestinationPorts: []uint32{443},
		}}}}}}}
	p, err := FromAuthorization(a)
	if err != nil {
		t.Fatal(err)
	}
	if p.Key != "ns/p" || p.Scope != ScopeGlobal || p.Action != ActionDeny || p.Groups[0][0][0].SourceIPs[0].String() != "10.0.0.0/8" {
		t.Fatalf("%+v", p)
	}
	bad := []*security.Authorization{
		{Name: "x", Action: 5},
		{Name: "x", Scope: 9},
		{Name: ""},
	}
	for i, b := range bad {
		if _, err := FromAuthorization(b); err == nil {
			t.Errorf("bad authorization %d accepted", i)
		}
	}
}

// A value that cannot be converted no longer refuses the whole policy
// (which left an ALLOW policy out, its workloads open to all), nor is it
// dropped alone as ztunnel does (a port truncated, a positive list left
// empty: the condition gone, the ALLOW wider). Its match fails closed: in
// an ALLOW it matches nothing; in a DENY the tainted conditions are dropped,
// and a match left with none matches everyone.
func TestAuthorizationBadValuesFailClosed(t *testing.T) {
	typeless := &security.StringMatch{}
	badIP := &security.Address{Address: []byte{10, 0, 0, 0, 1}, Length: 8}
	longPrefix := &security.Address{Address: []byte{10, 0, 0, 0}, Length: 40}
	pol := func(action security.Action, ms ...*security.Match) *AuthzPolicy {
		t.Helper()
		p, err := FromAuthorization(&security.Authorization{Name: "p", Namespace: "ns", Scope: security.Scope_NAMESPACE, Action: action,
			Groups: []*security.Group{{Rules: []*security.Rules{{Matches: ms}}}}})
		if err != nil {
			t.Fatalf("policy refused: %v", err)
		}
		if len(p.Warnings) == 0 {
			t.Fatalf("no warning for %+v", ms)
		}
		return p
	}
	from := func(ns string, port uint16) Conn {
		return Conn{Src: Peer{IP: netip.MustParseAddr("10.0.0.1"), Known: true, Namespace: ns, ServiceAccount: "sa"},
			DstIP: netip.MustParseAddr("10.0.0.2"), DstPort: port}
	}
	cases := []struct {
		name string
		p    *AuthzPolicy
		conn Conn
		want bool // allowed
	}{
		// ztunnel would truncate 65616 to 80 and allow port 80.
		{"ALLOW port out of range", pol(security.Action_ALLOW, &security.Match{DestinationPorts: []uint32{65616}}), from("a", 80), false},
		// ztunnel would drop the principal and allow all of namespace a.
		{"ALLOW typeless principal", pol(security.Action_ALLOW, &security.Match{Principals: []*security.StringMatch{typeless}, Namespaces: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "a"}}}}), from("a", 80), false},
		{"ALLOW bad not_source", pol(security.Action_ALLOW, &security.Match{NotSourceIps: []*security.Address{badIP}, DestinationPorts: []uint32{80}}), from("a", 80), false},
		{"ALLOW good match beside a bad one", pol(security.Action_ALLOW, &security.Match{DestinationPorts: []uint32{70000}}, &security.Match{DestinationPorts: []uint32{80}}), from("a", 80), true},
		{"ALLOW good match beside a bad one, other port", pol(security.Action_ALLOW, &security.Match{DestinationPorts: []uint32{70000}}, &security.Match{DestinationPorts: []uint32{80}}), from("a", 81), false},
		// The DENY keeps its namespace condition without the source one.
		{"DENY bad source, namespace kept", pol(security.Action_DENY, &security.Match{SourceIps: []*security.Address{longPrefix}, Namespaces: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "evil"}}}}), from("evil", 80), false},
		{"DENY bad source, other namespace", pol(security.Action_DENY, &security.Match{SourceIps: []*security.Address{longPrefix}, Namespaces: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "evil"}}}}), from("a", 80), true},
		// Nothing left: the DENY applies to every connection.
		{"DENY only bad values", pol(security.Action_DENY, &security.Match{DestinationPorts: []uint32{65616}, NotNamespaces: []*security.StringMatch{typeless}}), from("a", 80), false},
		{"DENY only bad values, unknown source", pol(security.Action_DENY, &security.Match{NotDestinationIps: []*security.Address{badIP}}), Conn{Src: Peer{IP: netip.MustParseAddr("fd00::1")}, DstIP: netip.MustParseAddr("fd00::2"), DstPort: 1}, false},
	}
	for _, c := range cases {
		if got := Evaluate([]*AuthzPolicy{c.p}, c.conn).Allow; got != c.want {
			t.Errorf("%s: allowed=%v, want %v (groups %+v)", c.name, got, c.want, c.p.Groups)
		}
	}
}

// Port 0 is a port Istio's validation accepts (ports: ["0"]) and istiod
// forwards; ztunnel takes it as a port no connection has. Refusing the
// whole policy for it would leave an ALLOW policy out (the workload then
// open to all) or a DENY unenforced.
func TestAuthorizationPortZero(t *testing.T) {
	a := &security.Authorization{Name: "p", Namespace: "ns", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{
			DestinationPorts:    []uint32{0, 8080},
			NotDestinationPorts: []uint32{0},
		}}}}}}}
	p, err := FromAuthorization(a)
	if err != nil {
		t.Fatal(err)
	}
	c := Conn{Src: Peer{IP: netip.MustParseAddr("10.0.0.1")}, DstIP: netip.MustParseAddr("10.0.0.2"), DstPort: 8080}
	if !p.Matches(c) {
		t.Fatalf("port 8080 not matched by %+v", p.Groups)
	}
	if c.DstPort = 80; p.Matches(c) {
		t.Fatalf("port 80 matched by %+v", p.Groups)
	}
}

// A 16-byte address is an IPv6 prefix even when IPv4-mapped, as ztunnel
// takes it (istiod sends ipBlocks: ["::ffff:10.0.0.0/104"] as 16 bytes):
// connections from IPv4 sources are IPv4, so a mapped prefix of /96 or
// longer matches none of them; a shorter one is an IPv6 prefix. Neither
// may make the policy be refused, which leaves an ALLOW policy out.
func TestAuthorizationIPv4MappedCIDR(t *testing.T) {
	mapped := netip.MustParseAddr("::ffff:10.0.0.0").AsSlice()
	a := &security.Authorization{Name: "p", Namespace: "ns", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{
			SourceIps: []*security.Address{{Address: mapped, Length: 104}, {Address: []byte{192, 168, 0, 0}, Length: 16}, {Address: mapped, Length: 80}},
		}}}}}}}
	p, err := FromAuthorization(a)
	if err != nil {
		t.Fatal(err)
	}
	got := p.Groups[0][0][0].SourceIPs
	if len(got) != 3 || got[0].String() != "::ffff:10.0.0.0/104" || got[2].String() != "::/80" {
		t.Fatalf("source prefixes %v", got)
	}
	for src, want := range map[string]bool{"10.1.2.3": false, "192.168.1.1": true, "::1": true, "2001:db8::1": false} {
		c := Conn{Src: Peer{IP: netip.MustParseAddr(src)}, DstIP: netip.MustParseAddr("10.0.0.2"), DstPort: 80}
		if p.Matches(c) != want {
			t.Errorf("from %s: matches=%v, want %v", src, !want, want)
		}
	}
}

func TestPriorityFollowsRoutingPreference(t *testing.T) {
	node := Node{Name: "n1", ClusterID: "c", Network: "net", Locality: Locality{Region: "r1", Zone: "z1", Subzone: "s1"}}
	lb := LoadBalancing{RoutingPreference: []Scope{ScopeNetwork, ScopeRegion, ScopeZone, ScopeNode}}
	w := &Workload{Node: "n1", Shared: &Shared{Network: "net", Locality: Locality{Region: "r1", Zone: "z1"}}}
	cases := []struct {
		mut  func(*Workload)
		want int
	}{
		{func(*Workload) {}, 0},
		{func(w *Workload) { w.Node = "n2" }, 1},
		{func(w *Workload) { w.Locality.Zone = "z2" }, 2},
		{func(w *Workload) { w.Locality.Region = "r2" }, 3},
		{func(w *Workload) { w.Network = "other" }, 4},
	}
	for i, c := range cases {
		x := *w
		sh := *w.Shared
		x.Shared = &sh
		c.mut(&x)
		if got := Priority(lb, node, &x); got != c.want {
			t.Errorf("case %d: priority %d, want %d", i, got, c.want)
		}
	}
}

// Workloads of one deployment in one place share one Shared; any
// difference gives another.
func TestWorkloadsShareWhatTheyHaveInCommon(t *testing.T) {
	conv := func(uid, ns, sa string) *Workload {
		t.Helper()
		_, w, err := FromAddress(&workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
			Uid: uid, Namespace: ns, ServiceAccount: sa, Addresses: [][]byte{{10, 0, 0, 1}}, Node: "n-" + uid,
			Locality: &workloadapi.Locality{Region: "r"}}}})
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	a, b, c := conv("a", "ns", "sa"), conv("b", "ns", "sa"), conv("c", "ns", "other")
	if a.Shared != b.Shared || a.Node == b.Node {
		t.Fatalf("pods of one deployment: %p %p", a.Shared, b.Shared)
	}
	if c.Shared == a.Shared || c.Identity() != "spiffe://cluster.local/ns/ns/sa/other" || a.Identity() != "spiffe://cluster.local/ns/ns/sa/sa" {
		t.Fatalf("another service account: %p %p %s %s", a.Shared, c.Shared, a.Identity(), c.Identity())
	}
}

// istiod lists a Kubernetes Service's port once per protocol (53/UDP and
// 53/TCP); the model keeps one port per number, the first listed.
func TestServicePortPerProtocolIsOnePort(t *testing.T) {
	s, _, err := FromAddress(svc(func(s *workloadapi.Service) {
		s.Ports = []*workloadapi.Port{{ServicePort: 53, TargetPort: 5353}, {ServicePort: 9153}, {ServicePort: 53, TargetPort: 53}}
	}))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Ports) != 2 || s.Ports[0] != (Port{ServicePort: 53, TargetPort: 5353}) || s.Ports[1] != (Port{ServicePort: 9153}) {
		t.Fatalf("ports %+v, want 53->5353 and 9153", s.Ports)
	}
}

// A ServiceEntry's addresses may be CIDR ranges; istiod sends the range's
// first address with its prefix length. The data path matches VIPs exactly,
// so a range is no VIP (its first address would stand for it otherwise),
// while a full-length prefix is one address.
func TestServiceCIDRAddressIsNoVIP(t *testing.T) {
	length := func(n uint32) *uint32 { return &n }
	s, _, err := FromAddress(svc(func(s *workloadapi.Service) {
		s.Addresses = []*workloadapi.NetworkAddress{
			{Address: []byte{10, 10, 0, 0}, Length: length(16)},
			{Address: []byte{0, 0, 0, 0}, Length: length(0)},
			{Address: []byte{192, 168, 1, 7}, Length: length(32)},
			{Address: []byte{10, 96, 0, 10}},
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("192.168.1.7"), netip.MustParseAddr("10.96.0.10")}
	if !slices.Equal(s.VIPs, want) {
		t.Fatalf("VIPs %v, want %v", s.VIPs, want)
	}
}
