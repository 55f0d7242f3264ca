package kubenode

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kmeshk8s "github.com/kmesh-go/kmesh/install/kubernetes"
	"github.com/kmesh-go/kmesh/tests/images"
)

// Kmesh's DaemonSet on this node: namespace, name, and the daemon's admin
// socket (on a root-only socket: the daemon has hostNetwork, and every
// host-network pod shares the node's loopback).
const (
	KmeshNamespace   = "kmesh-system"
	KmeshDaemonSet   = "kmesh"
	kmeshAdminSocket = "/run/kmesh/admin.sock" // the DaemonSet's --admin-address, /var/run/kmesh on the node
)

// manifestEdits are the only differences between install/kubernetes and
// what this node applies, each a whole argument line of the DaemonSet:
// this machine mounts cgroup v2 apart (and kmesh attaches to the kubelet's
// kubepods tree, not the machine's root cgroup), and the node has no
// cluster DNS, so the daemon dials istiod on the node's loopback (the
// certificate's name stays istiod.istio-system.svc, --xds-server-name's
// default).
func manifestEdits(podsCgroup, istiod string) [][2]string {
	return [][2]string{
		{"- --cgroup-root=/host/sys/fs/cgroup", "- --cgroup-root=/host" + podsCgroup},
		{"- --xds-address=istiod.istio-system.svc:15012", "- --xds-address=" + istiod},
		// The plugin's log where a failing test can read it.
		{"- --plugin-log-level=info", "- --plugin-log-level=debug\n            - --plugin-log-file=/var/log/kmesh-cni.log"},
	}
}

// KmeshManifest is install/kubernetes (every file, in name order) with
// manifestEdits applied; an edit whose line is gone is an error, so a
// change to the manifests cannot slip past the node's tests.
func (n *Node) KmeshManifest() (string, error) {
	return kmeshManifest(n.PodsCgroup, n.CP.IstiodTLSAddr)
}

func kmeshManifest(podsCgroup, istiod string) (string, error) {
	names, err := fs.Glob(kmeshk8s.Manifests, "*.yaml")
	if err != nil {
		return "", err
	}
	slices.Sort(names)
	var docs []string
	for _, name := range names {
		b, err := fs.ReadFile(kmeshk8s.Manifests, name)
		if err != nil {
			return "", err
		}
		docs = append(docs, string(b))
	}
	all := strings.Join(docs, "\n---\n")
	for _, e := range manifestEdits(podsCgroup, istiod) {
		if strings.Count(all, e[0]) != 1 {
			return "", fmt.Errorf("install/kubernetes: want exactly one line %q to adapt for this node", e[0])
		}
		all = strings.Replace(all, e[0], e[1], 1)
	}
	return all, nil
}

// InstallKmesh applies the kmesh manifests and waits until the DaemonSet's
// pod is ready (the daemon's readiness is its first complete state from
// istiod in the kernel).
func (n *Node) InstallKmesh(ctx context.Context) error {
	m, err := n.KmeshManifest()
	if err != nil {
		return err
	}
	if err := n.Apply(ctx, m); err != nil {
		return err
	}
	return n.WaitKmeshReady(ctx)
}

// UninstallKmesh deletes the DaemonSet (kmesh-install takes its entry and
// binaries off the node as its container stops) and waits until its pods
// are gone.
func (n *Node) UninstallKmesh(ctx context.Context) error {
	if _, err := n.Kubectl(ctx, "-n", KmeshNamespace, "delete", "daemonset", KmeshDaemonSet, "--wait=true", "--timeout=90s"); err != nil {
		return err
	}
	return n.waitFor(ctx, n.kubelet, 90*time.Second, func(ctx context.Context) error {
		pods, err := n.Clientset.CoreV1().Pods(KmeshNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=kmesh"})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d kmesh pods still there", len(pods.Items))
		}
		return nil
	})
}

// WaitKmeshReady waits until the kmesh DaemonSet's pod on this node is
// up to date and ready.
func (n *Node) WaitKmeshReady(ctx context.Context) error {
	return n.waitFor(ctx, n.kubelet, 3*time.Minute, func(ctx context.Context) error {
		ds, err := n.Clientset.AppsV1().DaemonSets(KmeshNamespace).Get(ctx, KmeshDaemonSet, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !daemonSetReady(ds) {
			return fmt.Errorf("DaemonSet %s/%s: %d desired, %d updated, %d ready (generation %d, observed %d)",
				ds.Namespace, ds.Name, ds.Status.DesiredNumberScheduled, ds.Status.UpdatedNumberScheduled,
				ds.Status.NumberReady, ds.Generation, ds.Status.ObservedGeneration)
		}
		return nil
	})
}

func daemonSetReady(ds *appsv1.DaemonSet) bool {
	s := ds.Status
	return s.ObservedGeneration >= ds.Generation && s.DesiredNumberScheduled > 0 &&
		s.UpdatedNumberScheduled == s.DesiredNumberScheduled && s.NumberReady == s.DesiredNumberScheduled &&
		s.NumberUnavailable == 0
}

// DaemonAdmin GETs a path of kmesh-daemon's admin API: its socket in the
// node's /run (the DaemonSet's --admin-address), reached through the
// kubelet's view of the node's files (/proc/<pid>/root; /var/run is a
// link to /run, whose absolute target would resolve in this process's
// files, so the path names /run).
func (n *Node) DaemonAdmin(ctx context.Context, path string) ([]byte, error) {
	if n.kubelet == nil || n.kubelet.cmd.Process == nil {
		return nil, fmt.Errorf("the node's kubelet is not running")
	}
	sock := fmt.Sprintf("/proc/%d/root%s", n.kubelet.cmd.Process.Pid, kmeshAdminSocket)
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}, Timeout: 10 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://kmesh-daemon"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// FortioImage is the tests' server and load generator image.
var FortioImage = images.FortioRef
