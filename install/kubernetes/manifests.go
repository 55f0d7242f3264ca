// Package kubernetes holds the manifests that run kmesh on a cluster:
// kubectl apply -f install/kubernetes/ (the files apply in name order),
// and, per namespace that wants L7, a waypoint (waypoint/waypoint.yaml).
package kubernetes

import "embed"

// Manifests are the YAML files of this directory, for tools that apply them.
//
//go:embed *.yaml
var Manifests embed.FS

// Waypoint is waypoint/waypoint.yaml: a waypoint named "waypoint" (Gateway,
// ServiceAccount, Service and a Deployment of kmesh-waypoint) for
// `kubectl apply -n NAMESPACE -f`; it names no namespace.
//
//go:embed waypoint/waypoint.yaml
var Waypoint string
