package controlplane_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kmesh-go/kmesh/tests/e2e/controlplane"
)

const (
	addressTypeURL = "type.googleapis.com/istio.workload.Address"

	testNS     = "kmesh-e2e"
	nodeName   = "kmesh-e2e-node"
	podName    = "echo-0"
	svcName    = "echo"
	podIP      = "10.244.0.10"
	serviceVIP = "10.96.0.50"
)

// TestIstiodServesAmbientWorkloads starts the real control plane in a network
// namespace with only loopback, adds a Service and a running Pod, and checks
// that a ztunnel-like delta ADS client gets both from istiod, over the
// plaintext port and over TLS with a service-account token.
func TestIstiodServesAmbientWorkloads(t *testing.T) {
	if os.Getenv("KMESH_E2E") != "1" {
		t.Skip("end-to-end test: set KMESH_E2E=1 (needs root, etcd and tests/e2e/tools/build.sh)")
	}
	ns, dir := controlplane.Sandbox(t, "kmesh-e2e-cp")

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	start := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Options{Dir: dir, NetNS: ns})
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, c := range []string{"etcd", "kube-apiserver", "istiod"} {
				t.Logf("end of %s.log:\n%s", c, cp.LogTail(c, 3000))
			}
		}
		stopStart := time.Now()
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
		t.Logf("control plane stopped in %s", time.Since(stopStart).Round(time.Millisecond))
	})
	t.Logf("control plane ready in %s (netns %s)", time.Since(start).Round(time.Millisecond), ns)

	// The Service and the Pod behind it; no kubelet runs, so the test writes
	// the Pod's status itself.
	k8s := cp.Clientset
	if err := cp.EnsureNamespace(ctx, testNS); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "echo"}
	_, err = k8s.CoreV1().Services(testNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svcName},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: serviceVIP,
			Selector:  labels,
			Ports: []corev1.ServicePort{{
				Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP,
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Service: %v", err)
	}
	pod, err := k8s.CoreV1().Pods(testNS).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: podName, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   nodeName,
			Containers: []corev1.Container{{Name: "echo", Image: "kmesh-e2e/echo:never-pulled"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Pod: %v", err)
	}
	now := metav1.Now()
	pod.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    "10.244.0.1",
		PodIP:     podIP,
		PodIPs:    []corev1.PodIP{{IP: podIP}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
	if _, err := k8s.CoreV1().Pods(testNS).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("write Pod status: %v", err)
	}
	statusWritten := time.Now()

	dial := grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return cp.DialContext(ctx, "tcp", addr)
	})

	t.Run("plaintext", func(t *testing.T) {
		conn, err := grpc.NewClient("passthrough:///"+cp.IstiodPlaintextAddr, dial,
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
		defer scancel()
		s, err := openAddressStream(sctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.waitFor(podAndServiceArrived); err != nil {
			t.Fatalf("plaintext xDS: %v; have %s", err, s.summary())
		}
		t.Logf("plaintext xDS: workload and service %s after the pod status was written; have %s",
			time.Since(statusWritten).Round(time.Millisecond), s.summary())

		// A deleted Pod arrives as a removed resource name. With no kubelet
		// to finish a graceful delete, the Pod must go at once.
		wlName := s.nameOf(isEchoWorkload)
		now := int64(0)
		if err := k8s.CoreV1().Pods(testNS).Delete(ctx, podName, metav1.DeleteOptions{GracePeriodSeconds: &now}); err != nil {
			t.Fatalf("delete Pod: %v", err)
		}
		deleted := time.Now()
		if err := s.waitFor(func(m map[string]*workloadapi.Address) bool {
			_, ok := m[wlName]
			return !ok
		}); err != nil {
			t.Fatalf("workload %s not removed: %v", wlName, err)
		}
		t.Logf("plaintext xDS: workload removal %s after the delete", time.Since(deleted).Round(time.Millisecond))
		// Put it back for the TLS client.
		pod.ResourceVersion = ""
		pod.UID = ""
		p, err := k8s.CoreV1().Pods(testNS).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("re-create Pod: %v", err)
		}
		p.Status = pod.Status
		if _, err := k8s.CoreV1().Pods(testNS).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("write Pod status: %v", err)
		}
	})

	t.Run("tls", func(t *testing.T) {
		rootPEM, err := cp.RootCertPEM(ctx, controlplane.IstioNamespace)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(rootPEM) {
			t.Fatalf("no certificate in %s", controlplane.RootCertConfigMap)
		}
		token, err := cp.ServiceAccountToken(ctx, controlplane.IstioNamespace, "ztunnel", controlplane.IstioCAAudience)
		if err != nil {
			t.Fatal(err)
		}
		creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: controlplane.IstiodServerName})
		conn, err := grpc.NewClient("passthrough:///"+cp.IstiodTLSAddr, dial, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
		defer scancel()
		sctx = metadata.AppendToOutgoingContext(sctx, "authorization", "Bearer "+token)
		s, err := openAddressStream(sctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.waitFor(podAndServiceArrived); err != nil {
			t.Fatalf("TLS xDS: %v; have %s", err, s.summary())
		}
		t.Logf("TLS xDS with a token for %s/ztunnel: have %s", controlplane.IstioNamespace, s.summary())
	})

	t.Run("tls-without-token", func(t *testing.T) {
		rootPEM, err := cp.RootCertPEM(ctx, controlplane.IstioNamespace)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(rootPEM)
		creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: controlplane.IstiodServerName})
		conn, err := grpc.NewClient("passthrough:///"+cp.IstiodTLSAddr, dial, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		s, err := openAddressStream(sctx, conn)
		if err == nil {
			err = s.waitFor(podAndServiceArrived)
		}
		if err == nil {
			t.Fatal("istiod served workloads over TLS without a token")
		}
		t.Logf("refused as expected: %v", err)
	})
}

// podAndServiceArrived is the first expectation: the Pod as a Workload with
// its IP, and the Service with its VIP.
func podAndServiceArrived(m map[string]*workloadapi.Address) bool {
	var wl, svc bool
	for _, a := range m {
		wl = wl || isEchoWorkload(a)
		svc = svc || isEchoService(a)
	}
	return wl && svc
}

func isEchoWorkload(a *workloadapi.Address) bool {
	w := a.GetWorkload()
	if w == nil || w.Name != podName || w.Namespace != testNS {
		return false
	}
	for _, ip := range w.Addresses {
		if addrIs(ip, podIP) {
			return true
		}
	}
	return false
}

func isEchoService(a *workloadapi.Address) bool {
	s := a.GetService()
	if s == nil || s.Name != svcName || s.Namespace != testNS {
		return false
	}
	for _, na := range s.Addresses {
		if addrIs(na.Address, serviceVIP) {
			return true
		}
	}
	return false
}

func addrIs(b []byte, want string) bool {
	ip, ok := netip.AddrFromSlice(b)
	return ok && ip.Unmap() == netip.MustParseAddr(want)
}

// addressStream is a minimal ztunnel: one delta ADS stream subscribed to all
// Address resources, acknowledging every response.
type addressStream struct {
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	known  map[string]*workloadapi.Address
}

func openAddressStream(ctx context.Context, conn *grpc.ClientConn) (*addressStream, error) {
	md, err := structpb.NewStruct(map[string]interface{}{
		"NODE_NAME":       nodeName,
		"NAMESPACE":       controlplane.IstioNamespace,
		"NAME":            "ztunnel-0",
		"CLUSTER_ID":      "Kubernetes",
		"SERVICE_ACCOUNT": "ztunnel",
	})
	if err != nil {
		return nil, err
	}
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return nil, fmt.Errorf("open delta ADS stream: %w", err)
	}
	err = stream.Send(&discoveryv3.DeltaDiscoveryRequest{
		Node: &corev3.Node{
			Id:       "ztunnel~10.244.0.1~ztunnel-0.istio-system~istio-system.svc.cluster.local",
			Metadata: md,
		},
		TypeUrl: addressTypeURL,
		// No names: a wildcard subscription, as ztunnel makes.
	})
	if err != nil {
		return nil, fmt.Errorf("send subscription: %w", err)
	}
	return &addressStream{stream: stream, known: map[string]*workloadapi.Address{}}, nil
}

// waitFor applies responses until cond holds for the resources known so far;
// the stream's context bounds the wait.
func (s *addressStream) waitFor(cond func(map[string]*workloadapi.Address) bool) error {
	for !cond(s.known) {
		resp, err := s.stream.Recv()
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		ack := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce}
		if resp.TypeUrl != addressTypeURL {
			return fmt.Errorf("unexpected type %s", resp.TypeUrl)
		}
		for _, r := range resp.Resources {
			a := &workloadapi.Address{}
			if err := r.Resource.UnmarshalTo(a); err != nil {
				return fmt.Errorf("decode resource %s: %w", r.Name, err)
			}
			s.known[r.Name] = a
		}
		for _, name := range resp.RemovedResources {
			delete(s.known, name)
		}
		if err := s.stream.Send(ack); err != nil {
			return fmt.Errorf("send ACK: %w", err)
		}
	}
	return nil
}

func (s *addressStream) nameOf(match func(*workloadapi.Address) bool) string {
	for name, a := range s.known {
		if match(a) {
			return name
		}
	}
	return ""
}

func (s *addressStream) summary() string {
	var parts []string
	for name, a := range s.known {
		kind := "service"
		if a.GetWorkload() != nil {
			kind = "workload"
		}
		parts = append(parts, kind+" "+name)
	}
	return fmt.Sprintf("%d addresses [%s]", len(parts), strings.Join(parts, ", "))
}
