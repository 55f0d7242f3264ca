package model

import (
	"net/netip"
	"strings"
	"testing"
)

// A waypoint is named by hostname (a service key) or by address (a
// service's VIP or a workload's address); one that names nothing in the
// store as it will be after the update is reported, with a reason.
func TestUnresolvedWaypointsAreReported(t *testing.T) {
	a := netip.MustParseAddr
	wp := func(vips ...string) *Service {
		s := &Service{Key: "default/waypoint.default.svc.cluster.local", Namespace: "default", Hostname: "waypoint.default.svc.cluster.local"}
		for _, v := range vips {
			s.VIPs = append(s.VIPs, a(v))
		}
		return s
	}
	pod := func(uid, ip string) *Workload {
		return &Workload{UID: uid, Shared: &Shared{Namespace: "default"}, Addresses: []netip.Addr{a(ip)}}
	}
	st := NewStore()
	st.Apply([]Resource{
		{Name: "default/waypoint.default.svc.cluster.local", Service: wp("10.96.0.50", "fd00::50")},
		{Name: "gw", Workload: pod("gw", "fd00:10:244::60")},
		{Name: "gw4", Workload: pod("gw4", "10.244.0.60")},
	}, nil)
	byHost := func(k ServiceKey) *Gateway { return &Gateway{Service: k, Port: 15008} }
	byAddr := func(s string) *Gateway { return &Gateway{Address: a(s), Port: 15008} }
	cases := []struct {
		name    string
		g       *Gateway
		also    []Resource
		removes []string
		reason  string // "" when accepted
	}{
		{"hostname", byHost("default/waypoint.default.svc.cluster.local"), nil, nil, ""},
		{"unknown hostname", byHost("default/nowhere.default.svc.cluster.local"), nil, nil, "waypoint service default/nowhere.default.svc.cluster.local cannot be resolved"},
		{"service VIP v4", byAddr("10.96.0.50"), nil, nil, ""},
		{"service VIP v6", byAddr("fd00::50"), nil, nil, ""},
		{"workload address v4", byAddr("10.244.0.60"), nil, nil, ""},
		{"workload address v6", byAddr("fd00:10:244::60"), nil, nil, ""},
		{"nobody's address", byAddr("10.96.9.9"), nil, nil, "waypoint address 10.96.9.9 cannot be resolved"},
		{"holder removed in the same update", byAddr("fd00:10:244::60"), nil, []string{"gw"}, "cannot be resolved"},
		{"holder added in the same update", byAddr("10.96.9.9"), []Resource{{Name: "new", Workload: pod("new", "10.96.9.9")}}, nil, ""},
		{"VIP moved away in the same update", byAddr("10.96.0.50"),
			[]Resource{{Name: "default/waypoint.default.svc.cluster.local", Service: wp("10.96.0.51")}}, nil, "cannot be resolved"},
	}
	for _, c := range cases {
		for _, kind := range []string{"service", "workload"} {
			user := Resource{Name: "user"}
			if kind == "service" {
				user.Service = &Service{Key: "default/web.default.svc.cluster.local", Waypoint: c.g}
			} else {
				user.Workload = &Workload{UID: "user", Shared: &Shared{}, Addresses: []netip.Addr{a("10.244.0.9")}, Waypoint: c.g}
			}
			err := st.UnresolvedWaypoints(append([]Resource{user}, c.also...), c.removes)["user"]
			switch {
			case c.reason == "" && err != nil:
				t.Errorf("%s (%s): reported: %v", c.name, kind, err)
			case c.reason != "" && (err == nil || !strings.Contains(err.Error(), c.reason)):
				t.Errorf("%s (%s): %v, want a report saying %q", c.name, kind, err, c.reason)
			}
		}
	}
	// The address index follows removals and replacements.
	st.Apply([]Resource{{Name: "gw4", Workload: pod("gw4", "10.244.0.61")}}, []string{"gw"})
	for ip, held := range map[string]bool{"10.244.0.60": false, "10.244.0.61": true, "fd00:10:244::60": false} {
		if got := st.addrs[a(ip)] > 0; got != held {
			t.Errorf("after replace and remove: %s held %v, want %v", ip, got, held)
		}
	}
}
