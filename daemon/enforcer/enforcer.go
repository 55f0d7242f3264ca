// Package enforcer keeps the kernel's authorization whole around the pods
// of this node: it tells the data path which workload each enrolled pod is
// (so connect() can authorize with the client's identity) and whether it
// is a waypoint's pod (never sent to a waypoint itself), and when
// policies change it closes established connections the new policies deny,
// as users of Istio expect.
package enforcer

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"time"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/daemon/dataplane"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/sockdiag"
)

// Enforcer reacts to data-path and pod changes.
type Enforcer struct {
	dp    *dataplane.Dataplane
	pods  func() []*cniv1.Pod
	log   *slog.Logger
	ids   chan struct{}
	sweep chan struct{}
	// Swept counts connections closed by policy changes.
	Swept func(n int)
}

// New makes an enforcer over the data path and the pod registry.
func New(dp *dataplane.Dataplane, pods func() []*cniv1.Pod, log *slog.Logger) *Enforcer {
	if log == nil {
		log = slog.Default()
	}
	e := &Enforcer{dp: dp, pods: pods, log: log.With("component", "enforcer"),
		ids: make(chan struct{}, 1), sweep: make(chan struct{}, 1)}
	dp.Observe(func(ev dataplane.Event) {
		if ev.Err != nil {
			return
		}
		e.kick(e.ids)
		if ev.PolicySets {
			e.kick(e.sweep)
		}
	})
	return e
}

func (e *Enforcer) kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// PodsChanged is called when the registry adds or removes a pod.
func (e *Enforcer) PodsChanged() { e.kick(e.ids) }

// Run works until ctx ends. Work is coalesced: a burst of updates is one
// pass.
func (e *Enforcer) Run(ctx context.Context) {
	tick := time.NewTicker(30 * time.Second) // repairs anything missed
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.ids:
			e.syncWorkloads()
		case <-e.sweep:
			e.syncWorkloads()
			e.sweepAll()
		case <-tick.C:
			e.syncWorkloads()
		}
	}
}

// syncWorkloads writes each enrolled pod's workload id, and whether it is
// a waypoint's pod, into its manage entry. It runs after every update, so
// a workload that becomes or stops being a waypoint's is flagged or
// cleared with it.
func (e *Enforcer) syncWorkloads() {
	m := e.dp.Manage()
	for _, p := range e.pods() {
		if !p.GetEnrolled() || p.GetNetnsCookie() == 0 {
			continue
		}
		var wid uint32
		var waypoint bool
		for _, ip := range p.GetIps() {
			if a, ok := parseIP(ip); ok {
				if wid, waypoint = e.dp.WorkloadAt(a); wid != 0 {
					break
				}
			}
		}
		if _, err := m.SetWorkload(p.GetNetnsCookie(), wid, waypoint); err != nil {
			e.log.Warn("record pod workload", "pod", p.GetNamespace()+"/"+p.GetName(), "err", err)
		}
	}
}

// sweepAll closes, in every enrolled pod of the node, accepted connections
// the current policies deny. The pod's socket is destroyed; the kernel
// resets the client's.
func (e *Enforcer) sweepAll() {
	total := 0
	for _, p := range e.pods() {
		if !p.GetEnrolled() || p.GetNetnsPath() == "" {
			continue
		}
		if _, err := os.Stat(p.GetNetnsPath()); err != nil {
			continue
		}
		n, err := e.sweepPod(p.GetNetnsPath())
		if err != nil {
			e.log.Warn("sweep pod connections", "pod", p.GetNamespace()+"/"+p.GetName(), "err", err)
		}
		total += n
	}
	if total > 0 {
		e.log.Info("closed connections a new policy denies", "connections", total)
		if e.Swept != nil {
			e.Swept(total)
		}
	}
}

func (e *Enforcer) sweepPod(nsPath string) (int, error) {
	var closed int
	err := podns.Do(nsPath, func() error {
		var err error
		closed, err = closeDenied(func(client, server netip.Addr, port uint16) bool {
			v, ok := e.dp.Authorize(client, server, port)
			return ok && v.Deny
		})
		return err
	})
	return closed, err
}

// closeDenied destroys the accepted connections of the calling thread's
// network namespace that deny refuses, and says how many it closed.
func closeDenied(deny func(client, server netip.Addr, port uint16) bool) (int, error) {
	socks, err := sockdiag.Dump()
	if err != nil {
		return 0, err
	}
	// Accepted connections are the ones on a listening port: only those
	// are "toward the pod", which its policies guard.
	listening := map[uint16]bool{}
	for _, s := range socks {
		if s.State == sockdiag.StateListen {
			listening[s.Local.Port()] = true
		}
	}
	closed := 0
	for _, s := range socks {
		if s.State != sockdiag.StateEstablished && s.State != sockdiag.StateSynRecv {
			continue
		}
		if !listening[s.Local.Port()] || !deny(s.Remote.Addr(), s.Local.Addr(), s.Local.Port()) {
			continue
		}
		if err := sockdiag.Destroy(s); err != nil {
			return closed, err
		}
		closed++
	}
	return closed, nil
}

func parseIP(s string) (netip.Addr, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), true
	}
	a, err := netip.ParseAddr(s)
	return a, err == nil
}
