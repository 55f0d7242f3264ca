// kmesh-waypoint is the mesh's L7 proxy: the kernel sends it connections
// for services that have a waypoint, with a PROXY v2 header naming the
// address the client dialled, and it routes them as istiod's waypoint
// configuration (or an Envoy bootstrap file) says.
//
//	kmesh-waypoint --xds-address istiod.istio-system.svc:15012   # in a waypoint pod
//	kmesh-waypoint --config-file conf/waypoint-demo.yaml         # no control plane
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/kmesh-go/kmesh/waypoint/admin"
	"github.com/kmesh-go/kmesh/waypoint/bootstrap"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/proxy"
	"github.com/kmesh-go/kmesh/waypoint/translate"
	wpxds "github.com/kmesh-go/kmesh/waypoint/xds"
)

type options struct {
	configFile string

	xdsAddress, xdsRootCert, xdsToken, xdsServerName string
	xdsPlaintext                                     bool
	node                                             wpxds.Node
	podIP                                            string

	listen        string
	adminAddress  string
	statusAddress string
	headerTimeout time.Duration
	accessLog     string
	maxSeries     int
	drain         time.Duration
	logLevel      string
	trimMemory    bool
}

func main() {
	o := parseFlags()
	log, err := newLogger(o.logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kmesh-waypoint:", err)
		os.Exit(2)
	}
	if err := run(o, log); err != nil {
		log.Error("kmesh-waypoint failed", "err", err)
		os.Exit(1)
	}
}

func parseFlags() *options {
	o := &options{}
	env := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	flag.StringVar(&o.configFile, "config-file", "", "an Envoy bootstrap (static_resources) to run instead of istiod's configuration; reloaded on change")
	flag.StringVar(&o.xdsAddress, "xds-address", env("XDS_ADDRESS", ""), "istiod's xDS address (host:15012, or host:15010 with --xds-plaintext)")
	flag.BoolVar(&o.xdsPlaintext, "xds-plaintext", false, "talk to istiod without TLS (its unauthenticated port 15010; tests only)")
	flag.StringVar(&o.xdsRootCert, "xds-root-cert", env("XDS_ROOT_CERT", "/var/run/secrets/istio/root-cert.pem"), "CA of istiod's serving certificate (ConfigMap istio-ca-root-cert)")
	flag.StringVar(&o.xdsToken, "xds-token-file", env("XDS_TOKEN_FILE", "/var/run/secrets/tokens/istio-token"), "service-account token with audience istio-ca, read on every connect")
	flag.StringVar(&o.xdsServerName, "xds-server-name", "", "name in istiod's certificate (default: the host of --xds-address; istiod.istio-system.svc for an IP address or localhost)")
	flag.StringVar(&o.podIP, "pod-ip", env("INSTANCE_IP", ""), "this pod's IP (istiod finds the waypoint's Pod by it; downward API status.podIP)")
	flag.StringVar(&o.node.PodName, "pod-name", env("POD_NAME", ""), "this pod's name")
	flag.StringVar(&o.node.Namespace, "pod-namespace", env("POD_NAMESPACE", ""), "this pod's namespace")
	flag.StringVar(&o.node.ServiceAccount, "service-account", env("SERVICE_ACCOUNT", ""), "this pod's service account (must match the token)")
	flag.StringVar(&o.node.GatewayName, "gateway-name", env("GATEWAY_NAME", ""), "the waypoint Gateway this pod serves (label gateway.networking.k8s.io/gateway-name)")
	flag.StringVar(&o.node.ClusterID, "cluster-id", env("CLUSTER_ID", "Kubernetes"), "the cluster istiod knows this pod in")
	flag.StringVar(&o.node.NodeName, "node-name", env("NODE_NAME", ""), "the node this pod runs on")
	flag.StringVar(&o.listen, "listen", "0.0.0.0:15019", "where connections from the kernel arrive (with istiod's configuration; a bootstrap file names its own listeners)")
	flag.StringVar(&o.adminAddress, "admin-address", "127.0.0.1:15000", "config dump, status, metrics and pprof (keep it on loopback: the dump shows every route)")
	flag.StringVar(&o.statusAddress, "status-address", "0.0.0.0:15021", "readiness (/ready, /healthz/ready) and /metrics for the kubelet and Prometheus; empty: off")
	flag.DurationVar(&o.headerTimeout, "proxy-header-timeout", proxy.DefaultHeaderTimeout, "how long a connection may take to send its PROXY header (a server-first client never does) before it is closed and counted")
	flag.StringVar(&o.accessLog, "access-log", "", "one JSON line per request: stdout, or a file path; empty: off")
	flag.IntVar(&o.maxSeries, "metrics-max-series", 0, "cap on label sets of the Istio request metrics (0: the default)")
	flag.DurationVar(&o.drain, "drain", 5*time.Second, "on SIGTERM, how long requests in flight may take to finish")
	flag.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	flag.BoolVar(&o.trimMemory, "trim-memory", true, "after a configuration change, give the memory its translation freed back to the system, and once release the binary's start-up pages (see memory.go)")
	flag.Parse()
	return o
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// source is where snapshots come from: istiod, or a file.
type source struct {
	run    func(ctx context.Context) error
	status func() any
}

func run(o *options, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// 1. The engine, with nothing to run yet, and the runtime's memory
	// defaults (GOMEMLIMIT in the environment wins).
	tuneMemory()
	var trim trimmer
	if o.trimMemory {
		// What start-up touched (see releaseBinaryPages) before the first
		// configuration brings its own.
		releaseBinaryPages()
	}
	accessLog, closeLog, err := openAccessLog(o.accessLog)
	if err != nil {
		return err
	}
	defer closeLog()
	eng := proxy.New(proxy.Options{Logger: log, HeaderTimeout: o.headerTimeout, AccessLog: accessLog, MaxSeries: o.maxSeries})
	apply := func(s *model.Snapshot) error {
		if err := eng.Apply(s); err != nil {
			// The previous configuration keeps running.
			log.Error("configuration not applied", "version", s.Version, "err", err)
			return err
		}
		if o.trimMemory {
			trim.changed()
		}
		return nil
	}

	// 2. Where its configuration comes from.
	src, err := newSource(o, log, apply)
	if err != nil {
		return err
	}

	// 3. Metrics and the admin endpoints.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := eng.Register(reg); err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}
	as := admin.Source{Ready: eng.Ready, Snapshot: eng.Snapshot, Status: src.status}
	servers, err := serveAdmin(o, as, reg, log)
	if err != nil {
		return err
	}

	// 4. Run until SIGTERM, then drain: stop accepting, let requests in
	// flight finish, close.
	errc := make(chan error, 1)
	go func() { errc <- src.run(ctx) }()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	log.Info("shutting down", "drain", o.drain)
	for _, s := range servers {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = s.Shutdown(sctx)
		cancel()
	}
	return errors.Join(err, closeEngine(eng, o.drain))
}

func newSource(o *options, log *slog.Logger, apply func(*model.Snapshot) error) (*source, error) {
	if o.configFile != "" {
		if o.xdsAddress != "" {
			return nil, errors.New("--config-file and --xds-address are exclusive: choose one source")
		}
		return &source{
			run: func(ctx context.Context) error {
				err := bootstrap.Watch(ctx, o.configFile, translate.Options{}, apply, log)
				if ctx.Err() != nil {
					return nil
				}
				return err
			},
			status: func() any { return map[string]any{"configFile": o.configFile} },
		}, nil
	}
	if o.xdsAddress == "" {
		return nil, errors.New("no configuration source: give --xds-address (istiod) or --config-file")
	}
	ip, err := netip.ParseAddr(o.podIP)
	if err != nil {
		return nil, fmt.Errorf("--pod-ip %q (or INSTANCE_IP): %v", o.podIP, err)
	}
	o.node.PodIP = ip
	topts := translate.IstiodOptions()
	if o.listen != "" {
		ap, err := netip.ParseAddrPort(o.listen)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: %v", o.listen, err)
		}
		topts.ListenAddress = ap
	}
	cfg := wpxds.Config{
		Address:    o.xdsAddress,
		Plaintext:  o.xdsPlaintext,
		ServerName: o.xdsServerName,
		Node:       o.node,
		Translate:  topts,
		// A refusal keeps the last configuration serving, and the session
		// NACKs what brought the refused one.
		Apply:  apply,
		Logger: log,
	}
	if !o.xdsPlaintext {
		cfg.RootCertFile, cfg.TokenFile = o.xdsRootCert, o.xdsToken
	}
	s, err := wpxds.New(cfg)
	if err != nil {
		return nil, err
	}
	return &source{
		run:    func(ctx context.Context) error { s.Run(ctx); return nil },
		status: func() any { return s.Stats() },
	}, nil
}

// serverIdleTimeout closes an admin or status connection idle this long
// (Envoy's admin: an hour; a scraper reconnects at once).
const serverIdleTimeout = 2 * time.Minute

func serveAdmin(o *options, src admin.Source, reg *prometheus.Registry, log *slog.Logger) ([]*http.Server, error) {
	var out []*http.Server
	listen := func(addr string, h http.Handler, what string) error {
		if addr == "" {
			return nil
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s address %s: %w", what, addr, err)
		}
		// IdleTimeout: the status port is open to the pod network, and a
		// kept connection left idle would otherwise be held for ever.
		s := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: serverIdleTimeout}
		out = append(out, s)
		go func() {
			if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error(what+" server stopped", "err", err)
			}
		}()
		return nil
	}
	if err := listen(o.adminAddress, admin.AdminHandler(src, reg), "admin"); err != nil {
		return nil, err
	}
	if o.statusAddress != o.adminAddress {
		if err := listen(o.statusAddress, admin.StatusHandler(src, reg), "status"); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func openAccessLog(where string) (io.Writer, func(), error) {
	switch strings.ToLower(where) {
	case "":
		return nil, func() {}, nil
	case "stdout", "-":
		return os.Stdout, func() {}, nil
	}
	f, err := os.OpenFile(where, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("--access-log: %w", err)
	}
	return f, func() { _ = f.Close() }, nil
}

// closeEngine drains the engine for up to d, then closes what is left.
func closeEngine(eng *proxy.Engine, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	eng.Drain(ctx)
	return eng.Close()
}
