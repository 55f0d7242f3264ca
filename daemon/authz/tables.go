// Package authz compiles the authorization policies guarding a workload into
// lookup tables the kernel can decide with in a constant number of steps.
//
// Every condition of every match is a predicate on one attribute of the
// connection: the source identity, the source address, the destination
// address or the destination port. Values of an attribute that satisfy the
// same predicates are equivalent, so each attribute is reduced to a class,
// and the verdict is computed once per combination of classes with the same
// decision logic as the reference evaluator (model.EvaluateWith). The
// kernel then needs one lookup per attribute and one for the verdict,
// however many policies, rules and matches there are.
package authz

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/model"
)

// Identity is a source identity the kernel can report (id 0: unknown).
type Identity struct {
	ID             uint32
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// The compiled form is the kernel's (package maps writes it as is).
type (
	Tables    = maps.AuthzTables
	Verdict   = maps.AuthzVerdict
	CIDRClass = maps.AuthzCIDR
)

// Roots of the two address families in the kernel's 16-byte key space.
var (
	Root4 = netip.MustParsePrefix("0.0.0.0/0")
	Root6 = netip.MustParsePrefix("::/0")
)

// PolicyIDs names policies with numbers for the kernel's counters.
type PolicyIDs func(key string) uint32

// NoAllowID is the counter id of "denied: no ALLOW policy matched".
const NoAllowID = ^uint32(0)

// TooLargeError says a policy set would not fit.
type TooLargeError struct {
	Verdicts, Limit int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("policy set too large for the kernel tables: %d verdict combinations, limit %d (raise --max-authz-verdicts or simplify the policies)", e.Verdicts, e.Limit)
}

// Compile builds the tables for policies (in any order; the decision does
// not depend on it) given every identity the kernel may see. limit bounds
// the number of verdict combinations.
func Compile(policies []*model.AuthzPolicy, identities []Identity, ids PolicyIDs, limit int) (*Tables, error) {
	policies = slices.Clone(policies)
	slices.SortFunc(policies, func(a, b *model.AuthzPolicy) int { return strings.Compare(a.Key, b.Key) })

	var pr preds
	// conds[p][g][r][m] lists the predicate references of one match.
	conds := make([][][][][]cond, len(policies))
	for pi, p := range policies {
		conds[pi] = make([][][][]cond, len(p.Groups))
		for gi, g := range p.Groups {
			conds[pi][gi] = make([][][]cond, 0, len(g))
			for _, r := range g {
				// A clause with no matches holds: it is left out of its
				// group's conjunction, where it would never match.
				if len(r) == 0 {
					continue
				}
				rule := make([][]cond, 0, len(r))
				for mi := range r {
					// An empty match matches nothing (model.Match.Empty):
					// it is left out of its clause's disjunction, where no
					// conditions would mean "always".
					if r[mi].Empty() {
						continue
					}
					rule = append(rule, pr.match(&r[mi]))
				}
				conds[pi][gi] = append(conds[pi][gi], rule)
			}
		}
	}

	t := &Tables{Ident: map[uint32]uint16{}, Ports: map[uint16]uint16{}, Verdicts: map[[4]uint16]Verdict{}}

	// Identities: the class everyone shares most is the default.
	identVecs := newVectors()
	identOf := map[uint32]uint16{}
	count := map[uint16]int{}
	for _, id := range append([]Identity{{ID: 0}}, identities...) {
		cls := identVecs.class(pr.identVector(id))
		identOf[id.ID] = cls
		count[cls]++
	}
	// Anyone not listed: a known identity matching no identity predicate's
	// specific values (what a brand-new identity would be, until the next
	// compile lists it).
	for c, n := range count {
		if n > count[t.DefaultIdent] || (n == count[t.DefaultIdent] && c < t.DefaultIdent) {
			t.DefaultIdent = c
		}
	}
	for id, c := range identOf {
		if c != t.DefaultIdent {
			t.Ident[id] = c
		}
	}

	srcVecs, dstVecs, portVecs := newVectors(), newVectors(), newVectors()
	t.Src = pr.cidrTable(pr.srcLists, srcVecs)
	t.Dst = pr.cidrTable(pr.dstLists, dstVecs)
	// Ports no list names: every port predicate false (port 0 may be
	// named, so it is no stand-in for them).
	t.DefaultPort = portVecs.class(make([]bool, len(pr.portLists)))
	for _, port := range pr.ports() {
		t.Ports[port] = portVecs.class(pr.portVector(port))
	}

	index := make(map[*model.AuthzPolicy]int, len(policies))
	for i, p := range policies {
		index[p] = i
	}
	n := len(identVecs.list) * len(srcVecs.list) * len(dstVecs.list) * len(portVecs.list)
	if n > limit {
		return nil, &TooLargeError{Verdicts: n, Limit: limit}
	}
	for ic, iv := range identVecs.list {
		for sc, sv := range srcVecs.list {
			for dc, dv := range dstVecs.list {
				for pc, pv := range portVecs.list {
					truth := [4][]bool{iv, sv, dv, pv}
					matches := func(p *model.AuthzPolicy) bool { return policyMatches(conds[index[p]], truth) }
					v := model.EvaluateWith(policies, matches)
					key := [4]uint16{uint16(ic), uint16(sc), uint16(dc), uint16(pc)}
					t.Verdicts[key] = verdictOf(v, ids)
				}
			}
		}
	}
	return t, nil
}

func verdictOf(v model.Verdict, ids PolicyIDs) Verdict {
	out := Verdict{Deny: !v.Allow}
	switch v.Policy {
	case "":
	case model.NoAllowMatched:
		out.Policy = NoAllowID
	default:
		out.Policy = ids(v.Policy)
	}
	if len(v.DryRunDeny) > 0 {
		out.DryRun = true
		out.DryPolicy = ids(v.DryRunDeny[0])
	}
	return out
}

func policyMatches(groups [][][][]cond, truth [4][]bool) bool {
	for _, g := range groups {
		all := true
		for _, r := range g {
			any := false
			for _, m := range r {
				ok := true
				for _, c := range m {
					if truth[c.dim][c.pred] != !c.negate {
						ok = false
						break
					}
				}
				if ok {
					any = true
					break
				}
			}
			if !any {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// vectors interns truth vectors into class numbers.
type vectors struct {
	byKey map[string]uint16
	list  [][]bool
}

func newVectors() *vectors { return &vectors{byKey: map[string]uint16{}} }

func (v *vectors) class(vec []bool) uint16 {
	var b strings.Builder
	for _, x := range vec {
		if x {
			b.WriteByte('1')
		} else {
			b.WriteByte('0')
		}
	}
	k := b.String()
	if c, ok := v.byKey[k]; ok {
		return c
	}
	c := uint16(len(v.list))
	v.byKey[k] = c
	v.list = append(v.list, vec)
	return c
}
