// Package meshsync feeds mesh state from a source (istiod over xDS, or a
// local config file) into the data path, and tracks whether the data path
// has the first complete state yet (readiness).
package meshsync

import (
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmesh-go/kmesh/daemon/dataplane"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/daemon/xds"
)

// bigUpdate is the size from which an update's garbage is returned to the
// OS right away.
const bigUpdate = 10000

// Syncer implements xds.Handler over a Dataplane.
type Syncer struct {
	dp  *dataplane.Dataplane
	log *slog.Logger

	ready     atomic.Bool
	connected atomic.Bool
	// The first sync: asked for (the source has sent its whole state),
	// serialised, and tried again while it fails (syncRetry).
	syncWanted atomic.Bool
	syncMu     sync.Mutex
	syncTimer  *time.Timer
	mu         sync.Mutex
	lastErr    string
	pushes     atomic.Uint64
	nacks      atomic.Uint64
	release    *time.Timer // hands a snapshot's garbage back to the OS
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
	t0 := time.Now()
	good, rejected := decodeAll(typeURL, upserts)
	s.log.Debug("decoded", "type", typeURL, "resources", len(upserts), "took", time.Since(t0))
	return s.update(good, removes, rejected)
}

// decodeRun is how many messages are unmarshalled before they are
// converted (xds.DecodeBatch).
const decodeRun = 1024

// decodeAll decodes a response on every core: a full snapshot is hundreds
// of thousands of protobuf messages, and order does not matter until the
// store.
func decodeAll(typeURL string, upserts []xds.Resource) ([]model.Resource, map[string]error) {
	out := make([]model.Resource, len(upserts))
	errs := make([]error, len(upserts))
	workers := runtime.GOMAXPROCS(0)
	if len(upserts) < 512 {
		workers = 1
	}
	var wg sync.WaitGroup
	chunk := (len(upserts) + workers - 1) / workers
	for w := 0; w < workers; w++ {
		lo, hi := w*chunk, min((w+1)*chunk, len(upserts))
		if lo >= hi {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ; lo < hi; lo += decodeRun {
				end := min(lo+decodeRun, hi)
				xds.DecodeBatch(typeURL, upserts[lo:end], out[lo:end], errs[lo:end])
			}
		}()
	}
	wg.Wait()
	rejected := map[string]error{}
	good := out[:0]
	for i := range out {
		if errs[i] != nil {
			rejected[upserts[i].Name] = errs[i]
			continue
		}
		good = append(good, out[i])
	}
	return good, rejected
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
	if len(good)+len(removes) >= bigUpdate {
		s.releaseMemorySoon()
	}
	for n, e := range more {
		rejected[n] = e
	}
	if s.syncWanted.Load() && !s.ready.Load() {
		// The first sync failed (a full map, say): this update may be
		// what it lacked.
		s.trySync()
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

// releaseDelay lets the source drop what it held of a snapshot (the xDS
// response, the file's entries) before the memory goes back.
const releaseDelay = time.Second

// releaseMemorySoon hands the heap a snapshot left behind back to the
// node once its source has let go of it: the runtime would otherwise keep
// it, up to twice the live heap, for the next garbage to fill.
func (s *Syncer) releaseMemorySoon() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.release == nil {
		s.release = time.AfterFunc(releaseDelay, releaseMemory)
		return
	}
	s.release.Reset(releaseDelay)
}

// releaseMemory collects twice before handing memory back: buffers a
// sync.Pool kept (gRPC's for received messages, as large as a snapshot)
// survive one collection in the pool's victim cache.
func releaseMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// syncRetry is how long a failed first sync waits to be tried again,
// when no update comes first.
var syncRetry = 5 * time.Second

// Synced writes the first complete state into the kernel. The source
// calls it once per stream; if the kernel refuses (a full map), the sync
// is tried again after each update and every syncRetry until it lands,
// rather than leaving the node unready until the stream restarts.
func (s *Syncer) Synced() {
	s.syncWanted.Store(true)
	s.trySync()
}

func (s *Syncer) trySync() {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.ready.Load() {
		return
	}
	start := time.Now()
	if err := s.dp.Sync(); err != nil {
		s.log.Error("first sync into the data path failed; trying again after the next update or in "+syncRetry.String(), "err", err)
		s.mu.Lock()
		s.lastErr = err.Error()
		s.mu.Unlock()
		if s.syncTimer == nil {
			s.syncTimer = time.AfterFunc(syncRetry, s.trySync)
		} else {
			s.syncTimer.Reset(syncRetry)
		}
		return
	}
	if s.syncTimer != nil {
		s.syncTimer.Stop()
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
