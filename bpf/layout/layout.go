// Package layout mirrors, in Go, the key and value structs the BPF programs
// use (bpf/include/km_types.h). Field order, sizes and padding match the C
// exactly; layout_test.go checks them against the compiled object's BTF.
package layout

import (
	"fmt"
	"net/netip"
)

// Version must equal KM_LAYOUT_VERSION in km_types.h. Pinned maps written by
// another version are replaced, never reinterpreted.
const Version = 7

// MaxPrio is the number of locality priority levels per service.
const MaxPrio = 8

// Addr is a 16-byte address: IPv6, or IPv4 mapped as ::ffff:a.b.c.d.
type Addr [16]byte

// AddrFrom converts a netip.Addr; IPv4 is stored v4-mapped.
func AddrFrom(a netip.Addr) Addr {
	return Addr(a.As16())
}

// Netip converts back, unmapping IPv4.
func (a Addr) Netip() netip.Addr {
	return netip.AddrFrom16(a).Unmap()
}

// IsZero reports whether no address is set.
func (a Addr) IsZero() bool { return a == Addr{} }

func (a Addr) String() string {
	if a.IsZero() {
		return ""
	}
	return a.Netip().String()
}

// Upstream kinds in a frontend entry.
const (
	KindService  uint8 = 1
	KindWorkload uint8 = 2
)

type FrontendKey struct {
	Addr Addr
}

type FrontendValue struct {
	UpstreamID uint32
	Kind       uint8
	Pad        [3]uint8
}

// WaypointRef is where a destination's TCP connections go instead: a
// waypoint service (load-balanced over its pods) or a waypoint workload.
// Kind 0 is no waypoint.
type WaypointRef struct {
	UpstreamID uint32
	Kind       uint8
	Pad        [3]uint8
}

// Load-balancing policies.
const (
	LBRandom     uint8 = 0
	LBRoundRobin uint8 = 1
	LBMaglev     uint8 = 2
)

// Service flags.
const (
	SvcStrict   uint8 = 1 << 0
	SvcAffinity uint8 = 1 << 2
)

type ServiceValue struct {
	EndpointCount    [MaxPrio]uint32
	RRCursor         uint32
	AffinityTimeoutS uint32
	LBPolicy         uint8
	Flags            uint8
	Pad              uint16
	Waypoint         WaypointRef
}

type PortKey struct {
	ServiceID uint32
	Port      uint16
	Pad       uint16
}

// PortOverrides marks a port some backends remap (see PortOverrideKey).
const PortOverrides uint8 = 1 << 0

type PortValue struct {
	TargetPort uint16
	Flags      uint8
	Pad        uint8
}

type PortOverrideKey struct {
	ServiceID  uint32
	WorkloadID uint32
	Port       uint16
	Pad        uint16
}

type PortOverrideValue struct {
	TargetPort uint16
	Pad        uint16
}

type EndpointKey struct {
	ServiceID uint32
	Prio      uint32
	Index     uint32
}

type EndpointValue struct {
	WorkloadID uint32
}

// Backend flags.
const (
	BackendHasV4 uint8 = 1 << 0
	BackendHasV6 uint8 = 1 << 1
)

type BackendValue struct {
	IP4        [4]byte
	IP6        [16]byte
	IdentityID uint32
	Flags      uint8
	Pad        [3]uint8
	Waypoint   WaypointRef
	AuthzPS    uint32
}

// Manage flags.
const (
	ManageEnrolled uint32 = 1 << 0
	ManageWaypoint uint32 = 1 << 1
)

type ManageValue struct {
	Flags      uint32
	ClientID   uint32
	WorkloadID uint32
	Reserved   uint32
}

type AffinityKey struct {
	NetnsCookie uint64
	ServiceID   uint32
	Pad         uint32
}

type AffinityValue struct {
	WorkloadID uint32
	Prio       uint32
	Index      uint32
	Pad        uint32
	LastUsedNs uint64
}

// Socket state flags (km_sock and km_tcp_sock).
const (
	SockRewritten uint32 = 1 << 0
	// SockWaypoint: sent to a waypoint; its first bytes get a PROXY v2
	// header.
	SockWaypoint uint32 = 1 << 1
	// SockConnecting: TCP got as far as sending the SYN, so the close
	// callback will delete the km_tcp_sock element.
	SockConnecting uint32 = 1 << 2
	// SockWaypointPod: a socket of a waypoint's own pod (never
	// accelerated).
	SockWaypointPod uint32 = 1 << 3
	// SockHeaderSent: the PROXY v2 header went out.
	SockHeaderSent uint32 = 1 << 4
)

// SockValue is a socket's state: in km_sock (UDP) or km_tcp_sock (TCP,
// under the socket cookie).
type SockValue struct {
	Orig        Addr
	Backend     Addr
	OrigPort    uint16 // network order
	BackendPort uint16 // network order
	ServiceID   uint32
	WorkloadID  uint32
	Prio        uint32
	Index       uint32
	Flags       uint32
	// Conn is sockops' record of an enrolled TCP end (zero until it is
	// established).
	Conn ConnValue
}

type UDPRevKey struct {
	SockCookie  uint64
	Backend     Addr
	BackendPort uint16
	Pad         [3]uint16
}

type UDPRevValue struct {
	Orig     Addr
	OrigPort uint16
	Pad      [3]uint16
}

// Features in ConfigValue.Features.
const (
	FeatTelemetry uint32 = 1 << 0
	FeatSockmap   uint32 = 1 << 1
)

type ConfigValue struct {
	LayoutVersion uint32
	MaglevSize    uint32
	Features      uint32
	WaypointPort  uint16 // where waypoint pods read PROXY v2 (host order)
	Pad           uint16
}

// Tuple is one end's view of a TCP connection (ports in host order).
type Tuple struct {
	Local      Addr
	Remote     Addr
	LocalPort  uint16
	RemotePort uint16
	Pad        uint32
}

// Reverse is the tuple as the other end sees it.
func (t Tuple) Reverse() Tuple {
	return Tuple{Local: t.Remote, Remote: t.Local, LocalPort: t.RemotePort, RemotePort: t.LocalPort}
}

// Connection roles.
const (
	RoleClient uint8 = 1
	RoleServer uint8 = 2
)

// Connection flags.
const (
	ConnRewritten uint8 = 1 << 0
	ConnSockhash  uint8 = 1 << 1
	ConnRedirect  uint8 = 1 << 2
	ConnTCPOnly   uint8 = 1 << 3
	ConnClosed    uint8 = 1 << 4
	ConnTelemetry uint8 = 1 << 5
	// ConnRedirectIn is set in events only: the peer's data came past TCP.
	ConnRedirectIn uint8 = 1 << 6
)

// ConnValue is the connection record in km_tcp_sock: one end of an enrolled TCP connection.
type ConnValue struct {
	Cookie     uint64
	StartNs    uint64
	RedirSent  uint64
	Local      Addr
	Remote     Addr
	Orig       Addr
	LocalPort  uint16
	RemotePort uint16
	OrigPort   uint16
	Role       uint8
	Flags      uint8
	ServiceID  uint32
	WorkloadID uint32
	AckedBase  uint32
	Pad        uint32
}

// Event types.
const (
	EventOpen     uint8 = 1 // not sent by this kernel side any more; still read
	EventClose    uint8 = 2
	EventSnapshot uint8 = 3
)

// How a connection ended.
const (
	EndNone    uint8 = 0
	EndFIN     uint8 = 1
	EndReset   uint8 = 2
	EndAbort   uint8 = 3
	EndTimeout uint8 = 4
	EndError   uint8 = 5
)

// ConnEvent is a km_events record (and an iterator record).
type ConnEvent struct {
	Conn          ConnValue
	NowNs         uint64
	BytesSent     uint64
	BytesReceived uint64
	SRTTus        uint32
	TotalRetrans  uint32
	Type          uint8
	End           uint8
	OldState      uint8
	Pad           uint8
	SkErr         uint32
}

// Stat indexes km_stats.
type Stat uint32

const (
	StatServiceRewrite Stat = iota
	StatWaypointRewrite
	StatNoEndpoint
	StatNoPort
	StatNoBackend
	StatFamilyMismatch
	StatUDPReverse
	StatAffinityHit
	StatTCSeen
	StatAuthzAllow
	StatAuthzDeny
	StatAuthzResetSent
	StatAuthzConnectDeny
	StatConnOpen
	StatConnClose
	StatEventsLost
	StatSockhashAdd
	StatSockhashFail
	StatMsgRedirect
	StatMsgPass
	StatTCPSockFull
	StatNoWaypoint
	StatWpSockFull
	StatWpHeader
	StatWpHeaderFail
	StatWpNoHeader
	StatMax
)

var statNames = [...]string{
	StatServiceRewrite:   "service_rewrite",
	StatWaypointRewrite:  "waypoint_rewrite",
	StatNoEndpoint:       "no_endpoint",
	StatNoPort:           "no_port",
	StatNoBackend:        "no_backend",
	StatFamilyMismatch:   "family_mismatch",
	StatUDPReverse:       "udp_reverse",
	StatAffinityHit:      "affinity_hit",
	StatTCSeen:           "tc_seen",
	StatAuthzAllow:       "authz_allow",
	StatAuthzDeny:        "authz_deny",
	StatAuthzResetSent:   "authz_reset_sent",
	StatAuthzConnectDeny: "authz_connect_deny",
	StatConnOpen:         "conn_open",
	StatConnClose:        "conn_close",
	StatEventsLost:       "events_lost",
	StatSockhashAdd:      "sockhash_add",
	StatSockhashFail:     "sockhash_fail",
	StatMsgRedirect:      "msg_redirect",
	StatMsgPass:          "msg_pass",
	StatTCPSockFull:      "tcp_sock_full",
	StatNoWaypoint:       "no_waypoint",
	StatWpSockFull:       "wp_sock_full",
	StatWpHeader:         "wp_header",
	StatWpHeaderFail:     "wp_header_fail",
	StatWpNoHeader:       "wp_no_header",
}

func (s Stat) String() string {
	if int(s) < len(statNames) {
		return statNames[s]
	}
	return fmt.Sprintf("stat%d", uint32(s))
}

// Authorization tables (see km_types.h).

type AuthzPSValue struct {
	DefaultIdent uint16
	DefaultPort  uint16
	Src4, Src6   uint16
	Dst4, Dst6   uint16
	Flags        uint32
}

// Policy-set flags.
const (
	AuthzSrcByFamily uint32 = 1 << 0
	AuthzDstByFamily uint32 = 1 << 1
)

type AuthzIdentKey struct {
	PS       uint32
	Identity uint32
}

type AuthzClass struct {
	Cls uint16
	Pad uint16
}

// AuthzCIDRKey is an LPM key: PrefixLen counts the 32 bits of PS first.
type AuthzCIDRKey struct {
	PrefixLen uint32
	PS        uint32
	Addr      Addr
}

type AuthzPortKey struct {
	PS   uint32
	Port uint16
	Pad  uint16
}

type AuthzVerdictKey struct {
	PS    uint32
	Ident uint16
	Src   uint16
	Dst   uint16
	Port  uint16
}

// Verdict flags.
const (
	AuthzDeny       uint32 = 1 << 0
	AuthzDryRunDeny uint32 = 1 << 1
)

type AuthzVerdict struct {
	Flags     uint32
	Policy    uint32
	DryPolicy uint32
	Pad       uint32
}

// Outcomes counted per policy.
const (
	AuthzOutAllow      uint32 = 0
	AuthzOutDeny       uint32 = 1
	AuthzOutDryRunDeny uint32 = 2
)

type AuthzStatKey struct {
	Policy  uint32
	Outcome uint32
}
