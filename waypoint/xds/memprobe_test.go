package xds

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kmesh-go/kmesh/internal/xdsclient"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/translate"
	"github.com/kmesh-go/kmesh/waypoint/translate/translatetest"
)

// TestMemory1000 feeds a session 1000 services (listener, clusters,
// endpoints, 3000 peers) as istiod would and measures what it keeps: the
// last good version of every resource, the snapshot, the memo.
func TestMemory1000(t *testing.T) {
	in := translatetest.Synthetic(1000)
	var last *model.Snapshot
	s, err := New(Config{Address: "127.0.0.1:1", Plaintext: true, Node: testNode(), Apply: func(sn *model.Snapshot) error { last = sn; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	wrap := func(items map[string]proto.Message) []xdsclient.Resource {
		var out []xdsclient.Resource
		for n, m := range items {
			a, err := anypb.New(m)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, xdsclient.Resource{Name: n, Version: "1", Body: a})
		}
		return out
	}
	cs, es, ls, as := map[string]proto.Message{}, map[string]proto.Message{}, map[string]proto.Message{}, map[string]proto.Message{}
	for _, c := range in.Clusters {
		cs[c.GetName()] = c
	}
	for n, e := range in.Endpoints {
		es[n] = e
	}
	ls["main_internal"] = in.Listeners[0]
	for i := range 3000 {
		n, w := workload(fmt.Sprintf("pod-%d", i), fmt.Sprintf("10.244.%d.%d", i/250, i%250+1))
		as[n] = w
	}
	bodies := [][]xdsclient.Resource{wrap(cs), wrap(es), wrap(ls), wrap(as)}
	types := []string{translate.TypeCluster, translate.TypeEndpoint, translate.TypeListener, translate.TypeAddress}
	in = translate.Input{}
	cs, es, ls, as = nil, nil, nil, nil

	runtime.GC()
	debug.FreeOSMemory()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for i, b := range bodies {
		if rej, err := s.Apply(types[i], b, nil); err != nil || len(rej) > 0 {
			t.Fatalf("%s: %v %v", types[i], err, rej)
		}
	}
	bodies = nil // what the client received is garbage once applied
	if last == nil || len(last.Listeners[0].Chains) != 1000 {
		t.Fatal("no snapshot of 1000 services")
	}
	runtime.GC()
	debug.FreeOSMemory()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	retained := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("1000 services, 3000 peers: heap kept %.1f MiB (heap in use %.1f MiB, process RSS %s)",
		float64(retained)/(1<<20), float64(after.HeapInuse)/(1<<20), rss())
	// About 6 MiB when written: the listener and cluster protos, compiled
	// endpoints and peers, the snapshot. The waypoint's whole budget is
	// 40 MiB RSS, engine included.
	if retained > 10<<20 {
		t.Errorf("the session keeps %.1f MiB for 1000 services, budget 10 MiB", float64(retained)/(1<<20))
	}
	if p := os.Getenv("KMESH_HEAP_PROFILE"); p != "" {
		f, err := os.Create(p)
		if err == nil {
			_ = pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	runtime.KeepAlive(s)
}

// rss is the process's resident set from /proc.
func rss() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}
