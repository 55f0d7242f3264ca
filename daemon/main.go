// kmesh-daemon is the node agent: it keeps the kernel's service maps in step
// with istiod (or a local config file), serves the CNI plugin, and exposes
// readiness, dumps and metrics on a localhost admin port.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/daemon/admin"
	"github.com/kmesh-go/kmesh/daemon/telemetry"
	"github.com/kmesh-go/kmesh/internal/unixsock"
)

// defaultSockmapAccel is off: the same-node benchmark (docs/benchmarks.md) decides, and
// a kernel limit (splice(2) readers do not see redirected data) argues for
// opting in.
const defaultSockmapAccel = false

// DefaultAdminAddress is the admin API's socket (admin.Socket).
const DefaultAdminAddress = unixsock.Prefix + admin.Socket

// Version is set at build time.
var Version = "dev"

type options struct {
	xdsAddress, xdsRootCert, xdsToken, xdsServerName string
	xdsPlaintext                                     bool
	nodeName, nodeIP, clusterID, network, locality   string
	podName, podNamespace, serviceAccount            string
	configFile                                       string
	cgroupRoot, bpfDir, cniSocket, adminAddress      string
	statusAddress                                    string
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
	fs.StringVar(&o.xdsServerName, "xds-server-name", "", "name in istiod's serving certificate (default: the host of --xds-address; istiod.istio-system.svc for an IP address or localhost)")
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
	fs.StringVar(&o.adminAddress, "admin-address", DefaultAdminAddress, "admin API (dumps, pprof): unix:/path, a socket only root can open, or host:port (keep it on loopback: every host-network pod shares it)")
	fs.StringVar(&o.statusAddress, "status-address", "", "address serving only /ready and /metrics, for Prometheus (e.g. :15020, the node's addresses: the daemon is in the host network); empty: off")
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
	fs.BoolVar(&o.features.SockmapAccel, "sockmap-accel", defaultSockmapAccel, "same-node acceleration: data between two enrolled pods on this node skips TCP/IP (not for applications that read with splice(2); see docs/datapath.md)")
	fs.Func("max-tcp-sockets", fmt.Sprintf("TCP sockets of enrolled pods with a record or a rewritten destination (default %d; a socket beyond it works unrecorded)", d.TCPSockets), u32(&o.sizes.TCPSockets))
	fs.Func("max-sockhash", fmt.Sprintf("sockets in same-node acceleration (default %d; fixed once created)", d.Sockhash), u32(&o.sizes.Sockhash))
	o.waypointPort = loader.DefaultWaypointPort
	fs.Func("waypoint-port", fmt.Sprintf("port every waypoint pod listens on for connections that start with a PROXY v2 header naming the original destination (default %d)", loader.DefaultWaypointPort), port(&o.waypointPort))
	fs.Func("max-waypoint-sockets", fmt.Sprintf("connections to waypoints established but not yet acknowledged past their PROXY v2 header (default %d; fixed once created; one beyond it reaches its waypoint without a header)", d.WaypointSockets), u32(&o.sizes.WaypointSockets))
	_ = fs.Parse(os.Args[1:])
	for _, f := range []struct{ name, value string }{{"admin-address", o.adminAddress}, {"status-address", o.statusAddress}} {
		if f.name == "status-address" && f.value == "" {
			continue // off
		}
		if err := admin.CheckAddress(f.value); err != nil {
			fmt.Fprintf(os.Stderr, "kmesh-daemon: --%s: %v\n", f.name, err)
			os.Exit(2)
		}
	}

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
