package maps

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"syscall"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/loader"
)

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

// Manage is the enrollment map: netns cookie -> enrollment. The CNI plugin
// writes it directly, so enrolling a pod never waits for the daemon.
type Manage struct {
	m     *ebpf.Map
	owned bool
}

// NewManage wraps the manage map of a loaded data path.
func NewManage(dp *loader.Datapath) *Manage {
	return &Manage{m: dp.Map(loader.MapManage)}
}

// OpenManage opens the pinned manage map of a running data path.
func OpenManage(pinDir string) (*Manage, error) {
	m, err := loader.OpenPinnedMap(pinDir, loader.MapManage)
	if err != nil {
		return nil, err
	}
	return &Manage{m: m, owned: true}, nil
}

// Close releases a map opened with OpenManage.
func (x *Manage) Close() error {
	if x.owned {
		return x.m.Close()
	}
	return nil
}

// Enroll puts a pod's netns under the data path; idempotent.
func (x *Manage) Enroll(cookie uint64, e Enrollment) error {
	if cookie == 0 {
		return fmt.Errorf("%w: netns cookie 0", ErrInvalid)
	}
	v := layout.ManageValue{Flags: layout.ManageEnrolled, ClientID: e.ClientID, WorkloadID: e.WorkloadID}
	if e.Waypoint {
		v.Flags |= layout.ManageWaypoint
	}
	if err := x.m.Put(cookie, v); err != nil {
		if errors.Is(err, syscall.E2BIG) {
			return fmt.Errorf("map %s is full (%d pods enrolled; raise its size): %w", loader.MapManage, x.m.MaxEntries(), err)
		}
		return fmt.Errorf("enroll netns %d: %w", cookie, err)
	}
	return nil
}

// SetWorkload records which workload an enrolled netns is; a netns that is
// not enrolled is left alone (false).
func (x *Manage) SetWorkload(cookie uint64, wid uint32) (bool, error) {
	var v layout.ManageValue
	if err := x.m.Lookup(cookie, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, nil
		}
		return false, err
	}
	if v.WorkloadID == wid {
		return true, nil
	}
	v.WorkloadID = wid
	// Only update: a concurrent release must win.
	if err := x.m.Update(cookie, v, ebpf.UpdateExist); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("record workload of netns %d: %w", cookie, err)
	}
	return true, nil
}

// Release takes a netns out of the data path; releasing an unknown one is
// not an error.
func (x *Manage) Release(cookie uint64) error {
	if err := x.m.Delete(cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("release netns %d: %w", cookie, err)
	}
	return nil
}

// Get reports whether a netns is enrolled and how.
func (x *Manage) Get(cookie uint64) (Enrollment, bool, error) {
	var v layout.ManageValue
	if err := x.m.Lookup(cookie, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Enrollment{}, false, nil
		}
		return Enrollment{}, false, fmt.Errorf("look up netns %d: %w", cookie, err)
	}
	return Enrollment{Waypoint: v.Flags&layout.ManageWaypoint != 0, ClientID: v.ClientID, WorkloadID: v.WorkloadID}, v.Flags&layout.ManageEnrolled != 0, nil
}

// List returns every enrolled netns.
func (x *Manage) List() (map[uint64]Enrollment, error) {
	out := map[uint64]Enrollment{}
	var k uint64
	var v layout.ManageValue
	it := x.m.Iterate()
	for it.Next(&k, &v) {
		if v.Flags&layout.ManageEnrolled != 0 {
			out[k] = Enrollment{Waypoint: v.Flags&layout.ManageWaypoint != 0, ClientID: v.ClientID, WorkloadID: v.WorkloadID}
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", loader.MapManage, err)
	}
	return out, nil
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
