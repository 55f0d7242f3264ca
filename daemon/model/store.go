package model

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/kmesh-go/kmesh/internal/mapsize"
)

// Resource is one named xDS resource, converted. Exactly one of the
// pointers is set.
type Resource struct {
	Name     string
	Service  *Service
	Workload *Workload
	Policy   *AuthzPolicy
}

// addrs are the addresses the resource holds: a service's VIPs, a
// workload's own addresses.
func (r Resource) addrs() []netip.Addr {
	switch {
	case r.Service != nil:
		return r.Service.VIPs
	case r.Workload != nil:
		return r.Workload.Addresses
	}
	return nil
}

// Changes lists what an update touched (created, changed or removed).
type Changes struct {
	Services  []ServiceKey
	Workloads []string
	Policies  []string
}

// Empty reports whether nothing changed.
func (c Changes) Empty() bool {
	return len(c.Services) == 0 && len(c.Workloads) == 0 && len(c.Policies) == 0
}

type ref struct {
	kind int // 1 service, 2 workload, 3 policy
	key  string
}

// Store is the current mesh: what istiod (or the config file) said, minus
// what was rejected. It is safe for concurrent use.
type Store struct {
	mu        sync.RWMutex
	services  map[ServiceKey]*Service
	workloads map[string]*Workload
	policies  map[string]*AuthzPolicy
	byName    map[string]ref
	// backing indexes workloads by the services they list.
	backing map[ServiceKey]map[string]*Workload
	// addrs counts the services and workloads holding each address, so a
	// waypoint named by address can be checked without a scan.
	addrs map[netip.Addr]int
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{
		services:  map[ServiceKey]*Service{},
		workloads: map[string]*Workload{},
		policies:  map[string]*AuthzPolicy{},
		byName:    map[string]ref{},
		backing:   map[ServiceKey]map[string]*Workload{},
		addrs:     map[netip.Addr]int{},
	}
}

// UnresolvedWaypoints finds the upserts whose waypoint names nothing in
// the store as it would be after the update: a service nobody knows, or an
// address no service and no workload holds. They are for the log, not
// reasons to refuse: istiod may send a destination before its waypoint,
// and such a destination's TCP connections are refused (the compiler's
// ClosedWaypoint) until the waypoint arrives. It returns an error per
// resource name.
func (s *Store) UnresolvedWaypoints(upserts []Resource, removes []string) map[string]error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	known := func(k ServiceKey) bool {
		for _, r := range upserts {
			if r.Service != nil && r.Service.Key == k {
				return true
			}
		}
		if _, ok := s.services[k]; !ok {
			return false
		}
		for _, n := range removes {
			if r, ok := s.byName[n]; ok && r.kind == 1 && ServiceKey(r.key) == k {
				return false
			}
		}
		return true
	}
	bad := map[string]error{}
	for _, r := range upserts {
		var g *Gateway
		switch {
		case r.Service != nil:
			g = r.Service.Waypoint
		case r.Workload != nil:
			g = r.Workload.Waypoint
		}
		switch {
		case !g.IsSet():
		case g.Service != "" && !known(g.Service):
			bad[r.Name] = fmt.Errorf("%s: waypoint service %s cannot be resolved (no such service)", r.Name, g.Service)
		case g.Service == "" && !s.addrHeldAfter(g.Address, upserts, removes):
			bad[r.Name] = fmt.Errorf("%s: waypoint address %s cannot be resolved (no service VIP and no workload has it)", r.Name, g.Address)
		}
	}
	return bad
}

// addrHeldAfter tells whether some service or workload holds a after the
// update. Called with the read lock held.
func (s *Store) addrHeldAfter(a netip.Addr, upserts []Resource, removes []string) bool {
	n := s.addrs[a]
	last := make(map[string]Resource, len(upserts))
	for _, r := range upserts {
		last[r.Name] = r
	}
	counted := map[string]bool{}
	gone := func(name string) {
		if counted[name] {
			return
		}
		counted[name] = true
		if old := s.resourceLocked(name); old != nil && slices.Contains(old.addrs(), a) {
			n--
		}
	}
	for _, name := range removes {
		gone(name)
	}
	for name, r := range last {
		gone(name)
		if slices.Contains(r.addrs(), a) {
			n++
		}
	}
	return n > 0
}

// Apply stores upserts and drops removed names (unknown names are fine).
func (s *Store) Apply(upserts []Resource, removes []string) Changes {
	ch, _ := s.ApplyWithUndo(upserts, removes)
	return ch
}

// ApplyWithUndo is Apply that also returns how to put back exactly what was
// there before, for when the kernel refuses the result.
func (s *Store) ApplyWithUndo(upserts []Resource, removes []string) (Changes, func() Changes) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Remember every name the update touches, as it is now (model objects
	// are immutable, so the old pointers are the old state).
	type was struct {
		name string
		res  *Resource
	}
	before := make([]was, 0, len(upserts)+len(removes))
	for _, n := range removes {
		before = append(before, was{n, s.resourceLocked(n)})
	}
	for _, r := range upserts {
		before = append(before, was{r.Name, s.resourceLocked(r.Name)})
	}
	ch := s.applyLocked(upserts, removes)
	undo := func() Changes {
		var up []Resource
		var rm []string
		seen := make(map[string]bool, len(before))
		for _, b := range before {
			if seen[b.name] {
				continue
			}
			seen[b.name] = true
			if b.res == nil {
				rm = append(rm, b.name)
			} else {
				up = append(up, *b.res)
			}
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.applyLocked(up, rm)
	}
	return ch, undo
}

func (s *Store) resourceLocked(name string) *Resource {
	r, ok := s.byName[name]
	if !ok {
		return nil
	}
	res := s.objectLocked(r)
	if res != nil {
		res.Name = name
	}
	return res
}

// objectLocked is the object a name refers to, without its name.
func (s *Store) objectLocked(r ref) *Resource {
	switch r.kind {
	case 1:
		return &Resource{Service: s.services[ServiceKey(r.key)]}
	case 2:
		return &Resource{Workload: s.workloads[r.key]}
	case 3:
		return &Resource{Policy: s.policies[r.key]}
	}
	return nil
}

func (s *Store) applyLocked(upserts []Resource, removes []string) Changes {
	var ch Changes
	if len(upserts) >= 1024 {
		var svcs, wls int
		for _, r := range upserts {
			if r.Service != nil {
				svcs++
			} else if r.Workload != nil {
				wls++
			}
		}
		s.services = mapsize.Reserve(s.services, svcs)
		s.workloads = mapsize.Reserve(s.workloads, wls)
		s.backing = mapsize.Reserve(s.backing, svcs)
		s.byName = mapsize.Reserve(s.byName, len(upserts))
		s.addrs = mapsize.Reserve(s.addrs, svcs+wls)
		ch.Services = make([]ServiceKey, 0, svcs)
		ch.Workloads = make([]string, 0, wls)
	}
	for _, n := range removes {
		r, ok := s.byName[n]
		if !ok {
			continue
		}
		s.drop(r, &ch)
		delete(s.byName, n)
	}
	for _, r := range upserts {
		if old, ok := s.byName[r.Name]; ok {
			// A name can change kind (rare); drop the old object first.
			s.drop(old, &ch)
		}
		for _, a := range r.addrs() {
			s.addrs[a]++
		}
		switch {
		case r.Service != nil:
			s.services[r.Service.Key] = r.Service
			s.byName[r.Name] = ref{1, string(r.Service.Key)}
			ch.Services = append(ch.Services, r.Service.Key)
		case r.Workload != nil:
			w := r.Workload
			s.workloads[w.UID] = w
			s.byName[r.Name] = ref{2, w.UID}
			for _, sp := range w.Services {
				if s.backing[sp.Service] == nil {
					s.backing[sp.Service] = map[string]*Workload{}
				}
				s.backing[sp.Service][w.UID] = w
			}
			ch.Workloads = append(ch.Workloads, w.UID)
		case r.Policy != nil:
			s.policies[r.Policy.Key] = r.Policy
			s.byName[r.Name] = ref{3, r.Policy.Key}
			ch.Policies = append(ch.Policies, r.Policy.Key)
		}
	}
	ch.Services = uniq(ch.Services)
	ch.Workloads = uniq(ch.Workloads)
	ch.Policies = uniq(ch.Policies)
	return ch
}

func (s *Store) drop(r ref, ch *Changes) {
	if old := s.objectLocked(r); old != nil {
		for _, a := range old.addrs() {
			if s.addrs[a]--; s.addrs[a] <= 0 {
				delete(s.addrs, a)
			}
		}
	}
	switch r.kind {
	case 1:
		delete(s.services, ServiceKey(r.key))
		ch.Services = append(ch.Services, ServiceKey(r.key))
	case 2:
		if w := s.workloads[r.key]; w != nil {
			for _, sp := range w.Services {
				delete(s.backing[sp.Service], w.UID)
				if len(s.backing[sp.Service]) == 0 {
					delete(s.backing, sp.Service)
				}
			}
		}
		delete(s.workloads, r.key)
		ch.Workloads = append(ch.Workloads, r.key)
	case 3:
		delete(s.policies, r.key)
		ch.Policies = append(ch.Policies, r.key)
	}
}

func uniq[T ~string](in []T) []T {
	slices.Sort(in)
	return slices.Compact(in)
}

// Service returns a service by key.
func (s *Store) Service(k ServiceKey) *Service {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.services[k]
}

// Workload returns a workload by uid.
func (s *Store) Workload(uid string) *Workload {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.workloads[uid]
}

// Policy returns a policy by key.
func (s *Store) Policy(key string) *AuthzPolicy {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.policies[key]
}

// Backing returns the uids of workloads that list the service, sorted.
func (s *Store) Backing(k ServiceKey) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.backing[k]))
	for uid := range s.backing[k] {
		out = append(out, uid)
	}
	slices.Sort(out)
	return out
}

// Services returns every service, sorted by key.
func (s *Store) Services() []*Service {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*Service, 0, len(s.services))
	for _, v := range s.services {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b *Service) int { return compare(string(a.Key), string(b.Key)) })
	return out
}

// Workloads returns every workload, sorted by uid.
func (s *Store) Workloads() []*Workload {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*Workload, 0, len(s.workloads))
	for _, v := range s.workloads {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b *Workload) int { return compare(a.UID, b.UID) })
	return out
}

// Policies returns every authorization policy, sorted by key.
func (s *Store) Policies() []*AuthzPolicy {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*AuthzPolicy, 0, len(s.policies))
	for _, v := range s.policies {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b *AuthzPolicy) int { return compare(a.Key, b.Key) })
	return out
}

// Names returns every resource name held, for xDS resumption.
func (s *Store) Names() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.byName))
	for n := range s.byName {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Counts returns how many services, workloads and policies are held.
func (s *Store) Counts() (services, workloads, policies int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.services), len(s.workloads), len(s.policies)
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// View reads the store without locking per call. It is valid only inside
// the function given to Read, which holds the read lock throughout.
type View struct{ s *Store }

// Read runs fn with a consistent view of the store.
func (s *Store) Read(fn func(View)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	fn(View{s})
}

func (v View) Service(k ServiceKey) *Service  { return v.s.services[k] }
func (v View) Workload(uid string) *Workload  { return v.s.workloads[uid] }
func (v View) Policy(key string) *AuthzPolicy { return v.s.policies[key] }

// Backing is the workloads listing a service, by uid; callers must not
// modify it.
func (v View) Backing(k ServiceKey) map[string]*Workload { return v.s.backing[k] }

// EachService and EachWorkload visit everything, in no particular order.
func (v View) EachService(fn func(*Service)) {
	for _, s := range v.s.services {
		fn(s)
	}
}

func (v View) EachWorkload(fn func(*Workload)) {
	for _, w := range v.s.workloads {
		fn(w)
	}
}

func (v View) EachPolicy(fn func(*AuthzPolicy)) {
	for _, p := range v.s.policies {
		fn(p)
	}
}
