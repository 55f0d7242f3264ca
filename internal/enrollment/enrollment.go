// Package enrollment decides whether a Kubernetes pod belongs in the mesh
// data path. The CNI plugin decides at pod creation and the daemon again
// whenever labels change; both use this one function.
//
// It takes the few fields it reads, not the Kubernetes API types: the
// plugin is a short-lived process, and linking k8s.io/api would cost it
// its package initialisation on every pod (about 1.5 ms of the 5 ms the
// plugin may add to pod start-up).
package enrollment

import "strings"

const (
	// LabelDataplaneMode selects the data plane; "kmesh" enrolls, in any
	// case: Kmesh's own documentation and tests write "Kmesh".
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

// Pod is what the decision reads of a pod.
type Pod struct {
	HostNetwork bool
	Labels      map[string]string
	Annotations map[string]string
	// Containers names the pod's init and regular containers.
	Containers []string
}

// Decide says whether pod (in a namespace with labels nsLabels, nil when
// unknown) is enrolled, and why, in words an operator can act on.
func Decide(pod Pod, nsLabels map[string]string) (bool, string) {
	if pod.HostNetwork {
		return false, "host-network pod: it shares the node's network namespace"
	}
	if _, ok := pod.Annotations[annotationSidecarStatus]; ok {
		return false, "pod has an Istio sidecar"
	}
	for _, c := range pod.Containers {
		if c == "istio-proxy" {
			return false, "pod has an Istio sidecar"
		}
	}
	switch mode, set := pod.Labels[LabelDataplaneMode]; {
	case isKmesh(mode):
		return true, "pod label " + LabelDataplaneMode + "=" + mode
	case strings.EqualFold(mode, ModeNone):
		return false, "pod opted out (" + LabelDataplaneMode + "=none)"
	case set && mode != "":
		// The pod asked for another data plane (ambient, ...): not ours,
		// whatever its namespace says. An empty value (a template that
		// rendered nothing) asks for none: the namespace decides, as in
		// Istio (its selector is NotIn [none]) and Kmesh.
		return false, "pod label " + LabelDataplaneMode + "=" + mode + " selects another data plane"
	}
	if mode := nsLabels[LabelDataplaneMode]; isKmesh(mode) {
		return true, "namespace label " + LabelDataplaneMode + "=" + mode
	}
	return false, "no " + LabelDataplaneMode + "=kmesh label on the pod or its namespace"
}

// isKmesh reports whether a label value selects this data plane. Label
// values are case-sensitive in Kubernetes, but users copy "Kmesh" from
// Kmesh's documentation; reading it as "another data plane" would silently
// leave their pods out.
func isKmesh(mode string) bool { return strings.EqualFold(mode, ModeKmesh) }
