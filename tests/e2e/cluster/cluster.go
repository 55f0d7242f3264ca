// Package cluster is the running system the end-to-end suites that carry
// traffic stand on: the real control plane (etcd, kube-apiserver, istiod)
// on the loopback of a "node" network namespace, a node in a box there
// (bridge, cgroup, pins, the real CNI chain with kmesh-cni reading labels
// from the apiserver) and kmesh-daemon as a real process, on istiod's TLS
// xDS with a service-account token, as a cluster node runs it.
//
// There is no kubelet, scheduler or controller-manager: AddPod creates the
// Pod, runs the chain for its sandbox, starts the servers the test gives it
// inside the pod's namespace and writes its status; EndpointSlice writes
// what the EndpointSlice controller would. Everything goes when the test
// ends, also on failure, and a failed test gets the ends of istiod's, the
// daemon's and kmesh-cni's logs.
package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/tests/e2e/controlplane"
	"github.com/kmesh-go/kmesh/tests/nodebox"
)

// The node the daemon runs as, and where it is.
const (
	NodeName = "node-a"
	Region   = "eu-west-1"
	Zone     = "eu-west-1a"
	// DaemonNamespace and DaemonServiceAccount are the daemon's identity
	// for istiod.
	DaemonNamespace      = "kmesh-system"
	DaemonServiceAccount = "kmesh"
)

// Options shape the cluster.
type Options struct {
	// Prefix names the node namespace, the work folder and the box's
	// objects ("kme2e"); keep it short and unique per suite.
	Prefix string
	// GatewayAPI applies the Gateway API CRDs (experimental channel)
	// before istiod starts, and turns istiod's waypoint deployment
	// controller off: its templates need injection config this setup
	// lacks, so the test makes the waypoint's objects itself.
	GatewayAPI bool
	// IstiodEnv adds istiod environment variables.
	IstiodEnv []string
	// Fortio also installs fortio.
	Fortio bool
	// OtherNodes are more Node objects, name -> zone in Region, for pods
	// "elsewhere".
	OtherNodes map[string]string
	// Timeout bounds the whole test (default 15 minutes).
	Timeout time.Duration
}

// Cluster is the running system.
type Cluster struct {
	Ctx context.Context
	// Dir is the test's work folder (removed when the test ends).
	Dir        string
	CP         *controlplane.ControlPlane
	K8s        kubernetes.Interface
	Dyn        dynamic.Interface
	Box        *nodebox.Box
	Bins       nodebox.Bins
	Daemon     *nodebox.Proc
	DaemonArgs []string
	// TokenFile and RootCertFile are the daemon's istiod credentials;
	// RootCertFile serves every client of istiod here.
	TokenFile, RootCertFile string
}

// Start brings up the control plane in a node namespace, the node's box
// and kmesh-daemon connected to istiod over TLS, then moves this process
// into the box's cgroup so pods can dial in-process through the data
// path. It fails the test on any error.
func Start(t *testing.T, o Options) *Cluster {
	t.Helper()
	if o.Timeout == 0 {
		o.Timeout = 15 * time.Minute
	}
	sandbox, dir := controlplane.Sandbox(t, "kmesh-e2e-"+o.Prefix)
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	t.Cleanup(cancel)
	c := &Cluster{Ctx: ctx, Dir: dir}

	start := time.Now()
	var err error
	c.Bins, err = nodebox.Build(ctx, nodebox.BuildOptions{Out: filepath.Join(dir, "bin"), Fortio: o.Fortio, Logf: t.Logf})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	t.Logf("binaries built in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	cpo := controlplane.Options{Dir: filepath.Join(dir, "controlplane"), NetNS: sandbox, IstiodEnv: o.IstiodEnv}
	if o.GatewayAPI {
		if cpo.ExtraCRDFiles, err = controlplane.GatewayAPICRDs(ctx, "experimental"); err != nil {
			t.Fatal(err)
		}
		cpo.IstiodEnv = append([]string{"PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER=false"}, cpo.IstiodEnv...)
	}
	c.CP, err = controlplane.Start(ctx, cpo)
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("end of istiod.log:\n%s", c.CP.LogTail("istiod", 4000))
		}
		if err := c.CP.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	c.K8s = c.CP.Clientset
	if c.Dyn, err = dynamic.NewForConfig(c.CP.RESTConfig); err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane ready in %s (node namespace %s)", time.Since(start).Round(time.Millisecond), sandbox)

	// The Nodes, before the daemon: it reads its locality from its Node.
	nodes := map[string]string{NodeName: Zone}
	for n, z := range o.OtherNodes {
		nodes[n] = z
	}
	for name, zone := range nodes {
		_, err := c.K8s.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			corev1.LabelTopologyRegion: Region, corev1.LabelTopologyZone: zone, corev1.LabelHostname: name,
		}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create Node %s: %v", name, err)
		}
	}

	c.Box, err = nodebox.New(ctx, nodebox.Config{
		Prefix:     o.Prefix,
		NodeNS:     sandbox,
		Dir:        filepath.Join(dir, "node"),
		Bins:       c.Bins,
		Kubeconfig: c.CP.Kubeconfig,
		Logf:       t.Logf,
	})
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if c.Daemon != nil {
				t.Logf("end of daemon.log:\n%s", nodebox.Tail(c.Daemon.LogPath, 6000))
			}
			t.Logf("end of kmesh-cni.log:\n%s", nodebox.Tail(filepath.Join(c.Box.Dir, "kmesh-cni.log"), 3000))
		}
		if err := c.Box.Close(); err != nil {
			t.Errorf("remove the node: %v", err)
		}
	})

	// The daemon's identity for istiod: a token for its service account
	// with audience istio-ca (TokenRequest), and istiod's root cert from
	// the ConfigMap istiod writes into every namespace.
	c.TokenFile = filepath.Join(c.Box.Dir, "istio-token")
	if err := c.WriteToken(DaemonNamespace, DaemonServiceAccount, c.TokenFile); err != nil {
		t.Fatal(err)
	}
	root, err := c.CP.RootCertPEM(ctx, DaemonNamespace)
	if err != nil {
		t.Fatal(err)
	}
	c.RootCertFile = filepath.Join(c.Box.Dir, "root-cert.pem")
	if err := os.WriteFile(c.RootCertFile, root, 0o644); err != nil {
		t.Fatal(err)
	}
	c.DaemonArgs = []string{
		"--xds-address", c.CP.IstiodTLSAddr,
		"--xds-root-cert", c.RootCertFile,
		"--xds-token", c.TokenFile,
		"--xds-server-name", controlplane.IstiodServerName,
		"--node-name", NodeName,
		"--node-ip", c.Box.Gateway.String(),
		"--cluster-id", "Kubernetes",
		"--kubeconfig", c.CP.Kubeconfig,
		"--pod-name", "kmesh-daemon-" + NodeName,
		"--pod-namespace", DaemonNamespace,
		"--service-account", DaemonServiceAccount,
		"--log-level", "debug",
	}
	start = time.Now()
	c.StartDaemon(t)
	t.Logf("kmesh-daemon ready in %s: TLS xDS from istiod, first complete state in the kernel", time.Since(start).Round(time.Millisecond))

	st := c.Status(t)
	if st["connected"] != true || !strings.HasPrefix(fmt.Sprint(st["source"]), "xds:") {
		t.Fatalf("daemon status: %v", st)
	}
	if got, want := fmt.Sprint(st["locality"]), Region+"/"+Zone; got != want {
		t.Fatalf("daemon locality %q, want %q from Node %s's labels", got, want, NodeName)
	}

	// This process dials from the pods in-process: its sockets must pass
	// the programs attached to the box's cgroup.
	if err := c.Box.JoinCgroup(); err != nil {
		t.Fatal(err)
	}
	return c
}

// WriteToken writes a token for a service account, audience istio-ca, as
// a pod's projected token volume holds it.
func (c *Cluster) WriteToken(ns, sa, path string) error {
	token, err := c.CP.ServiceAccountToken(c.Ctx, ns, sa, controlplane.IstioCAAudience)
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(token), 0o600)
}

// StartDaemon starts kmesh-daemon with DaemonArgs and waits until it is
// ready.
func (c *Cluster) StartDaemon(t *testing.T) {
	t.Helper()
	d, err := c.Box.StartDaemon(c.DaemonArgs...)
	if err != nil {
		t.Fatal(err)
	}
	c.Daemon = d
	ctx, cancel := context.WithTimeout(c.Ctx, 60*time.Second)
	defer cancel()
	if err := c.Box.WaitDaemonReady(ctx, d); err != nil {
		t.Fatal(err)
	}
}

// Status is the daemon's /debug/status.
func (c *Cluster) Status(t *testing.T) map[string]any {
	t.Helper()
	var st map[string]any
	if err := c.Box.AdminJSON(c.Ctx, "/debug/status", &st); err != nil {
		t.Fatalf("daemon status: %v", err)
	}
	return st
}

// Namespace creates a namespace with labels.
func (c *Cluster) Namespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := c.K8s.CoreV1().Namespaces().Create(c.Ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

// MapDump is the part of the daemon's /debug/maps the suites read.
type MapDump struct {
	Services []struct {
		ID        uint32
		VIPs      []string
		Endpoints [][]uint32
		Waypoint  string
	} `json:"services"`
	Backends []struct {
		ID        uint32
		Addresses []string
		Waypoint  string
	} `json:"backends"`
	Enrolled map[string]struct {
		Waypoint   bool   `json:"waypoint"`
		WorkloadID uint32 `json:"workloadId"`
	} `json:"enrolled"`
	Stats map[string]uint64 `json:"stats"`
}

// Maps is the daemon's /debug/maps.
func (c *Cluster) Maps(t *testing.T) MapDump {
	t.Helper()
	var d MapDump
	if err := c.Box.AdminJSON(c.Ctx, "/debug/maps", &d); err != nil {
		t.Fatalf("/debug/maps: %v", err)
	}
	return d
}

// Enrollment is the pod's entry in the manage map, if any.
func (c *Cluster) Enrollment(t *testing.T, p *Pod) (waypoint, ok bool) {
	t.Helper()
	cookie, err := podns.Cookie(p.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := c.Maps(t).Enrolled[strconv.FormatUint(cookie, 10)]
	return e.Waypoint, ok
}

// Enrolled reports whether the pod's netns cookie is in the manage map.
func (c *Cluster) Enrolled(t *testing.T, p *Pod) bool {
	t.Helper()
	_, ok := c.Enrollment(t, p)
	return ok
}

// ConfigDump is the part of the daemon's /debug/config_dump the suites
// read.
type ConfigDump struct {
	Services  []ServiceDump `json:"services"`
	Workloads []struct {
		UID      string   `json:"uid"`
		Name     string   `json:"name"`
		Healthy  bool     `json:"healthy"`
		Policies []string `json:"authorizationPolicies"`
		Locality struct {
			Region, Zone string
		} `json:"locality"`
		Addresses []string `json:"addresses"`
		Waypoint  *Gateway `json:"waypoint"`
	} `json:"workloads"`
	Policies []struct {
		Key    string `json:"key"`
		Action int    `json:"action"` // 0 ALLOW, 1 DENY
		Scope  int    `json:"scope"`
	} `json:"policies"`
}

// ServiceDump is one service of the daemon's config dump.
type ServiceDump struct {
	Key           string   `json:"key"`
	Backing       []string `json:"backing"`
	LoadBalancing struct {
		Mode              int   `json:"mode"`
		RoutingPreference []int `json:"routingPreference"`
	} `json:"loadBalancing"`
	Waypoint *Gateway `json:"waypoint"`
}

// Gateway is a waypoint as the daemon's model holds it: a service key
// (namespace/hostname) or an address.
type Gateway struct {
	Address string `json:"address"`
	Service string `json:"service"`
	Port    int    `json:"port"`
}

// Config is the daemon's /debug/config_dump.
func (c *Cluster) Config(t *testing.T) ConfigDump {
	t.Helper()
	var d ConfigDump
	if err := c.Box.AdminJSON(c.Ctx, "/debug/config_dump", &d); err != nil {
		t.Fatalf("/debug/config_dump: %v", err)
	}
	return d
}

// Eventually polls cond every 10ms until it holds or timeout passes, and
// returns how long it took.
func Eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	var why string
	for {
		var ok bool
		if ok, why = cond(); ok {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %s: %s", what, timeout, why)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Keys lists a map's keys.
func Keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
