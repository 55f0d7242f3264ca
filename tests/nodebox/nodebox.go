// Package nodebox builds a Kubernetes node in a box on one kernel: a "node"
// network namespace with a bridge, pods made of network namespaces that the
// real CNI chain wires up through libcni (loopback, bridge with host-local,
// then kmesh-cni), a cgroup v2 subtree and a bpffs pin directory for the data
// path, and kmesh-daemon running as a real process inside the node.
//
// The end-to-end tests, the demo and the benchmarks all stand on it. It
// needs root and touches nothing of the host: the bridge lives in the node
// namespace, pods have no default route, the programs attach to the box's
// own cgroup, and Close removes every namespace, pin, cgroup, folder and
// process it made, in order. Objects are named "<prefix>-<pid>-<n>...", and
// New first removes those a killed run of the same prefix left behind.
package nodebox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/internal/cgroupv2"
	"github.com/kmesh-go/kmesh/internal/podns"
)

// Config shapes a box.
type Config struct {
	// Prefix names the box's objects; keep it short and unique per program
	// ("kmdemo", "kme2e").
	Prefix string
	// NodeNS is an existing named network namespace to use as the node
	// (e.g. the one the control plane runs in); it is left in place. Empty
	// makes a loopback-only one.
	NodeNS string
	// Dir holds the box's files and logs. Empty makes a temporary folder,
	// removed by Close; a given Dir is kept.
	Dir string
	// Bins are the programs to run (see Build).
	Bins Bins
	// Subnet is the pod network (default 10.244.0.0/24); the bridge takes
	// its first address, pods get addresses from RangeStart on (default the
	// tenth), in order of AddPod on a fresh box.
	Subnet     netip.Prefix
	RangeStart netip.Addr
	// Kubeconfig makes kmesh-cni decide enrollment from the pod's and its
	// namespace's labels in the API server; without it DefaultEnroll
	// decides for every pod.
	Kubeconfig    string
	DefaultEnroll bool
	// Logf reports what the box does; nil is quiet.
	Logf func(format string, args ...any)
}

// Box is one node in a box.
type Box struct {
	cfg Config
	// NodeNS names the node's network namespace; NodeNSPath is its bind
	// mount.
	NodeNS, NodeNSPath string
	// Bridge is the pods' bridge in the node namespace; Gateway its address.
	Bridge  string
	Gateway netip.Addr
	// Cgroup is the cgroup v2 directory the data path attaches to.
	Cgroup string
	// PinDir is the data path's bpffs directory.
	PinDir string
	// Dir holds logs, state and sockets.
	Dir string
	// DaemonSocket is where kmesh-daemon serves kmesh-cni.
	DaemonSocket string
	// AdminAddr is kmesh-daemon's admin API, inside the node namespace.
	AdminAddr string
	// CNIStateDir is kmesh-cni's state folder.
	CNIStateDir string

	base     string
	cni      *libcni.CNIConfig
	chain    *libcni.NetworkConfigList
	chainOut *libcni.NetworkConfigList // kmesh-cni with defaultEnroll false
	lo       *libcni.NetworkConfigList
	podSeq   atomic.Int32
	mu       sync.Mutex
	procs    []*Proc
	pods     []*Pod
	undo     []func() error // in the order things were made
	joined   string         // our own cgroup before JoinCgroup, or ""
	outside  string         // OutsideCgroup, once made
	closed   bool
	closeErr error
}

var boxSeq atomic.Int32

const bridgeName = "kmbr0"

// New builds the box: the node namespace and its bridge, the cgroup, the pin
// directory's name (the daemon creates it), and the CNI configuration. On
// error, what was made is removed again.
func New(ctx context.Context, cfg Config) (_ *Box, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("a node in a box needs root (network namespaces, cgroups, BPF)")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "kmbox"
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = netip.MustParsePrefix("10.244.0.0/24")
	}
	if !cfg.RangeStart.IsValid() {
		cfg.RangeStart = nth(cfg.Subnet, 10)
	}
	if cfg.Bins.Daemon == "" || cfg.Bins.CNI == "" || len(cfg.Bins.CNIPath) == 0 {
		return nil, errors.New("nodebox: Bins are not set (see Build)")
	}
	sweep(cfg.Prefix, cfg.Logf)

	b := &Box{
		cfg:       cfg,
		base:      fmt.Sprintf("%s-%d-%d", cfg.Prefix, os.Getpid(), boxSeq.Add(1)),
		Bridge:    bridgeName,
		Gateway:   nth(cfg.Subnet, 1),
		AdminAddr: "127.0.0.1:15200",
	}
	defer func() {
		if err != nil {
			_ = b.Close()
		}
	}()

	b.Dir = cfg.Dir
	if b.Dir == "" {
		if b.Dir, err = os.MkdirTemp("", b.base+"-"); err != nil {
			return nil, err
		}
		dir := b.Dir
		b.onClose(func() error { return os.RemoveAll(dir) })
	} else if err := os.MkdirAll(b.Dir, 0o755); err != nil {
		return nil, err
	}
	b.DaemonSocket = b.path("daemon", "cni.sock")
	b.CNIStateDir = b.path("cni-state")
	for _, d := range []string{b.path("daemon"), b.CNIStateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}

	// The node's network namespace.
	b.NodeNS = cfg.NodeNS
	if b.NodeNS == "" {
		b.NodeNS = b.base + "-node"
		if err := addNetNS(b.NodeNS); err != nil {
			return nil, err
		}
		name := b.NodeNS
		b.onClose(func() error { return run("ip", "netns", "delete", name) })
	}
	b.NodeNSPath = filepath.Join(netnsDir, b.NodeNS)
	if _, err := os.Stat(b.NodeNSPath); err != nil {
		return nil, fmt.Errorf("node network namespace: %w", err)
	}

	// The bridge exists before the first ADD, with a MAC of its own: one
	// the plugin made would take its lowest port's MAC, which changes as
	// pods come and go.
	if err := b.addBridge(); err != nil {
		return nil, err
	}

	// The cgroup the data path attaches to, and the pin directory.
	mnt, err := cgroupv2.Mountpoint()
	if err != nil {
		return nil, err
	}
	b.Cgroup = filepath.Join(mnt, b.base)
	if err := os.Mkdir(b.Cgroup, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	b.onClose(b.removeCgroup)
	if err := ensureBPFFS(); err != nil {
		return nil, err
	}
	b.PinDir = filepath.Join(bpffsDir, b.base)
	b.onClose(func() error { return loader.RemovePins(b.PinDir) })

	if err := b.buildCNIConfig(); err != nil {
		return nil, err
	}
	cfg.Logf("node %s: bridge %s (%s), cgroup %s, pins %s", b.NodeNS, b.Bridge, b.Gateway, b.Cgroup, b.PinDir)
	return b, nil
}

func (b *Box) path(elem ...string) string { return filepath.Join(append([]string{b.Dir}, elem...)...) }

// onClose registers an undo step; Close runs them newest first.
func (b *Box) onClose(fn func() error) {
	b.mu.Lock()
	b.undo = append(b.undo, fn)
	b.mu.Unlock()
}

// Close removes everything the box made, newest first: pods (CNI DEL, then
// their namespaces), processes (SIGTERM, SIGKILL after 5 s), pins, the
// cgroup, the node namespace and the folder. Safe to call more than once.
func (b *Box) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return b.closeErr
	}
	b.closed = true
	pods := slices.Clone(b.pods)
	b.mu.Unlock()

	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := len(pods) - 1; i >= 0; i-- {
		errs = append(errs, b.RemovePod(ctx, pods[i]))
	}
	b.mu.Lock()
	procs := slices.Clone(b.procs)
	b.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		errs = append(errs, procs[i].Stop(5*time.Second))
	}
	if b.joined != "" {
		errs = append(errs, b.LeaveCgroup())
	}
	b.mu.Lock()
	undo := b.undo
	b.undo = nil
	b.mu.Unlock()
	for i := len(undo) - 1; i >= 0; i-- {
		errs = append(errs, undo[i]())
	}
	b.closeErr = errors.Join(errs...)
	return b.closeErr
}

// OutsideCgroup is a cgroup beside the box's, at the same depth, with
// nothing attached: a process there is outside the mesh but otherwise
// placed like one inside it. Benchmarks run their no-mesh paths there so
// both sides pay the same cgroup bookkeeping (pressure and CPU accounting
// are kept per level of the hierarchy on every context switch), as pods on
// a real node do, all of them in cgroups of the same depth. Made on first
// use; Close removes it.
func (b *Box) OutsideCgroup() (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.outside != "" {
		return b.outside, nil
	}
	dir := b.Cgroup + "-out"
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("create cgroup: %w", err)
	}
	b.outside = dir
	b.undo = append(b.undo, func() error { return removeCgroupDir(dir) })
	return dir, nil
}

func (b *Box) removeCgroup() error { return removeCgroupDir(b.Cgroup) }

func removeCgroupDir(dir string) error {
	if pids, _ := cgroupv2.Procs(dir); len(pids) > 0 {
		return fmt.Errorf("cgroup %s still holds processes %v; leaving it", dir, pids)
	}
	if err := os.Remove(dir); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove cgroup: %w", err)
	}
	return nil
}

// JoinCgroup moves this very process into the box's cgroup, so sockets it
// opens inside an enrolled pod's namespace go through the data path (tests
// that dial from pods in-process need it). LeaveCgroup, or Close, moves it
// back. While joined, programs this process starts land in the cgroup too
// (Start places its own where asked); leave before starting long-lived
// ones elsewhere, or Close finds the cgroup busy.
func (b *Box) JoinCgroup() error {
	prev, err := cgroupv2.Of(os.Getpid())
	if err != nil {
		return err
	}
	mnt, err := cgroupv2.Mountpoint()
	if err != nil {
		return err
	}
	if err := cgroupv2.Move(b.Cgroup, os.Getpid()); err != nil {
		return err
	}
	b.joined = filepath.Join(mnt, prev)
	return nil
}

// LeaveCgroup moves this process back where it was before JoinCgroup.
func (b *Box) LeaveCgroup() error {
	if b.joined == "" {
		return nil
	}
	err := cgroupv2.Move(b.joined, os.Getpid())
	b.joined = ""
	return err
}

func (b *Box) addBridge() error {
	return b.inNodeNetlink(func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: b.Bridge, HardwareAddr: net.HardwareAddr{0x02, 0x6b, 0x6d, 0, 0, 1}}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s in %s: %w", b.Bridge, b.NodeNS, err)
		}
		// With a given node namespace the bridge goes, the namespace stays.
		b.onClose(func() error {
			return b.inNodeNetlink(func(h *netlink.Handle) error {
				l, err := h.LinkByName(b.Bridge)
				if err != nil {
					return nil
				}
				return h.LinkDel(l)
			})
		})
		return h.LinkSetUp(br)
	})
}

func (b *Box) inNodeNetlink(fn func(h *netlink.Handle) error) error {
	ns, err := netns.GetFromPath(b.NodeNSPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	return fn(h)
}

// buildCNIConfig writes the chain as a kubelet would run it: the "lo"
// network (loopback), then bridge with host-local IPAM followed by
// kmesh-cni. Pods get no default route: only the pod subnet is reachable,
// so a destination the mesh does not rewrite fails inside the namespace.
func (b *Box) buildCNIConfig() error {
	raw, err := b.conflist(b.cfg.DefaultEnroll)
	if err != nil {
		return err
	}
	if err := os.WriteFile(b.path("10-kmesh-box.conflist"), raw, 0o644); err != nil {
		return err
	}
	if b.chain, err = libcni.NetworkConfFromBytes(raw); err != nil {
		return fmt.Errorf("conflist: %w", err)
	}
	if raw, err = b.conflist(false); err != nil {
		return err
	}
	if b.chainOut, err = libcni.NetworkConfFromBytes(raw); err != nil {
		return fmt.Errorf("conflist: %w", err)
	}
	if b.lo, err = libcni.NetworkConfFromBytes([]byte(`{"cniVersion":"1.1.0","name":"lo","plugins":[{"type":"loopback"}]}`)); err != nil {
		return err
	}
	b.cni = libcni.NewCNIConfigWithCacheDir(b.cfg.Bins.CNIPath, b.path("cni-cache"), nil)
	return nil
}

func (b *Box) conflist(defaultEnroll bool) ([]byte, error) {
	kmesh := map[string]any{
		"type":          "kmesh-cni",
		"daemonSocket":  b.DaemonSocket,
		"bpfDir":        b.PinDir,
		"stateDir":      b.CNIStateDir,
		"defaultEnroll": defaultEnroll,
		"failurePolicy": "open",
		"logFile":       b.path("kmesh-cni.log"),
		"logLevel":      "debug",
	}
	if b.cfg.Kubeconfig != "" {
		kmesh["kubeconfig"] = b.cfg.Kubeconfig
	}
	// One network name for both: they share host-local's reservations.
	return json.MarshalIndent(map[string]any{
		"cniVersion": "1.1.0",
		"name":       "kmesh-box",
		"plugins": []any{
			map[string]any{
				"type":      "bridge",
				"bridge":    b.Bridge,
				"isGateway": true,
				"ipam": map[string]any{
					"type": "host-local",
					"ranges": [][]map[string]string{{{
						"subnet":     b.cfg.Subnet.String(),
						"rangeStart": b.cfg.RangeStart.String(),
						"gateway":    b.Gateway.String(),
					}}},
					"dataDir": b.path("ipam"),
				},
			},
			kmesh,
		},
	}, "", "  ")
}

// InNode runs fn on a thread inside the node's network namespace; programs
// it starts run there too.
func (b *Box) InNode(fn func() error) error { return podns.Do(b.NodeNSPath, fn) }

// DialNode connects from the node's network namespace (to the daemon's
// admin API, or the control plane on the node's loopback).
func (b *Box) DialNode(ctx context.Context, network, addr string) (net.Conn, error) {
	return dialIn(ctx, b.NodeNSPath, network, addr)
}

// dialIn connects from a thread inside the network namespace at nsPath.
func dialIn(ctx context.Context, nsPath, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := podns.Do(nsPath, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

func addNetNS(name string) error {
	if err := run("ip", "netns", "add", name); err != nil {
		return err
	}
	if err := run("ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		_ = run("ip", "netns", "delete", name)
		return err
	}
	return nil
}

func ensureBPFFS() error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// id parent major:minor root mountpoint options ... - fstype ...
		f := strings.Fields(line)
		if i := slices.Index(f, "-"); i > 4 && i+1 < len(f) && f[i+1] == "bpf" && f[4] == bpffsDir {
			return nil
		}
	}
	return fmt.Errorf("bpffs is not mounted at %s (.ci/deps mounts it)", bpffsDir)
}

// nth is the n-th address of a prefix.
func nth(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr()
	for range n {
		a = a.Next()
	}
	return a
}
