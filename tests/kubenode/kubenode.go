// Package kubenode runs a real Kubernetes node on this machine: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler and istiod (the
// control plane of tests/e2e/controlplane), Debian's containerd and runc,
// and a kubelet built from the pinned Kubernetes module, with the CNI
// reference plugins (bridge, host-local, loopback) as the node's network.
// Pods are made by the kubelet from images loaded into containerd (no
// registry); kmesh is installed on it the way a user does, with kubectl
// apply of install/kubernetes.
//
// The node is a box on the machine, like tests/nodebox's:
//   - a network namespace with loopback and one interface carrying the
//     node's IP; everything listens there, pods hang off its bridge and
//     have no route off the machine (the namespace has none);
//   - a mount namespace (see mountNS) in which /run, /etc, /opt and
//     /var/log are the node's own, so /etc/cni/net.d and /opt/cni/bin are
//     the node's, not the machine's;
//   - a cgroup /<name> in every hierarchy holding the kubelet's kubepods
//     tree and the runtime.
//
// Close ends every process (by pid, then the node's cgroups), drops the
// namespaces, removes the cgroups and the folder, and writes back the
// machine-wide sysctls the kubelet changed. Objects are named
// "<prefix>-<pid>-<n>"; Start first removes what a killed run left.
package kubenode

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/kmesh-go/kmesh/tests/e2e/controlplane"
	"github.com/kmesh-go/kmesh/tests/images"
)

// Config shapes a node.
type Config struct {
	// Prefix names the node's objects; default "kmnode".
	Prefix string
	// BinDir holds kube-apiserver, pilot-discovery, kubelet,
	// kube-controller-manager, kube-scheduler and kubectl (build.sh).
	// Default: KMESH_E2E_BIN, else tests/e2e/.bin.
	BinDir string
	// Images are tarballs to load into containerd before the kubelet
	// starts; the pause image among them is required.
	Images []string
	// CNIPluginsDir holds the CNI reference plugins (bridge, host-local,
	// loopback); see nodebox.Build.
	CNIPluginsDir string
	// PodSubnet is the node's pod network (default 10.244.0.0/23).
	PodSubnet netip.Prefix
	// ExtraCRDFiles are CRD manifests applied with Istio's before istiod
	// starts (Prepare: the Gateway API's, for waypoints).
	ExtraCRDFiles []string
	// Logf reports progress; nil is quiet.
	Logf func(format string, args ...any)
}

// Node is a running node in a box.
type Node struct {
	// Name is the Node object's name; IP its InternalIP.
	Name, IP string
	// NetNS is the node's network namespace (named, under /run/netns);
	// NetNSPath its file.
	NetNS, NetNSPath string
	// Dir holds configuration, state and logs: containerd.log,
	// kubelet.log, and the control plane's etcd.log, kube-apiserver.log,
	// istiod.log, kube-controller-manager.log, kube-scheduler.log.
	Dir string
	// CP is the control plane; Clientset talks to it from this process.
	CP        *controlplane.ControlPlane
	Clientset *kubernetes.Clientset
	// CgroupRoot is the kubelet's cgroupRoot, "/<name>"; PodsCgroup the
	// cgroup v2 directory of its kubepods tree, where kmesh's programs
	// attach.
	CgroupRoot, PodsCgroup string
	// PodSubnet is the pods' network.
	PodSubnet netip.Prefix

	cfg           Config
	base          string
	mnt           *mountNS
	host          *hostState
	runtimeCgroup string
	containerd    *proc
	kubelet       *proc
	mu            sync.Mutex
	undo          []func() error
	closed        bool
	closeErr      error
}

var nodeSeq atomic.Int32

// Node-side addresses, all inside the node's network namespace.
const (
	nodeLink   = "node0"
	nodeIPCIDR = "10.250.0.2/24"
	// apiServerVIP is the "kubernetes" Service's ClusterIP (first of
	// controlplane.ServiceCIDR); pods with hostNetwork (the kmesh
	// DaemonSet) reach the apiserver there.
	apiServerVIP = "10.96.0.1"
	// pauseImage is containerd's sandbox image.
	pauseImage = images.PauseRef
	// istiodPort is istiod's xDS port (TLS, tokens); pods reach it at the
	// node's IP (IstiodForPods).
	istiodPort = "15012"
)

// Start brings a node up: control plane, containerd, kubelet, until the
// Node is Ready. On error, what was made is removed again.
func Start(ctx context.Context, cfg Config) (_ *Node, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("a node needs root (namespaces, cgroups, containerd)")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "kmnode"
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.BinDir == "" {
		cfg.BinDir = os.Getenv("KMESH_E2E_BIN")
	}
	if cfg.BinDir == "" {
		cfg.BinDir = filepath.Join(images.RepoRoot(), "tests", "e2e", ".bin")
	}
	if !cfg.PodSubnet.IsValid() {
		cfg.PodSubnet = netip.MustParsePrefix("10.244.0.0/23")
	}
	for _, name := range []string{"kubelet", "kubectl", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, name)); err != nil {
			return nil, fmt.Errorf("%s not found in %s (build it with tests/e2e/tools/build.sh): %w", name, cfg.BinDir, err)
		}
	}
	for _, tool := range []string{"containerd", "runc", "ctr", "nsenter", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (apt-get install containerd runc; .ci/deps does): %w", tool, err)
		}
	}
	sweep(cfg.Prefix, cfg.Logf)

	n := &Node{
		cfg:       cfg,
		base:      fmt.Sprintf("%s-%d-%d", cfg.Prefix, os.Getpid(), nodeSeq.Add(1)),
		Name:      "kmnode",
		PodSubnet: cfg.PodSubnet,
	}
	n.IP = netip.MustParsePrefix(nodeIPCIDR).Addr().String()
	n.CgroupRoot = "/" + n.base
	defer func() {
		if err != nil {
			_ = n.Close()
		}
	}()
	start := time.Now()

	// The folder, and the machine's state the kubelet will change.
	n.Dir = filepath.Join(os.TempDir(), n.base)
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		return nil, err
	}
	n.onClose(func() error { return os.RemoveAll(n.Dir) })
	if n.host, err = recordHost(); err != nil {
		return nil, err
	}
	if err := n.host.save(n.path("host-state.json")); err != nil {
		return nil, err
	}
	n.onClose(n.restoreHost)

	if err := n.makeNetNS(); err != nil {
		return nil, err
	}
	if err := n.makeCgroups(); err != nil {
		return nil, err
	}

	// The control plane, on the node's loopback.
	cfg.Logf("node %s: control plane", n.base)
	cp, err := controlplane.Start(ctx, controlplane.Options{
		Dir: n.path("controlplane"), NetNS: n.NetNS, BinDir: cfg.BinDir, Nodes: true, ExtraCRDFiles: cfg.ExtraCRDFiles,
	})
	if err != nil {
		return nil, err
	}
	n.CP, n.Clientset = cp, cp.Clientset
	n.onClose(cp.Stop)
	if err := cp.StartControllers(ctx); err != nil {
		return nil, err
	}

	// The node's files, then its mount namespace over them.
	if err := n.writeNodeFiles(); err != nil {
		return nil, err
	}
	if n.mnt, err = makeMountNS(n.Dir); err != nil {
		return nil, err
	}
	n.onClose(n.mnt.remove)

	cfg.Logf("node %s: containerd", n.base)
	n.onClose(n.stopRuntime)
	if err := n.startContainerd(ctx); err != nil {
		return nil, err
	}
	if err := n.ImportImages(ctx, cfg.Images...); err != nil {
		return nil, err
	}
	cfg.Logf("node %s: kubelet", n.base)
	if err := n.startKubelet(ctx); err != nil {
		return nil, err
	}
	if err := n.waitNodeReady(ctx, start); err != nil {
		return nil, err
	}
	cfg.Logf("node %s Ready (%s) in %s", n.Name, n.IP, time.Since(start).Round(time.Millisecond))
	return n, nil
}

func (n *Node) path(elem ...string) string {
	return filepath.Join(append([]string{n.Dir}, elem...)...)
}

func (n *Node) onClose(fn func() error) {
	n.mu.Lock()
	n.undo = append(n.undo, fn)
	n.mu.Unlock()
}

// makeNetNS makes the node's network namespace: loopback, an interface
// with the node's IP (one end of a veth pair whose other end is in the
// namespace too and has no address: nothing leaves through it; this
// kernel has no dummy device), a route for the
// Service range, and the one rule of kube-proxy's this node needs: the
// "kubernetes" Service to the apiserver on loopback, for in-cluster clients
// with hostNetwork. Pods (a waypoint) reach istiod's xDS port, which
// listens on loopback too, at the node's IP: a DNAT to loopback for
// connections that come in from the pods' bridge (route_localnet lets
// them be routed to 127/8; the kubelet's KUBE-FIREWALL lets DNATed ones
// through).
func (n *Node) makeNetNS() error {
	n.NetNS = n.base
	n.NetNSPath = filepath.Join("/run/netns", n.NetNS)
	if err := run("ip", "netns", "add", n.NetNS); err != nil {
		return err
	}
	n.onClose(func() error { return run("ip", "netns", "delete", n.NetNS) })
	in := func(args ...string) error { return run("ip", append([]string{"netns", "exec", n.NetNS}, args...)...) }
	for _, args := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", nodeLink, "type", "veth", "peer", "name", nodeLink + "-end"},
		{"ip", "addr", "add", nodeIPCIDR, "dev", nodeLink},
		{"ip", "link", "set", nodeLink + "-end", "up"},
		{"ip", "link", "set", nodeLink, "up"},
		{"ip", "route", "add", controlplane.ServiceCIDR, "dev", nodeLink},
		{"iptables", "-t", "nat", "-A", "OUTPUT", "-d", apiServerVIP + "/32", "-p", "tcp", "--dport", "443",
			"-j", "DNAT", "--to-destination", "127.0.0.1:6443"},
		{"sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"},
		{"iptables", "-t", "nat", "-A", "PREROUTING", "-d", n.IP + "/32", "-p", "tcp", "--dport", istiodPort,
			"-j", "DNAT", "--to-destination", "127.0.0.1:" + istiodPort},
	} {
		if err := in(args...); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) makeCgroups() error {
	n.onClose(func() error { return removeCgroupRoot(n.base) })
	if err := makeCgroupRoot(n.base); err != nil {
		return err
	}
	u, err := unifiedMount()
	if err != nil {
		return err
	}
	n.runtimeCgroup = filepath.Join(u, n.base, "runtime")
	n.PodsCgroup = filepath.Join(u, n.base, "kubepods")
	return os.Mkdir(n.runtimeCgroup, 0o755)
}

// writeNodeFiles puts the node's network (the CNI reference plugins and
// the primary conflist) where the overlays will show them at
// /opt/cni/bin and /etc/cni/net.d.
func (n *Node) writeNodeFiles() error {
	bin := filepath.Join(upperDir(n.Dir, "/opt"), "cni", "bin")
	conf := filepath.Join(upperDir(n.Dir, "/etc"), "cni", "net.d")
	for _, d := range []string{bin, conf, n.path("ipam")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		b, err := os.ReadFile(filepath.Join(n.cfg.CNIPluginsDir, p))
		if err != nil {
			return fmt.Errorf("CNI reference plugin: %w", err)
		}
		if err := os.WriteFile(filepath.Join(bin, p), b, 0o755); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(conf, PrimaryConflist),
		[]byte(primaryConflist(n.PodSubnet.String(), n.path("ipam"))), 0o644)
}

// stopRuntime stops the kubelet and containerd, then ends every process
// left under the node's cgroups (shims, containers).
func (n *Node) stopRuntime() error {
	var errs []error
	if n.kubelet != nil {
		errs = append(errs, n.kubelet.stop(10*time.Second))
	}
	if n.containerd != nil {
		errs = append(errs, n.containerd.stop(10*time.Second))
	}
	errs = append(errs, killCgroupRoot(n.base))
	return errors.Join(errs...)
}

func (n *Node) restoreHost() error {
	changed, err := n.host.restore()
	for _, c := range changed {
		n.cfg.Logf("restored %s", c)
	}
	return err
}

// Close removes the node, newest first: processes, control plane, mount
// namespace, cgroups, network namespace, folder; then the machine's
// sysctls. Safe to call more than once.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return n.closeErr
	}
	n.closed = true
	undo := n.undo
	n.undo = nil
	n.mu.Unlock()
	var errs []error
	for i := len(undo) - 1; i >= 0; i-- {
		errs = append(errs, undo[i]())
	}
	n.closeErr = errors.Join(errs...)
	return n.closeErr
}

// LogTail is the end of one of the node's logs ("kubelet", "containerd",
// or a control plane component).
func (n *Node) LogTail(name string, bytes int) string {
	switch name {
	case "kubelet", "containerd":
		return tail(n.path(name+".log"), bytes)
	}
	return n.CP.LogTail(name, int64(bytes))
}
