package main

// A pod in two networks (multus: one attachment per network, each with its
// own interface in the sandbox's netns, kmesh-cni chained in both) and
// ADDs a runtime retries.

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/internal/cnistate"
	"github.com/kmesh-go/kmesh/internal/enrollment"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/internal/fakeapi"
)

// secondNet is a second kmesh-cni network of the pods (multus), beside
// the default one.
var secondNet = netOpts{version: "1.1.0", defaultEnroll: true, name: "kmnet2", subnet: "10.245.0.0/16"}

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
	list2 := e.conflist(secondNet)
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
	list2 := e.conflist(secondNet)
	closedNet := secondNet
	closedNet.policy = conf.FailClosed
	closed2 := e.conflist(closedNet)
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

// addKmeshOnly runs kmesh-cni's ADD alone, with the chain's result of an
// earlier ADD as prevResult: the retry of ADD a runtime makes when the
// chain's answer came too late (the primary plugin, whose interface
// exists by then, is left out).
func (e *env) addKmeshOnly(list *libcni.NetworkConfigList, p *pod) error {
	e.t.Helper()
	var k map[string]any
	if err := json.Unmarshal(list.Plugins[len(list.Plugins)-1].Bytes, &k); err != nil {
		e.t.Fatal(err)
	}
	k["name"], k["cniVersion"], k["prevResult"] = list.Name, list.CNIVersion, p.result
	b, err := json.Marshal(k)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := libcni.ConfFromBytes(b)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.inNode(func() error {
		_, err := e.cni.AddNetwork(context.Background(), c, p.rt)
		return err
	})
}

// A second ADD of the same attachment that fails (the spec forbids it,
// runtimes retry) leaves what the first one set up: the manage entry as
// it was, the tc filter, the state record and the daemon's registration.
func TestKernelFailedRetriedADDLeavesTheFirst(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{defaultEnroll: true})
	closed := e.conflist(netOpts{defaultEnroll: true, policy: conf.FailClosed})
	p := e.newPod("p")
	e.mustAdd(list, p)
	cookie := e.cookie(p)
	if ok, err := e.manage.SetWorkload(cookie, 42, false); err != nil || !ok {
		t.Fatalf("set workload: %v %v", ok, err)
	}
	first := e.record(p)
	intact := func(when string) {
		t.Helper()
		e.requireEnrolled(p)
		if en, ok, err := e.manage.Get(cookie); err != nil || !ok || en.WorkloadID != 42 {
			t.Fatalf("%s: manage entry %+v %v %v", when, en, ok, err)
		}
		if r := e.record(p); r == nil || !r.Enrolled || r.TCKey != first.TCKey || !r.Created.Equal(first.Created) {
			t.Fatalf("%s: state record %+v, was %+v", when, r, first)
		}
		if d := e.daemon.Pod(p.rt.ContainerID); d == nil || !d.GetEnrolled() || d.GetHostVeth() != p.hostVeth {
			t.Fatalf("%s: daemon's record %v", when, d)
		}
		if err := e.check(list, p); err != nil {
			t.Fatalf("%s: CHECK: %v", when, err)
		}
	}

	// A retry that works changes nothing either.
	if err := e.addKmeshOnly(list, p); err != nil {
		t.Fatalf("retried ADD: %v", err)
	}
	first = e.record(p)
	intact("after a retried ADD")

	// Fails after enrolling: the daemon is down and the policy closed.
	e.daemon.Stop()
	if err := e.addKmeshOnly(closed, p); err == nil {
		t.Fatal("retried ADD succeeded with the daemon down and the policy closed")
	}
	e.daemon.Serve(t)
	intact("after a retried ADD failed without the daemon")

	// Fails after telling the daemon: the tc program cannot be attached.
	if err := os.Remove(filepath.Join(e.pins, "progs", loader.ProgToPod)); err != nil {
		t.Fatal(err)
	}
	if err := e.addKmeshOnly(list, p); err == nil {
		t.Fatal("retried ADD succeeded without the tc program")
	}
	intact("after a retried ADD failed to attach tc")
	if slices.Contains(e.daemon.Released(), p.rt.ContainerID) {
		t.Fatal("the failed retry released the sandbox at the daemon")
	}

	if err := e.del(list, p); err != nil {
		t.Fatal(err)
	}
	e.requireClean()
}

// The mark the first ADD put on the pod (decided from the API) stays when
// a retry of that ADD fails: the pod is enrolled all the same.
func TestKernelFailedRetriedADDLeavesTheMark(t *testing.T) {
	e := newEnv(t)
	api := fakeapi.New()
	api.AddNamespace("mesh", map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh})
	list := e.conflist(netOpts{kubeconfig: e.fakeAPIServer(api)})
	p := e.newPod("p").inNamespace("mesh")
	api.AddPod("mesh", "p", p.uid(), nil, nil)
	e.mustAdd(list, p)
	e.requireEnrolled(p)
	if _, has := api.Annotations("mesh", "p")[enrollment.AnnotationRedirection]; !has {
		t.Fatal("the first ADD did not mark the pod")
	}
	if err := os.Remove(filepath.Join(e.pins, "progs", loader.ProgToPod)); err != nil {
		t.Fatal(err)
	}
	if err := e.addKmeshOnly(list, p); err == nil {
		t.Fatal("retried ADD succeeded without the tc program")
	}
	e.requireEnrolled(p)
	if _, has := api.Annotations("mesh", "p")[enrollment.AnnotationRedirection]; !has {
		t.Fatal("the failed retry took the first ADD's mark back")
	}
	if err := e.del(list, p); err != nil {
		t.Fatal(err)
	}
	e.requireClean()
}

// A DEL that finds neither a record nor the netns (a repeated DEL with
// CNI_NETNS empty, as runtimes send when they no longer track it) has no
// cookie to count the netns's attachments by: the sandbox's other
// attachments, found by container id, still keep the daemon's
// registration of the sandbox, whose release would take the netns out of
// the mesh under the attachment that remains.
func TestKernelDELWithoutNetnsKeepsTheSandboxOfAnotherAttachment(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{version: "1.1.0", defaultEnroll: true})
	list2 := e.conflist(secondNet)
	p := e.newPod("p")
	q := e.secondNetwork(p)
	e.mustAdd(list, p)
	e.mustAdd(list2, q)
	if err := e.del(list2, q); err != nil {
		t.Fatal(err)
	}
	rt := *q.rt
	rt.NetNS = ""
	noNetns := &pod{Pod: q.Pod, rt: &rt}
	if err := e.del(list2, noNetns); err != nil {
		t.Fatalf("DEL without a netns: %v", err)
	}
	e.requireEnrolled(p)
	if slices.Contains(e.daemon.Released(), p.rt.ContainerID) || e.daemon.Pod(p.rt.ContainerID) == nil {
		t.Fatalf("a DEL of net1 released the sandbox at the daemon while eth0 is recorded: released %v", e.daemon.Released())
	}
	if err := e.del(list, p); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(e.daemon.Released(), p.rt.ContainerID) {
		t.Fatal("the last attachment's DEL did not release the sandbox at the daemon")
	}
	e.requireClean()
}

// attachmentRecord returns the state record of one attachment, or nil.
func (e *env) attachmentRecord(p *pod) *cnistate.Record {
	e.t.Helper()
	recs, err := cnistate.Read(e.state)
	if err != nil {
		e.t.Fatal(err)
	}
	i := slices.IndexFunc(recs, func(r *cnistate.Record) bool {
		return r.ContainerID == p.rt.ContainerID && r.IfName == p.rt.IfName
	})
	if i < 0 {
		return nil
	}
	return recs[i]
}

// The label changes between the ADDs of a pod's two networks: eth0's
// enrolled the netns, net1's decides the pod out. Enrollment is the
// netns's, so net1 follows it: its veth gets the tc filter (or what
// arrives on it would enter an enrolled netns unauthorized) and it is
// reported enrolled, so the daemon's record of the sandbox says what the
// kernel has and the daemon's release on the label change takes the netns
// out (reported out, the daemon held the sandbox out and its release did
// nothing: the netns stayed enrolled for good).
func TestKernelSecondNetworkDecidedOutFollowsTheEnrolledNetns(t *testing.T) {
	e := newEnv(t)
	api := fakeapi.New()
	api.AddNamespace("mesh", map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh})
	kc := e.fakeAPIServer(api)
	list := e.conflist(netOpts{version: "1.1.0", kubeconfig: kc})
	list2 := e.conflist(netOpts{version: "1.1.0", kubeconfig: kc, name: "kmnet2", subnet: "10.245.0.0/16"})
	p := e.newPod("p").inNamespace("mesh")
	q := e.secondNetwork(p)
	api.AddPod("mesh", "p", p.uid(), nil, nil)
	e.mustAdd(list, p)
	e.requireEnrolled(p)

	api.AddNamespace("mesh", nil)
	e.mustAdd(list2, q)
	e.requireEnrolled(q)
	e.requireEnrolled(p)
	if r := e.attachmentRecord(q); r == nil || !r.Enrolled || r.TCKey == "" {
		t.Fatalf("net1's state record: %+v", r)
	}
	if d := e.daemon.Pod(p.rt.ContainerID); d == nil || !d.GetEnrolled() || d.GetCniIfname() != "net1" {
		t.Fatalf("daemon's record after net1's ADD: %v", d)
	}
	if err := e.check(list2, q); err != nil {
		t.Fatalf("CHECK net1: %v", err)
	}

	if err := e.del(list2, q); err != nil {
		t.Fatal(err)
	}
	e.requireNoTC(q)
	e.requireEnrolled(p)
	if err := e.del(list, p); err != nil {
		t.Fatal(err)
	}
	e.requireClean()
}
