package main

// Kernel test of kmeshctl against the daemon's real admin handler: a
// loaded data path with a small mesh in its maps, served by
// daemon/admin.Handler on an httptest server. Run with
// KMESH_KERNEL_TESTS=1 as root.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/admin"
	"github.com/kmesh-go/kmesh/daemon/dataplane"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

const (
	webKey      = "default/web.default.svc.cluster.local"
	dbKey       = "default/db.default.svc.cluster.local"
	waypointKey = "default/waypoint.default.svc.cluster.local"
)

// adminServer serves a real data path holding web (two workloads, no
// waypoint), db (behind the waypoint service) and one policy.
func adminServer(t *testing.T) *httptest.Server {
	t.Helper()
	testbed.Require(t)
	cg := testbed.NewCgroup(t)
	pins := testbed.PinDir(t)
	dp, err := dataplane.Open(dataplane.Config{
		Loader: loader.Config{PinDir: pins, CgroupPath: cg.Path},
		Node:   model.Node{Name: "node-a", Locality: model.ParseLocality("eu/a")},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dp.Close() })

	svc := func(key, name, vip string, port uint16, wp *model.Gateway) model.Resource {
		return model.Resource{Name: key, Service: &model.Service{
			Key: model.ServiceKey(key), Name: name, Namespace: "default", Hostname: name + ".default.svc.cluster.local",
			VIPs:  []netip.Addr{netip.MustParseAddr(vip)},
			Ports: []model.Port{{ServicePort: port, TargetPort: port + 8000}},
			LB:    model.LoadBalancing{Policy: model.PolicyRandom}, Waypoint: wp,
		}}
	}
	wl := func(uid, name, addr string, backs ...model.ServiceKey) model.Resource {
		w := &model.Workload{UID: uid, Name: name, Addresses: []netip.Addr{netip.MustParseAddr(addr)}, Node: "node-a",
			Healthy: true, Shared: model.ShareOf(model.Shared{Namespace: "default"})}
		for _, k := range backs {
			w.Services = append(w.Services, model.ServicePorts{Service: k})
		}
		return model.Resource{Name: uid, Workload: w}
	}
	res := []model.Resource{
		svc(webKey, "web", "10.96.0.10", 80, nil),
		svc(waypointKey, "waypoint", "10.96.0.20", 15008, nil),
		svc(dbKey, "db", "10.96.0.30", 5432, &model.Gateway{Service: waypointKey, Port: 15008}),
		wl("uid-web-1", "web-1", "10.0.0.11", webKey),
		wl("uid-web-2", "web-2", "10.0.0.12", webKey),
		wl("uid-waypoint", "waypoint-0", "10.0.0.20", waypointKey),
		wl("uid-db", "db-0", "10.0.0.30", dbKey),
		{Name: "default/deny-db", Policy: &model.AuthzPolicy{Key: "default/deny-db", Name: "deny-db", Namespace: "default",
			Scope: model.ScopeNamespaceWide, Action: model.ActionDeny,
			Groups: [][][]model.Match{{{{DestinationPorts: []uint16{5432}}}}}}},
	}
	if rejected, err := dp.Update(res, nil); err != nil || len(rejected) > 0 {
		t.Fatalf("update: %v %v", rejected, err)
	}
	if err := dp.Sync(); err != nil {
		t.Fatal(err)
	}
	// A pod enrolled as kmesh-cni enrolls one; the cookie names no netns,
	// which the dump does not care about.
	if err := dp.Manage().Enroll(4242, maps.Enrollment{}); err != nil {
		t.Fatal(err)
	}

	pods := []*cniv1.Pod{
		{Name: "client", Namespace: "default", ContainerId: "0123456789abcdef", Ips: []string{"10.0.0.40"}, Enrolled: true, Reason: "namespace label"},
		{Name: "other", Namespace: "kube-system", ContainerId: "fedcba", Reason: "not in the mesh"},
	}
	h := admin.Handler(admin.Source{
		Dataplane: dp,
		Ready:     func() bool { return true },
		Status: func(st *admin.Status) {
			st.Version, st.Node, st.Source = "test", "node-a", "file:/etc/kmesh/mesh.json"
			st.Pods, st.EnrolledPods = 2, 1
		},
		Pods: func() []*cniv1.Pod { return pods },
	}, prometheus.NewRegistry())
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// run runs one kmeshctl command against srv and returns its output.
func run(t *testing.T, srv *httptest.Server, jsonOut bool, cmd func(client) error) string {
	t.Helper()
	var out bytes.Buffer
	c := client{base: srv.URL, json: jsonOut, out: &out}
	if err := cmd(c); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// row returns the table line that starts with first, split in columns.
func row(t *testing.T, table, first string) []string {
	t.Helper()
	for _, l := range strings.Split(table, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == first {
			return f
		}
	}
	t.Fatalf("no row %q in:\n%s", first, table)
	return nil
}

func TestKernelKmeshctlAgainstTheAdminAPI(t *testing.T) {
	srv := adminServer(t)

	t.Run("status", func(t *testing.T) {
		out := run(t, srv, false, client.status)
		for k, want := range map[string]string{"ready": "true", "node": "node-a", "source": "file:/etc/kmesh/mesh.json",
			"services": "3", "workloads": "4", "policies": "1", "pods": "2", "enrolledPods": "1"} {
			if got := row(t, out, k); got[1] != want {
				t.Errorf("status %s = %q, want %q", k, got[1], want)
			}
		}
		if strings.Contains(out, "xdsConnects") {
			t.Errorf("a file source shows xDS counters:\n%s", out)
		}
	})

	t.Run("services", func(t *testing.T) {
		out := run(t, srv, false, func(c client) error { return c.dump("services") })
		if h := row(t, out, "SERVICE"); strings.Join(h, " ") != "SERVICE ID VIPS PORTS POLICY WAYPOINT WORKLOADS" {
			t.Errorf("header %v", h)
		}
		web := row(t, out, webKey)
		if web[2] != "10.96.0.10" || web[3] != "80->8080" || web[4] != "random" || web[5] != "-" || web[6] != "2" {
			t.Errorf("web: %v", web)
		}
		if db := row(t, out, dbKey); db[5] != waypointKey+":15008" || db[6] != "1" {
			t.Errorf("db: %v, want waypoint %s:15008 and 1 workload", db, waypointKey)
		}
		// -o json is the server's type, so it decodes back into it.
		var svcs []admin.ServiceDump
		if err := json.Unmarshal([]byte(run(t, srv, true, func(c client) error { return c.dump("services") })), &svcs); err != nil {
			t.Fatal(err)
		}
		if len(svcs) != 3 {
			t.Fatalf("json services: %d", len(svcs))
		}
		for _, s := range svcs {
			if s.ID == 0 || (s.Key == dbKey) != s.Waypoint.IsSet() {
				t.Errorf("json service %s: id %d waypoint %v", s.Key, s.ID, s.Waypoint)
			}
		}
	})

	t.Run("workloads", func(t *testing.T) {
		out := run(t, srv, false, func(c client) error { return c.dump("workloads") })
		if w := row(t, out, "default/web-1"); w[2] != "10.0.0.11" || w[3] != "true" || w[4] != "node-a" {
			t.Errorf("web-1: %v", w)
		}
	})

	t.Run("policies", func(t *testing.T) {
		out := run(t, srv, false, func(c client) error { return c.dump("policies") })
		if p := row(t, out, "default/deny-db"); p[1] != "DENY" || p[2] != "namespace" || p[3] != "false" || p[4] != "1" {
			t.Errorf("policy: %v", p)
		}
	})

	t.Run("maps", func(t *testing.T) {
		out := run(t, srv, false, func(c client) error { return c.dump("maps") })
		if row(t, out, "ENROLLED")[2] != "1" {
			t.Errorf("enrolled netns:\n%s", out)
		}
		// db's kernel service names its waypoint service.
		var m admin.MapDump
		if err := json.Unmarshal([]byte(run(t, srv, true, func(c client) error { return c.dump("maps") })), &m); err != nil {
			t.Fatal(err)
		}
		if len(m.Services) != 3 || len(m.Backends) != 4 || len(m.Enrolled) != 1 {
			t.Fatalf("map dump: %d services, %d backends, %d enrolled", len(m.Services), len(m.Backends), len(m.Enrolled))
		}
		waypoints := 0
		for _, s := range m.Services {
			if s.Waypoint.IsSet() {
				waypoints++
				if r := row(t, out, fmt.Sprint(s.ID)); r[len(r)-1] != fmt.Sprint(s.Waypoint.ID) {
					t.Errorf("kernel service %d: row %v, want waypoint %v", s.ID, r, s.Waypoint)
				}
			}
		}
		if waypoints != 1 {
			t.Errorf("%d kernel services with a waypoint, want 1", waypoints)
		}
	})

	t.Run("pods", func(t *testing.T) {
		out := run(t, srv, false, func(c client) error { return c.dump("pods") })
		if p := row(t, out, "default/client"); p[1] != "0123456789ab" || p[2] != "10.0.0.40" || p[3] != "true" {
			t.Errorf("client pod: %v", p)
		}
		var pods admin.Pods
		if err := json.Unmarshal([]byte(run(t, srv, true, func(c client) error { return c.dump("pods") })), &pods); err != nil {
			t.Fatal(err)
		}
		if len(pods) != 2 || pods[1].GetReason() != "not in the mesh" {
			t.Errorf("json pods: %v", pods)
		}
	})

	t.Run("connections without telemetry", func(t *testing.T) {
		err := client{base: srv.URL, out: &bytes.Buffer{}}.showConnections()
		if err == nil || !strings.Contains(err.Error(), "telemetry is off") {
			t.Errorf("connections with telemetry off: %v", err)
		}
	})
}
