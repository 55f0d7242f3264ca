package main

// Kernel tests (TestKernel*): the real CNI chain (bridge, host-local,
// loopback, portmap, then kmesh-cni) run by libcni against namespaces the
// test made, on a real data path. Run with KMESH_KERNEL_TESTS=1 as root.

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/cnistate"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
)

var vip = netip.MustParseAddr("10.96.0.10")

func TestKernelChainEveryVersion(t *testing.T) {
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) { testChain(t, v) })
	}
}

func testChain(t *testing.T, version string) {
	e := newEnv(t)
	list := e.conflist(netOpts{version: version, defaultEnroll: true})
	a, b := e.newPod("a"), e.newPod("b")

	// ADD enrolls: manage entry with the pod's cookie, tc on the host
	// veth, and the daemon has the pod with what the chain reported.
	e.mustAdd(list, a)
	e.mustAdd(list, b)
	if a.resultVersion != version {
		t.Errorf("result version %s, want %s", a.resultVersion, version)
	}
	for _, p := range []*pod{a, b} {
		e.requireEnrolled(p)
		d := e.daemon.Pod(p.rt.ContainerID)
		if d == nil {
			t.Fatalf("daemon was not told of %s", p.Name)
		}
		if !d.GetEnrolled() || d.GetNetnsCookie() != e.cookie(p) || d.GetNetnsPath() != p.NSPath || d.GetHostVeth() != p.hostVeth ||
			!slices.Contains(d.GetIps(), p.IP4.String()) || d.GetName() != p.Name || d.GetNamespace() != "default" ||
			d.GetUid() != "uid-"+p.Name || d.GetCniIfname() != "eth0" || len(d.GetInterfaces()) != 3 {
			t.Fatalf("daemon's record of %s: %v", p.Name, d)
		}
		if r := e.record(p); r == nil || !r.Signaled || !r.Enrolled {
			t.Fatalf("state record of %s: %+v", p.Name, r)
		}
	}

	// Real traffic: pod to pod over the bridge passes the tc program on
	// b's veth; a service VIP is rewritten for the enrolled client.
	e.cg.Join(t)
	b.ServeTCP(t, 8080, "b")
	seen := func() uint64 {
		st, err := e.maps.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st["tc_seen"]
	}
	before := seen()
	if who, err := a.Ask("tcp", netip.AddrPortFrom(b.IP4, 8080).String(), 2*time.Second); err != nil || who != "b" {
		t.Fatalf("a -> b: %q %v", who, err)
	}
	if seen() <= before {
		t.Fatal("the tc program on b's host veth saw no packets")
	}
	if err := e.maps.UpsertBackend(maps.Backend{ID: 100, Addresses: []netip.Addr{b.IP4}}); err != nil {
		t.Fatal(err)
	}
	if err := e.maps.UpsertService(maps.Service{ID: 1, VIPs: []netip.Addr{vip}, Ports: []maps.Port{{Port: 80, TargetPort: 8080}},
		Policy: maps.Random, Endpoints: [][]uint32{{100}}}); err != nil {
		t.Fatal(err)
	}
	if who, err := a.Ask("tcp", netip.AddrPortFrom(vip, 80).String(), 2*time.Second); err != nil || who != "b" {
		t.Fatalf("a -> service VIP: %q %v", who, err)
	}

	// CHECK passes (the spec has no CHECK before 0.4.0).
	if version != "0.3.1" {
		for _, p := range []*pod{a, b} {
			if err := e.check(list, p); err != nil {
				t.Fatalf("CHECK %s: %v", p.Name, err)
			}
		}
	}

	// STATUS and GC exist from 1.1.0 on. GC: a sandbox the runtime no
	// longer lists (here: added through another libcni cache, so only
	// the plugins' own GC can find it) loses its enrollment; listed ones
	// keep theirs.
	if version == "1.1.0" {
		if err := e.status(list); err != nil {
			t.Fatalf("STATUS: %v", err)
		}
		stale := e.newPod("stale")
		other := *e
		other.cni = newCNIConfig(t, e)
		if err := other.add(list, stale); err != nil {
			t.Fatal(err)
		}
		stale.hostVeth = hostVethOf(stale)
		e.requireEnrolled(stale)
		staleCookie := e.cookie(stale)
		if err := e.gc(list, a, b); err != nil {
			t.Fatalf("GC: %v", err)
		}
		if e.enrolled(staleCookie) {
			t.Fatal("GC left the stale sandbox's manage entry")
		}
		if _, ok, _ := loader.PodTC(e.pins, loader.PodTCKey(stale.rt.ContainerID, stale.hostVeth)); ok {
			t.Fatal("GC left the stale sandbox's tc filter")
		}
		if e.record(stale) != nil || e.daemon.Pod(stale.rt.ContainerID) != nil {
			t.Fatal("GC left the stale sandbox's record or daemon registration")
		}
		e.requireEnrolled(a)
		e.requireEnrolled(b)
	}

	// DEL removes everything; a second DEL succeeds.
	for _, p := range []*pod{a, b} {
		cookie := e.cookie(p)
		if err := e.del(list, p); err != nil {
			t.Fatalf("DEL %s: %v", p.Name, err)
		}
		if e.enrolled(cookie) {
			t.Fatalf("DEL left %s's manage entry", p.Name)
		}
		if e.daemon.Pod(p.rt.ContainerID) != nil || !slices.Contains(e.daemon.Released(), p.rt.ContainerID) {
			t.Fatalf("daemon was not told %s is gone", p.Name)
		}
		if err := e.del(list, p); err != nil {
			t.Fatalf("second DEL %s: %v", p.Name, err)
		}
	}
	e.requireClean()
}

func hostVethOf(p *pod) string {
	for _, i := range p.result.Interfaces {
		if i.Sandbox == "" && i.Name != bridgeName {
			return i.Name
		}
	}
	return ""
}

func TestKernelNotEnrolledPodIsStillReported(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{defaultEnroll: false})
	p := e.newPod("plain")
	e.mustAdd(list, p)
	if e.enrolled(e.cookie(p)) {
		t.Fatal("a pod that is not enrolled is in the manage map")
	}
	if keys, _ := loader.PodTCKeys(e.pins); len(keys) != 0 {
		t.Fatalf("tc attached for a pod that is not enrolled: %v", keys)
	}
	d := e.daemon.Pod(p.rt.ContainerID)
	if d == nil || d.GetEnrolled() || d.GetNetnsPath() != p.NSPath || d.GetNetnsCookie() != e.cookie(p) || !strings.Contains(d.GetReason(), "defaultEnroll is false") ||
		d.GetHostVeth() != p.hostVeth {
		t.Fatalf("daemon's record: %v", d)
	}
	if err := e.check(list, p); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := e.del(list, p); err != nil {
		t.Fatal(err)
	}
	e.requireClean()
}

func TestKernelCheckFindsWhatIsMissing(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{defaultEnroll: true})
	p := e.newPod("p")
	e.mustAdd(list, p)

	if err := e.manage.Release(e.cookie(p)); err != nil {
		t.Fatal(err)
	}
	err := e.check(list, p)
	if ce := cniError(t, err); ce.Code != conf.ErrCheck {
		t.Fatalf("CHECK without manage entry: %v", err)
	}
	mustContain(t, "CHECK error", err.Error(), "missing from the manage map")

	if err := e.manage.Enroll(e.cookie(p), maps.Enrollment{}); err != nil {
		t.Fatal(err)
	}
	if err := loader.DetachPodTC(e.pins, loader.PodTCKey(p.rt.ContainerID, p.hostVeth)); err != nil {
		t.Fatal(err)
	}
	err = e.check(list, p)
	if ce := cniError(t, err); ce.Code != conf.ErrCheck {
		t.Fatalf("CHECK without tc filter: %v", err)
	}
	mustContain(t, "CHECK error", err.Error(), "no tc filter", p.hostVeth)
}

// Open policy, daemon absent: ADD succeeds at once and the pod is enrolled
// in the kernel. When the daemon is back, CHECK registers the pod again,
// and the state directory (what the daemon reads at start) has it.
func TestKernelDaemonDownOpen(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{defaultEnroll: true, policy: conf.FailOpen})
	e.daemon.Stop()
	p := e.newPod("p")
	start := time.Now()
	e.mustAdd(list, p)
	if took := time.Since(start); took > daemonTimeout {
		t.Errorf("ADD took %v with no daemon socket", took)
	}
	e.requireEnrolled(p)
	r := e.record(p)
	if r == nil || r.Signaled || !r.Enrolled || r.Cookie != e.cookie(p) {
		t.Fatalf("state record: %+v", r)
	}

	e.daemon.Serve(t)
	if e.daemon.Pod(p.rt.ContainerID) != nil {
		t.Fatal("the daemon knew the pod before anything told it")
	}
	if err := e.check(list, p); err != nil {
		t.Fatalf("CHECK after the daemon came back: %v", err)
	}
	if d := e.daemon.Pod(p.rt.ContainerID); d == nil || !d.GetEnrolled() || d.GetHostVeth() != p.hostVeth {
		t.Fatalf("daemon after CHECK: %v", d)
	}
	if r := e.record(p); r == nil || !r.Signaled {
		t.Fatalf("record not marked signalled: %+v", r)
	}

	// A daemon that restarts and forgets is told again the same way.
	e.daemon.Forget()
	if err := e.check(list, p); err != nil || e.daemon.Pod(p.rt.ContainerID) == nil {
		t.Fatalf("CHECK after a daemon restart: %v", err)
	}

	// Daemon absent at DEL: DEL still succeeds and cleans the kernel.
	e.daemon.Stop()
	if err := e.del(list, p); err != nil {
		t.Fatal(err)
	}
	e.requireClean()
}

// Open policy, daemon hung: ADD waits no longer than the daemon timeout.
func TestKernelDaemonHungOpen(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{defaultEnroll: true})
	e.daemon.SetDelay(time.Minute)
	p := e.newPod("p")
	start := time.Now()
	e.mustAdd(list, p)
	took := time.Since(start)
	t.Logf("ADD with a hung daemon took %v", took)
	if took < daemonTimeout || took > daemonTimeout+2*time.Second {
		t.Errorf("ADD took %v, want about the %v daemon timeout", took, daemonTimeout)
	}
	e.requireEnrolled(p)
}

// Closed policy, daemon absent: ADD fails with code 11 and leaves nothing;
// the runtime's DEL then succeeds. With the daemon there it works.
func TestKernelDaemonDownClosed(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{defaultEnroll: true, policy: conf.FailClosed})
	e.daemon.Stop()
	p := e.newPod("p")
	err := e.add(list, p)
	if err == nil {
		t.Fatal("ADD succeeded without a daemon under failurePolicy closed")
	}
	ce := cniError(t, err)
	if ce.Code != types.ErrTryAgainLater {
		t.Fatalf("code %d, want 11: %v", ce.Code, err)
	}
	mustContain(t, "message", ce.Msg, "not enrolled", "kmesh daemon unreachable")
	mustContain(t, "details", ce.Details, "failurePolicy is closed")
	e.requireClean()
	if err := e.del(list, p); err != nil {
		t.Fatalf("DEL after the failed ADD: %v", err)
	}
	e.requireClean()

	e.daemon.Serve(t)
	q := e.newPod("q")
	e.mustAdd(list, q)
	e.requireEnrolled(q)
}

// Under failurePolicy closed ADD needs the daemon and the data path, so
// STATUS reports either missing with code 50.
func TestKernelStatusReportsTheDaemon(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{version: "1.1.0", policy: conf.FailClosed})
	if err := e.status(list); err != nil {
		t.Fatalf("STATUS with a ready daemon: %v", err)
	}
	e.daemon.SetReady(false)
	err := e.status(list)
	if ce := cniError(t, err); ce.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS, daemon not ready: %v", err)
	}
	mustContain(t, "STATUS error", err.Error(), "not ready", "fake daemon set not ready")
	e.daemon.Stop()
	err = e.status(list)
	if ce := cniError(t, err); ce.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS, daemon gone: %v", err)
	}
	mustContain(t, "STATUS error", err.Error(), "unreachable")
	gone := *e
	gone.pins = e.pins + "-missing"
	err = e.status(gone.conflist(netOpts{version: "1.1.0", policy: conf.FailClosed}))
	if ce := cniError(t, err); ce.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS, no data path: %v", err)
	}
	mustContain(t, "STATUS error", err.Error(), "data path not loaded")
}

// Under failurePolicy open ADD serves pods while the daemon is not ready,
// not there, or has not loaded the data path, so STATUS succeeds (the spec:
// zero when the plugin can service ADD). A runtime marks the node's
// network not ready while STATUS fails: failing here turned every daemon
// restart into a node that takes no pods, which open exists to avoid.
func TestKernelStatusOpenPolicyServesAdd(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{version: "1.1.0", defaultEnroll: true, policy: conf.FailOpen})
	e.daemon.SetReady(false)
	if err := e.status(list); err != nil {
		t.Fatalf("STATUS, daemon not ready, open: %v", err)
	}
	e.daemon.Stop()
	if err := e.status(list); err != nil {
		t.Fatalf("STATUS, daemon gone, open: %v", err)
	}
	p := e.newPod("p")
	e.mustAdd(list, p)
	e.requireEnrolled(p)
	gone := *e
	gone.pins = e.pins + "-missing"
	if err := e.status(gone.conflist(netOpts{version: "1.1.0", policy: conf.FailOpen})); err != nil {
		t.Fatalf("STATUS, no data path, open: %v", err)
	}
	q := e.newPod("q")
	e.mustAdd(gone.conflist(netOpts{version: "1.1.0", defaultEnroll: true, policy: conf.FailOpen}), q)
	for _, x := range []*pod{p, q} {
		if err := e.del(list, x); err != nil {
			t.Fatal(err)
		}
	}
	e.requireClean()
}

// GC also removes tc attachments whose interface is gone and that no record
// owns (a run killed between attach and record, or a lost state dir).
func TestKernelGCRemovesDefunctLinks(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{version: "1.1.0", defaultEnroll: true})
	p, q := e.newPod("p"), e.newPod("q")
	e.mustAdd(list, p)
	e.mustAdd(list, q)
	// Lose p's record, then its veth (the pod namespace goes away).
	if err := removeRecord(e, p); err != nil {
		t.Fatal(err)
	}
	if err := e.inNode(func() error { return deleteLink(p.hostVeth) }); err != nil {
		t.Fatal(err)
	}
	if err := e.gc(list, p, q); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if _, ok, _ := loader.PodTC(e.pins, loader.PodTCKey(p.rt.ContainerID, p.hostVeth)); ok {
		t.Fatal("GC left a defunct tc attachment")
	}
	e.requireEnrolled(q)
}

func removeRecord(e *env, p *pod) error {
	d, err := cnistate.Open(e.state, false)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Remove(p.rt.ContainerID, p.rt.IfName)
}

// newCNIConfig is a second runtime: same plugins, its own result cache.
func newCNIConfig(t *testing.T, e *env) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(pluginPaths(t), filepath.Join(t.TempDir(), "cache"), nil)
}

func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkDel(l)
}

// A tc attachment that fails undoes the manage entry, the record and the
// daemon's registration: ADD fails with code 101 and leaves nothing.
func TestKernelTCFailureLeavesNothing(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{defaultEnroll: true})
	if err := os.Remove(filepath.Join(e.pins, "progs", loader.ProgToPod)); err != nil {
		t.Fatal(err)
	}
	p := e.newPod("p")
	err := e.add(list, p)
	if ce := cniError(t, err); ce.Code != conf.ErrAttachTC {
		t.Fatalf("code %d: %v", ce.Code, err)
	}
	mustContain(t, "error", err.Error(), "attach tc to host veth", "is the kmesh data path loaded")
	e.requireClean()
	if e.daemon.Pod(p.rt.ContainerID) != nil {
		t.Fatal("the daemon still has the pod whose ADD failed")
	}
	if err := e.del(list, p); err != nil {
		t.Fatal(err)
	}
}

// Without a loaded data path, open lets the pod start unenrolled (the
// daemon enrolls it once it has loaded one); closed fails with code 11.
func TestKernelNoDatapath(t *testing.T) {
	e := newEnv(t)
	e.pins += "-not-loaded"
	p := e.newPod("p")
	e.mustAdd(e.conflist(netOpts{defaultEnroll: true}), p)
	d := e.daemon.Pod(p.rt.ContainerID)
	if d == nil || d.GetEnrolled() || !strings.Contains(d.GetReason(), "data path not loaded") {
		t.Fatalf("daemon's record: %v", d)
	}
	q := e.newPod("q")
	err := e.add(e.conflist(netOpts{defaultEnroll: true, policy: conf.FailClosed}), q)
	if ce := cniError(t, err); ce.Code != types.ErrTryAgainLater {
		t.Fatalf("closed: %v", err)
	}
	mustContain(t, "error", err.Error(), "data path not loaded", "is the kmesh daemon running")
	if e.record(q) != nil || e.daemon.Pod(q.rt.ContainerID) != nil {
		t.Fatal("the failed ADD left a record or a registration")
	}
}

// Runtimes add pods in parallel: each gets its own entry, link and record,
// and parallel DELs leave nothing.
func TestKernelConcurrentAddsAndDels(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{version: "1.1.0", defaultEnroll: true})
	pods := make([]*pod, 8)
	for i := range pods {
		pods[i] = e.newPod(fmt.Sprintf("p%d", i))
	}
	parallel := func(fn func(p *pod) error) {
		t.Helper()
		errs := make(chan error, len(pods))
		for _, p := range pods {
			go func() { errs <- fn(p) }()
		}
		for range pods {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
	parallel(func(p *pod) error { return e.add(list, p) })
	for _, p := range pods {
		p.hostVeth = hostVethOf(p)
		e.requireEnrolled(p)
		if e.daemon.Pod(p.rt.ContainerID) == nil {
			t.Fatalf("daemon does not know %s", p.Name)
		}
	}
	if err := e.gc(list, pods...); err != nil {
		t.Fatalf("GC with every pod valid: %v", err)
	}
	for _, p := range pods {
		e.requireEnrolled(p)
	}
	parallel(func(p *pod) error { return e.del(list, p) })
	e.requireClean()
}

// After ADD the daemon owns enrollment (labels change): CHECK checks the
// kernel against the daemon's view, and DEL removes what the daemon added.
func TestKernelDaemonChangesEnrollmentAfterAdd(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{defaultEnroll: true})
	in, out := e.newPod("in"), e.newPod("out")
	e.mustAdd(list, in)
	e.mustAdd(e.conflist(netOpts{defaultEnroll: false}), out)

	// The daemon releases "in" (label removed): CHECK passes.
	if err := e.manage.Release(e.cookie(in)); err != nil {
		t.Fatal(err)
	}
	if err := loader.DetachPodTC(e.pins, loader.PodTCKey(in.rt.ContainerID, in.hostVeth)); err != nil {
		t.Fatal(err)
	}
	e.daemon.SetEnrolled(in.rt.ContainerID, false)
	if err := e.check(list, in); err != nil {
		t.Fatalf("CHECK of a pod the daemon released: %v", err)
	}

	// The daemon enrolls "out" (label added) with the host veth ADD
	// reported: CHECK wants the kernel side, and DEL removes it.
	d := e.daemon.Pod(out.rt.ContainerID)
	if d.GetHostVeth() != out.hostVeth {
		t.Fatalf("ADD did not report the host veth of a pod it did not enroll: %v", d)
	}
	e.daemon.SetEnrolled(out.rt.ContainerID, true)
	if err := e.check(list, out); err == nil {
		t.Fatal("CHECK passed a pod the daemon enrolled but the kernel does not have")
	}
	if err := e.manage.Enroll(e.cookie(out), maps.Enrollment{}); err != nil {
		t.Fatal(err)
	}
	if err := e.inNode(func() error {
		return loader.AttachPodTC(e.pins, loader.PodTCKey(out.rt.ContainerID, d.GetHostVeth()), e.ifindex(out.hostVeth))
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.check(list, out); err != nil {
		t.Fatalf("CHECK of a pod the daemon enrolled: %v", err)
	}
	for _, p := range []*pod{in, out} {
		if err := e.del(list, p); err != nil {
			t.Fatal(err)
		}
	}
	e.requireClean()
}

// Podman's CNI backend names no Kubernetes pod: it passes the container's
// name as K8S_POD_NAME and no namespace (for the dnsname plugin), and a
// container name may hold capitals and underscores. ADD treats that as
// CNI_ARGS naming no pod (defaultEnroll decides), DEL undoes it.
func TestKernelPodmanArgsNameNoPod(t *testing.T) {
	e := newEnv(t)
	list := e.conflist(netOpts{defaultEnroll: true})
	p := e.newPod("podman")
	p.rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAME", "My_Web.app-1"}}
	e.mustAdd(list, p)
	e.requireEnrolled(p)
	d := e.daemon.Pod(p.rt.ContainerID)
	if d == nil || !d.GetEnrolled() || d.GetName() != "" || d.GetNamespace() != "" || !strings.Contains(d.GetReason(), "defaultEnroll is true") {
		t.Fatalf("daemon's record: %v", d)
	}
	if err := e.del(list, p); err != nil {
		t.Fatal(err)
	}
	e.requireClean()
}
