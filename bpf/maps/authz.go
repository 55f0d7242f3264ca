package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/loader"
)

// AuthzVerdict is the decision for one combination of attribute classes.
type AuthzVerdict struct {
	Deny      bool
	Policy    uint32 // deciding policy id; 0 when allowed with no ALLOW policy
	DryRun    bool   // a dry-run policy would deny
	DryPolicy uint32
}

// AuthzCIDR maps addresses whose longest matching entry is Prefix to Class.
type AuthzCIDR struct {
	Prefix netip.Prefix
	Class  uint16
}

// AuthzTables are the compiled policies of one policy set (see
// daemon/authz): a class per attribute value and a verdict per combination.
type AuthzTables struct {
	DefaultIdent uint16
	Ident        map[uint32]uint16 // identity id -> class, where not default
	Src, Dst     []AuthzCIDR       // must include 0.0.0.0/0 and ::/0
	DefaultPort  uint16
	Ports        map[uint16]uint16
	Verdicts     map[[4]uint16]AuthzVerdict // [ident, src, dst, port]
}

// PolicySet is a policy set as written to the kernel. A set is immutable
// once written: changed policies get a new id, backends switch to it in the
// same transaction and the old one is deleted after.
type PolicySet struct {
	ID     uint32
	Tables *AuthzTables
}

// Decide is km_authz_decide in Go: the same tables, the same longest-prefix
// match, the same fail-closed default.
func (t *AuthzTables) Decide(identity uint32, src, dst netip.Addr, port uint16) AuthzVerdict {
	ic, ok := t.Ident[identity]
	if !ok {
		ic = t.DefaultIdent
	}
	pc, ok := t.Ports[port]
	if !ok {
		pc = t.DefaultPort
	}
	v, ok := t.Verdicts[[4]uint16{ic, longestClass(t.Src, src), longestClass(t.Dst, dst), pc}]
	if !ok {
		return AuthzVerdict{Deny: true}
	}
	return v
}

func longestClass(table []AuthzCIDR, a netip.Addr) uint16 {
	a = a.Unmap()
	best, cls := -1, uint16(0)
	for _, e := range table {
		if e.Prefix.Contains(a) && e.Prefix.Bits() > best {
			best, cls = e.Prefix.Bits(), e.Class
		}
	}
	return cls
}

// Equal reports whether two table sets are identical.
func (t *AuthzTables) Equal(o *AuthzTables) bool {
	if t == nil || o == nil {
		return t == o
	}
	if t.DefaultIdent != o.DefaultIdent || t.DefaultPort != o.DefaultPort ||
		len(t.Ident) != len(o.Ident) || len(t.Ports) != len(o.Ports) || len(t.Verdicts) != len(o.Verdicts) ||
		!slices.Equal(t.Src, o.Src) || !slices.Equal(t.Dst, o.Dst) {
		return false
	}
	for k, v := range t.Ident {
		if ov, ok := o.Ident[k]; !ok || ov != v {
			return false
		}
	}
	for k, v := range t.Ports {
		if ov, ok := o.Ports[k]; !ok || ov != v {
			return false
		}
	}
	for k, v := range t.Verdicts {
		if ov, ok := o.Verdicts[k]; !ok || ov != v {
			return false
		}
	}
	return true
}

func (t *AuthzTables) validate(id uint32) error {
	if id == 0 {
		return invalid("policy set id 0 is reserved")
	}
	if t == nil {
		return invalid("policy set %d has no tables", id)
	}
	roots := 0
	for _, c := range t.Src {
		if c.Prefix.Bits() == 0 {
			roots++
		}
	}
	for _, c := range t.Dst {
		if c.Prefix.Bits() == 0 {
			roots++
		}
	}
	if roots != 4 {
		return invalid("policy set %d: address tables need the 0.0.0.0/0 and ::/0 roots", id)
	}
	return nil
}

// cidrKey is the LPM key of a prefix in the 16-byte address space.
func cidrKey(ps uint32, p netip.Prefix) layout.AuthzCIDRKey {
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return layout.AuthzCIDRKey{Prefixlen: 32 + uint32(bits), PS: ps, Addr: layout.AddrFrom(p.Masked().Addr())}
}

// psEntries counts a set's entries per map, for capacity checks.
func psEntries(t *AuthzTables) map[string]int {
	return map[string]int{
		loader.MapAuthzPS:    1,
		loader.MapAuthzIdent: len(t.Ident),
		loader.MapAuthzSrc:   len(t.Src),
		loader.MapAuthzDst:   len(t.Dst),
		loader.MapAuthzPort:  len(t.Ports),
		loader.MapAuthzVerd:  len(t.Verdicts),
	}
}

// writePolicySet writes every table of a set, the set header last: until
// then no backend points at the id.
func (m *Maps) writePolicySet(ps PolicySet) error {
	t := ps.Tables
	var ik []layout.AuthzIdentKey
	var iv []layout.AuthzClass
	for id, c := range t.Ident {
		ik = append(ik, layout.AuthzIdentKey{PS: ps.ID, Identity: id})
		iv = append(iv, layout.AuthzClass{Cls: c})
	}
	if err := putAll(m.authzIdent, loader.MapAuthzIdent, ik, iv); err != nil {
		return err
	}
	for _, tb := range []struct {
		mp   *ebpf.Map
		name string
		list []AuthzCIDR
	}{{m.authzSrc, loader.MapAuthzSrc, t.Src}, {m.authzDst, loader.MapAuthzDst, t.Dst}} {
		for _, c := range tb.list {
			// LPM tries take no batches.
			if err := tb.mp.Put(cidrKey(ps.ID, c.Prefix), layout.AuthzClass{Cls: c.Class}); err != nil {
				return mapErr(tb.name, err)
			}
		}
	}
	var pk []layout.AuthzPortKey
	var pv []layout.AuthzClass
	for port, c := range t.Ports {
		pk = append(pk, layout.AuthzPortKey{PS: ps.ID, Port: port})
		pv = append(pv, layout.AuthzClass{Cls: c})
	}
	if err := putAll(m.authzPort, loader.MapAuthzPort, pk, pv); err != nil {
		return err
	}
	var vk []layout.AuthzVerdictKey
	var vv []layout.AuthzVerdict
	for k, v := range t.Verdicts {
		vk = append(vk, layout.AuthzVerdictKey{PS: ps.ID, Ident: k[0], Src: k[1], Dst: k[2], Port: k[3]})
		lv := layout.AuthzVerdict{Policy: v.Policy, DryPolicy: v.DryPolicy}
		if v.Deny {
			lv.Flags |= layout.AuthzDeny
		}
		if v.DryRun {
			lv.Flags |= layout.AuthzDryrunDeny
		}
		vv = append(vv, lv)
	}
	if err := putAll(m.authzVerdict, loader.MapAuthzVerd, vk, vv); err != nil {
		return err
	}
	if err := m.authzPS.Put(ps.ID, psHeader(t)); err != nil {
		return mapErr(loader.MapAuthzPS, err)
	}
	return nil
}

// psHeader is a set's km_authz_ps value: defaults, and the family shortcut
// when an address table holds nothing but the two roots.
func psHeader(t *AuthzTables) layout.AuthzPSValue {
	h := layout.AuthzPSValue{DefaultIdent: t.DefaultIdent, DefaultPort: t.DefaultPort}
	byFamily := func(list []AuthzCIDR) (v4, v6 uint16, ok bool) {
		if len(list) != 2 {
			return 0, 0, false
		}
		for _, c := range list {
			if c.Prefix.Bits() != 0 {
				return 0, 0, false
			}
			if c.Prefix.Addr().Is4() {
				v4 = c.Class
			} else {
				v6 = c.Class
			}
		}
		return v4, v6, true
	}
	if v4, v6, ok := byFamily(t.Src); ok {
		h.Src4, h.Src6, h.Flags = v4, v6, h.Flags|layout.AuthzSrcByFamily
	}
	if v4, v6, ok := byFamily(t.Dst); ok {
		h.Dst4, h.Dst6, h.Flags = v4, v6, h.Flags|layout.AuthzDstByFamily
	}
	return h
}

// deletePolicySet removes a set, header first. Missing entries are fine.
func (m *Maps) deletePolicySet(id uint32, t *AuthzTables) error {
	var errs []error
	del := func(mp *ebpf.Map, name string, k any) {
		if err := mp.Delete(k); err != nil && !isNotExist(err) {
			errs = append(errs, mapErr(name, err))
		}
	}
	del(m.authzPS, loader.MapAuthzPS, id)
	if t == nil {
		return errors.Join(errs...)
	}
	for ident := range t.Ident {
		del(m.authzIdent, loader.MapAuthzIdent, layout.AuthzIdentKey{PS: id, Identity: ident})
	}
	for _, c := range t.Src {
		del(m.authzSrc, loader.MapAuthzSrc, cidrKey(id, c.Prefix))
	}
	for _, c := range t.Dst {
		del(m.authzDst, loader.MapAuthzDst, cidrKey(id, c.Prefix))
	}
	for port := range t.Ports {
		del(m.authzPort, loader.MapAuthzPort, layout.AuthzPortKey{PS: id, Port: port})
	}
	for k := range t.Verdicts {
		del(m.authzVerdict, loader.MapAuthzVerd, layout.AuthzVerdictKey{PS: id, Ident: k[0], Src: k[1], Dst: k[2], Port: k[3]})
	}
	return errors.Join(errs...)
}

func putAll[K, V any](mp *ebpf.Map, name string, keys []K, vals []V) error {
	if len(keys) == 0 {
		return nil
	}
	if _, err := mp.BatchUpdate(keys, vals, nil); err != nil {
		return mapErr(name, fmt.Errorf("%d entries: %w", len(keys), err))
	}
	return nil
}

// readPolicySets rebuilds the policy-set mirror from the kernel.
func (m *Maps) readPolicySets() error {
	var id uint32
	var hv layout.AuthzPSValue
	sets := map[uint32]*AuthzTables{}
	get := func(ps uint32) *AuthzTables {
		t := sets[ps]
		if t == nil {
			t = &AuthzTables{Ident: map[uint32]uint16{}, Ports: map[uint16]uint16{}, Verdicts: map[[4]uint16]AuthzVerdict{}}
			sets[ps] = t
		}
		return t
	}
	if err := iterate(m.authzPS, loader.MapAuthzPS, &id, &hv, func() {
		t := get(id)
		t.DefaultIdent, t.DefaultPort = hv.DefaultIdent, hv.DefaultPort
		m.count[loader.MapAuthzPS]++
	}); err != nil {
		return err
	}
	var ik layout.AuthzIdentKey
	var c layout.AuthzClass
	if err := iterate(m.authzIdent, loader.MapAuthzIdent, &ik, &c, func() {
		get(ik.PS).Ident[ik.Identity] = c.Cls
		m.count[loader.MapAuthzIdent]++
	}); err != nil {
		return err
	}
	var ck layout.AuthzCIDRKey
	for _, tb := range []struct {
		mp   *ebpf.Map
		name string
		src  bool
	}{{m.authzSrc, loader.MapAuthzSrc, true}, {m.authzDst, loader.MapAuthzDst, false}} {
		if err := iterate(tb.mp, tb.name, &ck, &c, func() {
			a := ck.Addr.Netip()
			bits := int(ck.Prefixlen) - 32
			if a.Is4() {
				bits -= 96
			}
			e := AuthzCIDR{Prefix: netip.PrefixFrom(a, bits), Class: c.Cls}
			if tb.src {
				get(ck.PS).Src = append(get(ck.PS).Src, e)
			} else {
				get(ck.PS).Dst = append(get(ck.PS).Dst, e)
			}
			m.count[tb.name]++
		}); err != nil {
			return err
		}
	}
	var pk layout.AuthzPortKey
	if err := iterate(m.authzPort, loader.MapAuthzPort, &pk, &c, func() {
		get(pk.PS).Ports[pk.Port] = c.Cls
		m.count[loader.MapAuthzPort]++
	}); err != nil {
		return err
	}
	var vk layout.AuthzVerdictKey
	var vv layout.AuthzVerdict
	if err := iterate(m.authzVerdict, loader.MapAuthzVerd, &vk, &vv, func() {
		get(vk.PS).Verdicts[[4]uint16{vk.Ident, vk.Src, vk.Dst, vk.Port}] = AuthzVerdict{
			Deny: vv.Flags&layout.AuthzDeny != 0, Policy: vv.Policy,
			DryRun: vv.Flags&layout.AuthzDryrunDeny != 0, DryPolicy: vv.DryPolicy,
		}
		m.count[loader.MapAuthzVerd]++
	}); err != nil {
		return err
	}
	for ps, t := range sets {
		sortCIDRs(t.Src)
		sortCIDRs(t.Dst)
		m.policySets[ps] = t
	}
	return nil
}

func sortCIDRs(l []AuthzCIDR) {
	slices.SortFunc(l, func(a, b AuthzCIDR) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
}

// PolicySets returns the ids of the policy sets in the kernel.
func (m *Maps) PolicySets() map[uint32]*AuthzTables {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[uint32]*AuthzTables, len(m.policySets))
	for id, t := range m.policySets {
		out[id] = t
	}
	return out
}

// AuthzOutcomes is how many outcomes the kernel counts per policy
// (layout.AuthzOutcome, the last one is AuthzOutDryrunDeny).
const AuthzOutcomes = int(layout.AuthzOutDryrunDeny) + 1

// AuthzStats sums the kernel's per-policy counters: policy id -> outcome
// (layout.AuthzOutcome) -> connections.
func (m *Maps) AuthzStats() (map[uint32][AuthzOutcomes]uint64, error) {
	out := map[uint32][AuthzOutcomes]uint64{}
	var k layout.AuthzStatKey
	var per []uint64
	it := m.authzStats.Iterate()
	for it.Next(&k, &per) {
		var sum uint64
		for _, v := range per {
			sum += v
		}
		if int(k.Outcome) < AuthzOutcomes {
			c := out[k.Policy]
			c[k.Outcome] += sum
			out[k.Policy] = c
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", loader.MapAuthzStats, err)
	}
	return out, nil
}
