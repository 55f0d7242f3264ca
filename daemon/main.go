// kmesh-daemon is the node agent: it keeps the kernel's service maps in step
// with istiod (or a local config file), serves the CNI plugin, and exposes
// readiness, dumps and metrics on a localhost admin port.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

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
	"github.com/kmesh-go/kmesh/internal/xdsclient"
)

// defaultSockmapAccel is off: the same-node benchmark (README) decides, and
// a kernel limit (splice(2) readers do not see redirected data) argues for
// opting in.
const defaultSockmapAccel = false

// Version is set at build time.
var Version = "dev"

type options struct {
	xdsAddress, xdsRootCert, xdsToken, xdsServerName string
	xdsPlaintext                                     bool
	nodeName, nodeIP, clusterID, network, locality   string
	podName, podNamespace, serviceAccount            string
	configFile                                       string
	cgroupRoot, bpfDir, cniSocket, adminAddress      string
	stateDir, cniStateDir, kubeconfig, logLevel      string
	sizes                                            loader.Sizes
	features                                         loader.Features
	waypointPort                                     uint16
	telemetryInterval                                time.Duration
	accessLog                                        string
	maxSeries                                        int
}

func main() {
	var o options
	fs := flag.NewFlagSet("kmesh-daemon", flag.ExitOnError)
	fs.StringVar(&o.xdsAddress, "xds-address", "", "istiod's xDS address, e.g. istiod.istio-system.svc:15012")
	fs.BoolVar(&o.xdsPlaintext, "xds-plaintext", false, "use istiod's plaintext port (15010) without TLS")
	fs.StringVar(&o.xdsRootCert, "xds-root-cert", "/var/run/secrets/istio/root-cert.pem", "CA certificate of istiod (ConfigMap istio-ca-root-cert)")
	fs.StringVar(&o.xdsToken, "xds-token", "/var/run/secrets/tokens/istio-token", "service-account token with audience istio-ca")
	fs.StringVar(&o.xdsServerName, "xds-server-name", "istiod.istio-system.svc", "name in istiod's serving certificate")
	fs.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (locality, node metadata)")
	fs.StringVar(&o.nodeIP, "node-ip", envOr("INSTANCE_IP", "127.0.0.1"), "this node's IP, for the xDS node id")
	fs.StringVar(&o.clusterID, "cluster-id", envOr("CLUSTER_ID", "Kubernetes"), "the cluster id istiod knows this cluster by")
	fs.StringVar(&o.network, "network", os.Getenv("NETWORK"), "this node's network (locality scope NETWORK)")
	fs.StringVar(&o.locality, "locality", os.Getenv("KMESH_LOCALITY"), "region/zone/subzone of this node (else read from the Node's labels)")
	fs.StringVar(&o.podName, "pod-name", envOr("POD_NAME", "kmesh-daemon"), "the daemon's pod name (xDS metadata)")
	fs.StringVar(&o.podNamespace, "pod-namespace", envOr("POD_NAMESPACE", "kmesh-system"), "the daemon's namespace (xDS metadata; must match the token)")
	fs.StringVar(&o.serviceAccount, "service-account", envOr("SERVICE_ACCOUNT", "kmesh"), "the daemon's service account (xDS metadata; must match the token)")
	fs.StringVar(&o.configFile, "config-file", "", "YAML/JSON file with addresses: and authorizations: to use instead of xDS; reloaded on change")
	fs.StringVar(&o.cgroupRoot, "cgroup-root", "", "cgroup v2 directory the programs attach to (on a node: the cgroup2 mount itself)")
	fs.StringVar(&o.bpfDir, "bpf-dir", "/sys/fs/bpf/kmesh", "bpffs directory for pinned maps, programs and links")
	fs.StringVar(&o.cniSocket, "cni-socket", "/var/run/kmesh/cni.sock", "unix socket the CNI plugin talks to")
	fs.StringVar(&o.adminAddress, "admin-address", "127.0.0.1:15200", "localhost address of the admin API")
	fs.StringVar(&o.stateDir, "state-dir", "/var/run/kmesh", "directory for the pod registry")
	fs.StringVar(&o.cniStateDir, "cni-state-dir", "/var/run/kmesh/cni", "kmesh-cni's stateDir: its per-pod records, read at start to learn the pods added and deleted while the daemon was away")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for watching pods and namespaces (default: in-cluster when available)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	uninstall := fs.Bool("uninstall", false, "detach every program and remove every pin under --bpf-dir, then exit (node uninstall; a plain restart keeps them)")
	d := loader.DefaultSizes()
	fs.Func("max-services", fmt.Sprintf("service map size (default %d)", d.Services), u32(&o.sizes.Services))
	fs.Func("max-endpoints", fmt.Sprintf("endpoint map size (default %d)", d.Endpoints), u32(&o.sizes.Endpoints))
	fs.Func("max-backends", fmt.Sprintf("backend (workload) map size (default %d)", d.Backends), u32(&o.sizes.Backends))
	fs.Func("max-frontends", fmt.Sprintf("frontend (VIP and workload address) map size (default %d)", d.Frontends), u32(&o.sizes.Frontends))
	fs.Func("max-ports", fmt.Sprintf("service port map size (default %d)", d.Ports), u32(&o.sizes.Ports))
	fs.Func("max-pods", fmt.Sprintf("enrolled pod netns map size (default %d)", d.Manage), u32(&o.sizes.Manage))
	fs.Func("max-authz-verdicts", fmt.Sprintf("authorization verdict map size (default %d)", d.AuthzVerdicts), u32(&o.sizes.AuthzVerdicts))
	fs.Func("max-authz-sets", fmt.Sprintf("authorization policy-set map size (default %d)", d.AuthzSets), u32(&o.sizes.AuthzSets))
	fs.Func("maglev-table-size", fmt.Sprintf("slots per Maglev table, a prime (default %d)", d.MaglevTableSize), u32(&o.sizes.MaglevTableSize))
	fs.BoolVar(&o.features.Telemetry, "telemetry", true, "record enrolled TCP connections: Istio TCP metrics, histograms, access logs")
	fs.DurationVar(&o.telemetryInterval, "telemetry-interval", telemetry.DefaultInterval, "how often open connections are reported (long-lived connections show up in metrics within this)")
	fs.StringVar(&o.accessLog, "access-log", "", "one JSON line per closed connection end: stdout or a file path (default off)")
	fs.IntVar(&o.maxSeries, "metrics-max-series", telemetry.DefaultMaxSeries, "cap on distinct label sets of the Istio TCP metrics; beyond it connections count under an overflow set")
	fs.BoolVar(&o.features.SockmapAccel, "sockmap-accel", defaultSockmapAccel, "same-node acceleration: data between two enrolled pods on this node skips TCP/IP (not for applications that read with splice(2); see README)")
	fs.Func("max-tcp-sockets", fmt.Sprintf("TCP sockets of enrolled pods with a record or a rewritten destination (default %d; a socket beyond it works unrecorded)", d.TCPSockets), u32(&o.sizes.TCPSockets))
	fs.Func("max-sockhash", fmt.Sprintf("sockets in same-node acceleration (default %d; fixed once created)", d.Sockhash), u32(&o.sizes.Sockhash))
	o.waypointPort = loader.DefaultWaypointPort
	fs.Func("waypoint-port", fmt.Sprintf("port every waypoint pod listens on for connections that start with a PROXY v2 header naming the original destination (default %d)", loader.DefaultWaypointPort), port(&o.waypointPort))
	fs.Func("max-waypoint-sockets", fmt.Sprintf("connections to waypoints established but not yet acknowledged past their PROXY v2 header (default %d; fixed once created; one beyond it reaches its waypoint without a header)", d.WaypointSockets), u32(&o.sizes.WaypointSockets))
	_ = fs.Parse(os.Args[1:])

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level(o.logLevel)}))
	slog.SetDefault(log)
	if *uninstall {
		if err := loader.RemovePins(o.bpfDir); err != nil {
			log.Error("uninstall", "err", err)
			os.Exit(1)
		}
		log.Info("data path removed", "pins", o.bpfDir)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		log.Error("kmesh-daemon failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	if o.cgroupRoot == "" {
		return errors.New("--cgroup-root is required: the cgroup v2 directory whose sockets the mesh handles")
	}
	if o.xdsAddress == "" && o.configFile == "" {
		return errors.New("give --xds-address (istiod) or --config-file (local state)")
	}
	if o.accessLog != "" && !o.features.Telemetry {
		return errors.New("--access-log needs --telemetry")
	}
	node := model.Node{Name: o.nodeName, ClusterID: o.clusterID, Network: o.network, Locality: model.ParseLocality(o.locality)}

	dp, err := dataplane.Open(dataplane.Config{
		Loader: loader.Config{PinDir: o.bpfDir, CgroupPath: o.cgroupRoot, Sizes: o.sizes, Features: o.features, WaypointPort: o.waypointPort},
		Node:   node,
	})
	if err != nil {
		return err
	}
	defer dp.Close()
	if dp.Datapath().Reused {
		log.Info("data path reused from pins; traffic kept flowing across the restart", "pins", o.bpfDir)
	} else if dp.Datapath().Pending() {
		log.Info("the pinned data path has another layout: it keeps serving until the mesh state is in the new maps",
			"pins", o.bpfDir, "pinnedLayout", dp.Datapath().PinnedLayout, "replaced", dp.Datapath().Replaced)
	} else {
		log.Info("data path loaded", "pins", o.bpfDir, "cgroup", o.cgroupRoot, "replaced", dp.Datapath().Replaced)
	}

	syncer := meshsync.New(dp, log)
	reg, err := cniserver.NewRegistry(filepath.Join(o.stateDir, "pods.json"),
		cniserver.KernelEnroller{Manage: dp.Manage(), PinDir: o.bpfDir})
	if err != nil {
		return err
	}
	defer reg.Close() // writes what changed last

	errc := make(chan error, 8)
	var xdsClient *xdsclient.Client
	if o.configFile != "" {
		syncer.Connected(true) // the file is always there to read
		go func() { errc <- configfile.Watch(ctx, o.configFile, syncer, log) }()
	} else {
		xdsClient, err = xdsclient.New(xdsclient.Config{
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
			Logger:        log,
		}, syncer)
		if err != nil {
			return err
		}
		go func() { xdsClient.Run(ctx); errc <- nil }()
	}

	var decider cniserver.Decider
	if kcfg, ok, err := kube.Config(o.kubeconfig); err != nil {
		return err
	} else if ok {
		w, err := kube.NewWatcher(kcfg, o.nodeName, reg, log)
		if err != nil {
			return err
		}
		decider = w
		if o.locality == "" && o.nodeName != "" {
			if l, err := w.NodeLocality(ctx); err == nil && l != (model.Locality{}) {
				node.Locality = l
				if err := dp.SetNode(node); err != nil {
					return err
				}
				log.Info("locality from the Node's labels", "locality", l.String())
			}
		}
		go func() { errc <- w.Run(ctx) }()
	}

	enf := enforcer.New(dp, reg.Pods, log)
	var swept atomic.Uint64
	enf.Swept = func(n int) { swept.Add(uint64(n)) }
	reg.Watch(func(*cniv1.Pod, bool) { enf.PodsChanged() })
	var local podAddrs
	reg.Watch(func(*cniv1.Pod, bool) { local.refresh(reg.Pods) })
	local.refresh(reg.Pods)
	go enf.Run(ctx)
	udp, err := udpsweep.New(dp, reg.Pods, log)
	if err != nil {
		return err
	}
	go udp.Run(ctx)

	// Bind the socket, then read the plugin's records, then serve: a plugin
	// that could not reach the daemon wrote its record before trying, and
	// one that reaches it waits in the listen queue until the records are
	// in, so no pod falls between the two.
	l, err := cniserver.Listen(o.cniSocket)
	if err != nil {
		return err
	}
	adoptPluginPods(reg, o, log)
	enf.PodsChanged() // the adopted pods too
	srv := cniserver.NewServer(reg, health{pinDir: o.bpfDir, syncer: syncer}, Version, decider)
	go func() { errc <- srv.Serve(ctx, l) }()

	janitor, err := dp.Datapath().NewTCPSockJanitor()
	if err != nil {
		return err
	}
	go sweepTCPSocks(ctx, janitor, log)
	counters := admin.Counters{
		Swept: swept.Load,
		KernelMaps: func() map[string][2]int {
			n, max := janitor.Usage()
			return map[string][2]int{loader.MapTCPSock: {n, max}}
		},
		Connected: syncer.IsConnected,
		Pushes:    func() uint64 { p, _ := syncer.Counters(); return p },
		NACKs:     func() uint64 { _, n := syncer.Counters(); return n },
		Pods: func() (int, int) {
			all := reg.Pods()
			e := 0
			for _, p := range all {
				if p.Enrolled {
					e++
				}
			}
			return len(all), e
		},
	}
	metrics := admin.Metrics(dp, counters)
	var tel *telemetry.Telemetry
	if o.features.Telemetry {
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
			defer f.Close()
			out = f
		}
		resolver := telemetry.NewModelResolver(dp.Store())
		dp.Observe(func(dataplane.Event) { resolver.Invalidate() })
		tel = telemetry.New(telemetry.Config{
			Resolver: resolver, Interval: o.telemetryInterval, MaxSeries: o.maxSeries, AccessLog: out, Logger: log,
			KernelStats: dp.Maps().Stats,
			LocalPod:    local.has,
			Namespaces: func() []string {
				var out []string
				for _, p := range reg.Pods() {
					if p.Enrolled && p.NetnsPath != "" {
						out = append(out, p.NetnsPath)
					}
				}
				return out
			},
		})
		if err := tel.Register(metrics); err != nil {
			return err
		}
		go func() { errc <- tel.Run(ctx, dp.Datapath()) }()
	}
	h := admin.Handler(admin.Source{
		Telemetry: tel,
		Dataplane: dp,
		Ready:     syncer.Ready,
		Pods: func() any {
			out := []json.RawMessage{}
			for _, p := range reg.Pods() {
				b, _ := protojson.Marshal(p)
				out = append(out, b)
			}
			return out
		},
		Status: func() map[string]any {
			st := map[string]any{"version": Version, "node": node.Name, "locality": dp.Node().Locality.String(),
				"connected": syncer.IsConnected(), "lastError": syncer.LastError()}
			p, n := syncer.Counters()
			st["pushes"], st["nacks"] = p, n
			if o.configFile != "" {
				st["source"] = "file:" + o.configFile
			} else {
				st["source"] = "xds:" + o.xdsAddress
				xs := xdsClient.Stats()
				st["xdsConnects"], st["xdsACKs"], st["xdsNACKs"] = xs.Connects, xs.ACKs, xs.NACKs
			}
			a, e := counters.Pods()
			st["pods"], st["enrolledPods"] = a, e
			return st
		},
	}, metrics)
	go func() { errc <- admin.Serve(ctx, o.adminAddress, h) }()
	log.Info("kmesh-daemon running", "admin", o.adminAddress, "cni", o.cniSocket, "version", Version,
		"telemetry", o.features.Telemetry, "sockmapAccel", o.features.SockmapAccel, "accessLog", o.accessLog)

	select {
	case <-ctx.Done():
		log.Info("stopping; the data path stays attached and keeps serving")
		return nil
	case err := <-errc:
		if err != nil && ctx.Err() == nil {
			return err
		}
		<-ctx.Done()
		return nil
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
		log.Info("pod registry caught up with kmesh-cni's records", "added", a.Added, "dropped", a.Dropped)
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

func u32(dst *uint32) func(string) error {
	return func(s string) error {
		var v uint32
		if _, err := fmt.Sscanf(s, "%d", &v); err != nil || v == 0 {
			return fmt.Errorf("want a positive number, got %q", s)
		}
		*dst = v
		return nil
	}
}

func port(dst *uint16) func(string) error {
	return func(s string) error {
		var v uint16
		if _, err := fmt.Sscanf(s, "%d", &v); err != nil || v == 0 {
			return fmt.Errorf("want a port 1-65535, got %q", s)
		}
		*dst = v
		return nil
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func level(s string) slog.Level {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

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
