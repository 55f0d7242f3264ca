package main

// A pod in two networks (multus: one attachment per network, each with its
// own interface in the sandbox's netns, kmesh-cni chained in both) and
// ADDs a runtime retries.

import (
	"testing"

	"github.com/kmesh-go/kmesh/bpf/loader"
)

// secondNetwork is p's attachment to another network: the same sandbox
// (container id, netns), another interface.
func (e *env) secondNetwork(p *pod) *pod {
	rt := *p.rt
	rt.IfName = "net1"
	return &pod{Pod: p.Pod, rt: &rt}
}

// requireNoTC checks that the attachment's tc filter is gone.
func (e *env) requireNoTC(p *pod) {
	e.t.Helper()
	if _, ok, _ := loader.PodTC(e.pins, loader.PodTCKey(p.rt.ContainerID, p.hostVeth)); ok {
		e.t.Fatalf("tc filter of %s/%s is still there", p.rt.ContainerID, p.rt.IfName)
	}
}

// The daemon keeps the last attachment added; CHECK of the other one
// checks that one's own tc filter, not the filter of the veth the daemon
// names.
func TestKernelCheckOfOneOfTwoNetworksChecksItsOwnFilter(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{version: "1.1.0", defaultEnroll: true})
	list2 := e.conflist(netOpts{version: "1.1.0", defaultEnroll: true, name: "kmnet2", subnet: "10.245.0.0/16"})
	p := e.newPod("p")
	q := e.secondNetwork(p)
	e.mustAdd(list, p)
	e.mustAdd(list2, q)
	if d := e.daemon.Pod(p.rt.ContainerID); d.GetHostVeth() != q.hostVeth || d.GetCniIfname() != "net1" {
		t.Fatalf("daemon's record: %v", d)
	}
	if err := e.check(list, p); err != nil {
		t.Fatalf("CHECK eth0: %v", err)
	}
	// The other attachment's filter goes (its veth too, in life): this
	// attachment's own is there.
	if err := loader.DetachPodTC(e.pins, loader.PodTCKey(q.rt.ContainerID, q.hostVeth)); err != nil {
		t.Fatal(err)
	}
	if err := e.check(list, p); err != nil {
		t.Fatalf("CHECK eth0 after net1's filter went: %v", err)
	}
	if err := e.del(list2, q); err != nil {
		t.Fatal(err)
	}
	if err := e.del(list, p); err != nil {
		t.Fatal(err)
	}
	e.requireClean()
}
