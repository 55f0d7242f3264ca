package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kmesh-go/kmesh/tests/kubenode"
)

// The waypoint scenarios run in one namespace: echo-v1 and echo-v2 (one
// pod each) behind the Service echo and a Service of their own each, a
// client, and the waypoint of install/kubernetes/waypoint.
const (
	wpNS       = "l7"
	wpName     = "waypoint"
	wpRequests = 1000
)

// wpBefore is the node's state with the namespace's apps up and no
// waypoint yet: deleting the waypoint must bring it back exactly.
var wpBefore state

// echoVersion is one version of echo: a Deployment of one fortio server
// labelled app=echo (Service echo selects both) and version=<v>, and a
// Service echo-<v> for that version alone.
func echoVersion(ns, version string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-%[2]s, namespace: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo, version: %[2]s}}
  template:
    metadata: {labels: {app: echo, version: %[2]s}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: fortio
        image: %[3]s
        imagePullPolicy: Never
        args: [server, -http-port, "8080", -grpc-port, disabled, -redirect-port, disabled, -tcp-port, disabled, -udp-port, disabled]
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo-%[2]s, namespace: %[1]s}
spec:
  selector: {app: echo, version: %[2]s}
  ports: [{name: http, port: 80, targetPort: 8080}]
`, ns, version, kubenode.FortioImage)
}

// The waypoint of install/kubernetes/waypoint, applied with kubectl -n
// into a namespace, comes up Ready as kmesh-waypoint pods; istiod's
// deployment controller, on, reconciles the Gateway and deploys nothing
// for it (while it does try for a Gateway without spec.addresses), and
// reports the Service's address in the Gateway's status.
func testWaypointApplied(t *testing.T, n *kubenode.Node) {
	ctx := context.Background()
	apply(t, n, namespace(wpNS, meshLabel))
	if err := n.CP.WaitServiceAccount(ctx, wpNS, "default"); err != nil {
		t.Fatal(err)
	}
	apply(t, n, echoVersion(wpNS, "v1")+"---\n"+echoVersion(wpNS, "v2")+`---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: `+wpNS+`}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
`+fortioPod("client", wpNS, map[string]string{"app": "client"}))
	waitPodsReady(t, n, wpNS, "app=echo", 2)
	waitPodsReady(t, n, wpNS, "app=client", 1)
	wpBefore = nodeState(t, n)
	t.Logf("before the waypoint: %s", wpBefore)

	m, err := n.WaypointManifest()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := n.KubectlIn(ctx, []byte(m), "apply", "-n", wpNS, "-f", "-"); err != nil {
		t.Fatal(err)
	}
	pods := waitPodsReady(t, n, wpNS, "gateway.networking.k8s.io/gateway-name="+wpName, 1)
	ready := time.Since(start)
	for _, p := range pods {
		var imgs []string
		for _, c := range p.Spec.Containers {
			imgs = append(imgs, c.Image)
		}
		if len(imgs) != 1 || imgs[0] != "kmesh-go/kmesh-waypoint:latest" {
			t.Errorf("pod %s of the waypoint runs %v, want kmesh-go/kmesh-waypoint:latest alone", p.Name, imgs)
		}
	}
	waitFor(t, time.Minute, "the Gateway's status.addresses", func() error {
		addrs := kubectl(t, n, "-n", wpNS, "get", "gateway", wpName, "-o",
			`jsonpath={range .status.addresses[*]}{.type}={.value} {end}|{.status.conditions[?(@.type=="Programmed")].status}`)
		if !strings.Contains(addrs, "Hostname="+wpName+"."+wpNS+".svc.cluster.local") || !strings.HasSuffix(addrs, "|True") {
			return fmt.Errorf("status: %s", addrs)
		}
		return nil
	})
	t.Logf("waypoint pod %s Ready %s after kubectl apply; Gateway programmed %s after", pods[0].Name,
		ready.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	// Nothing of istiod's: no object it manages in the namespace, and the
	// only Deployment of the Gateway is ours.
	if out := kubectl(t, n, "-n", wpNS, "get", "deployments,services,serviceaccounts", "-l", "gateway.istio.io/managed", "-o", "name"); strings.TrimSpace(out) != "" {
		t.Errorf("istiod deployed for the Gateway:\n%s", out)
	}
	deps := kubectl(t, n, "-n", wpNS, "get", "deployments", "-l", "gateway.networking.k8s.io/gateway-name="+wpName,
		"-o", `jsonpath={range .items[*]}{.metadata.name}:{.spec.template.spec.containers[*].image} {end}`)
	if strings.TrimSpace(deps) != wpName+":kmesh-go/kmesh-waypoint:latest" {
		t.Errorf("Deployments of the Gateway: %q, want only %s running kmesh-waypoint", deps, wpName)
	}
	// The controller is on: it reconciled this Gateway and stopped at the
	// address check; a Gateway without addresses it tries to deploy (and
	// fails here: this node's istiod has no injection templates).
	apply(t, n, `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: managed, namespace: `+wpNS+`}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`)
	waitFor(t, 30*time.Second, "istiod's deployment controller on the Gateway without addresses", func() error {
		if !istiodLogged(t, n, "reconciling\tgateway="+wpNS+"/managed") {
			return fmt.Errorf("not in istiod.log yet")
		}
		return nil
	})
	kubectl(t, n, "-n", wpNS, "delete", "gateway", "managed")
	if !istiodLogged(t, n, "reconciling gateway with controller istio.io/mesh-controller\tgateway="+wpNS+"/"+wpName) {
		t.Errorf("istiod's deployment controller never reconciled %s/%s: is it on?", wpNS, wpName)
	}
	if istiodLogged(t, n, "reconciling\tgateway="+wpNS+"/"+wpName) || istiodLogged(t, n, "gateway updated\tgateway="+wpNS+"/"+wpName) {
		t.Errorf("istiod's deployment controller went on to deploy %s/%s", wpNS, wpName)
	}
	t.Logf("istiod's deployment controller reconciled %s/%s and deployed nothing; for a Gateway without addresses it rendered its templates", wpNS, wpName)
}

// istiodLogged reports whether istiod's log has a line containing s.
func istiodLogged(t *testing.T, n *kubenode.Node, s string) bool {
	t.Helper()
	b, err := os.ReadFile(n.CP.LogPath("istiod"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), s)
}

// A service opts in with istio.io/use-waypoint: the daemon resolves its
// waypoint, flags the waypoint pod's netns, and sends connections to the
// VIP through the waypoint, which applies an HTTPRoute 90/10 split and
// counts every request as reporter="waypoint".
func testServiceUsesWaypoint(t *testing.T, n *kubenode.Node) {
	ctx := context.Background()
	kubectl(t, n, "-n", wpNS, "label", "service", "echo", "istio.io/use-waypoint="+wpName)
	apply(t, n, `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-split, namespace: `+wpNS+`}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - backendRefs:
    - {name: echo-v1, port: 80, weight: 90}
    - {name: echo-v2, port: 80, weight: 10}
`)
	want := wpNS + "/" + wpName + "." + wpNS + ".svc.cluster.local"
	start := time.Now()
	waitFor(t, 30*time.Second, "echo's waypoint in the daemon", func() error {
		if got := serviceWaypoint(t, n, wpNS+"/echo."+wpNS+".svc.cluster.local"); got != want {
			return fmt.Errorf("waypoint %q, want %q", got, want)
		}
		return nil
	})
	t.Logf("kmeshctl dump services: echo's waypoint is %s (%s after the label)", want, time.Since(start).Round(time.Millisecond))

	// The waypoint's pod is flagged in km_manage, and no other.
	wp := waitPodsReady(t, n, wpNS, "gateway.networking.k8s.io/gateway-name="+wpName, 1)[0]
	flagged := waypointNetns(t, n)
	var cookie string
	for _, p := range daemonPods(t, n) {
		if p.Namespace == wpNS && p.Name == wp.Name {
			cookie = p.NetnsCookie
		}
	}
	if cookie == "" || len(flagged) != 1 || !flagged[cookie] {
		t.Fatalf("netns flagged as a waypoint's in km_manage: %v; the waypoint pod's is %q", flagged, cookie)
	}
	t.Logf("km_manage flags the waypoint pod %s (netns cookie %s), and no other", wp.Name, cookie)

	// istiod's route reaches the waypoint.
	waitFor(t, 30*time.Second, "the split in the waypoint's routes", func() error {
		out, err := n.Kubectl(ctx, "-n", wpNS, "exec", "deploy/"+wpName, "--", "kmeshctl", "waypoint", "routes")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "echo-v1") || !strings.Contains(out, "echo-v2") {
			return fmt.Errorf("no split yet:\n%s", out)
		}
		return nil
	})
	t.Logf("kmeshctl waypoint routes (in the waypoint pod):\n%s", kubectl(t, n, "-n", wpNS, "exec", "deploy/"+wpName, "--", "kmeshctl", "waypoint", "routes"))

	before, rewrites := waypointRequests(t, n, wp.Name), sum(metrics(t, n), "kmesh_datapath_events_total", `event="waypoint_rewrite"`)
	res := loadEcho(t, n)
	after := waypointRequests(t, n, wp.Name)
	v1, v2 := after["echo-v1"]-before["echo-v1"], after["echo-v2"]-before["echo-v2"]
	rewritten := sum(metrics(t, n), "kmesh_datapath_events_total", `event="waypoint_rewrite"`) - rewrites
	t.Logf("%d requests through the VIP in %.0f qps: the waypoint counted %v to echo-v1, %v to echo-v2 (%.1f%%); the kernel sent %v connects to the waypoint",
		wpRequests, res.ActualQPS, v1, v2, 100*v2/(v1+v2), rewritten)
	if v1+v2 != wpRequests {
		t.Errorf("the waypoint counted %v requests of %d (reporter=waypoint, code 200)", v1+v2, wpRequests)
	}
	if share := 100 * v2 / (v1 + v2); share < 5 || share > 15 {
		t.Errorf("echo-v2 got %.1f%% of the requests, want 10 within 5 points", share)
	}
	if rewritten < wpRequests {
		t.Errorf("the kernel sent %v connects to the waypoint, want at least %d (one per request)", rewritten, wpRequests)
	}
}

// Without the label the VIP is served straight from the backends again:
// the waypoint sees nothing, the kernel sends nothing to it, and the
// backends share the requests as the Service's own load balancing does.
func testUseWaypointRemoved(t *testing.T, n *kubenode.Node) {
	kubectl(t, n, "-n", wpNS, "label", "service", "echo", "istio.io/use-waypoint-")
	start := time.Now()
	waitFor(t, 30*time.Second, "echo without a waypoint in the daemon", func() error {
		if got := serviceWaypoint(t, n, wpNS+"/echo."+wpNS+".svc.cluster.local"); got != "" {
			return fmt.Errorf("waypoint %q", got)
		}
		return nil
	})
	t.Logf("echo's waypoint gone from the daemon %s after the label", time.Since(start).Round(time.Millisecond))
	wp := waitPodsReady(t, n, wpNS, "gateway.networking.k8s.io/gateway-name="+wpName, 1)[0]
	direct := func(m map[string]float64, workload string) float64 {
		return sum(m, "istio_tcp_connections_opened_total", `reporter="destination"`, `source_workload="client"`,
			`destination_workload="`+workload+`"`, `destination_workload_namespace="`+wpNS+`"`)
	}
	m0, before := metrics(t, n), waypointRequests(t, n, wp.Name)
	res := loadEcho(t, n)
	// The daemon's connection metrics follow the kernel's records a
	// sweep later.
	var m1 map[string]float64
	var v1, v2 float64
	waitFor(t, 15*time.Second, "the backends' connections counted", func() error {
		m1 = metrics(t, n)
		v1, v2 = direct(m1, "echo-v1")-direct(m0, "echo-v1"), direct(m1, "echo-v2")-direct(m0, "echo-v2")
		if v1+v2 < wpRequests {
			return fmt.Errorf("%v of %d", v1+v2, wpRequests)
		}
		return nil
	})
	after := waypointRequests(t, n, wp.Name)
	rewritten := sum(m1, "kmesh_datapath_events_total", `event="waypoint_rewrite"`) - sum(m0, "kmesh_datapath_events_total", `event="waypoint_rewrite"`)
	seen := after["echo-v1"] + after["echo-v2"] - before["echo-v1"] - before["echo-v2"]
	t.Logf("%d requests through the VIP in %.0f qps: connections from the client opened at echo-v1 %v, echo-v2 %v; the waypoint counted %v, the kernel sent %v connects to it",
		wpRequests, res.ActualQPS, v1, v2, seen, rewritten)
	if seen != 0 || rewritten != 0 {
		t.Errorf("after the label went, the waypoint counted %v requests and the kernel sent it %v connects", seen, rewritten)
	}
	if v1+v2 != wpRequests {
		t.Errorf("the backends saw %v connections from the client, want %d", v1+v2, wpRequests)
	}
	// Two backends picked at random: half each, far from the split's 10%.
	if share := 100 * v2 / (v1 + v2); share < 35 || share > 65 {
		t.Errorf("echo-v2 got %.1f%% of the connections, want about half", share)
	}
}

// Deleting the waypoint (kubectl delete -f of what was applied) and its
// route leaves the node's kmesh state exactly as it was before the
// waypoint: no waypoint service or reference in the daemon or the kernel
// maps, no netns flagged, no record, tc program or cgroup of its pod.
func testWaypointDeleted(t *testing.T, n *kubenode.Node) {
	ctx := context.Background()
	m, err := n.WaypointManifest()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := n.KubectlIn(ctx, []byte(m), "delete", "-n", wpNS, "-f", "-", "--wait=true"); err != nil {
		t.Fatal(err)
	}
	kubectl(t, n, "-n", wpNS, "delete", "httproute", "echo-split")
	waitFor(t, time.Minute, "the waypoint's pods gone", func() error {
		l, err := n.Clientset.CoreV1().Pods(wpNS).List(ctx, metav1.ListOptions{LabelSelector: "gateway.networking.k8s.io/gateway-name=" + wpName})
		if err != nil {
			return err
		}
		if len(l.Items) > 0 {
			return fmt.Errorf("%d pods left", len(l.Items))
		}
		return nil
	})
	t.Logf("waypoint pods gone %s after kubectl delete", time.Since(start).Round(time.Millisecond))
	waitFor(t, 30*time.Second, "no waypoint left in kmesh", func() error {
		var left []string
		for _, s := range daemonServices(t, n) {
			if s.Name == wpName && s.Namespace == wpNS {
				left = append(left, "service "+s.Key)
			}
			if s.Waypoint != nil {
				left = append(left, "a waypoint on "+s.Key)
			}
		}
		var mp kernelMaps
		mustJSON(t, kmeshctlOut(t, n, "dump", "maps", "-o", "json"), &mp)
		for _, s := range mp.Services {
			if s.Waypoint != "" {
				left = append(left, fmt.Sprintf("kernel service %d -> %s", s.ID, s.Waypoint))
			}
		}
		for _, b := range mp.Backends {
			if b.Waypoint != "" {
				left = append(left, fmt.Sprintf("kernel backend %d -> %s", b.ID, b.Waypoint))
			}
		}
		if f := waypointNetns(t, n); len(f) > 0 {
			left = append(left, fmt.Sprintf("netns flagged %v", f))
		}
		if d := nodeState(t, n).diff(wpBefore); d != "" {
			left = append(left, d)
		}
		if len(left) > 0 {
			return fmt.Errorf("%s", strings.Join(left, "; "))
		}
		return nil
	})
	t.Logf("after: %s", nodeState(t, n))
	if _, err := curl(ctx, n, wpNS, "client", "http://"+serviceIP(t, n, wpNS, "echo")+":80/debug"); err != nil {
		t.Fatalf("the VIP after the waypoint went: %v", err)
	}
	// Later steps compare the node with itself: take the namespace away.
	kubectl(t, n, "delete", "namespace", wpNS, "--wait=true", "--timeout=2m")
}

// loadEcho sends wpRequests requests from the client to echo's VIP, a new
// connection each, and fails the test unless every one answered 200.
func loadEcho(t *testing.T, n *kubenode.Node) fortioResult {
	t.Helper()
	url := "http://" + serviceIP(t, n, wpNS, "echo") + ":80/echo"
	res, raw, err := load(context.Background(), n, wpNS, "client", "-qps", "0", "-c", "4", "-n", fmt.Sprint(wpRequests), "-keepalive=false", url)
	if err != nil {
		t.Fatalf("fortio load: %v\n%s", err, raw)
	}
	if res.ok() != wpRequests {
		t.Fatalf("%d requests: return codes %v", wpRequests, res.RetCodes)
	}
	return res
}

// waypointRequests is the waypoint pod's istio_requests_total
// (reporter="waypoint", code 200) by destination_service_name, read from
// its status port through the apiserver's pod proxy.
func waypointRequests(t *testing.T, n *kubenode.Node, pod string) map[string]float64 {
	t.Helper()
	m := parseMetrics(kubectl(t, n, "get", "--raw", fmt.Sprintf("/api/v1/namespaces/%s/pods/%s:15021/proxy/metrics", wpNS, pod)))
	out := map[string]float64{}
	for _, svc := range []string{"echo-v1", "echo-v2", "echo"} {
		out[svc] = sum(m, "istio_requests_total", `reporter="waypoint"`, `response_code="200"`, `destination_service_name="`+svc+`"`)
	}
	return out
}

func kmeshctlOut(t *testing.T, n *kubenode.Node, args ...string) string {
	t.Helper()
	return kubectl(t, n, append([]string{"-n", kubenode.KmeshNamespace, "exec", "ds/kmesh", "-c", "kmesh-daemon", "--", "kmeshctl"}, args...)...)
}

func mustJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("%v: %s", err, s)
	}
}

// daemonService is what kmeshctl dump services -o json says of a service.
type daemonService struct {
	Key       string `json:"key"`
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Waypoint  *struct {
		Address string `json:"address"`
		Service string `json:"service"`
	} `json:"waypoint"`
}

func daemonServices(t *testing.T, n *kubenode.Node) []daemonService {
	t.Helper()
	var out []daemonService
	mustJSON(t, kmeshctlOut(t, n, "dump", "services", "-o", "json"), &out)
	return out
}

// serviceWaypoint is the waypoint service the daemon resolved for the
// service key, "" when none.
func serviceWaypoint(t *testing.T, n *kubenode.Node, key string) string {
	t.Helper()
	for _, s := range daemonServices(t, n) {
		if s.Key == key && s.Waypoint != nil {
			return s.Waypoint.Service + s.Waypoint.Address
		}
	}
	return ""
}

// kernelMaps is the part of kmeshctl dump maps -o json these tests read.
type kernelMaps struct {
	Services []struct {
		ID       uint32
		Waypoint string
	} `json:"services"`
	Backends []struct {
		ID       uint32
		Waypoint string
	} `json:"backends"`
	Enrolled map[string]struct {
		Waypoint bool `json:"waypoint"`
	} `json:"enrolled"`
}

// waypointNetns is the netns cookies km_manage flags as a waypoint's.
func waypointNetns(t *testing.T, n *kubenode.Node) map[string]bool {
	t.Helper()
	var m kernelMaps
	mustJSON(t, kmeshctlOut(t, n, "dump", "maps", "-o", "json"), &m)
	out := map[string]bool{}
	for cookie, e := range m.Enrolled {
		if e.Waypoint {
			out[cookie] = true
		}
	}
	return out
}
