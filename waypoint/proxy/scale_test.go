package proxy

import (
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/internal/synth"
)

// A configuration of 1000 services (what the RSS target is about): the
// engine's heap with it applied, and the time Apply takes. The bound is
// loose; it catches a representation that grows per service by tens of
// kilobytes, not noise.
func TestThousandServicesHeap(t *testing.T) {
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	te := newTestEngine(t, Options{})
	snap := synth.Snapshot(synth.Options{Services: 1000, Listen: netip.MustParseAddrPort("127.0.0.1:0"), ProxyProtocol: true})
	start := time.Now()
	te.apply(snap)
	took := time.Since(start)
	// A second snapshot of the same shape replaces the first whole.
	te.apply(synth.Snapshot(synth.Options{Services: 1000, Listen: netip.MustParseAddrPort("127.0.0.1:0"), ProxyProtocol: true}))
	snap = nil
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("1000 services: Apply took %v; heap %.1f MiB (%.1f KiB per service)", took, float64(heap)/(1<<20), float64(heap)/1000/1024)
	if heap > 20<<20 {
		t.Errorf("heap of a 1000-service configuration: %.1f MiB", float64(heap)/(1<<20))
	}
	if len(te.Clusters()) != 1000 || !te.Ready() {
		t.Errorf("%d clusters, ready %v", len(te.Clusters()), te.Ready())
	}
}
