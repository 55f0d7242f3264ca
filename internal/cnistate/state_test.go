package cnistate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRecordNameIsAFileName(t *testing.T) {
	k := recordName("3f1c.a-b_c", "eth0.100")
	if strings.ContainsAny(k, "./") || len(k) != 34 || !strings.HasPrefix(k, "km") {
		t.Fatalf("record name %q", k)
	}
	if recordName("a", "bc") == recordName("ab", "c") || recordName("a", "b") != recordName("a", "b") {
		t.Fatal("record names collide or are not stable")
	}
}

func TestSaveLoadListRemove(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	d, err := Open(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, ok, err := d.Load("c1", "eth0"); ok || err != nil {
		t.Fatalf("load before save: %v %v", ok, err)
	}
	r := &Record{Network: "k8s", ContainerID: "c1", IfName: "eth0", Netns: "/var/run/netns/x", Cookie: 42,
		PodName: "web", PodNamespace: "shop", PodUID: "u", IPs: []string{"10.244.0.5"},
		Interfaces: []Interface{{Name: "eth0", Mac: "aa", Sandbox: "/var/run/netns/x"}}, HostVeth: "veth1", HostIfindex: 7,
		BPFDir: "/sys/fs/bpf/kmesh", Enrolled: true, TCKey: "c1_veth1", Reason: "r", Created: time.Now().UTC().Round(0)}
	if err := d.Save(r); err != nil {
		t.Fatal(err)
	}
	r2 := &Record{Network: "k8s", ContainerID: "c2", IfName: "eth0"}
	if err := d.Save(r2); err != nil {
		t.Fatal(err)
	}
	got, ok, err := d.Load("c1", "eth0")
	if err != nil || !ok || got.Cookie != 42 || got.HostVeth != "veth1" || !got.Created.Equal(r.Created) {
		t.Fatalf("load: %+v %v %v", got, ok, err)
	}
	// Leftovers of a killed writer and foreign files are not records.
	os.WriteFile(filepath.Join(path, recordName("c3", "eth0")+".json.tmp123"), []byte("{"), 0o600)
	all, err := Read(path)
	if err != nil || len(all) != 2 {
		t.Fatalf("read: %d records, %v", len(all), err)
	}
	if err := d.Remove("c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove("c1", "eth0"); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if all, _ := d.List(); len(all) != 1 || all[0].ContainerID != "c2" {
		t.Fatalf("after remove: %+v", all)
	}
	// A corrupt record is reported, the others still read.
	os.WriteFile(filepath.Join(path, "kmbad.json"), []byte("{"), 0o600)
	if all, err := Read(path); err == nil || len(all) != 1 {
		t.Fatalf("corrupt record: %d %v", len(all), err)
	}
	if all, err := Read(filepath.Join(path, "nothing")); err != nil || len(all) != 0 {
		t.Fatalf("missing dir: %v %v", all, err)
	}
}

func TestExclusiveLockWaitsForShared(t *testing.T) {
	path := t.TempDir()
	shared, err := Open(path, false)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *Dir)
	go func() {
		d, err := Open(path, true)
		if err != nil {
			t.Error(err)
		}
		got <- d
	}()
	select {
	case <-got:
		t.Fatal("exclusive lock taken while a shared one is held")
	case <-time.After(100 * time.Millisecond):
	}
	shared.Close()
	select {
	case d := <-got:
		d.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("exclusive lock never taken")
	}
}

// A record of a plugin from before WantEnrolled still tells an enrollment
// put off for want of a data path.
func TestWantsEnrollment(t *testing.T) {
	for _, c := range []struct {
		r    Record
		want bool
	}{
		{Record{WantEnrolled: true}, true},
		{Record{Enrolled: true}, true},
		{Record{Reason: "no kubeconfig; defaultEnroll is true" + NotEnrolledYet + "kmesh data path not loaded"}, true},
		{Record{Reason: "no kubeconfig; defaultEnroll is false"}, false},
	} {
		if got := c.r.WantsEnrollment(); got != c.want {
			t.Errorf("%+v: WantsEnrollment %v, want %v", c.r, got, c.want)
		}
	}
}

// The other attachments of a netns are what keeps it enrolled: a pod in
// two networks has two records with one cookie.
func TestSharingCountsTheOtherAttachmentsOfANetns(t *testing.T) {
	d, err := Open(filepath.Join(t.TempDir(), "state"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, r := range []*Record{
		{ContainerID: "c1", IfName: "eth0", Cookie: 7},
		{ContainerID: "c1", IfName: "net1", Cookie: 7},
		{ContainerID: "c2", IfName: "eth0", Cookie: 8},
	} {
		if err := d.Save(r); err != nil {
			t.Fatal(err)
		}
	}
	others, err := d.Sharing(7, "c1", "eth0")
	if err != nil || len(others) != 1 || others[0].IfName != "net1" {
		t.Fatalf("sharing of c1/eth0: %+v %v", others, err)
	}
	if others, _ := d.Sharing(8, "c2", "eth0"); len(others) != 0 {
		t.Fatalf("c2 shares its netns with %+v", others)
	}
	if others, _ := d.Sharing(0, "c3", "eth0"); len(others) != 0 {
		t.Fatalf("cookie 0 shares with %+v", others)
	}
	// Without a cookie (a DEL whose netns is gone), the sandbox's other
	// attachments still share its netns; other sandboxes do not.
	if others, _ := d.Sharing(0, "c1", "eth0"); len(others) != 1 || others[0].IfName != "net1" {
		t.Fatalf("sharing of c1/eth0 without a cookie: %+v", others)
	}
	// The count lives in the files: a new run (another process) sees it.
	if err := d.Remove("c1", "net1"); err != nil {
		t.Fatal(err)
	}
	d2, err := Open(d.path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if others, _ := d2.Sharing(7, "c1", "eth0"); len(others) != 0 {
		t.Fatalf("after the other attachment's removal: %+v", others)
	}
}

func TestLockRefsIsExclusive(t *testing.T) {
	d, err := Open(filepath.Join(t.TempDir(), "state"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	unlock, err := d.LockRefs()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{})
	go func() {
		u, err := d.LockRefs()
		if err != nil {
			t.Error(err)
		} else {
			u()
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("a second LockRefs did not wait")
	case <-time.After(50 * time.Millisecond):
	}
	unlock()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("LockRefs still waits after unlock")
	}
}
