package kube

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/daemon/cniserver"
	"github.com/kmesh-go/kmesh/internal/enrollment"
)

// fakeKernel stands in for the manage map.
type fakeKernel struct {
	mu       sync.Mutex
	enrolled map[uint64]bool
}

func (k *fakeKernel) Enroll(atts []*cniv1.Pod) (uint64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.enrolled[atts[0].NetnsCookie] = true
	return atts[0].NetnsCookie, nil
}

func (k *fakeKernel) Release(atts []*cniv1.Pod) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.enrolled, atts[0].NetnsCookie)
	return nil
}

func (k *fakeKernel) Enrolled(c uint64) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.enrolled[c], nil
}

func (k *fakeKernel) List() (map[uint64]bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[uint64]bool{}
	for c := range k.enrolled {
		out[c] = true
	}
	return out, nil
}

func (k *fakeKernel) is(c uint64) bool { ok, _ := k.Enrolled(c); return ok }

// A label added to a running pod's namespace enrolls it within 2 s, and
// removing it releases it; the annotation follows.
func TestLabelChangesEnrollRunningPods(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "cart", Namespace: "shop", UID: "u1"},
		Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "app"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	other := pod.DeepCopy()
	other.Name, other.UID, other.Spec.NodeName = "elsewhere", "u2", "n2"
	client := fake.NewClientset(ns, pod, other)
	kernel := &fakeKernel{enrolled: map[uint64]bool{}}
	reg, err := cniserver.NewRegistry("", kernel)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Add(&cniv1.Pod{Name: "cart", Namespace: "shop", Uid: "u1", ContainerId: "c1", NetnsCookie: 42}); err != nil {
		t.Fatal(err)
	}
	w := NewWatcherFor(client, "n1", reg, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	eventually := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			if cond() {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("not within 2s: %s", what)
	}
	annotation := func() string {
		p, err := client.CoreV1().Pods("shop").Get(ctx, "cart", metav1.GetOptions{})
		if err != nil {
			return "error"
		}
		return p.Annotations[enrollment.AnnotationRedirection]
	}
	time.Sleep(200 * time.Millisecond)
	if kernel.is(42) {
		t.Fatal("enrolled without a label")
	}

	ns.Labels = map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh}
	if _, err := client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("enrolled after the namespace label", func() bool { return kernel.is(42) && annotation() == "enabled" })
	if p := reg.ByUID("u1")[0]; !p.Enrolled || p.Reason == "" {
		t.Fatalf("registry: %+v", p)
	}

	// The pod opts out while its namespace stays labelled.
	cur, _ := client.CoreV1().Pods("shop").Get(ctx, "cart", metav1.GetOptions{})
	cur.Labels = map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeNone}
	if _, err := client.CoreV1().Pods("shop").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("released after the pod opted out", func() bool { return !kernel.is(42) && annotation() == "" })
}

// The plugin's question, answered from the watch: known once synced, for
// the pod with that uid in a namespace the watch has seen.
func TestDecideFromTheWatch(t *testing.T) {
	kmesh := map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh}
	pod := func(ns, name, uid string, labels map[string]string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID(uid), Labels: labels},
			Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "app"}}},
			Status:     corev1.PodStatus{Phase: phase},
		}
	}
	client := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mesh", Labels: kmesh}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
		// Kmesh's documentation spells the value "Kmesh".
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kmesh-docs", Labels: map[string]string{enrollment.LabelDataplaneMode: "Kmesh"}}},
		pod("mesh", "a", "ua", nil, corev1.PodPending),
		pod("kmesh-docs", "k", "uk", nil, corev1.PodPending),
		pod("plain", "l", "ul", map[string]string{enrollment.LabelDataplaneMode: "Kmesh"}, corev1.PodPending),
		pod("plain", "b", "ub", kmesh, corev1.PodPending),
		pod("plain", "c", "uc", nil, corev1.PodPending),
		pod("mesh", "done", "ud", nil, corev1.PodSucceeded),
		pod("ghost", "g", "ug", nil, corev1.PodPending),
	)
	reg, err := cniserver.NewRegistry("", &fakeKernel{enrolled: map[uint64]bool{}})
	if err != nil {
		t.Fatal(err)
	}
	w := NewWatcherFor(client, "n1", reg, nil)
	if _, _, known := w.Decide("mesh", "a", "ua"); known {
		t.Fatal("known before the watch has synced")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(2 * time.Second)
	for _, _, known := w.Decide("mesh", "a", "ua"); !known; _, _, known = w.Decide("mesh", "a", "ua") {
		if time.Now().After(deadline) {
			t.Fatal("not known within 2s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, tc := range []struct {
		ns, name, uid string
		known, enroll bool
		reason        string
	}{
		{"mesh", "a", "ua", true, true, "namespace label"},
		{"mesh", "a", "", true, true, "namespace label"},
		{"plain", "b", "ub", true, true, "pod label"},
		{"kmesh-docs", "k", "uk", true, true, "namespace label istio.io/dataplane-mode=Kmesh"},
		{"plain", "l", "ul", true, true, "pod label istio.io/dataplane-mode=Kmesh"},
		{"plain", "c", "uc", true, false, "no istio.io/dataplane-mode=kmesh label"},
		{"mesh", "done", "ud", true, false, "finished"},
		{"mesh", "a", "another-uid", false, false, ""},
		{"mesh", "nobody", "", false, false, ""},
		{"ghost", "g", "ug", false, false, ""},
	} {
		enroll, reason, known := w.Decide(tc.ns, tc.name, tc.uid)
		if known != tc.known || enroll != tc.enroll || !strings.Contains(reason, tc.reason) {
			t.Errorf("%s/%s (uid %q): enroll %v, %q, known %v; want %v, %q, %v", tc.ns, tc.name, tc.uid, enroll, reason, known, tc.enroll, tc.reason, tc.known)
		}
	}
}

// frozenWatcher runs a watcher over client whose watches deliver nothing
// after their first list, synced; it stops when the test ends.
func frozenWatcher(t *testing.T, client *fake.Clientset, kernel *fakeKernel) (*Watcher, *cniserver.Registry) {
	t.Helper()
	client.PrependWatchReactor("*", func(k8stesting.Action) (bool, watch.Interface, error) {
		return true, watch.NewFake(), nil
	})
	reg, err := cniserver.NewRegistry("", kernel)
	if err != nil {
		t.Fatal(err)
	}
	w := NewWatcherFor(client, "n1", reg, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(2 * time.Second)
	for !w.pods.HasSynced() || !w.nss.HasSynced() {
		if time.Now().After(deadline) {
			t.Fatal("not synced within 2s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return w, reg
}

// A pod (or namespace) the watch has not delivered yet is read from the
// API server: the plugin's ADD often comes first. Here the watch never
// delivers anything after its first list.
func TestDecideReadsWhatTheWatchHasNotSeen(t *testing.T) {
	kmesh := map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh}
	client := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mesh", Labels: kmesh}})
	w, _ := frozenWatcher(t, client, &fakeKernel{enrolled: map[uint64]bool{}})
	add := func(o runtime.Object) {
		if err := client.Tracker().Add(o); err != nil {
			t.Fatal(err)
		}
	}
	add(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "fresh", Namespace: "mesh", UID: "uf"}, Spec: corev1.PodSpec{NodeName: "n1"}})
	add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "late"}})
	add(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "late", UID: "up", Labels: kmesh}, Spec: corev1.PodSpec{NodeName: "n1"}})
	if _, ok, _ := w.pods.GetStore().GetByKey("mesh/fresh"); ok {
		t.Fatal("the watch delivered the pod; the test needs it not to")
	}
	for _, tc := range []struct {
		ns, name, uid string
		known, enroll bool
		reason        string
	}{
		{"mesh", "fresh", "uf", true, true, "namespace label"},
		{"late", "p", "up", true, true, "pod label"},
		{"mesh", "fresh", "another-uid", false, false, ""},
		{"mesh", "nobody", "un", false, false, ""},
	} {
		gets := len(client.Actions())
		enroll, reason, known := w.Decide(tc.ns, tc.name, tc.uid)
		if known != tc.known || enroll != tc.enroll || !strings.Contains(reason, tc.reason) {
			t.Errorf("%s/%s (uid %q): enroll %v, %q, known %v; want %v, %q, %v", tc.ns, tc.name, tc.uid, enroll, reason, known, tc.enroll, tc.reason, tc.known)
		}
		if len(client.Actions()) == gets {
			t.Errorf("%s/%s: decided without reading the API", tc.ns, tc.name)
		}
	}
}

// A namespace the watch has not delivered yet (its watch lags, or is
// re-listing) does not release a pod the plugin enrolled by the
// namespace's label: the label is read from the API server instead.
func TestReconcileDoesNotReleaseForAnUnseenNamespace(t *testing.T) {
	kmesh := map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh}
	client := fake.NewClientset()
	kernel := &fakeKernel{enrolled: map[uint64]bool{}}
	w, reg := frozenWatcher(t, client, kernel)
	// The namespace exists in the API but not in the watch's store; the
	// pod is in the store (as a pod watch that is up to date has it).
	if err := client.Tracker().Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "fresh", Labels: kmesh}}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "fresh", UID: "ua"},
		Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "app"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if err := client.Tracker().Add(pod); err != nil {
		t.Fatal(err)
	}
	if err := w.pods.GetStore().Add(pod); err != nil {
		t.Fatal(err)
	}
	// The plugin enrolled it (it read the namespace from the API).
	if _, err := reg.Add(&cniv1.Pod{Name: "app", Namespace: "fresh", Uid: "ua", ContainerId: "c1", NetnsCookie: 7, Enrolled: true}); err != nil {
		t.Fatal(err)
	}
	if !kernel.is(7) {
		t.Fatal("not enrolled by the plugin's report")
	}
	if err := w.reconcile(context.Background(), "ua"); err != nil {
		t.Fatal(err)
	}
	if !kernel.is(7) {
		t.Fatalf("released while the namespace's label enrolls it: %+v", reg.ByUID("ua")[0])
	}
}
