package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

const conflist = `{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "calico", "ipam": {"type": "calico-ipam"}, "x-unknown": [1, "two", {"three": null}]},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}}
  ]
}
`

// buildInstaller compiles this command into dir, as the image would hold it.
func buildInstaller(t *testing.T, dir string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(dir, "kmesh-install")
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// host is a node's files as the installer's pod sees them.
type host struct {
	root, image, sa, confDir, binDir string
}

// newHost makes a node with a primary network (calico's conflist), and
// the image's binaries and the service account beside it.
func newHost(t *testing.T, dir string) host {
	t.Helper()
	h := host{root: filepath.Join(dir, "host"), image: filepath.Join(dir, "image"), sa: filepath.Join(dir, "sa")}
	h.confDir = filepath.Join(h.root, "etc/cni/net.d")
	h.binDir = filepath.Join(h.root, "opt/cni/bin")
	for _, d := range []string{h.image, h.sa, h.confDir, h.binDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		filepath.Join(h.image, "kmesh-cni"):            "plugin",
		filepath.Join(h.image, "kmesh-cni-kube"):       "API client",
		filepath.Join(h.sa, "token"):                   "tok",
		filepath.Join(h.sa, "ca.crt"):                  "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
		filepath.Join(h.confDir, "10-calico.conflist"): conflist,
	}
	for p, c := range files {
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// args are the installer's flags for h.
func (h host) args(extra ...string) []string {
	return append([]string{"--host-root", h.root, "--binaries-dir", h.image,
		"--token-file", filepath.Join(h.sa, "token"), "--ca-file", filepath.Join(h.sa, "ca.crt"),
		"--failure-policy", "closed", "--plugin-log-level", "debug"}, extra...)
}

// wantClean checks that kmesh-cni left the node as it found it.
func (h host) wantClean(t *testing.T) {
	t.Helper()
	if b, _ := os.ReadFile(filepath.Join(h.confDir, "10-calico.conflist")); string(b) != conflist {
		t.Errorf("conflist after uninstall:\n%s\nwant the original bytes:\n%s", b, conflist)
	}
	for _, p := range []string{filepath.Join(h.binDir, "kmesh-cni"), filepath.Join(h.binDir, "kmesh-cni-kube"),
		filepath.Join(h.confDir, "kmesh-cni-kubeconfig"), filepath.Join(h.confDir, ".kmesh-install-state")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
}

// startInstaller runs the installer until its entry is in the conflist; it
// returns the command and a channel closed at its exit.
func startInstaller(t *testing.T, bin string, h host, logs *bytes.Buffer) (*exec.Cmd, chan struct{}) {
	t.Helper()
	cmd := exec.Command(bin, h.args()...)
	cmd.Env = append(os.Environ(), "KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill() // by PID: only the process this test started
		<-exited
		if t.Failed() {
			t.Logf("kmesh-install output:\n%s", logs.String())
		}
	})
	listPath := filepath.Join(h.confDir, "10-calico.conflist")
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(listPath)
		if strings.Contains(strings.ReplaceAll(string(b), " ", ""), `"failurePolicy":"closed"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no kmesh-cni entry after 10s; conflist:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cmd, exited
}

// An installer killed without its cleanup (SIGKILL, a node whose API
// server was unreachable when the DaemonSet went) leaves kmesh-cni on the
// node; kmesh-install --uninstall takes it off and exits 0.
func TestOneShotUninstall(t *testing.T) {
	dir := t.TempDir()
	bin := buildInstaller(t, dir)
	h := newHost(t, dir)
	var logs bytes.Buffer
	cmd, exited := startInstaller(t, bin, h, &logs)
	cmd.Process.Kill()
	<-exited
	if _, err := os.Stat(filepath.Join(h.binDir, "kmesh-cni")); err != nil {
		t.Fatalf("the killed installer should have left kmesh-cni: %v", err)
	}
	out, err := exec.Command(bin, h.args("--uninstall")...).CombinedOutput()
	if err != nil {
		t.Fatalf("kmesh-install --uninstall: %v\n%s", err, out)
	}
	h.wantClean(t)
}

// The DaemonSet's pod goes away: the kubelet sends SIGTERM, the installer
// takes everything off the node and exits 0.
func TestSIGTERMUninstalls(t *testing.T) {
	dir := t.TempDir()
	bin := buildInstaller(t, dir)
	h := newHost(t, dir)
	var logs bytes.Buffer
	cmd, exited := startInstaller(t, bin, h, &logs)
	kubeconfig := filepath.Join(h.confDir, "kmesh-cni-kubeconfig")
	for _, p := range []string{filepath.Join(h.binDir, "kmesh-cni"), filepath.Join(h.binDir, "kmesh-cni-kube"), kubeconfig} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("not installed: %v", err)
		}
	}
	if kc, _ := os.ReadFile(kubeconfig); !strings.Contains(string(kc), "server: https://10.96.0.1:443") {
		t.Errorf("kubeconfig server not from the environment:\n%s", kc)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if !cmd.ProcessState.Success() {
			t.Fatalf("exit after SIGTERM: %v, want 0", cmd.ProcessState)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10s of SIGTERM")
	}
	h.wantClean(t)
}
