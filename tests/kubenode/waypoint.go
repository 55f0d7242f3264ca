package kubenode

import (
	"fmt"
	"net"
	"strings"

	kmeshk8s "github.com/kmesh-go/kmesh/install/kubernetes"
)

// IstiodForPods is where a pod on this node dials istiod's xDS (TLS,
// tokens): the node's IP, sent on to istiod on the node's loopback (see
// makeNetNS). The node has no cluster DNS for istiod.istio-system.svc;
// the certificate's name stays that (kmesh-waypoint's --xds-server-name).
func (n *Node) IstiodForPods() string { return net.JoinHostPort(n.IP, istiodPort) }

// WaypointManifest is install/kubernetes/waypoint/waypoint.yaml with the
// one edit this node needs, istiod's address, for `kubectl apply -n NS`.
func (n *Node) WaypointManifest() (string, error) {
	return waypointManifest(n.IstiodForPods())
}

func waypointManifest(istiod string) (string, error) {
	const line = "- --xds-address=istiod.istio-system.svc:15012"
	if strings.Count(kmeshk8s.Waypoint, line) != 1 {
		return "", fmt.Errorf("install/kubernetes/waypoint: want exactly one line %q to adapt for this node", line)
	}
	return strings.Replace(kmeshk8s.Waypoint, line, "- --xds-address="+istiod, 1), nil
}
