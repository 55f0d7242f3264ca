package maps

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/bpf/layout"
)

// planSlots must place exactly the wanted set, keep every surviving workload
// whose index still exists where it was, and change no more slots than the
// removals and additions force.
func TestPlanSlotsKeepsPlacesAndMovesLittle(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		size := 12
		if r.IntN(4) == 0 {
			size = 80 // exercise the large-list path too
		}
		old := randomSet(r, r.IntN(size))
		want := randomSet(r, r.IntN(size))
		next := planSlots(old, want)

		if !slices.Equal(slices.Sorted(slices.Values(next)), slices.Sorted(slices.Values(want))) {
			t.Fatalf("old %v want %v: placed %v", old, want, next)
		}
		changed := 0
		for i := range next {
			if i < len(old) && slices.Contains(want, old[i]) && next[i] != old[i] {
				t.Fatalf("old %v want %v: %d moved from its slot %d (%v)", old, want, old[i], i+1, next)
			}
			if i >= len(old) || next[i] != old[i] {
				changed++
			}
		}
		// Lower bound on writes: every slot whose old occupant is gone, plus
		// every index past the old end.
		forced := 0
		for i := range min(len(old), len(want)) {
			if !slices.Contains(want, old[i]) {
				forced++
			}
		}
		forced += max(0, len(want)-len(old))
		if changed != forced {
			t.Fatalf("old %v want %v: %d slot writes, %d needed (%v)", old, want, changed, forced, next)
		}
	}
}

func randomSet(r *rand.Rand, n int) []uint32 {
	seen := map[uint32]bool{}
	var out []uint32
	for len(out) < n {
		v := uint32(r.IntN(2*n+8) + 1)
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// mirrorOnly is a Maps with no kernel behind it: plans can be made and
// committed, never executed.
func mirrorOnly() *Maps {
	return &Maps{
		maglevSize: 13,
		services:   map[uint32]*svcEntries{},
		backends:   map[uint32]*beEntries{},
		inner:      map[uint32]*ebpf.Map{},
		feOwner:    map[layout.FrontendKey]Ref{},
		wpUsers:    map[Ref]map[Ref]bool{},
		refs:       map[uint32][]uint32{},
		count:      map[string]int{},
		policySets: map[uint32]*AuthzTables{},
		max:        map[string]int{},
	}
}

func (m *Maps) planAndCommit(t *testing.T, txn Txn) *plan {
	t.Helper()
	p, next, err := m.plan(txn)
	if err != nil {
		t.Fatal(err)
	}
	m.commit(p, next)
	return p
}

func (p *plan) writes() int {
	return len(p.feDel) + len(p.beUp.keys) + len(p.beUpLate.keys) + len(p.portUp.keys) + len(p.ovrUp.keys) + len(p.epUp.keys) +
		len(p.maglevUp) + len(p.svcUp.keys) + len(p.feUp.keys) + len(p.epDel) + len(p.ovrDel) +
		len(p.portDel) + len(p.maglevDel) + len(p.svcDel) + len(p.beDel)
}

// One endpoint added or removed costs one or two map writes (plus the delete
// of the slot that fell off the end), never a rewrite of the service.
func TestOneEndpointChangeIsOneOrTwoWrites(t *testing.T) {
	m := mirrorOnly()
	var bes []Backend
	for i := uint32(1); i <= 50; i++ {
		bes = append(bes, Backend{ID: i, Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, 0, byte(i)})}})
	}
	svc := Service{ID: 7, VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.7")}, Ports: []Port{{Port: 80, TargetPort: 8080}}}
	list := make([]uint32, 40)
	for i := range list {
		list[i] = uint32(i + 1)
	}
	svc.Endpoints = [][]uint32{list}
	m.planAndCommit(t, Txn{Backends: bes, Services: []Service{svc}})

	svc.Endpoints = [][]uint32{append(slices.Clone(list), 41)}
	p := m.planAndCommit(t, Txn{Services: []Service{svc}})
	if len(p.epUp.keys) != 1 || len(p.svcUp.keys) != 1 || p.writes() != 2 {
		t.Fatalf("adding one endpoint: %d writes (%d endpoint, %d service)", p.writes(), len(p.epUp.keys), len(p.svcUp.keys))
	}
	if p.epUp.keys[0].Index != 41 {
		t.Fatalf("new endpoint written at index %d, want 41 (past the end)", p.epUp.keys[0].Index)
	}

	// Remove one from the middle: the last moves into its slot, the count
	// drops, the old last slot is deleted.
	cur := append(slices.Clone(list), 41)
	without := slices.DeleteFunc(slices.Clone(cur), func(w uint32) bool { return w == 10 })
	svc.Endpoints = [][]uint32{without}
	p = m.planAndCommit(t, Txn{Services: []Service{svc}})
	if len(p.epUp.keys) != 1 || p.epUp.keys[0].Index != 10 || p.epUp.vals[0].WorkloadID != 41 ||
		len(p.svcUp.keys) != 1 || len(p.epDel) != 1 || p.epDel[0].Index != 41 || p.writes() != 3 {
		t.Fatalf("removing one endpoint: %+v", p)
	}

	// Removing the one in the last slot (40, since 41 moved to slot 10) is a
	// count change and a delete.
	svc.Endpoints = [][]uint32{slices.DeleteFunc(slices.Clone(without), func(w uint32) bool { return w == 40 })}
	p = m.planAndCommit(t, Txn{Services: []Service{svc}})
	if len(p.epUp.keys) != 0 || len(p.svcUp.keys) != 1 || len(p.epDel) != 1 || p.writes() != 2 {
		t.Fatalf("removing the last endpoint: %+v", p)
	}

	// Nothing changed: nothing written.
	if p = m.planAndCommit(t, Txn{Services: []Service{svc}}); p.writes() != 0 {
		t.Fatalf("unchanged service: %d writes", p.writes())
	}
}

func TestBadUpdatesAreRefusedBeforeAnyWrite(t *testing.T) {
	m := mirrorOnly()
	m.planAndCommit(t, Txn{Backends: []Backend{{ID: 1, Addresses: []netip.Addr{netip.MustParseAddr("10.244.0.1")}}}})
	vip := []netip.Addr{netip.MustParseAddr("10.96.0.1")}
	m.planAndCommit(t, Txn{Services: []Service{{ID: 1, VIPs: vip, Endpoints: [][]uint32{{1}}}}})
	cases := map[string]Txn{
		"unknown workload":     {Services: []Service{{ID: 2, Endpoints: [][]uint32{{9}}}}},
		"service id 0":         {Services: []Service{{ID: 0}}},
		"duplicate endpoint":   {Services: []Service{{ID: 2, Endpoints: [][]uint32{{1}, {1}}}}},
		"too many priorities":  {Services: []Service{{ID: 2, Endpoints: make([][]uint32, 9)}}},
		"unknown policy":       {Services: []Service{{ID: 2, Policy: 9}}},
		"VIP of another":       {Services: []Service{{ID: 2, VIPs: vip}}},
		"VIP is a pod address": {Services: []Service{{ID: 2, VIPs: []netip.Addr{netip.MustParseAddr("10.244.0.1")}}}},
		"delete used backend":  {DeleteBackends: []uint32{1}},
		"port 0":               {Services: []Service{{ID: 2, Ports: []Port{{Port: 0}}}}},
		"unknown waypoint":     {Services: []Service{{ID: 2, Waypoint: ServiceRef(9)}}},
		"unknown waypoint pod": {Backends: []Backend{{ID: 2, Waypoint: WorkloadRef(9)}}},
		"own waypoint":         {Services: []Service{{ID: 2, Waypoint: ServiceRef(2)}}},
		"waypoint kind":        {Services: []Service{{ID: 2, Waypoint: Ref{Kind: 7, ID: 1}}}},
	}
	for name, txn := range cases {
		if _, _, err := m.plan(txn); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	// Deleting the service and its backend together is fine; a VIP can move
	// from a deleted service to a new one in one update.
	if _, _, err := m.plan(Txn{DeleteServices: []uint32{1}, Services: []Service{{ID: 2, VIPs: vip}}, DeleteBackends: []uint32{1}}); err != nil {
		t.Fatal(err)
	}
}

// A waypoint is named by id, so it must exist for as long as something
// names it (a freed id could go to another object), and it reaches the
// kernel before its users.
func TestWaypointReferencesStayWhole(t *testing.T) {
	m := mirrorOnly()
	pod := func(id uint32, wp Ref) Backend {
		return Backend{ID: id, Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, 0, byte(id)})}, Waypoint: wp}
	}
	vip := func(b byte) []netip.Addr { return []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, b})} }
	wp := Service{ID: 9, VIPs: vip(9), Endpoints: [][]uint32{{1}}}
	user := Service{ID: 3, VIPs: vip(3), Endpoints: [][]uint32{{2}}, Waypoint: ServiceRef(9)}
	// One transaction creates the waypoint, a user service and a pod that
	// inherits the waypoint: the waypoint service leads the service batch,
	// and the pod naming it is written after the services.
	p := m.planAndCommit(t, Txn{Backends: []Backend{pod(1, Ref{}), pod(2, ServiceRef(9))}, Services: []Service{user, wp}})
	if !slices.Equal(p.svcUp.keys, []uint32{9, 3}) {
		t.Fatalf("service batch order %v, want the waypoint 9 first", p.svcUp.keys)
	}
	if !slices.Equal(p.beUp.keys, []uint32{1}) || !slices.Equal(p.beUpLate.keys, []uint32{2}) {
		t.Fatalf("backends early %v late %v, want the one naming the new waypoint late", p.beUp.keys, p.beUpLate.keys)
	}

	// Pod 5 is pod 4's waypoint.
	m.planAndCommit(t, Txn{Backends: []Backend{pod(5, Ref{}), pod(4, WorkloadRef(5))}})
	noWP := user
	noWP.Waypoint = Ref{}
	refused := map[string]Txn{
		"waypoint deleted under its users": {DeleteServices: []uint32{9}},
		"one user left":                    {DeleteServices: []uint32{9}, Services: []Service{noWP}},
		"workload waypoint deleted":        {DeleteBackends: []uint32{5}},
	}
	for name, txn := range refused {
		_, _, err := m.plan(txn)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "still the waypoint of") {
			t.Errorf("%s: %v, want ErrInvalid: still the waypoint of ...", name, err)
		}
	}
	// Users that let go in the same transaction free the waypoint.
	m.planAndCommit(t, Txn{Services: []Service{noWP}, Backends: []Backend{pod(2, Ref{})}, DeleteServices: []uint32{9}})
	m.planAndCommit(t, Txn{Backends: []Backend{pod(4, Ref{})}, DeleteBackends: []uint32{5}})
	if len(m.wpUsers) != 0 {
		t.Fatalf("waypoint users left: %v", m.wpUsers)
	}
}

// Dumps name references as "service 7": the kind's name is the kernel
// enum's generated one.
func TestRefText(t *testing.T) {
	for want, r := range map[string]Ref{"service 7": ServiceRef(7), "workload 3": WorkloadRef(3), "closed": ClosedWaypoint, "": {}} {
		b, _ := r.MarshalText()
		if string(b) != want {
			t.Errorf("%#v reads %q, want %q", r, b, want)
		}
		var back Ref
		if err := back.UnmarshalText(b); err != nil || back != r {
			t.Errorf("%q reads back as %#v (%v)", b, back, err)
		}
	}
	if err := new(Ref).UnmarshalText([]byte("pod 1")); err == nil {
		t.Error("an unknown kind was accepted")
	}
}
