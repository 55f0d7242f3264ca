package kubenode

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The node's mount namespace. containerd, the kubelet and everything they
// start (CNI plugins, shims, containers) see the machine's files, except:
//
//   - /run is a tmpfs of the node's own (containerd's and the kubelet's
//     sockets and state, pods' network namespaces, /run/kmesh);
//   - /etc, /opt and /var/log are overlays on the machine's, whose changes
//     land in the node's folder (/etc/cni/net.d, /opt/cni/bin, pod logs):
//     the install DaemonSet writes to the paths a real node has and the
//     machine's own stay as they were;
//   - /sys/fs/bpf is a bpffs of the node's own, so kmesh's pins (and with
//     them its attachments) go when the node goes.
//
// The namespace is a slave of the machine's (it sees mounts made there, and
// makes none there) and shared within itself (the kubelet's and the
// DaemonSet's mount propagation work). It is kept alive by a bind mount of
// its nsfs file (like `ip netns` does for network namespaces), not by a
// process, so every program of the node joins it with nsenter.
type mountNS struct {
	dir  string // private bind mount holding the namespace file
	File string // the namespace, for nsenter --mount
}

// overlaid are the machine's folders the node writes to through an overlay.
var overlaid = []string{"/etc", "/opt", "/var/log"}

// upperDir is where the node's changes to one overlaid folder land; files
// put there before the namespace is made appear in the node.
func upperDir(nodeDir, path string) string {
	return filepath.Join(nodeDir, "root", strings.TrimPrefix(path, "/"), "upper")
}

func makeMountNS(nodeDir string) (_ *mountNS, err error) {
	m := &mountNS{dir: filepath.Join(nodeDir, "ns")}
	m.File = filepath.Join(m.dir, "mnt")
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return nil, err
	}
	// unshare --mount=FILE needs FILE on a mount that is not shared.
	if err := run("mount", "--bind", m.dir, m.dir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = m.remove()
		}
	}()
	if err := run("mount", "--make-private", m.dir); err != nil {
		return nil, err
	}
	if err := os.WriteFile(m.File, nil, 0o600); err != nil {
		return nil, err
	}
	if err := run("unshare", "--mount="+m.File, "--propagation", "slave", "true"); err != nil {
		return nil, err
	}
	in := func(args ...string) error {
		return run("nsenter", append([]string{"--mount=" + m.File, "--"}, args...)...)
	}
	if err := in("mount", "-t", "tmpfs", "-o", "mode=0755", "kmnode-run", "/run"); err != nil {
		return nil, err
	}
	for _, p := range overlaid {
		upper := upperDir(nodeDir, p)
		work := filepath.Join(filepath.Dir(upper), "work")
		for _, d := range []string{upper, work} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return nil, err
			}
		}
		opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", p, upper, work)
		if err := in("mount", "-t", "overlay", "-o", opts, "kmnode"+strings.ReplaceAll(p, "/", "-"), p); err != nil {
			return nil, err
		}
	}
	if err := in("mount", "-t", "bpf", "kmnode-bpf", "/sys/fs/bpf"); err != nil {
		return nil, err
	}
	if err := in("mount", "--make-rshared", "/"); err != nil {
		return nil, err
	}
	return m, nil
}

// remove drops the namespace: once no process is left in it, its mounts
// (overlays, tmpfs, bpffs, containers' root filesystems, pods' network
// namespace files) go with it.
func (m *mountNS) remove() error {
	var err error
	if mounted(m.File) {
		err = run("umount", m.File)
	}
	if mounted(m.dir) {
		if e := run("umount", m.dir); err == nil {
			err = e
		}
	}
	return err
}

// mounted reports whether path is a mount point in this mount namespace.
func mounted(path string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && unescapeMount(f[4]) == path {
			return true
		}
	}
	return false
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}
