package installer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/install/cniconf"
)

const (
	confDir        = "/etc/cni/net.d"
	binDir         = "/opt/cni/bin"
	kubeconfigPath = "/etc/cni/net.d/kmesh-cni-kubeconfig"
	testCA         = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
)

// A conflist as a primary plugin writes it.
const flannel = `{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
`

// A single-plugin file, laid out in its own way.
const bridgeConf = `{"cniVersion": "0.4.0", "name": "mynet", "type": "bridge",
	"bridge": "cni0", "isGateway": true,
	"ipam": {"type": "host-local", "subnet": "10.244.0.0/24"}}
`

// node is a temporary host root with the files an install container sees.
type node struct {
	t    *testing.T
	root string // the node's root
	cfg  Config
	logs *syncBuffer
}

func newNode(t *testing.T) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{t: t, root: filepath.Join(dir, "host"), logs: &syncBuffer{}}
	image := filepath.Join(dir, "image")
	sa := filepath.Join(dir, "serviceaccount")
	n.mkdir(image, sa, filepath.Join(n.root, binDir))
	n.write(filepath.Join(image, "kmesh-cni"), "#!/bin/sh\necho kmesh-cni\n")
	n.write(filepath.Join(image, "kmeshctl"), "kmeshctl binary")
	n.write(filepath.Join(n.root, binDir, "bridge"), "the primary's binary")
	n.write(filepath.Join(sa, "token"), "token-1\n")
	n.write(filepath.Join(sa, "ca.crt"), testCA)
	n.cfg = Config{
		HostRoot:       n.root,
		CNIBinDir:      binDir,
		CNIConfDir:     confDir,
		BinariesDir:    image,
		Binaries:       []string{"kmesh-cni", "kmeshctl"},
		KubeconfigPath: kubeconfigPath,
		TokenFile:      filepath.Join(sa, "token"),
		CAFile:         filepath.Join(sa, "ca.crt"),
		APIServer:      "https://10.96.0.1:443",
		Entry: cniconf.Entry{
			DaemonSocket:  "/var/run/kmesh/cni.sock",
			BPFDir:        "/sys/fs/bpf/kmesh",
			FailurePolicy: "open",
			LogLevel:      "info",
		},
		Resync: time.Hour, // the tests must pass on file events alone
		Log:    slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("installer log:\n%s", n.logs.String())
		}
	})
	return n
}

func (n *node) mkdir(dirs ...string) {
	n.t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			n.t.Fatal(err)
		}
	}
}

func (n *node) write(path, content string) {
	n.t.Helper()
	n.mkdir(filepath.Dir(path))
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		n.t.Fatal(err)
	}
}

// host is a path on the node.
func (n *node) host(p string) string { return filepath.Join(n.root, p) }

func (n *node) conf(name string) string { return n.host(filepath.Join(confDir, name)) }

func (n *node) read(path string) string {
	n.t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		n.t.Fatal(err)
	}
	return string(b)
}

// start runs an installer until the returned stop is called; stop returns
// Run's result. Cleanup stops it too, so a failing test leaves no goroutine.
func (n *node) start() (stop func() error) {
	n.t.Helper()
	in, err := New(n.cfg)
	if err != nil {
		n.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	var once sync.Once
	var result error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(10 * time.Second):
				result = errors.New("the installer did not stop within 10s")
			}
		})
		return result
	}
	n.t.Cleanup(func() { stop() })
	return stop
}

// startCrashing runs an installer that stops without uninstalling, as a
// killed container does.
func (n *node) startCrashing() (crash func()) {
	n.t.Helper()
	in, err := New(n.cfg)
	if err != nil {
		n.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.run(ctx) }()
	var once sync.Once
	crash = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				n.t.Errorf("run: %v", err)
			}
		})
	}
	n.t.Cleanup(crash)
	return crash
}

// eventually retries check until it passes or the timeout is over.
func (n *node) eventually(timeout time.Duration, what string, check func() error) {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wantToken waits up to a second for the kubeconfig to carry token.
func (n *node) wantToken(token string) {
	n.t.Helper()
	n.eventually(time.Second, "kubeconfig with "+token, func() error {
		if kc, _ := os.ReadFile(n.host(kubeconfigPath)); !strings.Contains(string(kc), "token: "+token) {
			return errors.New("old token")
		}
		return nil
	})
}

// chain returns the plugin types of a conflist, as the runtime reads them.
func (n *node) chain(name string) ([]string, error) {
	list, err := libcni.ConfListFromFile(n.conf(name))
	if err != nil {
		return nil, err
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	return types, nil
}

func (n *node) wantChain(timeout time.Duration, name string, want ...string) {
	n.t.Helper()
	n.eventually(timeout, name+" chain", func() error {
		got, err := n.chain(name)
		if err != nil {
			return err
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			return fmt.Errorf("chain %v, want %v", got, want)
		}
		return nil
	})
}

// wantConverted waits for a single-plugin .conf to have become name's
// conflist with want's chain, and for the .conf to be gone. The installer
// writes the conflist first, then removes the .conf: a test that writes the
// .conf again as soon as the conflist appears races that second step, and
// its file could be the one removed (it did on a slow machine).
func (n *node) wantConverted(timeout time.Duration, conf, name string, want ...string) {
	n.t.Helper()
	n.wantChain(timeout, name, want...)
	n.eventually(timeout, conf+" gone next to the conflist", func() error {
		if _, err := os.Stat(n.conf(conf)); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
}

// wantInstalled checks the binaries and the kubeconfig.
func (n *node) wantInstalled() {
	n.t.Helper()
	for _, b := range n.cfg.Binaries {
		st, err := os.Stat(n.host(filepath.Join(binDir, b)))
		if err != nil {
			n.t.Fatalf("binary %s: %v", b, err)
		}
		if st.Mode().Perm() != 0o755 {
			n.t.Errorf("binary %s has mode %v, want 0755", b, st.Mode().Perm())
		}
	}
	st, err := os.Stat(n.host(kubeconfigPath))
	if err != nil {
		n.t.Fatalf("kubeconfig: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		n.t.Errorf("kubeconfig has mode %v, want 0600", st.Mode().Perm())
	}
}

// stopUninstalled stops the installer, which must exit cleanly, and
// checks what it left as wantUninstalled does.
func (n *node) stopUninstalled(stop func() error, want map[string]string) {
	n.t.Helper()
	if err := stop(); err != nil {
		n.t.Fatal(err)
	}
	n.wantUninstalled(want)
}

// wantUninstalled checks that the conf dir holds exactly want (name ->
// content) and that the binaries and kubeconfig are gone.
func (n *node) wantUninstalled(want map[string]string) {
	n.t.Helper()
	for _, b := range n.cfg.Binaries {
		if _, err := os.Stat(n.host(filepath.Join(binDir, b))); !errors.Is(err, os.ErrNotExist) {
			n.t.Errorf("binary %s still there (%v)", b, err)
		}
	}
	if n.read(n.host(filepath.Join(binDir, "bridge"))) != "the primary's binary" {
		n.t.Error("the primary's binary changed")
	}
	entries, err := os.ReadDir(n.host(confDir))
	if err != nil {
		n.t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range entries {
		got[e.Name()] = n.read(n.conf(e.Name()))
	}
	for name, content := range want {
		if got[name] != content {
			n.t.Errorf("%s after uninstall:\n%s\nwant the original:\n%s", name, got[name], content)
		}
		delete(got, name)
	}
	for name := range got {
		n.t.Errorf("%s left in the conf dir", name)
	}
}

func TestFreshNodeWaitsForThePrimaryNetwork(t *testing.T) {
	n := newNode(t)
	stop := n.start()
	n.eventually(2*time.Second, "waiting logged", func() error {
		if !strings.Contains(n.logs.String(), "waiting for the primary CNI network config") {
			return errors.New("no log line")
		}
		return nil
	})
	n.wantInstalled()
	// The primary plugin writes its file late, and not atomically.
	f, err := os.Create(n.conf("10-flannel.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(flannel[:40])
	time.Sleep(150 * time.Millisecond)
	f.WriteString(flannel[40:])
	f.Close()
	n.wantChain(2*time.Second, "10-flannel.conflist", "flannel", "portmap", "kmesh-cni")
	// Once per reason: the empty directory, then the half-written file.
	if c := strings.Count(n.logs.String(), `reason="no network config file yet"`); c != 1 {
		t.Errorf("logged the same wait %d times, want once", c)
	}
	n.stopUninstalled(stop, map[string]string{"10-flannel.conflist": flannel})
}

func TestExistingConflist(t *testing.T) {
	n := newNode(t)
	other := `{"name":"other","plugins":[{"type":"ptp"}]}`
	n.write(n.conf("10-flannel.conflist"), flannel)
	n.write(n.conf("99-other.conflist"), other)
	n.write(n.conf("README"), "not config")
	stop := n.start()
	n.wantChain(2*time.Second, "10-flannel.conflist", "flannel", "portmap", "kmesh-cni")
	n.wantInstalled()
	got := n.read(n.conf("10-flannel.conflist"))
	// Everything but the new entry is as it was.
	if back, _, _ := cniconf.Remove([]byte(got)); string(back) != flannel {
		t.Errorf("the rest of the file changed:\n%s", got)
	}
	if !strings.Contains(got, `"kubeconfig": "/etc/cni/net.d/kmesh-cni-kubeconfig"`) ||
		!strings.Contains(got, `"daemonSocket": "/var/run/kmesh/cni.sock"`) {
		t.Errorf("entry fields missing:\n%s", got)
	}
	kc := n.read(n.host(kubeconfigPath))
	if !strings.Contains(kc, "token: token-1") || !strings.Contains(kc, "server: https://10.96.0.1:443") {
		t.Errorf("kubeconfig:\n%s", kc)
	}
	n.stopUninstalled(stop, map[string]string{"10-flannel.conflist": flannel, "99-other.conflist": other, "README": "not config"})
}

func TestConfOnly(t *testing.T) {
	n := newNode(t)
	n.write(n.conf("10-bridge.conf"), bridgeConf)
	if err := os.Chmod(n.conf("10-bridge.conf"), 0o640); err != nil {
		t.Fatal(err)
	}
	stop := n.start()
	n.wantConverted(2*time.Second, "10-bridge.conf", "10-bridge.conflist", "bridge", "kmesh-cni")
	if st, err := os.Stat(n.conf("10-bridge.conflist")); err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("conflist mode: %v %v, want the original's 0640", st.Mode(), err)
	}
	n.stopUninstalled(stop, map[string]string{"10-bridge.conf": bridgeConf})
	if st, err := os.Stat(n.conf("10-bridge.conf")); err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("restored mode: %v %v, want 0640", st.Mode(), err)
	}
}

func TestRerunIsIdempotent(t *testing.T) {
	for _, tc := range []struct{ name, file, content, list string }{
		{"conflist", "10-flannel.conflist", flannel, "10-flannel.conflist"},
		{"conf", "10-bridge.conf", bridgeConf, "10-bridge.conflist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			n.write(n.conf(tc.file), tc.content)
			crash := n.startCrashing()
			n.wantChain(2*time.Second, tc.list, append(mustChain(t, tc.content), "kmesh-cni")...)
			crash()
			first := n.read(n.conf(tc.list))
			firstInfo, _ := os.Stat(n.conf(tc.list))

			// The container starts again on a node that has everything.
			stop := n.start()
			n.eventually(2*time.Second, "second run copied its binaries", func() error {
				if c := strings.Count(n.logs.String(), "installed binary"); c < 2*len(n.cfg.Binaries) {
					return errors.New("second run not started")
				}
				return nil
			})
			time.Sleep(300 * time.Millisecond) // its first check and the events it causes
			if got := n.read(n.conf(tc.list)); got != first {
				t.Errorf("re-run changed the conflist:\n%s\nwant:\n%s", got, first)
			}
			if info, _ := os.Stat(n.conf(tc.list)); !info.ModTime().Equal(firstInfo.ModTime()) {
				t.Error("re-run rewrote the conflist with the same content")
			}
			n.stopUninstalled(stop, map[string]string{tc.file: tc.content})
		})
	}
}

func mustChain(t *testing.T, doc string) []string {
	if !strings.Contains(doc, `"plugins"`) {
		return []string{"bridge"}
	}
	types, err := cniconf.Types([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return types
}

func TestOldEntryIsUpdatedInPlace(t *testing.T) {
	n := newNode(t)
	old := `{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"bridge"},{"type":"kmesh-cni","logLevel":"debug","daemonSocket":"/old.sock"},{"type":"portmap"}]}`
	n.write(n.conf("10-n.conflist"), old)
	stop := n.start()
	n.wantChain(2*time.Second, "10-n.conflist", "bridge", "kmesh-cni", "portmap")
	n.eventually(2*time.Second, "entry updated", func() error {
		if got := n.read(n.conf("10-n.conflist")); !strings.Contains(got, `"daemonSocket":"/var/run/kmesh/cni.sock"`) {
			return fmt.Errorf("entry not updated: %s", got)
		}
		return nil
	})
	// The old entry was ours too: uninstall leaves no kmesh-cni behind.
	n.stopUninstalled(stop, map[string]string{"10-n.conflist": `{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"bridge"},{"type":"portmap"}]}`})
}

func TestAnotherAgentRewritesTheFile(t *testing.T) {
	n := newNode(t)
	n.write(n.conf("10-flannel.conflist"), flannel)
	stop := n.start()
	n.wantChain(2*time.Second, "10-flannel.conflist", "flannel", "portmap", "kmesh-cni")

	// The primary agent writes its own file again, in place.
	rewritten := strings.Replace(flannel, `"hairpinMode": true`, `"hairpinMode": false`, 1)
	n.write(n.conf("10-flannel.conflist"), rewritten)
	start := time.Now()
	n.wantChain(time.Second, "10-flannel.conflist", "flannel", "portmap", "kmesh-cni")
	t.Logf("entry back %v after an in-place rewrite", time.Since(start).Round(time.Millisecond))

	// And again with a rename, as careful agents do.
	tmp := n.conf(".agent-tmp")
	n.write(tmp, flannel)
	if err := os.Rename(tmp, n.conf("10-flannel.conflist")); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	n.wantChain(time.Second, "10-flannel.conflist", "flannel", "portmap", "kmesh-cni")
	t.Logf("entry back %v after a rename", time.Since(start).Round(time.Millisecond))

	// The kubeconfig deleted by someone comes back too.
	os.Remove(n.host(kubeconfigPath))
	n.eventually(time.Second, "kubeconfig back", func() error {
		_, err := os.Stat(n.host(kubeconfigPath))
		return err
	})
	n.stopUninstalled(stop, map[string]string{"10-flannel.conflist": flannel})
}

func TestAnotherAgentRewritesTheConf(t *testing.T) {
	// A .json sorts after its conflist, a .conf before: both are
	// converted again.
	for _, name := range []string{"10-bridge.conf", "10-bridge.json"} {
		t.Run(name, func(t *testing.T) {
			n := newNode(t)
			n.write(n.conf(name), bridgeConf)
			stop := n.start()
			n.wantConverted(2*time.Second, name, "10-bridge.conflist", "bridge", "kmesh-cni")
			// The agent puts its single-plugin file back, with a change.
			changed := strings.Replace(bridgeConf, "cni0", "cni1", 1)
			n.write(n.conf(name), changed)
			n.eventually(2*time.Second, "converted again", func() error {
				if _, err := os.Stat(n.conf(name)); err == nil {
					return errors.New(name + " still there")
				}
				if !strings.Contains(n.read(n.conf("10-bridge.conflist")), "cni1") {
					return errors.New("conflist is not from the new file")
				}
				return nil
			})
			n.wantChain(time.Second, "10-bridge.conflist", "bridge", "kmesh-cni")
			n.stopUninstalled(stop, map[string]string{name: changed})
		})
	}
}

func TestPrimaryMoves(t *testing.T) {
	n := newNode(t)
	b := `{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"ptp"}]}`
	n.write(n.conf("20-b.conflist"), b)
	stop := n.start()
	n.wantChain(2*time.Second, "20-b.conflist", "ptp", "kmesh-cni")
	// A new network sorts first: the runtime uses it now, and so do we.
	n.write(n.conf("10-a.conf"), bridgeConf)
	n.wantChain(2*time.Second, "10-a.conflist", "bridge", "kmesh-cni")
	n.wantChain(time.Second, "20-b.conflist", "ptp")
	if got := n.read(n.conf("20-b.conflist")); got != b {
		t.Errorf("20-b.conflist not restored: %s", got)
	}
	n.stopUninstalled(stop, map[string]string{"20-b.conflist": b, "10-a.conf": bridgeConf})
}

func TestNamedConflist(t *testing.T) {
	n := newNode(t)
	n.cfg.ConflistName = "20-b.conf"
	a := `{"name":"a","plugins":[{"type":"ptp"}]}`
	n.write(n.conf("10-a.conflist"), a)
	stop := n.start()
	n.eventually(2*time.Second, "waiting for the named file", func() error {
		if !strings.Contains(n.logs.String(), "20-b.conf does not exist yet") {
			return errors.New("no log line")
		}
		return nil
	})
	n.write(n.conf("20-b.conf"), bridgeConf)
	n.wantChain(2*time.Second, "20-b.conflist", "bridge", "kmesh-cni")
	if got := n.read(n.conf("10-a.conflist")); got != a {
		t.Errorf("10-a.conflist changed: %s", got)
	}
	n.stopUninstalled(stop, map[string]string{"10-a.conflist": a, "20-b.conf": bridgeConf})
}

func TestForeignConflistBlocksConversion(t *testing.T) {
	n := newNode(t)
	foreign := `{"name":"x","plugins":[{"type":"ptp"}]}`
	n.write(n.conf("10-x.conf"), bridgeConf)
	n.write(n.conf("10-x.conflist"), foreign)
	stop := n.start()
	n.eventually(2*time.Second, "error logged", func() error {
		if !strings.Contains(n.logs.String(), "exists and kmesh did not write it") {
			return errors.New("no log line")
		}
		return nil
	})
	n.stopUninstalled(stop, map[string]string{"10-x.conf": bridgeConf, "10-x.conflist": foreign})
}

// rotate swaps the token the way the kubelet updates a projected volume: a
// new timestamped directory, then an atomic rename of the ..data symlink.
func rotate(t *testing.T, dir, token string, gen int) {
	t.Helper()
	ts := filepath.Join(dir, fmt.Sprintf("..gen_%d", gen))
	if err := os.MkdirAll(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"token": token, "ca.crt": testCA} {
		if err := os.WriteFile(filepath.Join(ts, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

func TestTokenRotation(t *testing.T) {
	n := newNode(t)
	sa := filepath.Join(t.TempDir(), "projected")
	rotate(t, sa, "token-1", 1)
	for _, name := range []string{"token", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(sa, name)); err != nil {
			t.Fatal(err)
		}
	}
	n.cfg.TokenFile, n.cfg.CAFile = filepath.Join(sa, "token"), filepath.Join(sa, "ca.crt")
	n.write(n.conf("10-flannel.conflist"), flannel)
	stop := n.start()
	n.wantChain(2*time.Second, "10-flannel.conflist", "flannel", "portmap", "kmesh-cni")
	if kc := n.read(n.host(kubeconfigPath)); !strings.Contains(kc, "token: token-1") {
		t.Fatalf("kubeconfig:\n%s", kc)
	}
	rotate(t, sa, "token-2", 2)
	n.wantToken("token-2")
	// A plain rewrite of a token file (no symlinks) is seen too.
	plain := filepath.Join(t.TempDir(), "token")
	n.write(plain, "token-3")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	n.cfg.TokenFile = plain
	stop = n.start()
	n.wantToken("token-3")
	n.write(plain, "token-4")
	n.wantToken("token-4")
	n.stopUninstalled(stop, map[string]string{"10-flannel.conflist": flannel})
}

func TestBadSetupFailsAndLeavesNothing(t *testing.T) {
	n := newNode(t)
	n.write(n.conf("10-flannel.conflist"), flannel)
	n.cfg.TokenFile = filepath.Join(t.TempDir(), "missing-token")
	in, err := New(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = in.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "service-account token") {
		t.Fatalf("Run: %v, want an error about the token", err)
	}
	n.wantUninstalled(map[string]string{"10-flannel.conflist": flannel})

	for _, cfg := range []func(*Config){
		func(c *Config) { c.ConflistName = "../etc/x.conflist" },
		func(c *Config) { c.ConflistName = "x.yaml" },
		func(c *Config) { c.Binaries = []string{"../kmesh-cni"} },
		func(c *Config) { c.CNIConfDir = "" },
	} {
		c := n.cfg
		cfg(&c)
		if _, err := New(c); err == nil {
			t.Errorf("New accepted %+v", c)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// kmesh-cni speaks CNI 0.3.0 to 1.1.0. In a chain whose cniVersion it does
// not speak, every pod's ADD would fail on the entry, so the entry stays out
// and the primary's files stay as they were.
func TestUnsupportedCNIVersionIsNotChained(t *testing.T) {
	noVersion := `{"name":"n","plugins":[{"type":"ptp"}]}`
	oldConf := `{"cniVersion":"0.2.0","name":"mynet","type":"bridge"}`
	oldConfNoVersion := `{"name":"mynet","type":"bridge"}`
	for _, tc := range []struct{ name, file, content string }{
		{"conflist without cniVersion", "10-n.conflist", noVersion},
		{"conf at 0.2.0", "10-b.conf", oldConf},
		{"conf without cniVersion", "10-b.conf", oldConfNoVersion},
		{"conflist at 0.2.0 listing 1.0.0 too", "10-n.conflist",
			`{"name":"n","cniVersion":"0.2.0","cniVersions":["1.0.0"],"plugins":[{"type":"ptp"}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			n.write(n.conf(tc.file), tc.content)
			stop := n.start()
			n.eventually(2*time.Second, "refusal logged", func() error {
				if !strings.Contains(n.logs.String(), "is not supported by kmesh-cni") {
					return errors.New("no log line")
				}
				return nil
			})
			if got := n.read(n.conf(tc.file)); got != tc.content {
				t.Errorf("%s changed:\n%s", tc.file, got)
			}
			n.stopUninstalled(stop, map[string]string{tc.file: tc.content})
		})
	}

	// The primary's agent moves its chain to a version kmesh-cni does not
	// speak, keeping the entry: the entry comes out.
	n := newNode(t)
	n.write(n.conf("10-flannel.conflist"), flannel)
	stop := n.start()
	n.wantChain(2*time.Second, "10-flannel.conflist", "flannel", "portmap", "kmesh-cni")
	with := n.read(n.conf("10-flannel.conflist"))
	n.write(n.conf("10-flannel.conflist"), strings.Replace(with, `"0.3.1"`, `"0.2.0"`, 1))
	n.wantChain(2*time.Second, "10-flannel.conflist", "flannel", "portmap")
	n.stopUninstalled(stop, map[string]string{"10-flannel.conflist": strings.Replace(flannel, `"0.3.1"`, `"0.2.0"`, 1)})
}

// The primary's agent writes its single-plugin file again while the
// installer is not looking (it was down, or stops before its next check):
// the conflist made from the earlier copy is stale and must not outlive
// the uninstall, or it becomes the node's network once the agent removes or
// renames its file.
func TestUninstallAfterTheConfIsWrittenAgain(t *testing.T) {
	n := newNode(t)
	n.write(n.conf("10-bridge.conf"), bridgeConf)
	crash := n.startCrashing()
	n.wantConverted(2*time.Second, "10-bridge.conf", "10-bridge.conflist", "bridge", "kmesh-cni")
	crash()
	changed := strings.Replace(bridgeConf, "cni0", "cni1", 1)
	n.write(n.conf("10-bridge.conf"), changed)
	in, err := New(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Uninstall(); err != nil {
		t.Fatal(err)
	}
	n.wantUninstalled(map[string]string{"10-bridge.conf": changed})

	// Likewise when the file comes back at a version kmesh-cni does not
	// speak, so that the entry cannot follow it.
	n = newNode(t)
	n.write(n.conf("10-bridge.conf"), bridgeConf)
	stop := n.start()
	n.wantConverted(2*time.Second, "10-bridge.conf", "10-bridge.conflist", "bridge", "kmesh-cni")
	old := strings.Replace(bridgeConf, `"0.4.0"`, `"0.2.0"`, 1)
	n.write(n.conf("10-bridge.conf"), old)
	n.eventually(2*time.Second, "stale conflist removed", func() error {
		if _, err := os.Stat(n.conf("10-bridge.conflist")); err == nil {
			return errors.New("10-bridge.conflist still there")
		}
		return nil
	})
	n.stopUninstalled(stop, map[string]string{"10-bridge.conf": old})
}

// setImmutable sets or clears the immutable attribute of dir (chattr +i),
// which makes even root's writes in it fail, as on a read-only mount.
func setImmutable(t *testing.T, dir string, on bool) error {
	t.Helper()
	const immutable = 0x10 // FS_IMMUTABLE_FL in linux/fs.h
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		return err
	}
	if on {
		flags |= immutable
	} else {
		flags &^= immutable
	}
	return unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags))
}

// An entry that cannot be taken out keeps its binary: without it the
// runtime fails every pod's ADD, while kmesh-cni with its daemon gone lets
// pods start (failurePolicy open).
func TestUninstallKeepsTheBinaryOfAnEntryLeftBehind(t *testing.T) {
	n := newNode(t)
	n.write(n.conf("10-flannel.conflist"), flannel)
	crash := n.startCrashing()
	n.wantChain(2*time.Second, "10-flannel.conflist", "flannel", "portmap", "kmesh-cni")
	crash()
	if err := setImmutable(t, n.host(confDir), true); err != nil {
		t.Skipf("cannot make the conf dir immutable here: %v", err)
	}
	t.Cleanup(func() { setImmutable(t, n.host(confDir), false) })
	in, err := New(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Uninstall(); err == nil {
		t.Fatal("Uninstall succeeded in a conf dir it cannot write")
	}
	n.wantChain(0, "10-flannel.conflist", "flannel", "portmap", "kmesh-cni")
	for _, b := range n.cfg.Binaries {
		if _, err := os.Stat(n.host(filepath.Join(binDir, b))); err != nil {
			t.Errorf("binary %s of the entry left behind: %v", b, err)
		}
	}
	// Once the directory can be written, a later uninstall finishes.
	if err := setImmutable(t, n.host(confDir), false); err != nil {
		t.Fatal(err)
	}
	if err := in.Uninstall(); err != nil {
		t.Fatal(err)
	}
	n.wantUninstalled(map[string]string{"10-flannel.conflist": flannel})
}

// Uninstall takes the entry out of every conf file that carries one, also
// when the install state is gone (deleted by hand): the binaries go with
// it, and an entry left without them would fail every pod's ADD.
func TestUninstallWithoutTheState(t *testing.T) {
	n := newNode(t)
	n.write(n.conf("10-flannel.conflist"), flannel)
	crash := n.startCrashing()
	n.wantChain(2*time.Second, "10-flannel.conflist", "flannel", "portmap", "kmesh-cni")
	crash()
	if err := os.Remove(n.conf(stateName)); err != nil {
		t.Fatal(err)
	}
	in, err := New(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Uninstall(); err != nil {
		t.Fatal(err)
	}
	n.wantUninstalled(map[string]string{"10-flannel.conflist": flannel})
}

// The agent writes the file again between the installer's read of it and
// its removal: the new version stays and is converted next, not lost.
func TestConfWrittenAgainWhileConverted(t *testing.T) {
	for _, name := range []string{"10-bridge.conf", "10-bridge.json"} {
		t.Run(name, func(t *testing.T) {
			n := newNode(t)
			changed := strings.Replace(bridgeConf, "cni0", "cni1", 1)
			n.write(n.conf(name), changed)
			in, err := New(n.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(n.host(binDir), 0o755); err != nil {
				t.Fatal(err)
			}
			// What the installer read is the earlier version.
			if err := in.convert(name, []byte(bridgeConf), 0o644); err != nil {
				t.Fatal(err)
			}
			if got := n.read(n.conf(name)); got != changed {
				t.Fatalf("%s = %s, want the version written meanwhile", name, got)
			}
			if !strings.Contains(n.logs.String(), "changed while it was converted") {
				t.Errorf("no log line:\n%s", n.logs.String())
			}
			if err := in.reconcileConf(); err != nil {
				t.Fatal(err)
			}
			n.wantConverted(time.Second, name, "10-bridge.conflist", "bridge", "kmesh-cni")
			if !strings.Contains(n.read(n.conf("10-bridge.conflist")), "cni1") {
				t.Errorf("conflist is not from the version written meanwhile: %s", n.read(n.conf("10-bridge.conflist")))
			}
			if err := in.Uninstall(); err != nil {
				t.Fatal(err)
			}
			if got := n.read(n.conf(name)); got != changed {
				t.Errorf("restored %s = %s, want the version written meanwhile", name, got)
			}
		})
	}
}

func TestRemoveIfUnchanged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "10-bridge.conf")
	write := func(content string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	left := func() []string {
		t.Helper()
		des, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, de := range des {
			names = append(names, de.Name())
		}
		return names
	}

	write("a", 0o644)
	if changed, err := removeIfUnchanged(path, []byte("a"), 0o644); err != nil || changed {
		t.Fatalf("unchanged: changed=%v err=%v", changed, err)
	}
	if got := left(); len(got) != 0 {
		t.Fatalf("left %v, want nothing", got)
	}

	for _, tc := range []struct {
		name    string
		content string
		mode    os.FileMode
	}{{"content", "b", 0o644}, {"mode only", "a", 0o600}} {
		write(tc.content, tc.mode)
		changed, err := removeIfUnchanged(path, []byte("a"), 0o644)
		if err != nil || !changed {
			t.Fatalf("%s: changed=%v err=%v", tc.name, changed, err)
		}
		b, err := os.ReadFile(path)
		st, serr := os.Stat(path)
		if err != nil || serr != nil || string(b) != tc.content || st.Mode().Perm() != tc.mode {
			t.Fatalf("%s: the changed file is not back as it was: %q %v %v %v", tc.name, b, err, st, serr)
		}
		if got := left(); len(got) != 1 {
			t.Fatalf("%s: left %v, want the file alone", tc.name, got)
		}
	}

	os.Remove(path)
	if changed, err := removeIfUnchanged(path, []byte("a"), 0o644); err != nil || changed {
		t.Fatalf("gone already: changed=%v err=%v", changed, err)
	}
}
