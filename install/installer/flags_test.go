package installer

import (
	"io"
	"testing"
)

func TestParseArgs(t *testing.T) {
	cfg, err := ParseArgs([]string{"--host-root=/host", "--binaries", "kmesh-cni, kmeshctl", "--default-enroll=true", "--failure-policy=closed"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HostRoot != "/host" || len(cfg.Binaries) != 2 || cfg.Binaries[1] != "kmeshctl" ||
		cfg.Entry.DefaultEnroll == nil || !*cfg.Entry.DefaultEnroll || cfg.Entry.FailurePolicy != "closed" {
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
		cfg.Entry.FailurePolicy != "open" || cfg.Entry.LogLevel != "info" || cfg.Entry.DefaultEnroll != nil {
		t.Errorf("defaults %+v", cfg)
	}
}

func TestParseArgsRejects(t *testing.T) {
	for _, args := range [][]string{
		{"--failure-policy", "maybe"},
		{"--default-enroll", "perhaps"},
		{"--log-level", "loud"},
		{"--plugin-log-level="},
		{"--no-such-flag"},
		{"stray"},
	} {
		if _, err := ParseArgs(args, io.Discard); err == nil {
			t.Errorf("ParseArgs(%q): no error", args)
		}
	}
}
