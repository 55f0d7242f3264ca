package maps

import (
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/loader"
)

// readBack rebuilds the mirror from the kernel maps, so a restarted daemon
// diffs against what is really there and rewrites nothing that is right.
func (m *Maps) readBack() error {
	m.services = map[uint32]*svcEntries{}
	m.backends = map[uint32]*beEntries{}
	m.inner = map[uint32]*ebpf.Map{}
	m.feOwner = map[layout.FrontendKey]Ref{}
	m.wpUsers = map[Ref]map[Ref]bool{}
	m.refs = map[uint32][]uint32{}
	m.count = map[string]int{}
	m.policySets = map[uint32]*AuthzTables{}
	if err := m.readPolicySets(); err != nil {
		return err
	}

	svc := func(id uint32) *svcEntries {
		e := m.services[id]
		if e == nil {
			e = &svcEntries{}
			m.services[id] = e
		}
		return e
	}

	var sid uint32
	var sv layout.ServiceValue
	if err := iterate(m.service, loader.MapService, &sid, &sv, func() {
		sv.RRCursor = 0
		svc(sid).value = sv
		m.count[loader.MapService]++
	}); err != nil {
		return err
	}

	var bid uint32
	var bv layout.BackendValue
	if err := iterate(m.backend, loader.MapBackend, &bid, &bv, func() {
		m.backends[bid] = &beEntries{value: bv}
		m.count[loader.MapBackend]++
	}); err != nil {
		return err
	}

	var fk layout.FrontendKey
	var fv layout.FrontendValue
	var orphanFE []layout.FrontendKey
	if err := iterate(m.frontend, loader.MapFrontend, &fk, &fv, func() {
		m.count[loader.MapFrontend]++
		switch {
		case fv.Kind == layout.KindService && m.services[fv.UpstreamID] != nil:
			m.services[fv.UpstreamID].fe.put(fk, fv)
		case fv.Kind == layout.KindWorkload && m.backends[fv.UpstreamID] != nil:
			m.backends[fv.UpstreamID].fe.put(fk, fv)
		default:
			orphanFE = append(orphanFE, fk)
			return
		}
		m.feOwner[fk] = Ref{fv.Kind, fv.UpstreamID}
	}); err != nil {
		return err
	}

	var pk layout.PortKey
	var pv layout.PortValue
	if err := iterate(m.port, loader.MapPort, &pk, &pv, func() {
		svc(pk.ServiceID).ports.put(pk, pv)
		m.count[loader.MapPort]++
	}); err != nil {
		return err
	}

	var ok layout.PortovrKey
	var ov layout.PortovrValue
	if err := iterate(m.portovr, loader.MapPortOvr, &ok, &ov, func() {
		svc(ok.ServiceID).ovr.put(ok, ov)
		m.count[loader.MapPortOvr]++
	}); err != nil {
		return err
	}

	type slot struct{ index, wid uint32 }
	found := map[uint32]*[layout.MaxPrio][]slot{}
	var ek layout.EndpointKey
	var ev layout.EndpointValue
	if err := iterate(m.endpoint, loader.MapEndpoint, &ek, &ev, func() {
		m.count[loader.MapEndpoint]++
		if ek.Prio >= uint32(layout.MaxPrio) {
			return
		}
		if found[ek.ServiceID] == nil {
			found[ek.ServiceID] = &[layout.MaxPrio][]slot{}
		}
		found[ek.ServiceID][ek.Prio] = append(found[ek.ServiceID][ek.Prio], slot{ek.Index, ev.WorkloadID})
	}); err != nil {
		return err
	}
	var leftovers []layout.EndpointKey
	for id, prios := range found {
		e := svc(id)
		for p, list := range prios {
			slices.SortFunc(list, func(a, b slot) int { return int(a.index) - int(b.index) })
			// Only 1..count is live. Anything else is what an interrupted
			// add or removal left behind, invisible to the kernel: drop it.
			n := e.value.EpCount[p]
			for i, s := range list {
				if s.index == uint32(i+1) && s.index <= n {
					e.slots[p] = append(e.slots[p], s.wid)
					continue
				}
				leftovers = append(leftovers, layout.EndpointKey{ServiceID: id, Prio: uint32(p), Index: s.index})
			}
		}
	}
	for _, k := range leftovers {
		if err := m.endpoint.Delete(k); err == nil {
			m.count[loader.MapEndpoint]--
		}
	}

	var mid uint32
	var innerID ebpf.MapID
	if err := iterate(m.maglevOuter, loader.MapMaglev, &mid, &innerID, func() {
		m.count[loader.MapMaglev]++
		in, err := ebpf.NewMapFromID(innerID)
		if err != nil {
			return
		}
		table := make([]uint32, m.maglevSize)
		for i := range table {
			if err := in.Lookup(uint32(i), &table[i]); err != nil {
				in.Close()
				return
			}
		}
		m.inner[mid] = in
		svc(mid).maglev = table
	}); err != nil {
		return err
	}

	for id, e := range m.services {
		for _, w := range e.workloads() {
			m.refs[w] = append(m.refs[w], id)
		}
		m.useWaypoint(ServiceRef(id), e.waypoint())
	}
	for id, e := range m.backends {
		m.useWaypoint(WorkloadRef(id), e.waypoint())
	}
	// Frontends nobody owns would route to nothing: drop them now.
	for _, k := range orphanFE {
		if err := m.frontend.Delete(k); err == nil {
			m.count[loader.MapFrontend]--
		}
	}
	return nil
}

func iterate[K, V any](mp *ebpf.Map, name string, k *K, v *V, each func()) error {
	it := mp.Iterate()
	for it.Next(k, v) {
		each()
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read back %s: %w", name, err)
	}
	return nil
}
