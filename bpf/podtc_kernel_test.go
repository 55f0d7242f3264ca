package bpf_test

import (
	"net"
	"slices"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

func TestKernelPodTCAttachSurvivesRestartAndDetaches(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	srv := f.servers[0]
	node := testbed.NSPath(f.net.Node)

	attach := func() {
		t.Helper()
		err := podns.Do(node, func() error {
			ifc, err := net.InterfaceByName(srv.HostVeth)
			if err != nil {
				return err
			}
			return loader.AttachPodTC(f.pins, "pod-s0", ifc.Index)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	seen := func() uint64 {
		t.Helper()
		st, err := f.maps.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st["tc_seen"]
	}
	traffic := func() {
		t.Helper()
		for range 5 {
			f.mustAsk(hostPort(srv.IP4, serverPort))
		}
	}

	attach()
	attach() // idempotent
	before := seen()
	traffic()
	if after := seen(); after <= before {
		t.Fatalf("tc program saw no packets toward the pod (%d -> %d)", before, after)
	}
	a, ok, err := loader.PodTC(f.pins, "pod-s0")
	if err != nil || !ok || !a.Live {
		t.Fatalf("attachment %+v %v %v", a, ok, err)
	}
	if keys, _ := loader.PodTCKeys(f.pins); !slices.Equal(keys, []string{"pod-s0"}) {
		t.Fatalf("keys %v", keys)
	}

	// A restart re-points the pod link at the new program.
	f.maps.Close()
	f.dp.Close()
	dp, err := loader.Open(loader.Config{PinDir: f.pins, CgroupPath: f.cg.Path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	m, err := maps.New(dp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	f.dp, f.maps = dp, m
	before = seen()
	traffic()
	if after := seen(); after <= before {
		t.Fatal("tc program stopped seeing packets after the restart")
	}

	if err := loader.DetachPodTC(f.pins, "pod-s0"); err != nil {
		t.Fatal(err)
	}
	if err := loader.DetachPodTC(f.pins, "pod-s0"); err != nil {
		t.Fatalf("second detach: %v", err)
	}
	time.Sleep(10 * time.Millisecond)
	before = seen()
	traffic()
	if after := seen(); after != before {
		t.Fatalf("detached program still runs (%d -> %d)", before, after)
	}
	if _, ok, _ := loader.PodTC(f.pins, "pod-s0"); ok {
		t.Fatal("attachment still listed after detach")
	}
	if err := loader.AttachPodTC(f.pins, "../escape", 1); err == nil {
		t.Fatal("a key with a slash was accepted")
	}
}
