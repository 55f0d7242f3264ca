package main

import (
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/internal/enrollment"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/internal/fakeapi"
)

// fakeAPIServer serves api on loopback inside the node namespace, where
// kmesh-cni runs, and returns a kubeconfig for it.
func (e *env) fakeAPIServer(api *fakeapi.API) string {
	e.t.Helper()
	var l net.Listener
	if err := e.inNode(func() error {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(api)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	e.t.Cleanup(srv.Close)
	return e.kubeconfig("http://" + l.Addr().String())
}

func (e *env) kubeconfig(server string) string {
	e.t.Helper()
	path := filepath.Join(e.dir, fmt.Sprintf("kubeconfig-%d", len(server)))
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q}}]
users: [{name: kmesh-cni, user: {token: test-token}}]
contexts: [{name: c, context: {cluster: c, user: kmesh-cni}}]
current-context: c
`, server)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// inNamespace points a pod's CNI_ARGS at a Kubernetes namespace.
func (p *pod) inNamespace(ns string) *pod {
	for i, a := range p.rt.Args {
		if a[0] == "K8S_POD_NAMESPACE" {
			p.rt.Args[i][1] = ns
		}
	}
	return p
}

func (p *pod) uid() string {
	for _, a := range p.rt.Args {
		if a[0] == "K8S_POD_UID" {
			return a[1]
		}
	}
	return ""
}

// The decision as the binary makes it from the Kubernetes API, and the
// annotation on enrolled pods.
func TestKernelKubernetesDecision(t *testing.T) {
	e := newEnv(t)
	api := fakeapi.New()
	kmesh := map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh}
	api.AddNamespace("mesh", kmesh)
	api.AddNamespace("plain", nil)
	// Kmesh's documentation and tests spell the value "Kmesh".
	api.AddNamespace("kmesh-docs", map[string]string{enrollment.LabelDataplaneMode: "Kmesh"})
	list := e.conflist(netOpts{kubeconfig: e.fakeAPIServer(api), defaultEnroll: true})

	cases := []struct {
		name, ns string
		labels   map[string]string
		mod      func(*corev1.Pod)
		enroll   bool
		reason   string
	}{
		{"labelled-namespace", "mesh", nil, nil, true, "namespace label"},
		{"labelled-pod", "plain", kmesh, nil, true, "pod label"},
		{"kmesh-spelling-namespace", "kmesh-docs", nil, nil, true, "namespace label istio.io/dataplane-mode=Kmesh"},
		{"kmesh-spelling-pod", "plain", map[string]string{enrollment.LabelDataplaneMode: "Kmesh"}, nil, true, "pod label istio.io/dataplane-mode=Kmesh"},
		{"plain", "plain", nil, nil, false, "no istio.io/dataplane-mode=kmesh label"},
		{"opt-out", "mesh", map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeNone}, nil, false, "opted out"},
		{"sidecar", "mesh", nil, func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "istio-proxy"})
		}, false, "sidecar"},
		{"sidecar-annotation", "mesh", nil, func(p *corev1.Pod) {
			p.Annotations = map[string]string{"sidecar.istio.io/status": "{}"}
		}, false, "sidecar"},
		{"host-network", "mesh", nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true }, false, "host-network"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := e.newPod(tc.name).inNamespace(tc.ns)
			mods := []func(*corev1.Pod){}
			if tc.mod != nil {
				mods = append(mods, tc.mod)
			}
			api.AddPod(tc.ns, tc.name, p.uid(), tc.labels, nil, mods...)
			e.mustAdd(list, p)
			d := e.daemon.Pod(p.rt.ContainerID)
			if d == nil || d.GetEnrolled() != tc.enroll || !strings.Contains(d.GetReason(), tc.reason) {
				t.Fatalf("daemon's record: %v, want enrolled=%v, reason saying %q", d, tc.enroll, tc.reason)
			}
			if got := e.enrolled(e.cookie(p)); got != tc.enroll {
				t.Fatalf("in the manage map: %v, want %v", got, tc.enroll)
			}
			ann, has := api.Annotations(tc.ns, tc.name)[enrollment.AnnotationRedirection]
			if has != tc.enroll || tc.enroll && ann != "enabled" {
				t.Fatalf("annotation %s=%q (set: %v), want set: %v", enrollment.AnnotationRedirection, ann, has, tc.enroll)
			}
			if tc.enroll {
				e.requireEnrolled(p)
			}
			if err := e.del(list, p); err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("recreated pod", func(t *testing.T) {
		p := e.newPod("recreated").inNamespace("mesh")
		api.AddPod("mesh", "recreated", "another-uid", nil, nil)
		e.mustAdd(list, p)
		if d := e.daemon.Pod(p.rt.ContainerID); d == nil || d.GetEnrolled() || !strings.Contains(d.GetReason(), "UID") {
			t.Fatalf("daemon's record: %v", d)
		}
		if err := e.del(list, p); err != nil {
			t.Fatal(err)
		}
	})
	e.requireClean()

	// The API does not answer: open lets the pod start outside the mesh
	// (the daemon decides later); closed fails with code 11.
	var closedPort string
	if err := e.inNode(func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		closedPort = l.Addr().String()
		return l.Close()
	}); err != nil {
		t.Fatal(err)
	}
	down := e.kubeconfig("http://" + closedPort)
	t.Run("API down, open", func(t *testing.T) {
		p := e.newPod("down-open").inNamespace("mesh")
		e.mustAdd(e.conflist(netOpts{kubeconfig: down, policy: conf.FailOpen}), p)
		if d := e.daemon.Pod(p.rt.ContainerID); d == nil || d.GetEnrolled() || !strings.Contains(d.GetReason(), "Kubernetes API unreachable") {
			t.Fatalf("daemon's record: %v", d)
		}
		if err := e.del(list, p); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("API down, closed", func(t *testing.T) {
		p := e.newPod("down-closed").inNamespace("mesh")
		err := e.add(e.conflist(netOpts{kubeconfig: down, policy: conf.FailClosed}), p)
		if ce := cniError(t, err); ce.Code != types.ErrTryAgainLater {
			t.Fatalf("code %d: %v", ce.Code, err)
		}
		mustContain(t, "error", err.Error(), "Kubernetes API did not answer", "connection refused")
		e.requireClean()
		if err := e.del(list, p); err != nil {
			t.Fatal(err)
		}
	})
	e.requireClean()
}

// An enrolled pod is marked while ADD attaches tc and tells the daemon;
// when the attach fails, ADD takes the mark back.
func TestKernelFailedADDTakesTheAnnotationBack(t *testing.T) {
	e := newEnv(t)
	api := fakeapi.New()
	api.AddNamespace("mesh", map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh})
	list := e.conflist(netOpts{kubeconfig: e.fakeAPIServer(api)})
	if err := os.Remove(filepath.Join(e.pins, "progs", loader.ProgToPod)); err != nil {
		t.Fatal(err)
	}
	p := e.newPod("p").inNamespace("mesh")
	api.AddPod("mesh", "p", p.uid(), nil, map[string]string{"keep": "me"})
	err := e.add(list, p)
	if ce := cniError(t, err); ce.Code != conf.ErrAttachTC {
		t.Fatalf("code %d: %v", ce.Code, err)
	}
	e.requireClean()
	ann := api.Annotations("mesh", "p")
	if _, has := ann[enrollment.AnnotationRedirection]; has || ann["keep"] != "me" {
		t.Fatalf("annotations after the failed ADD: %v", ann)
	}
	if patches := api.Patches(); len(patches) != 2 {
		t.Fatalf("patches %q, want the mark and its removal", patches)
	}
}

// The mark kmesh-cni-kube put on a pod decided from the API is taken back
// whenever the pod does not end up enrolled: an ADD that fails before the
// attach (closed, no data path), and one that succeeds without enrolling
// (open, no data path, the daemon not enrolling it either).
func TestKernelUnenrolledPodIsNotLeftMarked(t *testing.T) {
	e := newEnv(t)
	e.pins += "-not-loaded"
	api := fakeapi.New()
	api.AddNamespace("mesh", map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh})
	kc := e.fakeAPIServer(api)

	p := e.newPod("closed").inNamespace("mesh")
	api.AddPod("mesh", "closed", p.uid(), nil, nil)
	err := e.add(e.conflist(netOpts{kubeconfig: kc, policy: conf.FailClosed}), p)
	if ce := cniError(t, err); ce.Code != types.ErrTryAgainLater {
		t.Fatalf("closed: %v", err)
	}
	if _, has := api.Annotations("mesh", "closed")[enrollment.AnnotationRedirection]; has {
		t.Fatal("the failed ADD left the pod marked")
	}

	q := e.newPod("open").inNamespace("mesh")
	api.AddPod("mesh", "open", q.uid(), nil, nil)
	e.mustAdd(e.conflist(netOpts{kubeconfig: kc}), q)
	if _, has := api.Annotations("mesh", "open")[enrollment.AnnotationRedirection]; has {
		t.Fatal("a pod that is not enrolled is marked")
	}
	if patches := api.Patches(); len(patches) != 4 {
		t.Fatalf("patches %q, want two marks and their removals", patches)
	}
}

// A daemon whose watch has seen the pod decides for ADD: the plugin does
// not read the API server at all (the daemon marks the pod once it is
// registered). One that has not falls back to the API, as before.
func TestKernelTheDaemonDecidesWhenItKnows(t *testing.T) {
	e := newEnv(t)
	api := fakeapi.New()
	api.AddNamespace("plain", nil)
	kcPath := e.fakeAPIServer(api)
	list := e.conflist(netOpts{kubeconfig: kcPath})

	p := e.newPod("known").inNamespace("plain")
	api.AddPod("plain", "known", p.uid(), nil, nil) // unlabelled in the API...
	e.daemon.Know("plain", "known", true, "pod label istio.io/dataplane-mode=kmesh")
	e.mustAdd(list, p) // ...but the daemon's view says enrolled
	if n := api.Requests(); n != 0 {
		t.Fatalf("the plugin asked the API server %d times", n)
	}
	e.requireEnrolled(p)
	if d := e.daemon.Pod(p.rt.ContainerID); d == nil || !d.GetEnrolled() || !strings.Contains(d.GetReason(), "daemon's watch") {
		t.Fatalf("daemon's record: %v", d)
	}

	q := e.newPod("unknown").inNamespace("plain")
	api.AddPod("plain", "unknown", q.uid(), nil, nil)
	e.mustAdd(list, q)
	if api.Requests() == 0 {
		t.Fatal("a pod the daemon does not know was decided without the API")
	}
	if e.enrolled(e.cookie(q)) {
		t.Fatal("an unlabelled pod was enrolled")
	}
	if e.daemon.Asked() != 2 {
		t.Fatalf("the daemon was asked %d times, want once per ADD", e.daemon.Asked())
	}

	// A kubeconfig that cannot be read fails ADD even when the daemon
	// knows the pod: it is the plugin's configuration.
	garbage := filepath.Join(e.dir, "garbage-kubeconfig")
	if err := os.WriteFile(garbage, []byte("{{{"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := e.newPod("broken").inNamespace("plain")
	e.daemon.Know("plain", "broken", true, "pod label")
	err := e.add(e.conflist(netOpts{kubeconfig: garbage}), r)
	if ce := cniError(t, err); ce.Code != types.ErrInvalidNetworkConfig {
		t.Fatalf("garbage kubeconfig: %v", err)
	}
	mustContain(t, "error", err.Error(), "parse kubeconfig", garbage, "kubeconfig field")
	if e.enrolled(e.cookie(r)) {
		t.Fatal("the refused pod was enrolled")
	}

	// kmesh-cni-kube checks the kubeconfig once per version of the file:
	// a good one that is rewritten broken in place fails the next ADD.
	good := filepath.Join(e.dir, "good-kubeconfig")
	kc, err := os.ReadFile(kcPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(good, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	e.daemon.Know("plain", "rewritten", true, "pod label")
	s := e.newPod("rewritten").inNamespace("plain")
	e.mustAdd(e.conflist(netOpts{kubeconfig: good}), s)
	if stamps, _ := filepath.Glob(filepath.Join(e.state, "kubeconfig-checked-*")); len(stamps) != 2 {
		t.Fatalf("the state directory remembers the checked kubeconfigs as %v, want two files", stamps)
	}
	exec := strings.Replace(string(kc), "{token: test-token}", "{exec: {command: aws}}", 1)
	if err := os.WriteFile(good, []byte(exec), 0o600); err != nil {
		t.Fatal(err)
	}
	e.daemon.Know("plain", "after-rewrite", true, "pod label")
	err = e.add(e.conflist(netOpts{kubeconfig: good}), e.newPod("after-rewrite").inNamespace("plain"))
	if ce := cniError(t, err); ce.Code != types.ErrInvalidNetworkConfig {
		t.Fatalf("kubeconfig rewritten with an exec credential: %v", err)
	}
	mustContain(t, "error", err.Error(), "exec credential plugins are not supported")
}
