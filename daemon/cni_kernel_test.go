package main

// Kernel tests of the daemon's side of kmesh-cni: what it learns from the
// plugin's state records when it starts, and what CNI STATUS reports.

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/api/cni/v1/podregistry"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/cniserver"
	"github.com/kmesh-go/kmesh/daemon/xds/xdstest"
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

// cniAdd runs kmesh-cni's ADD for pod p as a runtime would, from the
// node namespace, chained after a primary plugin whose result names p's
// veth and address. conf is kmesh-cni's own fields.
func cniAdd(t *testing.T, n *testbed.Network, p *testbed.Pod, containerID string, conf map[string]any) {
	t.Helper()
	netConf := map[string]any{"cniVersion": "1.0.0", "name": "kmtest", "type": "kmesh-cni",
		"prevResult": map[string]any{
			"cniVersion": "1.0.0",
			"interfaces": []map[string]string{{"name": p.HostVeth}, {"name": "eth0", "sandbox": p.NSPath}},
			"ips":        []map[string]any{{"address": p.IP4.String() + "/24", "interface": 1}},
		}}
	for k, v := range conf {
		netConf[k] = v
	}
	stdin, err := json.Marshal(netConf)
	if err != nil {
		t.Fatal(err)
	}
	bin := cniBin.get(t)
	cmd := exec.Command(bin)
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND=ADD", "CNI_CONTAINERID="+containerID, "CNI_NETNS="+p.NSPath,
		"CNI_IFNAME=eth0", "CNI_PATH="+filepath.Dir(bin),
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME="+p.Name+";K8S_POD_UID=uid-"+p.Name)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Started from a thread in the node namespace, as kubelet's runtime
	// runs plugins in the host's.
	if err := podns.Do(testbed.NSPath(n.Node), cmd.Run); err != nil {
		t.Fatalf("kmesh-cni ADD %s: %v\nstdout: %s\nstderr: %s", p.Name, err, stdout.String(), stderr.String())
	}
}

// Pods first, daemon later, with no kubeconfig: kmesh-cni's ADD on a node
// where no data path is pinned (kubelet started the pod before the
// DaemonSet's daemon, or a reboot emptied bpffs) lets the pod start
// unenrolled under failurePolicy open, recording that defaultEnroll wanted
// it enrolled. The daemon, when it comes up, enrolls it: manage entry and
// tc filter, and the pod's connects to a VIP reach the backend.
func TestKernelDaemonEnrollsPodsAddedBeforeIt(t *testing.T) {
	testbed.Require(t)
	cg := testbed.NewCgroup(t)
	pins := testbed.PinDir(t)
	n := testbed.NewNetwork(t)
	client, server := n.AddPod(t, "client"), n.AddPod(t, "server")
	server.ServeTCP(t, 8080, "server")
	dir := t.TempDir()
	cniState, sock := filepath.Join(dir, "cni-state"), filepath.Join(dir, "cni.sock")
	const vip = "10.96.0.10:80"

	// 1. ADD: no daemon, nothing pinned.
	cniAdd(t, n, client, "c-client", map[string]any{"daemonSocket": sock, "bpfDir": pins, "stateDir": cniState,
		"defaultEnroll": true, "failurePolicy": "open", "logFile": filepath.Join(dir, "kmesh-cni.log")})
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "kmesh-cni.log"))
			t.Logf("kmesh-cni log:\n%s", b)
		}
	})
	sd, err := cnistate.Open(cniState, false)
	if err != nil {
		t.Fatal(err)
	}
	rec, ok, err := sd.Load("c-client", "eth0")
	sd.Close()
	if err != nil || !ok {
		t.Fatalf("kmesh-cni left no record: %v %v", ok, err)
	}
	if rec.Enrolled || !rec.WantEnrolled || rec.Signaled || rec.HostVeth != client.HostVeth {
		t.Fatalf("ADD's record: %+v, want not enrolled, enrollment wanted, daemon not told", rec)
	}
	// The test joins the cgroup the daemon will attach to; nothing is
	// attached yet and the pod has no default route: the VIP is unreachable.
	cg.Join(t)
	if who, err := client.Ask("tcp", vip, time.Second); err == nil {
		t.Fatalf("the VIP answered (%s) before any daemon ran", who)
	}

	// 2. The daemon starts, on the node, with the mesh from a file.
	svcName, svc := xdstest.Service("default", "web", []string{"10.96.0.10"}, map[uint32]uint32{80: 8080})
	wlName, wl := xdstest.Workload("uid-server", "default", server.Name, []string{server.IP4.String()}, []string{webKey})
	meshFile := filepath.Join(dir, "mesh.json")
	f, err := os.Create(meshFile)
	if err != nil {
		t.Fatal(err)
	}
	err = xdstest.WriteConfigFile(f, []xdstest.Named{{Name: svcName, Address: svc}, {Name: wlName, Address: wl}})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	d := startDaemonIn(t, testbed.NSPath(n.Node), cg, pins, "--config-file", meshFile,
		"--cni-state-dir", cniState, "--cni-socket", sock)
	d.sock = sock
	c := d.registryClient()
	// It adopts the records before it serves the socket.
	d.waitServing(c)

	// 3. Enrolled: the registry says so, the manage map has the pod's
	// netns, its host veth has the tc filter.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.ListPods(ctx, &cniv1.ListPodsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ps := resp.GetPods(); len(ps) != 1 || !ps[0].GetEnrolled() || !strings.Contains(ps[0].GetReason(), "enrolled by the daemon") {
		t.Fatalf("pods after the daemon started: %v", ps)
	}
	manage, err := maps.OpenManage(pins)
	if err != nil {
		t.Fatal(err)
	}
	defer manage.Close()
	cookie, err := podns.Cookie(client.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := manage.Get(cookie); err != nil || !ok {
		t.Fatalf("no manage entry for the pod's netns: %v %v", ok, err)
	}
	if a, ok, err := loader.PodTC(pins, loader.PodTCKey("c-client", client.HostVeth)); err != nil || !ok || !a.Live {
		t.Fatalf("no live tc filter on the pod's host veth: %+v %v %v", a, ok, err)
	}

	// 4. The pod's connects to the VIP are translated to the backend, once
	// the daemon has applied the file.
	deadline := time.Now().Add(10 * time.Second)
	for {
		who, err := client.Ask("tcp", vip, time.Second)
		if err == nil && who == server.Name {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pod's connect to %s: %q %v", vip, who, err)
		}
		time.Sleep(50 * time.Millisecond)
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
