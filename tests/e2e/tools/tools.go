//go:build tools

// Package tools pins the Kubernetes and Istio binaries that the end-to-end
// tests run: kube-apiserver and istiod (pilot-discovery) for the control
// plane; kubelet, kube-controller-manager, kube-scheduler and kubectl for the
// real node (tests/kubenode). build.sh builds them from this module so their
// versions come from go.mod and go.sum.
package tools

import (
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
