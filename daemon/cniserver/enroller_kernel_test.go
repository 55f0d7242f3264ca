package cniserver

import (
	"strings"
	"testing"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// The daemon attaches tc only for a pod it enrolls itself: a cookie already
// in the manage map was enrolled by kmesh-cni, whose attach may be running
// at that moment.
func TestKernelEnrollLeavesTheirTCToThePlugin(t *testing.T) {
	testbed.Require(t)
	cg := testbed.NewCgroup(t)
	dp, pins := testbed.Datapath(t, cg, loader.Sizes{})
	manage := maps.NewManage(dp)
	n := testbed.NewNetwork(t)
	mine, theirs := n.AddPod(t, "mine"), n.AddPod(t, "theirs")
	k := KernelEnroller{Manage: manage, PinDir: pins}
	pod := func(p *testbed.Pod) *cniv1.Pod {
		return &cniv1.Pod{Name: p.Name, ContainerId: "c-" + p.Name, NetnsPath: p.NSPath, HostVeth: p.HostVeth,
			Ips: []string{p.IP4.String() + "/24"}, Enrolled: true}
	}
	// The plugin wrote theirs' entry and is attaching tc.
	c, err := podns.Cookie(theirs.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := manage.Enroll(c, maps.Enrollment{ClientID: 7}); err != nil {
		t.Fatal(err)
	}
	err = podns.Do(testbed.NSPath(n.Node), func() error {
		for _, p := range []*testbed.Pod{mine, theirs} {
			if _, err := k.Enroll(pod(p)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if a, ok, err := loader.PodTC(pins, loader.PodTCKey("c-mine", mine.HostVeth)); err != nil || !ok || !a.Live {
		t.Fatalf("the pod the daemon enrolled has no live tc: %+v %v %v", a, ok, err)
	}
	if a, ok, err := loader.PodTC(pins, loader.PodTCKey("c-theirs", theirs.HostVeth)); err != nil || ok {
		t.Fatalf("the daemon attached tc for a cookie the plugin enrolled: %+v %v", a, err)
	}
	if e, ok, err := manage.Get(c); err != nil || !ok || e.ClientID != 7 {
		t.Fatalf("the plugin's manage entry was rewritten: %+v %v %v", e, ok, err)
	}
}

// A pod whose host veth is gone is not enrolled: enrolled without its tc
// program its inbound policies would go unenforced.
func TestKernelEnrollRefusesAPodWithoutItsVeth(t *testing.T) {
	testbed.Require(t)
	cg := testbed.NewCgroup(t)
	dp, pins := testbed.Datapath(t, cg, loader.Sizes{})
	manage := maps.NewManage(dp)
	n := testbed.NewNetwork(t)
	p := n.AddPod(t, "p")
	k := KernelEnroller{Manage: manage, PinDir: pins}
	rec := &cniv1.Pod{Name: "p", Namespace: "ns", ContainerId: "c-p", NetnsPath: p.NSPath, HostVeth: "kmgone0",
		Ips: []string{p.IP4.String() + "/24"}, Enrolled: true}
	err := podns.Do(testbed.NSPath(n.Node), func() error {
		_, err := k.Enroll(rec)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "kmgone0") {
		t.Fatalf("enrolled a pod whose veth is gone: %v", err)
	}
	c, err := podns.Cookie(p.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := manage.Get(c); err != nil || ok {
		t.Fatalf("a manage entry was left behind: %v %v", ok, err)
	}
}
