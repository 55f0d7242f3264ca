package main

// A pod in two networks (multus: one attachment per network, each with its
// own interface in the sandbox's netns, kmesh-cni chained in both) and
// ADDs a runtime retries.

import (
	"slices"
	"testing"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
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

// A netns stays enrolled while any of its attachments is there: DEL or GC
// of one attachment, or a failed ADD of another, leaves the other's
// enrollment (manage entry, tc filter, daemon registration); the last
// attachment's DEL releases the netns. The entry the first ADD wrote (with
// what the daemon filled in since) is not rewritten by the second.
func TestKernelTwoNetworksKeepTheNetnsEnrolledUntilTheLast(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{version: "1.1.0", defaultEnroll: true})
	list2 := e.conflist(netOpts{version: "1.1.0", defaultEnroll: true, name: "kmnet2", subnet: "10.245.0.0/16"})
	closed2 := e.conflist(netOpts{version: "1.1.0", defaultEnroll: true, name: "kmnet2", subnet: "10.245.0.0/16", policy: conf.FailClosed})
	p := e.newPod("p")
	q := e.secondNetwork(p)
	e.mustAdd(list, p)
	cookie := e.cookie(p)
	if ok, err := e.manage.SetWorkload(cookie, 42, false); err != nil || !ok {
		t.Fatalf("set workload: %v %v", ok, err)
	}
	stillP := func(when string) {
		t.Helper()
		e.requireEnrolled(p)
		if en, ok, err := e.manage.Get(cookie); err != nil || !ok || en.WorkloadID != 42 {
			t.Fatalf("%s: manage entry %+v %v %v", when, en, ok, err)
		}
		if e.record(p) == nil || e.daemon.Pod(p.rt.ContainerID) == nil || slices.Contains(e.daemon.Released(), p.rt.ContainerID) {
			t.Fatalf("%s: record %+v, daemon %v, released %v", when, e.record(p), e.daemon.Pod(p.rt.ContainerID), e.daemon.Released())
		}
		if err := e.check(list, p); err != nil {
			t.Fatalf("%s: CHECK eth0: %v", when, err)
		}
	}

	// The second network's ADD fails after enrolling (the daemon is
	// down, the policy closed): the first attachment keeps its netns.
	e.daemon.Stop()
	if err := e.add(closed2, q); err == nil {
		t.Fatal("ADD net1 succeeded with the daemon down and the policy closed")
	}
	e.daemon.Serve(t)
	stillP("after a failed ADD of net1")
	if err := e.del(closed2, q); err != nil {
		t.Fatal(err)
	}

	e.mustAdd(list2, q)
	e.requireEnrolled(q)
	stillP("after ADD net1")
	if err := e.del(list2, q); err != nil {
		t.Fatalf("DEL net1: %v", err)
	}
	e.requireNoTC(q)
	stillP("after DEL net1")
	if err := e.del(list2, q); err != nil {
		t.Fatalf("second DEL net1: %v", err)
	}
	stillP("after a second DEL net1")

	// GC of the second network, which no longer lists the attachment.
	e.mustAdd(list2, q)
	if err := e.gc(list2); err != nil {
		t.Fatalf("GC: %v", err)
	}
	e.requireNoTC(q)
	stillP("after GC of net1")

	if err := e.del(list, p); err != nil {
		t.Fatal(err)
	}
	if e.enrolled(cookie) || e.daemon.Pod(p.rt.ContainerID) != nil {
		t.Fatal("the last attachment's DEL left the netns enrolled or registered")
	}
	e.requireClean()

	// Both attachments deleted at once: neither leaves the entry to the
	// other.
	r := e.newPod("r")
	s := e.secondNetwork(r)
	e.mustAdd(list, r)
	e.mustAdd(list2, s)
	errs := make(chan error, 2)
	go func() { errs <- e.del(list, r) }()
	go func() { errs <- e.del(list2, s) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	e.requireClean()
}
