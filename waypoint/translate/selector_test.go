package translate

import (
	"net/netip"
	"testing"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	xdsmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	networkv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/network/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/route"
)

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func toChain(name string) *xdsmatcher.Matcher_OnMatch {
	return &xdsmatcher.Matcher_OnMatch{OnMatch: &xdsmatcher.Matcher_OnMatch_Action{
		Action: &xdscore.TypedExtensionConfig{Name: name, TypedConfig: mustAny(wrapperspb.String(name))}}}
}

func toMatcher(m *xdsmatcher.Matcher) *xdsmatcher.Matcher_OnMatch {
	return &xdsmatcher.Matcher_OnMatch{OnMatch: &xdsmatcher.Matcher_OnMatch_Matcher{Matcher: m}}
}

func exactTree(input proto.Message, m map[string]*xdsmatcher.Matcher_OnMatch, onNo *xdsmatcher.Matcher_OnMatch) *xdsmatcher.Matcher {
	return &xdsmatcher.Matcher{OnNoMatch: onNo, MatcherType: &xdsmatcher.Matcher_MatcherTree_{MatcherTree: &xdsmatcher.Matcher_MatcherTree{
		Input:    &xdscore.TypedExtensionConfig{Name: "in", TypedConfig: mustAny(input)},
		TreeType: &xdsmatcher.Matcher_MatcherTree_ExactMatchMap{ExactMatchMap: &xdsmatcher.Matcher_MatcherTree_MatchMap{Map: m}},
	}}}
}

func appProto(http, tcp string) *xdsmatcher.Matcher {
	return exactTree(&networkv3.ApplicationProtocolInput{},
		map[string]*xdsmatcher.Matcher_OnMatch{"'h2c'": toChain(http), "'http/1.1'": toChain(http)}, toChain(tcp))
}

func ipTree(ranges map[string]*xdsmatcher.Matcher_OnMatch) *xdsmatcher.Matcher {
	ipm := &xdsmatcher.IPMatcher{}
	for cidr, on := range ranges {
		p := netip.MustParsePrefix(cidr)
		ipm.RangeMatchers = append(ipm.RangeMatchers, &xdsmatcher.IPMatcher_IPRangeMatcher{
			Ranges:  []*xdscore.CidrRange{{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}},
			OnMatch: on,
		})
	}
	return &xdsmatcher.Matcher{MatcherType: &xdsmatcher.Matcher_MatcherTree_{MatcherTree: &xdsmatcher.Matcher_MatcherTree{
		Input:    &xdscore.TypedExtensionConfig{Name: "ip", TypedConfig: mustAny(&networkv3.DestinationIPInput{})},
		TreeType: &xdsmatcher.Matcher_MatcherTree_CustomMatch{CustomMatch: &xdscore.TypedExtensionConfig{Name: "ip", TypedConfig: mustAny(ipm)}},
	}}}
}

// istiodLike is the shape of main_internal's matcher: VIP -> port ->
// (protocol) -> chain; pod addresses -> protocol -> direct chains.
func istiodLike() *xdsmatcher.Matcher {
	ports := exactTree(&networkv3.DestinationPortInput{}, map[string]*xdsmatcher.Matcher_OnMatch{
		"80":   toChain("inbound-vip|80|http|web"),
		"8080": toMatcher(appProto("inbound-vip|8080|http|web", "inbound-vip|8080|tcp|web")),
		"5432": toChain("inbound-vip|5432|tcp|web"),
	}, nil)
	return ipTree(map[string]*xdsmatcher.Matcher_OnMatch{
		"10.96.0.10/32": toMatcher(ports),
		"10.244.0.0/24": toMatcher(appProto("direct-http", "direct-tcp")),
		"10.244.0.7/32": toChain("pod7-only"),
	})
}

func TestMatcherSelector(t *testing.T) {
	chains := map[string]bool{}
	for _, c := range []string{"inbound-vip|80|http|web", "inbound-vip|8080|http|web", "inbound-vip|8080|tcp|web", "inbound-vip|5432|tcp|web", "direct-http", "direct-tcp", "pod7-only"} {
		chains[c] = true
	}
	sel, err := compileMatcher(istiodLike(), chains)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dst, proto, want string
		needs            bool
	}{
		{"10.96.0.10:80", "", "inbound-vip|80|http|web", false},
		{"10.96.0.10:8080", model.ProtocolHTTP1, "inbound-vip|8080|http|web", true},
		{"10.96.0.10:8080", model.ProtocolHTTP2, "inbound-vip|8080|http|web", true},
		{"10.96.0.10:8080", model.ProtocolTCP, "inbound-vip|8080|tcp|web", true},
		{"10.96.0.10:5432", "", "inbound-vip|5432|tcp|web", false},
		{"10.96.0.10:9999", "", "", false}, // VIP, unknown port: nothing
		{"10.244.0.3:1234", model.ProtocolHTTP1, "direct-http", true},
		{"10.244.0.3:1234", model.ProtocolTCP, "direct-tcp", true},
		{"10.244.0.7:1234", model.ProtocolTCP, "pod7-only", false}, // most specific range first
		{"[::ffff:10.96.0.10]:80", "", "inbound-vip|80|http|web", false},
		{"192.168.1.1:80", "", "", false},
	} {
		dst := netip.MustParseAddrPort(tc.dst)
		if got := sel.Select(model.ConnInfo{Destination: dst, Protocol: tc.proto}); got != tc.want {
			t.Errorf("Select(%s, %q) = %q, want %q", tc.dst, tc.proto, got, tc.want)
		}
		if got := sel.NeedsProtocol(dst); got != tc.needs {
			t.Errorf("NeedsProtocol(%s) = %v, want %v", tc.dst, got, tc.needs)
		}
	}
	if len(sel.Rules()) != 9 {
		t.Errorf("rules: %+v", sel.Rules())
	}

	// An action naming a chain the listener lacks is an error.
	if _, err := compileMatcher(istiodLike(), map[string]bool{"direct-http": true}); err == nil {
		t.Error("a matcher naming a missing chain compiled")
	}
}

func TestMatcherFallsBackWhenNestedFails(t *testing.T) {
	// The /32 leads to a port map without 81; the less specific /16
	// then gets its turn (not exclusive), and on_no_match at the top last.
	inner := exactTree(&networkv3.DestinationPortInput{}, map[string]*xdsmatcher.Matcher_OnMatch{"80": toChain("a")}, nil)
	m := ipTree(map[string]*xdsmatcher.Matcher_OnMatch{"10.0.0.1/32": toMatcher(inner), "10.0.0.0/16": toChain("b")})
	m.OnNoMatch = toChain("c")
	sel, err := compileMatcher(m, map[string]bool{"a": true, "b": true, "c": true})
	if err != nil {
		t.Fatal(err)
	}
	for dst, want := range map[string]string{"10.0.0.1:80": "a", "10.0.0.1:81": "b", "10.1.0.1:80": "c"} {
		if got := sel.Select(model.ConnInfo{Destination: netip.MustParseAddrPort(dst)}); got != want {
			t.Errorf("%s: %q, want %q", dst, got, want)
		}
	}
}

func fcm(port uint32, prefixes []string, protos []string, srcs []string) *listenerv3.FilterChainMatch {
	m := &listenerv3.FilterChainMatch{ApplicationProtocols: protos}
	if port != 0 {
		m.DestinationPort = wrapperspb.UInt32(port)
	}
	for _, p := range prefixes {
		pp := netip.MustParsePrefix(p)
		m.PrefixRanges = append(m.PrefixRanges, &corev3.CidrRange{AddressPrefix: pp.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(pp.Bits()))})
	}
	for _, p := range srcs {
		pp := netip.MustParsePrefix(p)
		m.SourcePrefixRanges = append(m.SourcePrefixRanges, &corev3.CidrRange{AddressPrefix: pp.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(pp.Bits()))})
	}
	return m
}

func TestListSelectorPrecedence(t *testing.T) {
	var chains []listChain
	add := func(name string, m *listenerv3.FilterChainMatch) {
		lc, err := compileFilterChainMatch(name, m)
		if err != nil {
			t.Fatal(err)
		}
		chains = append(chains, lc)
	}
	add("port80-vip", fcm(80, []string{"10.96.0.10/32"}, nil, nil))
	add("port80-any", fcm(80, nil, nil, nil))
	add("port80-net-http", fcm(80, []string{"10.96.0.0/16"}, []string{"http/1.1", "h2c"}, nil))
	add("port80-net-tcp", fcm(80, []string{"10.96.0.0/16"}, nil, nil))
	add("any-port-vip", fcm(0, []string{"10.96.0.10/32"}, nil, nil))
	add("catch-all", fcm(0, nil, nil, nil))
	add("src-specific", fcm(9000, nil, nil, []string{"192.168.0.0/24"}))
	add("src-any", fcm(9000, nil, nil, nil))
	sel := &listSelector{chains: chains}
	for _, tc := range []struct {
		dst, src, proto, want string
		needs                 bool
	}{
		// Port first: an exact port beats a more specific address on an
		// unset port.
		{"10.96.0.10:80", "1.1.1.1:1", "", "port80-vip", false},
		{"10.96.0.11:80", "1.1.1.1:1", model.ProtocolHTTP1, "port80-net-http", true},
		{"10.96.0.11:80", "1.1.1.1:1", model.ProtocolTCP, "port80-net-tcp", true},
		{"10.1.0.1:80", "1.1.1.1:1", "", "port80-any", false},
		{"10.96.0.10:81", "1.1.1.1:1", "", "any-port-vip", false},
		{"10.1.0.1:81", "1.1.1.1:1", "", "catch-all", false},
		{"10.1.0.1:9000", "192.168.0.5:1", "", "src-specific", false},
		{"10.1.0.1:9000", "192.168.1.5:1", "", "src-any", false},
	} {
		ci := model.ConnInfo{Destination: netip.MustParseAddrPort(tc.dst), Source: netip.MustParseAddrPort(tc.src), Protocol: tc.proto}
		if got := sel.Select(ci); got != tc.want {
			t.Errorf("Select(%s from %s, %q) = %q, want %q", tc.dst, tc.src, tc.proto, got, tc.want)
		}
		if got := sel.NeedsProtocol(ci.Destination); got != tc.needs {
			t.Errorf("NeedsProtocol(%s) = %v, want %v", tc.dst, got, tc.needs)
		}
	}
	// No backtracking: the specific port's chains all need a protocol
	// that TCP lacks... the unset-protocol one takes it; when a level
	// leaves nothing, there is no match at all.
	only := &listSelector{chains: []listChain{chains[2], chains[5]}} // port80-net-http, catch-all
	if got := only.Select(model.ConnInfo{Destination: netip.MustParseAddrPort("10.96.0.11:80"), Protocol: model.ProtocolTCP}); got != "" {
		t.Errorf("no backtracking: got %q", got)
	}
}

// The matcher tree's string matchers read as Envoy's own: every kind,
// ignore_case, regexes matching whole values; a custom one refused.
func TestXDSStringMatch(t *testing.T) {
	for _, c := range []struct {
		m          *xdsmatcher.StringMatcher
		yes, no    string
		wantRefuse bool
	}{
		{m: &xdsmatcher.StringMatcher{MatchPattern: &xdsmatcher.StringMatcher_Exact{Exact: "http"}}, yes: "http", no: "https"},
		{m: &xdsmatcher.StringMatcher{MatchPattern: &xdsmatcher.StringMatcher_Prefix{Prefix: "h2"}, IgnoreCase: true}, yes: "H2C", no: "http"},
		{m: &xdsmatcher.StringMatcher{MatchPattern: &xdsmatcher.StringMatcher_Suffix{Suffix: ".local"}}, yes: "a.local", no: "a.localx"},
		{m: &xdsmatcher.StringMatcher{MatchPattern: &xdsmatcher.StringMatcher_Contains{Contains: "svc"}}, yes: "a.svc.b", no: "a.b"},
		{m: &xdsmatcher.StringMatcher{MatchPattern: &xdsmatcher.StringMatcher_SafeRegex{SafeRegex: &xdsmatcher.RegexMatcher{Regex: "ab+"}}}, yes: "abb", no: "xabb"},
		{m: &xdsmatcher.StringMatcher{MatchPattern: &xdsmatcher.StringMatcher_Custom{}}, wantRefuse: true},
	} {
		sm, err := xdsStringMatch(c.m)
		if c.wantRefuse {
			if err == nil {
				t.Errorf("%v: accepted", c.m)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %v", c.m, err)
		}
		if m := route.CompileString(sm); !m.Match(c.yes) || m.Match(c.no) {
			t.Errorf("%v: %q %v, %q %v", c.m, c.yes, m.Match(c.yes), c.no, m.Match(c.no))
		}
	}
}
