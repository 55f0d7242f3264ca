package kubenode

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// The node applies install/kubernetes with exactly its edits: a change to
// the manifests that removes a line the node adapts fails here, not on a
// node.
func TestKmeshManifest(t *testing.T) {
	m, err := kmeshManifest("/sys/fs/cgroup/unified/kmnode-1-1/kubepods", "127.0.0.1:15012")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"- --cgroup-root=/host/sys/fs/cgroup/unified/kmnode-1-1/kubepods\n",
		"- --xds-address=127.0.0.1:15012\n",
		"- --plugin-log-file=/var/log/kmesh-cni.log\n",
		"image: kmesh-go/kmesh-daemon:latest",
		"image: kmesh-go/kmesh-install:latest",
		"kind: DaemonSet",
		"kind: ClusterRoleBinding",
		// kmesh-install tells an uninstall (UninstallKmesh deletes the
		// DaemonSet) from an upgrade by looking the DaemonSet up.
		"- --daemonset=kmesh\n",
		"kind: RoleBinding",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("manifest lacks %q", want)
		}
	}
	if strings.Contains(m, "istiod.istio-system.svc:15012") {
		t.Error("manifest still dials istiod by its Service name")
	}
}

func TestOwnerGone(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	for name, want := range map[string]bool{
		"kmnode-999999999-1":       true,
		"kmnode-" + self + "-1":    false, // this process
		"kmnode-1-1":               false, // init is running
		"kmnode-999999999":         false,
		"kmnode-999999999-x":       false,
		"other-999999999-1":        false,
		"kmnode-999999999-1-extra": false,
	} {
		if got := ownerGone(name, "kmnode"); got != want {
			t.Errorf("ownerGone(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestConfigsNameTheNode(t *testing.T) {
	k := kubeletConfig("10.250.0.2", "/kmnode-1-1")
	for _, want := range []string{"address: 10.250.0.2", "cgroupRoot: /kmnode-1-1", "failCgroupV1: false", "cgroupDriver: cgroupfs", "nodefs.available: 1%"} {
		if !strings.Contains(k, want) {
			t.Errorf("kubelet config lacks %q:\n%s", want, k)
		}
	}
	c := containerdConfig("/tmp/x/containerd")
	for _, want := range []string{`root = "/tmp/x/containerd"`, "restrict_oom_score_adj = true", `sandbox_image = "docker.io/kmesh-go/pause:1"`, "SystemdCgroup = false"} {
		if !strings.Contains(c, want) {
			t.Errorf("containerd config lacks %q:\n%s", want, c)
		}
	}
}

// The waypoint's manifest differs from install/kubernetes/waypoint only in
// istiod's address.
func TestWaypointManifest(t *testing.T) {
	m, err := waypointManifest("10.250.0.2:15012")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m, "- --xds-address=10.250.0.2:15012\n") || strings.Contains(m, "istiod.istio-system.svc:15012") {
		t.Fatalf("istiod's address not adapted:\n%s", m)
	}
	for _, want := range []string{"image: kmesh-go/kmesh-waypoint:latest", "kind: Gateway", "gatewayClassName: istio-waypoint"} {
		if !strings.Contains(m, want) {
			t.Errorf("manifest lacks %q", want)
		}
	}
}
