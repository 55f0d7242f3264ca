package cluster

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/kmesh-go/kmesh/tests/nodebox"
)

// Pod is a Pod object and its sandbox on the box.
type Pod struct {
	*nodebox.Pod
	Obj *corev1.Pod
	c   *Cluster
}

// PodOpts shape a pod.
type PodOpts struct {
	// Node is the node it is bound to (default NodeName).
	Node           string
	Labels         map[string]string
	ServiceAccount string
	// Ports are the container's ports (for the record: nothing reads them).
	Ports []corev1.ContainerPort
	// NotReady writes Ready=False.
	NotReady bool
	// Serve starts the pod's servers once its network is up, before its
	// status says Running.
	Serve func(*Pod) error
}

// AddPod does what the scheduler, kubelet and runtime would: creates the
// Pod (bound to a node), runs the CNI chain for its sandbox (kmesh-cni
// reads the pod from the apiserver by CNI_ARGS), starts its servers, and
// writes its status: podIP from host-local, Running, Ready unless
// NotReady. The pod goes when the test ends.
func (c *Cluster) AddPod(t *testing.T, ns, name string, o PodOpts) *Pod {
	t.Helper()
	if o.Node == "" {
		o.Node = NodeName
	}
	obj, err := c.K8s.CoreV1().Pods(ns).Create(c.Ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: o.Labels},
		Spec: corev1.PodSpec{
			NodeName:           o.Node,
			ServiceAccountName: o.ServiceAccount,
			Containers:         []corev1.Container{{Name: "app", Image: "kmesh-e2e/app:never-pulled", Ports: o.Ports}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	p := &Pod{Obj: obj, c: c}
	t.Cleanup(func() { c.RemovePod(t, p) })
	p.Pod, err = c.Box.AddPod(c.Ctx, nodebox.PodSpec{Name: name, Namespace: ns, UID: string(obj.UID)})
	if err != nil {
		t.Fatal(err)
	}
	if o.Serve != nil {
		if err := o.Serve(p); err != nil {
			t.Fatalf("servers in %s: %v", name, err)
		}
	}
	c.WriteStatus(t, p, func(st *corev1.PodStatus) {
		now := metav1.Now()
		*st = corev1.PodStatus{
			Phase:     corev1.PodRunning,
			HostIP:    c.Box.Gateway.String(),
			PodIP:     p.IP.String(),
			PodIPs:    []corev1.PodIP{{IP: p.IP.String()}},
			StartTime: &now,
		}
		setReadyConditions(st, !o.NotReady)
	})
	return p
}

// WriteStatus changes the pod's status through the status subresource, as
// a kubelet does, retrying when someone else (kmesh-cni's annotation, the
// daemon's) changed the pod in between.
func (c *Cluster) WriteStatus(t *testing.T, p *Pod, mutate func(*corev1.PodStatus)) {
	t.Helper()
	pods := c.K8s.CoreV1().Pods(p.Obj.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(c.Ctx, p.Obj.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		mutate(&cur.Status)
		_, err = pods.UpdateStatus(c.Ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("write status of %s/%s: %v", p.Obj.Namespace, p.Obj.Name, err)
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

// SetReady writes the pod's Ready condition, as a kubelet does when a
// readiness probe changes.
func (c *Cluster) SetReady(t *testing.T, p *Pod, ready bool) {
	t.Helper()
	c.WriteStatus(t, p, func(st *corev1.PodStatus) { setReadyConditions(st, ready) })
}

// DeletePod deletes the Pod object at once (grace period 0); the sandbox
// stays until RemovePod, as when a kubelet is slow to tear it down.
func (c *Cluster) DeletePod(t *testing.T, p *Pod) {
	t.Helper()
	zero := int64(0)
	err := c.K8s.CoreV1().Pods(p.Namespace).Delete(c.Ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete pod %s/%s: %v", p.Namespace, p.Name, err)
	}
}

// RemovePod deletes the object and tears the sandbox down (CNI DEL).
func (c *Cluster) RemovePod(t *testing.T, p *Pod) {
	zero := int64(0)
	err := c.K8s.CoreV1().Pods(p.Obj.Namespace).Delete(context.Background(), p.Obj.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete pod %s/%s: %v", p.Obj.Namespace, p.Obj.Name, err)
	}
	if p.Pod != nil {
		if err := c.Box.RemovePod(context.Background(), p.Pod); err != nil {
			t.Errorf("remove sandbox of %s: %v", p.Obj.Name, err)
		}
	}
}

// ServeName answers every HTTP request on port with the pod's name. The
// listener lives in the pod's namespace and goes with it.
func (p *Pod) ServeName(port int) error {
	name := p.Name
	return p.ServeHTTP(port, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name)
	}))
}

// ServeHTTP serves h on port (HTTP/1.1, and HTTP/2 without TLS).
func (p *Pod) ServeHTTP(port int, h http.Handler) error {
	l, err := p.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: h, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go func() { _ = srv.Serve(l) }()
	return nil
}

// Get sends one HTTP GET from the pod on a new connection and returns the
// body: the answering pod's name.
func (p *Pod) Get(ctx context.Context, url string) (string, error) {
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

// Spread sends n requests and counts who answered; failures fail the test.
func (p *Pod) Spread(t *testing.T, url string, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for range n {
		who, err := p.Get(p.c.Ctx, url)
		if err != nil {
			t.Fatalf("%s -> %s: %v", p.Name, url, err)
		}
		out[who]++
	}
	return out
}

// WaitServedBy waits until requests from the pod have reached every one
// of names (the service and its endpoints have come through istiod).
func (p *Pod) WaitServedBy(t *testing.T, url string, timeout time.Duration, names ...string) time.Duration {
	t.Helper()
	start := time.Now()
	seen := map[string]bool{}
	var last error
	for time.Since(start) < timeout {
		who, err := p.Get(p.c.Ctx, url)
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
	t.Fatalf("%s -> %s: after %s reached %v, want all of %v (last error: %v)", p.Name, url, timeout, Keys(seen), names, last)
	return 0
}

// Hit is one request of a traffic loop.
type Hit struct {
	At  time.Time
	Who string
	Err error
}

// Loop sends requests from the pod back to back (a new connection each)
// until stop is called, which returns every result.
func (p *Pod) Loop(url string) (stop func() []Hit) {
	return LoopWith(func() (string, error) { return p.Get(p.c.Ctx, url) }, 2*time.Millisecond)
}

// LoopWith calls get back to back, pausing between calls, until stop is
// called, which returns every result.
func LoopWith(get func() (string, error), pause time.Duration) (stop func() []Hit) {
	return StartLoop(get, pause).Stop
}

// Loop is a traffic loop whose results can be read while it runs.
type Loop struct {
	mu   sync.Mutex
	hits []Hit
	done chan struct{}
	fin  chan struct{}
	once sync.Once
}

// StartLoop calls get back to back, pausing between calls, until Stop.
func StartLoop(get func() (string, error), pause time.Duration) *Loop {
	l := &Loop{done: make(chan struct{}), fin: make(chan struct{})}
	go func() {
		defer close(l.fin)
		for {
			select {
			case <-l.done:
				return
			default:
			}
			who, err := get()
			l.mu.Lock()
			l.hits = append(l.hits, Hit{time.Now(), who, err})
			l.mu.Unlock()
			if pause > 0 {
				time.Sleep(pause)
			}
		}
	}()
	return l
}

// Hits returns the results so far.
func (l *Loop) Hits() []Hit {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.hits)
}

// Stop ends the loop (once) and returns every result.
func (l *Loop) Stop() []Hit {
	l.once.Do(func() { close(l.done) })
	<-l.fin
	return l.Hits()
}

// Summarize counts hits per answering pod and returns the failures.
func Summarize(hits []Hit) (map[string]int, []error) {
	counts := map[string]int{}
	var errs []error
	for _, h := range hits {
		if h.Err != nil {
			errs = append(errs, h.Err)
		} else {
			counts[h.Who]++
		}
	}
	return counts, errs
}

// LastHit is the time of the last request that reached who, or zero.
func LastHit(hits []Hit, who string) time.Time {
	var last time.Time
	for _, h := range hits {
		if h.Err == nil && h.Who == who {
			last = h.At
		}
	}
	return last
}
