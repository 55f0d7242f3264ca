// Package compiler turns model changes into data-path transactions: which
// services and backends to write, with ids, priorities, ports and
// waypoints resolved. It is pure Go; package maps does the kernel writes and
// reduces each service to the entries that really changed.
package compiler

import (
	"net/netip"
	"slices"

	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/model"
)

// Compiler keeps, per service and workload, what it compiled last, so a
// change recompiles only what it can affect. Model objects are immutable
// (the store replaces them), so keeping the previous pointer is enough to
// know the previous addresses and memberships.
type Compiler struct {
	node  model.Node
	store *model.Store

	svcIDs   ids
	wlIDs    ids
	identIDs map[string]uint32

	svc map[model.ServiceKey]*svcRec
	wl  map[string]*wlRec

	// waypointUsers: services and workloads whose waypoint names a service.
	waypointUsers map[model.ServiceKey]map[obj]bool
	// claims: the claimants of each address, oldest first; the owner is
	// computed from them. Most addresses have exactly one.
	claims map[netip.Addr]claim
}

type svcRec struct {
	id       uint32
	prev     *model.Service // as last compiled (its VIPs are its claims)
	compiled bool           // in the kernel
	waypoint model.ServiceKey
}

type wlRec struct {
	id       uint32
	prev     *model.Workload
	compiled bool
	waypoint model.ServiceKey
}

// obj names a service or a workload.
type obj struct {
	svc bool
	key string
}

type claim struct {
	first obj
	more  []obj // later claimants, oldest first
}

func (c claim) owner() obj {
	for i := len(c.more) - 1; i >= 0; i-- {
		if c.more[i].svc {
			return c.more[i]
		}
	}
	if c.first.svc || len(c.more) == 0 {
		return c.first
	}
	return c.more[len(c.more)-1]
}

// New makes a compiler for this node over a store.
func New(node model.Node, store *model.Store) *Compiler {
	return &Compiler{
		node:          node,
		store:         store,
		svcIDs:        newIDs(),
		wlIDs:         newIDs(),
		identIDs:      map[string]uint32{},
		svc:           map[model.ServiceKey]*svcRec{},
		wl:            map[string]*wlRec{},
		waypointUsers: map[model.ServiceKey]map[obj]bool{},
		claims:        map[netip.Addr]claim{},
	}
}

// SetNode changes the node's locality (priorities are recomputed on the
// next full build).
func (c *Compiler) SetNode(n model.Node) { c.node = n }

// Node returns the node the compiler ranks localities against.
func (c *Compiler) Node() model.Node { return c.node }

func (c *Compiler) svcRec(k model.ServiceKey) *svcRec {
	r := c.svc[k]
	if r == nil {
		r = &svcRec{}
		c.svc[k] = r
	}
	return r
}

func (c *Compiler) wlRec(uid string) *wlRec {
	r := c.wl[uid]
	if r == nil {
		r = &wlRec{}
		c.wl[uid] = r
	}
	return r
}

// Adopt takes over ids already in the kernel (after a daemon restart), so
// the first build rewrites nothing that is right: a backend is matched by
// its addresses, a service by its VIPs.
func (c *Compiler) Adopt(services []maps.Service, backends []maps.Backend) {
	byAddr := map[netip.Addr]uint32{}
	for _, b := range backends {
		for _, a := range b.Addresses {
			byAddr[a] = b.ID
		}
	}
	byVIP := map[netip.Addr]uint32{}
	for _, s := range services {
		for _, v := range s.VIPs {
			byVIP[v] = s.ID
		}
	}
	c.store.Read(func(v model.View) {
		v.EachWorkload(func(w *model.Workload) {
			for _, a := range w.Addresses {
				if id, ok := byAddr[a]; ok && c.wlIDs.reserve(id) {
					c.wlRec(w.UID).id = id
					break
				}
			}
		})
		v.EachService(func(s *model.Service) {
			for _, a := range s.VIPs {
				if id, ok := byVIP[a]; ok && c.svcIDs.reserve(id) {
					c.svcRec(s.Key).id = id
					break
				}
			}
		})
	})
	// Everything else in the kernel keeps its id until the first build
	// deletes it, so new objects never collide with it.
	for _, s := range services {
		c.svcIDs.reserve(s.ID)
	}
	for _, b := range backends {
		c.wlIDs.reserve(b.ID)
	}
}

// Full compiles the whole store. present lists what the kernel holds (ids);
// anything there the store does not produce is deleted.
func (c *Compiler) Full(presentServices, presentBackends []uint32) maps.Txn {
	var ch model.Changes
	c.store.Read(func(v model.View) {
		v.EachService(func(s *model.Service) { ch.Services = append(ch.Services, s.Key) })
		v.EachWorkload(func(w *model.Workload) { ch.Workloads = append(ch.Workloads, w.UID) })
	})
	for k := range c.svc {
		ch.Services = append(ch.Services, k)
	}
	for uid := range c.wl {
		ch.Workloads = append(ch.Workloads, uid)
	}
	txn := c.Changes(ch)
	want := map[uint32]bool{}
	for _, r := range c.svc {
		if r.compiled {
			want[r.id] = true
		}
	}
	for _, id := range txn.DeleteServices {
		want[id] = true // already deleted by the transaction
	}
	for _, id := range presentServices {
		if !want[id] {
			txn.DeleteServices = append(txn.DeleteServices, id)
			c.svcIDs.release(id)
		}
	}
	want = map[uint32]bool{}
	for _, r := range c.wl {
		if r.compiled {
			want[r.id] = true
		}
	}
	for _, id := range txn.DeleteBackends {
		want[id] = true
	}
	for _, id := range presentBackends {
		if !want[id] {
			txn.DeleteBackends = append(txn.DeleteBackends, id)
			c.wlIDs.release(id)
		}
	}
	return txn
}

// Changes compiles what a model update can affect. The returned
// transaction is complete: callers apply it as one.
func (c *Compiler) Changes(ch model.Changes) maps.Txn {
	var txn maps.Txn
	c.store.Read(func(v model.View) { txn = c.changes(v, ch) })
	return txn
}

// work is a workload being recompiled, looked up once.
type work struct {
	w *model.Workload // now (nil: removed)
	r *wlRec
}

func (c *Compiler) changes(v model.View, ch model.Changes) maps.Txn {
	svcs := make(map[model.ServiceKey]bool, len(ch.Services))
	wls := make(map[string]*work, len(ch.Workloads))
	addWl := func(uid string) {
		if _, ok := wls[uid]; !ok {
			wls[uid] = &work{w: v.Workload(uid), r: c.wlRec(uid)}
		}
	}
	for _, k := range ch.Services {
		svcs[k] = true
		// Users of a waypoint service follow its address.
		for u := range c.waypointUsers[k] {
			if u.svc {
				svcs[model.ServiceKey(u.key)] = true
			} else {
				addWl(u.key)
			}
		}
		// Workloads that may take their waypoint from this service.
		var prev *model.Service
		if r := c.svc[k]; r != nil {
			prev = r.prev
		}
		if !sameWaypoint(prev, v.Service(k)) {
			for uid := range v.Backing(k) {
				addWl(uid)
			}
		}
	}
	for _, uid := range ch.Workloads {
		addWl(uid)
	}

	// Addresses first: they decide which backend or service owns an IP, and
	// a change of owner pulls the loser and the winner into this transaction.
	c.claimAddresses(v, svcs, wls, addWl)

	// A workload's services, before and after, see its endpoint change.
	for _, wk := range wls {
		if wk.r.prev != nil {
			for _, sp := range wk.r.prev.Services {
				svcs[sp.Service] = true
			}
		}
		if wk.w != nil {
			for _, sp := range wk.w.Services {
				svcs[sp.Service] = true
			}
		}
	}

	txn := maps.Txn{Backends: make([]maps.Backend, 0, len(wls))}
	for uid, wk := range wls {
		w, r := wk.w, wk.r
		if w == nil || !c.ownsAny(obj{key: uid}, w.Addresses) {
			if r.compiled {
				// maps deletes it after the services that listed it.
				txn.DeleteBackends = append(txn.DeleteBackends, r.id)
				r.compiled = false
			}
			c.unuseWaypoint(obj{key: uid}, &r.waypoint)
			r.prev = w
			if w == nil {
				c.wlIDs.drop(r.id)
				delete(c.wl, uid)
			}
			continue
		}
		if r.id == 0 {
			r.id = c.wlIDs.next()
		}
		txn.Backends = append(txn.Backends, c.backend(v, w, r))
		r.compiled = true
		r.prev = w
	}
	txn.Services = make([]maps.Service, 0, len(svcs))
	for k := range svcs {
		s := v.Service(k)
		r := c.svcRec(k)
		if s == nil || s.LB.Mode == model.LBModePassthrough {
			// Passthrough: the VIP is left alone and reaches whatever it
			// reaches without us.
			if r.compiled {
				txn.DeleteServices = append(txn.DeleteServices, r.id)
				r.compiled = false
			}
			c.unuseWaypoint(obj{svc: true, key: string(k)}, &r.waypoint)
			r.prev = s
			if s == nil {
				c.svcIDs.drop(r.id)
				delete(c.svc, k)
			}
			continue
		}
		if r.id == 0 {
			r.id = c.svcIDs.next()
		}
		txn.Services = append(txn.Services, c.service(v, s, r))
		r.compiled = true
		r.prev = s
	}
	return txn
}

func sameWaypoint(a, b *model.Service) bool {
	var wa, wb *model.Gateway
	if a != nil {
		wa = a.Waypoint
	}
	if b != nil {
		wb = b.Waypoint
	}
	if wa.IsSet() != wb.IsSet() {
		return false
	}
	return !wa.IsSet() || *wa == *wb
}

// claimsOf is what an object claimed when last compiled.
func (c *Compiler) claimsOf(o obj) []netip.Addr {
	if o.svc {
		if r := c.svc[model.ServiceKey(o.key)]; r != nil && r.prev != nil && r.prev.LB.Mode != model.LBModePassthrough {
			return r.prev.VIPs
		}
		return nil
	}
	if r := c.wl[o.key]; r != nil && r.prev != nil {
		return r.prev.Addresses
	}
	return nil
}

// claimAddresses settles ownership of every address the touched objects
// hold or held. A service VIP beats a workload address; otherwise the most
// recent claim wins, and when the owner lets go the previous claimant gets
// the address back. Whoever gains or loses an address is recompiled.
func (c *Compiler) claimAddresses(v model.View, svcs map[model.ServiceKey]bool, wls map[string]*work, addWl func(string)) {
	type change struct {
		addr netip.Addr
		was  obj
		had  bool
	}
	var touched []change
	ownerOf := func(a netip.Addr) (obj, bool) {
		cl, ok := c.claims[a]
		if !ok {
			return obj{}, false
		}
		return cl.owner(), true
	}
	update := func(o obj, now []netip.Addr) {
		old := c.claimsOf(o)
		if slices.Equal(old, now) {
			return
		}
		for _, a := range old {
			if slices.Contains(now, a) {
				continue
			}
			was, had := ownerOf(a)
			touched = append(touched, change{a, was, had})
			cl := c.claims[a]
			if cl.first == o {
				if len(cl.more) == 0 {
					delete(c.claims, a)
					continue
				}
				cl = claim{first: cl.more[0], more: cl.more[1:]}
			} else {
				cl.more = slices.DeleteFunc(slices.Clone(cl.more), func(x obj) bool { return x == o })
			}
			c.claims[a] = cl
		}
		for _, a := range now {
			cl, ok := c.claims[a]
			switch {
			case !ok:
				touched = append(touched, change{addr: a})
				c.claims[a] = claim{first: o}
			case cl.first != o && !slices.Contains(cl.more, o):
				touched = append(touched, change{a, cl.owner(), true})
				cl.more = append(slices.Clone(cl.more), o)
				c.claims[a] = cl
			}
		}
	}
	for k := range svcs {
		var vips []netip.Addr
		if s := v.Service(k); s != nil && s.LB.Mode != model.LBModePassthrough {
			vips = s.VIPs
		}
		update(obj{svc: true, key: string(k)}, vips)
	}
	for uid, wk := range wls {
		var addrs []netip.Addr
		if wk.w != nil {
			addrs = wk.w.Addresses
		}
		update(obj{key: uid}, addrs)
	}
	recompile := func(o obj) {
		if o.svc {
			svcs[model.ServiceKey(o.key)] = true
		} else {
			addWl(o.key)
		}
	}
	for _, ch := range touched {
		now, has := ownerOf(ch.addr)
		if has == ch.had && now == ch.was {
			continue
		}
		if ch.had {
			recompile(ch.was)
		}
		if has {
			recompile(now)
		}
	}
}

// owned returns the addresses (of addrs) an object owns now, IPv4 first:
// the first IPv4 and the first IPv6 are where connections go.
func (c *Compiler) owned(o obj, addrs []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if cl, ok := c.claims[a]; ok && cl.owner() == o {
			out = append(out, a)
		}
	}
	slices.SortStableFunc(out, func(a, b netip.Addr) int {
		switch {
		case a.Is4() == b.Is4():
			return 0
		case a.Is4():
			return -1
		}
		return 1
	})
	return out
}

func (c *Compiler) ownsAny(o obj, addrs []netip.Addr) bool {
	for _, a := range addrs {
		if cl, ok := c.claims[a]; ok && cl.owner() == o {
			return true
		}
	}
	return false
}

func (c *Compiler) service(v model.View, s *model.Service, r *svcRec) maps.Service {
	self := obj{svc: true, key: string(s.Key)}
	out := maps.Service{ID: r.id, VIPs: c.owned(self, s.VIPs)}
	switch s.LB.Policy {
	case model.PolicyRoundRobin:
		out.Policy = maps.RoundRobin
	case model.PolicyMaglev:
		out.Policy = maps.Maglev
	default:
		out.Policy = maps.Random
	}
	out.Affinity = s.LB.Affinity
	usePrefs := s.LB.Mode == model.LBModeStrict || s.LB.Mode == model.LBModeFailover
	out.Strict = s.LB.Mode == model.LBModeStrict && len(s.LB.RoutingPreference) > 0

	c.unuseWaypoint(self, &r.waypoint)
	if s.Waypoint.IsSet() {
		out.Waypoint = c.resolveWaypoint(v, self, s.Waypoint, &r.waypoint)
		if !out.Waypoint.IsValid() {
			// The waypoint is gone: fail closed rather than bypass it.
			out.Ports = c.ports(s, nil)
			return out
		}
	}

	backing := v.Backing(s.Key)
	members := make([]*model.Workload, 0, len(backing))
	for uid, w := range backing {
		wr := c.wl[uid]
		if wr == nil || !wr.compiled {
			continue
		}
		if !w.Healthy && !s.LB.AllowUnhealthy {
			continue
		}
		prio := 0
		if usePrefs {
			prio = model.Priority(s.LB, c.node, w)
		}
		for len(out.Endpoints) <= prio {
			out.Endpoints = append(out.Endpoints, nil)
		}
		out.Endpoints[prio] = append(out.Endpoints[prio], wr.id)
		members = append(members, w)
	}
	out.Ports = c.ports(s, members)
	return out
}

// ports maps the service's ports, with per-workload overrides where a
// workload's own target port differs from the service's.
func (c *Compiler) ports(s *model.Service, members []*model.Workload) []maps.Port {
	out := make([]maps.Port, 0, len(s.Ports))
	for _, p := range s.Ports {
		mp := maps.Port{Port: p.ServicePort, TargetPort: p.TargetPort}
		def := p.TargetPort
		if def == 0 {
			def = p.ServicePort
		}
		for _, w := range members {
			if tp := w.TargetPort(s.Key, p); tp != def {
				if mp.Overrides == nil {
					mp.Overrides = map[uint32]uint16{}
				}
				mp.Overrides[c.wl[w.UID].id] = tp
			}
		}
		out = append(out, mp)
	}
	return out
}

func (c *Compiler) backend(v model.View, w *model.Workload, r *wlRec) maps.Backend {
	self := obj{key: w.UID}
	b := maps.Backend{ID: r.id, Addresses: c.owned(self, w.Addresses), Identity: c.IdentityID(w.Identity())}
	c.unuseWaypoint(self, &r.waypoint)
	g := w.Waypoint
	if !g.IsSet() {
		// The workload's service's waypoint covers direct connects too
		// (Services is sorted, so the choice is stable).
		for _, sp := range w.Services {
			if s := v.Service(sp.Service); s != nil && s.Waypoint.IsSet() {
				g = s.Waypoint
				break
			}
		}
	}
	if g.IsSet() {
		b.Waypoint = c.resolveWaypoint(v, self, g, &r.waypoint)
	}
	return b
}

func (c *Compiler) resolveWaypoint(v model.View, user obj, g *model.Gateway, used *model.ServiceKey) netip.AddrPort {
	if g.Address.IsValid() {
		return netip.AddrPortFrom(g.Address, g.Port)
	}
	if c.waypointUsers[g.Service] == nil {
		c.waypointUsers[g.Service] = map[obj]bool{}
	}
	c.waypointUsers[g.Service][user] = true
	*used = g.Service
	ws := v.Service(g.Service)
	if ws == nil || len(ws.VIPs) == 0 {
		return netip.AddrPort{}
	}
	// One address per waypoint in the kernel: IPv4 when there is one.
	vip := ws.VIPs[0]
	for _, a := range ws.VIPs {
		if a.Is4() {
			vip = a
			break
		}
	}
	return netip.AddrPortFrom(vip, g.Port)
}

func (c *Compiler) unuseWaypoint(user obj, used *model.ServiceKey) {
	if *used == "" {
		return
	}
	k := *used
	*used = ""
	delete(c.waypointUsers[k], user)
	if len(c.waypointUsers[k]) == 0 {
		delete(c.waypointUsers, k)
	}
}

// Settle tells the compiler the last transaction reached the kernel: ids it
// freed may be reused.
func (c *Compiler) Settle() {
	c.svcIDs.settle()
	c.wlIDs.settle()
}

// ServiceID returns the data-path id of a service (0 if not compiled).
func (c *Compiler) ServiceID(k model.ServiceKey) uint32 {
	if r := c.svc[k]; r != nil && r.compiled {
		return r.id
	}
	return 0
}

// WorkloadID returns the data-path id of a workload (0 if not compiled).
func (c *Compiler) WorkloadID(uid string) uint32 {
	if r := c.wl[uid]; r != nil && r.compiled {
		return r.id
	}
	return 0
}

// IdentityID returns the id interned for a SPIFFE identity.
func (c *Compiler) IdentityID(identity string) uint32 {
	id, ok := c.identIDs[identity]
	if !ok {
		id = uint32(len(c.identIDs) + 1)
		c.identIDs[identity] = id
	}
	return id
}
