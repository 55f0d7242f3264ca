// Package model holds the mesh as the daemon understands it: services,
// workloads and authorization policies in plain Go, converted and validated
// from istiod's workload API. No BPF here, so all logic is testable without a
// kernel.
package model

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// ServiceKey is istiod's primary key of a service: "namespace/hostname".
type ServiceKey string

// LBMode is Istio's LoadBalancing.Mode.
type LBMode int

const (
	LBModeUnspecified LBMode = iota
	LBModeStrict
	LBModeFailover
	LBModePassthrough
)

func (m LBMode) String() string {
	return [...]string{"UNSPECIFIED_MODE", "STRICT", "FAILOVER", "PASSTHROUGH"}[m]
}

// Scope is one routing preference (Istio's LoadBalancing.Scope).
type Scope int

const (
	ScopeRegion Scope = iota + 1
	ScopeZone
	ScopeSubzone
	ScopeNode
	ScopeCluster
	ScopeNetwork
)

func (s Scope) String() string {
	switch s {
	case ScopeRegion:
		return "REGION"
	case ScopeZone:
		return "ZONE"
	case ScopeSubzone:
		return "SUBZONE"
	case ScopeNode:
		return "NODE"
	case ScopeCluster:
		return "CLUSTER"
	case ScopeNetwork:
		return "NETWORK"
	}
	return fmt.Sprintf("Scope(%d)", int(s))
}

// Policy picks among endpoints of one priority.
type Policy string

const (
	PolicyRandom     Policy = "random"
	PolicyRoundRobin Policy = "round_robin"
	PolicyMaglev     Policy = "maglev"
)

// LoadBalancing is what a service asks of the data path.
type LoadBalancing struct {
	Mode              LBMode  `json:"mode"`
	RoutingPreference []Scope `json:"routingPreference,omitempty"`
	// AllowUnhealthy is Istio's ALLOW_ALL health policy.
	AllowUnhealthy bool `json:"allowUnhealthy,omitempty"`
	// Policy and Affinity come from the kmesh extension on the service
	// (ExtensionLB); Istio's API has no field for them.
	Policy   Policy        `json:"policy"`
	Affinity time.Duration `json:"affinity,omitempty"`
}

// Port maps a service port to a target port (0: by name, resolved per
// workload, or the service port itself).
type Port struct {
	ServicePort uint16 `json:"servicePort"`
	TargetPort  uint16 `json:"targetPort"`
}

// Gateway is a waypoint reference: an address, or a service by key.
type Gateway struct {
	Address netip.Addr `json:"address,omitempty"`
	Service ServiceKey `json:"service,omitempty"`
	// Port is the HBONE port (15008 for Istio waypoints).
	Port uint16 `json:"port"`
}

// IsSet reports whether a waypoint is configured.
func (g *Gateway) IsSet() bool { return g != nil && (g.Address.IsValid() || g.Service != "") }

// Service is one istio.workload.Service.
type Service struct {
	Key       ServiceKey    `json:"key"`
	Name      string        `json:"name"`
	Namespace string        `json:"namespace"`
	Hostname  string        `json:"hostname"`
	VIPs      []netip.Addr  `json:"vips"`
	Ports     []Port        `json:"ports"`
	LB        LoadBalancing `json:"loadBalancing"`
	Waypoint  *Gateway      `json:"waypoint,omitempty"`
}

// Locality is where a workload runs.
type Locality struct {
	Region  string `json:"region,omitempty"`
	Zone    string `json:"zone,omitempty"`
	Subzone string `json:"subzone,omitempty"`
}

// Workload is one istio.workload.Workload.
type Workload struct {
	UID               string       `json:"uid"`
	Name              string       `json:"name"`
	Namespace         string       `json:"namespace"`
	Addresses         []netip.Addr `json:"addresses"`
	Network           string       `json:"network,omitempty"`
	Node              string       `json:"node,omitempty"`
	ClusterID         string       `json:"clusterId,omitempty"`
	Locality          Locality     `json:"locality"`
	Healthy           bool         `json:"healthy"`
	TrustDomain       string       `json:"trustDomain,omitempty"`
	ServiceAccount    string       `json:"serviceAccount,omitempty"`
	CanonicalName     string       `json:"canonicalName,omitempty"`
	CanonicalRevision string       `json:"canonicalRevision,omitempty"`
	WorkloadName      string       `json:"workloadName,omitempty"`
	// Services lists the services the workload backs, with the workload's
	// own port mapping for each (Istio resolves named target ports here).
	// A slice, not a map: a node holds many workloads and few services each.
	Services []ServicePorts `json:"services,omitempty"`
	Waypoint *Gateway       `json:"waypoint,omitempty"`
	// Policies names the authorization policies that select the workload.
	Policies []string `json:"authorizationPolicies,omitempty"`

	identity string // interned SPIFFE id, set on conversion
}

// ServicePorts is one service a workload backs and its ports for it.
type ServicePorts struct {
	Service ServiceKey `json:"service"`
	Ports   []Port     `json:"ports,omitempty"`
}

// Backs reports whether the workload lists the service.
func (w *Workload) Backs(k ServiceKey) bool {
	for _, sp := range w.Services {
		if sp.Service == k {
			return true
		}
	}
	return false
}

// Identity is the workload's SPIFFE identity.
func (w *Workload) Identity() string {
	if w.identity != "" {
		return w.identity
	}
	return identityOf(w.TrustDomain, w.Namespace, w.ServiceAccount)
}

func identityOf(td, ns, sa string) string {
	if td == "" {
		td = "cluster.local"
	}
	if sa == "" {
		sa = "default"
	}
	return "spiffe://" + td + "/ns/" + ns + "/sa/" + sa
}

// TargetPort is where connections to the service's port go on this
// workload: its own mapping first, then the service's, then the port itself.
func (w *Workload) TargetPort(svc ServiceKey, p Port) uint16 {
	for _, sp := range w.Services {
		if sp.Service != svc {
			continue
		}
		for _, wp := range sp.Ports {
			if wp.ServicePort == p.ServicePort && wp.TargetPort != 0 {
				return wp.TargetPort
			}
		}
	}
	if p.TargetPort != 0 {
		return p.TargetPort
	}
	return p.ServicePort
}

// Node is where this daemon runs, for locality-aware load balancing.
type Node struct {
	Name      string
	ClusterID string
	Network   string
	Locality  Locality
}

// Priority ranks a workload for a service seen from node: 0 when every
// routing preference matches, one more for each preference (from the end)
// that does not. Strict services use only priority 0. Services without
// preferences put everything at 0.
func Priority(lb LoadBalancing, node Node, w *Workload) int {
	n := len(lb.RoutingPreference)
	matched := 0
	for _, s := range lb.RoutingPreference {
		if !scopeMatches(s, node, w) {
			break
		}
		matched++
	}
	return n - matched
}

func scopeMatches(s Scope, node Node, w *Workload) bool {
	switch s {
	case ScopeRegion:
		return w.Locality.Region == node.Locality.Region
	case ScopeZone:
		return w.Locality.Zone == node.Locality.Zone
	case ScopeSubzone:
		return w.Locality.Subzone == node.Locality.Subzone
	case ScopeNode:
		return w.Node == node.Name
	case ScopeCluster:
		return w.ClusterID == node.ClusterID
	case ScopeNetwork:
		return w.Network == node.Network
	}
	return false
}

// ParseLocality reads "region/zone/subzone" (trailing parts optional).
func ParseLocality(s string) Locality {
	parts := strings.SplitN(s, "/", 3)
	var l Locality
	if len(parts) > 0 {
		l.Region = parts[0]
	}
	if len(parts) > 1 {
		l.Zone = parts[1]
	}
	if len(parts) > 2 {
		l.Subzone = parts[2]
	}
	return l
}

func (l Locality) String() string {
	return strings.TrimRight(l.Region+"/"+l.Zone+"/"+l.Subzone, "/")
}
