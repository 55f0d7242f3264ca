package main

import (
	"net/netip"
	"sync"
	"sync/atomic"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
)

// podAddrs is the set of addresses of the enrolled pods on this node (the
// only ones whose connection ends the kernel records), rebuilt when the
// CNI registry changes and read without a lock: telemetry asks it once
// per record.
type podAddrs struct {
	mu  sync.Mutex // one refresh at a time: the last one stored is the newest
	set atomic.Pointer[map[netip.Addr]struct{}]
}

// refresh replaces the set with the addresses of the pods list returns.
func (p *podAddrs) refresh(list func() []*cniv1.Pod) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := map[netip.Addr]struct{}{}
	for _, pod := range list() {
		if !pod.GetEnrolled() {
			continue
		}
		for _, s := range pod.GetIps() {
			// The plugin records CNI results' "10.244.0.5/24"; older
			// records may hold a bare address.
			if pr, err := netip.ParsePrefix(s); err == nil {
				m[pr.Addr().Unmap()] = struct{}{}
			} else if a, err := netip.ParseAddr(s); err == nil {
				m[a.Unmap()] = struct{}{}
			}
		}
	}
	p.set.Store(&m)
}

// has reports whether a is a pod's on this node.
func (p *podAddrs) has(a netip.Addr) bool {
	m := p.set.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[a.Unmap()]
	return ok
}
