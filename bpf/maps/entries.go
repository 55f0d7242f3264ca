package maps

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"time"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/maglev"
)

// svcEntries is everything one service owns in the kernel maps.
type svcEntries struct {
	fe    small[layout.FrontendKey, layout.FrontendValue]
	ports small[layout.PortKey, layout.PortValue]
	ovr   small[layout.PortovrKey, layout.PortovrValue]
	value layout.ServiceValue // RRCursor always zero here: the kernel owns it
	// slots[p][i] is the workload at endpoint index i+1 of priority p.
	slots [layout.MaxPrio][]uint32
	// maglev is the lookup table when the policy is Maglev and some endpoint
	// is usable; nil otherwise.
	maglev []uint32
}

// beEntries is everything one backend owns.
type beEntries struct {
	fe    small[layout.FrontendKey, layout.FrontendValue]
	value layout.BackendValue
}

func (e *svcEntries) waypoint() Ref { return refOf(e.value.Waypoint) }
func (e *beEntries) waypoint() Ref  { return refOf(e.value.Waypoint) }

func (e *svcEntries) workloads() []uint32 {
	var out []uint32
	for _, s := range e.slots {
		out = append(out, s...)
	}
	return out
}

// serviceEntries turns a Service into map entries. Endpoint slots are planned
// later against what the kernel already holds, so only the wanted lists are
// returned here.
func serviceEntries(s *Service, maglevSize uint32) (*svcEntries, [layout.MaxPrio][]uint32) {
	e := &svcEntries{}
	for _, v := range s.VIPs {
		e.fe.put(layout.FrontendKey{Addr: layout.AddrFrom(v)}, layout.FrontendValue{UpstreamID: s.ID, Kind: layout.KindService})
	}
	for _, p := range s.Ports {
		pv := layout.PortValue{TargetPort: p.TargetPort}
		if len(p.Overrides) > 0 {
			pv.Flags |= layout.PortOverrides
		}
		e.ports.put(layout.PortKey{ServiceID: s.ID, Port: p.Port}, pv)
		for wid, tp := range p.Overrides {
			e.ovr.put(layout.PortovrKey{ServiceID: s.ID, WorkloadID: wid, Port: p.Port}, layout.PortovrValue{TargetPort: tp})
		}
	}
	v := layout.ServiceValue{LBPolicy: s.Policy}
	if s.Strict {
		v.Flags |= layout.SvcStrict
	}
	if s.Affinity > 0 {
		v.Flags |= layout.SvcAffinity
		v.AffinityTimeoutS = uint32((s.Affinity + time.Second - 1) / time.Second)
	}
	v.Waypoint = s.Waypoint.value()
	var want [layout.MaxPrio][]uint32
	for p, list := range s.Endpoints {
		want[p] = list
	}
	if s.Policy == Maglev {
		e.maglev = maglev.Table(maglevSet(s.Strict, want), maglevSize)
	}
	e.value = v
	return e, want
}

// maglevSet is the set a consistent-hash service spreads over: the same
// priority a random pick would use.
func maglevSet(strict bool, want [layout.MaxPrio][]uint32) []uint32 {
	if strict {
		return want[0]
	}
	for _, l := range want {
		if len(l) > 0 {
			return l
		}
	}
	return nil
}

// beBlock is a backend's entries with room for its usual one frontend, in
// one allocation: a node keeps a hundred thousand of them.
type beBlock struct {
	e  beEntries
	fe [1]pair[layout.FrontendKey, layout.FrontendValue]
}

func backendEntries(b *Backend) *beEntries {
	block := new(beBlock)
	e := &block.e
	if len(b.Addresses) <= len(block.fe) || b.SharedAddresses {
		e.fe = block.fe[:0]
	} else {
		e.fe = make(small[layout.FrontendKey, layout.FrontendValue], 0, len(b.Addresses))
	}
	v := layout.BackendValue{IdentityID: b.Identity, AuthzPS: b.PolicySet}
	for _, a := range b.Addresses {
		if !b.SharedAddresses {
			e.fe.put(layout.FrontendKey{Addr: layout.AddrFrom(a)}, layout.FrontendValue{UpstreamID: b.ID, Kind: layout.KindWorkload})
		}
		a = a.Unmap()
		if a.Is4() && v.Flags&layout.BeHasV4 == 0 || a.Is6() && v.Flags&layout.BeHasV6 == 0 {
			v.SetAddr(a)
		}
	}
	v.Waypoint = b.Waypoint.value()
	e.value = v
	return e
}

// planSlots decides where each wanted workload sits so that as few slots as
// possible change: workloads keep their index when it still exists, the ones
// past the new end and the new ones fill the holes left by removals.
func planSlots(old, want []uint32) []uint32 {
	m := len(want)
	next := make([]uint32, m)
	if m == 0 {
		return next
	}
	if len(old)+m > 64 {
		return planSlotsLarge(old, want)
	}
	// Short lists (the common case): linear scans beat maps.
	in := func(list []uint32, w uint32) bool { return slices.Contains(list, w) }
	var placed []uint32
	for i := 0; i < min(len(old), m); i++ {
		if in(want, old[i]) {
			next[i] = old[i]
			placed = append(placed, old[i])
		}
	}
	var movers []uint32
	for i := m; i < len(old); i++ {
		if in(want, old[i]) && !in(placed, old[i]) {
			movers = append(movers, old[i])
			placed = append(placed, old[i])
		}
	}
	for _, w := range want {
		if !in(placed, w) {
			movers = append(movers, w)
			placed = append(placed, w)
		}
	}
	j := 0
	for i := range next {
		if next[i] == 0 {
			next[i] = movers[j]
			j++
		}
	}
	return next
}

// planSlotsLarge is planSlots with sets, for long endpoint lists.
func planSlotsLarge(old, want []uint32) []uint32 {
	m := len(want)
	wanted := make(map[uint32]bool, m)
	for _, w := range want {
		wanted[w] = true
	}
	next := make([]uint32, m)
	placed := make(map[uint32]bool, m)
	for i := 0; i < min(len(old), m); i++ {
		if wanted[old[i]] {
			next[i] = old[i]
			placed[old[i]] = true
		}
	}
	var movers []uint32
	for i := m; i < len(old); i++ {
		if wanted[old[i]] && !placed[old[i]] {
			movers = append(movers, old[i])
			placed[old[i]] = true
		}
	}
	for _, w := range want {
		if !placed[w] {
			movers = append(movers, w)
			placed[w] = true
		}
	}
	j := 0
	for i := range next {
		if next[i] == 0 {
			next[i] = movers[j]
			j++
		}
	}
	return next
}

// Service turns stored entries back into the Service they describe (for
// dumps and for rebuilding the caller's view after a restart).
func (e *svcEntries) service(id uint32) Service {
	s := Service{ID: id, Policy: e.value.LBPolicy}
	for _, f := range e.fe {
		s.VIPs = append(s.VIPs, f.k.Addr.Netip())
	}
	slices.SortFunc(s.VIPs, func(a, b netip.Addr) int { return a.Compare(b) })
	for _, pp := range e.ports {
		p := Port{Port: pp.k.Port, TargetPort: pp.v.TargetPort}
		for _, o := range e.ovr {
			if o.k.Port == pp.k.Port {
				if p.Overrides == nil {
					p.Overrides = map[uint32]uint16{}
				}
				p.Overrides[o.k.WorkloadID] = o.v.TargetPort
			}
		}
		s.Ports = append(s.Ports, p)
	}
	slices.SortFunc(s.Ports, func(a, b Port) int { return int(a.Port) - int(b.Port) })
	s.Strict = e.value.Flags&layout.SvcStrict != 0
	if e.value.Flags&layout.SvcAffinity != 0 {
		s.Affinity = time.Duration(e.value.AffinityTimeoutS) * time.Second
	}
	s.Waypoint = refOf(e.value.Waypoint)
	last := -1
	for p := range e.slots {
		if len(e.slots[p]) > 0 {
			last = p
		}
	}
	for p := 0; p <= last; p++ {
		s.Endpoints = append(s.Endpoints, slices.Clone(e.slots[p]))
	}
	return s
}

func (e *beEntries) backend(id uint32) Backend {
	b := Backend{ID: id, Identity: e.value.IdentityID, PolicySet: e.value.AuthzPS, Waypoint: refOf(e.value.Waypoint)}
	for _, f := range e.fe {
		b.Addresses = append(b.Addresses, f.k.Addr.Netip())
	}
	if len(e.fe) == 0 {
		// Only a backend of shared addresses has no frontend (every other
		// one owns an address): its addresses are the ones it is
		// connected at.
		b.SharedAddresses = true
		if e.value.Flags&layout.BeHasV4 != 0 {
			var a4 [4]byte
			binary.NativeEndian.PutUint32(a4[:], e.value.IP4)
			b.Addresses = append(b.Addresses, netip.AddrFrom4(a4))
		}
		if e.value.Flags&layout.BeHasV6 != 0 {
			b.Addresses = append(b.Addresses, layout.Addr{A: e.value.IP6}.Netip())
		}
	}
	slices.SortFunc(b.Addresses, func(a, b netip.Addr) int { return a.Compare(b) })
	return b
}
