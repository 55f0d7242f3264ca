package mesh_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kmesh-go/kmesh/internal/enrollment"
	"github.com/kmesh-go/kmesh/tests/e2e/cluster"
	"github.com/kmesh-go/kmesh/tests/nodebox"
)

// (1) A service address reaches every ready backend and never one that is
// not ready.
func (m *mesh) testEveryReadyBackend(t *testing.T) {
	const ns = "s1"
	m.namespace(t, ns, true)
	url := m.service(t, ns, "echo", "10.96.1.10", "echo")
	for i := range 3 {
		m.addPod(t, ns, fmt.Sprintf("echo-%d", i), podOpts{app: "echo"})
	}
	m.addPod(t, ns, "echo-unready", podOpts{app: "echo", notReady: true})
	client := m.addPod(t, ns, "client", podOpts{})
	if !m.Enrolled(t, client) {
		t.Fatal("kmesh-cni did not enroll a pod of a namespace labelled istio.io/dataplane-mode=kmesh")
	}

	took := client.WaitServedBy(t, url, 15*time.Second, "echo-0", "echo-1", "echo-2")
	t.Logf("all three ready backends answered %s %s after their status was written", url, took.Round(time.Millisecond))
	got := client.Spread(t, url, 90)
	t.Logf("90 requests: %v", got)
	for i := range 3 {
		if got[fmt.Sprintf("echo-%d", i)] == 0 {
			t.Errorf("echo-%d got no requests: %v", i, got)
		}
	}
	if got["echo-unready"] != 0 || len(got) != 3 {
		t.Errorf("requests reached a pod that is not ready: %v", got)
	}
}

// (2) A deleted pod gets no new connections within 1 s; a new pod starts
// receiving them.
func (m *mesh) testDeletedPod(t *testing.T) {
	const ns = "s2"
	m.namespace(t, ns, true)
	url := m.service(t, ns, "echo", "10.96.2.10", "echo")
	var pods []*pod
	for i := range 3 {
		pods = append(pods, m.addPod(t, ns, fmt.Sprintf("echo-%d", i), podOpts{app: "echo"}))
	}
	client := m.addPod(t, ns, "client", podOpts{})
	client.WaitServedBy(t, url, 15*time.Second, "echo-0", "echo-1", "echo-2")

	// The deleted pod's sandbox and server stay up (a slow kubelet), so a
	// connection the data path still sent there would succeed and show.
	stop := client.Loop(url)
	time.Sleep(300 * time.Millisecond)
	deleted := time.Now()
	m.DeletePod(t, pods[1])
	time.Sleep(1500 * time.Millisecond)
	hits := stop()
	counts, errs := cluster.Summarize(hits)
	last := cluster.LastHit(hits, "echo-1")
	t.Logf("%d requests around the delete: %v; last one to echo-1 %s after the delete", len(hits), counts, last.Sub(deleted).Round(time.Millisecond))
	if len(errs) > 0 {
		t.Errorf("%d requests failed around the delete, first: %v", len(errs), errs[0])
	}
	if last.IsZero() {
		t.Error("echo-1 got no requests before its delete: the loop saw nothing to drain")
	} else if d := last.Sub(deleted); d >= time.Second {
		t.Errorf("echo-1 still got new connections %s after its delete (want < 1s)", d.Round(time.Millisecond))
	}
	m.RemovePod(t, pods[1])

	joined := time.Now()
	m.addPod(t, ns, "echo-new", podOpts{app: "echo"})
	took := client.WaitServedBy(t, url, 15*time.Second, "echo-new")
	t.Logf("a new pod received requests %s after it was created (%s after its status)", time.Since(joined).Round(time.Millisecond), took.Round(time.Millisecond))
	if got := client.Spread(t, url, 60); got["echo-1"] != 0 || got["echo-new"] == 0 {
		t.Errorf("after the replacement: %v", got)
	}
}

// (3) A pod turned Ready=False stops receiving new connections (within
// 1 s), and gets them again when ready.
func (m *mesh) testNotReadyPod(t *testing.T) {
	const ns = "s3"
	m.namespace(t, ns, true)
	url := m.service(t, ns, "echo", "10.96.3.10", "echo")
	var pods []*pod
	for i := range 3 {
		pods = append(pods, m.addPod(t, ns, fmt.Sprintf("echo-%d", i), podOpts{app: "echo"}))
	}
	client := m.addPod(t, ns, "client", podOpts{})
	client.WaitServedBy(t, url, 15*time.Second, "echo-0", "echo-1", "echo-2")

	stop := client.Loop(url)
	time.Sleep(300 * time.Millisecond)
	changed := time.Now()
	m.SetReady(t, pods[2], false)
	time.Sleep(1500 * time.Millisecond)
	hits := stop()
	counts, errs := cluster.Summarize(hits)
	last := cluster.LastHit(hits, "echo-2")
	t.Logf("%d requests around Ready=False: %v; last one to echo-2 %s after the change", len(hits), counts, last.Sub(changed).Round(time.Millisecond))
	if len(errs) > 0 {
		t.Errorf("%d requests failed, first: %v", len(errs), errs[0])
	}
	if last.IsZero() {
		t.Error("echo-2 got no requests before the change")
	} else if d := last.Sub(changed); d >= time.Second {
		t.Errorf("echo-2 still got new connections %s after Ready=False (want < 1s)", d.Round(time.Millisecond))
	}

	m.SetReady(t, pods[2], true)
	took := client.WaitServedBy(t, url, 15*time.Second, "echo-2")
	t.Logf("echo-2 back in rotation %s after Ready=True", took.Round(time.Millisecond))
}

// (4) Locality: the service asks for spec.trafficDistribution PreferClose,
// which istiod sends as FAILOVER load balancing with routing preferences
// NETWORK, REGION, ZONE. This node is in zone a (the daemon reads it from
// its Node's labels): backends in zone a get every connection while one is
// ready; when none is, connections fail over to zone b; back when one is.
func (m *mesh) testLocality(t *testing.T) {
	const ns = "s4"
	m.namespace(t, ns, true)
	url := m.service(t, ns, "echo", "10.96.4.10", "echo", func(s *corev1.Service) {
		td := corev1.ServiceTrafficDistributionPreferClose
		s.Spec.TrafficDistribution = &td
	})
	near := []*pod{
		m.addPod(t, ns, "near-0", podOpts{app: "echo", node: nodeA}),
		m.addPod(t, ns, "near-1", podOpts{app: "echo", node: nodeA}),
	}
	m.addPod(t, ns, "far-0", podOpts{app: "echo", node: nodeB})
	m.addPod(t, ns, "far-1", podOpts{app: "echo", node: nodeB})
	client := m.addPod(t, ns, "client", podOpts{node: nodeA})
	client.WaitServedBy(t, url, 15*time.Second, "near-0", "near-1")

	// What istiod sent, as the daemon holds it.
	cluster.Eventually(t, 10*time.Second, "four workloads with the Nodes' zones", func() (bool, string) {
		d := m.Config(t)
		zones := map[string]string{}
		for _, w := range d.Workloads {
			if strings.Contains(w.UID, "/"+ns+"/") && w.Name != "client" && w.Healthy {
				zones[w.Name] = w.Locality.Region + "/" + w.Locality.Zone
			}
		}
		return len(zones) == 4 && zones["near-0"] == region+"/"+zoneA && zones["far-0"] == region+"/"+zoneB, fmt.Sprint(zones)
	})
	d := m.Config(t)
	i := slices.IndexFunc(d.Services, func(s serviceDump) bool { return s.Key == ns+"/echo."+ns+".svc.cluster.local" })
	if i < 0 {
		t.Fatalf("the daemon has no service %s/echo", ns)
	}
	lb := d.Services[i].LoadBalancing
	t.Logf("istiod sent PreferClose as loadBalancing mode %d (2 = FAILOVER), routing preference %v (1 REGION, 2 ZONE, 6 NETWORK)", lb.Mode, lb.RoutingPreference)
	if lb.Mode != 2 || !slices.Contains(lb.RoutingPreference, 2) {
		t.Fatalf("PreferClose arrived as %+v, want FAILOVER with ZONE among the preferences", lb)
	}

	got := client.Spread(t, url, 60)
	t.Logf("zone a has ready backends: %v", got)
	if got["far-0"]+got["far-1"] != 0 || got["near-0"] == 0 || got["near-1"] == 0 {
		t.Fatalf("same-zone backends first: %v", got)
	}

	// Both same-zone backends go: fail over, with no failed request.
	stop := client.Loop(url)
	time.Sleep(300 * time.Millisecond)
	changed := time.Now()
	m.SetReady(t, near[0], false)
	m.SetReady(t, near[1], false)
	time.Sleep(1500 * time.Millisecond)
	hits := stop()
	counts, errs := cluster.Summarize(hits)
	lastNear := cluster.LastHit(hits, "near-0")
	if l := cluster.LastHit(hits, "near-1"); l.After(lastNear) {
		lastNear = l
	}
	t.Logf("%d requests around the fail-over: %v; the last one to zone a %s after both turned unready",
		len(hits), counts, lastNear.Sub(changed).Round(time.Millisecond))
	if len(errs) > 0 {
		t.Errorf("%d requests failed during the fail-over, first: %v", len(errs), errs[0])
	}
	if d := lastNear.Sub(changed); d >= time.Second {
		t.Errorf("zone a still got new connections %s after its backends turned unready (want < 1s)", d.Round(time.Millisecond))
	}
	got = client.Spread(t, url, 60)
	t.Logf("zone a has none: %v", got)
	if got["near-0"]+got["near-1"] != 0 || got["far-0"] == 0 || got["far-1"] == 0 {
		t.Fatalf("fail-over to zone b: %v", got)
	}

	// One comes back: everything goes to it again.
	m.SetReady(t, near[0], true)
	client.WaitServedBy(t, url, 10*time.Second, "near-0")
	time.Sleep(200 * time.Millisecond)
	got = client.Spread(t, url, 40)
	t.Logf("near-0 is back: %v", got)
	if got["near-0"] != 40 {
		t.Fatalf("back to zone a: %v", got)
	}
}

var authorizationPolicies = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}

// (5) AuthorizationPolicy: DENY from a namespace, ALLOW by service account.
// Blocked clients fail fast (refused or reset, not a timeout); others pass.
// The clients are enrolled, so the connect hook refuses a denied connect()
// before a packet leaves; the server's tc program would reset the SYN of a
// client outside the mesh.
func (m *mesh) testAuthorization(t *testing.T) {
	const (
		srvNS     = "authz"
		clientNS  = "authz-clients"
		blockedNS = "authz-blocked"
	)
	for _, ns := range []string{srvNS, clientNS, blockedNS} {
		m.namespace(t, ns, true)
	}
	url := m.service(t, srvNS, "guarded", "10.96.5.10", "guarded")
	guarded := m.addPod(t, srvNS, "guarded-0", podOpts{app: "guarded", sa: "guarded"})
	podURL := fmt.Sprintf("http://%s:%d/", guarded.IP, podPort)
	good := m.addPod(t, clientNS, "good", podOpts{sa: "good"})
	wrongSA := m.addPod(t, clientNS, "wrong-sa", podOpts{sa: "other"})
	blocked := m.addPod(t, blockedNS, "blocked", podOpts{sa: "good"})
	// The same identities outside the mesh (opted out): no connect hook,
	// only the guarded pod's tc program decides, on the SYN.
	optOut := map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeNone}
	goodOut := m.addPod(t, clientNS, "good-outside", podOpts{sa: "good", labels: optOut})
	blockedOut := m.addPod(t, blockedNS, "blocked-outside", podOpts{sa: "good", labels: optOut})
	for _, c := range []*pod{good, wrongSA, blocked} {
		c.WaitServedBy(t, url, 15*time.Second, "guarded-0")
	}
	for _, c := range []*pod{goodOut, blockedOut} {
		if m.Enrolled(t, c) {
			t.Fatalf("%s opted out but is enrolled", c.Name)
		}
		c.WaitServedBy(t, podURL, 15*time.Second, "guarded-0")
	}

	// DENY whatever comes from the blocked namespace, to every workload of
	// the server's namespace; ALLOW only service account "good" (of any
	// namespace) to the guarded pods. The blocked client has that service
	// account too: DENY wins.
	policies := []map[string]any{
		{
			"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "deny-blocked-namespace", "namespace": srvNS},
			"spec": map[string]any{
				"action": "DENY",
				"rules":  []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"namespaces": []any{blockedNS}}}}}},
			},
		},
		{
			"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "allow-good-sa", "namespace": srvNS},
			"spec": map[string]any{
				"selector": map[string]any{"matchLabels": map[string]any{"app": "guarded"}},
				"action":   "ALLOW",
				"rules":    []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"*/sa/good"}}}}}},
			},
		},
	}
	for _, p := range policies {
		u := &unstructured.Unstructured{Object: p}
		if _, err := m.Dyn.Resource(authorizationPolicies).Namespace(srvNS).Create(m.Ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create AuthorizationPolicy %s: %v", u.GetName(), err)
		}
	}

	// istiod -> daemon: both policies, the guarded workload selected by the
	// ALLOW one (the namespace-wide DENY applies by scope).
	took := cluster.Eventually(t, 10*time.Second, "the policies in the daemon", func() (bool, string) {
		d := m.Config(t)
		have := map[string]int{}
		for _, p := range d.Policies {
			have[p.Key] = p.Action
		}
		var selects []string
		for _, w := range d.Workloads {
			if w.Name == "guarded-0" {
				selects = w.Policies
			}
		}
		ok := len(have) >= 2 && have[srvNS+"/deny-blocked-namespace"] == 1 && slices.Contains(selects, srvNS+"/allow-good-sa")
		return ok, fmt.Sprintf("policies %v, guarded-0 lists %v", have, selects)
	})
	t.Logf("istiod's Authorization resources reached the daemon %s after the policies were created", took.Round(time.Millisecond))

	type client struct {
		p   *pod
		url string
		why string
	}
	allowed := []client{
		{good, url, "ALLOW by service account good"},
		{goodOut, podURL, "ALLOW by service account good, outside the mesh"},
	}
	denied := []client{
		{wrongSA, url, "no ALLOW matches service account other: connect() refused"},
		{blocked, url, "DENY from namespace " + blockedNS + ": connect() refused"},
		{blockedOut, podURL, "DENY from namespace " + blockedNS + ", outside the mesh: the SYN is reset"},
	}
	for _, c := range denied {
		// The policies are in the daemon; the kernel follows within a push.
		cluster.Eventually(t, 5*time.Second, c.p.Name+" is refused", func() (bool, string) {
			_, err := c.p.Get(m.Ctx, c.url)
			return err != nil, "still allowed"
		})
		start := time.Now()
		_, err := c.p.Get(m.Ctx, c.url)
		took := time.Since(start)
		t.Logf("%s (%s): %v after %s", c.p.Name, c.why, err, took.Round(time.Microsecond))
		var errno syscall.Errno
		switch {
		case err == nil:
			t.Errorf("%s got through: %s", c.p.Name, c.why)
		case !errors.As(err, &errno) || (errno != syscall.EACCES && errno != syscall.ECONNREFUSED && errno != syscall.ECONNRESET):
			t.Errorf("%s: want refused or reset, got %v", c.p.Name, err)
		case took > 100*time.Millisecond:
			t.Errorf("%s: failed after %s, want at once (no SYN retries, no timeout)", c.p.Name, took)
		}
	}
	for _, c := range allowed {
		if got := c.p.Spread(t, c.url, 20); got["guarded-0"] != 20 {
			t.Errorf("%s (%s): %v", c.p.Name, c.why, got)
		}
	}

	// The denials are counted per policy.
	code, body, err := m.Box.Admin(m.Ctx, "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	for _, policy := range []string{srvNS + "/deny-blocked-namespace", "(no ALLOW policy matched)"} {
		want := fmt.Sprintf(`kmesh_authz_connections_total{outcome="denied",policy=%q}`, policy)
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// (6) A namespace labelled istio.io/dataplane-mode=kmesh after its pods are
// running: the daemon's watcher enrolls them within 2 s, with no restart
// (same network namespace, same server), and releases them when the label
// goes.
func (m *mesh) testNamespaceLabel(t *testing.T) {
	const ns = "late"
	m.namespace(t, ns, false)
	url := m.service(t, ns, "echo", "10.96.6.10", "echo")
	server := m.addPod(t, ns, "echo-0", podOpts{app: "echo"})
	client := m.addPod(t, ns, "client", podOpts{})
	pods := []*pod{server, client}

	// Not enrolled: the pods have no route to service addresses, and no
	// hook rewrites them.
	for _, p := range pods {
		if m.Enrolled(t, p) {
			t.Fatalf("%s is enrolled before its namespace is labelled", p.Name)
		}
	}
	if _, err := client.Get(m.Ctx, url); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("a pod outside the mesh reached %s: %v", url, err)
	}
	// The service itself is known (istiod sends every service): only
	// enrollment is missing.
	cluster.Eventually(t, 10*time.Second, "the service in the daemon", func() (bool, string) {
		for _, s := range m.Config(t).Services {
			if s.Key == ns+"/echo."+ns+".svc.cluster.local" && len(s.Backing) == 1 {
				return true, ""
			}
		}
		return false, "not yet"
	})

	label := func(v any) time.Time {
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{enrollment.LabelDataplaneMode: v}}})
		if _, err := m.K8s.CoreV1().Namespaces().Patch(m.Ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatalf("label namespace %s: %v", ns, err)
		}
		return time.Now()
	}
	all := func(want bool) func() (bool, string) {
		return func() (bool, string) {
			for _, p := range pods {
				if m.Enrolled(t, p) != want {
					return false, p.Name + " not yet"
				}
			}
			_, err := client.Get(m.Ctx, url)
			if want {
				return err == nil, fmt.Sprint("request: ", err)
			}
			return err != nil, "request still goes through"
		}
	}

	label(enrollment.ModeKmesh)
	took := cluster.Eventually(t, 2*time.Second, "enrollment of the running pods after the label", all(true))
	t.Logf("both running pods enrolled and %s reachable %s after the namespace was labelled", url, took.Round(time.Millisecond))
	if got := client.Spread(t, url, 10); got["echo-0"] != 10 {
		t.Errorf("after enrollment: %v", got)
	}
	cluster.Eventually(t, 5*time.Second, "annotation "+enrollment.AnnotationRedirection, func() (bool, string) {
		for _, p := range pods {
			o, err := m.K8s.CoreV1().Pods(ns).Get(m.Ctx, p.Name, metav1.GetOptions{})
			if err != nil || o.Annotations[enrollment.AnnotationRedirection] != "enabled" {
				return false, fmt.Sprint(p.Name, " ", err)
			}
		}
		return true, ""
	})

	label(nil)
	took = cluster.Eventually(t, 2*time.Second, "release of the pods after the label went", all(false))
	t.Logf("both pods released %s after the label was removed", took.Round(time.Millisecond))
}

// (7) Zero failed requests under fortio load (a new connection per request)
// while kmesh-daemon is killed with SIGKILL and started again, and while
// istiod restarts: the data path is pinned in the kernel and does not wait
// for either.
func (m *mesh) testRestartsUnderLoad(t *testing.T) {
	const ns = "s7"
	m.namespace(t, ns, true)
	url := m.service(t, ns, "echo", "10.96.7.10", "echo")
	for i := range 3 {
		m.addPod(t, ns, fmt.Sprintf("echo-%d", i), podOpts{app: "echo"})
	}
	client := m.addPod(t, ns, "client", podOpts{})
	client.WaitServedBy(t, url, 15*time.Second, "echo-0", "echo-1", "echo-2")

	t.Run("DaemonSIGKILL", func(t *testing.T) {
		res := m.underLoad(t, client, url, 10*time.Second, func() {
			pid := m.Daemon.Pid()
			if err := m.Daemon.Kill(); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			m.StartDaemon(t)
			t.Logf("daemon (pid %d) killed with SIGKILL; the new one (pid %d) was ready %s later",
				pid, m.Daemon.Pid(), time.Since(start).Round(time.Millisecond))
		})
		if !strings.Contains(nodebox.Tail(m.Daemon.LogPath, 1<<20), "data path reused from pins") {
			t.Error("the restarted daemon did not reuse the pinned data path")
		}
		t.Logf("fortio: %s", res)
	})

	t.Run("IstiodRestart", func(t *testing.T) {
		before := m.Status(t)["xdsConnects"]
		res := m.underLoad(t, client, url, 10*time.Second, func() {
			start := time.Now()
			// istiod must not start inside the mesh's cgroup, where this
			// process is: step out while it starts.
			if err := m.Box.LeaveCgroup(); err != nil {
				t.Fatal(err)
			}
			err := m.CP.RestartIstiod(m.Ctx)
			if jerr := m.Box.JoinCgroup(); jerr != nil {
				t.Fatal(jerr)
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("istiod restarted and ready in %s", time.Since(start).Round(time.Millisecond))
			took := cluster.Eventually(t, 30*time.Second, "the daemon back on istiod's new stream", func() (bool, string) {
				st := m.Status(t)
				return st["connected"] == true && fmt.Sprint(st["xdsConnects"]) != fmt.Sprint(before), fmt.Sprint(st)
			})
			t.Logf("the daemon reconnected %s after istiod was ready", took.Round(time.Millisecond))
		})
		t.Logf("fortio: %s", res)
	})

	// The stream after both restarts still carries changes.
	m.addPod(t, ns, "echo-after", podOpts{app: "echo"})
	took := client.WaitServedBy(t, url, 15*time.Second, "echo-after")
	t.Logf("a pod created after the restarts got requests %s after its status", took.Round(time.Millisecond))
}

// fortioResult is what the scenario reads of fortio's JSON.
type fortioResult struct {
	ActualQPS         float64
	ActualDuration    int64
	RetCodes          map[string]int64
	DurationHistogram struct {
		Count int64
	}
	ErrorsDurationHistogram struct {
		Count int64
	}
	SocketCount int64
}

func (r fortioResult) String() string {
	return fmt.Sprintf("%d requests at %.0f/s over %d connections, return codes %v",
		r.DurationHistogram.Count, r.ActualQPS, r.SocketCount, r.RetCodes)
}

// underLoad runs fortio from the client pod (inside the mesh's cgroup) for
// d, a new connection per request, calls disrupt after the first quarter,
// and fails the test unless every request got a 200.
func (m *mesh) underLoad(t *testing.T, client *pod, url string, d time.Duration, disrupt func()) fortioResult {
	t.Helper()
	out := filepath.Join(t.TempDir(), "fortio.json")
	f, err := m.Box.Start(nodebox.ProcSpec{
		Name: "fortio-" + strings.ReplaceAll(t.Name(), "/", "-"),
		Argv: []string{m.Bins.Fortio, "load", "-qps", "200", "-c", "4", "-keepalive=false", "-t", d.String(),
			"-timeout", "2s", "-json", out, url},
		Pod:      client.Pod,
		InCgroup: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(d / 4)
	disrupt()
	select {
	case <-f.Done():
	case <-time.After(d + time.Minute):
		t.Fatal("fortio did not finish")
	}
	if err := f.Wait(); err != nil {
		t.Fatalf("fortio: %v\n%s", err, nodebox.Tail(f.LogPath, 2000))
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r fortioResult
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("fortio JSON: %v", err)
	}
	ok := r.RetCodes[strconv.Itoa(200)]
	if r.DurationHistogram.Count == 0 || ok != r.DurationHistogram.Count || r.ErrorsDurationHistogram.Count != 0 {
		codes := cluster.Keys(r.RetCodes)
		sort.Strings(codes)
		t.Errorf("failed requests under load: %s (codes %v); fortio log:\n%s", r, codes, nodebox.Tail(f.LogPath, 2000))
	}
	return r
}
