package dataplane

import (
	"net/netip"
	"testing"

	"github.com/kmesh-go/kmesh/daemon/compiler"
	"github.com/kmesh-go/kmesh/daemon/model"
)

// istiod may send a service or workload naming its waypoint before the
// waypoint's own service or pod (they come from different objects and
// pushes), and with incremental xDS it does not send a resource again
// after it was refused. Refusing it would keep the destination as it was
// (without its waypoint, or unknown altogether): its traffic would bypass
// the waypoint until istiod next changed it. It is taken instead, and the
// compiler refuses its TCP connections until the waypoint is known.
// (Before the first sync only the model is written, so no kernel is
// needed here.)
func TestUpdateTakesADestinationWhoseWaypointIsNotKnownYet(t *testing.T) {
	st := model.NewStore()
	d := &Dataplane{store: st, comp: compiler.New(model.Node{}, st)}
	const web = model.ServiceKey("default/web.default.svc.cluster.local")
	for _, g := range []*model.Gateway{
		{Service: "default/waypoint.default.svc.cluster.local", Port: 15008},
		{Address: netip.MustParseAddr("10.96.0.50"), Port: 15008},
	} {
		svc := &model.Service{Key: web, Namespace: "default", Hostname: "web.default.svc.cluster.local",
			VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Waypoint: g}
		pod := &model.Workload{UID: "a", Shared: &model.Shared{Namespace: "default"},
			Addresses: []netip.Addr{netip.MustParseAddr("10.244.0.11")}, Waypoint: g}
		rejected, err := d.Update([]model.Resource{{Name: string(web), Service: svc}, {Name: "a", Workload: pod}}, nil)
		if err != nil || len(rejected) != 0 {
			t.Errorf("waypoint %v not known yet: rejected %v, err %v; want both taken", g, rejected, err)
		}
		var gotSvc, gotWl *model.Gateway
		st.Read(func(v model.View) {
			if s := v.Service(web); s != nil {
				gotSvc = s.Waypoint
			}
			if w := v.Workload("a"); w != nil {
				gotWl = w.Waypoint
			}
		})
		if gotSvc != g || gotWl != g {
			t.Errorf("waypoint %v not known yet: the store has web %v, a %v", g, gotSvc, gotWl)
		}
	}
}
