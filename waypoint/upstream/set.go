// Package upstream is the waypoint's clusters at run time: which endpoint
// a request goes to (priorities, round robin, least request, random, ring
// hash, Maglev), the circuit breakers counted per cluster, and the
// connection pools to each endpoint.
//
// State lives by cluster name and survives configuration swaps: a cluster
// that is still there after Update keeps its pools, its round-robin cursor,
// its breaker counts and the in-flight counts of endpoints it still has; a
// cluster that is gone is closed (idle connections now, busy ones when
// their request ends). Requests in flight keep the *Cluster they started
// with.
package upstream

import (
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Set holds the clusters of the current configuration.
type Set struct {
	log *slog.Logger
	// NetHTTP1 sends HTTP/1.1 through net/http's Transport instead of the
	// clusters' own pools (for comparison). Set before the first Update.
	NetHTTP1 bool
	mu       sync.Mutex
	clusters map[string]*Cluster
}

// NewSet returns an empty set.
func NewSet(log *slog.Logger) *Set {
	if log == nil {
		log = slog.Default()
	}
	return &Set{log: log, clusters: map[string]*Cluster{}}
}

// Update makes the set match cs (by name) and returns the clusters of the
// new configuration. The returned map is not modified afterwards.
func (s *Set) Update(cs map[string]*model.Cluster) map[string]*Cluster {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[string]*Cluster, len(cs))
	for name, m := range cs {
		c := s.clusters[name]
		if c == nil {
			c = newCluster(name, s.log)
			c.netHTTP = s.NetHTTP1
		}
		c.update(m)
		next[name] = c
	}
	for name, c := range s.clusters {
		if _, ok := next[name]; !ok {
			c.close()
		}
	}
	s.clusters = next
	return maps.Clone(next)
}

// Names lists the clusters, sorted (for dumps and tests).
func (s *Set) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.clusters))
}

// Close closes every cluster.
func (s *Set) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.clusters {
		c.close()
	}
	s.clusters = map[string]*Cluster{}
}
