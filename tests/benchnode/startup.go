package main

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/kmesh-go/kmesh/tests/benchtab"
	"github.com/kmesh-go/kmesh/tests/kubenode"
)

// A chain is one way pods are set up on the node.
type chain struct {
	name    string
	kmesh   bool // kmesh-cni in the chain (the DaemonSet installed)
	enroll  bool // the pods' namespace labelled for the mesh
	samples []time.Duration
}

func (c *chain) namespace() string {
	if c.enroll {
		return "bench-mesh"
	}
	return "bench-plain"
}

// startupPod is a pod with nothing that waits: no probe, so Ready follows
// the container's start (a probe's period would swamp what the chain adds).
func startupPod(name, ns string) *corev1.Pod {
	grace := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"bench": "startup"}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:            "fortio",
				Image:           kubenode.FortioImage,
				ImagePullPolicy: corev1.PullNever,
				Args:            []string{"server", "-http-port", "8080", "-grpc-port", "disabled", "-redirect-port", "disabled", "-tcp-port", "disabled", "-udp-port", "disabled"},
			}},
		},
	}
}

// startupRound creates count pods in each of the namespaces, one after
// the other, taking the namespaces in turn (so two chains that need no
// reinstall between them meet the same moments of a busy machine), each
// pod when the one before is Ready. It returns, per namespace, each pod's
// time from its Create call to the Ready=True update reaching a watch;
// then deletes the pods and waits until they are gone.
func startupRound(ctx context.Context, n *kubenode.Node, nss []string, count int, seq *int) (map[string][]time.Duration, error) {
	// From the watch cache's present ("0"): a watch from the latest
	// version needs etcd's progress notifications, which Debian's etcd 3.4
	// does not send, and fails with "Too large resource version".
	w, err := n.Clientset.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{LabelSelector: "bench=startup", ResourceVersion: "0"})
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	out := map[string][]time.Duration{}
	for range count {
		for _, ns := range nss {
			*seq++
			name := fmt.Sprintf("startup-%d", *seq)
			t0 := time.Now()
			if _, err := n.Clientset.CoreV1().Pods(ns).Create(ctx, startupPod(name, ns), metav1.CreateOptions{}); err != nil {
				return out, err
			}
			if err := waitReady(ctx, w, name); err != nil {
				return out, err
			}
			out[ns] = append(out[ns], time.Since(t0))
		}
	}
	zero := int64(0)
	for _, ns := range nss {
		if err := n.Clientset.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{LabelSelector: "bench=startup"}); err != nil {
			return out, err
		}
	}
	for {
		l, err := n.Clientset.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: "bench=startup"})
		if err != nil {
			return out, err
		}
		if len(l.Items) == 0 {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return out, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func waitReady(ctx context.Context, w watch.Interface, name string) error {
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return fmt.Errorf("watch closed while waiting for %s", name)
			}
			if ev.Type == watch.Error {
				return fmt.Errorf("watch error while waiting for %s: %v", name, ev.Object)
			}
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || p.Name != name {
				continue
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					return nil
				}
			}
		case <-timeout:
			return fmt.Errorf("pod %s not Ready within 2m", name)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func printStartup(chains []*chain) {
	base := chains[0]
	q := func(v []time.Duration, p float64) float64 {
		s := slices.Clone(v)
		slices.Sort(s)
		if len(s) == 0 {
			return 0
		}
		i := int(p*float64(len(s))+0.5) - 1
		return float64(s[max(0, min(i, len(s)-1))]) / float64(time.Millisecond)
	}
	t := &benchtab.Table{Header: []string{"chain", "pods", "p50 ms", "p90 ms", "p99 ms", "p50 vs without", "p99 vs without"}}
	for _, c := range chains {
		t.Rows = append(t.Rows, []string{
			c.name, fmt.Sprint(len(c.samples)),
			fmt.Sprintf("%.0f", q(c.samples, 0.5)), fmt.Sprintf("%.0f", q(c.samples, 0.9)), fmt.Sprintf("%.0f", q(c.samples, 0.99)),
			fmt.Sprintf("%.3fx", q(c.samples, 0.5)/q(base.samples, 0.5)),
			fmt.Sprintf("%.3fx", q(c.samples, 0.99)/q(base.samples, 0.99)),
		})
	}
	t.Print()
}

var (
	addedPod      = regexp.MustCompile(` pod=(\S+)`)
	addedEnrolled = regexp.MustCompile(` enrolled=(true|false)`)
	addedTook     = regexp.MustCompile(` took=(\S+)`)
)

// printCNITimes reads kmesh-cni's own log on the node (its ADD, from the
// plugin's start to its result, as it logs it at level info) for the
// start-up pods: what kmesh adds inside a pod's start, without the noise of
// the rest of it.
func printCNITimes(ctx context.Context, n *kubenode.Node) error {
	out, err := n.Exec(ctx, "cat", "/var/log/kmesh-cni.log")
	if err != nil {
		return err
	}
	byEnrolled := map[string][]time.Duration{}
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.Contains(line, " msg=added ") {
			continue
		}
		pod, enrolled, took := addedPod.FindStringSubmatch(line), addedEnrolled.FindStringSubmatch(line), addedTook.FindStringSubmatch(line)
		if pod == nil || enrolled == nil || took == nil || !strings.Contains(pod[1], "startup-") {
			continue
		}
		d, err := time.ParseDuration(took[1])
		if err != nil {
			continue
		}
		byEnrolled[enrolled[1]] = append(byEnrolled[enrolled[1]], d)
	}
	q := func(v []time.Duration, p float64) string {
		s := slices.Clone(v)
		slices.Sort(s)
		if len(s) == 0 {
			return "-"
		}
		i := int(p*float64(len(s))+0.5) - 1
		return fmt.Sprintf("%.2f", float64(s[max(0, min(i, len(s)-1))])/float64(time.Millisecond))
	}
	t := &benchtab.Table{Header: []string{"kmesh-cni ADD (its log, in-process)", "pods", "p50 ms", "p90 ms", "p99 ms"}}
	for _, k := range []struct{ key, name string }{{"false", "namespace not labelled"}, {"true", "pod enrolled"}} {
		v := byEnrolled[k.key]
		t.Rows = append(t.Rows, []string{k.name, fmt.Sprint(len(v)), q(v, 0.5), q(v, 0.9), q(v, 0.99)})
	}
	fmt.Println()
	t.Print()
	return nil
}
