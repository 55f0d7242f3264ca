//go:build tools

// Package tools pins the control-plane binaries that the end-to-end tests run:
// kube-apiserver and istiod (pilot-discovery). build.sh builds them from this
// module so their versions come from go.mod and go.sum.
package tools

import (
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
