package cniserver

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/cnistate"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// A cookie already in the manage map keeps the entry its writer made (the
// workload filled in), and an attachment without a live filter gets one:
// the daemon enrolls a sandbox when it holds that the netns is out, and a
// veth left without the filter would let what arrives on it in unchecked.
// One with a live filter keeps it as it is.
func TestKernelEnrollKeepsTheirEntryAndFillsMissingTC(t *testing.T) {
	testbed.Require(t)
	cg := testbed.NewCgroup(t)
	dp, pins := testbed.Datapath(t, cg, loader.Sizes{})
	manage := maps.NewManage(dp)
	n := testbed.NewNetwork(t)
	mine, theirs := n.AddPod(t, "mine"), n.AddPod(t, "theirs")
	k := KernelEnroller{Manage: manage, PinDir: pins}
	pod := func(p *testbed.Pod) *cniv1.Pod {
		return &cniv1.Pod{Name: p.Name, ContainerId: "c-" + p.Name, NetnsPath: p.NSPath, HostVeth: p.HostVeth,
			Ips: []string{p.IP4.String() + "/24"}, Enrolled: true, CniIfname: "eth0"}
	}
	c, err := podns.Cookie(theirs.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := manage.Enroll(c, maps.Enrollment{ClientID: 7}); err != nil {
		t.Fatal(err)
	}
	err = podns.Do(testbed.NSPath(n.Node), func() error {
		for _, p := range []*testbed.Pod{mine, theirs} {
			if _, err := k.Enroll([]*cniv1.Pod{pod(p)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*testbed.Pod{mine, theirs} {
		if a, ok, err := loader.PodTC(pins, loader.PodTCKey("c-"+p.Name, p.HostVeth)); err != nil || !ok || !a.Live {
			t.Fatalf("%s: no live tc: %+v %v %v", p.Name, a, ok, err)
		}
	}
	if e, ok, err := manage.Get(c); err != nil || !ok || e.ClientID != 7 {
		t.Fatalf("the existing manage entry was rewritten: %+v %v %v", e, ok, err)
	}
}

// addAttachment puts a second network's veth into p's netns (multus: net1
// beside eth0) and returns its host end's name. It goes with the netns.
func addAttachment(t *testing.T, n *testbed.Network, p *testbed.Pod, ifname string) string {
	t.Helper()
	host, peer := testbed.Name(), testbed.Name()
	podNS, err := netns.GetFromPath(p.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	defer podNS.Close()
	err = podns.Do(testbed.NSPath(n.Node), func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: peer, PeerNamespace: netlink.NsFd(podNS)}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		l, err := netlink.LinkByName(host)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err == nil {
		err = podns.Do(p.NSPath, func() error {
			l, err := netlink.LinkByName(peer)
			if err != nil {
				return err
			}
			return netlink.LinkSetName(l, ifname)
		})
	}
	if err != nil {
		t.Fatalf("second attachment of %s: %v", p.Name, err)
	}
	return host
}

// attachments are a two-network pod's records: eth0 and net1, one netns.
func attachments(p *testbed.Pod, net1Veth string, enrolled bool) []*cniv1.Pod {
	rec := func(ifname, veth, ip string) *cniv1.Pod {
		return &cniv1.Pod{Name: p.Name, Namespace: "ns", Uid: "u-" + p.Name, ContainerId: "c-" + p.Name, NetnsPath: p.NSPath,
			HostVeth: veth, CniIfname: ifname, Ips: []string{ip}, Enrolled: enrolled, Reason: "ADD"}
	}
	return []*cniv1.Pod{rec("eth0", p.HostVeth, p.IP4.String()+"/24"), rec("net1", net1Veth, "10.99.0.5/24")}
}

func liveTC(t *testing.T, pins, containerID, veth string) bool {
	t.Helper()
	a, ok, err := loader.PodTC(pins, loader.PodTCKey(containerID, veth))
	if err != nil {
		t.Fatal(err)
	}
	return ok && a.Live
}

// A pod in two networks that a label change enrolls after ADD (which left
// it out) gets the tc program on the host veth of both attachments, not
// only the one reported last; releasing it takes both off.
func TestRegistryEnrollsEveryAttachment(t *testing.T) {
	testbed.Require(t)
	cg := testbed.NewCgroup(t)
	dp, pins := testbed.Datapath(t, cg, loader.Sizes{})
	manage := maps.NewManage(dp)
	n := testbed.NewNetwork(t)
	p := n.AddPod(t, "multi")
	net1 := addAttachment(t, n, p, "net1")
	c, err := podns.Cookie(p.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRegistry("", KernelEnroller{Manage: manage, PinDir: pins})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, a := range attachments(p, net1, false) {
		a.NetnsCookie = c
		if _, err := r.Add(a); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(r.Pods()); got != 1 {
		t.Fatalf("%d sandboxes, want 1", got)
	}
	if got := len(r.Attachments()); got != 2 {
		t.Fatalf("%d attachments, want 2", got)
	}
	inNode := func(fn func() error) {
		t.Helper()
		if err := podns.Do(testbed.NSPath(n.Node), fn); err != nil {
			t.Fatal(err)
		}
	}
	inNode(func() error { return r.SetEnrolled("c-multi", true, "label added") })
	for _, v := range []string{p.HostVeth, net1} {
		if !liveTC(t, pins, "c-multi", v) {
			t.Errorf("enrolled by a label change, but %s has no tc program", v)
		}
	}
	if _, ok, err := manage.Get(c); err != nil || !ok {
		t.Fatalf("no manage entry: %v %v", ok, err)
	}
	inNode(func() error { return r.SetEnrolled("c-multi", false, "label removed") })
	for _, v := range []string{p.HostVeth, net1} {
		if liveTC(t, pins, "c-multi", v) {
			t.Errorf("released, but %s keeps its tc program", v)
		}
	}
	if _, ok, err := manage.Get(c); err != nil || ok {
		t.Fatalf("released, but the manage entry stays: %v %v", ok, err)
	}

	// net1's DEL ran (the plugin tells the daemon nothing of it while eth0
	// is left): enrolling again skips its gone veth rather than fail.
	if err := podns.Do(p.NSPath, func() error {
		l, err := netlink.LinkByName("net1")
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatal(err)
	}
	inNode(func() error { return r.SetEnrolled("c-multi", true, "label added again") })
	if !liveTC(t, pins, "c-multi", p.HostVeth) {
		t.Error("eth0 has no tc program after net1 went")
	}
}

// A daemon that starts after kmesh-cni set up a two-network pod it could
// not enroll (no data path yet) enrolls the pod with the tc program on
// both attachments' veths, not only the first record's.
func TestAdoptEnrollsEveryAttachment(t *testing.T) {
	testbed.Require(t)
	cg := testbed.NewCgroup(t)
	dp, pins := testbed.Datapath(t, cg, loader.Sizes{})
	manage := maps.NewManage(dp)
	n := testbed.NewNetwork(t)
	p := n.AddPod(t, "early")
	net1 := addAttachment(t, n, p, "net1")
	var plugin []PluginPod
	for _, a := range attachments(p, net1, false) {
		a.Reason = "pod label" + cnistate.NotEnrolledYet + "kmesh data path not loaded"
		plugin = append(plugin, PluginPod{Pod: a, WantsEnrollment: true})
	}
	r, err := NewRegistry(filepath.Join(t.TempDir(), "pods.json"), KernelEnroller{Manage: manage, PinDir: pins})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var a Adoption
	if err := podns.Do(testbed.NSPath(n.Node), func() error {
		var err error
		a, err = r.Adopt(plugin, true)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(a.Failed) != 0 || len(a.Enrolled) != 1 {
		t.Fatalf("adoption %+v", a)
	}
	for _, v := range []string{p.HostVeth, net1} {
		if !liveTC(t, pins, "c-early", v) {
			t.Errorf("enrolled at the daemon's start, but %s has no tc program", v)
		}
	}
	for _, q := range r.Attachments() {
		if !q.Enrolled || q.NetnsCookie == 0 {
			t.Errorf("attachment %s not recorded enrolled: %v", q.CniIfname, q)
		}
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
		_, err := k.Enroll([]*cniv1.Pod{rec})
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

// The label changes between the ADDs of a two-network pod: eth0's ADD
// enrolled the netns, net1's decided the pod out. Either net1's ADD saw
// the netns enrolled and followed it (tc on its veth, reported enrolled:
// kmesh-cni's add.go), or it ran alongside eth0's (containerd adds a
// pod's networks in parallel), did not see it, and reported out with no
// filter. Both ways the registry holds the sandbox enrolled, as the
// kernel has it, with a filter on both veths, and the label change it
// applies releases the netns and both filters: holding the sandbox out
// (the newest report), SetEnrolled(false) did nothing and the netns
// stayed enrolled for good, net1's veth unfiltered.
func TestRegistryReleasesANetnsASecondADDDecidedOut(t *testing.T) {
	for _, followed := range []bool{true, false} {
		name := "reported out"
		if followed {
			name = "followed by the plugin"
		}
		t.Run(name, func(t *testing.T) { testSecondADDDecidedOut(t, followed) })
	}
}

func testSecondADDDecidedOut(t *testing.T, followed bool) {
	testbed.Require(t)
	cg := testbed.NewCgroup(t)
	dp, pins := testbed.Datapath(t, cg, loader.Sizes{})
	manage := maps.NewManage(dp)
	n := testbed.NewNetwork(t)
	p := n.AddPod(t, "follow")
	net1 := addAttachment(t, n, p, "net1")
	c, err := podns.Cookie(p.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	k := KernelEnroller{Manage: manage, PinDir: pins}
	r, err := NewRegistry("", k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	inNode := func(fn func() error) {
		t.Helper()
		if err := podns.Do(testbed.NSPath(n.Node), fn); err != nil {
			t.Fatal(err)
		}
	}
	atts := attachments(p, net1, true)
	atts[1].Enrolled = followed
	for _, a := range atts {
		a.NetnsCookie = c
		if a.Enrolled {
			// What the ADD did in the kernel before it told the daemon.
			inNode(func() error { _, err := k.Enroll([]*cniv1.Pod{a}); return err })
		}
		inNode(func() error { _, err := r.Add(a); return err })
	}
	if ps := r.Pods(); len(ps) != 1 || !ps[0].Enrolled {
		t.Fatalf("sandbox after both ADDs: %v", ps)
	}
	for _, v := range []string{p.HostVeth, net1} {
		if !liveTC(t, pins, "c-follow", v) {
			t.Errorf("the netns is enrolled, but %s has no tc program", v)
		}
	}
	inNode(func() error { return r.SetEnrolled("c-follow", false, "label removed") })
	for _, v := range []string{p.HostVeth, net1} {
		if liveTC(t, pins, "c-follow", v) {
			t.Errorf("released, but %s keeps its tc program", v)
		}
	}
	if _, ok, err := manage.Get(c); err != nil || ok {
		t.Fatalf("released, but the manage entry stays: %v %v", ok, err)
	}
}
