package installer

import (
	"io"
	"strings"
	"testing"
)

func TestParseArgs(t *testing.T) {
	cfg, err := ParseArgs([]string{"--host-root=/host", "--binaries", "kmesh-cni, kmeshctl", "--default-enroll=true", "--failure-policy=closed",
		"--daemonset=kmesh", "--daemonset-namespace=kmesh-system", "--uninstall-on-exit", "--uninstall"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HostRoot != "/host" || len(cfg.Binaries) != 2 || cfg.Binaries[1] != "kmeshctl" ||
		cfg.Entry.DefaultEnroll == nil || !*cfg.Entry.DefaultEnroll || cfg.Entry.FailurePolicy != "closed" ||
		cfg.DaemonSetName != "kmesh" || cfg.DaemonSetNamespace != "kmesh-system" || !cfg.UninstallOnExit || !cfg.UninstallNow {
		t.Errorf("parsed %+v", cfg)
	}
	cfg, err = ParseArgs(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{CNIBinDir: "/opt/cni/bin", CNIConfDir: "/etc/cni/net.d", BinariesDir: "/opt/kmesh/bin",
		KubeconfigPath: "/etc/cni/net.d/kmesh-cni-kubeconfig"}
	if cfg.CNIBinDir != want.CNIBinDir || cfg.CNIConfDir != want.CNIConfDir || cfg.BinariesDir != want.BinariesDir ||
		cfg.KubeconfigPath != want.KubeconfigPath || cfg.TokenFile != serviceAccountDir+"/token" ||
		cfg.Entry.DaemonSocket != "/var/run/kmesh/cni.sock" || cfg.Entry.BPFDir != "/sys/fs/bpf/kmesh" ||
		cfg.Entry.FailurePolicy != "open" || cfg.Entry.LogLevel != "info" || cfg.Entry.DefaultEnroll != nil ||
		strings.Join(cfg.Binaries, ",") != "kmesh-cni,kmesh-cni-kube" ||
		cfg.DaemonSetName != "" || cfg.UninstallOnExit || cfg.UninstallNow {
		t.Errorf("defaults %+v", cfg)
	}
}

func TestParseArgsRejects(t *testing.T) {
	for _, args := range [][]string{
		{"--default-enroll", "perhaps"},
		{"--log-level", "loud"},
		{"--no-such-flag"},
		{"stray"},
	} {
		if _, err := ParseArgs(args, io.Discard); err == nil {
			t.Errorf("ParseArgs(%q): no error", args)
		}
	}
}

func TestNewChecksTheEntryWithThePlugin(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--failure-policy=maybe"}, "failurePolicy"},
		{[]string{"--plugin-log-level=loud"}, "logLevel"},
		{[]string{"--daemon-socket=relative.sock"}, "absolute path"},
		{[]string{"--bpf-dir=/"}, "not /"},
	} {
		cfg, err := ParseArgs(tc.args, io.Discard)
		if err != nil {
			t.Fatalf("ParseArgs(%q): %v", tc.args, err)
		}
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New with %q: %v, want an error about %s", tc.args, err, tc.want)
		}
	}
	cfg, err := ParseArgs([]string{"--failure-policy=closed", "--plugin-log-level=debug"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.HostRoot = t.TempDir()
	if _, err := New(cfg); err != nil {
		t.Errorf("New rejects a good entry: %v", err)
	}
}
