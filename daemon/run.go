package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/daemon/admin"
	"github.com/kmesh-go/kmesh/daemon/cniserver"
	"github.com/kmesh-go/kmesh/daemon/configfile"
	"github.com/kmesh-go/kmesh/daemon/dataplane"
	"github.com/kmesh-go/kmesh/daemon/enforcer"
	"github.com/kmesh-go/kmesh/daemon/kube"
	"github.com/kmesh-go/kmesh/daemon/meshsync"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/daemon/telemetry"
	"github.com/kmesh-go/kmesh/daemon/udpsweep"
	"github.com/kmesh-go/kmesh/daemon/xds"
	"github.com/kmesh-go/kmesh/internal/unixsock"
	"github.com/kmesh-go/kmesh/internal/xdsclient"
)

// run is the daemon from start to SIGTERM: each step wires one part to
// the ones before it, in the order they depend on each other.
func run(ctx context.Context, o options, log *slog.Logger) error {
	if err := checkOptions(o); err != nil {
		return err
	}
	a := &agent{o: o, log: log, errc: make(chan error, 8),
		node: model.Node{Name: o.nodeName, ClusterID: o.clusterID, Network: o.network, Locality: model.ParseLocality(o.locality)}}
	defer a.close()

	for _, step := range []func(context.Context) error{
		a.loadDataPath,
		a.openPodRegistry,
		a.followMeshSource,
		a.watchKubernetes,
		a.enforcePolicies,
		a.sweepConnectedUDP,
		a.servePlugin,
		a.clearStaleTCPSockets,
		a.registerMetrics,
		a.recordConnections,
		a.serveAdmin,
	} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	log.Info("kmesh-daemon running", "admin", o.adminAddress, "cni", o.cniSocket, "version", Version,
		"telemetry", o.features.Telemetry, "sockmapAccel", o.features.SockmapAccel, "accessLog", o.accessLog)
	return a.wait(ctx)
}

// agent is the running daemon's parts, as run's steps make them.
type agent struct {
	o    options
	log  *slog.Logger
	node model.Node
	errc chan error // a part that stopped: the daemon stops
	// closers run at the end, last first.
	closers []func()

	dp      *dataplane.Dataplane
	syncer  *meshsync.Syncer
	xds     *xdsclient.Client // nil with --config-file
	reg     *cniserver.Registry
	decider cniserver.Decider // nil without Kubernetes
	enf     *enforcer.Enforcer
	swept   atomic.Uint64 // connections closed by a new DENY
	local   podAddrs
	janitor *loader.TCPSockJanitor
	counts  admin.Counters
	metrics *prometheus.Registry
	tel     *telemetry.Telemetry // nil with --telemetry=false
}

func checkOptions(o options) error {
	if o.cgroupRoot == "" {
		return errors.New("--cgroup-root is required: the cgroup v2 directory whose sockets the mesh handles")
	}
	if o.xdsAddress == "" && o.configFile == "" {
		return errors.New("give --xds-address (istiod) or --config-file (local state)")
	}
	if o.accessLog != "" && !o.features.Telemetry {
		return errors.New("--access-log needs --telemetry")
	}
	return nil
}

// spawn runs a part until it stops; its end stops the daemon.
func (a *agent) spawn(part func() error) { go func() { a.errc <- part() }() }

// loadDataPath loads the programs and maps, or takes over the pinned ones
// (traffic keeps flowing across a restart), and the mesh sync beside them.
func (a *agent) loadDataPath(context.Context) error {
	o := a.o
	dp, err := dataplane.Open(dataplane.Config{
		Loader: loader.Config{PinDir: o.bpfDir, CgroupPath: o.cgroupRoot, Sizes: o.sizes, Features: o.features, WaypointPort: o.waypointPort},
		Node:   a.node,
	})
	if err != nil {
		return err
	}
	a.dp = dp
	a.closers = append(a.closers, func() { dp.Close() })
	switch {
	case dp.Datapath().Reused:
		a.log.Info("data path reused from pins; traffic kept flowing across the restart", "pins", o.bpfDir)
	case dp.Datapath().Pending():
		a.log.Info("the pinned data path has another layout: it keeps serving until the mesh state is in the new maps",
			"pins", o.bpfDir, "pinnedLayout", dp.Datapath().PinnedLayout, "replaced", dp.Datapath().Replaced)
	default:
		a.log.Info("data path loaded", "pins", o.bpfDir, "cgroup", o.cgroupRoot, "replaced", dp.Datapath().Replaced)
	}
	a.syncer = meshsync.New(dp, a.log)
	return nil
}

// openPodRegistry loads the node's pods as the last run left them.
func (a *agent) openPodRegistry(context.Context) error {
	reg, err := cniserver.NewRegistry(filepath.Join(a.o.stateDir, "pods.json"),
		cniserver.KernelEnroller{Manage: a.dp.Manage(), PinDir: a.o.bpfDir})
	if err != nil {
		return err
	}
	a.reg = reg
	a.closers = append(a.closers, func() { reg.Close() }) // writes what changed last
	return nil
}

// followMeshSource starts reading the mesh: the config file, or istiod.
func (a *agent) followMeshSource(ctx context.Context) error {
	o := a.o
	if o.configFile != "" {
		a.syncer.Connected(true) // the file is always there to read
		a.spawn(func() error { return configfile.Watch(ctx, o.configFile, a.syncer, a.log) })
		return nil
	}
	c, err := xdsclient.New(xdsclient.Config{
		Address:      o.xdsAddress,
		Plaintext:    o.xdsPlaintext,
		RootCertFile: o.xdsRootCert,
		TokenFile:    o.xdsToken,
		ServerName:   o.xdsServerName,
		NodeID:       fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", o.nodeIP, o.podName, o.podNamespace, o.podNamespace),
		Metadata: map[string]string{
			"NODE_NAME":       o.nodeName,
			"NAME":            o.podName,
			"NAMESPACE":       o.podNamespace,
			"SERVICE_ACCOUNT": o.serviceAccount,
			"CLUSTER_ID":      o.clusterID,
			"ISTIO_VERSION":   "1.28.0",
		},
		Subscriptions: xds.Subscriptions(),
		Logger:        a.log,
	}, a.syncer)
	if err != nil {
		return err
	}
	a.xds = c
	a.spawn(func() error { c.Run(ctx); return nil })
	return nil
}

// watchKubernetes, when there is a cluster to ask, watches the node's pods
// and namespaces for enrollment labels, and takes the node's locality
// from its labels unless --locality gave one.
func (a *agent) watchKubernetes(ctx context.Context) error {
	kcfg, ok, err := kube.Config(a.o.kubeconfig)
	if err != nil || !ok {
		return err
	}
	w, err := kube.NewWatcher(kcfg, a.o.nodeName, a.reg, a.log)
	if err != nil {
		return err
	}
	a.decider = w
	if a.o.locality == "" && a.o.nodeName != "" {
		if l, err := w.NodeLocality(ctx); err == nil && l != (model.Locality{}) {
			a.node.Locality = l
			if err := a.dp.SetNode(a.node); err != nil {
				return err
			}
			a.log.Info("locality from the Node's labels", "locality", l.String())
		}
	}
	a.spawn(func() error { return w.Run(ctx) })
	return nil
}

// enforcePolicies closes established connections a new policy denies, in
// the enrolled pods; the set of their addresses is kept for telemetry.
func (a *agent) enforcePolicies(ctx context.Context) error {
	a.enf = enforcer.New(a.dp, a.reg.Pods, a.log)
	a.enf.Swept = func(n int) { a.swept.Add(uint64(n)) }
	a.reg.Watch(func(*cniv1.Pod, bool) { a.enf.PodsChanged() })
	a.reg.Watch(func(*cniv1.Pod, bool) { a.local.refresh(a.reg.Pods) })
	a.local.refresh(a.reg.Pods)
	go a.enf.Run(ctx)
	return nil
}

// sweepConnectedUDP aborts connected UDP sockets whose endpoint left.
func (a *agent) sweepConnectedUDP(ctx context.Context) error {
	udp, err := udpsweep.New(a.dp, a.reg.Pods, a.log)
	if err != nil {
		return err
	}
	go udp.Run(ctx)
	return nil
}

// servePlugin binds the CNI socket, then reads the plugin's records, then
// serves: a plugin that could not reach the daemon wrote its record before
// trying, and one that reaches it waits in the listen queue until the
// records are in, so no pod falls between the two.
func (a *agent) servePlugin(ctx context.Context) error {
	l, err := unixsock.Listen(a.o.cniSocket)
	if err != nil {
		return err
	}
	adoptPluginPods(a.reg, a.o, a.log)
	a.enf.PodsChanged() // the adopted pods too
	srv := cniserver.NewServer(a.reg, health{pinDir: a.o.bpfDir, syncer: a.syncer}, Version, a.decider)
	a.spawn(func() error { return srv.Serve(ctx, l) })
	return nil
}

// clearStaleTCPSockets removes, every half minute, the socket records of
// connects that failed before TCP started.
func (a *agent) clearStaleTCPSockets(ctx context.Context) error {
	j, err := a.dp.Datapath().NewTCPSockJanitor()
	if err != nil {
		return err
	}
	a.janitor = j
	go sweepTCPSocks(ctx, j, a.log)
	return nil
}

// registerMetrics makes the metrics registry with the daemon's counters.
func (a *agent) registerMetrics(context.Context) error {
	a.counts = admin.Counters{
		Swept: a.swept.Load,
		KernelMaps: func() map[string][2]int {
			n, max := a.janitor.Usage()
			return map[string][2]int{loader.MapTCPSock: {n, max}}
		},
		Connected: a.syncer.IsConnected,
		Pushes:    func() uint64 { p, _ := a.syncer.Counters(); return p },
		NACKs:     func() uint64 { _, n := a.syncer.Counters(); return n },
		Pods:      a.podCounts,
	}
	a.metrics = admin.Metrics(a.dp, a.counts)
	return nil
}

// podCounts counts the registered pods and the enrolled ones.
func (a *agent) podCounts() (all, enrolled int) {
	pods := a.reg.Pods()
	for _, p := range pods {
		if p.Enrolled {
			enrolled++
		}
	}
	return len(pods), enrolled
}

// recordConnections, with --telemetry, reads the kernel's connection
// records into Istio's TCP metrics and the access log.
func (a *agent) recordConnections(ctx context.Context) error {
	o := a.o
	if !o.features.Telemetry {
		return nil
	}
	var out io.Writer
	switch o.accessLog {
	case "":
	case "stdout", "-":
		out = os.Stdout
	default:
		f, err := os.OpenFile(o.accessLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return fmt.Errorf("open the access log: %w", err)
		}
		a.closers = append(a.closers, func() { f.Close() })
		out = f
	}
	resolver := telemetry.NewModelResolver(a.dp.Store())
	a.dp.Observe(func(dataplane.Event) { resolver.Invalidate() })
	a.tel = telemetry.New(telemetry.Config{
		Resolver: resolver, Interval: o.telemetryInterval, MaxSeries: o.maxSeries, AccessLog: out, Logger: a.log,
		KernelStats: a.dp.Maps().Stats,
		LocalPod:    a.local.has,
		Namespaces:  a.enrolledNamespaces,
	})
	if err := a.tel.Register(a.metrics); err != nil {
		return err
	}
	a.spawn(func() error { return a.tel.Run(ctx, a.dp.Datapath()) })
	return nil
}

// enrolledNamespaces lists the network namespaces of the enrolled pods.
func (a *agent) enrolledNamespaces() []string {
	var out []string
	for _, p := range a.reg.Pods() {
		if p.Enrolled && p.NetnsPath != "" {
			out = append(out, p.NetnsPath)
		}
	}
	return out
}

// serveAdmin serves readiness, dumps, metrics and pprof on the admin
// address, and readiness and metrics alone on the status address.
func (a *agent) serveAdmin(ctx context.Context) error {
	h := admin.Handler(admin.Source{
		Telemetry: a.tel,
		Dataplane: a.dp,
		Ready:     a.syncer.Ready,
		Pods:      a.reg.Attachments, // a row per attachment, each with its host veth
		Status:    a.status,
	}, a.metrics)
	a.spawn(func() error { return admin.Serve(ctx, a.o.adminAddress, h) })
	if a.o.statusAddress != "" && a.o.statusAddress != a.o.adminAddress {
		// Metrics reachable from Prometheus without opening the dumps
		// and pprof of the admin API to every pod that reaches the node.
		st := admin.StatusHandler(a.syncer.Ready, a.metrics)
		a.spawn(func() error { return admin.Serve(ctx, a.o.statusAddress, st) })
	}
	return nil
}

// status fills in the daemon's part of /debug/status.
func (a *agent) status(st *admin.Status) {
	o := a.o
	st.Version, st.Node, st.Locality = Version, a.node.Name, a.dp.Node().Locality.String()
	st.Connected, st.LastError = a.syncer.IsConnected(), a.syncer.LastError()
	st.Pushes, st.NACKs = a.syncer.Counters()
	if o.configFile != "" {
		st.Source = "file:" + o.configFile
	} else {
		st.Source = "xds:" + o.xdsAddress
		xs := a.xds.Stats()
		st.XDSConnects, st.XDSACKs, st.XDSNACKs = xs.Connects, xs.ACKs, xs.NACKs
	}
	st.Pods, st.EnrolledPods = a.podCounts()
}

// wait returns when ctx ends (SIGTERM) or a part stops with an error; the
// data path stays attached either way.
func (a *agent) wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		a.log.Info("stopping; the data path stays attached and keeps serving")
		return nil
	case err := <-a.errc:
		if err != nil && ctx.Err() == nil {
			return err
		}
		<-ctx.Done()
		return nil
	}
}

func (a *agent) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
}

// adoptPluginPods registers the pods kmesh-cni set up while the daemon was
// away, and forgets those it deleted meanwhile.
func adoptPluginPods(reg *cniserver.Registry, o options, log *slog.Logger) {
	pods, complete, err := cniserver.PluginPods(o.cniStateDir, o.bpfDir)
	if err != nil {
		log.Warn("kmesh-cni state records", "dir", o.cniStateDir, "err", err)
	}
	if !complete && err == nil {
		log.Info("no kmesh-cni state directory; pods are learnt from the plugin's calls", "dir", o.cniStateDir)
	}
	a, err := reg.Adopt(pods, complete)
	if err != nil {
		log.Warn("adopt kmesh-cni state records", "err", err)
		return
	}
	if len(a.Added)+len(a.Dropped) > 0 {
		log.Info("pod registry caught up with kmesh-cni's records", "added", a.Added, "enrolled", a.Enrolled, "dropped", a.Dropped)
	}
	for id, err := range a.Failed {
		log.Warn("enroll a pod kmesh-cni could not (no data path at its ADD)", "containerID", id, "err", err)
	}
}

// health is what the CNI Status call reports: the data path's pins for
// readiness, the mesh sync beside it.
type health struct {
	pinDir string
	syncer *meshsync.Syncer
}

func (h health) Datapath() error   { return loader.CheckPinned(h.pinDir) }
func (h health) Synced() bool      { return h.syncer.Ready() }
func (h health) LastError() string { return h.syncer.LastError() }

// sweepTCPSocks clears, every half minute, the TCP socket records that
// connects which failed before TCP started left behind (see
// loader.TCPSockJanitor).
func sweepTCPSocks(ctx context.Context, j *loader.TCPSockJanitor, log *slog.Logger) {
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		// The first one at once: it also counts the map for the metrics.
		n, err := j.Sweep()
		if err != nil {
			log.Warn("clear stale TCP socket records", "err", err)
		} else if n > 0 {
			log.Info("cleared TCP socket records of failed connects", "records", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
