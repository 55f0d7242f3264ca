package compiler

import (
	"net/netip"

	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/model"
)

// Waypoints. istiod names a destination's waypoint by hostname
// ("namespace/hostname": that service) or by address (the service whose
// VIP it is, else the workload owning it); the kernel gets a reference by
// id and picks a waypoint pod with the waypoint's own load balancing.
//
// A waypoint's own traffic must never be sent to a waypoint (it would loop
// through itself), so an object that anyone names as their waypoint gets
// none of its own even if istiod names one, and so do the workloads backing
// a waypoint service; those workloads' pods are also flagged in km_manage
// (see WaypointWorkload), so nothing they dial goes to a waypoint either.
// "Named by anyone" counts every naming, effective or not, so being a
// waypoint never depends on who else is one.

// settleWaypoints resolves what the waypoint of every object being
// recompiled names, before anything is compiled. Whoever starts or stops
// being a waypoint joins the transaction (with the workloads backing it),
// and so do the users of anything entering or leaving the kernel (their
// reference changes). moved are the addresses whose owner changed: their
// users resolve again.
func (c *Compiler) settleWaypoints(v model.View, svcs map[model.ServiceKey]bool, wls map[string]*work, addWl func(string), moved []netip.Addr) {
	queue := make([]obj, 0, len(svcs)+len(wls))
	queued := make(map[obj]bool, len(svcs)+len(wls))
	push := func(o obj) {
		if queued[o] {
			return
		}
		queued[o] = true
		queue = append(queue, o)
		if o.svc {
			svcs[model.ServiceKey(o.key)] = true
		} else {
			addWl(o.key)
		}
	}
	flipped := func(t obj) {
		push(t)
		if t.svc {
			for uid := range v.Backing(model.ServiceKey(t.key)) {
				push(obj{key: uid})
			}
		}
	}
	for k := range svcs {
		push(obj{svc: true, key: string(k)})
	}
	for uid := range wls {
		push(obj{key: uid})
	}
	for _, a := range moved {
		for u := range c.wpAddrUsers[a] {
			push(u)
		}
	}
	for len(queue) > 0 {
		o := queue[0]
		queue = queue[1:]
		cur := c.wp[o]
		if now := c.named(v, o); now != cur {
			if cur.target.key != "" && c.unname(o, cur.target) {
				flipped(cur.target)
			}
			if cur.addr.IsValid() {
				delete(c.wpAddrUsers[cur.addr], o)
				if len(c.wpAddrUsers[cur.addr]) == 0 {
					delete(c.wpAddrUsers, cur.addr)
				}
			}
			if now.named {
				c.wp[o] = now
			} else {
				delete(c.wp, o)
			}
			if now.target.key != "" && c.name(o, now.target) {
				flipped(now.target)
			}
			if now.addr.IsValid() {
				if c.wpAddrUsers[now.addr] == nil {
					c.wpAddrUsers[now.addr] = map[obj]bool{}
				}
				c.wpAddrUsers[now.addr][o] = true
			}
		}
		if us := c.wpUsers[o]; len(us) > 0 && c.willCompile(v, o) != c.compiled(o) {
			for u := range us {
				push(u)
			}
		}
	}
}

// named resolves what an object's waypoint names now. A workload's is its
// own Workload.waypoint only, never its services': istiod sets that field
// for a waypoint bound to the pod (or its namespace) that serves workloads
// (istio.io/waypoint-for: workload or all), and a waypoint serving only
// services has no chain for a pod's own address, so traffic to the pod's
// IP must go straight to it, as it does in ztunnel.
func (c *Compiler) named(v model.View, o obj) wpName {
	var g *model.Gateway
	if o.svc {
		if s := v.Service(model.ServiceKey(o.key)); s != nil && s.LB.Mode != model.LBModePassthrough {
			g = s.Waypoint
		}
	} else if w := v.Workload(o.key); w != nil {
		g = w.Waypoint
	}
	if !g.IsSet() {
		return wpName{}
	}
	if g.Service != "" {
		return wpName{named: true, target: obj{svc: true, key: string(g.Service)}}
	}
	n := wpName{named: true, addr: g.Address}
	if cl, ok := c.claims[g.Address]; ok {
		n.target = cl.owner()
	}
	return n
}

// name records that user names t; true when t just became a waypoint.
func (c *Compiler) name(user, t obj) bool {
	us := c.wpUsers[t]
	if us == nil {
		us = map[obj]bool{}
		c.wpUsers[t] = us
	}
	us[user] = true
	return len(us) == 1
}

// unname forgets that user names t; true when t stopped being a waypoint.
func (c *Compiler) unname(user, t obj) bool {
	us := c.wpUsers[t]
	if !us[user] {
		return false
	}
	delete(us, user)
	if len(us) > 0 {
		return false
	}
	delete(c.wpUsers, t)
	return true
}

// willCompile tells whether an object is in the kernel once this
// transaction is applied (addresses settled): a service unless it is gone
// or passthrough, a workload while it owns one of its addresses.
func (c *Compiler) willCompile(v model.View, o obj) bool {
	if o.svc {
		s := v.Service(model.ServiceKey(o.key))
		return s != nil && s.LB.Mode != model.LBModePassthrough
	}
	return c.workloadInKernel(o.key, v.Workload(o.key))
}

// compiled tells whether an object is in the kernel now.
func (c *Compiler) compiled(o obj) bool {
	if o.svc {
		r := c.svc[model.ServiceKey(o.key)]
		return r != nil && r.compiled
	}
	r := c.wl[o.key]
	return r != nil && r.compiled
}

// isWaypoint tells whether anyone names o as their waypoint.
func (c *Compiler) isWaypoint(o obj) bool { return len(c.wpUsers[o]) > 0 }

// isWaypointWorkload tells whether w is a waypoint's pod: named as a
// waypoint itself, or backing a service that is one.
func (c *Compiler) isWaypointWorkload(w *model.Workload) bool {
	if c.isWaypoint(obj{key: w.UID}) {
		return true
	}
	for _, sp := range w.Services {
		if c.isWaypoint(obj{svc: true, key: string(sp.Service)}) {
			return true
		}
	}
	return false
}

// waypointRef is the kernel's reference for what an object's waypoint
// names: none for a waypoint itself, ClosedWaypoint when the waypoint
// named is not in the data path (its TCP connections are refused rather
// than let past it).
func (c *Compiler) waypointRef(v model.View, n wpName, exempt bool) maps.Ref {
	if !n.named || exempt {
		return maps.Ref{}
	}
	t := n.target
	if t.key == "" || !c.willCompile(v, t) {
		return maps.ClosedWaypoint
	}
	if t.svc {
		if r := c.svc[model.ServiceKey(t.key)]; r != nil && r.id != 0 {
			return maps.ServiceRef(r.id)
		}
	} else if r := c.wl[t.key]; r != nil && r.id != 0 {
		return maps.WorkloadRef(r.id)
	}
	return maps.ClosedWaypoint
}

// WaypointWorkload reports whether a compiled workload is a waypoint's
// pod: its netns is flagged in km_manage so that nothing it dials is sent
// to a waypoint.
func (c *Compiler) WaypointWorkload(uid string) bool {
	r := c.wl[uid]
	if r == nil || !r.compiled || r.prev == nil {
		return false
	}
	return c.isWaypointWorkload(r.prev)
}
