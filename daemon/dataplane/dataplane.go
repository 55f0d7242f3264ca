// Package dataplane ties the daemon's model to the kernel: it owns the
// loaded programs and maps, applies model updates through the compiler and
// the typed map API, and keeps the last good state when an update is
// refused.
package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/compiler"
	"github.com/kmesh-go/kmesh/daemon/model"
)

// Config opens a data path.
type Config struct {
	Loader loader.Config
	Node   model.Node
}

// Dataplane is the daemon's handle on the kernel.
type Dataplane struct {
	dp     *loader.Datapath
	maps   *maps.Maps
	manage *maps.Manage
	store  *model.Store

	mu     sync.Mutex
	comp   *compiler.Compiler
	synced bool

	// Observers (metrics) are told about every kernel write.
	observers []func(Event)
}

// Event reports one update's outcome to observers.
type Event struct {
	Took     time.Duration
	Services int
	Backends int
	Deletes  int
	// PolicySets tells that authorization tables changed: established
	// connections may now be denied.
	PolicySets bool
	Err        error
}

// Open loads (or reuses) the data path. Nothing is written to the service
// maps until the first full sync: the kernel keeps serving what a previous
// run left there. When that run had another layout, its programs and maps
// keep serving until the first full sync has filled the new maps (see
// loader.Prepare); Sync then switches to the new programs.
func Open(cfg Config) (*Dataplane, error) {
	dp, err := loader.Prepare(cfg.Loader)
	if err != nil {
		return nil, err
	}
	m, err := maps.New(dp)
	if err != nil {
		dp.Close()
		return nil, err
	}
	store := model.NewStore()
	return &Dataplane{
		dp:     dp,
		maps:   m,
		manage: maps.NewManage(dp),
		store:  store,
		comp:   compiler.New(cfg.Node, store),
	}, nil
}

// Close releases handles; the pinned data path keeps running.
func (d *Dataplane) Close() error {
	d.maps.Close()
	return d.dp.Close()
}

// Observe registers a callback for every kernel update.
func (d *Dataplane) Observe(fn func(Event)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.observers = append(d.observers, fn)
}

// Store is the model the data path is built from.
func (d *Dataplane) Store() *model.Store { return d.store }

// Maps is the typed map API (reads for dumps and metrics).
func (d *Dataplane) Maps() *maps.Maps { return d.maps }

// Manage is the enrollment map.
func (d *Dataplane) Manage() *maps.Manage { return d.manage }

// Datapath is the loaded programs and maps.
func (d *Dataplane) Datapath() *loader.Datapath { return d.dp }

// Synced reports whether the first full state has been written.
func (d *Dataplane) Synced() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.synced
}

// Node returns the node the data path ranks localities against.
func (d *Dataplane) Node() model.Node {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.comp.Node()
}

// ServiceID and WorkloadID expose the compiled ids (for dumps, telemetry).
func (d *Dataplane) ServiceID(k model.ServiceKey) uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.comp.ServiceID(k)
}

func (d *Dataplane) WorkloadID(uid string) uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.comp.WorkloadID(uid)
}

// Update applies converted resources and removals; they reach the kernel
// as one transaction. If the kernel refuses that transaction (a full map),
// the whole update is undone and err says why. No resource is rejected
// (rejected stays empty): a destination whose waypoint names nothing known
// yet is taken, with a warning, and its TCP connections are refused until
// the waypoint arrives. Refusing it would keep its previous state, without
// the waypoint, and istiod does not send a refused resource again.
func (d *Dataplane) Update(upserts []model.Resource, removes []string) (rejected map[string]error, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	t0 := time.Now()

	for name, why := range d.store.UnresolvedWaypoints(upserts, removes) {
		slog.Warn("waypoint not known yet: TCP to this destination is refused until it is", "resource", name, "reason", why)
	}
	ch, undo := d.store.ApplyWithUndo(upserts, removes)
	if !d.synced || ch.Empty() {
		// Before the first sync only the model fills up.
		return rejected, nil
	}
	start := time.Now()
	txn, err := d.comp.Changes(ch)
	compiled := time.Since(start)
	if err == nil {
		err = d.maps.Apply(txn)
	}
	slog.Debug("mesh update", "services", len(txn.Services), "backends", len(txn.Backends),
		"store", start.Sub(t0), "compile", compiled, "apply", time.Since(start)-compiled, "err", err)
	d.notify(Event{Took: time.Since(start), Services: len(txn.Services), Backends: len(txn.Backends),
		Deletes:    len(txn.DeleteServices) + len(txn.DeleteBackends),
		PolicySets: len(txn.PolicySets)+len(txn.DeletePolicySets) > 0, Err: err})
	if err == nil {
		d.comp.Settle()
		return rejected, nil
	}
	// The kernel kept the old state; put the model back and start the
	// compiler over from what the kernel holds.
	undo()
	if rerr := d.rebuildLocked(); rerr != nil {
		err = errors.Join(err, fmt.Errorf("resync after the refused update: %w", rerr))
	}
	return rejected, err
}

// Sync writes the full model into the kernel, adopting what a previous run
// left there and deleting what the model no longer has. Called once the
// first complete state has arrived; later calls resync everything.
func (d *Dataplane) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.rebuildLocked(); err != nil {
		return err
	}
	if d.dp.Pending() {
		// Every VIP is in the new maps: the new programs take over.
		start := time.Now()
		if err := d.dp.Commit(); err != nil {
			return fmt.Errorf("switch to the new programs: %w", err)
		}
		slog.Info("switched to this build's programs; the pinned ones of another layout served until the new maps were filled",
			"pinnedLayout", d.dp.PinnedLayout, "layout", layout.Version, "switch", time.Since(start).Round(time.Microsecond))
	}
	d.synced = true
	return nil
}

// SetNode changes the node's locality and recomputes every priority.
func (d *Dataplane) SetNode(n model.Node) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.comp.SetNode(n)
	if !d.synced {
		return nil
	}
	return d.rebuildLocked()
}

func (d *Dataplane) rebuildLocked() error {
	node := d.comp.Node()
	d.comp = compiler.New(node, d.store)
	svcs, bes := d.maps.Services(), d.maps.Backends()
	d.comp.Adopt(svcs, bes, d.maps.PolicySets())
	var sids, bids []uint32
	for _, s := range svcs {
		sids = append(sids, s.ID)
	}
	for _, b := range bes {
		bids = append(bids, b.ID)
	}
	start := time.Now()
	txn, err := d.comp.Full(sids, bids)
	if err != nil {
		return err
	}
	err = d.maps.Apply(txn)
	d.notify(Event{Took: time.Since(start), Services: len(txn.Services), Backends: len(txn.Backends),
		Deletes:    len(txn.DeleteServices) + len(txn.DeleteBackends),
		PolicySets: len(txn.PolicySets)+len(txn.DeletePolicySets) > 0, Err: err})
	if err != nil {
		return err
	}
	d.comp.Settle()
	return nil
}

// WorkloadAt returns the data-path id of the workload owning an address,
// and whether that workload is a waypoint's pod.
func (d *Dataplane) WorkloadAt(a netip.Addr) (id uint32, waypoint bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	uid, id := d.comp.WorkloadAt(a)
	return id, id != 0 && d.comp.WaypointWorkload(uid)
}

// Authorize decides a connection toward a local workload as the kernel
// would, from the same tables. ok is false when dst is no workload or has
// no policies.
func (d *Dataplane) Authorize(src, dst netip.Addr, port uint16) (v maps.AuthzVerdict, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dstUID, _ := d.comp.WorkloadAt(dst)
	if dstUID == "" {
		return v, false
	}
	t := d.comp.PolicySetOf(dstUID)
	if t == nil {
		return v, false
	}
	var ident uint32
	if srcUID, _ := d.comp.WorkloadAt(src); srcUID != "" {
		ident = d.comp.IdentityOf(srcUID)
	}
	return t.Decide(ident, src, dst, port), true
}

// PolicyKeys maps the kernel's policy counter ids to policy keys.
func (d *Dataplane) PolicyKeys() map[uint32]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.comp.PolicyKeys()
}

func (d *Dataplane) notify(e Event) {
	for _, fn := range d.observers {
		fn(e)
	}
}
