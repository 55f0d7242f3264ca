package installer

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/install/cniconf"
)

const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// ParseArgs reads kmesh-install's command line into a Config whose logger
// writes to logs. The entry's values are checked by New, with the plugin's
// own parser. It is here rather than in main so the manifests' test can
// check the DaemonSet's arguments with the same parser.
func ParseArgs(args []string, logs io.Writer) (Config, error) {
	fs := flag.NewFlagSet("kmesh-install", flag.ContinueOnError)
	fs.SetOutput(logs)
	var (
		cfg           Config
		binaries      string
		defaultEnroll string
		logLevel      string
	)
	fs.StringVar(&cfg.HostRoot, "host-root", "", "where the node's root is mounted; prefixes every host path")
	fs.StringVar(&cfg.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI bin directory")
	fs.StringVar(&cfg.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI conf directory")
	fs.StringVar(&cfg.ConflistName, "conflist-name", "", "the conf file to add the entry to (default: the primary network's, first in lexical order)")
	fs.StringVar(&cfg.BinariesDir, "binaries-dir", "/opt/kmesh/bin", "where this image keeps the binaries to copy")
	fs.StringVar(&binaries, "binaries", cniconf.PluginType+",kmesh-cni-kube", "comma-separated names of the binaries to copy into the CNI bin directory (kmesh-cni and its API client)")
	fs.StringVar(&cfg.KubeconfigPath, "kubeconfig", "/etc/cni/net.d/kmesh-cni-kubeconfig", "host path of the plugin's kubeconfig; empty for none")
	fs.StringVar(&cfg.TokenFile, "token-file", serviceAccountDir+"/token", "the service-account token the kubeconfig carries")
	fs.StringVar(&cfg.CAFile, "ca-file", serviceAccountDir+"/ca.crt", "the cluster CA the kubeconfig trusts")
	fs.StringVar(&cfg.APIServer, "api-server", "", "API server URL (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
	fs.StringVar(&cfg.Entry.DaemonSocket, "daemon-socket", "/var/run/kmesh/cni.sock", "the entry's daemonSocket: the daemon's gRPC socket (host path)")
	fs.StringVar(&cfg.Entry.BPFDir, "bpf-dir", "/sys/fs/bpf/kmesh", "the entry's bpfDir: where the daemon pins its maps (host path)")
	fs.StringVar(&cfg.Entry.StateDir, "plugin-state-dir", "", "the entry's stateDir: where the plugin keeps one record per pod (host path); empty leaves it out")
	fs.StringVar(&cfg.Entry.FailurePolicy, "failure-policy", "open", "the entry's failurePolicy: open (pods start while the daemon is down) or closed")
	fs.StringVar(&defaultEnroll, "default-enroll", "", "the entry's defaultEnroll (true or false), used without a kubeconfig; empty leaves it out")
	fs.StringVar(&cfg.Entry.LogFile, "plugin-log-file", "", "the entry's logFile; empty leaves it out")
	fs.StringVar(&cfg.Entry.LogLevel, "plugin-log-level", "info", "the entry's logLevel")
	fs.DurationVar(&cfg.Resync, "resync", 30*time.Second, "how often to check the installation without a file event")
	fs.StringVar(&cfg.DaemonSetName, "daemonset", "", "the DaemonSet running this installer: on stop, kmesh-cni stays on the node while it exists and is not being deleted (an upgrade, a node reboot); empty always uninstalls")
	fs.StringVar(&cfg.DaemonSetNamespace, "daemonset-namespace", "", "the DaemonSet's namespace")
	fs.BoolVar(&cfg.UninstallOnExit, "uninstall-on-exit", false, "uninstall on stop even while the DaemonSet exists")
	fs.BoolVar(&cfg.UninstallNow, "uninstall", false, "take kmesh-cni off the node (its entry in every conf file, its kubeconfig and binaries) and exit, installing nothing")
	fs.StringVar(&logLevel, "log-level", "info", "this installer's log level: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return Config{}, fmt.Errorf("--log-level: %w", err)
	}
	cfg.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level}))
	if defaultEnroll != "" {
		v, err := strconv.ParseBool(defaultEnroll)
		if err != nil {
			return Config{}, fmt.Errorf("--default-enroll must be true or false, not %q", defaultEnroll)
		}
		cfg.Entry.DefaultEnroll = &v
	}
	for _, b := range strings.Split(binaries, ",") {
		if b = strings.TrimSpace(b); b != "" {
			cfg.Binaries = append(cfg.Binaries, b)
		}
	}
	return cfg, nil
}
