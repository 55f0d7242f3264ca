package dataplane

// Kernel tests of the daemon's path from model resources to the maps: a
// real data path attached to a cgroup the test makes, pins under a fresh
// bpffs directory. Run with KMESH_KERNEL_TESTS=1 as root.

import (
	"net/netip"
	"testing"

	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

var node = model.Node{Name: "node-a", ClusterID: "c1"}

// open loads a data path for the test; everything goes when it ends.
func open(t *testing.T, sizes loader.Sizes) *Dataplane {
	t.Helper()
	testbed.Require(t)
	cg := testbed.NewCgroup(t)
	d, err := Open(Config{Loader: loader.Config{PinDir: testbed.PinDir(t), CgroupPath: cg.Path, Sizes: sizes}, Node: node})
	if err != nil {
		t.Fatal(err)
	}
	// Closed before PinDir's cleanup removes the pins and links.
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// fromIstio converts a service as istiod sends it.
func fromIstio(t *testing.T, s *workloadapi.Service) model.Resource {
	t.Helper()
	svc, _, err := model.FromAddress(&workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}})
	if err != nil {
		t.Fatal(err)
	}
	return model.Resource{Name: string(svc.Key), Service: svc}
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func workload(uid, addr string, mut ...func(*model.Workload)) model.Resource {
	w := &model.Workload{UID: uid, Name: uid, Addresses: []netip.Addr{ip(addr)}, Healthy: true,
		Shared: model.ShareOf(model.Shared{Namespace: "default"})}
	for _, m := range mut {
		m(w)
	}
	return model.Resource{Name: uid, Workload: w}
}

func backs(name string, ports ...model.Port) func(*model.Workload) {
	return func(w *model.Workload) {
		w.Services = append(w.Services, model.ServicePorts{Service: model.ServiceKey("default/" + name + ".default.svc.cluster.local"), Ports: ports})
	}
}

// update applies resources and fails the test on any refusal.
func update(t *testing.T, d *Dataplane, ups []model.Resource, removes ...string) {
	t.Helper()
	rejected, err := d.Update(ups, removes)
	if err != nil || len(rejected) > 0 {
		t.Fatalf("update refused: %v %v", rejected, err)
	}
}

// A Kubernetes Service may list one port number twice, once per protocol
// (kube-dns: 53/UDP and 53/TCP), and istiod sends every one of them. The
// kernel's port map has no protocol, so both are one entry: the service
// must still reach the maps, and with it everything else of the state.
func TestServicePortListedPerProtocol(t *testing.T) {
	d := open(t, loader.Sizes{})
	dns := fromIstio(t, &workloadapi.Service{Name: "kube-dns", Namespace: "default", Hostname: "kube-dns.default.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.10").AsSlice()}},
		Ports:     []*workloadapi.Port{{ServicePort: 53, TargetPort: 53}, {ServicePort: 53, TargetPort: 53}, {ServicePort: 9153, TargetPort: 9153}}})
	update(t, d, []model.Resource{dns, workload("coredns", "10.244.0.5", backs("kube-dns"))})
	if err := d.Sync(); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	svcs := d.Maps().Services()
	if len(svcs) != 1 || len(svcs[0].Ports) != 2 || len(svcs[0].Endpoints) != 1 {
		t.Fatalf("kernel services %+v, want kube-dns with ports 53 and 9153 and its endpoint", svcs)
	}
	// And as an update after the first sync.
	update(t, d, []model.Resource{fromIstio(t, &workloadapi.Service{Name: "other", Namespace: "default", Hostname: "other.default.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.11").AsSlice()}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 80, TargetPort: 8080}}})})
	if n := len(d.Maps().Services()); n != 2 {
		t.Fatalf("%d services in the kernel, want 2", n)
	}
}

// In a multi-network mesh istiod merges a service's VIPs from every cluster
// and keeps one per network and IP. Clusters made with the same defaults
// share a service CIDR, so kube-dns is 10.96.0.10 on both networks: one
// IP listed twice. The kernel's frontend is keyed by IP alone; the service
// must still reach the maps.
func TestServiceVIPOnTwoNetworks(t *testing.T) {
	d := open(t, loader.Sizes{})
	dns := fromIstio(t, &workloadapi.Service{Name: "kube-dns", Namespace: "default", Hostname: "kube-dns.default.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{
			{Network: "net1", Address: ip("10.96.0.10").AsSlice()},
			{Network: "net2", Address: ip("10.96.0.10").AsSlice()},
		},
		Ports: []*workloadapi.Port{{ServicePort: 53, TargetPort: 53}}})
	update(t, d, []model.Resource{dns, workload("coredns", "10.244.0.5", backs("kube-dns"))})
	if err := d.Sync(); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	svcs := d.Maps().Services()
	if len(svcs) != 1 || len(svcs[0].VIPs) != 1 || svcs[0].VIPs[0] != ip("10.96.0.10") {
		t.Fatalf("kernel services %+v, want kube-dns at 10.96.0.10", svcs)
	}
}

// workloadFromIstio converts a workload as istiod sends it.
func workloadFromIstio(t *testing.T, w *workloadapi.Workload) model.Resource {
	t.Helper()
	_, wl, err := model.FromAddress(&workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}})
	if err != nil {
		t.Fatal(err)
	}
	return model.Resource{Name: wl.UID, Workload: wl}
}

// Host-network pods and the opaque endpoints of a selector-less service
// (the kubernetes service's API server endpoints) all have the node's IP;
// istiod marks them HOST_NETWORK because the address is shared and says
// nothing about who is behind it. Each is still an endpoint of its own
// service, and the node's IP must not resolve to any one of them (its
// policies, waypoint and identity would apply to all the node's traffic).
func TestHostNetworkWorkloadsShareTheNodeIP(t *testing.T) {
	testbed.Require(t)
	cfg := Config{Loader: loader.Config{PinDir: testbed.PinDir(t), CgroupPath: testbed.NewCgroup(t).Path}, Node: node}
	d, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	service := func(name, vip string, port uint32) model.Resource {
		return fromIstio(t, &workloadapi.Service{Name: name, Namespace: "default", Hostname: name + ".default.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: ip(vip).AsSlice()}},
			Ports:     []*workloadapi.Port{{ServicePort: port, TargetPort: port}}})
	}
	hostPod := func(uid, svc string, port uint32) model.Resource {
		return workloadFromIstio(t, &workloadapi.Workload{Uid: uid, Name: uid, Namespace: "default",
			Addresses: [][]byte{ip("172.18.0.2").AsSlice()}, NetworkMode: workloadapi.NetworkMode_HOST_NETWORK,
			Services: map[string]*workloadapi.PortList{"default/" + svc + ".default.svc.cluster.local": {Ports: []*workloadapi.Port{{ServicePort: port, TargetPort: port}}}}})
	}
	state := []model.Resource{
		service("kubernetes", "10.96.0.1", 443), service("node-exporter", "10.96.0.20", 9100),
		hostPod("c1/discovery.k8s.io/EndpointSlice/default/kubernetes/172.18.0.2", "kubernetes", 6443),
		hostPod("c1//Pod/default/node-exporter-x", "node-exporter", 9100),
	}
	update(t, d, state)
	if err := d.Sync(); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	check := func(when string) {
		t.Helper()
		svcs := d.Maps().Services()
		if len(svcs) != 2 {
			t.Fatalf("%s: kernel services %+v, want 2", when, svcs)
		}
		for _, s := range svcs {
			if len(s.Endpoints) != 1 || len(s.Endpoints[0]) != 1 {
				t.Errorf("%s: service %d (VIPs %v) has endpoints %v, want its host-network pod", when, s.ID, s.VIPs, s.Endpoints)
			}
		}
		if id, _ := d.WorkloadAt(ip("172.18.0.2")); id != 0 {
			t.Errorf("%s: the node IP resolves to workload %d", when, id)
		}
	}
	check("after sync")
	// A third one arriving later changes nothing for the first two.
	kubeProxy := hostPod("c1//Pod/default/kube-proxy-x", "kube-proxy", 10249)
	update(t, d, []model.Resource{kubeProxy})
	check("after an update")

	// A restarted daemon finds backends without frontends and takes the
	// same state over without leaving any of them behind.
	_ = d.Close()
	if d, err = Open(cfg); err != nil {
		t.Fatal(err)
	}
	update(t, d, append(state, kubeProxy))
	if err := d.Sync(); err != nil {
		t.Fatalf("sync after a restart: %v", err)
	}
	check("after a restart")
	if bes := d.Maps().Backends(); len(bes) != 3 {
		t.Errorf("kernel backends after a restart %+v, want the 3 host-network pods", bes)
	}
}

// istiod copies an EndpointSlice endpoint's addresses as they are, and a
// user writing a selector-less service's slice may list one twice (also as
// an IPv4-mapped IPv6 address). That workload must not keep the rest of the
// state out of the kernel.
func TestWorkloadAddressListedTwice(t *testing.T) {
	d := open(t, loader.Sizes{})
	ext := fromIstio(t, &workloadapi.Service{Name: "ext", Namespace: "default", Hostname: "ext.default.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.30").AsSlice()}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 80}}})
	backsExt := map[string]*workloadapi.PortList{"default/ext.default.svc.cluster.local": {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}}
	slice := workloadFromIstio(t, &workloadapi.Workload{Uid: "c1/discovery.k8s.io/EndpointSlice/default/ext/10.0.5.1", Name: "ext", Namespace: "default",
		Addresses:   [][]byte{ip("10.0.5.1").AsSlice(), ip("10.0.5.1").AsSlice(), ip("::ffff:10.0.5.1").AsSlice()},
		NetworkMode: workloadapi.NetworkMode_HOST_NETWORK, Services: backsExt})
	vm := workloadFromIstio(t, &workloadapi.Workload{Uid: "c1/networking.istio.io/WorkloadEntry/default/vm", Name: "vm", Namespace: "default",
		Addresses: [][]byte{ip("10.0.6.1").AsSlice(), ip("::ffff:10.0.6.1").AsSlice()}, Services: backsExt})
	update(t, d, []model.Resource{ext, slice, vm})
	if err := d.Sync(); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	svcs := d.Maps().Services()
	if len(svcs) != 1 || len(svcs[0].Endpoints) != 1 || len(svcs[0].Endpoints[0]) != 2 {
		t.Fatalf("kernel services %+v, want ext with both endpoints", svcs)
	}
}
