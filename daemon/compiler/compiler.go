// Package compiler turns model changes into data-path transactions: which
// services and backends to write, with ids, priorities, ports and
// waypoints resolved. It is pure Go; package maps does the kernel writes and
// reduces each service to the entries that really changed.
package compiler

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/model"
)

// Compiler keeps what it compiled last, so a change recompiles only what it
// can affect.
type Compiler struct {
	node  model.Node
	store *model.Store

	svcIDs ids[model.ServiceKey]
	wlIDs  ids[string]
	// Identities are interned to small ids the kernel carries per backend.
	identIDs ids[string]

	// compiled: what is in the data path now.
	services map[model.ServiceKey]bool
	backends map[string]bool
	// members: services a workload is an endpoint of, as last compiled.
	members map[string][]model.ServiceKey
	// waypointUsers: services and workloads whose waypoint names a service.
	waypointUsers map[model.ServiceKey]map[string]bool
	// Address ownership. Objects are "s:<service key>" or "w:<uid>".
	claims  map[netip.Addr][]string // claimants of an address, oldest first
	claimed map[string][]netip.Addr // addresses an object claims
	owner   map[netip.Addr]string   // who owns an address now
	owned   map[string][]netip.Addr // addresses an object owns now
}

// New makes a compiler for this node over a store.
func New(node model.Node, store *model.Store) *Compiler {
	return &Compiler{
		node:          node,
		store:         store,
		svcIDs:        newIDs[model.ServiceKey](),
		wlIDs:         newIDs[string](),
		identIDs:      newIDs[string](),
		services:      map[model.ServiceKey]bool{},
		backends:      map[string]bool{},
		members:       map[string][]model.ServiceKey{},
		waypointUsers: map[model.ServiceKey]map[string]bool{},
		claims:        map[netip.Addr][]string{},
		claimed:       map[string][]netip.Addr{},
		owner:         map[netip.Addr]string{},
		owned:         map[string][]netip.Addr{},
	}
}

// SetNode changes the node's locality (priorities are recomputed on the
// next full build).
func (c *Compiler) SetNode(n model.Node) { c.node = n }

// Node returns the node the compiler ranks localities against.
func (c *Compiler) Node() model.Node { return c.node }

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
	for _, w := range c.store.Workloads() {
		for _, a := range w.Addresses {
			if id, ok := byAddr[a]; ok && c.wlIDs.reserve(w.UID, id) {
				break
			}
		}
	}
	byVIP := map[netip.Addr]uint32{}
	for _, s := range services {
		for _, v := range s.VIPs {
			byVIP[v] = s.ID
		}
	}
	for _, s := range c.store.Services() {
		for _, v := range s.VIPs {
			if id, ok := byVIP[v]; ok && c.svcIDs.reserve(s.Key, id) {
				break
			}
		}
	}
	// Everything else in the kernel keeps its id reserved until the first
	// build deletes it, so new objects never collide with it.
	for _, s := range services {
		c.svcIDs.hold(s.ID)
	}
	for _, b := range backends {
		c.wlIDs.hold(b.ID)
	}
}

// Full compiles the whole store. present lists what the kernel holds (ids);
// anything there the store does not produce is deleted.
func (c *Compiler) Full(presentServices, presentBackends []uint32) maps.Txn {
	ch := model.Changes{}
	for _, s := range c.store.Services() {
		ch.Services = append(ch.Services, s.Key)
	}
	for _, w := range c.store.Workloads() {
		ch.Workloads = append(ch.Workloads, w.UID)
	}
	for k := range c.services {
		ch.Services = append(ch.Services, k)
	}
	for uid := range c.backends {
		ch.Workloads = append(ch.Workloads, uid)
	}
	txn := c.Changes(ch)
	wantSvc := map[uint32]bool{}
	for k := range c.services {
		wantSvc[c.svcIDs.get(k)] = true
	}
	wantBe := map[uint32]bool{}
	for uid := range c.backends {
		wantBe[c.wlIDs.get(uid)] = true
	}
	deleted := map[uint32]bool{}
	for _, id := range txn.DeleteServices {
		deleted[id] = true
	}
	for _, id := range presentServices {
		if !wantSvc[id] && !deleted[id] {
			txn.DeleteServices = append(txn.DeleteServices, id)
			c.svcIDs.release(id)
		}
	}
	deleted = map[uint32]bool{}
	for _, id := range txn.DeleteBackends {
		deleted[id] = true
	}
	for _, id := range presentBackends {
		if !wantBe[id] && !deleted[id] {
			txn.DeleteBackends = append(txn.DeleteBackends, id)
			c.wlIDs.release(id)
		}
	}
	return txn
}

// Changes compiles what a model update can affect. The returned
// transaction is complete: callers apply it as one.
func (c *Compiler) Changes(ch model.Changes) maps.Txn {
	svcs := map[model.ServiceKey]bool{}
	wls := map[string]bool{}
	for _, k := range ch.Services {
		svcs[k] = true
		// Users of a waypoint service follow its address.
		for u := range c.waypointUsers[k] {
			if uid, ok := strings.CutPrefix(u, "w:"); ok {
				wls[uid] = true
			} else {
				svcs[model.ServiceKey(strings.TrimPrefix(u, "s:"))] = true
			}
		}
		// Workloads that may take their waypoint from this service.
		for _, uid := range c.store.Backing(k) {
			wls[uid] = true
		}
	}
	for _, uid := range ch.Workloads {
		wls[uid] = true
	}

	// Addresses first: they decide which backend or service owns an IP, and
	// a change of owner pulls the loser and the winner into this transaction.
	c.claimAddresses(svcs, wls)

	// A workload's services, before and after, see its endpoint change.
	for uid := range wls {
		for _, k := range c.members[uid] {
			svcs[k] = true
		}
		if w := c.store.Workload(uid); w != nil {
			for k := range w.Services {
				svcs[k] = true
			}
		}
	}

	var txn maps.Txn
	for _, uid := range sortedKeys(wls) {
		w := c.store.Workload(uid)
		if w == nil || len(c.owned["w:"+uid]) == 0 {
			if c.backends[uid] {
				// maps deletes it after the services that listed it.
				txn.DeleteBackends = append(txn.DeleteBackends, c.wlIDs.get(uid))
				delete(c.backends, uid)
			}
			c.unuseWaypoint("w:" + uid)
			if w == nil {
				c.wlIDs.drop(uid)
				delete(c.members, uid)
			}
			continue
		}
		txn.Backends = append(txn.Backends, c.backend(w))
		c.backends[uid] = true
		c.members[uid] = c.members[uid][:0]
		for k := range w.Services {
			c.members[uid] = append(c.members[uid], k)
		}
	}
	for _, k := range sortedKeys(svcs) {
		s := c.store.Service(k)
		if s == nil || s.LB.Mode == model.LBModePassthrough {
			// Passthrough: the VIP is left alone and reaches whatever it
			// reaches without us.
			if c.services[k] {
				txn.DeleteServices = append(txn.DeleteServices, c.svcIDs.get(k))
				delete(c.services, k)
			}
			c.unuseWaypoint("s:" + string(k))
			if s == nil {
				c.svcIDs.drop(k)
			}
			continue
		}
		txn.Services = append(txn.Services, c.service(s))
		c.services[k] = true
	}
	return txn
}

// claimAddresses settles ownership of every address the touched objects
// hold or held. A service VIP beats a workload address; otherwise the most
// recent claim wins, and when the owner lets go the previous claimant gets
// the address back. Whoever gains or loses an address is recompiled.
func (c *Compiler) claimAddresses(svcs map[model.ServiceKey]bool, wls map[string]bool) {
	touched := map[netip.Addr]bool{}
	update := func(owner string, now []netip.Addr) {
		for _, a := range c.claimed[owner] {
			if !slices.Contains(now, a) {
				c.claims[a] = slices.DeleteFunc(c.claims[a], func(o string) bool { return o == owner })
				if len(c.claims[a]) == 0 {
					delete(c.claims, a)
				}
				touched[a] = true
			}
		}
		for _, a := range now {
			if !slices.Contains(c.claims[a], owner) {
				c.claims[a] = append(c.claims[a], owner)
				touched[a] = true
			}
		}
		if len(now) == 0 {
			delete(c.claimed, owner)
		} else {
			c.claimed[owner] = slices.Clone(now)
		}
	}
	for k := range svcs {
		var vips []netip.Addr
		if s := c.store.Service(k); s != nil && s.LB.Mode != model.LBModePassthrough {
			vips = s.VIPs
		}
		update("s:"+string(k), vips)
	}
	for uid := range wls {
		var addrs []netip.Addr
		if w := c.store.Workload(uid); w != nil {
			addrs = w.Addresses
		}
		update("w:"+uid, addrs)
	}
	recompile := func(o string) {
		if uid, ok := strings.CutPrefix(o, "w:"); ok {
			wls[uid] = true
		} else if k, ok := strings.CutPrefix(o, "s:"); ok {
			svcs[model.ServiceKey(k)] = true
		}
	}
	for a := range touched {
		was, now := c.owner[a], ownerAmong(c.claims[a])
		if was == now {
			continue
		}
		if was != "" {
			c.owned[was] = slices.DeleteFunc(c.owned[was], func(x netip.Addr) bool { return x == a })
			if len(c.owned[was]) == 0 {
				delete(c.owned, was)
			}
			recompile(was)
		}
		if now != "" {
			c.owned[now] = append(c.owned[now], a)
			c.owner[a] = now
			recompile(now)
		} else {
			delete(c.owner, a)
		}
	}
}

// ownerAmong picks the owner of an address from its claimants, oldest first.
func ownerAmong(list []string) string {
	for i := len(list) - 1; i >= 0; i-- {
		if strings.HasPrefix(list[i], "s:") {
			return list[i]
		}
	}
	if len(list) == 0 {
		return ""
	}
	return list[len(list)-1]
}

func (c *Compiler) service(s *model.Service) maps.Service {
	id := c.svcIDs.get(s.Key)
	out := maps.Service{ID: id, VIPs: c.ownedAddrs("s:" + string(s.Key))}
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

	c.unuseWaypoint("s:" + string(s.Key))
	if s.Waypoint.IsSet() {
		out.Waypoint = c.resolveWaypoint("s:"+string(s.Key), s.Waypoint)
		if !out.Waypoint.IsValid() {
			// The waypoint is gone: fail closed rather than bypass it.
			out.Waypoint = netip.AddrPort{}
			out.Ports = c.ports(s, nil)
			return out
		}
	}

	var eps [][]uint32
	var members []*model.Workload
	for _, uid := range c.store.Backing(s.Key) {
		w := c.store.Workload(uid)
		if w == nil || len(c.owned["w:"+uid]) == 0 {
			continue
		}
		if !w.Healthy && !s.LB.AllowUnhealthy {
			continue
		}
		prio := 0
		if usePrefs {
			prio = model.Priority(s.LB, c.node, w)
		}
		for len(eps) <= prio {
			eps = append(eps, nil)
		}
		eps[prio] = append(eps[prio], c.wlIDs.get(uid))
		members = append(members, w)
	}
	out.Endpoints = eps
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
				mp.Overrides[c.wlIDs.get(w.UID)] = tp
			}
		}
		out = append(out, mp)
	}
	return out
}

func (c *Compiler) backend(w *model.Workload) maps.Backend {
	b := maps.Backend{
		ID:        c.wlIDs.get(w.UID),
		Addresses: c.ownedAddrs("w:" + w.UID),
		Identity:  c.identIDs.get(w.Identity()),
	}
	c.unuseWaypoint("w:" + w.UID)
	g := w.Waypoint
	if !g.IsSet() {
		// The workload's service's waypoint covers direct connects too.
		keys := make([]model.ServiceKey, 0, len(w.Services))
		for k := range w.Services {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if s := c.store.Service(k); s != nil && s.Waypoint.IsSet() {
				g = s.Waypoint
				break
			}
		}
	}
	if g.IsSet() {
		b.Waypoint = c.resolveWaypoint("w:"+w.UID, g)
	}
	return b
}

func (c *Compiler) resolveWaypoint(user string, g *model.Gateway) netip.AddrPort {
	if g.Address.IsValid() {
		return netip.AddrPortFrom(g.Address, g.Port)
	}
	if c.waypointUsers[g.Service] == nil {
		c.waypointUsers[g.Service] = map[string]bool{}
	}
	c.waypointUsers[g.Service][user] = true
	ws := c.store.Service(g.Service)
	if ws == nil || len(ws.VIPs) == 0 {
		return netip.AddrPort{}
	}
	// One address per waypoint in the kernel: IPv4 when there is one.
	vip := ws.VIPs[0]
	for _, v := range ws.VIPs {
		if v.Is4() {
			vip = v
			break
		}
	}
	return netip.AddrPortFrom(vip, g.Port)
}

func (c *Compiler) unuseWaypoint(user string) {
	for k, users := range c.waypointUsers {
		delete(users, user)
		if len(users) == 0 {
			delete(c.waypointUsers, k)
		}
	}
}

func (c *Compiler) ownedAddrs(owner string) []netip.Addr {
	out := slices.Clone(c.owned[owner])
	slices.SortFunc(out, func(a, b netip.Addr) int {
		// IPv4 first: the first IPv4 and the first IPv6 are where
		// connections go.
		if a.Is4() != b.Is4() {
			if a.Is4() {
				return -1
			}
			return 1
		}
		return a.Compare(b)
	})
	return out
}

// Settle tells the compiler the last transaction reached the kernel: ids it
// freed may be reused.
func (c *Compiler) Settle() {
	c.svcIDs.settle()
	c.wlIDs.settle()
}

// ServiceID returns the data-path id of a service (0 if not compiled).
func (c *Compiler) ServiceID(k model.ServiceKey) uint32 {
	if !c.services[k] {
		return 0
	}
	id, _ := c.svcIDs.lookup(k)
	return id
}

// WorkloadID returns the data-path id of a workload (0 if not compiled).
func (c *Compiler) WorkloadID(uid string) uint32 {
	if !c.backends[uid] {
		return 0
	}
	id, _ := c.wlIDs.lookup(uid)
	return id
}

// IdentityID returns the id interned for a SPIFFE identity.
func (c *Compiler) IdentityID(identity string) uint32 { return c.identIDs.get(identity) }

func sortedKeys[K ~string](m map[K]bool) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
