package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kmesh-go/kmesh/tests/benchtab"
	"github.com/kmesh-go/kmesh/tests/kubenode"
)

// dnatVIP is the address kube-proxy's rule (written by hand into the
// client pod's netfilter; this node has no kube-proxy) sends to the second
// server port.
const dnatVIP = "10.96.255.10"

// The L4 pods (burstable, a quarter core requested per container: a best-effort pod
// gets cpu.shares 2 and starves beside the machine's other work): a server
// with two fortio ports (8081 only for the DNAT
// path, so its conntrack entries never meet the other paths' connections)
// in a namespace outside the mesh and one inside it, and a client in each.
func l4Manifest(ns string, dnatPort bool) string {
	second := ""
	if dnatPort {
		second = fmt.Sprintf(`
  - name: fortio-dnat
    image: %s
    imagePullPolicy: Never
    args: [server, -http-port, "8081", -grpc-port, disabled, -redirect-port, disabled, -tcp-port, disabled, -udp-port, disabled]
    resources: {requests: {cpu: 250m}}`, kubenode.FortioImage)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: server, namespace: %[1]s, labels: {app: server}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: fortio
    image: %[2]s
    imagePullPolicy: Never
    args: [server, -http-port, "8080", -grpc-port, disabled, -redirect-port, disabled, -tcp-port, disabled, -udp-port, disabled]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
    resources: {requests: {cpu: 250m}}%[3]s
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: %[1]s}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: %[1]s, labels: {app: client}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: fortio
    image: %[2]s
    imagePullPolicy: Never
    args: [server, -http-port, "8080", -grpc-port, disabled, -redirect-port, disabled, -tcp-port, disabled, -udp-port, disabled]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
    resources: {requests: {cpu: 250m}}
`, ns, kubenode.FortioImage, second)
}

type l4Path struct {
	name      string
	clientNS  string
	url       string
	byKind    map[string][]fortioResult
	ratioRuns map[string][]float64
}

type l4Bench struct {
	n     *kubenode.Node
	paths []*l4Path
}

func setUpL4(ctx context.Context, n *kubenode.Node) (*l4Bench, error) {
	if err := n.Apply(ctx, l4Manifest("bench-plain", true)+"---\n"+l4Manifest("bench-mesh", false)); err != nil {
		return nil, err
	}
	ready := map[string]*corev1.Pod{}
	for _, ns := range []string{"bench-plain", "bench-mesh"} {
		for _, name := range []string{"server", "client"} {
			p, err := waitPod(ctx, n, ns, name)
			if err != nil {
				return nil, err
			}
			ready[ns+"/"+name] = p
		}
	}
	vip := func(ns string) (string, error) {
		s, err := n.Clientset.CoreV1().Services(ns).Get(ctx, "server", metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		return s.Spec.ClusterIP, nil
	}
	plainVIP, err := vip("bench-plain")
	if err != nil {
		return nil, err
	}
	meshVIP, err := vip("bench-mesh")
	if err != nil {
		return nil, err
	}
	serverIP := ready["bench-plain/server"].Status.PodIP
	// kube-proxy's DNAT, in the unenrolled client's own netfilter.
	pid, err := containerPid(ctx, n, ready["bench-plain/client"])
	if err != nil {
		return nil, err
	}
	if out, err := n.Exec(ctx, "nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", pid), "--", "iptables", "-t", "nat", "-A", "OUTPUT",
		"-d", dnatVIP, "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", serverIP+":8081"); err != nil {
		return nil, fmt.Errorf("%w: %s", err, out)
	}
	b := &l4Bench{n: n, paths: []*l4Path{
		{name: "direct to the pod IP, no mesh", clientNS: "bench-plain", url: "http://" + serverIP + ":8080/echo"},
		{name: "iptables DNAT on a VIP (kube-proxy's rule)", clientNS: "bench-plain", url: "http://" + dnatVIP + ":80/echo"},
		{name: "kmesh: VIP rewritten at connect()", clientNS: "bench-mesh", url: "http://" + plainVIP + ":80/echo"},
		{name: "kmesh, server enrolled too (tc on its veth)", clientNS: "bench-mesh", url: "http://" + meshVIP + ":80/echo"},
	}}
	for _, p := range b.paths {
		p.byKind = map[string][]fortioResult{}
		p.ratioRuns = map[string][]float64{}
		r, err := b.fortio(ctx, p, "-qps", "50", "-c", "1", "-t", "1s")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		if r.failed() > 0 || r.count() == 0 {
			return nil, fmt.Errorf("%s: %d of %d requests failed (%v)", p.name, r.failed(), r.count(), r.RetCodes)
		}
	}
	return b, nil
}

func waitPod(ctx context.Context, n *kubenode.Node, ns, name string) (*corev1.Pod, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		p, err := n.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					return p, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("pod %s/%s not ready: %v", ns, name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// containerPid is the pid (on this machine) of a pod's first container,
// from containerd's task list.
func containerPid(ctx context.Context, n *kubenode.Node, p *corev1.Pod) (int, error) {
	if len(p.Status.ContainerStatuses) == 0 {
		return 0, fmt.Errorf("pod %s has no container status", p.Name)
	}
	id := strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
	out, err := n.Ctr(ctx, "tasks", "ls")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == id {
			var pid int
			_, err := fmt.Sscan(f[1], &pid)
			return pid, err
		}
	}
	return 0, fmt.Errorf("no task for container %s of pod %s", id, p.Name)
}

// fortioResult is the part of fortio's JSON the tables use (as in
// tests/bench).
type fortioResult struct {
	ActualQPS         float64
	RetCodes          map[string]int64
	DurationHistogram struct {
		Count       int64
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
}

func (r fortioResult) count() int64  { return r.DurationHistogram.Count }
func (r fortioResult) failed() int64 { return r.count() - r.RetCodes["200"] }

func (r fortioResult) ms(p float64) float64 {
	for _, x := range r.DurationHistogram.Percentiles {
		if x.Percentile == p {
			return x.Value * 1000
		}
	}
	return 0
}

// fortio runs fortio load in the path's client pod, through kubectl exec.
func (b *l4Bench) fortio(ctx context.Context, p *l4Path, args ...string) (fortioResult, error) {
	argv := append([]string{"-n", p.clientNS, "exec", "client", "--", "fortio", "load", "-quiet", "-json", "-", "-p", "50,90,99"}, args...)
	out, err := b.n.Kubectl(ctx, append(argv, p.url)...)
	var r fortioResult
	if err != nil {
		return r, err
	}
	if i := strings.IndexByte(out, '{'); i >= 0 {
		out = out[i:]
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return r, fmt.Errorf("fortio JSON: %w", err)
	}
	return r, nil
}

type l4Kind struct{ name, label string }

var l4Kinds = []l4Kind{
	{"fixed", "fixed 1000 qps, 16 connections"},
	{"sat", "saturation, 16 connections"},
	{"newconn", "new connection per request, 4 connections"},
}

func kindArgs(k string, dur time.Duration) []string {
	const payload = "1024"
	switch k {
	case "fixed":
		return []string{"-qps", "1000", "-c", "16", "-t", dur.String(), "-payload-size", payload}
	case "sat":
		return []string{"-qps", "0", "-c", "16", "-t", dur.String(), "-payload-size", payload}
	}
	return []string{"-qps", "0", "-c", "4", "-keepalive=false", "-t", dur.String(), "-payload-size", payload}
}

func (b *l4Bench) run(ctx context.Context, runs int, dur time.Duration) error {
	start := time.Now()
	load1 := loadavg()
	for r := range runs {
		for _, k := range l4Kinds {
			order := b.paths
			if r%2 == 1 {
				order = reversed(b.paths)
			}
			got := map[*l4Path]fortioResult{}
			for _, p := range order {
				res, err := b.fortio(ctx, p, kindArgs(k.name, dur)...)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", p.name, k.label, err)
				}
				got[p] = res
				p.byKind[k.name] = append(p.byKind[k.name], res)
			}
			direct := got[b.paths[0]]
			for _, p := range b.paths {
				var v float64
				switch k.name {
				case "fixed":
					v = got[p].ms(90) / direct.ms(90)
				default:
					v = got[p].ActualQPS / direct.ActualQPS
				}
				p.ratioRuns[k.name] = append(p.ratioRuns[k.name], v)
			}
			log.Printf("L4 run %d/%d: %s done", r+1, runs, k.label)
		}
	}
	fmt.Printf("\n### L4 through kubelet-made pods\n\n")
	fmt.Printf("fortio %s in the client pod (kubectl exec), 1 KiB each way, %d runs of %s per path and measurement, paths interleaved; medians; \"vs direct\" is the median of each run's ratio. Load average %s before, %s after; %s.\n\n",
		kubenode.FortioImage, runs, dur, load1, loadavg(), time.Since(start).Round(time.Second))
	med := func(p *l4Path, k string, f func(fortioResult) float64) float64 {
		var v []float64
		for _, r := range p.byKind[k] {
			v = append(v, f(r))
		}
		return benchtab.Median(v)
	}
	failed := func(p *l4Path, k string) int64 {
		var s int64
		for _, r := range p.byKind[k] {
			s += r.failed()
		}
		return s
	}
	t := &benchtab.Table{Header: []string{"path", "p50 ms", "p90 ms", "p99 ms", "p90 vs direct", "max qps", "vs direct", "new conn/s", "vs direct", "failed"}}
	for _, p := range b.paths {
		t.Rows = append(t.Rows, []string{
			p.name,
			fmt.Sprintf("%.3f", med(p, "fixed", func(r fortioResult) float64 { return r.ms(50) })),
			fmt.Sprintf("%.3f", med(p, "fixed", func(r fortioResult) float64 { return r.ms(90) })),
			fmt.Sprintf("%.3f", med(p, "fixed", func(r fortioResult) float64 { return r.ms(99) })),
			fmt.Sprintf("%.2fx", benchtab.Median(p.ratioRuns["fixed"])),
			fmt.Sprintf("%.0f", med(p, "sat", func(r fortioResult) float64 { return r.ActualQPS })),
			fmt.Sprintf("%.2fx", benchtab.Median(p.ratioRuns["sat"])),
			fmt.Sprintf("%.0f", med(p, "newconn", func(r fortioResult) float64 { return r.ActualQPS })),
			fmt.Sprintf("%.2fx", benchtab.Median(p.ratioRuns["newconn"])),
			fmt.Sprint(failed(p, "fixed") + failed(p, "sat") + failed(p, "newconn")),
		})
	}
	t.Print()
	return nil
}

func reversed[T any](s []T) []T {
	out := make([]T, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}
