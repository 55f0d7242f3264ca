package translate

import (
	"net/netip"

	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Workload is one address resource compiled to what Peers are made of: a
// workload's identity and its addresses. A service compiles to a Workload
// with no addresses. The xDS layer keeps these rather than the protos (a
// cluster's every workload and service arrive, thousands of them).
type Workload struct {
	peer  model.Peer
	addrs []netip.Addr
}

// CompileAddress checks and compiles an address resource.
func CompileAddress(a *workloadapi.Address) (*Workload, error) {
	w := a.GetWorkload()
	if w == nil {
		if a.GetService() == nil {
			return nil, errorf("address", "neither a workload nor a service")
		}
		return &Workload{}, nil
	}
	out := &Workload{peer: model.Peer{Name: w.GetName(), Namespace: w.GetNamespace(), WorkloadName: w.GetWorkloadName(),
		ServiceAccount: w.GetServiceAccount(), TrustDomain: w.GetTrustDomain(), CanonicalName: w.GetCanonicalName(),
		CanonicalRevision: w.GetCanonicalRevision(), ClusterID: w.GetClusterId()}}
	for _, raw := range w.GetAddresses() {
		ip, ok := netip.AddrFromSlice(raw)
		if !ok {
			return nil, errorf("workload "+w.GetUid(), "address of %d bytes", len(raw))
		}
		out.addrs = append(out.addrs, ip.Unmap())
	}
	if w.GetNetworkMode() == workloadapi.NetworkMode_HOST_NETWORK {
		// Its address is its node's, shared with the node's other
		// host-network pods: it names none of them (telemetry would give
		// one pod's name, and policy one pod's identity, to all).
		out.addrs = nil
	}
	return out, nil
}

// Equal reports whether two compiled addresses are the same.
func (w *Workload) Equal(o *Workload) bool {
	if w == nil || o == nil {
		return w == o
	}
	if w.peer != o.peer || len(w.addrs) != len(o.addrs) {
		return false
	}
	for i := range w.addrs {
		if w.addrs[i] != o.addrs[i] {
			return false
		}
	}
	return true
}

// peers indexes the workloads of istiod's address xDS by address, for
// telemetry labels and, later, L7 policy. Services are not peers.
func peers(addrs []*workloadapi.Address, compiled []*Workload) *model.Peers {
	if len(addrs)+len(compiled) == 0 {
		return nil
	}
	p := &model.Peers{ByAddress: map[netip.Addr]*model.Peer{}}
	add := func(w *Workload) {
		if len(w.addrs) == 0 {
			return
		}
		peer := &w.peer
		for _, ip := range w.addrs {
			p.ByAddress[ip] = peer
		}
	}
	for _, a := range addrs {
		if w, err := CompileAddress(a); err == nil {
			add(w)
		}
	}
	for _, w := range compiled {
		add(w)
	}
	return p
}
