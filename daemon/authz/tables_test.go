package authz

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"istio.io/istio/pkg/workloadapi/security"

	"github.com/kmesh-go/kmesh/daemon/model"
)

var (
	namespaces = []string{"a", "b", "c"}
	accounts   = []string{"web", "db", "default"}
	prefixes   = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.1.2.0/24"),
		netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("10.1.2.3/32"),
		netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("fd00:1::/32"), netip.MustParsePrefix("::/0"),
	}
	addrs = []netip.Addr{
		netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("10.1.2.4"), netip.MustParseAddr("10.1.9.9"), netip.MustParseAddr("10.9.9.9"),
		netip.MustParseAddr("192.168.1.1"), netip.MustParseAddr("172.16.0.1"), netip.MustParseAddr("fd00:1::5"), netip.MustParseAddr("fd00:2::5"),
		netip.MustParseAddr("2001:db8::1"),
	}
	ports = []uint16{80, 443, 8080, 9090}
)

func pick[T any](r *rand.Rand, from []T, n int) []T {
	var out []T
	for range n {
		out = append(out, from[r.IntN(len(from))])
	}
	return out
}

func randomStrings(r *rand.Rand, from []string) []model.StringMatch {
	var out []model.StringMatch
	for _, s := range pick(r, from, 1+r.IntN(2)) {
		switch r.IntN(4) {
		case 0:
			out = append(out, model.NewStringMatch(model.MatchPrefix, s[:1]))
		case 1:
			out = append(out, model.NewStringMatch(model.MatchSuffix, s[len(s)-1:]))
		default:
			out = append(out, model.NewStringMatch(model.MatchExact, s))
		}
	}
	return out
}

func randomMatch(r *rand.Rand) model.Match {
	var m model.Match
	for field := range 12 {
		if r.IntN(5) != 0 {
			continue
		}
		switch field {
		case 0:
			m.Namespaces = randomStrings(r, namespaces)
		case 1:
			m.NotNamespaces = randomStrings(r, namespaces)
		case 2, 3:
			var sas []model.SAMatch
			for range 1 + r.IntN(2) {
				ns := ""
				if r.IntN(2) == 0 {
					ns = namespaces[r.IntN(len(namespaces))]
				}
				sas = append(sas, model.SAMatch{Namespace: ns, ServiceAccount: accounts[r.IntN(len(accounts))]})
			}
			if field == 2 {
				m.ServiceAccounts = sas
			} else {
				m.NotServiceAccounts = sas
			}
		case 4:
			m.Principals = []model.StringMatch{model.NewStringMatch(model.MatchExact, fmt.Sprintf("cluster.local/ns/%s/sa/%s", namespaces[r.IntN(3)], accounts[r.IntN(3)]))}
		case 5:
			m.NotPrincipals = []model.StringMatch{model.NewStringMatch(model.MatchPrefix, "cluster.local/ns/"+namespaces[r.IntN(3)])}
		case 6:
			m.SourceIPs = pick(r, prefixes, 1+r.IntN(2))
		case 7:
			m.NotSourceIPs = pick(r, prefixes, 1+r.IntN(2))
		case 8:
			m.DestinationIPs = pick(r, prefixes, 1+r.IntN(2))
		case 9:
			m.NotDestinationIPs = pick(r, prefixes, 1+r.IntN(2))
		case 10:
			m.DestinationPorts = pick(r, ports, 1+r.IntN(2))
		case 11:
			m.NotDestinationPorts = pick(r, ports, 1+r.IntN(2))
		}
	}
	return m
}

// RandomPolicies makes n random policies (for property tests here and in
// the kernel tests).
func randomPolicies(r *rand.Rand, n int) []*model.AuthzPolicy {
	var out []*model.AuthzPolicy
	for i := range n {
		p := &model.AuthzPolicy{Key: fmt.Sprintf("ns/p%d", i), Namespace: "ns", Name: fmt.Sprintf("p%d", i)}
		if r.IntN(2) == 0 {
			p.Action = model.ActionDeny
		}
		p.DryRun = r.IntN(6) == 0
		for range 1 + r.IntN(2) {
			var g [][]model.Match
			for range 1 + r.IntN(3) {
				var rule []model.Match
				for range 1 + r.IntN(2) {
					rule = append(rule, randomMatch(r))
				}
				g = append(g, rule)
			}
			p.Groups = append(p.Groups, g)
		}
		out = append(out, p)
	}
	return out
}

func identities() []Identity {
	var out []Identity
	id := uint32(1)
	for _, ns := range namespaces {
		for _, sa := range accounts {
			out = append(out, Identity{ID: id, TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa})
			id++
		}
	}
	return out
}

func policyIDs(key string) uint32 {
	var n uint32
	fmt.Sscanf(key, "ns/p%d", &n)
	return n + 1
}

// The compiled tables decide every connection exactly as the reference
// evaluator does.
func TestTablesMatchReference(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	ids := identities()
	for round := range 400 {
		policies := randomPolicies(r, 1+r.IntN(5))
		tables, err := Compile(policies, ids, policyIDs, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for range 200 {
			id := Identity{}
			if r.IntN(5) != 0 {
				id = ids[r.IntN(len(ids))]
			}
			src, dst, port := addrs[r.IntN(len(addrs))], addrs[r.IntN(len(addrs))], ports[r.IntN(len(ports))]
			if r.IntN(4) == 0 {
				port = 1234
			}
			conn := model.Conn{Src: model.Peer{IP: src, Known: id.ID != 0, Namespace: id.Namespace, ServiceAccount: id.ServiceAccount, TrustDomain: id.TrustDomain}, DstIP: dst, DstPort: port}
			want := verdictOf(model.Evaluate(policies, conn), policyIDs)
			if got := tables.Decide(id.ID, src, dst, port); got != want {
				t.Fatalf("round %d: %+v from %+v: tables say %+v, reference %+v\npolicies: %s", round, conn, id, got, want, dump(policies))
			}
		}
	}
}

func dump(ps []*model.AuthzPolicy) string {
	out := ""
	for _, p := range ps {
		out += fmt.Sprintf("%s %v dry=%v %+v\n", p.Key, p.Action, p.DryRun, p.Groups)
	}
	return out
}

// Many policies, rules and matches cost classes, not lookups: 64 policies
// of 64 rules (groups) of 64 matches still compile.
func TestLargeSetsCompile(t *testing.T) {
	var policies []*model.AuthzPolicy
	for i := range 64 {
		p := &model.AuthzPolicy{Key: fmt.Sprintf("ns/p%d", i), Action: model.ActionAllow}
		for j := range 64 {
			var rule []model.Match
			for k := range 64 {
				rule = append(rule, model.Match{DestinationPorts: []uint16{uint16(1000 + (i*64*64+j*64+k)%512)}})
			}
			p.Groups = append(p.Groups, [][]model.Match{rule})
		}
		policies = append(policies, p)
	}
	tables, err := Compile(policies, identities(), policyIDs, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d verdicts, %d port entries", len(tables.Verdicts), len(tables.Ports))
	if v := tables.Decide(1, addrs[0], addrs[1], 1000); v.Deny {
		t.Fatalf("port 1000 should be allowed: %+v", v)
	}
	if v := tables.Decide(1, addrs[0], addrs[1], 80); !v.Deny || v.Policy != NoAllowID {
		t.Fatalf("port 80 should be denied for want of an ALLOW: %+v", v)
	}
	if _, err := Compile(policies, identities(), policyIDs, 100); err == nil {
		t.Fatal("a set over the limit compiled")
	}
}

// An empty match (every field empty) matches no connection, as ztunnel
// skips it: istiod sends one for a DENY rule whose only conditions were
// HTTP attributes (a `to` with methods only), and such a DENY must deny
// nothing at L4. Both the reference evaluator and the compiled tables must
// agree with that.
func TestEmptyMatchMatchesNothing(t *testing.T) {
	web := identities()[0]
	ns := func(n string) model.Match {
		return model.Match{Namespaces: []model.StringMatch{model.NewStringMatch(model.MatchExact, n)}}
	}
	cases := []struct {
		name   string
		action model.Action
		groups [][][]model.Match
		deny   bool
	}{
		// DENY `to: [{operation: {methods: [POST]}}]`: a no-op at L4.
		{"deny l7 only", model.ActionDeny, [][][]model.Match{{{{}}}}, false},
		// DENY from namespace a, to methods POST: the `to` clause holds
		// only an empty match, so the rule never matches.
		{"deny l7 clause and l4 clause", model.ActionDeny, [][][]model.Match{{{{}}, {ns(web.Namespace)}}}, false},
		// An empty match next to a real one: only the real one counts.
		{"deny empty or namespace", model.ActionDeny, [][][]model.Match{{{{}, ns(web.Namespace)}}}, true},
		{"deny empty or other namespace", model.ActionDeny, [][][]model.Match{{{{}, ns("other")}}}, false},
		// An ALLOW whose only match is empty allows nothing.
		{"allow empty match", model.ActionAllow, [][][]model.Match{{{{}}}}, true},
	}
	for _, c := range cases {
		expectDeny(t, c.name, c.action, c.groups, c.deny)
	}
}

// expectDeny checks one policy's decision, by the reference and by the
// tables, on a connection from a known identity of namespace "a" to port 80.
func expectDeny(t *testing.T, name string, action model.Action, groups [][][]model.Match, deny bool) {
	t.Helper()
	web := identities()[0]
	src, dst := addrs[0], addrs[1]
	policies := []*model.AuthzPolicy{{Key: "ns/p0", Namespace: "ns", Name: "p0", Action: action, Groups: groups}}
	conn := model.Conn{Src: model.Peer{IP: src, Known: true, Namespace: web.Namespace, ServiceAccount: web.ServiceAccount, TrustDomain: web.TrustDomain}, DstIP: dst, DstPort: 80}
	if v := model.Evaluate(policies, conn); v.Allow == deny {
		t.Errorf("%s: reference says %+v, want deny=%v", name, v, deny)
	}
	tables, err := Compile(policies, identities(), policyIDs, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if v := tables.Decide(web.ID, src, dst, 80); v.Deny != deny {
		t.Errorf("%s: tables say %+v, want deny=%v", name, v, deny)
	}
}

// A clause (rule) with no matches at all holds, as in ztunnel: a group is
// then decided by its other clauses alone.
func TestEmptyClauseHolds(t *testing.T) {
	ns := []model.StringMatch{model.NewStringMatch(model.MatchExact, identities()[0].Namespace)}
	expectDeny(t, "deny empty clause and namespace", model.ActionDeny, [][][]model.Match{{{}, {{Namespaces: ns}}}}, true)
	expectDeny(t, "allow empty clause only", model.ActionAllow, [][][]model.Match{{{}}}, false)
	expectDeny(t, "allow empty clause, other port", model.ActionAllow, [][][]model.Match{{{}, {{DestinationPorts: []uint16{81}}}}}, true)
}

// A list naming port 0 must not make every unlisted port match it: port 0
// is no default.
func TestPortZeroListed(t *testing.T) {
	policies := []*model.AuthzPolicy{{Key: "ns/p0", Namespace: "ns", Name: "p0", Action: model.ActionAllow,
		Groups: [][][]model.Match{{{{DestinationPorts: []uint16{0, 8080}}}}}}}
	tables, err := Compile(policies, identities(), policyIDs, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for port, deny := range map[uint16]bool{0: false, 8080: false, 80: true, 9090: true} {
		if v := tables.Decide(1, addrs[0], addrs[1], port); v.Deny != deny {
			t.Errorf("port %d: %+v, want deny=%v", port, v, deny)
		}
		conn := model.Conn{Src: model.Peer{IP: addrs[0]}, DstIP: addrs[1], DstPort: port}
		if v := model.Evaluate(policies, conn); v.Allow == deny {
			t.Errorf("port %d: reference %+v, want deny=%v", port, v, deny)
		}
	}
}

// An IPv4-mapped IPv6 prefix of /96 or longer (kept as IPv6, as ztunnel
// does) matches no connection, and gets no entry in the address tables:
// in the kernel's 16-byte key space it would be the very key of the IPv4
// prefix it maps, and IPv4 sources would match it there.
func TestIPv4MappedPrefixHasNoEntry(t *testing.T) {
	mapped := netip.MustParsePrefix("::ffff:10.1.0.0/112")
	policies := []*model.AuthzPolicy{{Key: "ns/p0", Namespace: "ns", Name: "p0", Action: model.ActionAllow,
		Groups: [][][]model.Match{{{{SourceIPs: []netip.Prefix{mapped, netip.MustParsePrefix("192.168.0.0/16")}}}}}}}
	tables, err := Compile(policies, identities(), policyIDs, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range tables.Src {
		if e.Prefix.Addr().Is4In6() {
			t.Errorf("entry %v aliases an IPv4 prefix in the kernel", e.Prefix)
		}
	}
	for src, deny := range map[string]bool{"10.1.2.3": true, "192.168.1.1": false} {
		a := netip.MustParseAddr(src)
		if v := tables.Decide(1, a, addrs[1], 80); v.Deny != deny {
			t.Errorf("from %s: %+v, want deny=%v", src, v, deny)
		}
		if v := model.Evaluate(policies, model.Conn{Src: model.Peer{IP: a}, DstIP: addrs[1], DstPort: 80}); v.Allow == deny {
			t.Errorf("from %s: reference %+v, want deny=%v", src, v, deny)
		}
	}
}

// Matches made to fail closed for values that could not be converted
// (model.matchFrom) compile to the same decisions: an ALLOW's disabled
// match allows nothing; a DENY left without conditions denies everyone,
// known or not, over both families.
func TestBadValuesFailClosedInTables(t *testing.T) {
	convert := func(action security.Action, m *security.Match) *model.AuthzPolicy {
		p, err := model.FromAuthorization(&security.Authorization{Name: "p0", Namespace: "ns", Scope: security.Scope_NAMESPACE, Action: action,
			Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{m}}}}}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	allow := convert(security.Action_ALLOW, &security.Match{DestinationPorts: []uint32{65616}})
	expectDeny(t, "allow port out of range", model.ActionAllow, allow.Groups, true)
	deny := convert(security.Action_DENY, &security.Match{SourceIps: []*security.Address{{Address: []byte{1, 2, 3}, Length: 8}}})
	expectDeny(t, "deny bad source only", model.ActionDeny, deny.Groups, true)
	tables, err := Compile([]*model.AuthzPolicy{deny}, identities(), policyIDs, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range []netip.Addr{addrs[0], addrs[8]} {
		if v := tables.Decide(0, src, addrs[1], 1234); !v.Deny {
			t.Errorf("unknown source %s allowed: %+v", src, v)
		}
	}
}

// A service-account match with no namespace matches no identity of a
// namespace, as ztunnel's (src/rbac.rs ServiceAccountMatch compares both
// parts exactly): it is no wildcard over namespaces.
func TestServiceAccountEmptyNamespace(t *testing.T) {
	web := identities()[0]
	sa := func(ns string) [][][]model.Match {
		return [][][]model.Match{{{{ServiceAccounts: []model.SAMatch{{Namespace: ns, ServiceAccount: web.ServiceAccount}}}}}}
	}
	notSA := func(ns string) [][][]model.Match {
		return [][][]model.Match{{{{NotServiceAccounts: []model.SAMatch{{Namespace: ns, ServiceAccount: web.ServiceAccount}}}}}}
	}
	expectDeny(t, "allow sa, its namespace", model.ActionAllow, sa(web.Namespace), false)
	expectDeny(t, "allow sa, no namespace", model.ActionAllow, sa(""), true)
	expectDeny(t, "deny sa, no namespace", model.ActionDeny, sa(""), false)
	expectDeny(t, "deny not sa, no namespace", model.ActionDeny, notSA(""), true)
	expectDeny(t, "deny not sa, its namespace", model.ActionDeny, notSA(web.Namespace), false)
}
