// Package compiler turns model changes into data-path transactions: which
// services and backends to write, with ids, priorities, ports and
// waypoints resolved. It is pure Go; package maps does the kernel writes and
// reduces each service to the entries that really changed.
package compiler

import (
	"errors"
	"hash/fnv"
	"net/netip"
	"slices"

	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/authz"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/internal/mapsize"
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
	idents   []authz.Identity // every identity the kernel may report
	// identTaken holds the ids in idents; identMax the largest.
	identTaken map[uint32]bool
	identMax   uint32

	// Authorization: one policy set per distinct list of policies guarding
	// workloads, compiled to tables; ids of policies for the counters.
	psIDs      ids
	ps         map[string]*psRec // by policy list
	policyIDs  map[string]uint32
	authzLimit int

	svc map[model.ServiceKey]*svcRec
	wl  map[string]*wlRec
	// wp: what the waypoint of each object that names one names.
	wp map[obj]wpName

	// wpUsers: per object, who names it as their waypoint (by hostname or
	// by address). An object anyone names is a waypoint: it gets no
	// waypoint of its own, nor do the workloads backing it. wpAddrUsers:
	// who names each address, to resolve again when the address changes
	// owner.
	wpUsers     map[obj]map[obj]bool
	wpAddrUsers map[netip.Addr]map[obj]bool
	// claims: the claimants of each address, oldest first; the owner is
	// computed from them. Most addresses have exactly one.
	claims map[netip.Addr]claim

	adoptedPS map[uint32]*maps.AuthzTables // kernel sets not claimed yet

	// Per transaction: sets to write and delete, identities added.
	newPS      []maps.PolicySet
	deadPS     []uint32
	identsGrew bool
	txnErrs    []error
	// scopes: policies that apply by namespace or globally, per transaction.
	scopes *policyScopes
}

// svcRec and wlRec are kept per object, a hundred thousand of them on a
// big node: what only some objects have (a waypoint) is kept elsewhere.
type svcRec struct {
	prev     *model.Service // as last compiled (its VIPs are its claims)
	id       uint32
	compiled bool // in the kernel
}

type wlRec struct {
	prev     *model.Workload
	ps       string // the policy list guarding it, as compiled
	id       uint32
	compiled bool
}

// wpName is what an object's waypoint names, resolved: the service of a
// hostname, or whoever owns the address (a service VIP first, else a
// workload).
type wpName struct {
	named  bool       // a waypoint is configured
	target obj        // zero: named but resolving to nothing
	addr   netip.Addr // named by this address
}

// psRec is a compiled policy set.
type psRec struct {
	policies []string
	id       uint32
	tables   *maps.AuthzTables
	users    map[string]bool
	err      error // the set could not compile: its workloads fail closed
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
		node:        node,
		store:       store,
		svcIDs:      newIDs(),
		wlIDs:       newIDs(),
		identIDs:    map[string]uint32{},
		identTaken:  map[uint32]bool{},
		psIDs:       newIDs(),
		ps:          map[string]*psRec{},
		policyIDs:   map[string]uint32{},
		authzLimit:  DefaultAuthzLimit,
		svc:         map[model.ServiceKey]*svcRec{},
		wl:          map[string]*wlRec{},
		wp:          map[obj]wpName{},
		wpUsers:     map[obj]map[obj]bool{},
		wpAddrUsers: map[netip.Addr]map[obj]bool{},
		claims:      map[netip.Addr]claim{},
	}
}

// DefaultAuthzLimit bounds the verdict combinations of one policy set.
const DefaultAuthzLimit = 65536

// SetAuthzLimit changes that bound (the kernel's verdict map size is the
// real ceiling).
func (c *Compiler) SetAuthzLimit(n int) { c.authzLimit = n }

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
func (c *Compiler) Adopt(services []maps.Service, backends []maps.Backend, policySets map[uint32]*maps.AuthzTables) {
	byAddr := map[netip.Addr]uint32{}
	identOf := map[uint32]uint32{}
	for _, b := range backends {
		if !b.SharedAddresses {
			for _, a := range b.Addresses {
				byAddr[a] = b.ID
			}
		}
		identOf[b.ID] = b.Identity
	}
	// Policy sets the kernel holds are reused when a set compiles to the
	// same tables; the rest go once nothing points at them.
	c.adoptedPS = map[uint32]*maps.AuthzTables{}
	for id, t := range policySets {
		c.psIDs.reserve(id)
		c.adoptedPS[id] = t
	}
	byVIP := map[netip.Addr]uint32{}
	for _, s := range services {
		for _, v := range s.VIPs {
			byVIP[v] = s.ID
		}
	}
	c.store.Read(func(v model.View) {
		v.EachWorkload(func(w *model.Workload) {
			// A shared address names no one backend: such workloads get
			// new ids, and the old backends go with the first build.
			for _, a := range claimable(w) {
				if id, ok := byAddr[a]; ok && c.wlIDs.reserve(id) {
					c.wlRec(w.UID).id = id
					c.adoptIdentity(w, identOf[id])
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
	c.identsGrew = false
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
func (c *Compiler) Full(presentServices, presentBackends []uint32) (maps.Txn, error) {
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
	txn, err := c.Changes(ch)
	if err != nil {
		return txn, err
	}
	for id := range c.adoptedPS {
		txn.DeletePolicySets = append(txn.DeletePolicySets, id)
		c.psIDs.drop(id)
	}
	c.adoptedPS = nil
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
	return txn, nil
}

// Changes compiles what a model update can affect. The returned
// transaction is complete: callers apply it as one. An error (policies that
// cannot be enforced exactly) means the update must be refused; the
// compiler must then be rebuilt from the store as it was.
func (c *Compiler) Changes(ch model.Changes) (maps.Txn, error) {
	var txn maps.Txn
	c.store.Read(func(v model.View) { txn = c.changes(v, ch) })
	err := errors.Join(c.txnErrs...)
	c.txnErrs = nil
	return txn, err
}

// makeRoom sizes the compiler's maps for a transaction that may add
// services and workloads (a snapshot): a map grown one entry at a time
// through a hundred thousand entries rehashes over and over.
func (c *Compiler) makeRoom(services, workloads int) {
	c.svc = mapsize.Reserve(c.svc, services)
	c.svcIDs.taken = mapsize.Reserve(c.svcIDs.taken, services)
	c.wl = mapsize.Reserve(c.wl, workloads)
	c.wlIDs.taken = mapsize.Reserve(c.wlIDs.taken, workloads)
	c.claims = mapsize.Reserve(c.claims, services+workloads)
}

// work is a workload being recompiled, looked up once.
type work struct {
	w *model.Workload // now (nil: removed)
	r *wlRec
	// compile: in the kernel after this transaction (it owns one of its
	// addresses), known once the addresses are settled.
	compile bool
}

func (c *Compiler) changes(v model.View, ch model.Changes) maps.Txn {
	c.makeRoom(len(ch.Services), len(ch.Workloads))
	svcs := make(map[model.ServiceKey]bool, len(ch.Services))
	wls := make(map[string]*work, len(ch.Workloads))
	addWl := func(uid string) {
		if _, ok := wls[uid]; !ok {
			wls[uid] = &work{w: v.Workload(uid), r: c.wlRec(uid)}
		}
	}
	for _, k := range ch.Services {
		svcs[k] = true
	}
	for _, uid := range ch.Workloads {
		addWl(uid)
	}
	c.scopes = newPolicyScopes(v)
	if len(ch.Policies) > 0 {
		// Namespace-wide and global policies guard workloads that did not
		// change: find those whose policy list did.
		for uid, r := range c.wl {
			if r.compiled && r.prev != nil && c.policyList(r.prev) != r.ps {
				addWl(uid)
			}
		}
	}

	// Addresses first: they decide which backend or service owns an IP, and
	// a change of owner pulls the loser and the winner into this transaction.
	moved := c.claimAddresses(v, svcs, wls, addWl)
	// Then who names whom as a waypoint, which decides who is one.
	c.settleWaypoints(v, svcs, wls, addWl, moved)

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

	// Every identity first: policy sets compile against all of them.
	for _, wk := range wls {
		if wk.w != nil {
			c.identity(wk.w)
		}
	}
	// Ids before anything is compiled: a waypoint is named by its id.
	for uid, wk := range wls {
		wk.compile = c.workloadInKernel(uid, wk.w)
		if wk.r.id == 0 && wk.compile {
			wk.r.id = c.wlIDs.next()
		}
	}
	for k := range svcs {
		if r := c.svcRec(k); r.id == 0 && c.willCompile(v, obj{svc: true, key: string(k)}) {
			r.id = c.svcIDs.next()
		}
	}

	txn := maps.Txn{Backends: make([]maps.Backend, 0, len(wls))}
	for uid, wk := range wls {
		w, r := wk.w, wk.r
		if !wk.compile {
			if r.compiled {
				// maps deletes it after the services that listed it.
				txn.DeleteBackends = append(txn.DeleteBackends, r.id)
				r.compiled = false
			}
			r.prev = w
			if w == nil {
				c.wlIDs.drop(r.id)
				delete(c.wl, uid)
				delete(c.wp, obj{key: uid})
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
			r.prev = s
			if s == nil {
				c.svcIDs.drop(r.id)
				delete(c.svc, k)
				delete(c.wp, obj{svc: true, key: string(k)})
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
	c.finishPolicySets(v, &txn, wls, len(ch.Policies) > 0)
	return txn
}

// claimsOf is what an object claimed when last compiled.
func (c *Compiler) claimsOf(o obj) []netip.Addr {
	if o.svc {
		if r := c.svc[model.ServiceKey(o.key)]; r != nil && r.prev != nil && r.prev.LB.Mode != model.LBModePassthrough {
			return r.prev.VIPs
		}
		return nil
	}
	if r := c.wl[o.key]; r != nil {
		return claimable(r.prev)
	}
	return nil
}

// claimable is what a workload claims of its addresses: none when they are
// shared (a host-network pod has its node's IP, as do the others on that
// node), since the address would then stand for one of them at random.
func claimable(w *model.Workload) []netip.Addr {
	if w == nil || w.HostNetwork {
		return nil
	}
	return w.Addresses
}

// workloadInKernel tells whether a workload is in the kernel once its
// addresses are settled: while it owns one of them, or, with shared
// addresses (which nobody owns), while it has any to be connected at.
func (c *Compiler) workloadInKernel(uid string, w *model.Workload) bool {
	switch {
	case w == nil:
		return false
	case w.HostNetwork:
		return len(w.Addresses) > 0
	}
	return c.ownsAny(obj{key: uid}, w.Addresses)
}

// claimAddresses settles ownership of every address the touched objects
// hold or held. A service VIP beats a workload address; otherwise the most
// recent claim wins, and when the owner lets go the previous claimant gets
// the address back. Whoever gains or loses an address is recompiled. It
// returns the addresses whose owner changed.
func (c *Compiler) claimAddresses(v model.View, svcs map[model.ServiceKey]bool, wls map[string]*work, addWl func(string)) []netip.Addr {
	type change struct {
		addr netip.Addr
		was  obj
		had  bool
	}
	touched := make([]change, 0, len(svcs)+len(wls))
	ownerOf := func(a netip.Addr) (obj, bool) {
		cl, ok := c.claims[a]
		if !ok {
			return obj{}, false
		}
		return cl.owner(), true
	}
	update := func(o obj, old, now []netip.Addr) {
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
				// A first claim changes nothing for anyone but o (in the
				// transaction already) and whoever names a as a waypoint.
				if len(c.wpAddrUsers[a]) > 0 {
					touched = append(touched, change{addr: a})
				}
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
		o := obj{svc: true, key: string(k)}
		update(o, c.claimsOf(o), vips)
	}
	for uid, wk := range wls {
		update(obj{key: uid}, claimable(wk.r.prev), claimable(wk.w))
	}
	recompile := func(o obj) {
		if o.svc {
			svcs[model.ServiceKey(o.key)] = true
		} else {
			addWl(o.key)
		}
	}
	var moved []netip.Addr
	for _, ch := range touched {
		now, has := ownerOf(ch.addr)
		if has == ch.had && now == ch.was {
			continue
		}
		moved = append(moved, ch.addr)
		if ch.had {
			recompile(ch.was)
		}
		if has {
			recompile(now)
		}
	}
	return moved
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
	return v4First(out)
}

// v4First orders addresses IPv4 first, keeping the order within a family.
func v4First(out []netip.Addr) []netip.Addr {
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
	// The model's policy names (the kmesh LB extension's vocabulary) become
	// the kernel's enum here and nowhere else.
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

	out.Waypoint = c.waypointRef(v, c.wp[self], c.isWaypoint(self))

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
	b := maps.Backend{ID: r.id, Addresses: c.owned(self, w.Addresses), Identity: c.identity(w)}
	if w.HostNetwork {
		b.Addresses, b.SharedAddresses = v4First(slices.Clone(w.Addresses)), true
	}
	b.PolicySet = c.policySet(v, w, r)
	b.Waypoint = c.waypointRef(v, c.wp[self], c.isWaypointWorkload(w))
	return b
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

// IdentityID returns the id interned for a SPIFFE identity (0: unknown).
func (c *Compiler) IdentityID(identity string) uint32 { return c.identIDs[identity] }

// identity interns a workload's identity; a new one makes every policy set
// recompile before the transaction ends (its class must be right before
// any backend carries it).
func (c *Compiler) identity(w *model.Workload) uint32 {
	key := w.Identity()
	id, ok := c.identIDs[key]
	if !ok {
		id = c.identMax + 1
		c.addIdentity(w, key, id)
	}
	return id
}

func (c *Compiler) addIdentity(w *model.Workload, key string, id uint32) {
	c.identIDs[key] = id
	c.identTaken[id] = true
	c.identMax = max(c.identMax, id)
	c.idents = append(c.idents, authz.Identity{ID: id, TrustDomain: w.TrustDomain, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount})
	c.identsGrew = true
}

// WorkloadAt returns the compiled workload owning an address (0: none).
func (c *Compiler) WorkloadAt(a netip.Addr) (uid string, id uint32) {
	cl, ok := c.claims[a.Unmap()]
	if !ok {
		return "", 0
	}
	o := cl.owner()
	if o.svc {
		return "", 0
	}
	if r := c.wl[o.key]; r != nil && r.compiled {
		return o.key, r.id
	}
	return "", 0
}

// IdentityOf returns the identity id the kernel carries for a workload.
func (c *Compiler) IdentityOf(uid string) uint32 {
	r := c.wl[uid]
	if r == nil || r.prev == nil {
		return 0
	}
	return c.identIDs[r.prev.Identity()]
}

// adoptIdentity keeps the id a previous run gave an identity, so backends
// and policy tables compile to what the kernel already holds.
func (c *Compiler) adoptIdentity(w *model.Workload, id uint32) {
	key := w.Identity()
	if id == 0 {
		return
	}
	if _, ok := c.identIDs[key]; ok || c.identTaken[id] {
		return // known, or the id is another identity's
	}
	c.addIdentity(w, key, id)
}

// PolicyID returns the counter id of a policy key (0: none yet).
func (c *Compiler) PolicyID(key string) uint32 { return c.policyIDs[key] }

// PolicyKeys maps counter ids back to policy keys.
func (c *Compiler) PolicyKeys() map[uint32]string {
	out := make(map[uint32]string, len(c.policyIDs))
	for k, id := range c.policyIDs {
		out[id] = k
	}
	return out
}

// policyID numbers a policy for the kernel's counters. The number is a
// hash of the key, so it is the same after a restart and on every node;
// a collision (rare) takes the next free number.
func (c *Compiler) policyID(key string) uint32 {
	if id, ok := c.policyIDs[key]; ok {
		return id
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	id := h.Sum32()
	taken := map[uint32]bool{0: true, authz.NoAllowID: true}
	for _, x := range c.policyIDs {
		taken[x] = true
	}
	for taken[id] {
		id++
	}
	c.policyIDs[key] = id
	return id
}
