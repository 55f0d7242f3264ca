package compiler

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/kmesh-go/kmesh/daemon/model"
)

// snapshot builds services x perService workloads, each workload in one
// service, as istiod would send for a large cluster.
func snapshot(services, perService int) []model.Resource {
	var out []model.Resource
	for i := range services {
		key := model.ServiceKey(fmt.Sprintf("ns%d/svc%d.ns%d.svc.cluster.local", i%100, i, i%100))
		out = append(out, model.Resource{Name: string(key), Service: &model.Service{
			Key: key, Namespace: fmt.Sprintf("ns%d", i%100), Hostname: string(key),
			VIPs:  []netip.Addr{netip.AddrFrom4([4]byte{10, byte(96 + i/65536), byte(i >> 8), byte(i)})},
			Ports: []model.Port{{ServicePort: 80, TargetPort: 8080}},
			LB:    model.LoadBalancing{Policy: model.PolicyRandom},
		}})
		for j := range perService {
			k := i*perService + j
			uid := fmt.Sprintf("uid-%d", k)
			out = append(out, model.Resource{Name: uid, Workload: &model.Workload{
				UID: uid, Shared: model.ShareOf(model.Shared{Namespace: fmt.Sprintf("ns%d", i%100)}), Healthy: true,
				Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(128 + k/65536), byte(k >> 8), byte(k)})},
				Services:  []model.ServicePorts{{Service: key}},
			}})
		}
	}
	return out
}

// BenchmarkFullSnapshot compiles 10,000 services x 10 endpoints.
func BenchmarkFullSnapshot(b *testing.B) {
	res := snapshot(10000, 10)
	for b.Loop() {
		st := model.NewStore()
		ch := st.Apply(res, nil)
		c := New(model.Node{}, st)
		txn, _ := c.Changes(ch)
		if len(txn.Services) != 10000 || len(txn.Backends) != 100000 {
			b.Fatalf("%d services %d backends", len(txn.Services), len(txn.Backends))
		}
	}
}
