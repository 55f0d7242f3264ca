package translate

import (
	"net/netip"
	"testing"

	"istio.io/istio/pkg/workloadapi"
)

// A host-network workload's address is its node's, shared with the
// node's other host-network pods: it names no peer, while a pod with an
// address of its own does.
func TestHostNetworkWorkloadIsNoPeer(t *testing.T) {
	node := netip.MustParseAddr("172.18.0.2")
	pod := netip.MustParseAddr("10.244.0.7")
	wl := func(name string, a netip.Addr, mode workloadapi.NetworkMode) *workloadapi.Address {
		return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
			Uid: name, Name: name, Namespace: "kube-system", Addresses: [][]byte{a.AsSlice()}, NetworkMode: mode}}}
	}
	p := peers([]*workloadapi.Address{
		wl("kube-proxy", node, workloadapi.NetworkMode_HOST_NETWORK),
		wl("node-exporter", node, workloadapi.NetworkMode_HOST_NETWORK),
		wl("coredns", pod, workloadapi.NetworkMode_STANDARD),
	}, nil)
	if peer := p.ByAddress[node]; peer != nil {
		t.Errorf("the node's address names %s", peer.Name)
	}
	if peer := p.ByAddress[pod]; peer == nil || peer.Name != "coredns" {
		t.Errorf("the pod's address names %+v, want coredns", peer)
	}
}
