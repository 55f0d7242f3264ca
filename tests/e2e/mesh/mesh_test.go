// Package mesh_test runs the whole product the way a node in a cluster runs
// it, against the real control plane: etcd, kube-apiserver and istiod on the
// loopback of a "node" network namespace; pods made by the real CNI chain
// (loopback, bridge + host-local, then kmesh-cni reading labels from the
// apiserver) on a bridge in that namespace; kmesh-daemon as a real process in
// the node, on the xDS stream from istiod over TLS with a service-account
// token. There is no kubelet: the test creates the Pod objects, runs the CNI
// chain for them and writes their status. Traffic is real: HTTP requests
// from client pods to service addresses, each on a new connection.
//
// Run with KMESH_E2E=1 as root (see tests/e2e/README.md).
package mesh_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/kmesh-go/kmesh/internal/enrollment"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/tests/e2e/controlplane"
	"github.com/kmesh-go/kmesh/tests/nodebox"
)

// The cluster the test builds: this node (node-a, the daemon's) and one
// more Node object in another zone, for pods "elsewhere".
const (
	nodeA       = "node-a"
	nodeB       = "node-b"
	region      = "eu-west-1"
	zoneA       = "eu-west-1a"
	zoneB       = "eu-west-1b"
	daemonNS    = "kmesh-system"
	daemonSA    = "kmesh"
	servicePort = 80
	podPort     = 8080
)

// mesh is the running system every scenario uses.
type mesh struct {
	ctx        context.Context
	cp         *controlplane.ControlPlane
	k8s        kubernetes.Interface
	dyn        dynamic.Interface
	box        *nodebox.Box
	bins       nodebox.Bins
	daemon     *nodebox.Proc
	daemonArgs []string
}

func TestMesh(t *testing.T) {
	if os.Getenv("KMESH_E2E") != "1" {
		t.Skip("end-to-end test: set KMESH_E2E=1 (needs root, etcd and tests/e2e/tools/build.sh)")
	}
	m := startMesh(t)

	// Each scenario has its own namespaces and service, and removes its
	// pods when it ends. The restarts come last.
	t.Run("VIPReachesEveryReadyBackend", m.testEveryReadyBackend)
	t.Run("DeletedPodDrainsNewPodJoins", m.testDeletedPod)
	t.Run("NotReadyPodDrains", m.testNotReadyPod)
	t.Run("LocalityPreferCloseFailover", m.testLocality)
	t.Run("AuthorizationPolicy", m.testAuthorization)
	t.Run("NamespaceLabelEnrollsRunningPods", m.testNamespaceLabel)
	t.Run("RestartsUnderLoad", m.testRestartsUnderLoad)
}

// startMesh brings up the control plane in a node namespace, the node's
// box (bridge, cgroup, pins, CNI chain with the apiserver's kubeconfig) and
// kmesh-daemon connected to istiod over TLS.
func startMesh(t *testing.T) *mesh {
	sandbox, dir := controlplane.Sandbox(t, "kmesh-e2e-mesh")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	t.Cleanup(cancel)
	m := &mesh{ctx: ctx}

	start := time.Now()
	var err error
	m.bins, err = nodebox.Build(ctx, nodebox.BuildOptions{Out: filepath.Join(dir, "bin"), Fortio: true, Logf: t.Logf})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	t.Logf("binaries built in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	m.cp, err = controlplane.Start(ctx, controlplane.Options{Dir: filepath.Join(dir, "controlplane"), NetNS: sandbox})
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("end of istiod.log:\n%s", m.cp.LogTail("istiod", 4000))
		}
		if err := m.cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	m.k8s = m.cp.Clientset
	if m.dyn, err = dynamic.NewForConfig(m.cp.RESTConfig); err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane ready in %s (node namespace %s)", time.Since(start).Round(time.Millisecond), sandbox)

	// The Nodes, before the daemon: it reads its locality from its Node.
	for name, zone := range map[string]string{nodeA: zoneA, nodeB: zoneB} {
		_, err := m.k8s.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			corev1.LabelTopologyRegion: region, corev1.LabelTopologyZone: zone, corev1.LabelHostname: name,
		}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create Node %s: %v", name, err)
		}
	}

	m.box, err = nodebox.New(ctx, nodebox.Config{
		Prefix:     "kme2e",
		NodeNS:     sandbox,
		Dir:        filepath.Join(dir, "node"),
		Bins:       m.bins,
		Kubeconfig: m.cp.Kubeconfig,
		Logf:       t.Logf,
	})
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if m.daemon != nil {
				t.Logf("end of daemon.log:\n%s", nodebox.Tail(m.daemon.LogPath, 6000))
			}
			t.Logf("end of kmesh-cni.log:\n%s", nodebox.Tail(filepath.Join(m.box.Dir, "kmesh-cni.log"), 3000))
		}
		if err := m.box.Close(); err != nil {
			t.Errorf("remove the node: %v", err)
		}
	})

	// The daemon's identity for istiod: a token for its service account
	// with audience istio-ca (TokenRequest), and istiod's root cert from
	// the ConfigMap istiod writes into every namespace.
	token, err := m.cp.ServiceAccountToken(ctx, daemonNS, daemonSA, controlplane.IstioCAAudience)
	if err != nil {
		t.Fatal(err)
	}
	root, err := m.cp.RootCertPEM(ctx, daemonNS)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile, rootFile := filepath.Join(m.box.Dir, "istio-token"), filepath.Join(m.box.Dir, "root-cert.pem")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rootFile, root, 0o644); err != nil {
		t.Fatal(err)
	}
	m.daemonArgs = []string{
		"--xds-address", m.cp.IstiodTLSAddr,
		"--xds-root-cert", rootFile,
		"--xds-token", tokenFile,
		"--xds-server-name", controlplane.IstiodServerName,
		"--node-name", nodeA,
		"--node-ip", m.box.Gateway.String(),
		"--cluster-id", "Kubernetes",
		"--kubeconfig", m.cp.Kubeconfig,
		"--pod-name", "kmesh-daemon-" + nodeA,
		"--pod-namespace", daemonNS,
		"--service-account", daemonSA,
		"--log-level", "debug",
	}
	start = time.Now()
	m.startDaemon(t)
	t.Logf("kmesh-daemon ready in %s: TLS xDS from istiod, first complete state in the kernel", time.Since(start).Round(time.Millisecond))

	st := m.status(t)
	if st["connected"] != true || !strings.HasPrefix(fmt.Sprint(st["source"]), "xds:") {
		t.Fatalf("daemon status: %v", st)
	}
	if got, want := fmt.Sprint(st["locality"]), region+"/"+zoneA; got != want {
		t.Fatalf("daemon locality %q, want %q from Node %s's labels", got, want, nodeA)
	}

	// This process dials from the pods in-process: its sockets must pass
	// the programs attached to the box's cgroup.
	if err := m.box.JoinCgroup(); err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *mesh) startDaemon(t *testing.T) {
	t.Helper()
	d, err := m.box.StartDaemon(m.daemonArgs...)
	if err != nil {
		t.Fatal(err)
	}
	m.daemon = d
	ctx, cancel := context.WithTimeout(m.ctx, 60*time.Second)
	defer cancel()
	if err := m.box.WaitDaemonReady(ctx, d); err != nil {
		t.Fatal(err)
	}
}

func (m *mesh) status(t *testing.T) map[string]any {
	t.Helper()
	var st map[string]any
	if err := m.box.AdminJSON(m.ctx, "/debug/status", &st); err != nil {
		t.Fatalf("daemon status: %v", err)
	}
	return st
}

// namespace creates a namespace, in the mesh (istio.io/dataplane-mode=kmesh)
// or not.
func (m *mesh) namespace(t *testing.T, name string, inMesh bool) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if inMesh {
		ns.Labels = map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh}
	}
	if _, err := m.k8s.CoreV1().Namespaces().Create(m.ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

// service creates a ClusterIP service vip:80 -> 8080 selecting app=<app>.
func (m *mesh) service(t *testing.T, ns, name, vip, app string, mod ...func(*corev1.Service)) string {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: vip,
			Selector:  map[string]string{"app": app},
			Ports: []corev1.ServicePort{{
				Name: "http", Port: servicePort, TargetPort: intstr.FromInt32(podPort), Protocol: corev1.ProtocolTCP,
			}},
		},
	}
	for _, f := range mod {
		f(svc)
	}
	if _, err := m.k8s.CoreV1().Services(ns).Create(m.ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service %s/%s: %v", ns, name, err)
	}
	return "http://" + net.JoinHostPort(vip, strconv.Itoa(servicePort)) + "/"
}

// pod is a Pod object, its sandbox, and (for servers) an HTTP server.
type pod struct {
	*nodebox.Pod
	obj *corev1.Pod
	m   *mesh
}

type podOpts struct {
	node     string // default: this node
	app      string // label app=<app>; servers answer with their name
	sa       string
	notReady bool
	labels   map[string]string
}

// addPod does what the scheduler, kubelet and runtime would: creates the
// Pod (bound to a node), runs the CNI chain for its sandbox (kmesh-cni reads
// the pod from the apiserver by CNI_ARGS), starts its server when it has an
// app, and writes its status: podIP from host-local, Running, Ready unless
// notReady. The pod goes when the test ends.
func (m *mesh) addPod(t *testing.T, ns, name string, o podOpts) *pod {
	t.Helper()
	if o.node == "" {
		o.node = nodeA
	}
	labels := map[string]string{}
	for k, v := range o.labels {
		labels[k] = v
	}
	if o.app != "" {
		labels["app"] = o.app
	}
	obj, err := m.k8s.CoreV1().Pods(ns).Create(m.ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:           o.node,
			ServiceAccountName: o.sa,
			Containers: []corev1.Container{{
				Name: "app", Image: "kmesh-e2e/app:never-pulled",
				Ports: []corev1.ContainerPort{{ContainerPort: podPort, Protocol: corev1.ProtocolTCP}},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	p := &pod{obj: obj, m: m}
	t.Cleanup(func() { m.removePod(t, p) })
	p.Pod, err = m.box.AddPod(m.ctx, nodebox.PodSpec{Name: name, Namespace: ns, UID: string(obj.UID)})
	if err != nil {
		t.Fatal(err)
	}
	if o.app != "" {
		if err := p.serve(); err != nil {
			t.Fatalf("server in %s: %v", name, err)
		}
	}
	m.writeStatus(t, p, func(st *corev1.PodStatus) {
		now := metav1.Now()
		*st = corev1.PodStatus{
			Phase:     corev1.PodRunning,
			HostIP:    m.box.Gateway.String(),
			PodIP:     p.IP.String(),
			PodIPs:    []corev1.PodIP{{IP: p.IP.String()}},
			StartTime: &now,
		}
		setReadyConditions(st, !o.notReady)
	})
	return p
}

// writeStatus changes the pod's status through the status subresource, as a
// kubelet does, retrying when someone else (kmesh-cni's annotation, the
// daemon's) changed the pod in between.
func (m *mesh) writeStatus(t *testing.T, p *pod, mutate func(*corev1.PodStatus)) {
	t.Helper()
	pods := m.k8s.CoreV1().Pods(p.obj.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(m.ctx, p.obj.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		mutate(&cur.Status)
		_, err = pods.UpdateStatus(m.ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("write status of %s/%s: %v", p.obj.Namespace, p.obj.Name, err)
	}
}

func setReadyConditions(st *corev1.PodStatus, ready bool) {
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	now := metav1.Now()
	st.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: cond, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: cond, LastTransitionTime: now},
	}
}

// setReady writes the pod's Ready condition, as a kubelet does when a
// readiness probe changes.
func (m *mesh) setReady(t *testing.T, p *pod, ready bool) {
	t.Helper()
	m.writeStatus(t, p, func(st *corev1.PodStatus) { setReadyConditions(st, ready) })
}

// deletePod deletes the Pod object at once (grace period 0); the sandbox
// stays until removePod, as when a kubelet is slow to tear it down.
func (m *mesh) deletePod(t *testing.T, p *pod) {
	t.Helper()
	zero := int64(0)
	err := m.k8s.CoreV1().Pods(p.Namespace).Delete(m.ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete pod %s/%s: %v", p.Namespace, p.Name, err)
	}
}

// removePod deletes the object and tears the sandbox down (CNI DEL).
func (m *mesh) removePod(t *testing.T, p *pod) {
	zero := int64(0)
	err := m.k8s.CoreV1().Pods(p.obj.Namespace).Delete(context.Background(), p.obj.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete pod %s/%s: %v", p.obj.Namespace, p.obj.Name, err)
	}
	if p.Pod != nil {
		if err := m.box.RemovePod(context.Background(), p.Pod); err != nil {
			t.Errorf("remove sandbox of %s: %v", p.obj.Name, err)
		}
	}
}

// serve answers every HTTP request on :8080 with the pod's name. The
// listener lives in the pod's namespace and goes with it.
func (p *pod) serve() error {
	l, err := p.Listen("tcp", fmt.Sprintf(":%d", podPort))
	if err != nil {
		return err
	}
	name := p.Name
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name)
	})}
	go func() { _ = srv.Serve(l) }()
	return nil
}

// get sends one HTTP GET from the pod on a new connection and returns the
// body: the answering pod's name.
func (p *pod) get(ctx context.Context, url string) (string, error) {
	c := &http.Client{
		Transport: &http.Transport{DialContext: p.DialContext, DisableKeepAlives: true},
		Timeout:   2 * time.Second,
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(body), nil
}

// spread sends n requests and counts who answered; failures fail the test.
func (p *pod) spread(t *testing.T, url string, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for range n {
		who, err := p.get(p.m.ctx, url)
		if err != nil {
			t.Fatalf("%s -> %s: %v", p.Name, url, err)
		}
		out[who]++
	}
	return out
}

// waitServedBy waits until requests from the pod have reached every one of
// names (the service and its endpoints have come through istiod).
func (p *pod) waitServedBy(t *testing.T, url string, timeout time.Duration, names ...string) time.Duration {
	t.Helper()
	start := time.Now()
	seen := map[string]bool{}
	var last error
	for time.Since(start) < timeout {
		who, err := p.get(p.m.ctx, url)
		if err == nil {
			seen[who] = true
		} else {
			last = err
		}
		all := true
		for _, n := range names {
			all = all && seen[n]
		}
		if all {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s -> %s: after %s reached %v, want all of %v (last error: %v)", p.Name, url, timeout, keys(seen), names, last)
	return 0
}

// hit is one request of a traffic loop.
type hit struct {
	at  time.Time
	who string
	err error
}

// loop sends requests from the pod back to back (a new connection each)
// until stop is called, which returns every result.
func (p *pod) loop(url string) (stop func() []hit) {
	var (
		mu   sync.Mutex
		hits []hit
		done = make(chan struct{})
		fin  = make(chan struct{})
	)
	go func() {
		defer close(fin)
		for {
			select {
			case <-done:
				return
			default:
			}
			who, err := p.get(p.m.ctx, url)
			mu.Lock()
			hits = append(hits, hit{time.Now(), who, err})
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return func() []hit {
		close(done)
		<-fin
		return hits
	}
}

// summarize counts hits per answering pod and returns the failures.
func summarize(hits []hit) (map[string]int, []error) {
	counts := map[string]int{}
	var errs []error
	for _, h := range hits {
		if h.err != nil {
			errs = append(errs, h.err)
		} else {
			counts[h.who]++
		}
	}
	return counts, errs
}

// lastHit is the time of the last request that reached who, or zero.
func lastHit(hits []hit, who string) time.Time {
	var last time.Time
	for _, h := range hits {
		if h.err == nil && h.who == who {
			last = h.at
		}
	}
	return last
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// eventually polls cond every 10ms until it holds or timeout passes, and
// returns how long it took.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	var why string
	for {
		var ok bool
		if ok, why = cond(); ok {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %s: %s", what, timeout, why)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mapDump is the part of /debug/maps the scenarios read.
type mapDump struct {
	Services []struct {
		ID        uint32
		VIPs      []string
		Endpoints [][]uint32
	} `json:"services"`
	Backends []struct {
		ID        uint32
		Addresses []string
	} `json:"backends"`
	Enrolled map[string]any `json:"enrolled"`
}

func (m *mesh) maps(t *testing.T) mapDump {
	t.Helper()
	var d mapDump
	if err := m.box.AdminJSON(m.ctx, "/debug/maps", &d); err != nil {
		t.Fatalf("/debug/maps: %v", err)
	}
	return d
}

// enrolled reports whether the pod's netns cookie is in the manage map.
func (m *mesh) enrolled(t *testing.T, p *pod) bool {
	t.Helper()
	c, err := podns.Cookie(p.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	_, ok := m.maps(t).Enrolled[strconv.FormatUint(c, 10)]
	return ok
}

// configDump is the part of /debug/config_dump the scenarios read.
type configDump struct {
	Services  []serviceDump `json:"services"`
	Workloads []struct {
		UID      string   `json:"uid"`
		Name     string   `json:"name"`
		Healthy  bool     `json:"healthy"`
		Policies []string `json:"authorizationPolicies"`
		Locality struct {
			Region, Zone string
		} `json:"locality"`
	} `json:"workloads"`
	Policies []struct {
		Key    string `json:"key"`
		Action int    `json:"action"` // 0 ALLOW, 1 DENY
		Scope  int    `json:"scope"`
	} `json:"policies"`
}

type serviceDump struct {
	Key           string   `json:"key"`
	Backing       []string `json:"backing"`
	LoadBalancing struct {
		Mode              int   `json:"mode"`
		RoutingPreference []int `json:"routingPreference"`
	} `json:"loadBalancing"`
}

func (m *mesh) config(t *testing.T) configDump {
	t.Helper()
	var d configDump
	if err := m.box.AdminJSON(m.ctx, "/debug/config_dump", &d); err != nil {
		t.Fatalf("/debug/config_dump: %v", err)
	}
	return d
}
