// Package conf holds the example configuration: a conflist that chains
// kmesh-cni after a primary network, and a small mesh for the daemon's
// --config-file. Both are embedded so tools and tests use the very files
// in this directory.
package conf

import _ "embed"

// ExampleConflist is 10-kmesh-example.conflist: bridge (host-local IPAM),
// portmap and kmesh-cni, as kmesh-install leaves a bridge network.
//
//go:embed 10-kmesh-example.conflist
var ExampleConflist []byte

// DemoDaemonConfig is kmesh-demo.yaml: echo (10.96.0.10:80 -> 8080, three
// workloads, L4 only), web (10.96.0.20, two workloads, behind the waypoint
// whose own bootstrap is waypoint-demo.yaml) and the waypoint's service and
// pod, and one authorization policy, in the --config-file format
// (addresses: and authorizations: in protojson).
//
//go:embed kmesh-demo.yaml
var DemoDaemonConfig []byte
