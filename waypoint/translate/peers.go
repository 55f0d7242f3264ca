package translate

import (
	"net/netip"

	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// peers indexes the workloads of istiod's address xDS by address, for
// telemetry labels and, later, L7 policy. Services are not peers.
func peers(addrs []*workloadapi.Address) *model.Peers {
	if len(addrs) == 0 {
		return nil
	}
	p := &model.Peers{ByAddress: map[netip.Addr]*model.Peer{}}
	for _, a := range addrs {
		w := a.GetWorkload()
		if w == nil {
			continue
		}
		peer := &model.Peer{Name: w.GetName(), Namespace: w.GetNamespace(), WorkloadName: w.GetWorkloadName(),
			ServiceAccount: w.GetServiceAccount(), TrustDomain: w.GetTrustDomain(), CanonicalName: w.GetCanonicalName(),
			CanonicalRevision: w.GetCanonicalRevision(), ClusterID: w.GetClusterId()}
		for _, raw := range w.GetAddresses() {
			if ip, ok := netip.AddrFromSlice(raw); ok {
				p.ByAddress[ip.Unmap()] = peer
			}
		}
	}
	return p
}

// CheckAddress says why an address resource cannot be used as a peer.
func CheckAddress(a *workloadapi.Address) error {
	if w := a.GetWorkload(); w != nil {
		for _, raw := range w.GetAddresses() {
			if _, ok := netip.AddrFromSlice(raw); !ok {
				return errorf("workload "+w.GetUid(), "address of %d bytes", len(raw))
			}
		}
		return nil
	}
	if a.GetService() == nil {
		return errorf("address", "neither a workload nor a service")
	}
	return nil
}
