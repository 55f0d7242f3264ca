package maps

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/loader"
)

type kv[K comparable, V any] struct {
	keys []K
	vals []V
}

func (b *kv[K, V]) grow(n int) {
	b.keys = slices.Grow(b.keys, n)
	b.vals = slices.Grow(b.vals, n)
}

func (b *kv[K, V]) add(k K, v V) {
	b.keys = append(b.keys, k)
	b.vals = append(b.vals, v)
}

type maglevWrite struct {
	service uint32
	fresh   bool // a new table: create, fill, then publish
	slots   []uint32
	ids     []uint32
}

// plan is the list of map operations for one transaction, in the order
// execute runs them. The order is what keeps the kernel's view whole:
// frontends go last on the way in and first on the way out; endpoint slots
// are written before counts grow and deleted after counts shrink; backends
// exist before anything points at them and go after nothing does; a
// waypoint is written before its users (services that are waypoints lead
// the service batch; a backend naming a service new in this plan follows
// the services) and deleted after them.
type plan struct {
	feDel     []layout.FrontendKey
	beUp      kv[uint32, layout.BackendValue]
	portUp    kv[layout.PortKey, layout.PortValue]
	ovrUp     kv[layout.PortovrKey, layout.PortovrValue]
	epUp      kv[layout.EndpointKey, layout.EndpointValue]
	maglevUp  []maglevWrite
	svcUp     kv[uint32, layout.ServiceValue]
	beUpLate  kv[uint32, layout.BackendValue]
	feUp      kv[layout.FrontendKey, layout.FrontendValue]
	epDel     []layout.EndpointKey
	ovrDel    []layout.PortovrKey
	portDel   []layout.PortKey
	maglevDel []uint32
	svcDel    []uint32
	beDel     []uint32
	psUp      []PolicySet
	psDel     []uint32
	psDelTabs map[uint32]*AuthzTables

	added, removed map[string]int
	newInner       map[uint32]*ebpf.Map
}

// view is a state to diff from: the mirror, or during rollback the state
// a failed transaction was heading for.
type view struct {
	service  func(uint32) *svcEntries
	backend  func(uint32) *beEntries
	feExists func(layout.FrontendKey) bool
}

func (m *Maps) mirrorView() view {
	return view{
		service:  func(id uint32) *svcEntries { return m.services[id] },
		backend:  func(id uint32) *beEntries { return m.backends[id] },
		feExists: func(k layout.FrontendKey) bool { _, ok := m.feOwner[k]; return ok },
	}
}

func (m *Maps) diff(next *state, t Txn) *plan {
	p := diffStates(m.mirrorView(), next)
	p.psUp = t.PolicySets
	p.psDelTabs = map[uint32]*AuthzTables{}
	for _, ps := range t.PolicySets {
		for name, n := range psEntries(ps.Tables) {
			p.added[name] += n
		}
	}
	for _, id := range t.DeletePolicySets {
		tabs, ok := m.policySets[id]
		if !ok {
			continue
		}
		p.psDel = append(p.psDel, id)
		p.psDelTabs[id] = tabs
		for name, n := range psEntries(tabs) {
			p.removed[name] += n
		}
	}
	return p
}

// reversePlan leads from the state a transaction was heading for back to the
// mirror (which still holds the old state).
func (m *Maps) reversePlan(next *state, forward *plan) *plan {
	cur := view{
		service: func(id uint32) *svcEntries {
			if e, ok := next.services[id]; ok {
				return e
			}
			return m.services[id]
		},
		backend: func(id uint32) *beEntries {
			if e, ok := next.backends[id]; ok {
				return e
			}
			return m.backends[id]
		},
		feExists: func(k layout.FrontendKey) bool {
			if slices.Contains(forward.feUp.keys, k) {
				return true
			}
			if slices.Contains(forward.feDel, k) {
				return false
			}
			_, ok := m.feOwner[k]
			return ok
		},
	}
	old := &state{services: map[uint32]*svcEntries{}, backends: map[uint32]*beEntries{}}
	for id := range next.services {
		old.services[id] = m.services[id]
	}
	for id := range next.backends {
		old.backends[id] = m.backends[id]
	}
	p := diffStates(cur, old)
	p.psDelTabs = map[uint32]*AuthzTables{}
	for _, ps := range forward.psUp {
		p.psDel = append(p.psDel, ps.ID)
		p.psDelTabs[ps.ID] = ps.Tables
	}
	for _, id := range forward.psDel {
		p.psUp = append(p.psUp, PolicySet{ID: id, Tables: forward.psDelTabs[id]})
	}
	// Tables created by the failed forward pass are not in the mirror yet.
	for i := range p.maglevUp {
		if in := forward.newInner[p.maglevUp[i].service]; in != nil {
			p.maglevUp[i].fresh = false
		}
	}
	p.newInner = forward.newInner
	return p
}

func diffStates(cur view, next *state) *plan {
	p := &plan{added: map[string]int{}, removed: map[string]int{}, newInner: map[uint32]*ebpf.Map{}}
	// Sized for a transaction of new objects (a snapshot); grown one
	// append at a time, the batches are copied over and over.
	p.beUp.grow(len(next.backends))
	p.svcUp.grow(len(next.services))
	p.feUp.grow(len(next.services) + len(next.backends))
	p.epUp.grow(len(next.backends))
	p.portUp.grow(len(next.services))
	newServices := make(map[uint32]bool, len(next.services))
	claimed := make(map[layout.FrontendKey]bool, len(next.services)+len(next.backends))
	var released []layout.FrontendKey

	feDiff := func(old, nw feSet) {
		for _, f := range nw {
			claimed[f.k] = true
			if ov, ok := old.get(f.k); ok && ov == f.v {
				continue
			}
			p.feUp.add(f.k, f.v)
			if !cur.feExists(f.k) {
				p.added[loader.MapFrontend]++
			}
		}
		for _, f := range old {
			if !nw.has(f.k) {
				released = append(released, f.k)
			}
		}
	}

	for _, id := range sortedKeys(next.services) {
		nw, old := next.services[id], cur.service(id)
		var (
			oldFE, newFE     feSet
			oldPorts, nPorts small[layout.PortKey, layout.PortValue]
			oldOvr, nOvr     small[layout.PortovrKey, layout.PortovrValue]
			oldSlots, nSlots [layout.MaxPrio][]uint32
			oldTable, nTable []uint32
		)
		if old != nil {
			oldFE, oldPorts, oldOvr, oldSlots, oldTable = old.fe, old.ports, old.ovr, old.slots, old.maglev
		}
		if nw != nil {
			newFE, nPorts, nOvr, nSlots, nTable = nw.fe, nw.ports, nw.ovr, nw.slots, nw.maglev
		}
		feDiff(oldFE, newFE)
		mapDiff(oldPorts, nPorts, &p.portUp, &p.portDel, p, loader.MapPort)
		mapDiff(oldOvr, nOvr, &p.ovrUp, &p.ovrDel, p, loader.MapPortOvr)
		for prio := range layout.MaxPrio {
			o, n := oldSlots[prio], nSlots[prio]
			for i, w := range n {
				k := layout.EndpointKey{ServiceID: id, Prio: uint32(prio), Index: uint32(i + 1)}
				if i >= len(o) {
					p.epUp.add(k, layout.EndpointValue{WorkloadID: w})
					p.added[loader.MapEndpoint]++
				} else if o[i] != w {
					p.epUp.add(k, layout.EndpointValue{WorkloadID: w})
				}
			}
			for i := len(n); i < len(o); i++ {
				p.epDel = append(p.epDel, layout.EndpointKey{ServiceID: id, Prio: uint32(prio), Index: uint32(i + 1)})
				p.removed[loader.MapEndpoint]++
			}
		}
		switch {
		case nTable != nil && oldTable == nil:
			mw := maglevWrite{service: id, fresh: true, ids: nTable}
			mw.slots = make([]uint32, len(nTable))
			for i := range mw.slots {
				mw.slots[i] = uint32(i)
			}
			p.maglevUp = append(p.maglevUp, mw)
			p.added[loader.MapMaglev]++
		case nTable != nil:
			mw := maglevWrite{service: id}
			for i := range nTable {
				if i >= len(oldTable) || nTable[i] != oldTable[i] {
					mw.slots = append(mw.slots, uint32(i))
					mw.ids = append(mw.ids, nTable[i])
				}
			}
			if len(mw.slots) > 0 {
				p.maglevUp = append(p.maglevUp, mw)
			}
		case oldTable != nil:
			p.maglevDel = append(p.maglevDel, id)
			p.removed[loader.MapMaglev]++
		}
		switch {
		case nw != nil && old == nil:
			p.svcUp.add(id, nw.value)
			p.added[loader.MapService]++
			newServices[id] = true
		case nw != nil && nw.value != old.value:
			p.svcUp.add(id, nw.value)
		case nw == nil && old != nil:
			p.svcDel = append(p.svcDel, id)
			p.removed[loader.MapService]++
		}
	}

	for _, id := range sortedKeys(next.backends) {
		nw, old := next.backends[id], cur.backend(id)
		var oldFE, newFE feSet
		if old != nil {
			oldFE = old.fe
		}
		if nw != nil {
			newFE = nw.fe
		}
		feDiff(oldFE, newFE)
		up := &p.beUp
		if nw != nil && nw.waypoint().Kind == KindService && newServices[nw.waypoint().ID] {
			up = &p.beUpLate
		}
		switch {
		case nw != nil && old == nil:
			up.add(id, nw.value)
			p.added[loader.MapBackend]++
		case nw != nil && nw.value != old.value:
			up.add(id, nw.value)
		case nw == nil && old != nil:
			p.beDel = append(p.beDel, id)
			p.removed[loader.MapBackend]++
		}
	}

	waypointsFirst(&p.svcUp)

	// An address released by one object and claimed by another in the same
	// transaction is overwritten, not deleted.
	for _, k := range released {
		if !claimed[k] {
			p.feDel = append(p.feDel, k)
			p.removed[loader.MapFrontend]++
		}
	}
	return p
}

// waypointsFirst moves the services that other services in the batch
// name as their waypoint to its front (a batch is written in order).
func waypointsFirst(b *kv[uint32, layout.ServiceValue]) {
	named := map[uint32]bool{}
	for _, v := range b.vals {
		if RefKind(v.Waypoint.Kind) == KindService {
			named[v.Waypoint.UpstreamID] = true
		}
	}
	if len(named) == 0 {
		return
	}
	var first, rest kv[uint32, layout.ServiceValue]
	for i, k := range b.keys {
		if named[k] {
			first.add(k, b.vals[i])
		} else {
			rest.add(k, b.vals[i])
		}
	}
	*b = kv[uint32, layout.ServiceValue]{keys: append(first.keys, rest.keys...), vals: append(first.vals, rest.vals...)}
}

func mapDiff[K comparable, V comparable](old, nw small[K, V], up *kv[K, V], del *[]K, p *plan, name string) {
	for _, n := range nw {
		ov, ok := old.get(n.k)
		if ok && ov == n.v {
			continue
		}
		up.add(n.k, n.v)
		if !ok {
			p.added[name]++
		}
	}
	for _, o := range old {
		if !nw.has(o.k) {
			*del = append(*del, o.k)
			p.removed[name]++
		}
	}
}

func sortedKeys[V any](m map[uint32]V) []uint32 {
	out := make([]uint32, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// execute runs a plan in order. In rollback mode deletes of missing keys
// are fine and every step is tried even after a failure.
func (m *Maps) execute(p *plan, rollback bool) error {
	var errs []error
	step := func(err error) bool {
		if err != nil {
			errs = append(errs, err)
			return !rollback
		}
		return false
	}
	if step(batchDelete(m.frontend, loader.MapFrontend, p.feDel, rollback)) ||
		step(m.writePolicySets(p, rollback)) ||
		step(batchPut(m.backend, loader.MapBackend, &p.beUp)) ||
		step(batchPut(m.port, loader.MapPort, &p.portUp)) ||
		step(batchPut(m.portovr, loader.MapPortOvr, &p.ovrUp)) ||
		step(batchPut(m.endpoint, loader.MapEndpoint, &p.epUp)) ||
		step(m.writeMaglev(p)) ||
		step(batchPut(m.service, loader.MapService, &p.svcUp)) ||
		step(batchPut(m.backend, loader.MapBackend, &p.beUpLate)) ||
		step(batchPut(m.frontend, loader.MapFrontend, &p.feUp)) ||
		step(batchDelete(m.endpoint, loader.MapEndpoint, p.epDel, rollback)) ||
		step(batchDelete(m.portovr, loader.MapPortOvr, p.ovrDel, rollback)) ||
		step(batchDelete(m.port, loader.MapPort, p.portDel, rollback)) ||
		step(batchDelete(m.maglevOuter, loader.MapMaglev, p.maglevDel, rollback)) ||
		step(batchDelete(m.service, loader.MapService, p.svcDel, rollback)) ||
		step(batchDelete(m.backend, loader.MapBackend, p.beDel, rollback)) ||
		step(m.deletePolicySets(p)) {
		return errs[0]
	}
	return errors.Join(errs...)
}

func (m *Maps) writePolicySets(p *plan, rollback bool) error {
	for _, ps := range p.psUp {
		if err := m.writePolicySet(ps); err != nil {
			if rollback {
				continue
			}
			return err
		}
	}
	return nil
}

func (m *Maps) deletePolicySets(p *plan) error {
	var errs []error
	for _, id := range p.psDel {
		errs = append(errs, m.deletePolicySet(id, p.psDelTabs[id]))
	}
	return errors.Join(errs...)
}

func (m *Maps) writeMaglev(p *plan) error {
	for _, w := range p.maglevUp {
		in := m.inner[w.service]
		if in == nil {
			in = p.newInner[w.service]
		}
		publish := w.fresh
		if in == nil {
			// Fill a new table completely before publishing it, so the kernel
			// never hashes a client onto an empty slot.
			spec := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: m.maglevSize}
			nin, err := ebpf.NewMap(spec)
			if err != nil {
				return fmt.Errorf("create Maglev table for service %d: %w", w.service, err)
			}
			p.newInner[w.service] = nin
			in = nin
			publish = true
		}
		if _, err := in.BatchUpdate(w.slots, w.ids, nil); err != nil {
			return fmt.Errorf("write Maglev table for service %d: %w", w.service, err)
		}
		if publish {
			if err := m.maglevOuter.Put(w.service, in); err != nil {
				return mapErr(loader.MapMaglev, err)
			}
		}
	}
	return nil
}

func batchPut[K comparable, V any](mp *ebpf.Map, name string, b *kv[K, V]) error {
	if len(b.keys) == 0 {
		return nil
	}
	if len(b.keys) == 1 {
		if err := mp.Put(b.keys[0], b.vals[0]); err != nil {
			return mapErr(name, err)
		}
		return nil
	}
	// A big batch (a full sync) is split over the CPUs: the kernel's hash
	// maps lock per bucket, so the parts proceed side by side. Order within
	// one map's batch never mattered.
	parts := 1
	if len(b.keys) >= parallelBatch {
		parts = min(runtime.GOMAXPROCS(0), len(b.keys)/(parallelBatch/2))
	}
	if parts <= 1 {
		n, err := mp.BatchUpdate(b.keys, b.vals, nil)
		if err != nil {
			return mapErr(name, fmt.Errorf("after %d of %d entries: %w", n, len(b.keys), err))
		}
		return nil
	}
	errs := make([]error, parts)
	var wg sync.WaitGroup
	size := (len(b.keys) + parts - 1) / parts
	for i := range parts {
		lo, hi := i*size, min((i+1)*size, len(b.keys))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if n, err := mp.BatchUpdate(b.keys[lo:hi], b.vals[lo:hi], nil); err != nil {
				errs[i] = mapErr(name, fmt.Errorf("after %d of entries %d-%d: %w", n, lo, hi, err))
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// parallelBatch is the batch size from which writes are split over CPUs.
const parallelBatch = 16384

func batchDelete[K comparable](mp *ebpf.Map, name string, keys []K, tolerant bool) error {
	if len(keys) == 0 {
		return nil
	}
	if len(keys) > 1 && !tolerant {
		if _, err := mp.BatchDelete(keys, nil); err == nil {
			return nil
		} else if !isNotExist(err) {
			return mapErr(name, err)
		}
		// Someone else removed a key: finish one by one.
	}
	for _, k := range keys {
		if err := mp.Delete(k); err != nil && !isNotExist(err) {
			return mapErr(name, err)
		}
	}
	return nil
}

func mapErr(name string, err error) error {
	if errors.Is(err, syscall.E2BIG) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.ENOMEM) {
		return fmt.Errorf("map %s has no room left (raise its size): %w", name, err)
	}
	return fmt.Errorf("map %s: %w", name, err)
}
