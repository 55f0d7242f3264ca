package rtlink_test

import (
	"errors"
	"testing"

	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/rtlink"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// A veth pair between a pod and the node, read from both sides, as
// kmesh-cni reads it.
func TestKernelVethFromBothSides(t *testing.T) {
	testbed.Require(t)
	n := testbed.NewNetwork(t)
	p := n.AddPod(t, "a")
	var pod, host, hostByIndex rtlink.Link
	if err := podns.Do(p.NSPath, func() (err error) {
		pod, err = rtlink.ByName("eth0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := podns.Do(testbed.NSPath(n.Node), func() (err error) {
		if host, err = rtlink.ByName(p.HostVeth); err != nil {
			return err
		}
		if hostByIndex, err = rtlink.ByIndex(pod.Peer); err != nil {
			return err
		}
		if _, err := rtlink.ByName("kmnosuchlink"); !errors.Is(err, rtlink.ErrNotFound) {
			t.Errorf("missing link: %v", err)
		}
		if _, err := rtlink.ByIndex(1 << 30); !errors.Is(err, rtlink.ErrNotFound) {
			t.Errorf("missing index: %v", err)
		}
		lo, err := rtlink.ByName("lo")
		if err != nil || lo.Kind != "" || lo.Index != 1 {
			t.Errorf("lo: %+v %v", lo, err)
		}
		br, err := rtlink.ByName(n.Bridge)
		if err != nil || br.Kind != "bridge" {
			t.Errorf("bridge: %+v %v", br, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if pod.Name != "eth0" || pod.Kind != "veth" || pod.Index <= 0 {
		t.Fatalf("pod side %+v", pod)
	}
	if host.Name != p.HostVeth || host.Kind != "veth" || host.Peer != pod.Index || pod.Peer != host.Index {
		t.Fatalf("host side %+v, pod side %+v", host, pod)
	}
	if hostByIndex != host {
		t.Fatalf("by index %+v, by name %+v", hostByIndex, host)
	}
}
