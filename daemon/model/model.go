// Package model holds the mesh as the daemon understands it: services,
// workloads and authorization policies in plain Go, converted and validated
// from istiod's workload API. No BPF here, so all logic is testable without a
// kernel.
package model

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"time"
	"weak"
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

// String writes the waypoint as dumps show it: "ns/host:port" for a
// service, "addr:port" for an address, "" when none is set.
func (g *Gateway) String() string {
	switch {
	case !g.IsSet():
		return ""
	case g.Service != "":
		return fmt.Sprintf("%s:%d", g.Service, g.Port)
	}
	return netip.AddrPortFrom(g.Address, g.Port).String()
}

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

// Workload is one istio.workload.Workload. Model objects are never
// changed once stored: Shared in particular is one copy for many
// workloads.
type Workload struct {
	UID       string       `json:"uid"`
	Name      string       `json:"name"`
	Addresses []netip.Addr `json:"addresses"`
	Node      string       `json:"node,omitempty"`
	Healthy   bool         `json:"healthy"`
	// HostNetwork: the addresses are shared with other workloads (a
	// host-network pod has its node's IP; istiod marks opaque endpoints the
	// same way), so they say where to connect to the workload but not who
	// is behind them (istio's NetworkMode HOST_NETWORK).
	HostNetwork bool `json:"hostNetwork,omitempty"`
	// Services lists the services the workload backs, with the workload's
	// own port mapping for each (Istio resolves named target ports here).
	// A slice, not a map: a node holds many workloads and few services each.
	Services []ServicePorts `json:"services,omitempty"`
	Waypoint *Gateway       `json:"waypoint,omitempty"`
	// Policies names the authorization policies that select the workload.
	Policies []string `json:"authorizationPolicies,omitempty"`
	// Shared is never nil (its fields read as the workload's own).
	*Shared
}

// Shared is what a workload has in common with the other pods of its
// deployment in the same place. Conversion keeps one copy per distinct
// value (ShareOf): a node may hold 100k workloads from a few thousand
// deployments, and these fields were two thirds of each.
type Shared struct {
	Namespace         string   `json:"namespace"`
	Network           string   `json:"network,omitempty"`
	ClusterID         string   `json:"clusterId,omitempty"`
	Locality          Locality `json:"locality"`
	TrustDomain       string   `json:"trustDomain,omitempty"`
	ServiceAccount    string   `json:"serviceAccount,omitempty"`
	CanonicalName     string   `json:"canonicalName,omitempty"`
	CanonicalRevision string   `json:"canonicalRevision,omitempty"`
	WorkloadName      string   `json:"workloadName,omitempty"`

	identity string // the SPIFFE id, set by ShareOf
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

// shared keeps one Shared per distinct value while some workload uses it.
var shared = struct {
	sync.Mutex
	m map[Shared]weak.Pointer[Shared]
}{m: map[Shared]weak.Pointer[Shared]{}}

// ShareOf returns the one copy of s (its strings interned, its identity
// set) that workloads with these fields share.
func ShareOf(s Shared) *Shared {
	s.Namespace, s.Network, s.ClusterID = intern(s.Namespace), intern(s.Network), intern(s.ClusterID)
	s.Locality = Locality{Region: intern(s.Locality.Region), Zone: intern(s.Locality.Zone), Subzone: intern(s.Locality.Subzone)}
	s.TrustDomain, s.ServiceAccount = intern(s.TrustDomain), intern(s.ServiceAccount)
	s.CanonicalName, s.CanonicalRevision, s.WorkloadName = intern(s.CanonicalName), intern(s.CanonicalRevision), intern(s.WorkloadName)
	s.identity = intern(identityOf(s.TrustDomain, s.Namespace, s.ServiceAccount))
	shared.Lock()
	defer shared.Unlock()
	if p := shared.m[s].Value(); p != nil {
		return p
	}
	p := new(Shared) // not &s: s would then be on the heap on every call
	*p = s
	shared.m[s] = weak.Make(p)
	// The entry goes with the last workload using it, unless a new copy
	// took its place meanwhile.
	runtime.AddCleanup(p, func(s Shared) {
		shared.Lock()
		defer shared.Unlock()
		if shared.m[s].Value() == nil {
			delete(shared.m, s)
		}
	}, s)
	return p
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
