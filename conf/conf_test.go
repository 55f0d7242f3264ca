package conf_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"google.golang.org/protobuf/encoding/protojson"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	"sigs.k8s.io/yaml"

	"github.com/kmesh-go/kmesh/conf"
	"github.com/kmesh-go/kmesh/daemon/configfile"
	"github.com/kmesh-go/kmesh/install/cniconf"
	"github.com/kmesh-go/kmesh/install/installer"
	pluginconf "github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/waypoint/bootstrap"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/translate"
)

// decodeDemo reads the demo file the strict way: unknown top-level keys and
// unknown protobuf fields are errors, so a misspelt field cannot hide.
func decodeDemo(t *testing.T) ([]*workloadapi.Address, []*security.Authorization) {
	t.Helper()
	js, err := yaml.YAMLToJSON(conf.DemoDaemonConfig)
	if err != nil {
		t.Fatalf("kmesh-demo.yaml is not YAML: %v", err)
	}
	var file struct {
		Addresses      []json.RawMessage `json:"addresses"`
		Authorizations []json.RawMessage `json:"authorizations"`
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		t.Fatalf("kmesh-demo.yaml top level: %v", err)
	}
	var addrs []*workloadapi.Address
	for i, raw := range file.Addresses {
		a := &workloadapi.Address{}
		if err := protojson.Unmarshal(raw, a); err != nil {
			t.Errorf("addresses[%d]: %v", i, err)
			continue
		}
		addrs = append(addrs, a)
	}
	var authz []*security.Authorization
	for i, raw := range file.Authorizations {
		a := &security.Authorization{}
		if err := protojson.Unmarshal(raw, a); err != nil {
			t.Errorf("authorizations[%d]: %v", i, err)
			continue
		}
		authz = append(authz, a)
	}
	return addrs, authz
}

func ip(t *testing.T, b []byte) string {
	t.Helper()
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		t.Errorf("%x is not an IP address", b)
	}
	return a.String()
}

func TestDemoDaemonConfig(t *testing.T) {
	addrs, authz := decodeDemo(t)
	services := map[string]*workloadapi.Service{}
	var workloads []*workloadapi.Workload
	for _, a := range addrs {
		if s := a.GetService(); s != nil {
			services[s.GetName()] = s
		}
		if w := a.GetWorkload(); w != nil {
			workloads = append(workloads, w)
		}
	}
	if len(services) != 3 || len(workloads) != 6 || len(authz) != 1 {
		t.Fatalf("%d services, %d workloads, %d policies; want 3, 6, 1", len(services), len(workloads), len(authz))
	}
	want := map[string]struct {
		vip      string
		port     uint32
		backends []string // .11 .. .16, in file order
	}{
		"echo":     {"10.96.0.10", 80, []string{"10.244.0.11", "10.244.0.12", "10.244.0.13"}},
		"waypoint": {"10.96.0.30", 15008, []string{"10.244.0.14"}},
		"web":      {"10.96.0.20", 80, []string{"10.244.0.15", "10.244.0.16"}},
	}
	byIP := map[string]*workloadapi.Workload{}
	for _, w := range workloads {
		if len(w.GetAddresses()) != 1 {
			t.Errorf("workload %s: addresses %v, want one", w.GetName(), w.GetAddresses())
			continue
		}
		byIP[ip(t, w.GetAddresses()[0])] = w
		if w.GetStatus() != workloadapi.WorkloadStatus_HEALTHY {
			t.Errorf("workload %s is %v", w.GetName(), w.GetStatus())
		}
		if !strings.HasSuffix(w.GetUid(), "/"+w.GetNamespace()+"/"+w.GetName()) {
			t.Errorf("workload uid %q does not end in its namespace/name", w.GetUid())
		}
	}
	for name, wt := range want {
		svc := services[name]
		if svc == nil {
			t.Errorf("no service %s", name)
			continue
		}
		if len(svc.GetAddresses()) != 1 || ip(t, svc.GetAddresses()[0].GetAddress()) != wt.vip {
			t.Errorf("%s: VIPs %v, want %s", name, svc.GetAddresses(), wt.vip)
		}
		key := svc.GetNamespace() + "/" + svc.GetHostname()
		for _, b := range wt.backends {
			w := byIP[b]
			if w == nil {
				t.Errorf("%s: no workload at %s", name, b)
				continue
			}
			ports := w.GetServices()[key].GetPorts()
			if len(w.GetServices()) != 1 || len(ports) == 0 || ports[0].GetServicePort() != wt.port {
				t.Errorf("workload %s: services %v, want %s port %d", w.GetName(), w.GetServices(), key, wt.port)
			}
		}
	}
	// web names its waypoint by hostname; the others have none.
	wp := services["web"].GetWaypoint().GetHostname()
	if wp.GetNamespace() != "demo" || wp.GetHostname() != services["waypoint"].GetHostname() {
		t.Errorf("web's waypoint %v, want demo/%s", services["web"].GetWaypoint(), services["waypoint"].GetHostname())
	}
	if services["echo"].GetWaypoint() != nil || services["waypoint"].GetWaypoint() != nil {
		t.Error("only web has a waypoint")
	}
	if a := authz[0]; a.GetAction() != security.Action_DENY || a.GetScope() != security.Scope_NAMESPACE {
		t.Errorf("policy %v", a)
	}
}

// The daemon itself accepts every entry.
func TestDemoDaemonConfigLoadsInTheDaemon(t *testing.T) {
	res, rejected, err := configfile.Parse(conf.DemoDaemonConfig)
	if err != nil {
		t.Fatal(err)
	}
	for name, err := range rejected {
		t.Errorf("the daemon rejects %s: %v", name, err)
	}
	if len(res) != 10 {
		t.Errorf("the daemon reads %d resources, want 10", len(res))
	}
}

func TestExampleConflist(t *testing.T) {
	list, err := libcni.ConfListFromBytes(conf.ExampleConflist)
	if err != nil {
		t.Fatalf("libcni rejects the example: %v", err)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	if got := strings.Join(types, " "); got != "bridge portmap kmesh-cni" {
		t.Fatalf("chain %q, want bridge portmap kmesh-cni", got)
	}
	var ipam struct {
		IPAM struct{ Type string } `json:"ipam"`
	}
	if err := json.Unmarshal(list.Plugins[0].Bytes, &ipam); err != nil || ipam.IPAM.Type != "host-local" {
		t.Errorf("bridge IPAM %q (%v), want host-local", ipam.IPAM.Type, err)
	}

	// The entry has only fields the plugin reads.
	var entry struct {
		Type string `json:"type"`
		cniconf.Entry
	}
	dec := json.NewDecoder(bytes.NewReader(list.Plugins[2].Bytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&entry); err != nil {
		t.Errorf("kmesh-cni entry: %v", err)
	}

	// The plugin reads it as a runtime hands it over (libcni adds the list's
	// name and cniVersion).
	var fields map[string]any
	if err := json.Unmarshal(list.Plugins[2].Bytes, &fields); err != nil {
		t.Fatal(err)
	}
	fields["name"], fields["cniVersion"] = list.Name, list.CNIVersion
	stdin, _ := json.Marshal(fields)
	pc, err := pluginconf.Parse(stdin)
	if err != nil {
		t.Fatalf("kmesh-cni rejects the example entry: %v", err)
	}
	if pc.Kubeconfig != entry.Kubeconfig || pc.DaemonSocket != entry.DaemonSocket || pc.BPFDir != entry.BPFDir ||
		pc.FailurePolicy != entry.FailurePolicy || pc.LogLevel != entry.LogLevel {
		t.Errorf("kmesh-cni reads %+v", pc)
	}

	// It is exactly what kmesh-install writes with its defaults.
	cfg, err := installer.ParseArgs(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Entry.Kubeconfig = cfg.KubeconfigPath
	if entry.Entry != cfg.Entry {
		t.Errorf("example entry %+v, kmesh-install writes %+v", entry.Entry, cfg.Entry)
	}
	bare, _, err := cniconf.Remove(conf.ExampleConflist)
	if err != nil {
		t.Fatal(err)
	}
	want, err := json.Marshal(cfg.Entry)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cniconf.Upsert(bare, want); err != nil || !bytes.Equal(got, conf.ExampleConflist) {
		t.Errorf("kmesh-install would write (err %v):\n%s", err, got)
	}
}

// The demo waypoint (waypoint-demo.yaml) serves the demo mesh: a chain for
// each port of web's VIP, and every endpoint it routes to is a pod that
// backs web in kmesh-demo.yaml, on a port web maps to.
func TestDemoWaypointServesTheDemoMesh(t *testing.T) {
	addrs, _ := decodeDemo(t)
	var web *workloadapi.Service
	for _, a := range addrs {
		if s := a.GetService(); s.GetName() == "web" {
			web = s
		}
	}
	if web == nil {
		t.Fatal("no web service in kmesh-demo.yaml")
	}
	vip, _ := netip.AddrFromSlice(web.GetAddresses()[0].GetAddress())
	backends := map[netip.AddrPort]bool{}
	key := web.GetNamespace() + "/" + web.GetHostname()
	for _, a := range addrs {
		w := a.GetWorkload()
		if w == nil || w.GetServices()[key] == nil {
			continue
		}
		ip, _ := netip.AddrFromSlice(w.GetAddresses()[0])
		for _, p := range w.GetServices()[key].GetPorts() {
			backends[netip.AddrPortFrom(ip, uint16(p.GetTargetPort()))] = true
		}
	}

	snap, err := bootstrap.Load("waypoint-demo.yaml", translate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := snap.Listeners[0]
	for _, p := range web.GetPorts() {
		dst := netip.AddrPortFrom(vip, uint16(p.GetServicePort()))
		if l.Select.Select(model.ConnInfo{Destination: dst}) == "" {
			t.Errorf("no waypoint chain for %s", dst)
		}
	}
	for name, c := range snap.Clusters {
		for _, prio := range c.Endpoints {
			for _, e := range prio {
				if !backends[e.Address] {
					t.Errorf("cluster %s: endpoint %s is not a web pod's port in kmesh-demo.yaml", name, e.Address)
				}
			}
		}
	}
}
