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

// The DaemonSet's pod goes away: the kubelet sends SIGTERM, the installer
// takes everything off the node and exits 0.
func TestSIGTERMUninstalls(t *testing.T) {
	dir := t.TempDir()
	bin := buildInstaller(t, dir)
	root := filepath.Join(dir, "host")
	image := filepath.Join(dir, "image")
	sa := filepath.Join(dir, "sa")
	confDir := filepath.Join(root, "etc/cni/net.d")
	binDir := filepath.Join(root, "opt/cni/bin")
	for _, d := range []string{image, sa, confDir, binDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		filepath.Join(image, "kmesh-cni"):            "plugin",
		filepath.Join(image, "kmesh-cni-kube"):       "API client",
		filepath.Join(sa, "token"):                   "tok",
		filepath.Join(sa, "ca.crt"):                  "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
		filepath.Join(confDir, "10-calico.conflist"): conflist,
	}
	for p, c := range files {
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	var logs bytes.Buffer
	cmd := exec.Command(bin,
		"--host-root", root,
		"--binaries-dir", image,
		"--token-file", filepath.Join(sa, "token"),
		"--ca-file", filepath.Join(sa, "ca.crt"),
		"--failure-policy", "closed",
		"--plugin-log-level", "debug",
	)
	cmd.Env = append(os.Environ(), "KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			cmd.Process.Kill() // by PID: only the process this test started
			<-exited
		}
		if t.Failed() {
			t.Logf("kmesh-install output:\n%s", logs.String())
		}
	})

	listPath := filepath.Join(confDir, "10-calico.conflist")
	kubeconfig := filepath.Join(confDir, "kmesh-cni-kubeconfig")
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
	for _, p := range []string{filepath.Join(binDir, "kmesh-cni"), filepath.Join(binDir, "kmesh-cni-kube"), kubeconfig} {
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
	case err := <-exited:
		reaped = true
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v, want 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10s of SIGTERM")
	}
	if b, _ := os.ReadFile(listPath); string(b) != conflist {
		t.Errorf("conflist after uninstall:\n%s\nwant the original bytes:\n%s", b, conflist)
	}
	for _, p := range []string{filepath.Join(binDir, "kmesh-cni"), filepath.Join(binDir, "kmesh-cni-kube"), kubeconfig, filepath.Join(confDir, ".kmesh-install-state")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
}
