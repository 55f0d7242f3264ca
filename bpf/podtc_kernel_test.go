package bpf_test

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/bpf/loader"
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
	traffic := func() {
		t.Helper()
		for range 5 {
			f.mustAsk(hostPort(srv.IP4, serverPort))
		}
	}

	attach()
	attach() // idempotent
	before := f.stat("tc_seen")
	traffic()
	if after := f.stat("tc_seen"); after <= before {
		t.Fatalf("tc program saw no packets toward the pod (%d -> %d)", before, after)
	}
	// PodTC from this thread (outside the node namespace) finds the
	// namespace the filter is in.
	a, ok, err := loader.PodTC(f.pins, "pod-s0")
	if err != nil || !ok || !a.Live {
		t.Fatalf("attachment %+v %v %v", a, ok, err)
	}
	if keys, _ := loader.PodTCKeys(f.pins); !slices.Equal(keys, []string{"pod-s0"}) {
		t.Fatalf("keys %v", keys)
	}

	// A restart re-points the pod's filter at the new program.
	oldID := filterProgID(t, node, srv.HostVeth)
	f.restart()
	before = f.stat("tc_seen")
	traffic()
	if after := f.stat("tc_seen"); after <= before {
		t.Fatal("tc program stopped seeing packets after the restart")
	}
	if newID, want := filterProgID(t, node, srv.HostVeth), pinnedProgID(t, f.pins); newID == oldID || newID != want {
		t.Fatalf("filter runs program %d after the restart (was %d), want the new pinned %d", newID, oldID, want)
	}

	if err := loader.DetachPodTC(f.pins, "pod-s0"); err != nil {
		t.Fatal(err)
	}
	if err := loader.DetachPodTC(f.pins, "pod-s0"); err != nil {
		t.Fatalf("second detach: %v", err)
	}
	time.Sleep(10 * time.Millisecond)
	before = f.stat("tc_seen")
	traffic()
	if after := f.stat("tc_seen"); after != before {
		t.Fatalf("detached program still runs (%d -> %d)", before, after)
	}
	if _, ok, _ := loader.PodTC(f.pins, "pod-s0"); ok {
		t.Fatal("attachment still listed after detach")
	}
	if err := loader.AttachPodTC(f.pins, "../escape", 1); err == nil {
		t.Fatal("a key with a slash was accepted")
	}
}

// filterProgID is the id of the program in kmesh's filter on a host veth.
func filterProgID(t *testing.T, nsPath, veth string) int {
	t.Helper()
	id := 0
	err := podns.Do(nsPath, func() error {
		l, err := netlink.LinkByName(veth)
		if err != nil {
			return err
		}
		fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_EGRESS)
		if err != nil {
			return err
		}
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == loader.ProgToPod {
				id = bf.Id
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func pinnedProgID(t *testing.T, pins string) int {
	t.Helper()
	p, err := ebpf.LoadPinnedProgram(filepath.Join(pins, "progs", loader.ProgToPod), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return int(id)
}

// Another tool's filters on the same veth: ours runs first and passes
// (TC_ACT_UNSPEC continues to the next filter with cls_bpf too), theirs
// still sees every packet, and detaching removes only ours and leaves the
// clsact qdisc theirs depends on.
func TestKernelPodTCChainsWithOtherFilters(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	srv := f.servers[0]
	node := testbed.NSPath(f.net.Node)
	var ifindex int

	// "Their" filter: a second copy of the pod program at a priority that
	// runs after ours, on a clsact qdisc they created.
	theirs, err := ebpf.LoadPinnedProgram(filepath.Join(f.pins, "progs", loader.ProgToPod), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
	other := func(l netlink.Link) *netlink.BpfFilter {
		return &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_EGRESS,
			Handle: 7, Protocol: unix.ETH_P_ALL, Priority: 49152}, Fd: theirs.FD(), Name: "other", DirectAction: true}
	}
	err = podns.Do(node, func() error {
		l, err := netlink.LinkByName(srv.HostVeth)
		if err != nil {
			return err
		}
		ifindex = l.Attrs().Index
		if err := netlink.QdiscAdd(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex,
			Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}); err != nil {
			return err
		}
		if err := netlink.FilterAdd(other(l)); err != nil {
			return err
		}
		return loader.AttachPodTC(f.pins, "pod-s0", ifindex)
	})
	if err != nil {
		t.Fatal(err)
	}
	// Both programs count into the same map: with ours passing on, each
	// packet toward the pod is counted twice.
	before := f.stat("tc_seen")
	f.mustAsk(hostPort(srv.IP4, serverPort))
	onlyTheirs := func() (n uint64) {
		t.Helper()
		err := podns.Do(node, func() error {
			l, err := netlink.LinkByName(srv.HostVeth)
			if err != nil {
				return err
			}
			fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_EGRESS)
			if err != nil {
				return err
			}
			for _, f := range fs {
				if bf, ok := f.(*netlink.BpfFilter); ok {
					if bf.Name != "other" {
						t.Errorf("filter %q (prio %d) left after detach", bf.Name, bf.Priority)
					}
					n++
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	after := f.stat("tc_seen")
	if d := after - before; d == 0 || d%2 != 0 {
		t.Fatalf("tc_seen grew by %d: want both filters to see each packet (an even, non-zero count)", d)
	}

	if err := loader.DetachPodTC(f.pins, "pod-s0"); err != nil {
		t.Fatal(err)
	}
	if n := onlyTheirs(); n != 1 {
		t.Fatalf("%d filters after detach, want only the other tool's", n)
	}
	before = f.stat("tc_seen")
	f.mustAsk(hostPort(srv.IP4, serverPort))
	if after := f.stat("tc_seen"); after == before {
		t.Fatal("the other filter stopped running after our detach (clsact removed?)")
	}
	if a, ok, err := loader.PodTC(f.pins, "pod-s0"); ok || err != nil {
		t.Fatalf("attachment %+v still recorded (%v)", a, err)
	}
}

// A record whose interface went away is reported not live, and detaching
// it just forgets it.
func TestKernelPodTCInterfaceGone(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	srv := f.servers[0]
	node := testbed.NSPath(f.net.Node)
	err := podns.Do(node, func() error {
		l, err := netlink.LinkByName(srv.HostVeth)
		if err != nil {
			return err
		}
		if err := loader.AttachPodTC(f.pins, "gone", l.Attrs().Index); err != nil {
			return err
		}
		return netlink.LinkDel(l)
	})
	if err != nil {
		t.Fatal(err)
	}
	a, ok, err := loader.PodTC(f.pins, "gone")
	if err != nil || !ok || a.Live {
		t.Fatalf("attachment %+v ok=%v err=%v: want recorded, not live", a, ok, err)
	}
	if err := loader.DetachPodTC(f.pins, "gone"); err != nil {
		t.Fatal(err)
	}
	if keys, _ := loader.PodTCKeys(f.pins); len(keys) != 0 {
		t.Fatalf("keys %v after detach", keys)
	}
}

// A plugin newer than the daemon: the data path it finds has no km_pod_tc
// (an older daemon loaded it). Attaching makes the map; the daemon, when
// it restarts, keeps it and re-points the filter it records.
func TestKernelPodTCRecordsMadeByThePlugin(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	srv := f.servers[0]
	node := testbed.NSPath(f.net.Node)
	if err := os.Remove(filepath.Join(f.pins, "maps", loader.MapPodTC)); err != nil {
		t.Fatal(err)
	}
	err := podns.Do(node, func() error {
		l, err := netlink.LinkByName(srv.HostVeth)
		if err != nil {
			return err
		}
		return loader.AttachPodTC(f.pins, "pod-s0", l.Attrs().Index)
	})
	if err != nil {
		t.Fatalf("attach without km_pod_tc: %v", err)
	}
	oldID := filterProgID(t, node, srv.HostVeth)
	f.restart()
	if keys, _ := loader.PodTCKeys(f.pins); !slices.Equal(keys, []string{"pod-s0"}) {
		t.Fatalf("the restarted daemon dropped the plugin's record: %v", keys)
	}
	if id := filterProgID(t, node, srv.HostVeth); id == oldID || id != pinnedProgID(t, f.pins) {
		t.Fatalf("filter runs program %d after the restart (was %d)", id, oldID)
	}
}
