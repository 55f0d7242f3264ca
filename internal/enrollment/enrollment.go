// Package enrollment decides whether a Kubernetes pod belongs in the mesh
// data path. The CNI plugin decides at pod creation and the daemon again
// whenever labels change; both use this one function.
package enrollment

import (
	corev1 "k8s.io/api/core/v1"
)

const (
	// LabelDataplaneMode selects the data plane; "kmesh" enrolls.
	LabelDataplaneMode = "istio.io/dataplane-mode"
	// ModeKmesh is the value that enrolls; ModeNone on a pod opts it out.
	ModeKmesh = "kmesh"
	ModeNone  = "none"
	// AnnotationRedirection tells operators (and kmesh itself) that a pod's
	// traffic goes through the data path.
	AnnotationRedirection = "kmesh.net/redirection"
	// Istio marks injected sidecars with this annotation.
	annotationSidecarStatus = "sidecar.istio.io/status"
)

// Decide says whether pod (in namespace ns, which may be nil) is enrolled,
// and why, in words an operator can act on.
func Decide(pod *corev1.Pod, ns *corev1.Namespace) (bool, string) {
	if pod.Spec.HostNetwork {
		return false, "host-network pod: it shares the node's network namespace"
	}
	if _, ok := pod.Annotations[annotationSidecarStatus]; ok {
		return false, "pod has an Istio sidecar"
	}
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name == "istio-proxy" {
			return false, "pod has an Istio sidecar"
		}
	}
	switch mode, set := pod.Labels[LabelDataplaneMode]; {
	case mode == ModeKmesh:
		return true, "pod label " + LabelDataplaneMode + "=kmesh"
	case mode == ModeNone:
		return false, "pod opted out (" + LabelDataplaneMode + "=none)"
	case set:
		// The pod asked for another data plane (ambient, ...): not ours,
		// whatever its namespace says.
		return false, "pod label " + LabelDataplaneMode + "=" + mode + " selects another data plane"
	}
	if ns != nil && ns.Labels[LabelDataplaneMode] == ModeKmesh {
		return true, "namespace label " + LabelDataplaneMode + "=kmesh"
	}
	return false, "no " + LabelDataplaneMode + "=kmesh label on the pod or its namespace"
}
