package xds

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
)

// GatewayNameLabel is the label istiod's waypoint Service selects the
// waypoint's pods by.
const GatewayNameLabel = "gateway.networking.k8s.io/gateway-name"

// Node is the waypoint as istiod knows it. istiod serves a waypoint the
// services whose Service selects its Pod; it finds the Pod by the node
// id's <pod>.<namespace>, else by the IP, so the Pod must exist. On 15012
// the token must be for Namespace and ServiceAccount (else the stream is
// refused: PermissionDenied). Measured against istiod (tests/e2e/waypoint):
// with the Pod found, NAMESPACE and SERVICE_ACCOUNT are all the metadata
// it needs; the rest is sent as Istio's own waypoint sends it (CLUSTER_ID
// and NETWORK matter with several clusters or networks, LABELS when istiod
// has not seen the Pod yet, ISTIO_VERSION gates version-dependent config).
type Node struct {
	PodIP          netip.Addr
	PodName        string
	Namespace      string
	ServiceAccount string
	// ClusterID is the cluster istiod knows (default "Kubernetes").
	ClusterID string
	// GatewayName is the waypoint Gateway this pod serves; it becomes the
	// gateway-name label and the default WorkloadName.
	GatewayName string
	// Labels are the pod's other labels (istiod falls back to them when it
	// has not seen the Pod yet).
	Labels map[string]string
	// WorkloadName is the Deployment (default GatewayName).
	WorkloadName string
	NodeName     string
	Network      string
	// IstioVersion gates istiod's version-dependent config (default
	// "1.31.0", the version the e2e suite pins).
	IstioVersion string
	// ClusterDomain (default cluster.local).
	ClusterDomain string
}

func (n *Node) check() error {
	var errs []error
	if !n.PodIP.IsValid() {
		errs = append(errs, errors.New("pod IP is required (istiod finds the waypoint's Pod by it)"))
	}
	if n.PodName == "" || n.Namespace == "" {
		errs = append(errs, errors.New("pod name and namespace are required"))
	}
	if n.ServiceAccount == "" {
		errs = append(errs, errors.New("service account is required"))
	}
	if n.GatewayName == "" {
		errs = append(errs, errors.New("gateway name is required"))
	}
	return errors.Join(errs...)
}

func (n *Node) defaults() {
	if n.ClusterID == "" {
		n.ClusterID = "Kubernetes"
	}
	if n.WorkloadName == "" {
		n.WorkloadName = n.GatewayName
	}
	if n.IstioVersion == "" {
		n.IstioVersion = "1.31.0"
	}
	if n.ClusterDomain == "" {
		n.ClusterDomain = "cluster.local"
	}
}

// ID is the node id istiod parses: type~ip~pod.namespace~domain.
func (n *Node) ID() string {
	return fmt.Sprintf("waypoint~%s~%s.%s~%s.svc.%s", n.PodIP.Unmap(), n.PodName, n.Namespace, n.Namespace, n.ClusterDomain)
}

// Metadata is the node metadata istiod reads (model.NodeMetadata's JSON
// names): identity checked against the token, the IPs it finds the Pod
// by, the labels it falls back to, the version it gates features on.
func (n *Node) Metadata() map[string]any {
	labels := maps.Clone(n.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[GatewayNameLabel] = n.GatewayName
	m := map[string]any{
		"NAME":              n.PodName,
		"NAMESPACE":         n.Namespace,
		"SERVICE_ACCOUNT":   n.ServiceAccount,
		"CLUSTER_ID":        n.ClusterID,
		"INSTANCE_IPS":      n.PodIP.Unmap().String(),
		"LABELS":            labels,
		"WORKLOAD_NAME":     n.WorkloadName,
		"OWNER":             fmt.Sprintf("kubernetes://apis/apps/v1/namespaces/%s/deployments/%s", n.Namespace, n.WorkloadName),
		"ISTIO_VERSION":     n.IstioVersion,
		"INTERCEPTION_MODE": "REDIRECT",
	}
	if n.NodeName != "" {
		m["NODE_NAME"] = n.NodeName
	}
	if n.Network != "" {
		m["NETWORK"] = n.Network
	}
	return m
}
