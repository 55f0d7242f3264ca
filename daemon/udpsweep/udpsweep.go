// Package udpsweep closes the connected UDP sockets of enrolled pods whose
// endpoint has left its service, so that the application sees an error
// and reconnects (to a live endpoint) instead of sending into a dead
// address for as long as the socket lives. The kernel decides which
// sockets (bpf/src/udp_iter.c); this package runs it in every enrolled
// pod's network namespace after each update that may have removed an
// endpoint, and now and then to repair anything missed.
package udpsweep

import (
	"context"
	"log/slog"
	"os"
	"time"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/daemon/dataplane"
	"github.com/kmesh-go/kmesh/internal/podns"
)

const (
	// minGap spaces sweeps: a burst of updates is one sweep, at most this
	// late after the burst began. Each sweep enters every enrolled pod's
	// namespace, so a busy control plane must not cost one per push.
	minGap = 200 * time.Millisecond
	// repairEvery sweeps without an update (a sweep that failed, a pod
	// that was not known yet).
	repairEvery = time.Minute
)

// Sweeper runs the kernel's sweep.
type Sweeper struct {
	k    *loader.UDPSweeper
	pods func() []*cniv1.Pod
	log  *slog.Logger
	kick chan struct{}
}

// New attaches the sweep program of dp and arms it on dp's updates.
func New(dp *dataplane.Dataplane, pods func() []*cniv1.Pod, log *slog.Logger) (*Sweeper, error) {
	k, err := dp.Datapath().NewUDPSweeper()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Sweeper{k: k, pods: pods, log: log.With("component", "udpsweep"), kick: make(chan struct{}, 1)}
	dp.Observe(func(ev dataplane.Event) {
		// Endpoints leave only with a service or backend change.
		if ev.Err == nil && ev.Services+ev.Backends+ev.Deletes > 0 {
			s.Kick()
		}
	})
	return s, nil
}

// Kick asks for a sweep soon.
func (s *Sweeper) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run sweeps when kicked and every repairEvery until ctx ends, then
// detaches the program.
func (s *Sweeper) Run(ctx context.Context) {
	defer s.k.Close()
	repair := time.NewTicker(repairEvery)
	defer repair.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-repair.C:
		}
		s.SweepAll()
		select {
		case <-ctx.Done():
			return
		case <-time.After(minGap):
		}
	}
}

// SweepAll sweeps every enrolled pod once and returns how many sockets it
// closed.
func (s *Sweeper) SweepAll() int {
	total := 0
	for _, p := range s.pods() {
		if !p.GetEnrolled() || p.GetNetnsPath() == "" {
			continue
		}
		if _, err := os.Stat(p.GetNetnsPath()); err != nil {
			continue // the pod is going away
		}
		err := podns.Do(p.GetNetnsPath(), func() error {
			n, err := s.k.Sweep()
			total += n
			return err
		})
		if err != nil {
			s.log.Warn("sweep connected UDP sockets", "pod", p.GetNamespace()+"/"+p.GetName(), "err", err)
		}
	}
	if total > 0 {
		// Counted in km_stats too (udp_endpoint_gone).
		s.log.Info("closed connected UDP sockets whose endpoint left the service", "sockets", total)
	}
	return total
}
