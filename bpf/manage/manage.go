// Package manage is the enrollment map, km_manage: netns cookie -> how the
// pod is enrolled. A socket program acts only for sockets whose netns
// cookie is in it.
//
// It works on the map's file descriptor with plain bpf(2) calls (no
// cilium/ebpf), so kmesh-cni, which writes a pod's entry itself at ADD,
// opens and writes it in a few microseconds; the daemon uses the same
// type (bpf/maps.Manage) on the map it loaded.
package manage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"path/filepath"
	"syscall"

	"github.com/kmesh-go/kmesh/bpf/internal/bpfsys"
	"github.com/kmesh-go/kmesh/bpf/layout"
)

// MapName is the map's name, pinned at <pinDir>/maps/km_manage.
const MapName = "km_manage"

// Pin is where a data path pinned at pinDir keeps the map.
func Pin(pinDir string) string { return filepath.Join(pinDir, "maps", MapName) }

// Enrollment is what the data path knows of an enrolled pod network
// namespace.
type Enrollment struct {
	// Waypoint marks a waypoint's own pod: its connections are never sent to
	// a waypoint again.
	Waypoint bool `json:"waypoint,omitempty"`
	// ClientID is the stable key consistent hashing places the pod by (e.g. a
	// hash of its IP); 0 means the netns cookie.
	ClientID uint32 `json:"clientId,omitempty"`
	// WorkloadID is the pod's own workload in the data path, once the daemon
	// knows it: the connect hook authorizes with its identity.
	WorkloadID uint32 `json:"workloadId,omitempty"`
}

// Map is the enrollment map. The CNI plugin writes it directly, so
// enrolling a pod never waits for the daemon.
type Map struct {
	obj *bpfsys.Object // nil when the fd is borrowed
	fd  int
}

// Open opens the pinned map of a running data path. A data path that is
// not loaded is an error wrapping os.ErrNotExist.
func Open(pinDir string) (*Map, error) {
	o, err := bpfsys.Open(Pin(pinDir), bpfsys.TypeMap)
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s under %s (is the kmesh data path loaded?): %w", MapName, pinDir, err)
	}
	return &Map{obj: o, fd: o.FD()}, nil
}

// FromFD uses the map behind fd, which the caller keeps open.
func FromFD(fd int) *Map { return &Map{fd: fd} }

// Close releases a map opened with Open.
func (x *Map) Close() error {
	if x.obj != nil {
		return x.obj.Close()
	}
	return nil
}

func (x *Map) object() *bpfsys.Object {
	if x.obj != nil {
		return x.obj
	}
	return bpfsys.Borrow(x.fd, bpfsys.TypeMap)
}

func key(cookie uint64) []byte {
	return binary.NativeEndian.AppendUint64(make([]byte, 0, 8), cookie)
}

// ErrInvalid is a malformed entry (bpf/maps.ErrInvalid is the same error).
var ErrInvalid = errors.New("invalid data path update")

// valueSize is the size of layout.ManageValue, the map's value.
var valueSize = binary.Size(layout.ManageValue{})

func encode(v layout.ManageValue) []byte {
	b, err := binary.Append(make([]byte, 0, valueSize), binary.NativeEndian, v)
	if err != nil {
		panic(err) // fixed-size struct: cannot happen
	}
	return b
}

func decode(b []byte) (Enrollment, bool) {
	var v layout.ManageValue
	if _, err := binary.Decode(b, binary.NativeEndian, &v); err != nil {
		return Enrollment{}, false
	}
	return Enrollment{Waypoint: v.Flags&layout.ManageWaypoint != 0, ClientID: v.ClientID, WorkloadID: v.WorkloadID},
		v.Flags&layout.ManageEnrolled != 0
}

// Enroll puts a pod's netns under the data path; idempotent.
func (x *Map) Enroll(cookie uint64, e Enrollment) error {
	if cookie == 0 {
		return fmt.Errorf("%w: netns cookie 0", ErrInvalid)
	}
	v := layout.ManageValue{Flags: layout.ManageEnrolled, ClientID: e.ClientID, WorkloadID: e.WorkloadID}
	if e.Waypoint {
		v.Flags |= layout.ManageWaypoint
	}
	if err := x.object().Update(key(cookie), encode(v), bpfsys.UpdateAny); err != nil {
		if errors.Is(err, syscall.E2BIG) {
			return fmt.Errorf("map %s is full (%d pods enrolled; raise its size): %w", MapName, x.maxEntries(), err)
		}
		return fmt.Errorf("enroll netns %d: %w", cookie, err)
	}
	return nil
}

// SetWorkload records which workload an enrolled netns is, and whether it
// is a waypoint's pod (its connections are then never sent to a waypoint,
// nor accelerated); a netns that is not enrolled is left alone (false).
func (x *Map) SetWorkload(cookie uint64, wid uint32, waypoint bool) (bool, error) {
	o := x.object()
	b := make([]byte, valueSize)
	if err := o.Lookup(key(cookie), b); err != nil {
		if errors.Is(err, bpfsys.ErrKeyNotExist) {
			return false, nil
		}
		return false, err
	}
	var v layout.ManageValue
	if _, err := binary.Decode(b, binary.NativeEndian, &v); err != nil {
		return false, err
	}
	flags := v.Flags &^ layout.ManageWaypoint
	if waypoint {
		flags |= layout.ManageWaypoint
	}
	if v.WorkloadID == wid && v.Flags == flags {
		return true, nil
	}
	v.WorkloadID, v.Flags = wid, flags
	// Only update: a concurrent release must win.
	if err := o.Update(key(cookie), encode(v), bpfsys.UpdateExist); err != nil {
		if errors.Is(err, bpfsys.ErrKeyNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("record workload of netns %d: %w", cookie, err)
	}
	return true, nil
}

// maxEntries is bpf_map_info's max_entries (after type, id, key and value
// sizes).
func (x *Map) maxEntries() uint32 {
	var b [20]byte
	if err := x.object().Info(b[:]); err != nil {
		return 0
	}
	return binary.NativeEndian.Uint32(b[16:])
}

// Release takes a netns out of the data path; releasing an unknown one is
// not an error.
func (x *Map) Release(cookie uint64) error {
	if err := x.object().Delete(key(cookie)); err != nil && !errors.Is(err, bpfsys.ErrKeyNotExist) {
		return fmt.Errorf("release netns %d: %w", cookie, err)
	}
	return nil
}

// Get reports whether a netns is enrolled and how.
func (x *Map) Get(cookie uint64) (Enrollment, bool, error) {
	v := make([]byte, valueSize)
	if err := x.object().Lookup(key(cookie), v); err != nil {
		if errors.Is(err, bpfsys.ErrKeyNotExist) {
			return Enrollment{}, false, nil
		}
		return Enrollment{}, false, fmt.Errorf("look up netns %d: %w", cookie, err)
	}
	e, ok := decode(v)
	return e, ok, nil
}

// List returns every enrolled netns.
func (x *Map) List() (map[uint64]Enrollment, error) {
	out := map[uint64]Enrollment{}
	o := x.object()
	var prev []byte
	next, v := make([]byte, 8), make([]byte, valueSize)
	for {
		more, err := o.NextKey(prev, next)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", MapName, err)
		}
		if !more {
			return out, nil
		}
		switch err := o.Lookup(next, v); {
		case errors.Is(err, bpfsys.ErrKeyNotExist):
			// Deleted meanwhile.
		case err != nil:
			return nil, fmt.Errorf("list %s: %w", MapName, err)
		default:
			if e, ok := decode(v); ok {
				out[binary.NativeEndian.Uint64(next)] = e
			}
		}
		prev = append(prev[:0], next...)
	}
}

// ClientIDFor derives the consistent-hashing key of a pod from its address,
// so a pod keeps its place in Maglev tables on every node and across
// restarts of the daemon. Both the CNI plugin and the daemon enroll with it.
func ClientIDFor(ip netip.Addr) uint32 {
	if !ip.IsValid() {
		return 0
	}
	h := fnv.New32a()
	b := ip.Unmap().AsSlice()
	h.Write(b)
	if id := h.Sum32(); id != 0 {
		return id
	}
	return 1
}
