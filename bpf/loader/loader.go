// Package loader loads the kmesh eBPF programs, pins them and their maps under
// a bpffs directory, and attaches them to a cgroup v2 directory.
//
// It is built for restarts: when the pins of a previous run are there and
// match this build's layout, the maps are reused as they are and the pinned
// cgroup links are switched to the new programs atomically, so sockets never
// see a moment without the data path. A pinned set of another layout is
// replaced, never reinterpreted, and not before its replacement is ready:
// Prepare loads the new programs beside the running ones, the caller fills
// the new maps, and Commit switches the links (see Prepare).
package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	kbpf "github.com/kmesh-go/kmesh/bpf"
	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/manage"
	"github.com/kmesh-go/kmesh/bpf/podtc"
)

// Map names, as pinned under <PinDir>/maps.
const (
	MapManage     = manage.MapName
	MapFrontend   = "km_frontend"
	MapService    = "km_service"
	MapPort       = "km_port"
	MapPortOvr    = "km_portovr"
	MapEndpoint   = "km_endpoint"
	MapBackend    = "km_backend"
	MapMaglev     = "km_maglev"
	MapAffinity   = "km_affinity"
	MapSock       = "km_sock"
	MapTCPSock    = "km_tcp_sock"
	MapUDPRev     = "km_udp_rev"
	MapConfig     = "km_config"
	MapStats      = "km_stats"
	MapAuthzPS    = "km_authz_ps"
	MapAuthzIdent = "km_authz_ident"
	MapAuthzSrc   = "km_authz_src"
	MapAuthzDst   = "km_authz_dst"
	MapAuthzPort  = "km_authz_port"
	MapAuthzVerd  = "km_authz_verdict"
	MapAuthzStats = "km_authz_stats"
	MapEvents     = "km_events"
	MapSockhash   = "km_sockhash"
	MapWpSock     = "km_wp_sock"
	MapRedirIn    = "km_redir_in"
	mapsSubdir    = "maps"
	linksSubdir   = "links"
	progsSubdir   = "progs"
	tcSubdir      = "tc"
	defaultMaglev = 4093
)

// Sizes caps every map. Zero fields take the default.
type Sizes struct {
	Manage         uint32 `json:"manage"`
	Frontends      uint32 `json:"frontends"`
	Services       uint32 `json:"services"`
	Ports          uint32 `json:"ports"`
	PortOverrides  uint32 `json:"portOverrides"`
	Endpoints      uint32 `json:"endpoints"`
	Backends       uint32 `json:"backends"`
	MaglevServices uint32 `json:"maglevServices"`
	// MaglevTableSize is the slot count of each Maglev table; it must be a
	// prime well above the largest backend count (100x keeps disruption near
	// the ideal 1/N).
	MaglevTableSize uint32 `json:"maglevTableSize"`
	Affinity        uint32 `json:"affinity"`
	UDPReverse      uint32 `json:"udpReverse"`
	// Authorization tables: policy sets, identity entries, CIDR entries
	// (each of source and destination), port entries, verdicts.
	AuthzSets       uint32 `json:"authzSets"`
	AuthzIdentities uint32 `json:"authzIdentities"`
	AuthzCIDRs      uint32 `json:"authzCIDRs"`
	AuthzPorts      uint32 `json:"authzPorts"`
	AuthzVerdicts   uint32 `json:"authzVerdicts"`
	// Sockhash caps the sockets in same-node acceleration; a socket that
	// does not fit simply stays on TCP.
	Sockhash uint32 `json:"sockhash"`
	// WaypointSockets caps the connections to waypoints that are
	// established but have not sent their first bytes (each leaves with
	// its PROXY v2 header). One that does not fit reaches its waypoint
	// without a header; km_stats counts it (wp_sock_full).
	WaypointSockets uint32 `json:"waypointSockets"`
	// TCPSockets caps the TCP sockets of enrolled pods with a record or a
	// rewritten destination (each end of a connection within the node is
	// one). A socket that does not fit works but is neither reported nor
	// shown its dialled address by getpeername; km_stats counts it
	// (tcp_sock_full).
	TCPSockets uint32 `json:"tcpSockets"`
	// EventsBytes is the connection event ring buffer's size: a power of
	// two, a multiple of the page size.
	EventsBytes uint32 `json:"eventsBytes"`
}

// Features turns kernel-side functions on and off at run time (km_config).
type Features struct {
	// Telemetry records enrolled TCP connections and sends events.
	Telemetry bool `json:"telemetry"`
	// SockmapAccel sends data between two enrolled sockets on this node
	// past TCP/IP. Turning it off affects new connections only: sockets
	// already accelerated stay so until they close.
	SockmapAccel bool `json:"sockmapAccel"`
}

func (f Features) bits() layout.FeatureFlags {
	var b layout.FeatureFlags
	if f.Telemetry {
		b |= layout.FeatTelemetry
	}
	if f.SockmapAccel {
		b |= layout.FeatSockmap
	}
	return b
}

// DefaultSizes suit a node with a few tens of thousands of services. Hash
// maps are not preallocated, so a generous cap costs nothing until used.
func DefaultSizes() Sizes {
	return Sizes{
		Manage:          16384,
		Frontends:       262144,
		Services:        131072,
		Ports:           262144,
		PortOverrides:   65536,
		Endpoints:       1048576,
		Backends:        262144,
		MaglevServices:  8192,
		MaglevTableSize: defaultMaglev,
		Affinity:        65536,
		UDPReverse:      65536,
		AuthzSets:       16384,
		AuthzIdentities: 262144,
		AuthzCIDRs:      65536,
		AuthzPorts:      65536,
		AuthzVerdicts:   1048576,
		Sockhash:        65536,
		WaypointSockets: 65536,
		TCPSockets:      262144,
		EventsBytes:     4 << 20,
	}
}

func (s Sizes) withDefaults() Sizes {
	d := DefaultSizes()
	pick := func(v, def uint32) uint32 {
		if v == 0 {
			return def
		}
		return v
	}
	return Sizes{
		Manage:          pick(s.Manage, d.Manage),
		Frontends:       pick(s.Frontends, d.Frontends),
		Services:        pick(s.Services, d.Services),
		Ports:           pick(s.Ports, d.Ports),
		PortOverrides:   pick(s.PortOverrides, d.PortOverrides),
		Endpoints:       pick(s.Endpoints, d.Endpoints),
		Backends:        pick(s.Backends, d.Backends),
		MaglevServices:  pick(s.MaglevServices, d.MaglevServices),
		MaglevTableSize: pick(s.MaglevTableSize, d.MaglevTableSize),
		Affinity:        pick(s.Affinity, d.Affinity),
		UDPReverse:      pick(s.UDPReverse, d.UDPReverse),
		AuthzSets:       pick(s.AuthzSets, d.AuthzSets),
		AuthzIdentities: pick(s.AuthzIdentities, d.AuthzIdentities),
		AuthzCIDRs:      pick(s.AuthzCIDRs, d.AuthzCIDRs),
		AuthzPorts:      pick(s.AuthzPorts, d.AuthzPorts),
		AuthzVerdicts:   pick(s.AuthzVerdicts, d.AuthzVerdicts),
		Sockhash:        pick(s.Sockhash, d.Sockhash),
		WaypointSockets: pick(s.WaypointSockets, d.WaypointSockets),
		TCPSockets:      pick(s.TCPSockets, d.TCPSockets),
		EventsBytes:     pick(s.EventsBytes, d.EventsBytes),
	}
}

func (s Sizes) byMap() map[string]uint32 {
	return map[string]uint32{
		MapManage:     s.Manage,
		MapFrontend:   s.Frontends,
		MapService:    s.Services,
		MapPort:       s.Ports,
		MapPortOvr:    s.PortOverrides,
		MapEndpoint:   s.Endpoints,
		MapBackend:    s.Backends,
		MapMaglev:     s.MaglevServices,
		MapAffinity:   s.Affinity,
		MapUDPRev:     s.UDPReverse,
		MapAuthzPS:    s.AuthzSets,
		MapAuthzIdent: s.AuthzIdentities,
		MapAuthzSrc:   s.AuthzCIDRs,
		MapAuthzDst:   s.AuthzCIDRs,
		MapAuthzPort:  s.AuthzPorts,
		MapAuthzVerd:  s.AuthzVerdicts,
		MapSockhash:   s.Sockhash,
		MapWpSock:     s.WaypointSockets,
		MapRedirIn:    s.Sockhash,
		MapTCPSock:    s.TCPSockets,
		MapEvents:     s.EventsBytes,
	}
}

// DefaultWaypointPort is where waypoint pods listen for connections that
// start with a PROXY v2 header.
const DefaultWaypointPort = 15019

// Config says where to pin and what to attach to.
type Config struct {
	// PinDir is a directory on a bpffs mount, e.g. /sys/fs/bpf/kmesh.
	PinDir string
	// CgroupPath is the cgroup v2 directory the programs attach to. Only
	// sockets of processes below it pass through them.
	CgroupPath string
	Sizes      Sizes
	Features   Features
	// WaypointPort is the port connections sent to a waypoint pod go to
	// (0: DefaultWaypointPort).
	WaypointPort uint16
}

// Datapath is a loaded and attached set of programs and maps.
type Datapath struct {
	cfg   Config
	sizes Sizes
	maps  map[string]*ebpf.Map
	progs map[string]*ebpf.Program
	links map[string]link.Link
	// Reused tells whether the maps came from a previous run's pins.
	Reused bool
	// Replaced names pinned maps that did not fit this build and were
	// replaced (their contents dropped or migrated).
	Replaced []string
	// PinnedLayout is the layout version of the pinned set found at
	// Prepare (0: none).
	PinnedLayout uint32

	// Until Commit: what attaching needs, and the manage map of the
	// running set when this one could not share it.
	pending                      bool
	cgID                         uint64
	sockhashReused, wpSockReused bool
	oldManage                    *ebpf.Map
}

// Open is Prepare followed by Commit: the new programs take over at once,
// with whatever their maps hold. For tools and tests; the daemon fills
// the maps in between.
func Open(cfg Config) (*Datapath, error) {
	d, err := Prepare(cfg)
	if err != nil {
		return nil, err
	}
	if err := d.Commit(); err != nil {
		d.closeAll()
		return nil, err
	}
	return d, nil
}

// Prepare loads the programs, reusing pinned maps where they fit.
//
// When nothing runs yet, or the pinned set has this build's layout (its
// maps are reused, so the new programs see the same state), it attaches
// or re-points the cgroup links and pins everything at once, as Open.
//
// When the pinned set has another layout, its programs keep serving its
// maps: the new maps are created beside them, empty but for enrollment
// (km_manage keeps its layout by promise and is shared) and the
// sockhashes (kept likewise), and nothing is attached or pinned. The
// caller writes its state into the new maps and then calls Commit, which
// switches every link to the new programs: a connection is translated
// by the old set or the new one, never by an empty one. Pending tells
// which case this is.
func Prepare(cfg Config) (*Datapath, error) {
	if cfg.PinDir == "" {
		return nil, errors.New("loader: no pin directory given")
	}
	if cfg.CgroupPath == "" {
		return nil, errors.New("loader: no cgroup directory given")
	}
	if err := checkBPFFS(cfg.PinDir); err != nil {
		return nil, err
	}
	cgID, err := cgroupID(cfg.CgroupPath)
	if err != nil {
		return nil, err
	}
	sizes := cfg.Sizes.withDefaults()
	if !isPrime(sizes.MaglevTableSize) {
		return nil, fmt.Errorf("loader: Maglev table size %d is not a prime", sizes.MaglevTableSize)
	}
	if n := sizes.EventsBytes; n < uint32(os.Getpagesize()) || n&(n-1) != 0 {
		return nil, fmt.Errorf("loader: event ring size %d is not a power of two of at least a page", n)
	}
	spec, err := Spec(sizes)
	if err != nil {
		return nil, err
	}
	for _, sub := range []string{mapsSubdir, linksSubdir, progsSubdir} {
		if err := os.MkdirAll(filepath.Join(cfg.PinDir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("loader: create pin directory: %w", err)
		}
	}

	d := &Datapath{cfg: cfg, sizes: sizes, links: map[string]link.Link{}, cgID: cgID}
	pinned, stale, sameLayout, err := d.openPinned(spec, sizes)
	if err != nil {
		return nil, err
	}
	defer func() {
		for name, m := range stale {
			if name != MapManage || m != d.oldManage {
				m.Close()
			}
		}
	}()
	d.Reused = len(pinned) > 0 && len(stale) == 0
	d.sockhashReused = pinned[MapSockhash] != nil
	d.wpSockReused = pinned[MapWpSock] != nil
	// Another layout serves from the pins: let it until the new maps are
	// filled (a set without km_config, or with it, is the same to us).
	d.pending = d.PinnedLayout != 0 && !sameLayout

	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: pinned})
	if err != nil {
		for _, m := range pinned {
			m.Close()
		}
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loader: verifier rejected the programs: %+v", ve)
		}
		return nil, fmt.Errorf("loader: load programs: %w", err)
	}
	for _, m := range pinned {
		// The collection holds its own references to replaced maps.
		m.Close()
	}
	d.maps = coll.Maps
	d.progs = coll.Programs

	// Carry enrollment (and, on a pure resize, everything) over before the
	// new maps go live, so no enrolled pod is dropped by an upgrade.
	for name, old := range stale {
		if err := migrate(name, old, d.maps[name], sameLayout); err != nil {
			d.closeAll()
			return nil, err
		}
		d.Replaced = append(d.Replaced, name)
	}
	sort.Strings(d.Replaced)
	if d.pending && stale[MapManage] != nil {
		// The plugin keeps enrolling into the pinned map until Commit:
		// copied again then.
		d.oldManage = stale[MapManage]
	}

	wpPort := cfg.WaypointPort
	if wpPort == 0 {
		wpPort = DefaultWaypointPort
	}
	cfgVal := layout.ConfigValue{LayoutVersion: layout.Version, MaglevSize: sizes.MaglevTableSize,
		Features: cfg.Features.bits(), WaypointPort: wpPort}
	if err := d.maps[MapConfig].Put(uint32(0), cfgVal); err != nil {
		d.closeAll()
		return nil, fmt.Errorf("loader: write %s: %w", MapConfig, err)
	}
	if d.pending {
		return d, nil
	}
	d.pending = true
	if err := d.Commit(); err != nil {
		d.closeAll()
		return nil, err
	}
	return d, nil
}

// Pending tells whether the programs wait for Commit (Prepare found a
// pinned set of another layout serving).
func (d *Datapath) Pending() bool { return d.pending }

// Commit attaches the programs, or switches the pinned links to them, and
// pins the maps; after a Prepare that left the data path pending, the old
// set stops serving here. A no-op when nothing is pending.
func (d *Datapath) Commit() error {
	if !d.pending {
		return nil
	}
	if d.oldManage != nil {
		if err := syncManage(d.oldManage, d.maps[MapManage]); err != nil {
			return err
		}
	}
	if err := d.attach(d.cgID); err != nil {
		return err
	}
	if err := d.attachSkMsg(ProgSkMsg, MapSockhash, d.sockhashReused); err != nil {
		return err
	}
	if err := d.attachSkMsg(ProgWpMsg, MapWpSock, d.wpSockReused); err != nil {
		return err
	}
	if err := d.publishPodPrograms(); err != nil {
		return err
	}
	// Pins last: programs already point at the new maps, so swapping the
	// pinned names cannot strand a running program on an unpinned map.
	if err := d.pinMaps(); err != nil {
		return err
	}
	d.pending = false
	if d.oldManage != nil {
		d.oldManage.Close()
		d.oldManage = nil
	}
	return nil
}

// syncManage makes cur hold exactly what old holds: enrollments made and
// released while a replacement waited for its Commit.
func syncManage(old, cur *ebpf.Map) error {
	if err := migrate(MapManage, old, cur, false); err != nil {
		return err
	}
	key := make([]byte, cur.KeySize())
	val := make([]byte, cur.ValueSize())
	var gone [][]byte
	it := cur.Iterate()
	for it.Next(&key, &val) {
		if err := old.Lookup(key, val); errors.Is(err, ebpf.ErrKeyNotExist) {
			gone = append(gone, slices.Clone(key))
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("loader: walk %s: %w", MapManage, err)
	}
	for _, k := range gone {
		if err := cur.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("loader: %s: %w", MapManage, err)
		}
	}
	return nil
}

// Spec returns the collection spec sized for s, not loaded.
func Spec(s Sizes) (*ebpf.CollectionSpec, error) {
	s = s.withDefaults()
	spec, err := kbpf.Spec()
	if err != nil {
		return nil, fmt.Errorf("loader: read embedded objects: %w", err)
	}
	for name, n := range s.byMap() {
		ms, ok := spec.Maps[name]
		if !ok {
			return nil, fmt.Errorf("loader: object has no map %s", name)
		}
		ms.MaxEntries = n
	}
	spec.Maps[MapMaglev].InnerMap.MaxEntries = s.MaglevTableSize
	if err := spec.Variables["km_maglev_size"].Set(s.MaglevTableSize); err != nil {
		return nil, fmt.Errorf("loader: set Maglev size: %w", err)
	}
	// Wake the event reader early once a quarter of the ring is in use.
	if err := spec.Variables["km_events_wakeup"].Set(uint64(s.EventsBytes / 4)); err != nil {
		return nil, fmt.Errorf("loader: set event wakeup threshold: %w", err)
	}
	var v uint32
	if err := spec.Variables["km_layout_version"].Get(&v); err != nil || v != layout.Version {
		return nil, fmt.Errorf("loader: objects built for layout %d, this binary speaks %d", v, layout.Version)
	}
	return spec, nil
}

// openPinned returns the pinned maps that fit spec, and separately those that
// exist but do not (to be replaced).
func (d *Datapath) openPinned(spec *ebpf.CollectionSpec, sizes Sizes) (fit, stale map[string]*ebpf.Map, sameLayout bool, err error) {
	fit, stale = map[string]*ebpf.Map{}, map[string]*ebpf.Map{}
	closeAll := func() {
		for _, m := range fit {
			m.Close()
		}
		for _, m := range stale {
			m.Close()
		}
	}

	// The config map tells which layout wrote the pinned set.
	var pinnedCfg layout.ConfigValue
	layoutOK := false
	if m, err := ebpf.LoadPinnedMap(d.mapPin(MapConfig), nil); err == nil {
		if err := m.Lookup(uint32(0), &pinnedCfg); err == nil {
			d.PinnedLayout = max(pinnedCfg.LayoutVersion, 1)
			layoutOK = pinnedCfg.LayoutVersion == layout.Version
		}
		m.Close()
	}

	for name, ms := range spec.Maps {
		if isInternal(name) {
			continue
		}
		m, err := ebpf.LoadPinnedMap(d.mapPin(name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			closeAll()
			return nil, nil, false, fmt.Errorf("loader: open pinned map %s: %w", name, err)
		}
		ok := layoutOK && ms.Compatible(m) == nil
		if name == MapManage && ms.Compatible(m) == nil {
			// Its layout is a promise across versions (km_types.h): the
			// old programs and the new share it, so enrollment written
			// while a replacement is prepared reaches both.
			ok = true
		}
		if (name == MapSockhash || name == MapWpSock) && keepSockhash(ms, m) {
			// The sockhashes outlive layout versions and size changes by
			// promise: replacing km_sockhash would drop the sockets in it,
			// and with them data already passed to a peer but not yet
			// read; replacing km_wp_sock, the connections whose PROXY v2
			// header is still to be written.
			ms.MaxEntries = m.MaxEntries()
			ok = true
		}
		if name == MapMaglev && pinnedCfg.MaglevSize != sizes.MaglevTableSize {
			ok = false
		}
		if ok {
			fit[name] = m
		} else {
			stale[name] = m
		}
	}
	return fit, stale, layoutOK, nil
}

// migrate copies entries from a replaced map where that is meaningful: the
// manage map keeps its layout across versions by promise (enrollment must
// survive upgrades), and under the same layout a hash map whose key and value
// sizes are unchanged was only resized. Everything else is the daemon's to
// rewrite.
func migrate(name string, old, cur *ebpf.Map, sameLayout bool) error {
	if name == MapConfig || name == MapMaglev || name == MapSock ||
		name == MapEvents || name == MapSockhash || name == MapWpSock {
		return nil
	}
	if old.Type() != cur.Type() || old.KeySize() != cur.KeySize() || old.ValueSize() != cur.ValueSize() {
		return nil
	}
	if name != MapManage && (!sameLayout || (old.Type() != ebpf.Hash && old.Type() != ebpf.LRUHash)) {
		return nil
	}
	key := make([]byte, old.KeySize())
	val := make([]byte, old.ValueSize())
	it := old.Iterate()
	n := 0
	for it.Next(&key, &val) {
		if err := cur.Put(key, val); err != nil {
			return fmt.Errorf("loader: migrate %s entry %d into the resized map: %w", name, n, err)
		}
		n++
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("loader: migrate %s: %w", name, err)
	}
	return nil
}

func (d *Datapath) attach(cgID uint64) error {
	names := make([]string, 0, len(d.progs))
	for name := range d.progs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		prog := d.progs[name]
		if prog.Type() != ebpf.CGroupSockAddr && prog.Type() != ebpf.SockOps {
			continue
		}
		l, err := d.attachOne(name, prog, cgID)
		if err != nil {
			return err
		}
		d.links[name] = l
	}
	return nil
}

// attachOne re-points a pinned link at prog when it is attached to our
// cgroup; otherwise it attaches afresh and pins the new link.
func (d *Datapath) attachOne(name string, prog *ebpf.Program, cgID uint64) (link.Link, error) {
	path := d.linkPin(name)
	attachType := attachTypeOf(name)
	if old, err := link.LoadPinnedLink(path, nil); err == nil {
		info, ierr := old.Info()
		if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cgID {
			if err := old.Update(prog); err != nil {
				old.Close()
				return nil, fmt.Errorf("loader: switch pinned link %s to the new program: %w", name, err)
			}
			return old, nil
		}
		// Attached elsewhere (the cgroup root changed): detach the old one.
		_ = old.Unpin()
		old.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		// A pin we cannot read is removed so that attaching can proceed.
		_ = os.Remove(path)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: d.cfg.CgroupPath, Attach: attachType, Program: prog})
	if err != nil {
		return nil, fmt.Errorf("loader: attach %s to %s: %w", name, d.cfg.CgroupPath, err)
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		return nil, fmt.Errorf("loader: pin link %s: %w", name, err)
	}
	return l, nil
}

func attachTypeOf(prog string) ebpf.AttachType {
	switch prog {
	case "km_connect4":
		return ebpf.AttachCGroupInet4Connect
	case "km_connect6":
		return ebpf.AttachCGroupInet6Connect
	case "km_sendmsg4":
		return ebpf.AttachCGroupUDP4Sendmsg
	case "km_sendmsg6":
		return ebpf.AttachCGroupUDP6Sendmsg
	case "km_recvmsg4":
		return ebpf.AttachCGroupUDP4Recvmsg
	case "km_recvmsg6":
		return ebpf.AttachCGroupUDP6Recvmsg
	case "km_getpeername4":
		return ebpf.AttachCgroupInet4GetPeername
	case "km_getpeername6":
		return ebpf.AttachCgroupInet6GetPeername
	case ProgSockops:
		return ebpf.AttachCGroupSockOps
	}
	return ebpf.AttachNone
}

func (d *Datapath) pinMaps() error {
	for name, m := range d.maps {
		if isInternal(name) {
			continue
		}
		path := d.mapPin(name)
		if m.IsPinned() {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("loader: remove stale pin %s: %w", path, err)
		}
		if err := m.Pin(path); err != nil {
			return fmt.Errorf("loader: pin map %s: %w", name, err)
		}
	}
	return d.unpinRetired()
}

// retiredMaps are maps earlier layouts had and this one does not. Only
// these are unpinned: other pins in the directory (km_pod_tc, made by the
// CNI plugin) are not the program set's.
var retiredMaps = []string{
	"km_origin", // layout 4: the daemon pairs the ends of a connection now
	"km_conn",   // layout 4: the connection record lives in km_sock now
}

// unpinRetired removes the pins of retired maps: nothing would ever open
// them again, and a pin keeps the map's memory.
func (d *Datapath) unpinRetired() error {
	for _, name := range retiredMaps {
		path := d.mapPin(name)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("loader: remove the pin of retired map %s: %w", name, err)
		}
	}
	return nil
}

// Map returns a loaded map by name (see the Map* constants).
func (d *Datapath) Map(name string) *ebpf.Map { return d.maps[name] }

// Program returns a loaded program by name (e.g. "km_connect4").
func (d *Datapath) Program(name string) *ebpf.Program { return d.progs[name] }

// Sizes returns the effective map sizes.
func (d *Datapath) Sizes() Sizes { return d.sizes }

// PinDir returns the directory everything is pinned under.
func (d *Datapath) PinDir() string { return d.cfg.PinDir }

// Links names the attached programs.
func (d *Datapath) Links() []string {
	out := make([]string, 0, len(d.links))
	for n := range d.links {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Close releases this process's handles. The pins keep programs attached and
// maps alive, so traffic goes on until the next Open switches over.
func (d *Datapath) Close() error {
	d.closeAll()
	return nil
}

func (d *Datapath) closeAll() {
	for _, l := range d.links {
		l.Close()
	}
	for _, p := range d.progs {
		p.Close()
	}
	for _, m := range d.maps {
		m.Close()
	}
	if d.oldManage != nil {
		d.oldManage.Close()
		d.oldManage = nil
	}
	d.links, d.progs, d.maps = nil, nil, nil
}

// Uninstall detaches every program and removes every pin under the pin
// directory, then closes. Used when the data path is removed from a node.
func (d *Datapath) Uninstall() error {
	var errs []error
	// Filters are not held by pins: take each recorded one off its veth.
	if err := podtc.DetachAll(d.cfg.PinDir); err != nil {
		errs = append(errs, err)
	}
	for name, l := range d.links {
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin link %s: %w", name, err))
		}
	}
	for name, m := range d.maps {
		if m.IsPinned() {
			if err := m.Unpin(); err != nil {
				errs = append(errs, fmt.Errorf("unpin map %s: %w", name, err))
			}
		}
	}
	d.closeAll()
	// Pod programs and legacy per-pod links: removing the pins detaches them.
	for _, sub := range []string{tcSubdir, progsSubdir} {
		dir := filepath.Join(d.cfg.PinDir, sub)
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, sub := range []string{tcSubdir, progsSubdir, linksSubdir, mapsSubdir, ""} {
		if err := os.Remove(filepath.Join(d.cfg.PinDir, sub)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RemovePins detaches and deletes a pinned set without loading anything: for
// uninstall and for tests cleaning up after a failure.
func RemovePins(pinDir string) error {
	var errs []error
	if err := podtc.DetachAll(pinDir); err != nil {
		errs = append(errs, err)
	}
	for _, sub := range []string{tcSubdir, progsSubdir, linksSubdir, mapsSubdir} {
		dir := filepath.Join(pinDir, sub)
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range entries {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.Remove(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (d *Datapath) mapPin(name string) string {
	return filepath.Join(d.cfg.PinDir, mapsSubdir, name)
}

func (d *Datapath) linkPin(name string) string {
	return filepath.Join(d.cfg.PinDir, linksSubdir, name)
}

// Internal maps (.rodata, .bss) belong to one program load and are not pinned.
func isInternal(name string) bool {
	return len(name) > 0 && name[0] == '.' || filepath.Ext(name) != ""
}

func checkBPFFS(dir string) error {
	// The directory may not exist yet: check the closest existing parent.
	p := dir
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return fmt.Errorf("loader: %s is not on a bpffs mount (mount -t bpf bpf /sys/fs/bpf)", dir)
			}
			return nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("loader: statfs %s: %w", p, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("loader: %s: no existing parent", dir)
		}
		p = parent
	}
}

// cgroupID is the kernel's id for a cgroup v2 directory: its inode number.
func cgroupID(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("loader: cgroup %s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("loader: %s is not a cgroup v2 directory", path)
	}
	var s unix.Stat_t
	if err := unix.Stat(path, &s); err != nil {
		return 0, fmt.Errorf("loader: cgroup %s: %w", path, err)
	}
	return s.Ino, nil
}

func isPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	for i := uint32(2); i*i <= n; i++ {
		if n%i == 0 {
			return false
		}
	}
	return true
}

// CheckPinned fails unless the pins kmesh-cni uses are under pinDir: the
// manage map, the pod-attachment records and the pod program. It loads
// nothing.
func CheckPinned(pinDir string) error {
	for _, p := range []string{manage.Pin(pinDir), podtc.RecordsPin(pinDir), podtc.ProgPin(pinDir)} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("pin %s: %w", p, err)
		}
	}
	return nil
}
