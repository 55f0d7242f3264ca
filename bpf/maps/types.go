// Package maps is the typed API over the kmesh BPF maps and the only code
// that writes them. Callers describe the state they want (services,
// backends); the package works out the smallest set of map writes, orders
// them so the kernel never sees a half-built service or a hole in an
// endpoint list, checks capacity before writing anything, and rolls back if
// the kernel refuses a write part-way.
package maps

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/manage"
)

// LBPolicy picks an endpoint within the chosen locality priority: the
// kernel's enum (km_lb_policy), named here so callers of this package need
// not import bpf/layout.
type LBPolicy = layout.LBPolicy

const (
	Random     = layout.LBRandom
	RoundRobin = layout.LBRoundRobin
	// Maglev hashes the client onto a per-service lookup table: a client
	// keeps its backend, and removing one of N backends moves ~1/N clients.
	Maglev = layout.LBMaglev
)

// Port maps a service port to the port backends listen on.
type Port struct {
	Port       uint16
	TargetPort uint16 // 0: same as Port
	// Overrides gives a different target port for some workloads (Istio's
	// per-workload service port lists).
	Overrides map[uint32]uint16
}

// Service is the whole state of one service in the data path.
type Service struct {
	ID     uint32 // non-zero, chosen by the caller
	VIPs   []netip.Addr
	Ports  []Port
	Policy LBPolicy
	// Strict locality never leaves priority 0; otherwise connections go to the
	// first priority that has endpoints (failover).
	Strict bool
	// Affinity keeps a client on its endpoint while it reconnects within the
	// timeout (rounded up to whole seconds). Zero turns it off.
	Affinity time.Duration
	// Waypoint, when set, receives every TCP connection to the service: a
	// waypoint service's pods (by its own load balancing) or a waypoint
	// workload, at the node's waypoint port.
	Waypoint Ref
	// Endpoints lists workload ids per locality priority (index 0 first).
	Endpoints [][]uint32
}

// Backend is a workload as the data path sees it.
type Backend struct {
	ID uint32 // non-zero, chosen by the caller
	// Addresses of the workload; the first IPv4 and the first IPv6 are where
	// service connections go. All of them resolve back to the workload,
	// unless SharedAddresses.
	Addresses []netip.Addr
	// SharedAddresses: other workloads have these addresses too (a
	// host-network pod has its node's IP), so they get no frontend: an
	// address that resolved to one of them would give its waypoint,
	// policies and identity to all the others' traffic. The backend is
	// reachable only as a service's endpoint.
	SharedAddresses bool
	// Waypoint, when set, receives TCP connections made to the workload's
	// own addresses.
	Waypoint Ref
	Identity uint32
	// PolicySet guards connections to the workload (0: no policies).
	PolicySet uint32
}

// Ref names a service or a workload of the data path: a waypoint, or the
// owner of an address. The zero Ref names nothing.
type Ref struct {
	Kind RefKind
	ID   uint32
}

// RefKind says what a Ref names: the kernel's enum (km_upstream_kind).
type RefKind = layout.UpstreamKind

const (
	KindService  = layout.KindService
	KindWorkload = layout.KindWorkload
)

// ServiceRef and WorkloadRef name a service and a workload by id.
func ServiceRef(id uint32) Ref  { return Ref{KindService, id} }
func WorkloadRef(id uint32) Ref { return Ref{KindWorkload, id} }

// ClosedWaypoint is the waypoint of a destination whose named waypoint is
// not in the data path: its TCP connections are refused rather than let
// past the waypoint (UDP never goes to waypoints and is not affected).
var ClosedWaypoint = Ref{Kind: KindService}

// IsSet reports whether the Ref names anything (ClosedWaypoint included).
func (r Ref) IsSet() bool { return r != Ref{} }

// closed tells whether the Ref is set but names no object.
func (r Ref) closed() bool { return r.IsSet() && r.ID == 0 }

func (r Ref) String() string {
	switch {
	case r.Kind == 0:
		return ""
	case r.ID == 0:
		return "closed"
	}
	// The kind's name is the generated one (km_upstream_kind's constants).
	return fmt.Sprintf("%s %d", r.Kind, r.ID)
}

// MarshalText writes the Ref as String does ("" when unset), so dumps read
// "service 7".
func (r Ref) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads what MarshalText writes.
func (r *Ref) UnmarshalText(b []byte) error {
	switch string(b) {
	case "":
		*r = Ref{}
		return nil
	case "closed":
		*r = ClosedWaypoint
		return nil
	}
	var kind string
	if _, err := fmt.Sscanf(string(b), "%s %d", &kind, &r.ID); err != nil {
		return fmt.Errorf("reference %q: %w", b, err)
	}
	for _, k := range []RefKind{KindService, KindWorkload} {
		if kind == k.String() {
			r.Kind = k
			return nil
		}
	}
	return fmt.Errorf("reference %q: unknown kind %q", b, kind)
}

func (r Ref) validate() error {
	switch {
	case !r.IsSet():
		return nil
	case r.Kind != KindService && r.Kind != KindWorkload:
		return fmt.Errorf("unknown kind %d", r.Kind)
	}
	return nil
}

func (r Ref) value() layout.WaypointRef {
	return layout.WaypointRef{UpstreamID: r.ID, Kind: r.Kind}
}

func refOf(v layout.WaypointRef) Ref { return Ref{v.Kind, v.UpstreamID} }

// FullError reports a map that cannot take what an update needs. Nothing of
// the update was written.
type FullError struct {
	Map  string
	Need int // entries the update adds
	Used int
	Max  int
}

func (e *FullError) Error() string {
	return fmt.Sprintf("map %s is full: the update needs %d new entries, %d of %d are in use (raise its size)",
		e.Map, e.Need, e.Used, e.Max)
}

// ErrInvalid wraps every rejection of a malformed update.
var ErrInvalid = manage.ErrInvalid

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

func (s *Service) validate() error {
	if s.ID == 0 {
		return invalid("service id 0 is reserved")
	}
	if len(s.Endpoints) > layout.MaxPrio {
		return invalid("service %d: %d locality priorities, at most %d", s.ID, len(s.Endpoints), layout.MaxPrio)
	}
	switch s.Policy {
	case Random, RoundRobin, Maglev:
	default:
		return invalid("service %d: unknown load-balancing policy %d", s.ID, s.Policy)
	}
	seen := map[uint32]bool{}
	for p, list := range s.Endpoints {
		for _, w := range list {
			if w == 0 {
				return invalid("service %d: workload id 0 at priority %d", s.ID, p)
			}
			if seen[w] {
				return invalid("service %d: workload %d listed twice", s.ID, w)
			}
			seen[w] = true
		}
	}
	ports := map[uint16]bool{}
	for _, p := range s.Ports {
		if p.Port == 0 {
			return invalid("service %d: port 0", s.ID)
		}
		if ports[p.Port] {
			return invalid("service %d: port %d listed twice", s.ID, p.Port)
		}
		ports[p.Port] = true
	}
	vips := map[netip.Addr]bool{}
	for _, v := range s.VIPs {
		if !v.IsValid() {
			return invalid("service %d: invalid VIP", s.ID)
		}
		if vips[v.Unmap()] {
			return invalid("service %d: VIP %s listed twice", s.ID, v)
		}
		vips[v.Unmap()] = true
	}
	if err := s.Waypoint.validate(); err != nil {
		return invalid("service %d: waypoint: %v", s.ID, err)
	}
	if s.Waypoint == ServiceRef(s.ID) {
		return invalid("service %d is its own waypoint", s.ID)
	}
	if s.Affinity < 0 || s.Affinity > 24*time.Hour {
		return invalid("service %d: affinity timeout %s out of range", s.ID, s.Affinity)
	}
	return nil
}

func (b *Backend) validate() error {
	if b.ID == 0 {
		return invalid("workload id 0 is reserved")
	}
	seen := map[netip.Addr]bool{}
	for _, a := range b.Addresses {
		if !a.IsValid() {
			return invalid("workload %d: invalid address", b.ID)
		}
		if seen[a.Unmap()] {
			return invalid("workload %d: address %s listed twice", b.ID, a)
		}
		seen[a.Unmap()] = true
	}
	if err := b.Waypoint.validate(); err != nil {
		return invalid("workload %d: waypoint: %v", b.ID, err)
	}
	if b.Waypoint == WorkloadRef(b.ID) {
		return invalid("workload %d is its own waypoint", b.ID)
	}
	return nil
}
