// Package kubernetes holds the manifests that run kmesh on a cluster:
// kubectl apply -f install/kubernetes/ (the files apply in name order).
package kubernetes

import "embed"

// Manifests are the YAML files of this directory, for tools that apply them.
//
//go:embed *.yaml
var Manifests embed.FS
