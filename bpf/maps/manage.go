package maps

import (
	"net/netip"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/manage"
)

// Enrollment is what the data path knows of an enrolled pod network
// namespace (see bpf/manage).
type Enrollment = manage.Enrollment

// Manage is the enrollment map: netns cookie -> enrollment. The CNI plugin
// writes it directly (through bpf/manage, the same code), so enrolling a
// pod never waits for the daemon.
type Manage = manage.Map

// NewManage wraps the manage map of a loaded data path.
func NewManage(dp *loader.Datapath) *Manage {
	return manage.FromFD(dp.Map(loader.MapManage).FD())
}

// OpenManage opens the pinned manage map of a running data path.
func OpenManage(pinDir string) (*Manage, error) { return manage.Open(pinDir) }

// ClientIDFor derives the consistent-hashing key of a pod from its address,
// so a pod keeps its place in Maglev tables on every node and across
// restarts of the daemon. Both the CNI plugin and the daemon enroll with it.
func ClientIDFor(ip netip.Addr) uint32 { return manage.ClientIDFor(ip) }
