package main

// The kernel test harness: a data path loaded into a fresh cgroup and pin
// directory, a "node" network namespace where the whole CNI chain runs
// (libcni executes the reference plugins and kmesh-cni as subprocesses
// from a thread inside it, so the bridge never touches the host), a fake
// daemon on a unix socket, and pods made of namespaces the test created.

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
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/cnistate"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/internal/fakedaemon"
)

const (
	bridgeName = "kmbr0"
	subnet     = "10.244.0.0/16"
)

type env struct {
	t      *testing.T
	cg     *testbed.Cgroup
	pins   string
	maps   *maps.Maps
	manage *maps.Manage
	node   string // node netns name
	dir    string
	state  string
	daemon *fakedaemon.Daemon
	cni    *libcni.CNIConfig
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testbed.Require(t)
	paths := pluginPaths(t)
	e := &env{t: t}
	e.cg = testbed.NewCgroup(t)
	var dp *loader.Datapath
	dp, e.pins = testbed.Datapath(t, e.cg, loader.Sizes{})
	m, err := maps.New(dp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	e.maps, e.manage = m, maps.NewManage(dp)
	e.node = testbed.NewNamespace(t)
	// The bridge exists before the first ADD, with a MAC of its own: a
	// bridge the plugin makes takes its lowest port's MAC, which changes
	// as pods come and go, and the bridge plugin's CHECK then fails.
	if err := e.inNode(func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName, HardwareAddr: net.HardwareAddr{0x02, 0x6b, 0x6d, 0, 0, 1}}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		return netlink.LinkSetUp(br)
	}); err != nil {
		t.Fatalf("create the node's bridge: %v", err)
	}
	// The plugins' files (kmesh-cni's records, host-local's leases,
	// libcni's cache, the log) go to a tmpfs of the test's own. kmesh-cni's
	// records live in /var/run/kmesh/cni on a node, which is tmpfs; and on
	// the disk the test's folder is on, ext4 makes every new file scan the
	// inodes deleted in the last seconds to minutes: thousands when tests
	// and benchmarks add hundreds of pods a minute, which slows every
	// plugin by milliseconds and varies from run to run.
	e.dir = t.TempDir()
	if err := unix.Mount("kmesh-cni-test", e.dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700,size=64m"); err != nil {
		t.Fatalf("mount a tmpfs for the plugins' files: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(e.dir, unix.MNT_DETACH) })
	e.state = filepath.Join(e.dir, "state")
	e.daemon = fakedaemon.Start(t, fakedaemon.Socket(t))
	e.cni = libcni.NewCNIConfigWithCacheDir(paths, filepath.Join(e.dir, "cache"), nil)
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(e.dir, "kmesh-cni.log")); err == nil {
				t.Logf("kmesh-cni log:\n%s", b)
			}
		}
	})
	return e
}

// netOpts shapes the conflist.
type netOpts struct {
	version       string
	policy        string
	defaultEnroll bool
	kubeconfig    string
	noKmesh       bool   // the chain without kmesh-cni (benchmark baseline)
	emptyPlugin   bool   // the benchmarks' control plugin where kmesh-cni would be
	kmeshType     string // default kmesh-cni (the benchmark: also kmesh-cni-grpc)
	socket        string // default: the fake daemon's
	logLevel      string // default: debug (benchmarks: info, as installed)
	name          string // the network's name; default kmtest
	subnet        string // host-local's range; default subnet
}

// conflist is bridge (host-local IPAM) + portmap + kmesh-cni.
func (e *env) conflist(o netOpts) *libcni.NetworkConfigList {
	e.t.Helper()
	if o.version == "" {
		o.version = "1.0.0"
	}
	if o.socket == "" {
		o.socket = e.daemon.Socket
	}
	if o.logLevel == "" {
		o.logLevel = "debug"
	}
	if o.name == "" {
		o.name = "kmtest"
	}
	if o.subnet == "" {
		o.subnet = subnet
	}
	plugins := []any{
		map[string]any{"type": "bridge", "bridge": bridgeName, "ipam": map[string]any{
			"type": "host-local", "ranges": [][]map[string]string{{{"subnet": o.subnet}}}, "dataDir": filepath.Join(e.dir, "ipam"),
		}},
		map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
	}
	switch {
	case o.emptyPlugin:
		plugins = append(plugins, map[string]any{"type": emptyPluginName})
	case !o.noKmesh:
		if o.kmeshType == "" {
			o.kmeshType = "kmesh-cni"
		}
		k := map[string]any{"type": o.kmeshType, "daemonSocket": o.socket, "bpfDir": e.pins, "stateDir": e.state,
			"defaultEnroll": o.defaultEnroll, "logFile": filepath.Join(e.dir, "kmesh-cni.log"), "logLevel": o.logLevel}
		if o.policy != "" {
			k["failurePolicy"] = o.policy
		}
		if o.kubeconfig != "" {
			k["kubeconfig"] = o.kubeconfig
		}
		plugins = append(plugins, k)
	}
	b, err := json.Marshal(map[string]any{"cniVersion": o.version, "name": o.name, "plugins": plugins})
	if err != nil {
		e.t.Fatal(err)
	}
	list, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		e.t.Fatal(err)
	}
	return list
}

// loopback is the runtime's separate "lo" network, as kubelets run it.
func (e *env) loopback(version string) *libcni.NetworkConfigList {
	e.t.Helper()
	list, err := libcni.NetworkConfFromBytes([]byte(fmt.Sprintf(`{"cniVersion":%q,"name":"lo","plugins":[{"type":"loopback"}]}`, version)))
	if err != nil {
		e.t.Fatal(err)
	}
	return list
}

// pod is a sandbox: a namespace the test made, and what the chain did.
type pod struct {
	*testbed.Pod
	rt            *libcni.RuntimeConf
	result        *current.Result
	resultVersion string
	hostVeth      string
}

func (e *env) newPod(name string) *pod {
	e.t.Helper()
	ns := testbed.NewNamespace(e.t)
	id := "c-" + ns + "-" + name
	return &pod{
		Pod: &testbed.Pod{Name: name, NSPath: testbed.NSPath(ns)},
		rt: &libcni.RuntimeConf{ContainerID: id, NetNS: testbed.NSPath(ns), IfName: "eth0", Args: [][2]string{
			{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}, {"K8S_POD_UID", "uid-" + name},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
		}},
	}
}

// inNode runs fn on a thread inside the node namespace: plugins libcni
// starts from it run there too.
func (e *env) inNode(fn func() error) error {
	return podns.Do(testbed.NSPath(e.node), fn)
}

// add runs ADD of the loopback network and of list for p.
func (e *env) add(list *libcni.NetworkConfigList, p *pod) error {
	var res types.Result
	err := e.inNode(func() error {
		if _, err := e.cni.AddNetworkList(context.Background(), e.loopback(list.CNIVersion), p.rt); err != nil {
			return fmt.Errorf("loopback: %w", err)
		}
		var err error
		res, err = e.cni.AddNetworkList(context.Background(), list, p.rt)
		return err
	})
	if err != nil {
		return err
	}
	p.resultVersion = res.Version()
	if p.result, err = current.NewResultFromResult(res); err != nil {
		return err
	}
	for _, ip := range p.result.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok && a.Unmap().Is4() {
			p.IP4 = a.Unmap()
		}
	}
	for _, i := range p.result.Interfaces {
		if i.Sandbox == "" && i.Name != bridgeName {
			p.hostVeth = i.Name
		}
	}
	return nil
}

func (e *env) mustAdd(list *libcni.NetworkConfigList, p *pod) {
	e.t.Helper()
	if err := e.add(list, p); err != nil {
		e.t.Fatalf("ADD %s: %v", p.Name, err)
	}
	if !p.IP4.IsValid() || p.hostVeth == "" {
		e.t.Fatalf("ADD %s: result without an IPv4 address or host veth: %+v", p.Name, p.result)
	}
}

func (e *env) del(list *libcni.NetworkConfigList, p *pod) error {
	return e.inNode(func() error { return e.cni.DelNetworkList(context.Background(), list, p.rt) })
}

func (e *env) check(list *libcni.NetworkConfigList, p *pod) error {
	return e.inNode(func() error { return e.cni.CheckNetworkList(context.Background(), list, p.rt) })
}

func (e *env) gc(list *libcni.NetworkConfigList, valid ...*pod) error {
	args := &libcni.GCArgs{}
	for _, p := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.rt.ContainerID, IfName: p.rt.IfName})
	}
	return e.inNode(func() error { return e.cni.GCNetworkList(context.Background(), list, args) })
}

func (e *env) status(list *libcni.NetworkConfigList) error {
	return e.inNode(func() error { return e.cni.GetStatusNetworkList(context.Background(), list) })
}

func (e *env) cookie(p *pod) uint64 {
	e.t.Helper()
	c, err := podns.Cookie(p.NSPath)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) enrolled(cookie uint64) bool {
	e.t.Helper()
	_, ok, err := e.manage.Get(cookie)
	if err != nil {
		e.t.Fatal(err)
	}
	return ok
}

// ifindex looks an interface up in the node namespace.
func (e *env) ifindex(name string) int {
	e.t.Helper()
	var idx int
	if err := e.inNode(func() error {
		ifc, err := net.InterfaceByName(name)
		if err == nil {
			idx = ifc.Index
		}
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	return idx
}

// requireEnrolled checks the kernel side of an enrolled pod: its cookie in
// the manage map, the tc program live on its host veth.
func (e *env) requireEnrolled(p *pod) {
	e.t.Helper()
	if c := e.cookie(p); !e.enrolled(c) {
		e.t.Fatalf("pod %s: netns cookie %d is not in the manage map", p.Name, c)
	}
	a, ok, err := loader.PodTC(e.pins, loader.PodTCKey(p.rt.ContainerID, p.hostVeth))
	if err != nil || !ok || !a.Live || a.Ifindex != e.ifindex(p.hostVeth) {
		e.t.Fatalf("pod %s: tc on %s: %+v ok=%v err=%v", p.Name, p.hostVeth, a, ok, err)
	}
}

// requireClean checks that nothing of kmesh-cni is left: no manage entry,
// no tc attachment, no state record.
func (e *env) requireClean() {
	e.t.Helper()
	all, err := e.manage.List()
	if err != nil || len(all) != 0 {
		e.t.Fatalf("manage map not empty: %v %v", all, err)
	}
	if keys, err := loader.PodTCKeys(e.pins); err != nil || len(keys) != 0 {
		e.t.Fatalf("tc attachments left: %v %v", keys, err)
	}
	if recs, err := cnistate.Read(e.state); err != nil || len(recs) != 0 {
		e.t.Fatalf("state records left: %d %v", len(recs), err)
	}
}

// record returns the state record of a pod, or nil.
func (e *env) record(p *pod) *cnistate.Record {
	e.t.Helper()
	recs, err := cnistate.Read(e.state)
	if err != nil {
		e.t.Fatal(err)
	}
	i := slices.IndexFunc(recs, func(r *cnistate.Record) bool { return r.ContainerID == p.rt.ContainerID })
	if i < 0 {
		return nil
	}
	return recs[i]
}

// cniError unwraps the CNI error a plugin printed.
func cniError(t *testing.T, err error) *types.Error {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("%v (%T) is not a CNI error", err, err)
	}
	return e
}

func mustContain(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s %q does not say %q", what, s, sub)
		}
	}
}
