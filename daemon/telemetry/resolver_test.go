package telemetry

import (
	"net/netip"
	"testing"

	"github.com/kmesh-go/kmesh/daemon/model"
)

// A host-network workload's address is its node's, shared by every other
// host-network pod there: it resolves to none of them, whichever came
// last, while a pod with an address of its own resolves to that pod.
func TestResolverHostNetworkNamesNoOne(t *testing.T) {
	node := netip.MustParseAddr("172.18.0.2")
	pod := netip.MustParseAddr("10.244.0.7")
	wl := func(uid string, addr netip.Addr, host bool) model.Resource {
		return model.Resource{Name: uid, Workload: &model.Workload{UID: uid, Name: uid, Addresses: []netip.Addr{addr},
			Healthy: true, HostNetwork: host, Shared: model.ShareOf(model.Shared{Namespace: "kube-system"})}}
	}
	store := model.NewStore()
	store.Apply([]model.Resource{wl("kube-proxy", node, true), wl("node-exporter", node, true), wl("coredns", pod, false)}, nil)
	r := NewModelResolver(store)
	if p := r.Peer(node); p != nil {
		t.Errorf("the node's address resolved to %s", p.UID)
	}
	if p := r.Peer(pod); p == nil || p.UID != "coredns" {
		t.Errorf("the pod's address resolved to %+v, want coredns", p)
	}
}
