package compiler

import (
	"net/netip"
	"testing"

	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/model"
)

const wpKey = model.ServiceKey("default/waypoint.default.svc.cluster.local")

// waypointSvc is a waypoint's service with one VIP per family.
func waypointSvc(mut ...func(*model.Service)) *model.Service {
	s := &model.Service{Key: wpKey, Name: "waypoint", Namespace: "default", Hostname: "waypoint.default.svc.cluster.local",
		VIPs: []netip.Addr{addr("10.96.0.50"), addr("fd00::50")}, Ports: []model.Port{{ServicePort: 15008}},
		LB: model.LoadBalancing{Policy: model.PolicyRandom}}
	for _, m := range mut {
		m(s)
	}
	return s
}

// waypointPod backs the waypoint service.
func waypointPod(uid, ip string, mut ...func(*model.Workload)) *model.Workload {
	return pod(uid, ip, append([]func(*model.Workload){func(w *model.Workload) { w.Services = []model.ServicePorts{{Service: wpKey}} }}, mut...)...)
}

func byHostname(k model.ServiceKey) *model.Gateway { return &model.Gateway{Service: k, Port: 15008} }
func byAddress(a string) *model.Gateway            { return &model.Gateway{Address: addr(a), Port: 15008} }

// waypointsOf reads the compiled waypoint of every service and backend of
// a transaction, by key and uid.
func (h *harness) waypointsOf(txn maps.Txn) (svcs map[model.ServiceKey]maps.Ref, wls map[string]maps.Ref) {
	svcs, wls = map[model.ServiceKey]maps.Ref{}, map[string]maps.Ref{}
	for _, s := range txn.Services {
		for k, r := range h.c.svc {
			if r.id == s.ID {
				svcs[k] = s.Waypoint
			}
		}
	}
	for _, b := range txn.Backends {
		for uid, r := range h.c.wl {
			if r.id == b.ID {
				wls[uid] = b.Waypoint
			}
		}
	}
	return svcs, wls
}

func TestWaypointByHostnameIsTheServiceAndItsPodsAreExempt(t *testing.T) {
	h := newHarness(t)
	txn := h.apply([]model.Resource{
		// The waypoint's own service names a waypoint too (istiod can say
		// so: here itself): ignored.
		svcRes(waypointSvc(func(s *model.Service) { s.Waypoint = byHostname(wpKey) })),
		wlRes(waypointPod("wp-1", "10.244.0.50")),
		wlRes(waypointPod("wp-2", "10.244.0.51")),
		svcRes(web(func(s *model.Service) { s.Waypoint = byHostname(wpKey) })),
		wlRes(pod("a", "10.244.0.11", func(w *model.Workload) { w.Waypoint = byHostname(wpKey) })),
	})
	svcs, wls := h.waypointsOf(txn)
	want := maps.ServiceRef(h.c.ServiceID(wpKey))
	if svcs[svcKey] != want {
		t.Errorf("web's waypoint %v, want %v", svcs[svcKey], want)
	}
	if wls["a"] != want {
		t.Errorf("pod a's own waypoint %v, want %v (direct connects to it go to the waypoint)", wls["a"], want)
	}
	if svcs[wpKey].IsSet() || wls["wp-1"].IsSet() || wls["wp-2"].IsSet() {
		t.Errorf("the waypoint's service %v and pods %v %v have a waypoint: they would loop", svcs[wpKey], wls["wp-1"], wls["wp-2"])
	}
	if !h.c.WaypointWorkload("wp-1") || !h.c.WaypointWorkload("wp-2") || h.c.WaypointWorkload("a") {
		t.Errorf("waypoint workloads: wp-1 %v wp-2 %v a %v, want true true false",
			h.c.WaypointWorkload("wp-1"), h.c.WaypointWorkload("wp-2"), h.c.WaypointWorkload("a"))
	}
	// The waypoint's endpoints are load-balanced as any service's.
	for _, s := range txn.Services {
		if s.ID == h.c.ServiceID(wpKey) && (len(s.Endpoints) != 1 || len(s.Endpoints[0]) != 2) {
			t.Errorf("waypoint endpoints %v, want both pods", s.Endpoints)
		}
	}
}

func TestWaypointByAddressIsTheServiceOwningTheVIP(t *testing.T) {
	for _, vip := range []string{"10.96.0.50", "fd00::50"} {
		h := newHarness(t)
		txn := h.apply([]model.Resource{
			svcRes(waypointSvc()),
			wlRes(waypointPod("wp-1", "10.244.0.50")),
			svcRes(web(func(s *model.Service) { s.Waypoint = byAddress(vip) })),
		})
		svcs, _ := h.waypointsOf(txn)
		if want := maps.ServiceRef(h.c.ServiceID(wpKey)); svcs[svcKey] != want {
			t.Errorf("waypoint by VIP %s: %v, want %v", vip, svcs[svcKey], want)
		}
		if !h.c.WaypointWorkload("wp-1") {
			t.Errorf("waypoint by VIP %s: its pod is not a waypoint workload", vip)
		}
	}
}

func TestWaypointByAddressIsTheWorkloadOwningIt(t *testing.T) {
	for _, ip := range []string{"10.244.0.60", "fd00:10:244::60"} {
		h := newHarness(t)
		// A waypoint pod with no service: named by its own address.
		gw := pod("gw", ip, func(w *model.Workload) { w.Services = nil })
		txn := h.apply([]model.Resource{
			wlRes(gw),
			svcRes(web(func(s *model.Service) { s.Waypoint = byAddress(ip) })),
			wlRes(pod("a", "10.244.0.11", func(w *model.Workload) { w.Waypoint = byAddress(ip) })),
		})
		svcs, wls := h.waypointsOf(txn)
		want := maps.WorkloadRef(h.c.WorkloadID("gw"))
		if svcs[svcKey] != want || wls["a"] != want {
			t.Errorf("waypoint at %s: service %v, pod %v, want %v", ip, svcs[svcKey], wls["a"], want)
		}
		if wls["gw"].IsSet() || !h.c.WaypointWorkload("gw") {
			t.Errorf("waypoint workload at %s: own waypoint %v, flagged %v", ip, wls["gw"], h.c.WaypointWorkload("gw"))
		}
	}
}

// An address is resolved again when its owner changes: a VIP that appears
// on a service wins over the workload that held it.
func TestWaypointAddressFollowsItsOwner(t *testing.T) {
	h := newHarness(t)
	h.apply([]model.Resource{
		wlRes(pod("gw", "10.96.0.77", func(w *model.Workload) { w.Services = nil })),
		svcRes(web(func(s *model.Service) { s.Waypoint = byAddress("10.96.0.77") })),
	})
	txn := h.apply([]model.Resource{svcRes(waypointSvc(func(s *model.Service) { s.VIPs = []netip.Addr{addr("10.96.0.77")} }))})
	svcs, _ := h.waypointsOf(txn)
	if want := maps.ServiceRef(h.c.ServiceID(wpKey)); svcs[svcKey] != want {
		t.Fatalf("after the VIP appeared: %v, want %v", svcs[svcKey], want)
	}
	if h.c.WaypointWorkload("gw") {
		t.Error("the workload that lost the address is still a waypoint")
	}
}

// A waypoint that goes fails its users closed (TCP refused, not let past
// it) in the same transaction; it coming back restores them.
func TestWaypointGoneFailsClosed(t *testing.T) {
	h := newHarness(t)
	h.apply([]model.Resource{
		svcRes(waypointSvc()),
		wlRes(waypointPod("wp-1", "10.244.0.50")),
		svcRes(web(func(s *model.Service) { s.Waypoint = byHostname(wpKey) })),
		wlRes(pod("a", "10.244.0.11", func(w *model.Workload) { w.Waypoint = byHostname(wpKey) })),
	})
	wpID := h.c.ServiceID(wpKey)
	txn := h.apply(nil, string(wpKey))
	svcs, wls := h.waypointsOf(txn)
	if svcs[svcKey] != maps.ClosedWaypoint || wls["a"] != maps.ClosedWaypoint {
		t.Fatalf("waypoint deleted: web %v, a %v, want both closed", svcs[svcKey], wls["a"])
	}
	deleted := false
	for _, id := range txn.DeleteServices {
		deleted = deleted || id == wpID
	}
	if !deleted {
		t.Fatalf("waypoint service not deleted: %+v", txn.DeleteServices)
	}
	for _, s := range txn.Services {
		if s.ID == h.c.ServiceID(svcKey) && len(s.Endpoints) == 0 {
			t.Error("web lost its endpoints: UDP, which never goes to a waypoint, would fail too")
		}
	}
	txn = h.apply([]model.Resource{svcRes(waypointSvc())})
	svcs, wls = h.waypointsOf(txn)
	want := maps.ServiceRef(h.c.ServiceID(wpKey))
	if svcs[svcKey] != want || wls["a"] != want {
		t.Fatalf("waypoint back: web %v, a %v, want %v", svcs[svcKey], wls["a"], want)
	}
}

// Becoming a waypoint takes a service's own waypoint away and flags its
// pods; no longer being one gives them back.
func TestServiceBecomesAndStopsBeingAWaypoint(t *testing.T) {
	h := newHarness(t)
	otherKey := model.ServiceKey("default/other-wp.default.svc.cluster.local")
	h.apply([]model.Resource{
		svcRes(&model.Service{Key: otherKey, Namespace: "default", Hostname: "other-wp.default.svc.cluster.local",
			VIPs: []netip.Addr{addr("10.96.0.60")}, Ports: []model.Port{{ServicePort: 15008}}}),
		// Not a waypoint yet: its own waypoint applies.
		svcRes(waypointSvc(func(s *model.Service) { s.Waypoint = byHostname(otherKey) })),
		wlRes(waypointPod("wp-1", "10.244.0.50", func(w *model.Workload) { w.Waypoint = byHostname(otherKey) })),
	})
	otherRef := maps.ServiceRef(h.c.ServiceID(otherKey))
	if h.c.WaypointWorkload("wp-1") {
		t.Fatal("wp-1 flagged before anyone uses its service as a waypoint")
	}
	txn := h.apply([]model.Resource{svcRes(web(func(s *model.Service) { s.Waypoint = byHostname(wpKey) }))})
	svcs, wls := h.waypointsOf(txn)
	if r, ok := svcs[wpKey]; !ok || r.IsSet() {
		t.Fatalf("once used as a waypoint, the service must be recompiled without its own: %v %v", r, ok)
	}
	if r, ok := wls["wp-1"]; !ok || r.IsSet() || !h.c.WaypointWorkload("wp-1") {
		t.Fatalf("its pod: recompiled %v, waypoint %v, flagged %v", ok, r, h.c.WaypointWorkload("wp-1"))
	}
	txn = h.apply(nil, string(svcKey))
	svcs, wls = h.waypointsOf(txn)
	if svcs[wpKey] != otherRef || wls["wp-1"] != otherRef || h.c.WaypointWorkload("wp-1") {
		t.Fatalf("no longer a waypoint: service %v, pod %v flagged %v, want %v back", svcs[wpKey], wls["wp-1"], h.c.WaypointWorkload("wp-1"), otherRef)
	}
}

// istiod sets Service.waypoint for a waypoint that serves services
// (istio.io/waypoint-for: service, the default, or all) and
// Workload.waypoint only for one the pod itself (or its namespace) binds
// that serves workloads. A waypoint for services is configured with chains
// for its services' VIPs only: a pod of the service addressed directly
// goes straight to the pod, and sending it to the waypoint would find no
// chain there. So a backend takes no waypoint from its service; one it
// names itself applies.
func TestServiceWaypointDoesNotCoverItsPodsAddressedDirectly(t *testing.T) {
	h := newHarness(t)
	txn := h.apply([]model.Resource{
		svcRes(waypointSvc()),
		wlRes(waypointPod("wp-1", "10.244.0.50")),
		svcRes(web(func(s *model.Service) { s.Waypoint = byHostname(wpKey) })),
		wlRes(pod("a", "10.244.0.11")),
		wlRes(pod("b", "10.244.0.12", func(w *model.Workload) { w.Waypoint = byHostname(wpKey) })),
	})
	svcs, wls := h.waypointsOf(txn)
	want := maps.ServiceRef(h.c.ServiceID(wpKey))
	if svcs[svcKey] != want {
		t.Errorf("web's waypoint %v, want %v", svcs[svcKey], want)
	}
	if wls["a"].IsSet() {
		t.Errorf("web's pod a, with no waypoint of its own, has %v: connects to its IP would go to a waypoint for services only", wls["a"])
	}
	if wls["b"] != want {
		t.Errorf("pod b's own waypoint %v, want %v", wls["b"], want)
	}
	// The service's waypoint changing is no reason for its pods to change.
	txn = h.apply([]model.Resource{svcRes(web())})
	if _, wls = h.waypointsOf(txn); wls["a"].IsSet() || wls["b"].IsSet() && wls["b"] != want {
		t.Errorf("after web dropped its waypoint: a %v, b %v", wls["a"], wls["b"])
	}
}

// istiod may send a destination naming its waypoint before the waypoint
// itself (they come from different objects). Until the waypoint is known
// the destination's TCP connections are refused, never let past it; once
// it arrives they go to it, in the same transaction, by hostname or by
// address.
func TestWaypointNamedBeforeItArrives(t *testing.T) {
	for _, g := range []*model.Gateway{byHostname(wpKey), byAddress("10.96.0.50"), byAddress("fd00::50")} {
		h := newHarness(t)
		txn := h.apply([]model.Resource{
			svcRes(web(func(s *model.Service) { s.Waypoint = g })),
			wlRes(pod("a", "10.244.0.11", func(w *model.Workload) { w.Waypoint = g })),
		})
		svcs, wls := h.waypointsOf(txn)
		if svcs[svcKey] != maps.ClosedWaypoint || wls["a"] != maps.ClosedWaypoint {
			t.Errorf("%v not known yet: web %v, a %v, want both closed", g, svcs[svcKey], wls["a"])
		}
		txn = h.apply([]model.Resource{svcRes(waypointSvc()), wlRes(waypointPod("wp-1", "10.244.0.50"))})
		svcs, wls = h.waypointsOf(txn)
		want := maps.ServiceRef(h.c.ServiceID(wpKey))
		if svcs[svcKey] != want || wls["a"] != want || !h.c.WaypointWorkload("wp-1") {
			t.Errorf("%v arrived: web %v, a %v, want %v; wp-1 flagged %v", g, svcs[svcKey], wls["a"], want, h.c.WaypointWorkload("wp-1"))
		}
	}
}
