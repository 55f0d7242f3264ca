package waypoint

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/kmesh-go/kmesh/tests/e2e/cluster"
)

// The demo namespace: every service and pod in it uses the waypoint
// (namespace label), which serves services and workloads alike.
const (
	ns          = "wp"
	gatewayName = "waypoint"
	waypointSA  = "waypoint"
	waypointIP  = "10.250.0.2"
	waypointVIP = "10.96.10.2"
)

var (
	gvrHTTPRoute = cluster.GVRHTTPRoute
	gvrVS        = cluster.GVRVS
	gvrDR        = cluster.GVRDR
	gvrAuthz     = cluster.GVRAuthz
)

// theWaypoint is the waypoint Gateway and its objects.
var theWaypoint = cluster.Waypoint{Namespace: ns, Name: gatewayName, ServiceAccount: waypointSA, VIP: waypointVIP}

// svcSpec is one service of the demo and its pods.
type svcSpec struct {
	name, vip string
	ports     []corev1.ServicePort
	app       string
	labels    map[string]string // pod labels besides app
	pods      map[string]string // pod name -> IP
	// noHBONE: the pods are not ztunnel-enrolled (no redirection
	// annotation), so istiod sends their plain addresses.
	noHBONE bool
}

func httpPort(port, target int32) corev1.ServicePort {
	return corev1.ServicePort{Name: "http", Port: port, TargetPort: intstr.FromInt32(target), Protocol: corev1.ProtocolTCP}
}

var demoServices = []svcSpec{
	{name: "web", vip: "10.96.10.10", app: "web",
		// 8081 has no protocol: istiod sniffs it (an HTTP and a TCP chain).
		ports: []corev1.ServicePort{httpPort(80, 8080), {Name: "other", Port: 8081, TargetPort: intstr.FromInt32(8081), Protocol: corev1.ProtocolTCP}},
		pods:  map[string]string{"web-v1-0": "10.250.1.1", "web-v1-1": "10.250.1.2", "web-v2-0": "10.250.1.3"}},
	{name: "web-v1", vip: "10.96.10.11", app: "web", labels: map[string]string{"version": "v1"}, ports: []corev1.ServicePort{httpPort(80, 8080)}},
	{name: "web-v2", vip: "10.96.10.12", app: "web", labels: map[string]string{"version": "v2"}, ports: []corev1.ServicePort{httpPort(80, 8080)}},
	{name: "reviews", vip: "10.96.10.20", app: "reviews", ports: []corev1.ServicePort{httpPort(9080, 9080)},
		pods: map[string]string{"reviews-0": "10.250.2.1", "reviews-1": "10.250.2.2"}},
	{name: "grpc-echo", vip: "10.96.10.30", app: "grpc-echo",
		ports: []corev1.ServicePort{{Name: "api", Port: 9090, TargetPort: intstr.FromInt32(9090), Protocol: corev1.ProtocolTCP, AppProtocol: ptr("grpc")}},
		pods:  map[string]string{"grpc-echo-0": "10.250.3.1"}},
	{name: "db", vip: "10.96.10.40", app: "db", noHBONE: true,
		ports: []corev1.ServicePort{{Name: "tcp-db", Port: 5432, TargetPort: intstr.FromInt32(5432), Protocol: corev1.ProtocolTCP, AppProtocol: ptr("tcp")}},
		pods:  map[string]string{"db-0": "10.250.4.1"}},
	{name: "db-replica", vip: "10.96.10.41", app: "db-replica",
		ports: []corev1.ServicePort{{Name: "tcp-db", Port: 5432, TargetPort: intstr.FromInt32(5432), Protocol: corev1.ProtocolTCP, AppProtocol: ptr("tcp")}},
		pods:  map[string]string{"db-replica-0": "10.250.4.2"}},
	{name: "secure", vip: "10.96.10.50", app: "secure", ports: []corev1.ServicePort{httpPort(80, 8080)},
		pods: map[string]string{"secure-0": "10.250.5.1"}},
	{name: "mirror", vip: "10.96.10.60", app: "mirror", ports: []corev1.ServicePort{httpPort(80, 8080)},
		pods: map[string]string{"mirror-0": "10.250.6.1"}},
}

// podLabels gives the pods of web their versions.
var podLabels = map[string]map[string]string{
	"web-v1-0": {"version": "v1"}, "web-v1-1": {"version": "v1"}, "web-v2-0": {"version": "v2"},
	"reviews-0": {"version": "v1"}, "reviews-1": {"version": "v2"},
}

func ptr[T any](v T) *T { return &v }

type world struct {
	ctx context.Context
	k8s *kubernetes.Clientset
	dyn dynamic.Interface
}

// setup creates the waypoint (Gateway, its ServiceAccount, Service and
// Pod, as istiod's deployment controller would), the services and pods
// that use it, and their routing.
func (w *world) setup(t *testing.T) {
	t.Helper()
	_, err := w.k8s.CoreV1().Namespaces().Create(w.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
		Labels: map[string]string{"istio.io/use-waypoint": gatewayName}}}, metav1.CreateOptions{})
	must(t, err)
	must(t, theWaypoint.Create(w.ctx, w.k8s, w.dyn))
	gwLabels := theWaypoint.PodLabels()
	w.pod(t, "waypoint-0", waypointIP, waypointSA, gwLabels, false)
	must(t, theWaypoint.WriteEndpointSlice(w.ctx, w.k8s, map[string]string{"waypoint-0": waypointIP}, "node-a"))

	for _, s := range demoServices {
		_, err := w.k8s.CoreV1().Services(ns).Create(w.ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: s.name},
			Spec:       corev1.ServiceSpec{ClusterIP: s.vip, Selector: selector(s), Ports: s.ports},
		}, metav1.CreateOptions{})
		must(t, err)
		for name, ip := range s.pods {
			labels := map[string]string{"app": s.app}
			for k, v := range podLabels[name] {
				labels[k] = v
			}
			w.pod(t, name, ip, "default", labels, !s.noHBONE)
		}
	}
	// The endpoints controller's job: each service's pods by selector.
	for _, s := range demoServices {
		sel := selector(s)
		pods := map[string]string{}
		for _, o := range demoServices {
			for name, ip := range o.pods {
				labels := map[string]string{"app": o.app}
				for k, v := range podLabels[name] {
					labels[k] = v
				}
				if matches(sel, labels) {
					pods[name] = ip
				}
			}
		}
		w.endpointSlice(t, s.name, s.ports, pods)
	}

	// 90/10 between web's versions (GAMMA: a route attached to a Service).
	w.apply(t, gvrHTTPRoute, httpRoute(90, 10))
	w.apply(t, gvrVS, map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
		"metadata": map[string]any{"name": "reviews", "namespace": ns},
		"spec": map[string]any{
			"hosts": []any{"reviews." + ns + ".svc.cluster.local"},
			"http": []any{
				map[string]any{"name": "old", "match": []any{map[string]any{"uri": map[string]any{"prefix": "/old"}}},
					"redirect": map[string]any{"uri": "/new", "redirectCode": int64(301)}},
				map[string]any{"name": "v2",
					"match":   []any{map[string]any{"uri": map[string]any{"prefix": "/v2"}, "headers": map[string]any{"x-user": map[string]any{"exact": "alice"}}}},
					"rewrite": map[string]any{"uri": "/"},
					"route": []any{map[string]any{"destination": map[string]any{"host": "reviews." + ns + ".svc.cluster.local", "port": map[string]any{"number": int64(9080)}},
						"headers": map[string]any{"request": map[string]any{"set": map[string]any{"x-vs": "reviews"}}, "response": map[string]any{"remove": []any{"x-internal"}}}}},
					"retries":          map[string]any{"attempts": int64(3), "perTryTimeout": "2s", "retryOn": "5xx,gateway-error,connect-failure"},
					"timeout":          "10s",
					"mirror":           map[string]any{"host": "mirror." + ns + ".svc.cluster.local", "port": map[string]any{"number": int64(80)}},
					"mirrorPercentage": map[string]any{"value": 50.0},
					"fault": map[string]any{
						"delay": map[string]any{"fixedDelay": "5s", "percentage": map[string]any{"value": 10.0}},
						"abort": map[string]any{"httpStatus": int64(503), "percentage": map[string]any{"value": 5.0}}},
				},
				map[string]any{"name": "default",
					"route":      []any{map[string]any{"destination": map[string]any{"host": "reviews." + ns + ".svc.cluster.local"}}},
					"corsPolicy": map[string]any{"allowOrigins": []any{map[string]any{"exact": "https://example.com"}}, "allowMethods": []any{"GET", "POST"}},
				},
			},
		},
	})
	// Traffic policy and a subset: LB, connection limits, outlier
	// detection on reviews' clusters, and a subset cluster.
	w.apply(t, gvrDR, map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
		"metadata": map[string]any{"name": "reviews", "namespace": ns},
		"spec": map[string]any{
			"host": "reviews." + ns + ".svc.cluster.local",
			"trafficPolicy": map[string]any{
				"loadBalancer":     map[string]any{"simple": "ROUND_ROBIN"},
				"connectionPool":   map[string]any{"tcp": map[string]any{"maxConnections": int64(100), "connectTimeout": "3s"}, "http": map[string]any{"http1MaxPendingRequests": int64(50), "maxRequestsPerConnection": int64(10)}},
				"outlierDetection": map[string]any{"consecutive5xxErrors": int64(5), "interval": "10s"},
			},
			"subsets": []any{map[string]any{"name": "v1", "labels": map[string]any{"version": "v1"}}},
		},
	})
	// A TCP split: the db chain's tcp_proxy gets weighted clusters.
	w.apply(t, gvrVS, map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
		"metadata": map[string]any{"name": "db", "namespace": ns},
		"spec": map[string]any{
			"hosts": []any{"db." + ns + ".svc.cluster.local"},
			"tcp": []any{map[string]any{"route": []any{
				map[string]any{"destination": map[string]any{"host": "db." + ns + ".svc.cluster.local", "port": map[string]any{"number": int64(5432)}}, "weight": int64(70)},
				map[string]any{"destination": map[string]any{"host": "db-replica." + ns + ".svc.cluster.local", "port": map[string]any{"number": int64(5432)}}, "weight": int64(30)},
			}}},
		},
	})
	// Policy on one service only: its chains carry RBAC, the others not.
	w.apply(t, gvrAuthz, map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": "secure-allow", "namespace": ns},
		"spec": map[string]any{
			"targetRefs": []any{map[string]any{"kind": "Service", "group": "", "name": "secure"}},
			"action":     "ALLOW",
			"rules":      []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"namespaces": []any{ns}}}}, "to": []any{map[string]any{"operation": map[string]any{"methods": []any{"GET"}}}}}},
		},
	})
}

func matches(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// endpointSlice writes what the EndpointSlice controller would.
func (w *world) endpointSlice(t *testing.T, svc string, ports []corev1.ServicePort, pods map[string]string) {
	t.Helper()
	must(t, cluster.WriteEndpointSlice(w.ctx, w.k8s, ns, svc, ports, pods, "node-a"))
}

func selector(s svcSpec) map[string]string {
	sel := map[string]string{"app": s.app}
	for k, v := range s.labels {
		sel[k] = v
	}
	return sel
}

func httpRoute(w1, w2 int64) map[string]any {
	return map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
		"metadata": map[string]any{"name": "web-split", "namespace": ns},
		"spec": map[string]any{
			"parentRefs": []any{map[string]any{"group": "", "kind": "Service", "name": "web", "port": int64(80)}},
			"rules": []any{map[string]any{"backendRefs": []any{
				map[string]any{"name": "web-v1", "port": int64(80), "weight": w1},
				map[string]any{"name": "web-v2", "port": int64(80), "weight": w2},
			}}},
		},
	}
}

// gatewayPolicy denies /admin on every service of the waypoint.
func gatewayPolicy() map[string]any {
	return map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": "waypoint-deny-admin", "namespace": ns},
		"spec": map[string]any{
			"targetRefs": []any{map[string]any{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": gatewayName}},
			"action":     "DENY",
			"rules":      []any{map[string]any{"to": []any{map[string]any{"operation": map[string]any{"paths": []any{"/admin"}}}}}},
		},
	}
}

// apply creates or replaces an object (server-side apply).
func (w *world) apply(t *testing.T, gvr schema.GroupVersionResource, obj map[string]any) {
	t.Helper()
	must(t, cluster.Apply(w.ctx, w.dyn, gvr, obj))
}

// pod creates a Pod and writes its status as a kubelet would: running,
// ready, with its IP. hbone marks it ztunnel-enrolled.
func (w *world) pod(t *testing.T, name, ip, sa string, labels map[string]string, hbone bool) {
	t.Helper()
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: "node-a", ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "app", Image: "kmesh-e2e/app:never-pulled"}}},
	}
	if hbone {
		obj.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	}
	_, err := w.k8s.CoreV1().Pods(ns).Create(w.ctx, obj, metav1.CreateOptions{})
	must(t, err)
	pods := w.k8s.CoreV1().Pods(ns)
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(w.ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		cur.Status = corev1.PodStatus{Phase: corev1.PodRunning, HostIP: "10.250.0.1", PodIP: ip,
			PodIPs: []corev1.PodIP{{IP: ip}}, StartTime: &now,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
				{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
		_, err = pods.UpdateStatus(w.ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("pod %s status: %v", name, err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// gatewayStatus renders the Gateway's status, for failure messages.
func (w *world) gatewayStatus() string { return theWaypoint.Status(w.ctx, w.dyn) }

// gatewayAddresses reads Gateway.status.addresses.
func (w *world) gatewayAddresses() ([]string, error) { return theWaypoint.Addresses(w.ctx, w.dyn) }
