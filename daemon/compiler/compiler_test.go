package compiler

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/model"
)

var node = model.Node{Name: "node-a", ClusterID: "c1", Locality: model.Locality{Region: "r1", Zone: "z1", Subzone: "s1"}}

const svcKey = model.ServiceKey("default/web.default.svc.cluster.local")

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func web(mut ...func(*model.Service)) *model.Service {
	s := &model.Service{
		Key: svcKey, Name: "web", Namespace: "default", Hostname: "web.default.svc.cluster.local",
		VIPs:  []netip.Addr{addr("10.96.0.10"), addr("fd00::10")},
		Ports: []model.Port{{ServicePort: 80, TargetPort: 8080}},
		LB:    model.LoadBalancing{Policy: model.PolicyRandom},
	}
	for _, m := range mut {
		m(s)
	}
	return s
}

func pod(uid, ip string, mut ...func(*model.Workload)) *model.Workload {
	// Each test pod has a Shared of its own: tests change it in place.
	w := &model.Workload{
		UID: uid, Name: uid, Addresses: []netip.Addr{addr(ip)}, Healthy: true, Node: "node-a",
		Shared: &model.Shared{Namespace: "default", ClusterID: "c1",
			Locality: model.Locality{Region: "r1", Zone: "z1", Subzone: "s1"}},
		Services: []model.ServicePorts{{Service: svcKey, Ports: []model.Port{{ServicePort: 80, TargetPort: 8080}}}},
	}
	for _, m := range mut {
		m(w)
	}
	return w
}

type harness struct {
	t     *testing.T
	store *model.Store
	c     *Compiler
}

func newHarness(t *testing.T) *harness {
	st := model.NewStore()
	return &harness{t: t, store: st, c: New(node, st)}
}

func (h *harness) apply(rs []model.Resource, removes ...string) maps.Txn {
	h.t.Helper()
	ch := h.store.Apply(rs, removes)
	txn, err := h.c.Changes(ch)
	if err != nil {
		h.t.Fatal(err)
	}
	h.c.Settle()
	return txn
}

func svcRes(s *model.Service) model.Resource { return model.Resource{Name: string(s.Key), Service: s} }
func wlRes(w *model.Workload) model.Resource { return model.Resource{Name: w.UID, Workload: w} }

func endpoints(t *testing.T, txn maps.Txn) [][]uint32 {
	t.Helper()
	if len(txn.Services) != 1 {
		t.Fatalf("want one service in %+v", txn)
	}
	return txn.Services[0].Endpoints
}

func TestServiceWithHealthyEndpoints(t *testing.T) {
	h := newHarness(t)
	txn := h.apply([]model.Resource{
		svcRes(web()),
		wlRes(pod("a", "10.244.0.11")),
		wlRes(pod("b", "10.244.0.12")),
		wlRes(pod("c", "10.244.0.13", func(w *model.Workload) { w.Healthy = false })),
	})
	if len(txn.Backends) != 3 {
		t.Fatalf("backends %+v: an unhealthy workload keeps its backend (identity)", txn.Backends)
	}
	eps := endpoints(t, txn)
	if len(eps) != 1 || len(eps[0]) != 2 {
		t.Fatalf("endpoints %v: want the two healthy ones at priority 0", eps)
	}
	s := txn.Services[0]
	if !slices.Equal(s.VIPs, []netip.Addr{addr("10.96.0.10"), addr("fd00::10")}) || s.Ports[0].TargetPort != 8080 {
		t.Fatalf("service %+v", s)
	}

	// Health policy ALLOW_ALL takes the unhealthy one too.
	txn = h.apply([]model.Resource{svcRes(web(func(s *model.Service) { s.LB.AllowUnhealthy = true }))})
	if eps := endpoints(t, txn); len(eps[0]) != 3 {
		t.Fatalf("ALLOW_ALL endpoints %v", eps)
	}
}

func TestLocalityPriorities(t *testing.T) {
	prefs := []model.Scope{model.ScopeRegion, model.ScopeZone, model.ScopeSubzone}
	for _, mode := range []model.LBMode{model.LBModeFailover, model.LBModeStrict} {
		h := newHarness(t)
		txn := h.apply([]model.Resource{
			svcRes(web(func(s *model.Service) { s.LB.Mode = mode; s.LB.RoutingPreference = prefs })),
			wlRes(pod("same", "10.244.0.11")),
			wlRes(pod("other-subzone", "10.244.0.12", func(w *model.Workload) { w.Locality.Subzone = "s2" })),
			wlRes(pod("other-zone", "10.244.0.13", func(w *model.Workload) { w.Locality.Zone = "z2"; w.Locality.Subzone = "s9" })),
			wlRes(pod("other-region", "10.244.0.14", func(w *model.Workload) { w.Locality.Region = "r2" })),
		})
		eps := endpoints(t, txn)
		id := func(uid string) uint32 { return h.c.WorkloadID(uid) }
		want := [][]uint32{{id("same")}, {id("other-subzone")}, {id("other-zone")}, {id("other-region")}}
		if len(eps) != 4 {
			t.Fatalf("%s: priorities %v, want %v", mode, eps, want)
		}
		for p := range want {
			if !slices.Equal(eps[p], want[p]) {
				t.Fatalf("%s: priorities %v, want %v", mode, eps, want)
			}
		}
		if got := txn.Services[0].Strict; got != (mode == model.LBModeStrict) {
			t.Fatalf("%s: strict=%v", mode, got)
		}
	}
	// No mode: preferences are ignored, everything at priority 0.
	h := newHarness(t)
	txn := h.apply([]model.Resource{
		svcRes(web(func(s *model.Service) { s.LB.RoutingPreference = prefs })),
		wlRes(pod("same", "10.244.0.11")),
		wlRes(pod("far", "10.244.0.14", func(w *model.Workload) { w.Locality.Region = "r2" })),
	})
	if eps := endpoints(t, txn); len(eps) != 1 || len(eps[0]) != 2 {
		t.Fatalf("unspecified mode: %v", eps)
	}
}

func TestPerWorkloadTargetPorts(t *testing.T) {
	h := newHarness(t)
	txn := h.apply([]model.Resource{
		svcRes(web(func(s *model.Service) { s.Ports = []model.Port{{ServicePort: 80}} })), // named target port
		wlRes(pod("a", "10.244.0.11", func(w *model.Workload) {
			w.Services = []model.ServicePorts{{Service: svcKey, Ports: []model.Port{{ServicePort: 80, TargetPort: 9090}}}}
		})),
		wlRes(pod("b", "10.244.0.12", func(w *model.Workload) {
			w.Services = []model.ServicePorts{{Service: svcKey, Ports: []model.Port{{ServicePort: 80, TargetPort: 80}}}}
		})),
	})
	p := txn.Services[0].Ports[0]
	if p.Port != 80 || p.TargetPort != 0 || p.Overrides[h.c.WorkloadID("a")] != 9090 || len(p.Overrides) != 1 {
		t.Fatalf("port %+v", p)
	}
}

func TestPolicyAndAffinityCarryOver(t *testing.T) {
	h := newHarness(t)
	txn := h.apply([]model.Resource{
		svcRes(web(func(s *model.Service) { s.LB.Policy = model.PolicyMaglev; s.LB.Affinity = 30 * time.Second })),
		wlRes(pod("a", "10.244.0.11")),
	})
	if s := txn.Services[0]; s.Policy != maps.Maglev || s.Affinity != 30*time.Second {
		t.Fatalf("service %+v", s)
	}
}

// One workload going away touches its backend and its service, nothing else.
func TestOneWorkloadChangeTouchesOnlyItsServices(t *testing.T) {
	h := newHarness(t)
	other := model.ServiceKey("default/db.default.svc.cluster.local")
	h.apply([]model.Resource{
		svcRes(web()),
		svcRes(&model.Service{Key: other, Namespace: "default", Hostname: "db.default.svc.cluster.local", VIPs: []netip.Addr{addr("10.96.0.20")}, Ports: []model.Port{{ServicePort: 5432}}}),
		wlRes(pod("a", "10.244.0.11")),
		wlRes(pod("b", "10.244.0.12")),
		wlRes(pod("db", "10.244.0.20", func(w *model.Workload) { w.Services = []model.ServicePorts{{Service: other}} })),
	})
	txn := h.apply(nil, "b")
	if len(txn.Services) != 1 || txn.Services[0].ID != h.c.ServiceID(svcKey) {
		t.Fatalf("services touched: %+v", txn.Services)
	}
	if len(txn.DeleteBackends) != 1 || len(txn.Backends) != 0 {
		t.Fatalf("backends: %+v", txn)
	}
	if eps := txn.Services[0].Endpoints; len(eps[0]) != 1 || eps[0][0] != h.c.WorkloadID("a") {
		t.Fatalf("endpoints %v", eps)
	}
}

func TestPassthroughLeavesTheVIPAlone(t *testing.T) {
	h := newHarness(t)
	h.apply([]model.Resource{svcRes(web()), wlRes(pod("a", "10.244.0.11"))})
	id := h.c.ServiceID(svcKey)
	txn := h.apply([]model.Resource{svcRes(web(func(s *model.Service) { s.LB.Mode = model.LBModePassthrough }))})
	if len(txn.Services) != 0 || !slices.Equal(txn.DeleteServices, []uint32{id}) {
		t.Fatalf("passthrough: %+v", txn)
	}
}

// Two workloads claim one address (a pod replaced by one that got its IP
// before the old one is gone): the newer owns it; when it leaves, the older
// gets it back.
func TestAddressConflictsResolveToTheLatest(t *testing.T) {
	h := newHarness(t)
	h.apply([]model.Resource{svcRes(web()), wlRes(pod("old", "10.244.0.11"))})
	oldID := h.c.WorkloadID("old")
	txn := h.apply([]model.Resource{wlRes(pod("new", "10.244.0.11"))})
	var got []uint32
	for _, b := range txn.Backends {
		got = append(got, b.ID)
	}
	if !slices.Contains(txn.DeleteBackends, oldID) || len(txn.Backends) != 1 || txn.Backends[0].ID != h.c.WorkloadID("new") {
		t.Fatalf("new claim: backends %v, deleted %v", got, txn.DeleteBackends)
	}
	txn = h.apply(nil, "new")
	if len(txn.Backends) != 1 || txn.Backends[0].ID == 0 || txn.Backends[0].Addresses[0] != addr("10.244.0.11") {
		t.Fatalf("old workload did not get its address back: %+v", txn)
	}
}

func TestFullDeletesWhatTheKernelHasExtra(t *testing.T) {
	h := newHarness(t)
	h.store.Apply([]model.Resource{svcRes(web()), wlRes(pod("a", "10.244.0.11"))}, nil)
	// The kernel holds service 7 at the same VIP and backend 9 at a's
	// address, plus leftovers 8 and 10.
	h.c.Adopt(
		[]maps.Service{{ID: 7, VIPs: []netip.Addr{addr("10.96.0.10")}}, {ID: 8, VIPs: []netip.Addr{addr("10.96.9.9")}}},
		[]maps.Backend{{ID: 9, Addresses: []netip.Addr{addr("10.244.0.11")}}, {ID: 10, Addresses: []netip.Addr{addr("10.244.9.9")}}},
		nil,
	)
	txn, err := h.c.Full([]uint32{7, 8}, []uint32{9, 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(txn.Services) != 1 || txn.Services[0].ID != 7 || len(txn.Backends) != 1 || txn.Backends[0].ID != 9 {
		t.Fatalf("adopted ids not reused: %+v", txn)
	}
	if !slices.Equal(txn.DeleteServices, []uint32{8}) || !slices.Equal(txn.DeleteBackends, []uint32{10}) {
		t.Fatalf("leftovers not deleted: %+v", txn)
	}
	h.c.Settle()
	// A new object does not collide with adopted ids.
	txn = h.apply([]model.Resource{wlRes(pod("b", "10.244.0.12"))})
	if id := h.c.WorkloadID("b"); id == 9 {
		t.Fatalf("new workload reused a live id %d", id)
	}
}

func denyFrom(ns, name string, scope model.PolicyScope, fromNS string) *model.AuthzPolicy {
	return &model.AuthzPolicy{
		Key: ns + "/" + name, Name: name, Namespace: ns, Scope: scope, Action: model.ActionDeny,
		Groups: [][][]model.Match{{{{Namespaces: []model.StringMatch{model.NewStringMatch(model.MatchExact, fromNS)}}}}},
	}
}

func polRes(p *model.AuthzPolicy) model.Resource { return model.Resource{Name: p.Key, Policy: p} }

func TestPolicySetsFollowPoliciesAndIdentities(t *testing.T) {
	h := newHarness(t)
	sel := denyFrom("default", "deny-evil", model.ScopeWorkloadSelector, "evil")
	txn := h.apply([]model.Resource{
		svcRes(web()),
		polRes(sel),
		wlRes(pod("a", "10.244.0.11", func(w *model.Workload) { w.Policies = []string{sel.Key} })),
		wlRes(pod("b", "10.244.0.12")),
	})
	if len(txn.PolicySets) != 1 {
		t.Fatalf("policy sets %+v", txn.PolicySets)
	}
	set := txn.PolicySets[0]
	for _, b := range txn.Backends {
		want := uint32(0)
		if b.ID == h.c.WorkloadID("a") {
			want = set.ID
		}
		if b.PolicySet != want {
			t.Fatalf("backend %d policy set %d, want %d", b.ID, b.PolicySet, want)
		}
	}

	// A workload from namespace "evil" appears: its identity must be in
	// the tables before its backend exists, so the set is rewritten.
	txn = h.apply([]model.Resource{wlRes(pod("e", "10.244.0.66", func(w *model.Workload) { w.Namespace = "evil"; w.Services = nil }))})
	if len(txn.PolicySets) != 1 || txn.PolicySets[0].ID == set.ID || len(txn.DeletePolicySets) != 1 || txn.DeletePolicySets[0] != set.ID {
		t.Fatalf("new identity: sets %+v deleted %v", txn.PolicySets, txn.DeletePolicySets)
	}
	newSet := txn.PolicySets[0]
	evil := h.c.IdentityID(h.store.Workload("e").Identity())
	if v := newSet.Tables.Decide(evil, addr("10.244.0.66"), addr("10.244.0.11"), 8080); !v.Deny {
		t.Fatalf("evil not denied: %+v", v)
	}
	if v := newSet.Tables.Decide(h.c.IdentityID(h.store.Workload("b").Identity()), addr("10.244.0.12"), addr("10.244.0.11"), 8080); v.Deny {
		t.Fatalf("b denied: %+v", v)
	}
	switched := false
	for _, b := range txn.Backends {
		if b.ID == h.c.WorkloadID("a") {
			switched = b.PolicySet == newSet.ID
		}
	}
	if !switched {
		t.Fatalf("a did not move to the new set: %+v", txn.Backends)
	}

	// A namespace-wide policy guards b (and a) without either changing.
	nsWide := denyFrom("default", "deny-all-c", model.ScopeNamespaceWide, "c")
	txn = h.apply([]model.Resource{polRes(nsWide)})
	guarded := map[uint32]uint32{}
	for _, b := range txn.Backends {
		guarded[b.ID] = b.PolicySet
	}
	if guarded[h.c.WorkloadID("b")] == 0 || guarded[h.c.WorkloadID("a")] == 0 || guarded[h.c.WorkloadID("e")] != 0 {
		t.Fatalf("namespace-wide policy: %v", guarded)
	}

	// Removing the policies returns everyone to no set and deletes the sets.
	txn = h.apply(nil, sel.Key, nsWide.Key)
	for _, b := range txn.Backends {
		if b.PolicySet != 0 {
			t.Fatalf("backend %d still guarded by %d", b.ID, b.PolicySet)
		}
	}
	if len(txn.DeletePolicySets) == 0 {
		t.Fatal("sets not deleted")
	}
}

func TestTooLargePolicyIsRefused(t *testing.T) {
	h := newHarness(t)
	h.c.SetAuthzLimit(4)
	p := &model.AuthzPolicy{Key: "default/ports", Namespace: "default", Scope: model.ScopeNamespaceWide, Action: model.ActionAllow}
	var rule []model.Match
	for i := range 10 {
		rule = append(rule, model.Match{DestinationPorts: []uint16{uint16(100 + i)}})
	}
	p.Groups = [][][]model.Match{{rule}}
	ch := h.store.Apply([]model.Resource{polRes(p), wlRes(pod("a", "10.244.0.11"))}, nil)
	if _, err := h.c.Changes(ch); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("got %v, want a too-large error", err)
	}
}
