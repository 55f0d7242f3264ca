package node

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kmesh-go/kmesh/tests/kubenode"
)

// fortioPod is a fortio server pod (the tests' echo server and, through
// kubectl exec, their client).
func fortioPod(name, ns string, labels map[string]string) string {
	var l []string
	for k, v := range labels {
		l = append(l, fmt.Sprintf("%q: %q", k, v))
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  labels: {%s}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: fortio
    image: %s
    imagePullPolicy: Never
    args: [server, -http-port, "8080", -grpc-port, disabled, -redirect-port, disabled, -tcp-port, disabled, -udp-port, disabled]
    ports: [{containerPort: 8080}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
`, name, ns, strings.Join(l, ", "), kubenode.FortioImage)
}

// echoApp is a Deployment of fortio servers behind a Service (port 80 to
// 8080).
func echoApp(name, ns string, replicas int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  replicas: %[3]d
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: fortio
        image: %[4]s
        imagePullPolicy: Never
        args: [server, -http-port, "8080", -grpc-port, disabled, -redirect-port, disabled, -tcp-port, disabled, -udp-port, disabled]
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  selector: {app: %[1]s}
  ports: [{name: http, port: 80, targetPort: 8080}]
`, name, ns, replicas, kubenode.FortioImage)
}

func namespace(name string, labels map[string]string) string {
	var l []string
	for k, v := range labels {
		l = append(l, fmt.Sprintf("%q: %q", k, v))
	}
	return fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels: {%s}\n", name, strings.Join(l, ", "))
}

var meshLabel = map[string]string{"istio.io/dataplane-mode": "kmesh"}

func apply(t *testing.T, n *kubenode.Node, manifest string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := n.Apply(ctx, manifest); err != nil {
		t.Fatal(err)
	}
}

func kubectl(t *testing.T, n *kubenode.Node, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := n.Kubectl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitFor polls cond every 200 ms until it returns nil or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitPodsReady waits until every pod matching selector in ns is Ready,
// and at least want of them exist; it returns them.
func waitPodsReady(t *testing.T, n *kubenode.Node, ns, selector string, want int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	waitFor(t, 3*time.Minute, fmt.Sprintf("%d ready pods %q in %s", want, selector, ns), func() error {
		l, err := n.Clientset.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return err
		}
		ready := 0
		for _, p := range l.Items {
			if p.DeletionTimestamp == nil && podReady(&p) {
				ready++
			}
		}
		if ready < want || ready != len(l.Items) {
			return fmt.Errorf("%d of %d ready, want %d", ready, len(l.Items), want)
		}
		pods = l.Items
		return nil
	})
	return pods
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// daemonPod is what kmesh-daemon's /debug/pods (kmeshctl dump pods -o
// json) says of one pod.
type daemonPod struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	UID       string `json:"uid"`
	Enrolled  bool   `json:"enrolled"`
	HostVeth  string `json:"hostVeth"`
	Reason    string `json:"reason"`
	// NetnsCookie is km_manage's key (protojson writes a uint64 as a
	// string).
	NetnsCookie string `json:"netnsCookie"`
}

func daemonPods(t *testing.T, n *kubenode.Node) []daemonPod {
	t.Helper()
	b, err := n.DaemonAdmin(context.Background(), "/debug/pods")
	if err != nil {
		t.Fatal(err)
	}
	var out []daemonPod
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("/debug/pods: %v: %s", err, b)
	}
	return out
}

// metrics reads kmesh-daemon's /metrics into "name{labels}" -> value.
func metrics(t *testing.T, n *kubenode.Node) map[string]float64 {
	t.Helper()
	b, err := n.DaemonAdmin(context.Background(), "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return parseMetrics(string(b))
}

// parseMetrics reads Prometheus text into "name{labels}" -> value.
func parseMetrics(text string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// sum adds the values of the series whose name is name and whose labels
// contain every one of match ("k=\"v\"").
func sum(m map[string]float64, name string, match ...string) float64 {
	var s float64
	for k, v := range m {
		if !strings.HasPrefix(k, name+"{") && k != name {
			continue
		}
		ok := true
		for _, l := range match {
			if !strings.Contains(k, l) {
				ok = false
				break
			}
		}
		if ok {
			s += v
		}
	}
	return s
}

var debugHost = regexp.MustCompile(`echo debug server up for \S+ on (\S+)`)

// curl fetches url from inside a pod with fortio curl; it returns the
// body, or an error when fortio fails (refused, timed out).
func curl(ctx context.Context, n *kubenode.Node, ns, pod, url string) (string, error) {
	return n.Kubectl(ctx, "-n", ns, "exec", pod, "--", "fortio", "curl", "-timeout", "2s", url)
}

// servedBy is the hostname (pod name) of the fortio server that answered
// a /debug request.
func servedBy(body string) string {
	if m := debugHost.FindStringSubmatch(body); m != nil {
		return m[1]
	}
	return ""
}

// fortioResult is the part of fortio load's JSON the tests read.
type fortioResult struct {
	DurationHistogram struct {
		Count int `json:"Count"`
	} `json:"DurationHistogram"`
	RetCodes  map[string]int `json:"RetCodes"`
	ActualQPS float64        `json:"ActualQPS"`
}

func (r fortioResult) ok() int { return r.RetCodes["200"] }

// load runs fortio load in a pod and returns its result.
func load(ctx context.Context, n *kubenode.Node, ns, pod string, args ...string) (fortioResult, string, error) {
	argv := append([]string{"-n", ns, "exec", pod, "--", "fortio", "load", "-json", "-", "-quiet"}, args...)
	out, err := n.Kubectl(ctx, argv...)
	var r fortioResult
	if err != nil {
		return r, out, err
	}
	// fortio prints its JSON last; anything before it is log.
	if i := strings.IndexByte(out, '{'); i >= 0 {
		out = out[i:]
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return r, out, fmt.Errorf("fortio JSON: %w", err)
	}
	return r, out, nil
}
