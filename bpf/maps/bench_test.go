package maps

import (
	"net/netip"
	"testing"
)

// BenchmarkPlanSnapshot plans (no kernel) a snapshot of 10,000 services x
// 10 endpoints over 100,000 backends: the Go side of a full sync.
func BenchmarkPlanSnapshot(b *testing.B) {
	var txn Txn
	for k := range 100000 {
		txn.Backends = append(txn.Backends, Backend{ID: uint32(k + 1), Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(128 + k/65536), byte(k >> 8), byte(k)})}})
	}
	for i := range 10000 {
		s := Service{ID: uint32(i + 1), VIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports: []Port{{Port: 80, TargetPort: 8080}}, Endpoints: [][]uint32{make([]uint32, 10)}}
		for j := range 10 {
			s.Endpoints[0][j] = uint32(i*10 + j + 1)
		}
		txn.Services = append(txn.Services, s)
	}
	for b.Loop() {
		m := mirrorOnly()
		p, next, err := m.plan(txn)
		if err != nil {
			b.Fatal(err)
		}
		m.commit(p, next)
	}
}
