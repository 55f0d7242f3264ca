package meshsync

// Kernel test: a real data path attached to a cgroup the test makes, pins
// under a fresh bpffs directory. Run with KMESH_KERNEL_TESTS=1 as root.

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/daemon/dataplane"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

func service(i int) model.Resource {
	k := model.ServiceKey(fmt.Sprintf("default/s%d.default.svc.cluster.local", i))
	return model.Resource{Name: string(k), Service: &model.Service{Key: k, Name: fmt.Sprintf("s%d", i), Namespace: "default",
		Hostname: fmt.Sprintf("s%d.default.svc.cluster.local", i), VIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, byte(i)})},
		Ports: []model.Port{{ServicePort: 80, TargetPort: 8080}}, LB: model.LoadBalancing{Policy: model.PolicyRandom}}}
}

// refusedFirstSync makes a syncer whose first sync the kernel refused:
// three services for a service map of two.
func refusedFirstSync(t *testing.T, retry time.Duration) (*Syncer, *dataplane.Dataplane) {
	t.Helper()
	testbed.Require(t)
	cg := testbed.NewCgroup(t)
	dp, err := dataplane.Open(dataplane.Config{Loader: loader.Config{PinDir: testbed.PinDir(t), CgroupPath: cg.Path,
		Sizes: loader.Sizes{Services: 2}}, Node: model.Node{Name: "node-a", ClusterID: "c1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dp.Close() })
	old := syncRetry
	syncRetry = retry
	t.Cleanup(func() { syncRetry = old })

	s := New(dp, nil)
	t.Cleanup(func() { s.syncMu.Lock(); s.ready.Store(true); s.syncMu.Unlock() }) // no retry after the test
	if _, err := s.ApplyResources([]model.Resource{service(1), service(2), service(3)}, nil, nil); err != nil {
		t.Fatal(err)
	}
	s.Synced()
	if s.Ready() || s.LastError() == "" {
		t.Fatalf("three services in a map of two: ready %v, last error %q; want a refusal", s.Ready(), s.LastError())
	}
	return s, dp
}

// A first sync the kernel refused lands with the update that makes room.
// Before, the syncer stayed unready until the source's stream restarted.
func TestFirstSyncRetriedAfterUpdate(t *testing.T) {
	s, dp := refusedFirstSync(t, time.Hour)
	if _, err := s.ApplyResources([]model.Resource{service(1)}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if s.Ready() {
		t.Fatal("ready with three services in a map of two")
	}
	if _, err := s.ApplyResources(nil, []string{service(3).Name}, nil); err != nil {
		t.Fatal(err)
	}
	if !s.Ready() {
		t.Fatalf("not ready after the update that made room: %s", s.LastError())
	}
	if n := len(dp.Maps().Services()); n != 2 {
		t.Fatalf("%d services in the kernel, want 2", n)
	}
}

// With no update through the syncer, the retry timer lands it once the
// state fits.
func TestFirstSyncRetriedOnTimer(t *testing.T) {
	s, dp := refusedFirstSync(t, 50*time.Millisecond)
	time.Sleep(150 * time.Millisecond) // refused again meanwhile
	if s.Ready() {
		t.Fatal("ready with three services in a map of two")
	}
	if _, err := dp.Update(nil, []string{service(3).Name}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !s.Ready() {
		if time.Now().After(deadline) {
			t.Fatalf("not ready 5 s after the state fits: %s", s.LastError())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := len(dp.Maps().Services()); n != 2 {
		t.Fatalf("%d services in the kernel, want 2", n)
	}
}
