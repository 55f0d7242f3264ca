package cniserver

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/internal/cnistate"
)

// fakeEnroller is the manage map as a set, and the host veths with a tc
// filter; it records every Enroll.
type fakeEnroller struct {
	cookies  map[uint64]bool
	enrolled []uint64
	tc       map[string]bool
}

func (f *fakeEnroller) Enroll(atts []*cniv1.Pod) (uint64, error) {
	f.cookies[atts[0].NetnsCookie] = true
	f.enrolled = append(f.enrolled, atts[0].NetnsCookie)
	for _, a := range atts {
		if f.tc == nil {
			f.tc = map[string]bool{}
		}
		f.tc[a.HostVeth] = true
	}
	return atts[0].NetnsCookie, nil
}
func (f *fakeEnroller) Release(atts []*cniv1.Pod) error {
	for _, a := range atts {
		delete(f.cookies, a.NetnsCookie)
		delete(f.tc, a.HostVeth)
	}
	return nil
}
func (f *fakeEnroller) Enrolled(c uint64) (bool, error) {
	return f.cookies[c], nil
}
func (f *fakeEnroller) List() (map[uint64]bool, error) {
	out := map[uint64]bool{}
	for c, in := range f.cookies {
		if in {
			out[c] = true
		}
	}
	return out, nil
}

func ids(pods []*cniv1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.ContainerId)
	}
	slices.Sort(out)
	return out
}

func byID(r *Registry, id string) *cniv1.Pod {
	for _, p := range r.Pods() {
		if p.ContainerId == id {
			return p
		}
	}
	return nil
}

// What the daemon knows at start from its own file, the manage map and
// kmesh-cni's records, when pods came and went while it was away.
func TestAdoptPluginRecords(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pods.json")
	e := &fakeEnroller{cookies: map[uint64]bool{}}
	// The previous run knew: kept (enrolled, record), relabelled (the
	// daemon released it after ADD enrolled it), gone (DEL ran while
	// away: no record, cookie released), gone-unenrolled (same, never
	// enrolled) and held (no record, but still in the manage map).
	prev, err := NewRegistry(file, e)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*cniv1.Pod{
		{ContainerId: "kept", Name: "kept", NetnsCookie: 1, Enrolled: true},
		{ContainerId: "relabelled", Name: "relabelled", NetnsCookie: 2, Enrolled: false, Reason: "label removed"},
		{ContainerId: "gone", Name: "gone", NetnsCookie: 3, Enrolled: true},
		{ContainerId: "gone-unenrolled", Name: "gone-unenrolled", NetnsCookie: 4},
		{ContainerId: "held", Name: "held", NetnsCookie: 5, Enrolled: true},
	} {
		e.cookies[p.NetnsCookie] = p.Enrolled
		if _, err := prev.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	// The previous run stops (and writes its file).
	if err := prev.Close(); err != nil {
		t.Fatal(err)
	}
	// While it was away: gone's DEL released cookie 3; new pods were
	// added, one enrolled (cookie 6), one not (7), one whose ADD enrolled
	// it but whose entry is gone again (8).
	delete(e.cookies, 3)
	delete(e.cookies, 2)
	delete(e.cookies, 4)
	e.cookies[6] = true
	e.enrolled = nil
	// Two pods ADD wanted enrolled but found no data path: one whose netns
	// is still there (a file stands for it; the fake enroller reads no
	// netns), one whose netns is gone.
	netns := filepath.Join(t.TempDir(), "netns-9")
	if err := os.WriteFile(netns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	plugin := []PluginPod{
		{Pod: &cniv1.Pod{ContainerId: "kept", Name: "kept", NetnsCookie: 1, Enrolled: true}, WantsEnrollment: true},
		{Pod: &cniv1.Pod{ContainerId: "relabelled", Name: "relabelled", NetnsCookie: 2, Enrolled: true, Reason: "pod label"}, WantsEnrollment: true},
		{Pod: &cniv1.Pod{ContainerId: "held", Name: "held", NetnsCookie: 5, Enrolled: true}, WantsEnrollment: true},
		{Pod: &cniv1.Pod{ContainerId: "new", Name: "new", NetnsCookie: 6, Enrolled: true, HostVeth: "veth6"}, WantsEnrollment: true},
		{Pod: &cniv1.Pod{ContainerId: "new-unenrolled", Name: "new-unenrolled", NetnsCookie: 7}},
		{Pod: &cniv1.Pod{ContainerId: "new-lost", Name: "new-lost", NetnsCookie: 8, Enrolled: true}, WantsEnrollment: true},
		{Pod: &cniv1.Pod{ContainerId: "new-early", Name: "new-early", NetnsCookie: 9, NetnsPath: netns,
			Reason: "no kubeconfig; defaultEnroll is true" + cnistate.NotEnrolledYet + "kmesh data path not loaded"}, WantsEnrollment: true},
		{Pod: &cniv1.Pod{ContainerId: "new-early-gone", Name: "new-early-gone", NetnsCookie: 10, NetnsPath: netns + "-gone"}, WantsEnrollment: true},
	}

	r, err := NewRegistry(file, e)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// NewRegistry named cookie 6 anonymously; the record names it.
	if got := ids(r.Pods()); !slices.Contains(got, "unknown-netns-6") {
		t.Fatalf("before adoption %v", got)
	}
	a, err := r.Adopt(plugin, true)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(a.Added)
	slices.Sort(a.Dropped)
	if !slices.Equal(a.Added, []string{"new", "new-early", "new-early-gone", "new-lost", "new-unenrolled"}) ||
		!slices.Equal(a.Dropped, []string{"gone", "gone-unenrolled"}) || !slices.Equal(a.Enrolled, []string{"new-early"}) ||
		len(a.Failed) != 1 || a.Failed["new-early-gone"] == nil {
		t.Fatalf("adoption %+v", a)
	}
	want := []string{"held", "kept", "new", "new-early", "new-early-gone", "new-lost", "new-unenrolled", "relabelled"}
	if got := ids(r.Pods()); !slices.Equal(got, want) {
		t.Fatalf("pods %v, want %v", got, want)
	}
	if p := byID(r, "relabelled"); p.Enrolled || p.Reason != "label removed" {
		t.Errorf("the daemon's own decision lost to ADD's record: %v", p)
	}
	if p := byID(r, "new"); !p.Enrolled || p.HostVeth != "veth6" {
		t.Errorf("new pod %v", p)
	}
	if p := byID(r, "new-lost"); p.Enrolled || !strings.Contains(p.Reason, "not in the manage map") {
		t.Errorf("a record whose cookie is gone is registered enrolled: %v", p)
	}
	if p := byID(r, "new-early"); !p.Enrolled || p.Reason != "no kubeconfig; defaultEnroll is true; enrolled by the daemon at its start (kmesh-cni found no data path)" {
		t.Errorf("a pod ADD could not enroll: %v", p)
	}
	if p := byID(r, "new-early-gone"); p.Enrolled || !strings.Contains(p.Reason, "could not enroll it") {
		t.Errorf("a pod whose netns is gone: %v", p)
	}
	// Only the pod ADD could not enroll: what the plugin enrolled (or
	// its DEL released) is the plugin's.
	if !slices.Equal(e.enrolled, []uint64{9}) {
		t.Errorf("adoption enrolled cookies %v, want only 9", e.enrolled)
	}
	// It was saved: a third start knows the same.
	r2, err := NewRegistry(file, e)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if got := ids(r2.Pods()); !slices.Equal(got, want) {
		t.Fatalf("after a restart %v", got)
	}

	// Without the state directory nothing can be called gone.
	if _, err := r2.Adopt(nil, false); err != nil {
		t.Fatal(err)
	}
	if got := ids(r2.Pods()); !slices.Equal(got, want) {
		t.Fatalf("incomplete records dropped pods: %v", got)
	}
}

func TestPluginPods(t *testing.T) {
	dir := t.TempDir()
	pods, complete, err := PluginPods(filepath.Join(dir, "missing"), "/sys/fs/bpf/kmesh")
	if err != nil || complete || len(pods) != 0 {
		t.Fatalf("missing directory: %v %v %v", pods, complete, err)
	}
	d, err := cnistate.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, r := range []*cnistate.Record{
		{ContainerID: "a", IfName: "eth0", BPFDir: "/sys/fs/bpf/kmesh/", Cookie: 1, Enrolled: true, PodName: "a"},
		{ContainerID: "b", IfName: "eth0", BPFDir: "/sys/fs/bpf/other", Cookie: 2},
	} {
		if err := d.Save(r); err != nil {
			t.Fatal(err)
		}
	}
	pods, complete, err = PluginPods(dir, "/sys/fs/bpf/kmesh")
	if err != nil || !complete || len(pods) != 1 || pods[0].ContainerId != "a" || pods[0].Name != "a" || !pods[0].Enrolled || !pods[0].WantsEnrollment {
		t.Fatalf("records %v %v %v", pods, complete, err)
	}
	// A corrupt record: the others come back, and nothing may be dropped.
	if err := os.WriteFile(filepath.Join(dir, "kmbroken.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	pods, complete, err = PluginPods(dir, "/sys/fs/bpf/kmesh")
	if err == nil || complete || len(pods) != 1 {
		t.Fatalf("with a corrupt record: %v %v %v", pods, complete, err)
	}
}

type fakeHealth struct {
	dpErr  error
	synced bool
}

func (h fakeHealth) Datapath() error   { return h.dpErr }
func (h fakeHealth) Synced() bool      { return h.synced }
func (h fakeHealth) LastError() string { return "istiod unreachable" }

// CNI STATUS follows the data path, not the mesh sync.
func TestStatusReadyWithTheDataPath(t *testing.T) {
	reg, err := NewRegistry("", &fakeEnroller{cookies: map[uint64]bool{}})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, tc := range []struct {
		h        fakeHealth
		ready    bool
		contains string
	}{
		{fakeHealth{synced: true}, true, "ready"},
		{fakeHealth{synced: false}, true, "not synced yet: istiod unreachable"},
		{fakeHealth{dpErr: os.ErrNotExist, synced: true}, false, "data path not loaded"},
	} {
		st, err := NewServer(reg, tc.h, "test", nil).Status(ctx, &cniv1.StatusRequest{})
		if err != nil || st.Ready != tc.ready || st.MeshSynced != tc.h.synced || !strings.Contains(st.Message, tc.contains) {
			t.Errorf("%+v: %v %v, want ready=%v and a message saying %q", tc.h, st, err, tc.ready, tc.contains)
		}
	}
}

// EnrollPod does not wait for the file; the file follows within moments,
// and Close writes what is pending.
func TestRegistryWritesInTheBackground(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pods.json")
	e := &fakeEnroller{cookies: map[uint64]bool{}}
	r, err := NewRegistry(file, e)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Add(&cniv1.Pod{ContainerId: "a", Name: "a"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		b, _ := os.ReadFile(file)
		if strings.Contains(string(b), `"a"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the registry file never got the pod")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := r.Add(&cniv1.Pod{ContainerId: "b", Name: "b"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r2, err := NewRegistry(file, e)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if got := ids(r2.Pods()); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("after Close and a restart: %v", got)
	}
}

func TestPodOfCarriesTheRecord(t *testing.T) {
	r := &cnistate.Record{Network: "k8s", ContainerID: "c1", IfName: "eth0", Netns: "/var/run/netns/x", Cookie: 42,
		PodName: "web", PodNamespace: "shop", PodUID: "u", IPs: []string{"10.244.0.5"},
		Interfaces: []cnistate.Interface{{Name: "eth0", Mac: "aa", Sandbox: "/var/run/netns/x"}}, HostVeth: "veth1", HostIfindex: 7,
		BPFDir: "/sys/fs/bpf/kmesh", Enrolled: true, TCKey: "c1_veth1", Reason: "r", CgroupPath: "/kubepods/u", CgroupID: 77}
	p := PodOf(r)
	if p.GetName() != "web" || p.GetNamespace() != "shop" || p.GetUid() != "u" || p.GetContainerId() != "c1" ||
		p.GetNetnsPath() != "/var/run/netns/x" || p.GetNetnsCookie() != 42 || p.GetCniIfname() != "eth0" || !p.GetEnrolled() ||
		p.GetHostVeth() != "veth1" || len(p.GetInterfaces()) != 1 || p.GetInterfaces()[0].GetMac() != "aa" ||
		len(p.GetIps()) != 1 || p.GetReason() != "r" || p.GetCgroupPath() != "/kubepods/u" || p.GetCgroupId() != 77 {
		t.Fatalf("pod message %v", p)
	}
}

type fakeDecider map[string]bool

func (d fakeDecider) Decide(ns, name, uid string) (bool, string, bool) {
	enroll, known := d[ns+"/"+name+"/"+uid]
	return enroll, "because", known
}

func TestDecidePodAsksTheWatch(t *testing.T) {
	reg, err := NewRegistry("", &fakeEnroller{cookies: map[uint64]bool{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s := NewServer(reg, nil, "v", fakeDecider{"shop/cart/u1": true})
	if r, err := s.DecidePod(ctx, &cniv1.DecidePodRequest{Namespace: "shop", Name: "cart", Uid: "u1"}); err != nil || !r.GetKnown() || !r.GetEnroll() || r.GetReason() != "because" {
		t.Fatalf("known pod: %v %v", r, err)
	}
	if r, err := s.DecidePod(ctx, &cniv1.DecidePodRequest{Namespace: "shop", Name: "cart", Uid: "u2"}); err != nil || r.GetKnown() {
		t.Fatalf("other uid: %v %v", r, err)
	}
	if _, err := s.DecidePod(ctx, &cniv1.DecidePodRequest{Name: "cart"}); err == nil {
		t.Fatal("no namespace accepted")
	}
	// Without Kubernetes access the daemon does not know.
	s = NewServer(reg, nil, "v", nil)
	if r, err := s.DecidePod(ctx, &cniv1.DecidePodRequest{Namespace: "shop", Name: "cart"}); err != nil || r.GetKnown() {
		t.Fatalf("no decider: %v %v", r, err)
	}
}

// A pod ADD left out and the daemon enrolled later (its label came after
// the pod), when the daemon's file lost that (a crash before the
// background write): the manage map says it is enrolled, and the registry
// must too, or a later release (the label going again) is never made.
func TestAdoptTakesTheManageMapForAPodTheDaemonEnrolled(t *testing.T) {
	e := &fakeEnroller{cookies: map[uint64]bool{11: true}}
	r, err := NewRegistry(filepath.Join(t.TempDir(), "pods.json"), e)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	plugin := []PluginPod{{Pod: &cniv1.Pod{ContainerId: "late", Name: "late", Uid: "u", NetnsCookie: 11,
		Reason: "no istio.io/dataplane-mode=kmesh label on the pod or its namespace"}}}
	if _, err := r.Adopt(plugin, true); err != nil {
		t.Fatal(err)
	}
	if got := ids(r.Pods()); !slices.Equal(got, []string{"late"}) {
		t.Fatalf("pods %v", got)
	}
	if p := byID(r, "late"); !p.Enrolled {
		t.Fatalf("registered as not enrolled while its cookie is in the manage map: %v", p)
	}
	if err := r.SetEnrolled("late", false, "label removed"); err != nil {
		t.Fatal(err)
	}
	if e.cookies[11] {
		t.Fatal("releasing the pod left its cookie in the manage map")
	}
}

// twoNetworks are the records of a pod in two networks (multus): one per
// attachment, one netns.
func twoNetworks(enrolled bool) []*cniv1.Pod {
	return []*cniv1.Pod{
		{ContainerId: "multi", Name: "multi", Uid: "u", NetnsCookie: 21, CniIfname: "eth0", HostVeth: "veth-a", Ips: []string{"10.0.0.5/24"}, Enrolled: enrolled},
		{ContainerId: "multi", Name: "multi", Uid: "u", NetnsCookie: 21, CniIfname: "net1", HostVeth: "veth-b", Ips: []string{"10.99.0.5/24"}, Enrolled: enrolled},
	}
}

// The registry keeps every attachment of a sandbox, in its file too, and
// enrolling or releasing the sandbox covers all their veths.
func TestRegistryKeepsEveryAttachment(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pods.json")
	e := &fakeEnroller{cookies: map[uint64]bool{}}
	r, err := NewRegistry(file, e)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range twoNetworks(false) {
		if _, err := r.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r, err = NewRegistry(file, e)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	pods, atts := r.Pods(), r.Attachments()
	if len(pods) != 1 || len(atts) != 2 || atts[0].HostVeth != "veth-a" || atts[1].HostVeth != "veth-b" {
		t.Fatalf("after a restart: sandboxes %v, attachments %v", pods, atts)
	}
	// The sandbox speaks with its newest report, and has every address.
	if p := pods[0]; p.HostVeth != "veth-b" || !slices.Equal(p.Ips, []string{"10.99.0.5/24", "10.0.0.5/24"}) {
		t.Fatalf("sandbox %v", p)
	}
	if err := r.SetEnrolled("multi", true, "label added"); err != nil {
		t.Fatal(err)
	}
	if !e.tc["veth-a"] || !e.tc["veth-b"] || !e.cookies[21] {
		t.Fatalf("enrolled: tc on %v, manage %v", e.tc, e.cookies)
	}
	for _, a := range r.Attachments() {
		if !a.Enrolled || a.Reason != "label added" {
			t.Errorf("attachment %s: %v", a.CniIfname, a)
		}
	}
	if known, err := r.Remove("multi", 0); err != nil || !known {
		t.Fatal(known, err)
	}
	if len(e.tc) != 0 || e.cookies[21] {
		t.Fatalf("released: tc on %v, manage %v", e.tc, e.cookies)
	}
}

// An attachment whose ADD enrolls the netns that an earlier attachment's
// ADD had left out (the label came in between): the earlier veth gets the
// filter from the daemon (the new one's is the plugin's), or what arrives
// on it goes unchecked while the pod counts as enrolled.
func TestAddEnrollsTheEarlierAttachments(t *testing.T) {
	e := &fakeEnroller{cookies: map[uint64]bool{}}
	r, err := NewRegistry("", e)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	atts := twoNetworks(false)
	if _, err := r.Add(atts[0]); err != nil {
		t.Fatal(err)
	}
	// net1's ADD enrolled the netns.
	e.cookies[21] = true
	atts[1].Enrolled = true
	if _, err := r.Add(atts[1]); err != nil {
		t.Fatal(err)
	}
	if !e.tc["veth-a"] || e.tc["veth-b"] {
		t.Fatalf("tc by the daemon on %v, want veth-a only", e.tc)
	}
	if p := r.Pods()[0]; !p.Enrolled {
		t.Fatalf("sandbox %v", p)
	}
}

// An attachment reported out whose netns the kernel has enrolled (its ADD
// ran alongside the one of the attachment that enrolled it, and did not
// see the entry): the sandbox is recorded in, as the kernel has it, and
// the attachment's veth gets the filter; a later release takes the netns
// out. Recorded out, the release would do nothing and the netns stay in.
func TestAddFollowsTheKernelForAnAttachmentReportedOut(t *testing.T) {
	e := &fakeEnroller{cookies: map[uint64]bool{}}
	r, err := NewRegistry("", e)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	atts := twoNetworks(true)
	// eth0's ADD enrolled the netns, attached its filter and told the daemon.
	e.cookies[21], e.tc = true, map[string]bool{"veth-a": true}
	if _, err := r.Add(atts[0]); err != nil {
		t.Fatal(err)
	}
	atts[1].Enrolled = false
	enrolled, err := r.Add(atts[1])
	if err != nil {
		t.Fatal(err)
	}
	if !enrolled || !r.Pods()[0].Enrolled || !e.tc["veth-b"] {
		t.Fatalf("told %v, sandbox %v, tc %v: want enrolled with a filter on veth-b", enrolled, r.Pods()[0], e.tc)
	}
	if err := r.SetEnrolled("multi", false, "label removed"); err != nil {
		t.Fatal(err)
	}
	if e.cookies[21] || len(e.tc) != 0 {
		t.Fatalf("released, but cookie %v, tc %v", e.cookies[21], e.tc)
	}
}

// The same at the daemon's start: two ADDs of a new sandbox ran at once
// while the daemon was away, one enrolled the netns and the other, deciding
// out, did not see it. The sandbox is adopted enrolled, and the veth of the
// attachment recorded out gets its filter.
func TestAdoptFillsTheFilterOfAnAttachmentRecordedOut(t *testing.T) {
	e := &fakeEnroller{cookies: map[uint64]bool{21: true}, tc: map[string]bool{"veth-a": true}}
	r, err := NewRegistry("", e)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	atts := twoNetworks(true)
	atts[1].Enrolled = false
	if _, err := r.Adopt([]PluginPod{{Pod: atts[0], WantsEnrollment: true}, {Pod: atts[1]}}, true); err != nil {
		t.Fatal(err)
	}
	if ps := r.Pods(); len(ps) != 1 || !ps[0].Enrolled || !e.tc["veth-b"] {
		t.Fatalf("sandboxes %v, tc %v: want one enrolled, a filter on veth-b", ps, e.tc)
	}
}

// At start the attachments follow kmesh-cni's records: one whose DEL ran
// while the daemon was away is forgotten (its veth is gone), one the
// daemon did not know of is added, and given the filter when the daemon
// holds the sandbox enrolled.
func TestAdoptFollowsTheAttachmentRecords(t *testing.T) {
	e := &fakeEnroller{cookies: map[uint64]bool{}}
	r, err := NewRegistry("", e)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, p := range twoNetworks(true) {
		e.cookies[21] = true
		if _, err := r.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	eth0 := twoNetworks(true)[0]
	net2 := &cniv1.Pod{ContainerId: "multi", Name: "multi", NetnsCookie: 21, CniIfname: "net2", HostVeth: "veth-c", Reason: "ADD said no"}
	if _, err := r.Adopt([]PluginPod{{Pod: eth0, WantsEnrollment: true}, {Pod: net2}}, true); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range r.Attachments() {
		got = append(got, a.CniIfname)
		if !a.Enrolled {
			t.Errorf("attachment %s not enrolled with its sandbox: %v", a.CniIfname, a)
		}
	}
	if !slices.Equal(got, []string{"eth0", "net2"}) {
		t.Fatalf("attachments %v, want eth0 and net2", got)
	}
	if !e.tc["veth-c"] {
		t.Fatalf("net2's veth has no filter: %v", e.tc)
	}
	// A new sandbox's records come as one sandbox.
	two := twoNetworks(false)
	for _, p := range two {
		p.ContainerId, p.NetnsCookie = "other", 22
	}
	if _, err := r.Adopt([]PluginPod{{Pod: two[0]}, {Pod: two[1]}}, false); err != nil {
		t.Fatal(err)
	}
	if n := len(r.Pods()); n != 2 {
		t.Fatalf("%d sandboxes, want 2", n)
	}
}
