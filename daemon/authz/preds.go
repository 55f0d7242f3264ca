package authz

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kmesh-go/kmesh/daemon/model"
)

// Attribute dimensions.
const (
	dimIdent = iota
	dimSrc
	dimDst
	dimPort
)

// cond is one condition of a match: predicate pred of dimension dim must be
// true (or false when negate).
type cond struct {
	dim    int
	pred   int
	negate bool
}

// preds collects the distinct predicates of a policy set.
type preds struct {
	ident     []func(model.Peer) bool
	identKeys map[string]int
	srcLists  [][]netip.Prefix
	dstLists  [][]netip.Prefix
	portLists [][]uint16
	listKeys  map[string]int
}

func (p *preds) index(keys *map[string]int, key string, add func() int) int {
	if *keys == nil {
		*keys = map[string]int{}
	}
	if i, ok := (*keys)[key]; ok {
		return i
	}
	i := add()
	(*keys)[key] = i
	return i
}

// identity adds a predicate on the source identity that is already the
// condition's outcome: a positive condition needs a known source; a negative
// one never excludes an unknown source (Istio's semantics).
func (p *preds) identity(key string, f func(model.Peer) bool) cond {
	i := p.index(&p.identKeys, key, func() int {
		p.ident = append(p.ident, f)
		return len(p.ident) - 1
	})
	return cond{dim: dimIdent, pred: i}
}

func (p *preds) list(dim int, list any, negate bool) cond {
	key := fmt.Sprint(dim, list)
	i := p.index(&p.listKeys, key, func() int {
		switch dim {
		case dimSrc:
			p.srcLists = append(p.srcLists, list.([]netip.Prefix))
			return len(p.srcLists) - 1
		case dimDst:
			p.dstLists = append(p.dstLists, list.([]netip.Prefix))
			return len(p.dstLists) - 1
		}
		p.portLists = append(p.portLists, list.([]uint16))
		return len(p.portLists) - 1
	})
	return cond{dim: dim, pred: i, negate: negate}
}

func strKey(kind string, ms []model.StringMatch) string {
	var b strings.Builder
	b.WriteString(kind)
	for _, m := range ms {
		fmt.Fprintf(&b, "|%q%q%q%v", m.Exact, m.Prefix, m.Suffix, m.Presence)
	}
	return b.String()
}

func anyString(ms []model.StringMatch, s string) bool {
	for _, m := range ms {
		if m.Matches(s) {
			return true
		}
	}
	return false
}

// anySA is model's: an empty namespace matches only an empty one.
func anySA(ms []model.SAMatch, peer model.Peer) bool {
	for _, m := range ms {
		if m.ServiceAccount == peer.ServiceAccount && m.Namespace == peer.Namespace {
			return true
		}
	}
	return false
}

// match turns one Istio match into conditions, mirroring model's Match.
func (p *preds) match(m *model.Match) []cond {
	var out []cond
	if len(m.Namespaces) > 0 {
		ms := m.Namespaces
		out = append(out, p.identity(strKey("ns+", ms), func(x model.Peer) bool { return x.Known && anyString(ms, x.Namespace) }))
	}
	if len(m.NotNamespaces) > 0 {
		ms := m.NotNamespaces
		out = append(out, p.identity(strKey("ns-", ms), func(x model.Peer) bool { return !(x.Known && anyString(ms, x.Namespace)) }))
	}
	if len(m.ServiceAccounts) > 0 {
		ms := m.ServiceAccounts
		out = append(out, p.identity(fmt.Sprint("sa+", ms), func(x model.Peer) bool { return x.Known && anySA(ms, x) }))
	}
	if len(m.NotServiceAccounts) > 0 {
		ms := m.NotServiceAccounts
		out = append(out, p.identity(fmt.Sprint("sa-", ms), func(x model.Peer) bool { return !(x.Known && anySA(ms, x)) }))
	}
	if len(m.Principals) > 0 {
		ms := m.Principals
		out = append(out, p.identity(strKey("pr+", ms), func(x model.Peer) bool { return x.Known && anyString(ms, x.Principal()) }))
	}
	if len(m.NotPrincipals) > 0 {
		ms := m.NotPrincipals
		out = append(out, p.identity(strKey("pr-", ms), func(x model.Peer) bool { return !(x.Known && anyString(ms, x.Principal())) }))
	}
	if len(m.SourceIPs) > 0 {
		out = append(out, p.list(dimSrc, m.SourceIPs, false))
	}
	if len(m.NotSourceIPs) > 0 {
		out = append(out, p.list(dimSrc, m.NotSourceIPs, true))
	}
	if len(m.DestinationIPs) > 0 {
		out = append(out, p.list(dimDst, m.DestinationIPs, false))
	}
	if len(m.NotDestinationIPs) > 0 {
		out = append(out, p.list(dimDst, m.NotDestinationIPs, true))
	}
	if len(m.DestinationPorts) > 0 {
		out = append(out, p.list(dimPort, m.DestinationPorts, false))
	}
	if len(m.NotDestinationPorts) > 0 {
		out = append(out, p.list(dimPort, m.NotDestinationPorts, true))
	}
	return out
}

func (p *preds) identVector(id Identity) []bool {
	peer := model.Peer{Known: id.ID != 0, Namespace: id.Namespace, ServiceAccount: id.ServiceAccount, TrustDomain: id.TrustDomain}
	v := make([]bool, len(p.ident))
	for i, f := range p.ident {
		v[i] = f(peer)
	}
	return v
}

func (p *preds) portVector(port uint16) []bool {
	v := make([]bool, len(p.portLists))
	for i, l := range p.portLists {
		v[i] = slices.Contains(l, port)
	}
	return v
}

func (p *preds) ports() []uint16 {
	var out []uint16
	for _, l := range p.portLists {
		for _, port := range l {
			if !slices.Contains(out, port) {
				out = append(out, port)
			}
		}
	}
	slices.Sort(out)
	return out
}

// cidrTable builds the longest-prefix table of one address dimension: one
// entry per prefix any list mentions, plus the two family roots, each with
// the class of the addresses whose longest match it is. Such an address is
// inside a mentioned prefix exactly when that prefix covers the entry's.
func (p *preds) cidrTable(lists [][]netip.Prefix, vecs *vectors) []CIDRClass {
	leaves := []netip.Prefix{Root4, Root6}
	for _, l := range lists {
		for _, pf := range l {
			pf = pf.Masked()
			// An IPv4-mapped prefix (/96 or longer: shorter ones mask
			// the mapping away) contains no connection's address, the
			// kernel's and the reference's being IPv4 then; its entry
			// would be the key of the IPv4 prefix it maps.
			if pf.Addr().Is4In6() {
				continue
			}
			if !slices.Contains(leaves, pf) {
				leaves = append(leaves, pf)
			}
		}
	}
	slices.SortFunc(leaves, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	out := make([]CIDRClass, 0, len(leaves))
	for _, leaf := range leaves {
		v := make([]bool, len(lists))
		for i, l := range lists {
			for _, pf := range l {
				if covers(pf.Masked(), leaf) {
					v[i] = true
					break
				}
			}
		}
		out = append(out, CIDRClass{Prefix: leaf, Class: vecs.class(v)})
	}
	return out
}

func covers(outer, inner netip.Prefix) bool {
	return outer.Addr().Is4() == inner.Addr().Is4() && outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}
