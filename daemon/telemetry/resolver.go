package telemetry

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmesh-go/kmesh/daemon/model"
)

// Resolver names the workload behind an address and the service behind a
// service address.
type Resolver interface {
	// Peer returns the workload that has addr, or nil.
	Peer(addr netip.Addr) *Peer
	// Service returns the service whose VIP is addr, or nil.
	Service(addr netip.Addr) *Service
	// Generation changes whenever an answer may have changed.
	Generation() uint64
}

// ModelResolver answers from the daemon's model through an index by
// address. The index is rebuilt on demand after Invalidate, at most every
// rebuildEvery, so a burst of mesh updates costs one rebuild.
type ModelResolver struct {
	store        *model.Store
	rebuildEvery time.Duration

	mu sync.Mutex
	// dirty and gen are also read without mu: Generation is asked once
	// per connection record, and the index is stale only after a change.
	dirty   atomic.Bool
	built   time.Time
	gen     atomic.Uint64
	peers   map[netip.Addr]*Peer
	service map[netip.Addr]*Service
}

// NewModelResolver indexes store. Call Invalidate when the store changes.
func NewModelResolver(store *model.Store) *ModelResolver {
	r := &ModelResolver{store: store, rebuildEvery: 200 * time.Millisecond}
	r.dirty.Store(true)
	return r
}

// Invalidate marks the index stale.
func (r *ModelResolver) Invalidate() {
	r.dirty.Store(true)
}

func (r *ModelResolver) Peer(a netip.Addr) *Peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refreshLocked()
	return r.peers[a.Unmap()]
}

func (r *ModelResolver) Service(a netip.Addr) *Service {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refreshLocked()
	return r.service[a.Unmap()]
}

func (r *ModelResolver) Generation() uint64 {
	if !r.dirty.Load() {
		return r.gen.Load()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refreshLocked()
	return r.gen.Load()
}

func (r *ModelResolver) refreshLocked() {
	if !r.dirty.Load() || (r.peers != nil && time.Since(r.built) < r.rebuildEvery) {
		return
	}
	// Cleared before reading the store: a change while it is read marks
	// the index stale again.
	r.dirty.Store(false)
	peers := map[netip.Addr]*Peer{}
	svcs := map[netip.Addr]*Service{}
	r.store.Read(func(v model.View) {
		v.EachWorkload(func(w *model.Workload) {
			if w.HostNetwork {
				// Its address is its node's, shared with every other
				// host-network pod there: it names none of them.
				return
			}
			p := PeerOf(w)
			for _, a := range w.Addresses {
				peers[a.Unmap()] = p
			}
		})
		v.EachService(func(s *model.Service) {
			x := &Service{Hostname: s.Hostname, Name: s.Name, Namespace: s.Namespace}
			for _, a := range s.VIPs {
				svcs[a.Unmap()] = x
			}
		})
	})
	r.peers, r.service = peers, svcs
	r.built = time.Now()
	r.gen.Add(1)
}

// PeerOf names a model workload for the labels.
func PeerOf(w *model.Workload) *Peer {
	name := w.WorkloadName
	if name == "" {
		name = w.Name
	}
	return &Peer{
		UID:               w.UID,
		Workload:          name,
		Namespace:         w.Namespace,
		CanonicalService:  w.CanonicalName,
		CanonicalRevision: w.CanonicalRevision,
		Principal:         w.Identity(),
		Cluster:           w.ClusterID,
	}
}
