// Package meshsync feeds mesh state from a source (istiod over xDS, or a
// local config file) into the data path, and tracks whether the data path
// has the first complete state yet (readiness).
package meshsync

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmesh-go/kmesh/daemon/dataplane"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/daemon/xds"
)

// Syncer implements xds.Handler over a Dataplane.
type Syncer struct {
	dp  *dataplane.Dataplane
	log *slog.Logger

	ready     atomic.Bool
	connected atomic.Bool
	mu        sync.Mutex
	lastErr   string
	pushes    atomic.Uint64
	nacks     atomic.Uint64
}

// New makes a syncer for dp.
func New(dp *dataplane.Dataplane, log *slog.Logger) *Syncer {
	if log == nil {
		log = slog.Default()
	}
	return &Syncer{dp: dp, log: log.With("component", "sync")}
}

// Apply decodes and applies one xDS response.
func (s *Syncer) Apply(typeURL string, upserts []xds.Resource, removes []string) (map[string]error, error) {
	s.pushes.Add(1)
	rejected := map[string]error{}
	good := make([]model.Resource, 0, len(upserts))
	for _, r := range upserts {
		m, err := xds.Decode(typeURL, r)
		if err != nil {
			rejected[r.Name] = err
			continue
		}
		good = append(good, m)
	}
	return s.update(good, removes, rejected)
}

// ApplyResources applies already converted resources (the config file).
func (s *Syncer) ApplyResources(upserts []model.Resource, removes []string, rejected map[string]error) (map[string]error, error) {
	s.pushes.Add(1)
	if rejected == nil {
		rejected = map[string]error{}
	}
	return s.update(upserts, removes, rejected)
}

func (s *Syncer) update(good []model.Resource, removes []string, rejected map[string]error) (map[string]error, error) {
	more, err := s.dp.Update(good, removes)
	for n, e := range more {
		rejected[n] = e
	}
	if len(rejected) > 0 || err != nil {
		s.nacks.Add(1)
		s.mu.Lock()
		if err != nil {
			s.lastErr = err.Error()
		} else {
			s.lastErr = fmt.Sprintf("%d resources rejected", len(rejected))
		}
		s.mu.Unlock()
	}
	return rejected, err
}

// Synced writes the first complete state into the kernel.
func (s *Syncer) Synced() {
	if s.ready.Load() {
		return
	}
	start := time.Now()
	if err := s.dp.Sync(); err != nil {
		s.log.Error("first sync into the data path failed", "err", err)
		s.mu.Lock()
		s.lastErr = err.Error()
		s.mu.Unlock()
		return
	}
	sv, wl, po := s.dp.Store().Counts()
	s.log.Info("data path synced", "services", sv, "workloads", wl, "policies", po, "took", time.Since(start).Round(time.Millisecond))
	s.ready.Store(true)
}

// Connected records the source's connection state.
func (s *Syncer) Connected(up bool) { s.connected.Store(up) }

// Ready reports whether the first complete state is in the kernel.
func (s *Syncer) Ready() bool { return s.ready.Load() }

// IsConnected reports whether the source is connected now.
func (s *Syncer) IsConnected() bool { return s.connected.Load() }

// Counters: pushes applied, pushes with a rejection.
func (s *Syncer) Counters() (pushes, nacks uint64) { return s.pushes.Load(), s.nacks.Load() }

// LastError is the most recent refusal, for status output.
func (s *Syncer) LastError() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}
