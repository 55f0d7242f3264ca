package cluster

import (
	"context"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// The kinds the suites write as unstructured objects.
var (
	GVRGateway   = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}
	GVRHTTPRoute = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}
	GVRGRPCRoute = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "grpcroutes"}
	GVRVS        = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}
	GVRDR        = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "destinationrules"}
	GVRAuthz     = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
)

// Apply creates or replaces an object (server-side apply, forced).
func Apply(ctx context.Context, dyn dynamic.Interface, gvr schema.GroupVersionResource, obj map[string]any) error {
	u := &unstructured.Unstructured{Object: obj}
	_, err := dyn.Resource(gvr).Namespace(u.GetNamespace()).Apply(ctx, u.GetName(), u,
		metav1.ApplyOptions{FieldManager: "kmesh-e2e", Force: true})
	if err != nil {
		return fmt.Errorf("apply %s %s/%s: %w", gvr.Resource, u.GetNamespace(), u.GetName(), err)
	}
	return nil
}

// WriteEndpointSlice writes what the EndpointSlice controller would for a
// service (no controller-manager runs here): istiod's EDS and a waypoint
// Gateway's address come from EndpointSlices, not from selectors. pods
// maps a pod's name to its IP; node is where they run.
func WriteEndpointSlice(ctx context.Context, k8s kubernetes.Interface, ns, svc string, ports []corev1.ServicePort, pods map[string]string, node string) error {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc + "-kmesh", Labels: map[string]string{
			discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "kmesh-e2e"}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, p := range ports {
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr(p.Name), Port: ptr(p.TargetPort.IntVal),
			Protocol: ptr(corev1.ProtocolTCP), AppProtocol: p.AppProtocol})
	}
	names := make([]string, 0, len(pods))
	for n := range pods {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{pods[n]},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
			NodeName:   ptr(node),
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: n}})
	}
	_, err := k8s.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("EndpointSlice of %s/%s: %w", ns, svc, err)
	}
	return nil
}

// Waypoint names a waypoint Gateway and its objects.
type Waypoint struct {
	Namespace, Name, ServiceAccount string
	// VIP is the ClusterIP of its Service.
	VIP string
}

// PodLabels are the labels of the Gateway's pods (its Service's
// selector).
func (w Waypoint) PodLabels() map[string]string {
	return map[string]string{"gateway.networking.k8s.io/gateway-name": w.Name}
}

// Ports are the ports of the Gateway's Service: HBONE on 15008.
func (w Waypoint) Ports() []corev1.ServicePort {
	return []corev1.ServicePort{{Name: "mesh", Port: 15008, TargetPort: intstr.FromInt32(15008), Protocol: corev1.ProtocolTCP, AppProtocol: ptr("all")}}
}

// Create writes what istiod's deployment controller would for a waypoint
// Gateway, less the Deployment: the ServiceAccount, the Gateway
// (istio-waypoint, HBONE 15008, for services and workloads alike) and its
// Service. Its pods and their EndpointSlice are the caller's.
func (w Waypoint) Create(ctx context.Context, k8s kubernetes.Interface, dyn dynamic.Interface) error {
	_, err := k8s.CoreV1().ServiceAccounts(w.Namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: w.ServiceAccount}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("ServiceAccount %s/%s: %w", w.Namespace, w.ServiceAccount, err)
	}
	err = Apply(ctx, dyn, GVRGateway, map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
		"metadata": map[string]any{"name": w.Name, "namespace": w.Namespace,
			// Services and pod addresses both: the direct-to-pod chains too.
			"labels": map[string]any{"istio.io/waypoint-for": "all"}},
		"spec": map[string]any{"gatewayClassName": "istio-waypoint",
			"listeners": []any{map[string]any{"name": "mesh", "port": int64(15008), "protocol": "HBONE"}}},
	})
	if err != nil {
		return err
	}
	_, err = k8s.CoreV1().Services(w.Namespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: w.Name, Labels: map[string]string{
			"gateway.networking.k8s.io/gateway-name": w.Name, "gateway.istio.io/managed": "istio.io-mesh-controller"}},
		Spec: corev1.ServiceSpec{ClusterIP: w.VIP, Selector: w.PodLabels(), Ports: w.Ports()},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("Service %s/%s: %w", w.Namespace, w.Name, err)
	}
	return nil
}

// WriteEndpointSlice writes the EndpointSlice of the Gateway's Service:
// istiod fills the Gateway's address from it. pods maps names to IPs.
func (w Waypoint) WriteEndpointSlice(ctx context.Context, k8s kubernetes.Interface, pods map[string]string, node string) error {
	ports := w.Ports()
	for i := range ports {
		ports[i].AppProtocol = nil
	}
	return WriteEndpointSlice(ctx, k8s, w.Namespace, w.Name, ports, pods, node)
}

// Addresses reads the Gateway's status.addresses (istiod fills them once
// the Gateway has a Service with endpoints).
func (w Waypoint) Addresses(ctx context.Context, dyn dynamic.Interface) ([]string, error) {
	u, err := dyn.Resource(GVRGateway).Namespace(w.Namespace).Get(ctx, w.Name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	addrs, _, _ := unstructured.NestedSlice(u.Object, "status", "addresses")
	var out []string
	for _, a := range addrs {
		if m, ok := a.(map[string]any); ok {
			out = append(out, fmt.Sprint(m["value"]))
		}
	}
	return out, nil
}

// Status renders the Gateway's status and the GatewayClasses, for failure
// messages.
func (w Waypoint) Status(ctx context.Context, dyn dynamic.Interface) string {
	u, err := dyn.Resource(GVRGateway).Namespace(w.Namespace).Get(ctx, w.Name, metav1.GetOptions{})
	if err != nil {
		return err.Error()
	}
	st, _, _ := unstructured.NestedMap(u.Object, "status")
	classes, err := dyn.Resource(schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gatewayclasses"}).List(ctx, metav1.ListOptions{})
	var names []string
	if err == nil {
		for _, c := range classes.Items {
			names = append(names, c.GetName())
		}
	}
	return fmt.Sprintf("status %v; GatewayClasses %v %v", st, names, err)
}

func ptr[T any](v T) *T { return &v }
