package main

// Kernel tests of the daemon's side of kmesh-cni: what it learns from the
// plugin's state records when it starts, and what CNI STATUS reports.

import (
	"context"
	"slices"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/api/cni/v1/podregistry"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/cniserver"
	"github.com/kmesh-go/kmesh/internal/cnistate"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// registryClient calls the daemon's PodRegistry as kmesh-cni does.
func (d *daemon) registryClient() podregistry.PodRegistryClient {
	d.t.Helper()
	conn, err := grpc.NewClient("unix://"+d.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { conn.Close() })
	return podregistry.NewPodRegistryClient(conn)
}

// waitServing waits until the daemon answers on its CNI socket.
func (d *daemon) waitServing(c podregistry.PodRegistryClient) *cniv1.StatusResponse {
	d.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		st, err := c.Status(ctx, &cniv1.StatusRequest{})
		cancel()
		if err == nil {
			return st
		}
		select {
		case <-d.done:
			d.t.Fatal("daemon exited")
		default:
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.t.Fatal("daemon did not serve its CNI socket within 10s")
	return nil
}

// A daemon that comes back learns the pods kmesh-cni added while it was
// away (their records) and forgets those it deleted (no record, no manage
// entry), without waiting for the plugin to call again. Its CNI STATUS is
// ready as soon as the data path is loaded, though istiod never answers.
func TestKernelDaemonAdoptsPluginRecordsAndStatusFollowsDataPath(t *testing.T) {
	testbed.Require(t)
	cg := testbed.NewCgroup(t)
	pins := testbed.PinDir(t)
	n := testbed.NewNetwork(t)
	x, y, z := n.AddPod(t, "x"), n.AddPod(t, "y"), n.AddPod(t, "z")
	// istiod is a port nobody listens on: the mesh never syncs.
	d := startDaemon(t, cg, pins, "--xds-address", "127.0.0.1:1", "--xds-plaintext")
	cniState := d.args[slices.Index(d.args, "--cni-state-dir")+1]
	c := d.registryClient()
	st := d.waitServing(c)
	if !st.GetReady() || st.GetMeshSynced() {
		t.Fatalf("status before any mesh state: %v, want ready (data path loaded), not synced", st)
	}
	if code, _, err := d.get("/ready"); err != nil || code == 200 {
		t.Fatalf("/ready answered %d %v without a mesh state", code, err)
	}

	manage, err := maps.OpenManage(pins)
	if err != nil {
		t.Fatal(err)
	}
	defer manage.Close()
	dir, err := cnistate.Open(cniState, false)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	// add does what kmesh-cni's ADD does for p: the manage entry (when
	// enrolled), the record, and EnrollPod when the daemon is there.
	add := func(p *testbed.Pod, enroll, daemonUp bool) *cnistate.Record {
		t.Helper()
		cookie, err := podns.Cookie(p.NSPath)
		if err != nil {
			t.Fatal(err)
		}
		rec := &cnistate.Record{Network: "kmtest", ContainerID: "c-" + p.Name, IfName: "eth0", Netns: p.NSPath,
			Cookie: cookie, PodName: p.Name, PodNamespace: "default", PodUID: "uid-" + p.Name,
			IPs: []string{p.IP4.String() + "/24"}, HostVeth: p.HostVeth, BPFDir: pins, Enrolled: enroll, Reason: "test"}
		if enroll {
			if err := manage.Enroll(cookie, maps.Enrollment{}); err != nil {
				t.Fatal(err)
			}
		}
		if daemonUp {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := c.EnrollPod(ctx, &cniv1.EnrollPodRequest{Pod: cniserver.PodOf(rec)}); err != nil {
				t.Fatal(err)
			}
			rec.Signaled = true
		}
		if err := dir.Save(rec); err != nil {
			t.Fatal(err)
		}
		return rec
	}
	recX := add(x, true, true)
	add(y, false, true)
	pods := func() map[string]*cniv1.Pod {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := c.ListPods(ctx, &cniv1.ListPodsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*cniv1.Pod{}
		for _, p := range resp.GetPods() {
			out[p.GetContainerId()] = p
		}
		return out
	}
	if got := pods(); len(got) != 2 || !got["c-x"].GetEnrolled() || got["c-y"].GetEnrolled() {
		t.Fatalf("pods before the restart: %v", got)
	}

	d.stop(syscall.SIGTERM)
	// While the daemon is away: x's DEL (manage entry and record go) and
	// z's ADD (enrolled; the daemon cannot be told).
	if err := manage.Release(recX.Cookie); err != nil {
		t.Fatal(err)
	}
	if err := dir.Remove(recX.ContainerID, recX.IfName); err != nil {
		t.Fatal(err)
	}
	add(z, true, false)

	d.start()
	c = d.registryClient()
	d.waitServing(c)
	got := pods()
	if _, ok := got["c-x"]; ok || len(got) != 2 {
		t.Fatalf("pods after the restart: %v, want y and z (x was deleted meanwhile)", keys(got))
	}
	if p := got["c-z"]; !p.GetEnrolled() || p.GetHostVeth() != z.HostVeth || p.GetName() != "z" {
		t.Fatalf("the pod added while the daemon was away: %v", p)
	}
	if p := got["c-y"]; p == nil || p.GetEnrolled() {
		t.Fatalf("the unenrolled pod: %v", p)
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
