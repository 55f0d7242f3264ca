package translate

import (
	"cmp"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	xdsmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/route"
)

// Inputs of the connection matchers (envoy.extensions.matching.common_inputs.network.v3).
const (
	inputPrefix      = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."
	inputDstIP       = inputPrefix + "DestinationIPInput"
	inputDstPort     = inputPrefix + "DestinationPortInput"
	inputSrcIP       = inputPrefix + "SourceIPInput"
	inputSrcPort     = inputPrefix + "SourcePortInput"
	inputDirectSrcIP = inputPrefix + "DirectSourceIPInput"
	inputSrcType     = inputPrefix + "SourceTypeInput"
	inputServerName  = inputPrefix + "ServerNameInput"
	inputTransport   = inputPrefix + "TransportProtocolInput"
	inputAppProtocol = inputPrefix + "ApplicationProtocolInput"
	inputFilterState = inputPrefix + "FilterStateInput"

	typeIPMatcher   = "type.googleapis.com/xds.type.matcher.v3.IPMatcher"
	typeStringValue = "type.googleapis.com/google.protobuf.StringValue"
)

// input is what a matcher node reads from the connection.
type input int

const (
	inDstIP input = iota
	inDstPort
	inSrcIP
	inSrcPort
	inSrcType
	inServerName
	inTransport
	inAppProtocol
	// inNone never has data here (filter state set by Envoy filters we do
	// not run): its matchers fall to on_no_match.
	inNone
)

// transportRawBuffer is what Envoy's tls_inspector reports for plaintext,
// the only transport the waypoint's listener sees.
const transportRawBuffer = "raw_buffer"

// connValue reads an input; ok false means "no data" (Envoy's matcher then
// takes on_no_match). In probe mode reading anything that is not a
// function of the destination marks the probe.
type evalCtx struct {
	ci    model.ConnInfo
	probe bool
	// dependent: the path read an input that is not known from the
	// destination alone (protocol, source).
	dependent bool
}

func (e *evalCtx) value(in input) (string, bool) {
	switch in {
	case inDstIP:
		return e.ci.Destination.Addr().Unmap().String(), e.ci.Destination.IsValid()
	case inDstPort:
		return strconv.Itoa(int(e.ci.Destination.Port())), e.ci.Destination.IsValid()
	case inTransport:
		return transportRawBuffer, true
	case inServerName, inNone:
		return "", false
	case inSrcIP, inSrcPort, inSrcType:
		if e.probe {
			e.dependent = true
		}
		if !e.ci.Source.IsValid() {
			return "", false
		}
		switch in {
		case inSrcIP:
			return e.ci.Source.Addr().Unmap().String(), true
		case inSrcPort:
			return strconv.Itoa(int(e.ci.Source.Port())), true
		default:
			if e.ci.Source.Addr().IsLoopback() {
				return "local", true
			}
			return "", false
		}
	case inAppProtocol:
		if e.probe {
			e.dependent = true
		}
		if e.ci.Protocol == model.ProtocolTCP {
			return "", false
		}
		// Envoy renders the detected protocols quoted and comma separated.
		return "'" + e.ci.Protocol + "'", true
	}
	return "", false
}

// matcherSelector is a compiled xds.type.matcher.v3.Matcher tree
// (Envoy's filter_chain_matcher).
type matcherSelector struct {
	root *mnode
}

type mnode struct {
	in     input
	inName string // for rules and errors
	// One of exact, prefix, ips, list.
	exact    map[string]*monMatch
	prefixes []prefixEntry // longest first
	ips      []ipRange     // most specific first
	list     []listEntry
	onNo     *monMatch
}

type monMatch struct {
	chain string
	next  *mnode
}

type prefixEntry struct {
	prefix string
	on     *monMatch
}

type ipRange struct {
	prefix    netip.Prefix
	on        *monMatch
	exclusive bool
}

type listEntry struct {
	pred *predicate
	on   *monMatch
}

type predicate struct {
	in      input
	inName  string
	str     *route.StringMatcher // compiled once: a predicate runs per connection
	ips     []netip.Prefix
	and, or []*predicate
	not     *predicate
}

func compileMatcher(m *xdsmatcher.Matcher, chains map[string]bool) (*matcherSelector, error) {
	n, err := compileNode(m, chains, 0)
	if err != nil {
		return nil, err
	}
	return &matcherSelector{root: n}, nil
}

// maxDepth bounds nesting, as Envoy does, so a hostile tree cannot
// exhaust the stack.
const maxDepth = 32

func compileNode(m *xdsmatcher.Matcher, chains map[string]bool, depth int) (*mnode, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("filter_chain_matcher nested deeper than %d", maxDepth)
	}
	n := &mnode{}
	var err error
	if m.GetOnNoMatch() != nil {
		if n.onNo, err = compileOnMatch(m.GetOnNoMatch(), chains, depth); err != nil {
			return nil, fmt.Errorf("on_no_match: %w", err)
		}
	}
	switch t := m.GetMatcherType().(type) {
	case nil:
		// Only on_no_match: always that.
	case *xdsmatcher.Matcher_MatcherTree_:
		tree := t.MatcherTree
		if n.in, n.inName, err = compileInput(tree.GetInput()); err != nil {
			return nil, err
		}
		switch tt := tree.GetTreeType().(type) {
		case *xdsmatcher.Matcher_MatcherTree_ExactMatchMap:
			n.exact = map[string]*monMatch{}
			for k, v := range tt.ExactMatchMap.GetMap() {
				if n.exact[k], err = compileOnMatch(v, chains, depth); err != nil {
					return nil, fmt.Errorf("exact_match_map[%q]: %w", k, err)
				}
			}
		case *xdsmatcher.Matcher_MatcherTree_PrefixMatchMap:
			for k, v := range tt.PrefixMatchMap.GetMap() {
				on, err := compileOnMatch(v, chains, depth)
				if err != nil {
					return nil, fmt.Errorf("prefix_match_map[%q]: %w", k, err)
				}
				n.prefixes = append(n.prefixes, prefixEntry{prefix: k, on: on})
			}
			slices.SortFunc(n.prefixes, func(a, b prefixEntry) int {
				return cmp.Or(cmp.Compare(len(b.prefix), len(a.prefix)), cmp.Compare(a.prefix, b.prefix))
			})
		case *xdsmatcher.Matcher_MatcherTree_CustomMatch:
			if tt.CustomMatch.GetTypedConfig().GetTypeUrl() != typeIPMatcher {
				return nil, fmt.Errorf("custom_match %q (%s) is not supported (only xds.type.matcher.v3.IPMatcher)",
					tt.CustomMatch.GetName(), tt.CustomMatch.GetTypedConfig().GetTypeUrl())
			}
			var ipm xdsmatcher.IPMatcher
			if err := tt.CustomMatch.GetTypedConfig().UnmarshalTo(&ipm); err != nil {
				return nil, fmt.Errorf("custom_match %q: %w", tt.CustomMatch.GetName(), err)
			}
			for i, rm := range ipm.GetRangeMatchers() {
				on, err := compileOnMatch(rm.GetOnMatch(), chains, depth)
				if err != nil {
					return nil, fmt.Errorf("ip range_matchers[%d]: %w", i, err)
				}
				for _, r := range rm.GetRanges() {
					p, err := xdsCIDR(r)
					if err != nil {
						return nil, fmt.Errorf("ip range_matchers[%d]: %w", i, err)
					}
					n.ips = append(n.ips, ipRange{prefix: p, on: on, exclusive: rm.GetExclusive()})
				}
			}
			// Most specific first; Envoy tries less specific ranges when a
			// more specific one's nested matcher fails, unless exclusive.
			slices.SortStableFunc(n.ips, func(a, b ipRange) int { return cmp.Compare(b.prefix.Bits(), a.prefix.Bits()) })
		default:
			return nil, fmt.Errorf("matcher_tree type %T is not supported", tt)
		}
	case *xdsmatcher.Matcher_MatcherList_:
		for i, fm := range t.MatcherList.GetMatchers() {
			p, err := compilePredicate(fm.GetPredicate(), 0)
			if err != nil {
				return nil, fmt.Errorf("matcher_list[%d]: %w", i, err)
			}
			on, err := compileOnMatch(fm.GetOnMatch(), chains, depth)
			if err != nil {
				return nil, fmt.Errorf("matcher_list[%d]: %w", i, err)
			}
			n.list = append(n.list, listEntry{pred: p, on: on})
		}
	default:
		return nil, fmt.Errorf("matcher type %T is not supported", t)
	}
	return n, nil
}

func compileOnMatch(om *xdsmatcher.Matcher_OnMatch, chains map[string]bool, depth int) (*monMatch, error) {
	switch t := om.GetOnMatch().(type) {
	case *xdsmatcher.Matcher_OnMatch_Matcher:
		next, err := compileNode(t.Matcher, chains, depth+1)
		if err != nil {
			return nil, err
		}
		return &monMatch{next: next}, nil
	case *xdsmatcher.Matcher_OnMatch_Action:
		a := t.Action.GetTypedConfig()
		if a.GetTypeUrl() != typeStringValue {
			return nil, fmt.Errorf("action %q is %s, want google.protobuf.StringValue naming a filter chain", t.Action.GetName(), a.GetTypeUrl())
		}
		var sv wrapperspb.StringValue
		if err := a.UnmarshalTo(&sv); err != nil {
			return nil, fmt.Errorf("action %q: %w", t.Action.GetName(), err)
		}
		if !chains[sv.GetValue()] {
			return nil, fmt.Errorf("action names filter chain %q, which the listener does not have", sv.GetValue())
		}
		return &monMatch{chain: sv.GetValue()}, nil
	}
	return nil, fmt.Errorf("on_match without matcher or action")
}

func compileInput(tc *xdscore.TypedExtensionConfig) (input, string, error) {
	name := tc.GetName()
	switch tc.GetTypedConfig().GetTypeUrl() {
	case inputDstIP:
		return inDstIP, name, nil
	case inputDstPort:
		return inDstPort, name, nil
	case inputSrcIP, inputDirectSrcIP:
		// No proxy sits between the client and the PROXY header's
		// writer (the kernel), so the direct source is the source.
		return inSrcIP, name, nil
	case inputSrcPort:
		return inSrcPort, name, nil
	case inputSrcType:
		return inSrcType, name, nil
	case inputServerName:
		return inServerName, name, nil
	case inputTransport:
		return inTransport, name, nil
	case inputAppProtocol:
		return inAppProtocol, name, nil
	case inputFilterState:
		// Set by Envoy filters (multi-network authority, request source)
		// that do not run here: never any data.
		return inNone, name, nil
	}
	return 0, "", fmt.Errorf("matcher input %q (%s) is not supported", name, tc.GetTypedConfig().GetTypeUrl())
}

func compilePredicate(p *xdsmatcher.Matcher_MatcherList_Predicate, depth int) (*predicate, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("predicate nested deeper than %d", maxDepth)
	}
	switch t := p.GetMatchType().(type) {
	case *xdsmatcher.Matcher_MatcherList_Predicate_SinglePredicate_:
		sp := t.SinglePredicate
		in, name, err := compileInput(sp.GetInput())
		if err != nil {
			return nil, err
		}
		out := &predicate{in: in, inName: name}
		switch m := sp.GetMatcher().(type) {
		case *xdsmatcher.Matcher_MatcherList_Predicate_SinglePredicate_ValueMatch:
			sm, err := xdsStringMatch(m.ValueMatch)
			if err != nil {
				return nil, err
			}
			c := route.CompileString(sm)
			out.str = &c
		case *xdsmatcher.Matcher_MatcherList_Predicate_SinglePredicate_CustomMatch:
			if m.CustomMatch.GetTypedConfig().GetTypeUrl() != typeIPMatcher {
				return nil, fmt.Errorf("predicate custom_match %s is not supported", m.CustomMatch.GetTypedConfig().GetTypeUrl())
			}
			var ipm xdsmatcher.IPMatcher
			if err := m.CustomMatch.GetTypedConfig().UnmarshalTo(&ipm); err != nil {
				return nil, err
			}
			for _, rm := range ipm.GetRangeMatchers() {
				for _, r := range rm.GetRanges() {
					pf, err := xdsCIDR(r)
					if err != nil {
						return nil, err
					}
					out.ips = append(out.ips, pf)
				}
			}
		default:
			return nil, fmt.Errorf("single_predicate without a matcher")
		}
		return out, nil
	case *xdsmatcher.Matcher_MatcherList_Predicate_OrMatcher:
		out := &predicate{}
		for _, q := range t.OrMatcher.GetPredicate() {
			c, err := compilePredicate(q, depth+1)
			if err != nil {
				return nil, err
			}
			out.or = append(out.or, c)
		}
		return out, nil
	case *xdsmatcher.Matcher_MatcherList_Predicate_AndMatcher:
		out := &predicate{}
		for _, q := range t.AndMatcher.GetPredicate() {
			c, err := compilePredicate(q, depth+1)
			if err != nil {
				return nil, err
			}
			out.and = append(out.and, c)
		}
		if len(out.and) == 0 {
			return nil, fmt.Errorf("and_matcher without predicates")
		}
		return out, nil
	case *xdsmatcher.Matcher_MatcherList_Predicate_NotMatcher:
		c, err := compilePredicate(t.NotMatcher, depth+1)
		if err != nil {
			return nil, err
		}
		return &predicate{not: c}, nil
	}
	return nil, fmt.Errorf("predicate without a match type")
}

func (p *predicate) eval(e *evalCtx) bool {
	switch {
	case p.not != nil:
		return !p.not.eval(e)
	case p.or != nil:
		for _, q := range p.or {
			if q.eval(e) {
				return true
			}
		}
		return false
	case p.and != nil:
		for _, q := range p.and {
			if !q.eval(e) {
				return false
			}
		}
		return true
	}
	v, ok := e.value(p.in)
	if !ok {
		return false
	}
	if p.str != nil {
		return p.str.Match(v)
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return false
	}
	for _, pf := range p.ips {
		if pf.Contains(a) {
			return true
		}
	}
	return false
}

// eval walks the tree: the chain, or "" when nothing matched.
func (n *mnode) eval(e *evalCtx) string {
	if c, ok := n.try(e); ok {
		return c
	}
	if n.onNo != nil {
		if c, ok := n.onNo.eval(e); ok {
			return c
		}
	}
	return ""
}

// try is the node's own match, without its on_no_match.
func (n *mnode) try(e *evalCtx) (string, bool) {
	if n.list != nil {
		for _, le := range n.list {
			if le.pred.eval(e) {
				// A nested matcher that does not match makes this entry
				// not match; the list goes on.
				if c, ok := le.on.eval(e); ok {
					return c, true
				}
			}
		}
		return "", false
	}
	if n.exact == nil && n.prefixes == nil && n.ips == nil {
		return "", false
	}
	v, ok := e.value(n.in)
	if !ok {
		return "", false
	}
	switch {
	case n.exact != nil:
		if on := n.exact[v]; on != nil {
			return on.eval(e)
		}
	case n.prefixes != nil:
		for _, pe := range n.prefixes {
			if strings.HasPrefix(v, pe.prefix) {
				return pe.on.eval(e)
			}
		}
	case n.ips != nil:
		a, err := netip.ParseAddr(v)
		if err != nil {
			return "", false
		}
		for _, r := range n.ips {
			if !r.prefix.Contains(a) {
				continue
			}
			if c, ok := r.on.eval(e); ok {
				return c, true
			}
			if r.exclusive {
				return "", false
			}
		}
	}
	return "", false
}

func (o *monMatch) eval(e *evalCtx) (string, bool) {
	if o.next == nil {
		return o.chain, true
	}
	c := o.next.eval(e)
	return c, c != ""
}

// Select implements model.ChainSelector.
func (s *matcherSelector) Select(ci model.ConnInfo) string {
	return s.root.eval(&evalCtx{ci: ci})
}

// NeedsProtocol implements model.ChainSelector: the walk for dst reads
// the application protocol (or the source, conservatively).
func (s *matcherSelector) NeedsProtocol(dst netip.AddrPort) bool {
	e := &evalCtx{ci: model.ConnInfo{Destination: dst, Protocol: model.ProtocolHTTP1}, probe: true}
	s.root.eval(e)
	return e.dependent
}

// Rules implements model.RuleLister: one rule per path to a chain.
func (s *matcherSelector) Rules() []model.SelectorRule {
	var out []model.SelectorRule
	s.root.rules(model.SelectorRule{}, &out, 0)
	return out
}

func (n *mnode) rules(acc model.SelectorRule, out *[]model.SelectorRule, depth int) {
	if depth > maxDepth {
		return
	}
	with := func(v string) model.SelectorRule {
		r := cloneRule(acc)
		switch n.in {
		case inDstIP:
			r.Destinations = append(r.Destinations, v)
		case inDstPort:
			if p, err := strconv.ParseUint(v, 10, 16); err == nil {
				r.Ports = append(r.Ports, uint32(p))
			} else {
				r.Other = append(r.Other, "destination port "+v)
			}
		case inSrcIP:
			r.Sources = append(r.Sources, v)
		case inAppProtocol:
			r.Protocols = append(r.Protocols, strings.Trim(v, "'"))
		default:
			r.Other = append(r.Other, n.inName+" = "+v)
		}
		return r
	}
	for _, k := range slicesSortedKeys(n.exact) {
		n.exact[k].rules(with(k), out, depth)
	}
	for _, pe := range n.prefixes {
		r := cloneRule(acc)
		r.Other = append(r.Other, n.inName+" has prefix "+pe.prefix)
		pe.on.rules(r, out, depth)
	}
	// Ranges that lead to the same place are one rule (istiod lists every
	// pod address of a waypoint in one range matcher).
	var order []*monMatch
	grouped := map[*monMatch][]string{}
	for _, ir := range n.ips {
		if _, seen := grouped[ir.on]; !seen {
			order = append(order, ir.on)
		}
		grouped[ir.on] = append(grouped[ir.on], ir.prefix.String())
	}
	for _, on := range order {
		r := cloneRule(acc)
		if n.in == inSrcIP {
			r.Sources = append(r.Sources, grouped[on]...)
		} else {
			r.Destinations = append(r.Destinations, grouped[on]...)
		}
		on.rules(r, out, depth)
	}
	for i, le := range n.list {
		r := cloneRule(acc)
		r.Other = append(r.Other, fmt.Sprintf("matcher_list[%d]", i))
		le.on.rules(r, out, depth)
	}
	if n.onNo != nil {
		r := cloneRule(acc)
		if n.in == inAppProtocol {
			r.Protocols = append(r.Protocols, "tcp")
		} else if n.exact != nil || n.prefixes != nil || n.ips != nil || n.list != nil {
			r.Other = append(r.Other, "no other "+n.inName+" matched")
		}
		n.onNo.rules(r, out, depth)
	}
}

func (o *monMatch) rules(acc model.SelectorRule, out *[]model.SelectorRule, depth int) {
	if o.next != nil {
		o.next.rules(acc, out, depth+1)
		return
	}
	acc.Chain = o.chain
	*out = append(*out, acc)
}

func cloneRule(r model.SelectorRule) model.SelectorRule {
	r.Destinations = slices.Clone(r.Destinations)
	r.Ports = slices.Clone(r.Ports)
	r.Protocols = slices.Clone(r.Protocols)
	r.Sources = slices.Clone(r.Sources)
	r.Other = slices.Clone(r.Other)
	return r
}

func slicesSortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func xdsCIDR(r *xdscore.CidrRange) (netip.Prefix, error) {
	return cidr(r.GetAddressPrefix(), r.GetPrefixLen())
}

func envoyCIDR(r *corev3.CidrRange) (netip.Prefix, error) {
	return cidr(r.GetAddressPrefix(), r.GetPrefixLen())
}

// cidr follows Envoy: a missing prefix_len means the whole address.
func cidr(addr string, plen *wrapperspb.UInt32Value) (netip.Prefix, error) {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("CIDR range address %q: %v", addr, err)
	}
	a = a.Unmap()
	bits := a.BitLen()
	if plen != nil {
		bits = int(plen.GetValue())
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("CIDR range %s/%d: %v", addr, bits, err)
	}
	return p, nil
}

// xdsStringMatch translates the xds StringMatcher (the matcher tree's)
// through Envoy's, which has the same fields under the same numbers (a
// matcher only the xds one has, custom, comes out as none: refused the
// same way).
func xdsStringMatch(m *xdsmatcher.StringMatcher) (*model.StringMatch, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	var em matcherv3.StringMatcher
	if err := proto.Unmarshal(b, &em); err != nil {
		return nil, err
	}
	return stringMatch(&em)
}

// anchored compiles an RE2 regex that must match a whole value, as
// Envoy's safe_regex does.
func anchored(re string) (*regexp.Regexp, error) {
	r, err := regexp.Compile("^(?:" + re + ")$")
	if err != nil {
		return nil, fmt.Errorf("regex %q: %v", re, err)
	}
	return r, nil
}

func compileUnanchored(re string) (*regexp.Regexp, error) {
	r, err := regexp.Compile(re)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %v", re, err)
	}
	return r, nil
}

// listSelector is Envoy's filter_chains with filter_chain_match, chosen
// by its fixed order of criteria; at each criterion the most specific
// matches win, chains that leave it unset come next, and there is no
// backtracking.
type listSelector struct {
	chains []listChain
}

type listChain struct {
	name        string
	ports       uint32 // 0: unset
	dst         []netip.Prefix
	serverNames []string
	transport   string
	appProtos   []string
	directSrc   []netip.Prefix
	srcType     listenerv3.FilterChainMatch_ConnectionSourceType
	src         []netip.Prefix
	srcPorts    []uint32
}

func compileFilterChainMatch(name string, m *listenerv3.FilterChainMatch) (listChain, error) {
	lc := listChain{name: name, ports: m.GetDestinationPort().GetValue(), serverNames: m.GetServerNames(),
		transport: m.GetTransportProtocol(), appProtos: m.GetApplicationProtocols(), srcType: m.GetSourceType(),
		srcPorts: m.GetSourcePorts()}
	for _, set := range []struct {
		in  []*corev3.CidrRange
		out *[]netip.Prefix
	}{{m.GetPrefixRanges(), &lc.dst}, {m.GetDirectSourcePrefixRanges(), &lc.directSrc}, {m.GetSourcePrefixRanges(), &lc.src}} {
		for _, r := range set.in {
			p, err := envoyCIDR(r)
			if err != nil {
				return lc, err
			}
			*set.out = append(*set.out, p)
		}
	}
	return lc, nil
}

// Select implements model.ChainSelector.
func (s *listSelector) Select(ci model.ConnInfo) string {
	c, _ := s.pick(ci, false)
	return c
}

// NeedsProtocol implements model.ChainSelector: the candidates left for
// this destination when the application protocol is next looked at
// include one that names protocols.
func (s *listSelector) NeedsProtocol(dst netip.AddrPort) bool {
	_, needs := s.pick(model.ConnInfo{Destination: dst}, true)
	return needs
}

func (s *listSelector) pick(ci model.ConnInfo, probe bool) (string, bool) {
	cands := make([]*listChain, 0, len(s.chains))
	for i := range s.chains {
		cands = append(cands, &s.chains[i])
	}
	dstPort := uint32(ci.Destination.Port())
	dst := ci.Destination.Addr().Unmap()
	src := ci.Source.Addr().Unmap()
	cands = narrowExact(cands, func(c *listChain) (bool, bool) { return c.ports != 0, c.ports == dstPort })
	cands = narrowPrefix(cands, func(c *listChain) []netip.Prefix { return c.dst }, dst)
	// No TLS, so no SNI: only chains without server_names.
	cands = narrowExact(cands, func(c *listChain) (bool, bool) { return len(c.serverNames) > 0, false })
	cands = narrowExact(cands, func(c *listChain) (bool, bool) { return c.transport != "", c.transport == transportRawBuffer })
	if probe {
		for _, c := range cands {
			if len(c.appProtos) > 0 {
				return "", true
			}
		}
		return "", false
	}
	cands = narrowExact(cands, func(c *listChain) (bool, bool) {
		return len(c.appProtos) > 0, ci.Protocol != model.ProtocolTCP && slices.Contains(c.appProtos, ci.Protocol)
	})
	cands = narrowPrefix(cands, func(c *listChain) []netip.Prefix { return c.directSrc }, src)
	cands = narrowExact(cands, func(c *listChain) (bool, bool) {
		switch c.srcType {
		case listenerv3.FilterChainMatch_SAME_IP_OR_LOOPBACK:
			return true, src.IsLoopback() || src == dst
		case listenerv3.FilterChainMatch_EXTERNAL:
			return true, !src.IsLoopback() && src != dst
		}
		return false, false
	})
	cands = narrowPrefix(cands, func(c *listChain) []netip.Prefix { return c.src }, src)
	cands = narrowExact(cands, func(c *listChain) (bool, bool) {
		return len(c.srcPorts) > 0, slices.Contains(c.srcPorts, uint32(ci.Source.Port()))
	})
	if len(cands) == 0 {
		return "", false
	}
	// Envoy refuses listeners whose chains match identically; the first
	// one is as good an answer as any.
	return cands[0].name, false
}

// narrowExact keeps the chains whose criterion is set and matches, or if
// none, the chains that leave it unset.
func narrowExact(cands []*listChain, f func(*listChain) (set, match bool)) []*listChain {
	var specific, unset []*listChain
	for _, c := range cands {
		set, match := f(c)
		switch {
		case set && match:
			specific = append(specific, c)
		case !set:
			unset = append(unset, c)
		}
	}
	if len(specific) > 0 {
		return specific
	}
	return unset
}

// narrowPrefix keeps the chains with the longest range containing a, or
// if none, the chains without ranges.
func narrowPrefix(cands []*listChain, ranges func(*listChain) []netip.Prefix, a netip.Addr) []*listChain {
	best := -1
	var specific, unset []*listChain
	for _, c := range cands {
		rs := ranges(c)
		if len(rs) == 0 {
			unset = append(unset, c)
			continue
		}
		l := -1
		if a.IsValid() {
			for _, p := range rs {
				if p.Contains(a) && p.Bits() > l {
					l = p.Bits()
				}
			}
		}
		switch {
		case l < 0:
		case l > best:
			best = l
			specific = []*listChain{c}
		case l == best:
			specific = append(specific, c)
		}
	}
	if len(specific) > 0 {
		return specific
	}
	return unset
}

// Rules implements model.RuleLister.
func (s *listSelector) Rules() []model.SelectorRule {
	out := make([]model.SelectorRule, 0, len(s.chains))
	for _, c := range s.chains {
		r := model.SelectorRule{Chain: c.name}
		if c.ports != 0 {
			r.Ports = []uint32{c.ports}
		}
		for _, p := range c.dst {
			r.Destinations = append(r.Destinations, p.String())
		}
		for _, p := range append(slices.Clone(c.directSrc), c.src...) {
			r.Sources = append(r.Sources, p.String())
		}
		r.Protocols = slices.Clone(c.appProtos)
		if c.transport != "" {
			r.Other = append(r.Other, "transport_protocol "+c.transport)
		}
		if len(c.serverNames) > 0 {
			r.Other = append(r.Other, "server_names "+strings.Join(c.serverNames, ",")+" (never: no TLS)")
		}
		if len(c.srcPorts) > 0 {
			r.Other = append(r.Other, fmt.Sprint("source_ports ", c.srcPorts))
		}
		if c.srcType != listenerv3.FilterChainMatch_ANY {
			r.Other = append(r.Other, "source_type "+c.srcType.String())
		}
		out = append(out, r)
	}
	return out
}
