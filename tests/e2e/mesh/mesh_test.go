// Package mesh_test runs the whole product the way a node in a cluster runs
// it, against the real control plane: etcd, kube-apiserver and istiod on the
// loopback of a "node" network namespace; pods made by the real CNI chain
// (loopback, bridge + host-local, then kmesh-cni reading labels from the
// apiserver) on a bridge in that namespace; kmesh-daemon as a real process in
// the node, on the xDS stream from istiod over TLS with a service-account
// token. There is no kubelet: the test creates the Pod objects, runs the CNI
// chain for them and writes their status. Traffic is real: HTTP requests
// from client pods to service addresses, each on a new connection.
//
// Run with KMESH_E2E=1 as root (see tests/e2e/README.md).
package mesh_test

import (
	"net"
	"os"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kmesh-go/kmesh/internal/enrollment"
	"github.com/kmesh-go/kmesh/tests/e2e/cluster"
)

// The cluster the test builds: this node (node-a, the daemon's) and one
// more Node object in another zone, for pods "elsewhere".
const (
	nodeA       = cluster.NodeName
	nodeB       = "node-b"
	region      = cluster.Region
	zoneA       = cluster.Zone
	zoneB       = "eu-west-1b"
	servicePort = 80
	podPort     = 8080
)

// mesh is the running system every scenario uses (package cluster: the
// control plane, the node in a box, kmesh-daemon on istiod's TLS xDS).
type mesh struct {
	*cluster.Cluster
}

type (
	pod         = cluster.Pod
	serviceDump = cluster.ServiceDump
)

func TestMesh(t *testing.T) {
	if os.Getenv("KMESH_E2E") != "1" {
		t.Skip("end-to-end test: set KMESH_E2E=1 (needs root, etcd and tests/e2e/tools/build.sh)")
	}
	m := &mesh{cluster.Start(t, cluster.Options{Prefix: "kme2e", Fortio: true, OtherNodes: map[string]string{nodeB: zoneB}})}

	// Each scenario has its own namespaces and service, and removes its
	// pods when it ends. The restarts come last.
	t.Run("VIPReachesEveryReadyBackend", m.testEveryReadyBackend)
	t.Run("DeletedPodDrainsNewPodJoins", m.testDeletedPod)
	t.Run("NotReadyPodDrains", m.testNotReadyPod)
	t.Run("LocalityPreferCloseFailover", m.testLocality)
	t.Run("AuthorizationPolicy", m.testAuthorization)
	t.Run("NamespaceLabelEnrollsRunningPods", m.testNamespaceLabel)
	t.Run("RestartsUnderLoad", m.testRestartsUnderLoad)
}

// namespace creates a namespace, in the mesh (istio.io/dataplane-mode=kmesh)
// or not.
func (m *mesh) namespace(t *testing.T, name string, inMesh bool) {
	t.Helper()
	var labels map[string]string
	if inMesh {
		labels = map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh}
	}
	m.Namespace(t, name, labels)
}

// service creates a ClusterIP service vip:80 -> 8080 selecting app=<app>.
func (m *mesh) service(t *testing.T, ns, name, vip, app string, mod ...func(*corev1.Service)) string {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: vip,
			Selector:  map[string]string{"app": app},
			Ports: []corev1.ServicePort{{
				Name: "http", Port: servicePort, TargetPort: intstr.FromInt32(podPort), Protocol: corev1.ProtocolTCP,
			}},
		},
	}
	for _, f := range mod {
		f(svc)
	}
	if _, err := m.K8s.CoreV1().Services(ns).Create(m.Ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service %s/%s: %v", ns, name, err)
	}
	return "http://" + net.JoinHostPort(vip, strconv.Itoa(servicePort)) + "/"
}

type podOpts struct {
	node     string // default: this node
	app      string // label app=<app>; servers answer with their name
	sa       string
	notReady bool
	labels   map[string]string
}

// addPod makes a pod (cluster.AddPod); one with an app serves its name
// on :8080.
func (m *mesh) addPod(t *testing.T, ns, name string, o podOpts) *pod {
	t.Helper()
	labels := map[string]string{}
	for k, v := range o.labels {
		labels[k] = v
	}
	co := cluster.PodOpts{Node: o.node, Labels: labels, ServiceAccount: o.sa, NotReady: o.notReady,
		Ports: []corev1.ContainerPort{{ContainerPort: podPort, Protocol: corev1.ProtocolTCP}}}
	if o.app != "" {
		labels["app"] = o.app
		co.Serve = func(p *cluster.Pod) error { return p.ServeName(podPort) }
	}
	return m.AddPod(t, ns, name, co)
}
