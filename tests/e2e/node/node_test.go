// Package node runs kmesh on a real Kubernetes node (tests/kubenode): the
// kubelet, containerd and runc make the pods, kmesh is installed with
// kubectl apply of install/kubernetes, and every check goes through what a
// user has: kubectl, labels, kubectl exec, kmeshctl, the daemon's /metrics.
package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/kmesh-go/kmesh/tests/kubenode"
)

func TestNode(t *testing.T) {
	if os.Getenv("KMESH_E2E") != "1" {
		t.Skip("end-to-end test: set KMESH_E2E=1 (root, builds the node's binaries; see tests/e2e/README.md)")
	}
	ctx := context.Background()
	start := time.Now()
	cfg, err := kubenode.Prepare(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("images and CNI plugins ready in %s", time.Since(start).Round(time.Millisecond))
	cfg.Logf = t.Logf
	start = time.Now()
	n, err := kubenode.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node up in %s", time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			for _, c := range []string{"kubelet", "kube-controller-manager", "istiod"} {
				t.Logf("--- end of %s.log:\n%s", c, n.LogTail(c, 3000))
			}
			if out, err := n.Kubectl(context.Background(), "get", "pods", "-A", "-o", "wide"); err == nil {
				t.Logf("--- pods:\n%s", out)
			}
			if out, err := n.Kubectl(context.Background(), "-n", kubenode.KmeshNamespace, "logs", "ds/kmesh", "-c", "kmesh-daemon", "--tail=60"); err == nil {
				t.Logf("--- kmesh-daemon:\n%s", out)
			}
			if out, err := n.Exec(context.Background(), "tail", "-c", "3000", "/var/log/kmesh-cni.log"); err == nil {
				t.Logf("--- kmesh-cni.log:\n%s", out)
			}
		}
		if err := n.Close(); err != nil {
			t.Errorf("close the node: %v", err)
		}
	})

	// The node runs exactly the images make images builds: containerd
	// lists each under its config digest (the image ID) as
	// go-containerregistry computed it. (The manifest digest is not kept:
	// containerd writes its own manifest for a docker-archive import.)
	listed, err := n.Ctr(ctx, "images", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range cfg.Images {
		img, err := tarball.ImageFromPath(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		id, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(listed), id.String()) {
			t.Errorf("containerd lists no image with ID %s (%s):\n%s", id, filepath.Base(path), listed)
		}
	}

	steps := []struct {
		name string
		fn   func(*testing.T, *kubenode.Node)
	}{
		{"InstallPutsPluginOnNode", testInstall},
		{"DeploymentEnrolledAtCreation", testEnrolledAtCreation},
		{"AuthorizationPolicyDeniesClient", testAuthorization},
		{"UnlabelledNamespaceLeftAloneUntilLabelled", testLabelLater},
		{"WaypointAppliedServedByKmeshWaypoint", testWaypointApplied},
		{"ServiceUsesWaypointSplit90To10", testServiceUsesWaypoint},
		{"UseWaypointLabelRemovedGoesDirect", testUseWaypointRemoved},
		{"WaypointDeletedLeavesNothing", testWaypointDeleted},
		{"KubeletRestartAndPodChurnLeaveNothing", testChurn},
		{"DaemonSetRecreatedUnderLoad", testUpgradeUnderLoad},
		{"UninstallLeavesPrimaryNetwork", testUninstall},
	}
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) { s.fn(t, n) }) {
			return // later steps build on earlier ones
		}
	}
}

// The install DaemonSet copies kmesh-cni onto the node and adds it to the
// node's conflist; the daemon pod comes up connected to istiod.
func testInstall(t *testing.T, n *kubenode.Node) {
	ctx := context.Background()
	start := time.Now()
	if err := n.InstallKmesh(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("kmesh DaemonSet ready %s after kubectl apply", time.Since(start).Round(time.Millisecond))

	conf, err := n.Exec(ctx, "cat", "/etc/cni/net.d/"+kubenode.PrimaryConflist)
	if err != nil {
		t.Fatal(err)
	}
	var cl struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(conf, &cl); err != nil {
		t.Fatalf("conflist: %v: %s", err, conf)
	}
	var types []string
	for _, p := range cl.Plugins {
		types = append(types, p.Type)
	}
	if !slices.Equal(types, []string{"bridge", "kmesh-cni"}) {
		t.Fatalf("the node's conflist chains %v, want [bridge kmesh-cni]:\n%s", types, conf)
	}
	for _, bin := range []string{"kmesh-cni", "kmesh-cni-kube"} {
		if _, err := n.Exec(ctx, "test", "-x", "/opt/cni/bin/"+bin); err != nil {
			t.Fatalf("/opt/cni/bin/%s: %v", bin, err)
		}
	}
	var st map[string]any
	b, err := n.DaemonAdmin(ctx, "/debug/status")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if st["connected"] != true || !strings.HasPrefix(fmt.Sprint(st["source"]), "xds:") {
		t.Fatalf("daemon status %v: want connected to istiod", st)
	}
	// The programs sit on the kubelet's pods cgroup, nowhere else.
	out := kubectl(t, n, "-n", kubenode.KmeshNamespace, "exec", "ds/kmesh", "-c", "kmesh-daemon", "--", "kmeshctl", "status")
	t.Logf("kmeshctl status:\n%s", out)
	at := func(cg string) string {
		out, err := n.Exec(context.Background(), "bpftool", "cgroup", "show", cg)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	if pods := at(n.PodsCgroup); !strings.Contains(pods, "km_connect4") {
		t.Fatalf("no kmesh program on the kubelet's pods cgroup %s:\n%s", n.PodsCgroup, pods)
	}
	root := filepath.Dir(filepath.Dir(n.PodsCgroup))
	if out := at(root); strings.Contains(out, "km_") {
		t.Fatalf("kmesh programs on the machine's root cgroup %s:\n%s", root, out)
	}
	t.Logf("kmesh's programs attach to %s (the kubelet's pods cgroup), none to %s", n.PodsCgroup, root)
}

// A Deployment in a namespace labelled istio.io/dataplane-mode=kmesh has
// its pods enrolled at creation; its Service VIP spreads new connections
// over them; Istio's TCP metrics count them.
func testEnrolledAtCreation(t *testing.T, n *kubenode.Node) {
	apply(t, n, namespace("mesh", meshLabel))
	if err := n.CP.WaitServiceAccount(context.Background(), "mesh", "default"); err != nil {
		t.Fatal(err)
	}
	apply(t, n, echoApp("echo", "mesh", 3)+"---\n"+fortioPod("client", "mesh", map[string]string{"app": "client"}))
	echo := waitPodsReady(t, n, "mesh", "app=echo", 3)
	waitPodsReady(t, n, "mesh", "app=client", 1)

	// Enrolled by kmesh-cni during the pod's CNI ADD: annotated, and in
	// the daemon's registry as enrolled.
	for _, p := range echo {
		if p.Annotations["kmesh.net/redirection"] != "enabled" {
			t.Errorf("pod %s: annotations %v, want kmesh.net/redirection=enabled", p.Name, p.Annotations)
		}
	}
	dump := kubectl(t, n, "-n", kubenode.KmeshNamespace, "exec", "ds/kmesh", "-c", "kmesh-daemon", "--", "kmeshctl", "dump", "pods")
	t.Logf("kmeshctl dump pods:\n%s", dump)
	enrolled := map[string]bool{}
	for _, p := range daemonPods(t, n) {
		if p.Enrolled {
			enrolled[p.Namespace+"/"+p.Name] = true
		}
	}
	for _, p := range append(echo, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "mesh", Name: "client"}}) {
		if !enrolled["mesh/"+p.Name] {
			t.Errorf("pod mesh/%s is not enrolled in kmesh-daemon's registry", p.Name)
		}
	}

	// The Service VIP reaches every pod.
	svc, err := n.Clientset.CoreV1().Services("mesh").Get(context.Background(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s:80/debug", svc.Spec.ClusterIP)
	seen := map[string]int{}
	waitFor(t, 30*time.Second, "the VIP answers", func() error {
		_, err := curl(context.Background(), n, "mesh", "client", url)
		return err
	})
	// 30 new connections: a backend missing from all of them by chance
	// (random pick) is 3*(2/3)^30, about 1 in 70000.
	const requests = 30
	for range requests {
		body, err := curl(context.Background(), n, "mesh", "client", url)
		if err != nil {
			t.Fatal(err)
		}
		seen[servedBy(body)]++
	}
	t.Logf("%d requests to %s served by %v", requests, url, seen)
	for _, p := range echo {
		if seen[p.Name] == 0 {
			t.Errorf("pod %s got none of %d requests to the VIP (%v)", p.Name, requests, seen)
		}
	}

	// Istio's TCP metrics count the connections, both ends.
	waitFor(t, 15*time.Second, "istio_tcp_connections_opened_total", func() error {
		m := metrics(t, n)
		src := sum(m, "istio_tcp_connections_opened_total", `reporter="source"`, `destination_service="echo.mesh.svc.cluster.local"`)
		dst := sum(m, "istio_tcp_connections_opened_total", `reporter="destination"`, `destination_workload_namespace="mesh"`)
		if src < requests || dst < requests {
			return fmt.Errorf("source %v, destination %v, want >= %d each", src, dst, requests)
		}
		return nil
	})
}

// An L4 AuthorizationPolicy denies a client namespace: its enrolled pods'
// connects to the service fail at once, other clients pass, and the
// denials are counted.
func testAuthorization(t *testing.T, n *kubenode.Node) {
	apply(t, n, namespace("denied", meshLabel))
	if err := n.CP.WaitServiceAccount(context.Background(), "denied", "default"); err != nil {
		t.Fatal(err)
	}
	apply(t, n, fortioPod("client", "denied", map[string]string{"app": "client"}))
	waitPodsReady(t, n, "denied", "app=client", 1)
	apply(t, n, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-namespace, namespace: mesh}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from:
    - source: {namespaces: ["denied"]}
`)
	svc, err := n.Clientset.CoreV1().Services("mesh").Get(context.Background(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s:80/debug", svc.Spec.ClusterIP)
	waitFor(t, 30*time.Second, "the denied client refused", func() error {
		start := time.Now()
		if _, err := curl(context.Background(), n, "denied", "client", url); err == nil {
			return fmt.Errorf("request from namespace denied succeeded")
		} else if !strings.Contains(err.Error(), "permission denied") {
			return fmt.Errorf("request failed, but not with EACCES at connect (%s): %v", time.Since(start).Round(time.Millisecond), err)
		}
		return nil
	})
	if _, err := curl(context.Background(), n, "mesh", "client", url); err != nil {
		t.Fatalf("the allowed client: %v", err)
	}
	m := metrics(t, n)
	if d := sum(m, "kmesh_authz_connections_total", `outcome="denied"`); d < 1 {
		t.Fatalf("kmesh_authz_connections_total{outcome=denied} = %v", d)
	}
}

// A pod in a namespace without the label is left alone (not enrolled, not
// annotated); labelling the namespace enrolls it, running, within seconds.
func testLabelLater(t *testing.T, n *kubenode.Node) {
	apply(t, n, namespace("plain", nil))
	if err := n.CP.WaitServiceAccount(context.Background(), "plain", "default"); err != nil {
		t.Fatal(err)
	}
	apply(t, n, fortioPod("client", "plain", map[string]string{"app": "client"}))
	pod := waitPodsReady(t, n, "plain", "app=client", 1)[0]
	if _, ok := pod.Annotations["kmesh.net/redirection"]; ok {
		t.Fatalf("pod plain/client has annotation kmesh.net/redirection")
	}
	for _, p := range daemonPods(t, n) {
		if p.Namespace == "plain" && p.Enrolled {
			t.Fatalf("pod plain/%s enrolled before its namespace was labelled", p.Name)
		}
	}
	svc, err := n.Clientset.CoreV1().Services("mesh").Get(context.Background(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s:80/debug", svc.Spec.ClusterIP)
	// No kube-proxy on this node: outside the mesh a VIP leads nowhere.
	if _, err := curl(context.Background(), n, "plain", "client", url); err == nil {
		t.Fatalf("an unenrolled pod reached the VIP")
	}

	start := time.Now()
	kubectl(t, n, "label", "namespace", "plain", "istio.io/dataplane-mode=kmesh")
	waitFor(t, 10*time.Second, "plain/client enrolled", func() error {
		for _, p := range daemonPods(t, n) {
			if p.Namespace == "plain" && p.Name == "client" && p.Enrolled {
				return nil
			}
		}
		return fmt.Errorf("not enrolled")
	})
	t.Logf("enrolled %s after the label", time.Since(start).Round(time.Millisecond))
	if _, err := curl(context.Background(), n, "plain", "client", url); err != nil {
		t.Fatalf("the labelled pod cannot reach the VIP: %v", err)
	}
}

// A kubelet restart and 100 pods created and deleted leave no stale state:
// the daemon's registry, kmesh-cni's records and the enrollment map hold
// exactly the live pods, tc programs sit only on live pods' veths, and no
// pod cgroup outlives its pod.
func testChurn(t *testing.T, n *kubenode.Node) {
	ctx := context.Background()
	before := nodeState(t, n)
	t.Logf("before: %s", before)
	start := time.Now()
	if err := n.RestartKubelet(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("kubelet restarted, node Ready again in %s", time.Since(start).Round(time.Millisecond))
	// Pods kept running and kept their enrollment (exec works once the
	// new kubelet has read its pods from the API).
	waitFor(t, 30*time.Second, "a request through the VIP after the kubelet restart", func() error {
		_, err := curl(ctx, n, "mesh", "client", "http://"+serviceIP(t, n, "mesh", "echo")+":80/debug")
		return err
	})
	if d := nodeState(t, n).diff(before); d != "" {
		t.Fatalf("the kubelet restart changed kmesh's state: %s", d)
	}

	const count = 100
	apply(t, n, namespace("churn", meshLabel))
	if err := n.CP.WaitServiceAccount(ctx, "churn", "default"); err != nil {
		t.Fatal(err)
	}
	apply(t, n, strings.Replace(echoApp("churn", "churn", count), "readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}", "", 1))
	start = time.Now()
	waitPodsReady(t, n, "churn", "app=churn", count)
	t.Logf("%d pods ready in %s", count, time.Since(start).Round(time.Millisecond))
	mid := nodeState(t, n)
	t.Logf("with the churn pods: %s", mid)
	if got := mid.enrolled - before.enrolled; got != count {
		t.Errorf("%d more enrolled pods in the daemon's registry with %d churn pods up, want %d", got, count, count)
	}
	start = time.Now()
	kubectl(t, n, "delete", "namespace", "churn", "--wait=true", "--timeout=3m")
	t.Logf("namespace with %d pods deleted in %s", count, time.Since(start).Round(time.Millisecond))

	start = time.Now()
	waitFor(t, time.Minute, "state back to before the churn", func() error {
		after := nodeState(t, n)
		if d := after.diff(before); d != "" {
			return fmt.Errorf("%s", d)
		}
		return nil
	})
	t.Logf("after: %s (%s after the namespace was gone)", nodeState(t, n), time.Since(start).Round(time.Millisecond))
}

func serviceIP(t *testing.T, n *kubenode.Node, ns, name string) string {
	t.Helper()
	svc, err := n.Clientset.CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc.Spec.ClusterIP
}

// Deleting the DaemonSet and applying it again (an upgrade) under load
// loses no request: the data path stays pinned while no daemon runs.
func testUpgradeUnderLoad(t *testing.T, n *kubenode.Node) {
	ctx := context.Background()
	url := "http://" + serviceIP(t, n, "mesh", "echo") + ":80/echo"
	var (
		wg      sync.WaitGroup
		res     fortioResult
		raw     string
		loadErr error
	)
	const dur = 60 * time.Second
	wg.Add(1)
	go func() {
		defer wg.Done()
		res, raw, loadErr = load(ctx, n, "mesh", "client", "-qps", "50", "-c", "2", "-t", dur.String(), "-keepalive=false", url)
	}()
	time.Sleep(3 * time.Second)
	start := time.Now()
	if err := n.UninstallKmesh(ctx); err != nil {
		t.Fatal(err)
	}
	gone := time.Since(start)
	if err := n.InstallKmesh(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("DaemonSet deleted in %s, applied and ready again %s later", gone.Round(time.Millisecond), (time.Since(start) - gone).Round(time.Millisecond))
	if time.Since(start) > dur-5*time.Second {
		t.Errorf("the upgrade took %s, longer than the load (%s): make the load longer", time.Since(start).Round(time.Second), dur)
	}
	wg.Wait()
	if loadErr != nil {
		t.Fatalf("fortio load: %v\n%s", loadErr, raw)
	}
	t.Logf("%d requests during the upgrade, return codes %v", res.DurationHistogram.Count, res.RetCodes)
	if res.ok() == 0 || res.ok() != res.DurationHistogram.Count {
		t.Fatalf("requests lost during the upgrade: return codes %v of %d", res.RetCodes, res.DurationHistogram.Count)
	}
}

// Deleting the install DaemonSet takes kmesh-cni's entry and binaries off
// the node; pods made afterwards get their network from the primary CNI.
func testUninstall(t *testing.T, n *kubenode.Node) {
	ctx := context.Background()
	if err := n.UninstallKmesh(ctx); err != nil {
		t.Fatal(err)
	}
	conf, err := n.Exec(ctx, "cat", "/etc/cni/net.d/"+kubenode.PrimaryConflist)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(conf), "kmesh") {
		t.Fatalf("the conflist still mentions kmesh after the uninstall:\n%s", conf)
	}
	for _, bin := range []string{"kmesh-cni", "kmesh-cni-kube", "../net.d/kmesh-cni-kubeconfig"} {
		if _, err := n.Exec(ctx, "test", "-e", "/opt/cni/bin/"+bin); err == nil {
			t.Errorf("/opt/cni/bin/%s still there after the uninstall", bin)
		}
	}
	if _, err := n.Exec(ctx, "test", "-e", "/etc/cni/net.d/kmesh-cni-kubeconfig"); err == nil {
		t.Errorf("kmesh-cni's kubeconfig still there after the uninstall")
	}
	apply(t, n, fortioPod("after", "plain", map[string]string{"app": "after"}))
	pod := waitPodsReady(t, n, "plain", "app=after", 1)[0]
	if _, ok := pod.Annotations["kmesh.net/redirection"]; ok {
		t.Errorf("a pod made after the uninstall is annotated as enrolled")
	}
	echo := waitPodsReady(t, n, "mesh", "app=echo", 3)
	body, err := curl(ctx, n, "plain", "after", "http://"+echo[0].Status.PodIP+":8080/debug")
	if err != nil {
		t.Fatalf("a pod made after the uninstall cannot reach another pod: %v", err)
	}
	if servedBy(body) != echo[0].Name {
		t.Fatalf("answer from %q, want %s", servedBy(body), echo[0].Name)
	}
}
