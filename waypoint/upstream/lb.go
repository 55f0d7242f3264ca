package upstream

import (
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"sync"

	"github.com/cespare/xxhash/v2"

	"github.com/kmesh-go/kmesh/bpf/maglev"
)

// picker chooses among a priority's healthy hosts.
type picker interface {
	pick(c *Cluster, o *PickOptions) *Host
	// hashed: the choice follows PickOptions.Hash.
	hashed() bool
}

func newPicker(lb string, hosts []*Host) picker {
	if len(hosts) == 0 {
		return nil
	}
	switch lb {
	case "least_request":
		return newLeastRequest(hosts)
	case "random":
		return newRandom(hosts)
	case "ring_hash":
		return newRing(hosts)
	case "maglev":
		return newMaglev(hosts)
	}
	return newRoundRobin(hosts)
}

func equalWeights(hosts []*Host) bool {
	for _, h := range hosts[1:] {
		if h.Weight != hosts[0].Weight {
			return false
		}
	}
	return true
}

// roundRobin walks a schedule with the cluster's cursor. With unequal
// weights the schedule is a smooth weighted round robin of one cycle
// (each host as often as its weight, spread out), so picking stays one
// atomic add.
type roundRobin struct {
	hosts    []*Host
	schedule []int32 // nil: plain rotation
}

const maxSchedule = 4096

func newRoundRobin(hosts []*Host) *roundRobin {
	rr := &roundRobin{hosts: hosts}
	if equalWeights(hosts) {
		return rr
	}
	var total uint64
	for _, h := range hosts {
		total += uint64(h.Weight)
	}
	// Scale weights down so a cycle stays short; every host keeps at
	// least one slot.
	w := make([]int64, len(hosts))
	var sum int64
	for i, h := range hosts {
		v := uint64(h.Weight)
		if total > maxSchedule {
			v = max(1, v*maxSchedule/total)
		}
		w[i] = int64(v)
		sum += w[i]
	}
	cur := make([]int64, len(hosts))
	rr.schedule = make([]int32, 0, sum)
	for range sum {
		best := 0
		for i := range cur {
			cur[i] += w[i]
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= sum
		rr.schedule = append(rr.schedule, int32(best))
	}
	return rr
}

func (rr *roundRobin) pick(c *Cluster, _ *PickOptions) *Host {
	n := c.rr.Add(1) - 1
	if rr.schedule == nil {
		return rr.hosts[n%uint64(len(rr.hosts))]
	}
	return rr.hosts[rr.schedule[n%uint64(len(rr.schedule))]]
}

func (rr *roundRobin) hashed() bool { return false }

// weightedRandom picks by weight: a draw over the cumulative weights.
type weightedRandom struct {
	hosts []*Host
	cum   []uint64 // nil: equal weights
}

func newRandom(hosts []*Host) *weightedRandom {
	r := &weightedRandom{hosts: hosts}
	if !equalWeights(hosts) {
		var s uint64
		for _, h := range hosts {
			s += uint64(h.Weight)
			r.cum = append(r.cum, s)
		}
	}
	return r
}

func (r *weightedRandom) one() *Host {
	if r.cum == nil {
		return r.hosts[rand.IntN(len(r.hosts))]
	}
	x := rand.Uint64N(r.cum[len(r.cum)-1])
	i := sort.Search(len(r.cum), func(i int) bool { return r.cum[i] > x })
	return r.hosts[i]
}

func (r *weightedRandom) pick(*Cluster, *PickOptions) *Host { return r.one() }
func (r *weightedRandom) hashed() bool                      { return false }

// leastRequest is Envoy's least_request. With equal weights it is the
// power of two choices: two hosts drawn at random, the one with fewer
// requests in flight wins. With unequal weights Envoy instead schedules
// by weight / (active + 1) (active_request_bias 1), so idle hosts share
// the load by weight; this draws at random in that proportion.
type leastRequest struct{ r *weightedRandom }

func newLeastRequest(hosts []*Host) *leastRequest { return &leastRequest{newRandom(hosts)} }

func (l *leastRequest) pick(*Cluster, *PickOptions) *Host {
	if l.r.cum != nil {
		return l.weighted()
	}
	a := l.r.one()
	if len(l.r.hosts) == 1 {
		return a
	}
	hs := l.r.hosts
	// A second host, distinct from the first.
	b := hs[(slices.Index(hs, a)+1+rand.IntN(len(hs)-1))%len(hs)]
	if a.Active() <= b.Active() {
		return a
	}
	return b
}

// weighted draws in two passes over the hosts, without a slice per pick:
// counts that move between the passes only shift the draw a little (the
// last host takes what is left).
func (l *leastRequest) weighted() *Host {
	hs := l.r.hosts
	eff := func(h *Host) float64 { return float64(h.Weight) / float64(max(0, h.Active())+1) }
	var total float64
	for _, h := range hs {
		total += eff(h)
	}
	x := rand.Float64() * total
	for _, h := range hs {
		e := eff(h)
		if x < e {
			return h
		}
		x -= e
	}
	return hs[len(hs)-1]
}

func (l *leastRequest) hashed() bool { return false }

// ring is a consistent-hash ring: each host at points hashed from its
// address (how many: see build). Points depend only on addresses and
// weights, so every waypoint replica builds the same ring.
type ring struct {
	hosts  []*Host
	once   sync.Once
	points []ringPoint
	any    *weightedRandom
}

type ringPoint struct {
	hash uint64
	host *Host
}

const (
	minRing       = 1024
	pointsPerHost = 256
)

// newRing defers building the ring to its first use: a ring costs 16 KiB
// and a configuration may hold thousands of clusters that see no traffic.
func newRing(hosts []*Host) *ring { return &ring{hosts: hosts, any: newRandom(hosts)} }

func (r *ring) build() {
	hosts := r.hosts
	var total uint64
	for _, h := range hosts {
		total += uint64(h.Weight)
	}
	equal := equalWeights(hosts)
	for _, h := range hosts {
		// Equal weights (the usual case): a fixed number of points per host,
		// so a host joining or leaving moves only its own keys. Otherwise
		// points by share of a ring of minRing, as Envoy sizes it (a change
		// of total weight then moves some other keys too).
		n := uint64(pointsPerHost)
		if !equal {
			n = max(1, (minRing*uint64(h.Weight)+total-1)/total)
		}
		key := []byte(h.Key + "_")
		for i := range n {
			b := strconv.AppendUint(key, i, 10)
			r.points = append(r.points, ringPoint{xxhash.Sum64(b), h})
		}
	}
	slices.SortFunc(r.points, func(a, b ringPoint) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return 0
	})
}

func (r *ring) pick(_ *Cluster, o *PickOptions) *Host {
	if !o.HasHash {
		// No hash key (no header, no policy): Envoy picks at random.
		return r.any.one()
	}
	r.once.Do(r.build)
	i := sort.Search(len(r.points), func(i int) bool { return r.points[i].hash >= o.Hash })
	if i == len(r.points) {
		i = 0
	}
	return r.points[i].host
}

func (r *ring) hashed() bool { return true }

// maglevTable is a Maglev lookup table over the hosts. A host's id is a
// hash of its address, so the table depends only on the set of addresses
// (and weights). Unequal weights (Envoy's Maglev honours them) give a
// host several ids, in proportion to its weight.
type maglevTable struct {
	hosts []*Host
	once  sync.Once
	table []uint32
	byID  map[uint32]*Host
	any   *weightedRandom
}

// maglevSize is Envoy's default table size (prime).
const maglevSize = 65537

// maglevVirtual is how many ids the heaviest host gets when weights
// differ: shares are then right to about 1/64 of its weight.
const maglevVirtual = 64

// newMaglev defers the table (256 KiB) to its first use, like newRing.
func newMaglev(hosts []*Host) *maglevTable {
	return &maglevTable{hosts: hosts, any: newRandom(hosts)}
}

func (m *maglevTable) build() {
	hosts := m.hosts
	m.byID = map[uint32]*Host{}
	ids := make([]uint32, 0, len(hosts))
	var top uint32
	for _, h := range hosts {
		top = max(top, h.Weight)
	}
	equal := equalWeights(hosts)
	for _, h := range hosts {
		n := uint64(1)
		if !equal {
			// Up to maglevVirtual ids for the heaviest host.
			n = max(1, (uint64(h.Weight)*maglevVirtual+uint64(top)/2)/uint64(top))
		}
		for i := range n {
			key := h.Key
			if i > 0 {
				key += "#" + strconv.FormatUint(i, 10)
			}
			id := uint32(xxhash.Sum64String(key))
			for id == 0 || m.byID[id] != nil {
				id++ // collisions are rare; any distinct non-zero id will do
			}
			m.byID[id] = h
			ids = append(ids, id)
		}
	}
	m.table = maglev.Table(ids, maglevSize)
}

func (m *maglevTable) pick(_ *Cluster, o *PickOptions) *Host {
	if !o.HasHash {
		return m.any.one()
	}
	m.once.Do(m.build)
	return m.byID[m.table[o.Hash%uint64(len(m.table))]]
}

func (m *maglevTable) hashed() bool { return true }

// HashKey hashes a request's hash-policy input (a header value or the
// source address).
func HashKey(s string) uint64 { return xxhash.Sum64String(s) }

func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
