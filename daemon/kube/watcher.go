// Package kube watches this node's pods and their namespaces, so a label
// added to (or removed from) a running pod or its namespace enrolls (or
// releases) the pod without a restart, and keeps the pod's
// kmesh.net/redirection annotation true to its state.
package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/daemon/cniserver"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/internal/enrollment"
)

// Config returns a client config from a kubeconfig path, or in-cluster when
// the path is empty and the daemon runs in a pod. ok is false when neither
// applies (a node without Kubernetes, the local demo).
func Config(kubeconfig string) (*rest.Config, bool, error) {
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, false, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return c, true, nil
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return nil, false, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, false, err
	}
	return c, true, nil
}

// Watcher reconciles enrollment with labels.
type Watcher struct {
	client   kubernetes.Interface
	node     string
	reg      *cniserver.Registry
	log      *slog.Logger
	pods     cache.SharedIndexInformer
	nss      cache.SharedIndexInformer
	queue    workqueue.TypedRateLimitingInterface[string] // pod uid or "ns/<name>"
	factory  informers.SharedInformerFactory
	nsFactor informers.SharedInformerFactory
}

// NewWatcher watches the pods of node.
func NewWatcher(cfg *rest.Config, node string, reg *cniserver.Registry, log *slog.Logger) (*Watcher, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return NewWatcherFor(client, node, reg, log), nil
}

// NewWatcherFor uses an existing clientset (tests use a fake one).
func NewWatcherFor(client kubernetes.Interface, node string, reg *cniserver.Registry, log *slog.Logger) *Watcher {
	if log == nil {
		log = slog.Default()
	}
	w := &Watcher{client: client, node: node, reg: reg, log: log.With("component", "kube"),
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())}
	opts := []informers.SharedInformerOption{}
	if node != "" {
		opts = append(opts, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
		}))
	}
	w.factory = informers.NewSharedInformerFactoryWithOptions(client, 10*time.Minute, opts...)
	w.nsFactor = informers.NewSharedInformerFactory(client, 10*time.Minute)
	w.pods = w.factory.Core().V1().Pods().Informer()
	w.nss = w.nsFactor.Core().V1().Namespaces().Informer()
	enqueuePod := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok {
			w.queue.Add(string(p.UID))
		} else if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			if p, ok := d.Obj.(*corev1.Pod); ok {
				w.queue.Add(string(p.UID))
			}
		}
	}
	w.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueuePod,
		UpdateFunc: func(_, n any) { enqueuePod(n) },
	})
	w.nss.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { w.enqueueNamespace(o) },
		UpdateFunc: func(_, n any) { w.enqueueNamespace(n) },
	})
	// A sandbox the plugin just reported is checked against its labels.
	reg.Watch(func(p *cniv1.Pod, added bool) {
		if added && p.GetUid() != "" {
			w.queue.Add(p.GetUid())
		}
	})
	return w
}

func (w *Watcher) enqueueNamespace(obj any) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	for _, o := range w.pods.GetStore().List() {
		if p := o.(*corev1.Pod); p.Namespace == ns.Name {
			w.queue.Add(string(p.UID))
		}
	}
}

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	defer w.queue.ShutDown()
	w.factory.Start(ctx.Done())
	w.nsFactor.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), w.pods.HasSynced, w.nss.HasSynced) {
		return ctx.Err()
	}
	w.log.Info("watching pods and namespaces", "node", w.node)
	// Everything registered before the caches synced gets a look.
	for _, p := range w.reg.Pods() {
		if p.Uid != "" {
			w.queue.Add(p.Uid)
		}
	}
	go func() {
		<-ctx.Done()
		w.queue.ShutDown()
	}()
	for {
		uid, quit := w.queue.Get()
		if quit {
			return nil
		}
		if err := w.reconcile(ctx, uid); err != nil {
			w.log.Warn("reconcile pod", "uid", uid, "err", err)
			w.queue.AddRateLimited(uid)
		} else {
			w.queue.Forget(uid)
		}
		w.queue.Done(uid)
	}
}

func (w *Watcher) podByUID(uid string) *corev1.Pod {
	for _, o := range w.pods.GetStore().List() {
		if p := o.(*corev1.Pod); string(p.UID) == uid {
			return p
		}
	}
	return nil
}

// Decide is the enrollment decision for a pod from the watch: the rules
// kmesh-cni applies, on the pod and namespace as last seen. known is false
// until both informers have synced. A pod (with that uid, when one is
// given) or namespace the watch has not seen yet is read from the API
// server once, within liveReadTimeout: a pod's ADD often comes a few
// milliseconds before the watch delivers the pod, and the plugin's own
// read costs it a process and a TLS handshake (~10 ms against ~1 ms here).
// Still not found, known is false and the plugin asks the API itself. A
// pod already finished is decided as reconcile does.
func (w *Watcher) Decide(namespace, name, uid string) (enroll bool, reason string, known bool) {
	if !w.pods.HasSynced() || !w.nss.HasSynced() {
		return false, "", false
	}
	var pod *corev1.Pod
	if o, ok, _ := w.pods.GetStore().GetByKey(namespace + "/" + name); ok {
		pod = o.(*corev1.Pod)
	}
	var ctx context.Context
	var cancel context.CancelFunc
	live := func() context.Context {
		if ctx == nil {
			ctx, cancel = context.WithTimeout(context.Background(), liveReadTimeout)
		}
		return ctx
	}
	defer func() {
		if cancel != nil {
			cancel()
		}
	}()
	if pod == nil || uid != "" && string(pod.UID) != uid {
		p, err := w.client.CoreV1().Pods(namespace).Get(live(), name, metav1.GetOptions{})
		if err != nil {
			return false, "", false
		}
		pod = p
	}
	if uid != "" && string(pod.UID) != uid {
		return false, "", false
	}
	var nsLabels map[string]string
	if o, ok, _ := w.nss.GetStore().GetByKey(namespace); ok {
		nsLabels = o.(*corev1.Namespace).Labels
	} else {
		ns, err := w.client.CoreV1().Namespaces().Get(live(), namespace, metav1.GetOptions{})
		if err != nil {
			return false, "", false
		}
		nsLabels = ns.Labels
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return false, "pod has finished", true
	}
	enroll, reason = enrollment.Decide(enrollmentView(pod), nsLabels)
	return enroll, reason, true
}

// liveReadTimeout bounds Decide's read of the API server; kmesh-cni waits
// 250 ms for the whole answer.
const liveReadTimeout = 150 * time.Millisecond

// reconcile brings one pod's sandboxes to the state its labels ask for.
func (w *Watcher) reconcile(ctx context.Context, uid string) error {
	sandboxes := w.reg.ByUID(uid)
	if len(sandboxes) == 0 {
		return nil // the plugin has not reported it (yet); it will
	}
	pod := w.podByUID(uid)
	if pod == nil {
		return nil
	}
	// A namespace the watch has not delivered (its watch lags behind the
	// pods', or is re-listing) is read from the API server: deciding
	// without its labels would release every pod its label enrolls.
	var nsLabels map[string]string
	if o, ok, _ := w.nss.GetStore().GetByKey(pod.Namespace); ok {
		nsLabels = o.(*corev1.Namespace).Labels
	} else {
		ns, err := w.client.CoreV1().Namespaces().Get(ctx, pod.Namespace, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil // going with its pods; the watch decides when it sees the namespace again
		}
		if err != nil {
			return fmt.Errorf("namespace %s (not yet in the watch): %w", pod.Namespace, err)
		}
		nsLabels = ns.Labels
	}
	want, why := enrollment.Decide(enrollmentView(pod), nsLabels)
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		want, why = false, "pod has finished"
	}
	for _, sb := range sandboxes {
		if sb.Enrolled == want {
			continue
		}
		if err := w.reg.SetEnrolled(sb.ContainerId, want, why); err != nil {
			return err
		}
		w.log.Info("enrollment changed", "pod", pod.Namespace+"/"+pod.Name, "enrolled", want, "why", why)
	}
	return w.annotate(ctx, pod, want)
}

// enrollmentView is what the enrollment rules read of a pod.
func enrollmentView(pod *corev1.Pod) enrollment.Pod {
	v := enrollment.Pod{HostNetwork: pod.Spec.HostNetwork, Labels: pod.Labels, Annotations: pod.Annotations}
	for _, c := range pod.Spec.InitContainers {
		v.Containers = append(v.Containers, c.Name)
	}
	for _, c := range pod.Spec.Containers {
		v.Containers = append(v.Containers, c.Name)
	}
	return v
}

// annotate keeps kmesh.net/redirection in step: "enabled" while enrolled,
// absent otherwise.
func (w *Watcher) annotate(ctx context.Context, pod *corev1.Pod, enrolled bool) error {
	_, has := pod.Annotations[enrollment.AnnotationRedirection]
	if has == enrolled && (!enrolled || pod.Annotations[enrollment.AnnotationRedirection] == "enabled") {
		return nil
	}
	var val any
	if enrolled {
		val = "enabled"
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{enrollment.AnnotationRedirection: val}}})
	_, err := w.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// NodeLocality reads region/zone/subzone from the Node's labels.
func (w *Watcher) NodeLocality(ctx context.Context) (model.Locality, error) {
	n, err := w.client.CoreV1().Nodes().Get(ctx, w.node, metav1.GetOptions{})
	if err != nil {
		return model.Locality{}, err
	}
	return model.Locality{
		Region:  n.Labels["topology.kubernetes.io/region"],
		Zone:    n.Labels["topology.kubernetes.io/zone"],
		Subzone: n.Labels["topology.istio.io/subzone"],
	}, nil
}
