// Package xds decodes istiod's ambient resources (istio.workload.Address,
// istio.security.Authorization) into the daemon's model. The stream itself
// is internal/xdsclient's, shared with kmesh-waypoint.
package xds

import "github.com/kmesh-go/kmesh/internal/xdsclient"

// Type URLs of the ambient resources.
const (
	TypeAddress       = "type.googleapis.com/istio.workload.Address"
	TypeAuthorization = "type.googleapis.com/istio.security.Authorization"
)

// Resource is one resource of a response.
type Resource = xdsclient.Resource

// Subscriptions are the daemon's: every address and every policy.
func Subscriptions() []xdsclient.Subscription {
	return []xdsclient.Subscription{
		{TypeURL: TypeAddress, Wildcard: true},
		{TypeURL: TypeAuthorization, Wildcard: true},
	}
}
