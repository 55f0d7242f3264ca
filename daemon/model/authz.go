package model

import (
	"fmt"
	"net/netip"
	"strings"

	"istio.io/istio/pkg/workloadapi/security"
)

// PolicyScope says which workloads a policy applies to.
type PolicyScope int

const (
	// ScopeWorkloadSelector: only workloads that list the policy.
	ScopeWorkloadSelector PolicyScope = iota
	// ScopeNamespace: every workload in the policy's namespace.
	ScopeNamespaceWide
	// ScopeGlobal: every workload (policies in the root namespace).
	ScopeGlobal
)

func (s PolicyScope) String() string {
	switch s {
	case ScopeNamespaceWide:
		return "namespace"
	case ScopeGlobal:
		return "global"
	}
	return "workload"
}

// Action of a policy.
type Action int

const (
	ActionAllow Action = iota
	ActionDeny
)

func (a Action) String() string {
	if a == ActionDeny {
		return "DENY"
	}
	return "ALLOW"
}

// StringMatch is one Istio string match (exact, prefix, suffix, presence).
type StringMatch struct {
	Exact    string `json:"exact,omitempty"`
	Prefix   string `json:"prefix,omitempty"`
	Suffix   string `json:"suffix,omitempty"`
	Presence bool   `json:"presence,omitempty"`
	kind     MatchKind
}

// MatchKind says how a StringMatch compares.
type MatchKind int

const (
	MatchExact MatchKind = iota
	MatchPrefix
	MatchSuffix
	MatchPresence
)

// NewStringMatch builds a match of the given kind.
func NewStringMatch(kind MatchKind, value string) StringMatch {
	m := StringMatch{kind: kind}
	switch kind {
	case MatchPrefix:
		m.Prefix = value
	case MatchSuffix:
		m.Suffix = value
	case MatchPresence:
		m.Presence = true
	default:
		m.Exact = value
	}
	return m
}

// Matches tells whether s satisfies the match.
func (m StringMatch) Matches(s string) bool {
	switch m.kind {
	case MatchPrefix:
		return strings.HasPrefix(s, m.Prefix)
	case MatchSuffix:
		return strings.HasSuffix(s, m.Suffix)
	case MatchPresence:
		return s != ""
	}
	return s == m.Exact
}

// SAMatch matches a service account in a namespace, both exactly.
type SAMatch struct {
	Namespace      string `json:"namespace,omitempty"`
	ServiceAccount string `json:"serviceAccount"`
}

// Match is a conjunction of conditions; each condition is a disjunction of
// values, each not_ condition must match none of its values. A match with
// no condition matches nothing (see Empty).
type Match struct {
	Namespaces          []StringMatch  `json:"namespaces,omitempty"`
	NotNamespaces       []StringMatch  `json:"notNamespaces,omitempty"`
	ServiceAccounts     []SAMatch      `json:"serviceAccounts,omitempty"`
	NotServiceAccounts  []SAMatch      `json:"notServiceAccounts,omitempty"`
	Principals          []StringMatch  `json:"principals,omitempty"`
	NotPrincipals       []StringMatch  `json:"notPrincipals,omitempty"`
	SourceIPs           []netip.Prefix `json:"sourceIps,omitempty"`
	NotSourceIPs        []netip.Prefix `json:"notSourceIps,omitempty"`
	DestinationIPs      []netip.Prefix `json:"destinationIps,omitempty"`
	NotDestinationIPs   []netip.Prefix `json:"notDestinationIps,omitempty"`
	DestinationPorts    []uint16       `json:"destinationPorts,omitempty"`
	NotDestinationPorts []uint16       `json:"notDestinationPorts,omitempty"`
}

// AuthzPolicy is one istio.security.Authorization. A policy matches a
// connection when any group matches; a group when all its rules match; a
// rule when any of its matches matches.
type AuthzPolicy struct {
	Key       string      `json:"key"` // namespace/name
	Name      string      `json:"name"`
	Namespace string      `json:"namespace"`
	Scope     PolicyScope `json:"scope"`
	Action    Action      `json:"action"`
	DryRun    bool        `json:"dryRun,omitempty"`
	Groups    [][][]Match `json:"groups"` // groups -> rules -> matches
	// Warnings say which values could not be converted and how their
	// matches were made to fail closed (see matchFrom).
	Warnings []string `json:"warnings,omitempty"`
}

// PolicyKey is the resource name istiod uses for an Authorization.
func PolicyKey(namespace, name string) string { return namespace + "/" + name }

// FromAuthorization validates and converts an istio.security.Authorization.
func FromAuthorization(a *security.Authorization) (*AuthzPolicy, error) {
	if a.GetName() == "" {
		return nil, fmt.Errorf("authorization in %q: name is required", a.GetNamespace())
	}
	p := &AuthzPolicy{Key: PolicyKey(a.GetNamespace(), a.GetName()), Name: a.GetName(), Namespace: a.GetNamespace(), DryRun: a.GetDryRun()}
	where := func(format string, args ...any) error {
		return fmt.Errorf("authorization %s: %s", p.Key, fmt.Sprintf(format, args...))
	}
	switch a.GetScope() {
	case security.Scope_WORKLOAD_SELECTOR:
		p.Scope = ScopeWorkloadSelector
	case security.Scope_NAMESPACE:
		p.Scope = ScopeNamespaceWide
	case security.Scope_GLOBAL:
		p.Scope = ScopeGlobal
	default:
		return nil, where("unknown scope %d", a.GetScope())
	}
	switch a.GetAction() {
	case security.Action_ALLOW:
		p.Action = ActionAllow
	case security.Action_DENY:
		p.Action = ActionDeny
	default:
		return nil, where("unknown action %d", a.GetAction())
	}
	for gi, g := range a.GetGroups() {
		var rules [][]Match
		for ri, r := range g.GetRules() {
			var ms []Match
			for mi, m := range r.GetMatches() {
				cm, bad := matchFrom(m, p.Action)
				for _, b := range bad {
					p.Warnings = append(p.Warnings, fmt.Sprintf("groups[%d].rules[%d].matches[%d]: %s", gi, ri, mi, b))
				}
				ms = append(ms, cm)
			}
			rules = append(rules, ms)
		}
		p.Groups = append(p.Groups, rules)
	}
	return p, nil
}

// matchAll is a match every connection satisfies: every source address is
// in one of the two family roots.
func matchAll() Match {
	return Match{SourceIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}
}

// matchFrom converts one match. A value that cannot be converted (a string
// match without a type, address bytes of neither 4 nor 16, a prefix or a
// port out of range) does not refuse the policy: refusing it would leave an
// ALLOW policy out, opening its workloads to everyone, or a DENY
// unenforced. ztunnel (src/rbac.rs) drops such values one by one instead,
// which opens as well when a positive list is left empty (the condition
// disappears). Here the match fails closed, as istiod does with the HTTP
// attributes ztunnel cannot enforce (pilot/pkg/serviceregistry/ambient/
// authorization.go: "more restrictive than requested"): in an ALLOW policy
// the match matches nothing; in a DENY policy each condition holding a bad
// value is dropped, so the DENY applies whatever that condition said, and a
// match left with no condition matches every connection. bad describes the
// values given up.
func matchFrom(m *security.Match, action Action) (out Match, bad []string) {
	// Each field converts its good values; a bad value taints the field.
	field := func(name string, n int, conv func(i int) error) *bool {
		t := new(bool)
		for i := 0; i < n; i++ {
			if err := conv(i); err != nil {
				*t = true
				bad = append(bad, fmt.Sprintf("%s[%d]: %v", name, i, err))
			}
		}
		return t
	}
	strs := func(name string, in []*security.StringMatch, o *[]StringMatch) *bool {
		return field(name, len(in), func(i int) error {
			var sm StringMatch
			switch t := in[i].GetMatchType().(type) {
			case *security.StringMatch_Exact:
				sm = NewStringMatch(MatchExact, t.Exact)
			case *security.StringMatch_Prefix:
				sm = NewStringMatch(MatchPrefix, t.Prefix)
			case *security.StringMatch_Suffix:
				sm = NewStringMatch(MatchSuffix, t.Suffix)
			case *security.StringMatch_Presence:
				sm = NewStringMatch(MatchPresence, "")
			default:
				return fmt.Errorf("string match without a type")
			}
			*o = append(*o, sm)
			return nil
		})
	}
	cidrs := func(name string, in []*security.Address, o *[]netip.Prefix) *bool {
		return field(name, len(in), func(i int) error {
			a := in[i]
			// 16 bytes are an IPv6 prefix even when IPv4-mapped, as
			// ztunnel takes them: connections from and to IPv4 addresses
			// are IPv4, so a mapped prefix of /96 or longer matches none.
			ip, ok := netip.AddrFromSlice(a.GetAddress())
			if !ok {
				return fmt.Errorf("invalid address bytes: %d bytes, want 4 (IPv4) or 16 (IPv6)", len(a.GetAddress()))
			}
			if int(a.GetLength()) > ip.BitLen() {
				return fmt.Errorf("prefix length %d too long for %s", a.GetLength(), ip)
			}
			*o = append(*o, netip.PrefixFrom(ip, int(a.GetLength())).Masked())
			return nil
		})
	}
	ports := func(name string, in []uint32, o *[]uint16) *bool {
		return field(name, len(in), func(i int) error {
			// Port 0 is valid in Istio (ports: ["0"] passes its
			// validation) and matches no real connection.
			if in[i] > 65535 {
				return fmt.Errorf("port %d out of range 0-65535", in[i])
			}
			*o = append(*o, uint16(in[i]))
			return nil
		})
	}
	sas := func(in []*security.ServiceAccountMatch) []SAMatch {
		var o []SAMatch
		for _, s := range in {
			o = append(o, SAMatch{Namespace: s.GetNamespace(), ServiceAccount: s.GetServiceAccount()})
		}
		return o
	}
	drops := []struct {
		t    *bool
		drop func()
	}{
		{strs("namespaces", m.GetNamespaces(), &out.Namespaces), func() { out.Namespaces = nil }},
		{strs("notNamespaces", m.GetNotNamespaces(), &out.NotNamespaces), func() { out.NotNamespaces = nil }},
		{strs("principals", m.GetPrincipals(), &out.Principals), func() { out.Principals = nil }},
		{strs("notPrincipals", m.GetNotPrincipals(), &out.NotPrincipals), func() { out.NotPrincipals = nil }},
		{cidrs("sourceIps", m.GetSourceIps(), &out.SourceIPs), func() { out.SourceIPs = nil }},
		{cidrs("notSourceIps", m.GetNotSourceIps(), &out.NotSourceIPs), func() { out.NotSourceIPs = nil }},
		{cidrs("destinationIps", m.GetDestinationIps(), &out.DestinationIPs), func() { out.DestinationIPs = nil }},
		{cidrs("notDestinationIps", m.GetNotDestinationIps(), &out.NotDestinationIPs), func() { out.NotDestinationIPs = nil }},
		{ports("destinationPorts", m.GetDestinationPorts(), &out.DestinationPorts), func() { out.DestinationPorts = nil }},
		{ports("notDestinationPorts", m.GetNotDestinationPorts(), &out.NotDestinationPorts), func() { out.NotDestinationPorts = nil }},
	}
	out.ServiceAccounts = sas(m.GetServiceAccounts())
	out.NotServiceAccounts = sas(m.GetNotServiceAccounts())
	if len(bad) == 0 {
		return out, nil
	}
	if action == ActionAllow {
		// An empty match matches nothing.
		return Match{}, append(bad, "ALLOW match disabled (matches nothing)")
	}
	for _, d := range drops {
		if *d.t {
			d.drop()
		}
	}
	// The match had a condition (the bad value's), so it was not one of
	// istiod's empty matches: with none left it applies to everyone.
	if out.Empty() {
		return matchAll(), append(bad, "DENY match reduced to no condition: matches every connection")
	}
	return out, append(bad, "DENY match enforced without the conditions holding these values")
}

// Peer is the source of a connection as authorization sees it. Identity
// fields are empty when the source address is not a known workload.
type Peer struct {
	IP             netip.Addr
	Known          bool
	Namespace      string
	ServiceAccount string
	TrustDomain    string
}

// Principal is the peer's identity without the spiffe:// scheme, as Istio
// principals are written.
func (p Peer) Principal() string {
	if !p.Known {
		return ""
	}
	td := p.TrustDomain
	if td == "" {
		td = "cluster.local"
	}
	return fmt.Sprintf("%s/ns/%s/sa/%s", td, p.Namespace, p.ServiceAccount)
}

// Conn is a connection attempt toward a workload.
type Conn struct {
	Src     Peer
	DstIP   netip.Addr
	DstPort uint16
}

// Matches evaluates the policy's rules on a connection.
func (p *AuthzPolicy) Matches(c Conn) bool {
	for _, g := range p.Groups {
		if groupMatches(g, c) {
			return true
		}
	}
	return false
}

func groupMatches(rules [][]Match, c Conn) bool {
	for _, r := range rules {
		// A rule (clause) with no matches holds, as in ztunnel.
		if len(r) == 0 {
			continue
		}
		any := false
		for _, m := range r {
			// An empty match matches nothing (ztunnel skips it): istiod
			// sends one for a `to` or `from` whose only conditions were
			// HTTP attributes.
			if !m.Empty() && m.matches(c) {
				any = true
				break
			}
		}
		if !any {
			return false
		}
	}
	return true
}

// Empty tells whether the match has no condition at all. Such a match
// matches no connection, as in ztunnel.
func (m *Match) Empty() bool {
	return len(m.Namespaces) == 0 && len(m.NotNamespaces) == 0 &&
		len(m.ServiceAccounts) == 0 && len(m.NotServiceAccounts) == 0 &&
		len(m.Principals) == 0 && len(m.NotPrincipals) == 0 &&
		len(m.SourceIPs) == 0 && len(m.NotSourceIPs) == 0 &&
		len(m.DestinationIPs) == 0 && len(m.NotDestinationIPs) == 0 &&
		len(m.DestinationPorts) == 0 && len(m.NotDestinationPorts) == 0
}

func (m *Match) matches(c Conn) bool {
	ns := ""
	if c.Src.Known {
		ns = c.Src.Namespace
	}
	if len(m.Namespaces) > 0 && (!c.Src.Known || !anyString(m.Namespaces, ns)) {
		return false
	}
	if c.Src.Known && anyString(m.NotNamespaces, ns) {
		return false
	}
	if len(m.ServiceAccounts) > 0 && (!c.Src.Known || !anySA(m.ServiceAccounts, c.Src)) {
		return false
	}
	if c.Src.Known && anySA(m.NotServiceAccounts, c.Src) {
		return false
	}
	if len(m.Principals) > 0 && (!c.Src.Known || !anyString(m.Principals, c.Src.Principal())) {
		return false
	}
	if c.Src.Known && anyString(m.NotPrincipals, c.Src.Principal()) {
		return false
	}
	if len(m.SourceIPs) > 0 && !anyPrefix(m.SourceIPs, c.Src.IP) {
		return false
	}
	if anyPrefix(m.NotSourceIPs, c.Src.IP) {
		return false
	}
	if len(m.DestinationIPs) > 0 && !anyPrefix(m.DestinationIPs, c.DstIP) {
		return false
	}
	if anyPrefix(m.NotDestinationIPs, c.DstIP) {
		return false
	}
	if len(m.DestinationPorts) > 0 && !anyPort(m.DestinationPorts, c.DstPort) {
		return false
	}
	if anyPort(m.NotDestinationPorts, c.DstPort) {
		return false
	}
	return true
}

func anyString(ms []StringMatch, s string) bool {
	for _, m := range ms {
		if m.Matches(s) {
			return true
		}
	}
	return false
}

// anySA compares both parts exactly, as ztunnel's ServiceAccountMatch
// does (src/rbac.rs): an empty namespace is not a wildcard. istiod always
// fills it (the policy's namespace when the rule names none).
func anySA(ms []SAMatch, p Peer) bool {
	for _, m := range ms {
		if m.ServiceAccount == p.ServiceAccount && m.Namespace == p.Namespace {
			return true
		}
	}
	return false
}

func anyPrefix(ps []netip.Prefix, ip netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(ip.Unmap()) {
			return true
		}
	}
	return false
}

func anyPort(ps []uint16, port uint16) bool {
	for _, p := range ps {
		if p == port {
			return true
		}
	}
	return false
}

// Verdict of authorization for one connection.
type Verdict struct {
	Allow bool
	// Policy decided it: the matching DENY, the matching ALLOW, NoAllowMatched,
	// or empty when allowed with no ALLOW policy in force.
	Policy string
	// DryRunDeny lists dry-run policies that would have denied.
	DryRunDeny []string
}

// NoAllowMatched is the deciding "policy" of a connection denied because
// ALLOW policies exist and none matched.
const NoAllowMatched = "(no ALLOW policy matched)"

// Evaluate applies Istio's L4 semantics to the policies that select a
// workload: any matching DENY denies; with no ALLOW policy the connection
// is allowed; otherwise some ALLOW must match. Dry-run policies are
// evaluated for the record, never enforced. This is the reference the
// kernel's decisions are tested against.
func Evaluate(policies []*AuthzPolicy, c Conn) Verdict {
	return EvaluateWith(policies, func(p *AuthzPolicy) bool { return p.Matches(c) })
}

// EvaluateWith is Evaluate with the matching of each policy given.
func EvaluateWith(policies []*AuthzPolicy, matches func(*AuthzPolicy) bool) Verdict {
	v := Verdict{Allow: true}
	for _, p := range policies {
		if p.Action == ActionDeny && matches(p) {
			if p.DryRun {
				v.DryRunDeny = append(v.DryRunDeny, p.Key)
				continue
			}
			if v.Allow {
				v.Allow, v.Policy = false, p.Key
			}
		}
	}
	if !v.Allow {
		return v
	}
	haveAllow := false
	var dryAllows []*AuthzPolicy
	for _, p := range policies {
		if p.Action != ActionAllow {
			continue
		}
		if p.DryRun {
			dryAllows = append(dryAllows, p)
			continue
		}
		haveAllow = true
		if v.Policy == "" && matches(p) {
			v.Policy = p.Key
		}
	}
	if haveAllow && v.Policy == "" {
		v.Allow = false
		v.Policy = NoAllowMatched
	}
	// A dry-run ALLOW would deny when, counting it as real, nothing allows.
	if len(dryAllows) > 0 && v.Allow && v.Policy == "" {
		matched := false
		for _, p := range dryAllows {
			if matches(p) {
				matched = true
				break
			}
		}
		if !matched {
			for _, p := range dryAllows {
				v.DryRunDeny = append(v.DryRunDeny, p.Key)
			}
		}
	}
	return v
}

// Selects tells whether a policy applies to a workload.
func (p *AuthzPolicy) Selects(w *Workload) bool {
	switch p.Scope {
	case ScopeGlobal:
		return true
	case ScopeNamespaceWide:
		return p.Namespace == w.Namespace
	}
	for _, k := range w.Policies {
		if k == p.Key {
			return true
		}
	}
	return false
}
