// Package cni_test runs kmesh-cni's enrollment decision against a real
// kube-apiserver (etcd + kube-apiserver + istiod from package
// controlplane, in a loopback-only network namespace): first through the
// plugin's Kubernetes client with the rights the install manifests grant,
// then as the real binary doing ADD for sandboxes wired into the control
// plane's namespace, on a real data path.
package cni_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/cnistate"
	"github.com/kmesh-go/kmesh/internal/enrollment"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/kube"
	"github.com/kmesh-go/kmesh/tests/e2e/controlplane"
)

// podCase is one pod the API holds and what kmesh-cni must decide for it.
type podCase struct {
	ns, name string
	labels   map[string]string
	mod      func(*corev1.Pod)
	enroll   bool
	reason   string
}

var kmeshLabel = map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh}

var cases = []podCase{
	{"mesh", "in-labelled-namespace", nil, nil, true, "namespace label"},
	{"plain", "labelled-pod", kmeshLabel, nil, true, "pod label"},
	{"plain", "unlabelled", nil, nil, false, "no istio.io/dataplane-mode=kmesh"},
	{"mesh", "opted-out", map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeNone}, nil, false, "opted out"},
	{"mesh", "host-network", nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true }, false, "host-network"},
	{"mesh", "sidecar", nil, func(p *corev1.Pod) {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "istio-proxy", Image: "istio/proxyv2:never-pulled"})
	}, false, "sidecar"},
	{"mesh", "sidecar-annotated", nil, func(p *corev1.Pod) {
		p.Annotations = map[string]string{"sidecar.istio.io/status": `{"containers":["istio-proxy"]}`}
	}, false, "sidecar"},
}

func TestCNIDecisionsAgainstTheAPIServer(t *testing.T) {
	if os.Getenv("KMESH_E2E") != "1" {
		t.Skip("end-to-end test: set KMESH_E2E=1 (needs root, etcd and tests/e2e/tools/build.sh)")
	}
	sandbox, dir := controlplane.Sandbox(t, "kmesh-e2e-cni")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Options{Dir: dir, NetNS: sandbox})
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("end of kube-apiserver.log:\n%s", cp.LogTail("kube-apiserver", 3000))
		}
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})

	k8s := cp.Clientset
	for ns, labels := range map[string]map[string]string{"mesh": kmeshLabel, "plain": nil} {
		if _, err := k8s.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	uids := map[string]string{}
	for _, c := range cases {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: c.name, Labels: c.labels},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "kmesh-e2e/app:never-pulled"}}},
		}
		if c.mod != nil {
			c.mod(p)
		}
		created, err := k8s.CoreV1().Pods(c.ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod %s/%s: %v", c.ns, c.name, err)
		}
		uids[c.ns+"/"+c.name] = string(created.UID)
	}

	// The plugin's client, authenticated as a service account bound to the
	// rights the install manifests give kmesh-cni: get pods and
	// namespaces, patch pods.
	token := serviceAccountWithRole(t, ctx, cp, "kmesh-cni", []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get"}},
	})
	kc := client(t, cp, token)
	for _, c := range cases {
		d, err := kc.Decide(ctx, conf.Pod{Namespace: c.ns, Name: c.name, UID: uids[c.ns+"/"+c.name]})
		if err != nil || d.Enroll != c.enroll || !strings.Contains(d.Reason, c.reason) {
			t.Errorf("%s/%s: %+v %v, want enroll=%v with a reason saying %q", c.ns, c.name, d, err, c.enroll, c.reason)
		}
	}
	if _, err := kc.Decide(ctx, conf.Pod{Namespace: "mesh", Name: "in-labelled-namespace", UID: "not-its-uid"}); err == nil || !strings.Contains(err.Error(), "UID") {
		t.Errorf("stale UID: %v", err)
	}
	if err := kc.AnnotatePod(ctx, "plain", "labelled-pod", enrollment.AnnotationRedirection, "enabled"); err != nil {
		t.Errorf("annotate with the plugin's rights: %v", err)
	}

	// Without "get namespaces" a labelled pod is still enrolled; a pod
	// relying on its namespace is not, and the reason says what to grant.
	// Checked only when the apiserver enforces RBAC (controlplane runs it
	// with --authorization-mode=AlwaysAllow today).
	narrow := client(t, cp, serviceAccountWithRole(t, ctx, cp, "kmesh-cni-narrow", []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
	}))
	if _, err := narrow.Namespace(ctx, "mesh"); err == nil {
		t.Log("the apiserver does not enforce RBAC: the narrow-rights checks are skipped")
	} else {
		if d, err := narrow.Decide(ctx, conf.Pod{Namespace: "plain", Name: "labelled-pod"}); err != nil || !d.Enroll {
			t.Errorf("labelled pod without namespace rights: %+v %v", d, err)
		}
		if d, err := narrow.Decide(ctx, conf.Pod{Namespace: "mesh", Name: "in-labelled-namespace"}); err != nil || d.Enroll || !strings.Contains(d.Reason, "grant") {
			t.Errorf("namespace-labelled pod without namespace rights: %+v %v", d, err)
		}
	}

	t.Run("binary", func(t *testing.T) { testBinary(t, ctx, cp, sandbox, uids) })
}

// testBinary runs the real kmesh-cni ADD and DEL inside the control
// plane's namespace (where 127.0.0.1:6443 is the apiserver, as on a node)
// with the kubeconfig the control plane wrote, for one sandbox per case:
// a namespace the test made, wired by a veth, on a data path loaded into
// a cgroup of its own. The fake daemon is absent: failurePolicy open.
func testBinary(t *testing.T, ctx context.Context, cp *controlplane.ControlPlane, sandbox string, uids map[string]string) {
	bin := buildPlugin(t)
	cg := testbed.NewCgroup(t)
	dp, pins := testbed.Datapath(t, cg, loader.Sizes{})
	manage := maps.NewManage(dp)
	stateDir := t.TempDir()
	nodeNS := filepath.Join("/var/run/netns", sandbox)

	for i, c := range cases {
		if c.mod != nil && strings.Contains(c.name, "host-network") {
			continue // the runtime never runs CNI for host-network pods
		}
		podNS := testbed.NSPath(testbed.NewNamespace(t))
		hostVeth := fmt.Sprintf("kmcni%d", i)
		wireVeth(t, nodeNS, podNS, hostVeth)
		containerID := fmt.Sprintf("e2e-%d", i)
		prev := fmt.Sprintf(`{"cniVersion":"1.0.0","interfaces":[{"name":%q},{"name":"eth0","sandbox":%q}],"ips":[{"address":"10.244.0.%d/24","interface":1}]}`,
			hostVeth, podNS, 10+i)
		stdin := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"kmesh-cni","kubeconfig":%q,"bpfDir":%q,"stateDir":%q,"daemonSocket":%q,"prevResult":%s}`,
			cp.Kubeconfig, pins, stateDir, filepath.Join(stateDir, "no-daemon.sock"), prev)
		args := fmt.Sprintf("IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", c.ns, c.name, uids[c.ns+"/"+c.name])

		start := time.Now()
		out, err := runPlugin(nodeNS, bin, "ADD", containerID, podNS, args, stdin)
		if err != nil {
			t.Fatalf("%s/%s: ADD: %v\n%s", c.ns, c.name, err, out)
		}
		// For the record, not a check: ADD with the API server's TLS
		// handshake and reads (and the annotation when enrolled).
		t.Logf("%s/%s: ADD took %v (enrolled %v)", c.ns, c.name, time.Since(start).Round(10*time.Microsecond), c.enroll)
		var res struct {
			IPs []struct{ Address string } `json:"ips"`
		}
		if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) != 1 || res.IPs[0].Address != fmt.Sprintf("10.244.0.%d/24", 10+i) {
			t.Fatalf("%s/%s: ADD did not pass prevResult on: %s", c.ns, c.name, out)
		}
		cookie, err := podns.Cookie(podNS)
		if err != nil {
			t.Fatal(err)
		}
		_, inMap, err := manage.Get(cookie)
		if err != nil || inMap != c.enroll {
			t.Errorf("%s/%s: in the manage map: %v (%v), want %v", c.ns, c.name, inMap, err, c.enroll)
		}
		if _, attached, _ := loader.PodTC(pins, loader.PodTCKey(containerID, hostVeth)); attached != c.enroll {
			t.Errorf("%s/%s: tc attached: %v, want %v", c.ns, c.name, attached, c.enroll)
		}
		pod, err := cp.Clientset.CoreV1().Pods(c.ns).Get(ctx, c.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := pod.Annotations[enrollment.AnnotationRedirection] == "enabled"; got != c.enroll {
			t.Errorf("%s/%s: annotation %s=enabled: %v, want %v", c.ns, c.name, enrollment.AnnotationRedirection, got, c.enroll)
		}
		recs, err := cnistate.Read(stateDir)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range recs {
			if r.ContainerID == containerID {
				found = true
				if !strings.Contains(r.Reason, c.reason) || r.Signaled {
					t.Errorf("%s/%s: record %+v, want a reason saying %q, not signalled (no daemon)", c.ns, c.name, r, c.reason)
				}
			}
		}
		if !found {
			t.Errorf("%s/%s: no state record", c.ns, c.name)
		}

		if out, err := runPlugin(nodeNS, bin, "DEL", containerID, podNS, args, stdin); err != nil {
			t.Fatalf("%s/%s: DEL: %v\n%s", c.ns, c.name, err, out)
		}
		if _, inMap, _ := manage.Get(cookie); inMap {
			t.Errorf("%s/%s: still enrolled after DEL", c.ns, c.name)
		}
	}
	if all, err := manage.List(); err != nil || len(all) != 0 {
		t.Errorf("manage map after every DEL: %v %v", all, err)
	}
	if keys, _ := loader.PodTCKeys(pins); len(keys) != 0 {
		t.Errorf("tc attachments after every DEL: %v", keys)
	}
}

// serviceAccountWithRole makes a ServiceAccount bound to a ClusterRole
// with rules and returns a token for it.
func serviceAccountWithRole(t *testing.T, ctx context.Context, cp *controlplane.ControlPlane, name string, rules []rbacv1.PolicyRule) string {
	t.Helper()
	const ns = "kube-system"
	token, err := cp.ServiceAccountToken(ctx, ns, name, "https://kubernetes.default.svc.cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	rbac := cp.Clientset.RbacV1()
	if _, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return token
}

// client is the plugin's Kubernetes client with token, dialling into the
// control plane's namespace; its kubeconfig is the one the control plane
// wrote, read by the plugin's own loader.
func client(t *testing.T, cp *controlplane.ControlPlane, token string) *kube.Client {
	t.Helper()
	cfg, err := kube.LoadConfig(cp.Kubeconfig, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Only the token authenticates: no credentials from the kubeconfig.
	cfg.CertData, cfg.KeyData = nil, nil
	cfg.Token = token
	cfg.Dial = cp.DialContext
	kc, err := kube.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

func buildPlugin(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	dir := t.TempDir()
	// kmesh-cni and, beside it, its API client kmesh-cni-kube.
	for _, b := range []string{"kmesh-cni-kube", "kmesh-cni"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b), "./plugins/"+b)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b, err, out)
		}
	}
	return filepath.Join(dir, "kmesh-cni")
}

// wireVeth links the node namespace and a pod namespace with a veth pair:
// host side name in the node, eth0 in the pod, both up. Deleting the pod
// namespace removes the pair.
func wireVeth(t *testing.T, nodeNS, podNS, name string) {
	t.Helper()
	pod, err := netns.GetFromPath(podNS)
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()
	err = podns.Do(nodeNS, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(pod)}); err != nil {
			return err
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		t.Fatalf("veth %s: %v", name, err)
	}
}

// runPlugin executes the plugin inside the node namespace.
func runPlugin(nodeNS, bin, command, containerID, podNS, args, stdin string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	var runErr error
	err := podns.Do(nodeNS, func() error {
		cmd := exec.Command(bin)
		cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + containerID, "CNI_NETNS=" + podNS,
			"CNI_IFNAME=eth0", "CNI_PATH=" + filepath.Dir(bin), "CNI_ARGS=" + args}
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		runErr = cmd.Run()
		return nil
	})
	if err != nil {
		return nil, err
	}
	if runErr != nil {
		return append(stdout.Bytes(), stderr.Bytes()...), runErr
	}
	return stdout.Bytes(), nil
}
