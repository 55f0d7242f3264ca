package kubenode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// containerdSocket is containerd's socket inside the node (its /run).
const containerdSocket = "/run/containerd/containerd.sock"

// containerdConfig is Debian's containerd 1.6 set up for this node: its
// root in the node's folder (overlayfs snapshots cannot live on the /var
// overlay), its state in the node's /run, the CRI plugin with the local
// pause image, cgroupfs, and the CNI folders of a real node (which the
// node's overlays keep to itself).
func containerdConfig(root string) string {
	return fmt.Sprintf(`version = 2
root = %q
state = "/run/containerd"

[grpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/%s"
  # root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj, and
  # every sandbox fails ("can't get final child's PID from pipe") without it.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
`, root, containerdSocket, pauseImage)
}

// kubeletConfig is a KubeletConfiguration for a test node on this machine
// (see shared/docs/kubelet.md): cgroupfs on cgroup v1 (accepted with
// failCgroupV1 false), its cgroup tree under cgroupRoot, no swap check,
// anonymous and always-allowed access (the apiserver reaches it for logs
// and exec; only the node's namespace can), no image GC, low eviction
// thresholds (the disk is small and shared).
func kubeletConfig(nodeIP, cgroupRoot string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
cgroupRoot: %s
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
maxPods: 250
serializeImagePulls: false
kubeAPIQPS: 100
kubeAPIBurst: 200
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
rotateCertificates: false
serverTLSBootstrap: false
protectKernelDefaults: false
`, nodeIP, cgroupRoot, containerdSocket)
}

// primaryConflist is the node's own network: the CNI reference bridge with
// host-local addresses, each pod with a default route to the bridge (the
// node's namespace, which has no route off the machine). containerd 1.6
// speaks CNI up to 1.0.0.
func primaryConflist(subnet, ipamDir string) string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "kmnode",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "isDefaultGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "dataDir": %q
      }
    }
  ]
}
`, subnet, ipamDir)
}

// PrimaryConflist is the file name of the node's network in /etc/cni/net.d.
const PrimaryConflist = "10-kmnode.conflist"

// startContainerd writes containerd's config, starts it inside the node
// and waits for its socket to answer.
func (n *Node) startContainerd(ctx context.Context) error {
	cfg := n.path("containerd.toml")
	if err := os.WriteFile(cfg, []byte(containerdConfig(n.path("containerd"))), 0o644); err != nil {
		return err
	}
	p, err := startProc("containerd", n.path("containerd.log"), n.runtimeCgroup, n.env(),
		n.nsenter("containerd", "--config", cfg)...)
	if err != nil {
		return err
	}
	n.containerd = p
	return n.waitFor(ctx, p, 30*time.Second, func(ctx context.Context) error {
		_, err := n.Ctr(ctx, "version")
		return err
	})
}

// Ctr runs containerd's ctr inside the node, on the Kubernetes namespace.
func (n *Node) Ctr(ctx context.Context, args ...string) ([]byte, error) {
	return n.Exec(ctx, append([]string{"ctr", "--address", containerdSocket, "--namespace", "k8s.io"}, args...)...)
}

// ImportImages loads image tarballs (bin/images) into the node's
// containerd, where the kubelet finds them: pods name them with
// imagePullPolicy Never or IfNotPresent.
func (n *Node) ImportImages(ctx context.Context, tarballs ...string) error {
	for _, t := range tarballs {
		if _, err := n.Ctr(ctx, "images", "import", t); err != nil {
			return err
		}
	}
	return nil
}

// startKubelet starts the kubelet inside the node.
func (n *Node) startKubelet(ctx context.Context) error {
	cfg := n.path("kubelet.yaml")
	if err := os.WriteFile(cfg, []byte(kubeletConfig(n.IP, "/"+n.base)), 0o644); err != nil {
		return err
	}
	p, err := startProc("kubelet", n.path("kubelet.log"), n.runtimeCgroup, n.env(),
		n.nsenter(filepath.Join(n.cfg.BinDir, "kubelet"),
			"--config="+cfg,
			"--kubeconfig="+n.CP.Kubeconfig,
			"--root-dir="+n.path("kubelet"),
			"--node-ip="+n.IP,
			"--hostname-override="+n.Name,
			"--v=2",
		)...)
	if err != nil {
		return err
	}
	n.kubelet = p
	return nil
}

// RestartKubelet stops the kubelet (SIGTERM) and starts it again, as an
// upgrade or a crash would; pods keep running meanwhile. It returns when
// the node is Ready again.
func (n *Node) RestartKubelet(ctx context.Context) error {
	if err := n.kubelet.stop(10 * time.Second); err != nil {
		return err
	}
	// The node stays Ready in the API for a while after the kubelet
	// stopped; wait for a heartbeat of the new one (they carry seconds).
	time.Sleep(time.Second)
	since := time.Now()
	if err := n.startKubelet(ctx); err != nil {
		return err
	}
	return n.waitNodeReady(ctx, since)
}

// waitNodeReady waits until the Node is Ready with a heartbeat after since.
func (n *Node) waitNodeReady(ctx context.Context, since time.Time) error {
	return n.waitFor(ctx, n.kubelet, 90*time.Second, func(ctx context.Context) error {
		node, err := n.Clientset.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status != corev1.ConditionTrue {
					return fmt.Errorf("node %s: Ready=%s: %s", n.Name, c.Status, c.Message)
				}
				if c.LastHeartbeatTime.Time.Before(since.Truncate(time.Second)) {
					return fmt.Errorf("node %s: no heartbeat since %s", n.Name, since.Format(time.RFC3339))
				}
				return nil
			}
		}
		return fmt.Errorf("node %s: no Ready condition yet", n.Name)
	})
}

// waitFor polls check until it passes, p exits, or timeout passes.
func (n *Node) waitFor(ctx context.Context, p *proc, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		if p != nil {
			if ok, werr := p.exited(); ok {
				return fmt.Errorf("%s exited (%v): %v; end of %s:\n%s", p.name, werr, last, p.logPath, tail(p.logPath, 4000))
			}
		}
		select {
		case <-ctx.Done():
			where := ""
			if p != nil {
				where = fmt.Sprintf("; end of %s:\n%s", p.logPath, tail(p.logPath, 4000))
			}
			return fmt.Errorf("%v (%w)%s", last, ctx.Err(), where)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// nsenter is argv run inside the node's mount and network namespaces.
func (n *Node) nsenter(argv ...string) []string {
	return append([]string{"nsenter", "--mount=" + n.mnt.File, "--net=" + n.NetNSPath, "--"}, argv...)
}

// env is the environment of the node's programs: nothing of the test's.
func (n *Node) env() []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + n.Dir,
	}
}

// Exec runs a short command inside the node (its mount and network
// namespaces), as a shell on the node would, and returns its output.
func (n *Node) Exec(ctx context.Context, argv ...string) ([]byte, error) {
	full := n.nsenter(argv...)
	out, err := commandContext(ctx, n.env(), full...)
	if err != nil {
		return out, fmt.Errorf("on the node: %s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}
