package maps

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/internal/mapsize"
)

// Maps writes services and backends into a loaded data path. It keeps a
// mirror of what it wrote so that every update is a diff; on a data path
// reused from pins the mirror is read back from the kernel first.
type Maps struct {
	mu sync.Mutex

	frontend, service, port, portovr, endpoint, backend, maglevOuter, stats      *ebpf.Map
	authzPS, authzIdent, authzSrc, authzDst, authzPort, authzVerdict, authzStats *ebpf.Map
	maglevSize                                                                   uint32
	max                                                                          map[string]int

	// policySets mirrors the authorization tables per policy set id.
	policySets map[uint32]*AuthzTables

	services map[uint32]*svcEntries
	backends map[uint32]*beEntries
	inner    map[uint32]*ebpf.Map // Maglev table per service
	// feOwner says which object holds a frontend address, to refuse a VIP
	// that is already another service's or a workload's address.
	feOwner map[layout.FrontendKey]Ref
	// refs lists, per workload, the services listing it (usually one).
	refs map[uint32][]uint32
	// wpUsers lists, per waypoint, the services and workloads sending
	// their connections to it: a waypoint stays while one still does (its
	// id could otherwise go to another object that users would reach).
	wpUsers map[Ref]map[Ref]bool
	// count of entries per map, for capacity checks.
	count map[string]int
}

type feSet = small[layout.FrontendKey, layout.FrontendValue]

// Txn is one atomic change: either all of it reaches the maps or none.
type Txn struct {
	Backends       []Backend // created or replaced
	Services       []Service // created or replaced
	DeleteServices []uint32
	DeleteBackends []uint32
	// PolicySets are new authorization policy sets (an id is written once;
	// changed policies come as a new id). They reach the kernel before the
	// backends that point at them; DeletePolicySets go after.
	PolicySets       []PolicySet
	DeletePolicySets []uint32
}

// New builds the typed API over a loaded data path, reading back whatever
// the maps already hold.
func New(dp *loader.Datapath) (*Maps, error) {
	s := dp.Sizes()
	m := &Maps{
		frontend:     dp.Map(loader.MapFrontend),
		service:      dp.Map(loader.MapService),
		port:         dp.Map(loader.MapPort),
		portovr:      dp.Map(loader.MapPortOvr),
		endpoint:     dp.Map(loader.MapEndpoint),
		backend:      dp.Map(loader.MapBackend),
		maglevOuter:  dp.Map(loader.MapMaglev),
		stats:        dp.Map(loader.MapStats),
		authzPS:      dp.Map(loader.MapAuthzPS),
		authzIdent:   dp.Map(loader.MapAuthzIdent),
		authzSrc:     dp.Map(loader.MapAuthzSrc),
		authzDst:     dp.Map(loader.MapAuthzDst),
		authzPort:    dp.Map(loader.MapAuthzPort),
		authzVerdict: dp.Map(loader.MapAuthzVerd),
		authzStats:   dp.Map(loader.MapAuthzStats),
		maglevSize:   s.MaglevTableSize,
		max: map[string]int{
			loader.MapFrontend:   int(s.Frontends),
			loader.MapService:    int(s.Services),
			loader.MapPort:       int(s.Ports),
			loader.MapPortOvr:    int(s.PortOverrides),
			loader.MapEndpoint:   int(s.Endpoints),
			loader.MapBackend:    int(s.Backends),
			loader.MapMaglev:     int(s.MaglevServices),
			loader.MapAuthzPS:    int(s.AuthzSets),
			loader.MapAuthzIdent: int(s.AuthzIdentities),
			loader.MapAuthzSrc:   int(s.AuthzCIDRs),
			loader.MapAuthzDst:   int(s.AuthzCIDRs),
			loader.MapAuthzPort:  int(s.AuthzPorts),
			loader.MapAuthzVerd:  int(s.AuthzVerdicts),
		},
	}
	if err := m.readBack(); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// Close releases the Maglev table handles this API opened. The maps stay.
func (m *Maps) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, in := range m.inner {
		in.Close()
	}
	m.inner = nil
}

// UpsertService creates or replaces one service.
func (m *Maps) UpsertService(s Service) error { return m.Apply(Txn{Services: []Service{s}}) }

// DeleteService removes one service; unknown ids are not an error.
func (m *Maps) DeleteService(id uint32) error { return m.Apply(Txn{DeleteServices: []uint32{id}}) }

// UpsertBackend creates or replaces one backend.
func (m *Maps) UpsertBackend(b Backend) error { return m.Apply(Txn{Backends: []Backend{b}}) }

// DeleteBackend removes one backend; it must no longer be any service's
// endpoint.
func (m *Maps) DeleteBackend(id uint32) error { return m.Apply(Txn{DeleteBackends: []uint32{id}}) }

// Services returns the services in the maps, sorted by id.
func (m *Maps) Services() []Service {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Service, 0, len(m.services))
	for id, e := range m.services {
		out = append(out, e.service(id))
	}
	slices.SortFunc(out, func(a, b Service) int { return int(a.ID) - int(b.ID) })
	return out
}

// Backends returns the backends in the maps, sorted by id.
func (m *Maps) Backends() []Backend {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Backend, 0, len(m.backends))
	for id, e := range m.backends {
		out = append(out, e.backend(id))
	}
	slices.SortFunc(out, func(a, b Backend) int { return int(a.ID) - int(b.ID) })
	return out
}

// Usage reports entries in use and capacity per map.
func (m *Maps) Usage() map[string][2]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string][2]int{}
	for name, max := range m.max {
		out[name] = [2]int{m.count[name], max}
	}
	return out
}

// Stats sums the kernel's per-CPU counters.
func (m *Maps) Stats() (map[string]uint64, error) {
	out := map[string]uint64{}
	for i := layout.Stat(0); i < layout.StatMax; i++ {
		var per []uint64
		if err := m.stats.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read %s: %w", loader.MapStats, err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		out[i.String()] = sum
	}
	return out, nil
}

// Apply writes a transaction. On any error the maps are as they were.
func (m *Maps) Apply(t Txn) error {
	m.mu.Lock()
	defer m.mu.Unlock()

	p, next, err := m.plan(t)
	if err != nil {
		return err
	}
	if err := m.checkCapacity(p); err != nil {
		return err
	}
	if err := m.execute(p, false); err != nil {
		// Undo: walk from the intended state back to the old one. Writes
		// are idempotent and deletes of keys never written are ignored.
		back := m.reversePlan(next, p)
		if rerr := m.execute(back, true); rerr != nil {
			return fmt.Errorf("%w (and rolling back failed too: %v; the maps may be inconsistent until the next full sync)", err, rerr)
		}
		m.closeNewInner(p)
		return err
	}
	m.commit(p, next)
	return nil
}

// state is the mirror after a transaction, for the objects it touches.
type state struct {
	services map[uint32]*svcEntries // nil value: deleted
	backends map[uint32]*beEntries
}

func (m *Maps) plan(t Txn) (*plan, *state, error) {
	next := &state{
		services: make(map[uint32]*svcEntries, len(t.Services)+len(t.DeleteServices)),
		backends: make(map[uint32]*beEntries, len(t.Backends)+len(t.DeleteBackends)),
	}

	for i := range t.Backends {
		b := &t.Backends[i]
		if err := b.validate(); err != nil {
			return nil, nil, err
		}
		if _, dup := next.backends[b.ID]; dup {
			return nil, nil, invalid("workload %d appears twice in one update", b.ID)
		}
		next.backends[b.ID] = backendEntries(b)
	}
	for _, id := range t.DeleteBackends {
		if _, dup := next.backends[id]; dup {
			return nil, nil, invalid("workload %d is both updated and deleted", id)
		}
		next.backends[id] = nil
	}
	for i := range t.Services {
		s := &t.Services[i]
		if err := s.validate(); err != nil {
			return nil, nil, err
		}
		if _, dup := next.services[s.ID]; dup {
			return nil, nil, invalid("service %d appears twice in one update", s.ID)
		}
		e, want := serviceEntries(s, m.maglevSize)
		for p := range want {
			var old []uint32
			if cur := m.services[s.ID]; cur != nil {
				old = cur.slots[p]
			}
			e.slots[p] = planSlots(old, want[p])
			e.value.EpCount[p] = uint32(len(e.slots[p]))
		}
		next.services[s.ID] = e
	}
	for _, id := range t.DeleteServices {
		if _, dup := next.services[id]; dup {
			return nil, nil, invalid("service %d is both updated and deleted", id)
		}
		next.services[id] = nil
	}

	for _, ps := range t.PolicySets {
		if err := ps.Tables.validate(ps.ID); err != nil {
			return nil, nil, err
		}
		if _, live := m.policySets[ps.ID]; live {
			return nil, nil, invalid("policy set %d is already in the kernel; changed policies need a new id", ps.ID)
		}
	}
	if err := m.checkRefs(next); err != nil {
		return nil, nil, err
	}
	if err := m.checkPolicySetRefs(t, next); err != nil {
		return nil, nil, err
	}
	if err := m.checkFrontends(next); err != nil {
		return nil, nil, err
	}
	return m.diff(next, t), next, nil
}

// checkRefs insists every endpoint is a known backend and no backend still
// listed by a service is deleted.
func (m *Maps) checkRefs(next *state) error {
	exists := func(wid uint32) bool {
		if e, ok := next.backends[wid]; ok {
			return e != nil
		}
		return m.backends[wid] != nil
	}
	for id, e := range next.services {
		if e == nil {
			continue
		}
		for _, w := range e.workloads() {
			if !exists(w) {
				return invalid("service %d lists workload %d, which is not in the data path", id, w)
			}
		}
	}
	for wid, e := range next.backends {
		if e != nil {
			continue
		}
		for _, sid := range m.refs[wid] {
			if ns, touched := next.services[sid]; touched {
				if ns == nil || !slices.Contains(ns.workloads(), wid) {
					continue
				}
			}
			return invalid("workload %d is still an endpoint of service %d", wid, sid)
		}
	}
	return m.checkWaypointRefs(next, exists)
}

// checkWaypointRefs insists every waypoint a service or workload names is
// in the data path after the transaction, and that no waypoint goes while
// something still names it.
func (m *Maps) checkWaypointRefs(next *state, backendExists func(uint32) bool) error {
	live := func(r Ref) bool {
		if r.Kind == KindWorkload {
			return backendExists(r.ID)
		}
		if e, ok := next.services[r.ID]; ok {
			return e != nil
		}
		return m.services[r.ID] != nil
	}
	named := func(r Ref) bool { return r.IsSet() && !r.closed() }
	for id, e := range next.services {
		if e != nil && named(e.waypoint()) && !live(e.waypoint()) {
			return invalid("service %d's waypoint %s is not in the data path", id, e.waypoint())
		}
	}
	for id, e := range next.backends {
		if e != nil && named(e.waypoint()) && !live(e.waypoint()) {
			return invalid("workload %d's waypoint %s is not in the data path", id, e.waypoint())
		}
	}
	// A user the transaction leaves alone still names its waypoint.
	stillUses := func(u, wp Ref) bool {
		if u.Kind == KindService {
			if e, ok := next.services[u.ID]; ok {
				return e != nil && e.waypoint() == wp
			}
		} else if e, ok := next.backends[u.ID]; ok {
			return e != nil && e.waypoint() == wp
		}
		return true
	}
	gone := func(wp Ref) error {
		for u := range m.wpUsers[wp] {
			if stillUses(u, wp) {
				return invalid("%s is still the waypoint of %s", wp, u)
			}
		}
		return nil
	}
	for id, e := range next.services {
		if e == nil {
			if err := gone(ServiceRef(id)); err != nil {
				return err
			}
		}
	}
	for id, e := range next.backends {
		if e == nil {
			if err := gone(WorkloadRef(id)); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkPolicySetRefs insists every backend's policy set exists after the
// transaction, and no set still in use is deleted.
func (m *Maps) checkPolicySetRefs(t Txn, next *state) error {
	exists := map[uint32]bool{}
	for id := range m.policySets {
		exists[id] = true
	}
	for _, ps := range t.PolicySets {
		exists[ps.ID] = true
	}
	for _, id := range t.DeletePolicySets {
		delete(exists, id)
	}
	for id, e := range next.backends {
		if e != nil && e.value.AuthzPS != 0 && !exists[e.value.AuthzPS] {
			return invalid("workload %d is guarded by policy set %d, which is not in the data path", id, e.value.AuthzPS)
		}
	}
	if len(t.DeletePolicySets) > 0 {
		for id, e := range m.backends {
			if _, touched := next.backends[id]; touched {
				continue
			}
			if slices.Contains(t.DeletePolicySets, e.value.AuthzPS) {
				return invalid("policy set %d still guards workload %d", e.value.AuthzPS, id)
			}
		}
	}
	return nil
}

// checkFrontends refuses an address claimed by two objects.
func (m *Maps) checkFrontends(next *state) error {
	claimed := make(map[layout.FrontendKey]Ref, len(next.services)+len(next.backends))
	released := map[layout.FrontendKey]bool{}
	claim := func(o Ref, fe feSet) error {
		for _, f := range fe {
			if prev, ok := claimed[f.k]; ok && prev != o {
				return invalid("address %s is claimed by both %s and %s", f.k.Addr, prev, o)
			}
			claimed[f.k] = o
		}
		return nil
	}
	release := func(old, cur feSet) {
		for _, f := range old {
			if !cur.has(f.k) {
				released[f.k] = true
			}
		}
	}
	for id, e := range next.services {
		var fe feSet
		if e != nil {
			fe = e.fe
			if err := claim(ServiceRef(id), fe); err != nil {
				return err
			}
		}
		if old := m.services[id]; old != nil {
			release(old.fe, fe)
		}
	}
	for id, e := range next.backends {
		var fe feSet
		if e != nil {
			fe = e.fe
			if err := claim(WorkloadRef(id), fe); err != nil {
				return err
			}
		}
		if old := m.backends[id]; old != nil {
			release(old.fe, fe)
		}
	}
	for k, o := range claimed {
		if cur, ok := m.feOwner[k]; ok && cur != o && !released[k] {
			return invalid("address %s is already used by %s", k.Addr, cur)
		}
	}
	return nil
}

// commit folds a written transaction into the mirror.
func (m *Maps) commit(p *plan, next *state) {
	if n := len(next.services) + len(next.backends); n >= 1024 {
		m.services = mapsize.Reserve(m.services, len(next.services))
		m.backends = mapsize.Reserve(m.backends, len(next.backends))
		m.refs = mapsize.Reserve(m.refs, len(next.backends))
		m.feOwner = mapsize.Reserve(m.feOwner, n)
	}
	for id, e := range next.services {
		if old := m.services[id]; old != nil {
			m.unuseWaypoint(ServiceRef(id), old.waypoint())
			for _, f := range old.fe {
				delete(m.feOwner, f.k)
			}
			for _, w := range old.workloads() {
				m.refs[w] = slices.DeleteFunc(m.refs[w], func(s uint32) bool { return s == id })
				if len(m.refs[w]) == 0 {
					delete(m.refs, w)
				}
			}
		}
		if e == nil {
			delete(m.services, id)
			if in := m.inner[id]; in != nil {
				in.Close()
				delete(m.inner, id)
			}
			continue
		}
		m.services[id] = e
		m.useWaypoint(ServiceRef(id), e.waypoint())
		if in := m.inner[id]; in != nil && e.maglev == nil {
			in.Close()
			delete(m.inner, id)
		}
		for _, f := range e.fe {
			m.feOwner[f.k] = ServiceRef(id)
		}
		for _, w := range e.workloads() {
			m.refs[w] = append(m.refs[w], id)
		}
	}
	for id, e := range next.backends {
		if old := m.backends[id]; old != nil {
			m.unuseWaypoint(WorkloadRef(id), old.waypoint())
			for _, f := range old.fe {
				delete(m.feOwner, f.k)
			}
		}
		if e == nil {
			delete(m.backends, id)
			delete(m.refs, id)
			continue
		}
		m.backends[id] = e
		m.useWaypoint(WorkloadRef(id), e.waypoint())
		for _, f := range e.fe {
			m.feOwner[f.k] = WorkloadRef(id)
		}
	}
	for id, in := range p.newInner {
		m.inner[id] = in
	}
	for _, ps := range p.psUp {
		m.policySets[ps.ID] = ps.Tables
	}
	for _, id := range p.psDel {
		delete(m.policySets, id)
	}
	for name, n := range p.added {
		m.count[name] += n
	}
	for name, n := range p.removed {
		m.count[name] -= n
	}
}

func (m *Maps) useWaypoint(user, wp Ref) {
	if !wp.IsSet() || wp.closed() {
		return
	}
	if m.wpUsers[wp] == nil {
		m.wpUsers[wp] = map[Ref]bool{}
	}
	m.wpUsers[wp][user] = true
}

func (m *Maps) unuseWaypoint(user, wp Ref) {
	if !wp.IsSet() || wp.closed() {
		return
	}
	delete(m.wpUsers[wp], user)
	if len(m.wpUsers[wp]) == 0 {
		delete(m.wpUsers, wp)
	}
}

func (m *Maps) checkCapacity(p *plan) error {
	for name, add := range p.added {
		if add == 0 {
			continue
		}
		if m.count[name]+add > m.max[name] {
			return &FullError{Map: name, Need: add, Used: m.count[name], Max: m.max[name]}
		}
	}
	return nil
}

func (m *Maps) closeNewInner(p *plan) {
	for _, in := range p.newInner {
		in.Close()
	}
}

// isNotExist matches a delete of a key that is already gone.
func isNotExist(err error) bool { return errors.Is(err, ebpf.ErrKeyNotExist) }
