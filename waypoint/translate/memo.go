package translate

import (
	"hash/maphash"
	"maps"
	"slices"

	xdsmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Memo carries translations from one Translate to the next, so a push
// that changes one service re-translates that service's chain and
// cluster, not the thousand others: istiod resends the whole dispatch
// listener on any change, and decoding its chains' configs is most of a
// translation. Chains and matchers are keyed by a hash of their encoding,
// clusters by the identity of their proto and endpoints (the xDS layer
// replaces a resource's proto when it changes). Results are the same with
// or without a Memo; one Memo serves one Translate at a time.
type Memo struct {
	seed     maphash.Seed
	chains   map[memoKey]memoChain
	matchers map[memoKey]*matcherSelector
	clusters map[clusterKey]memoCluster
	// used marks what the current Translate used; the rest is dropped
	// after it.
	usedChains   map[memoKey]bool
	usedMatchers map[memoKey]bool
	usedClusters map[clusterKey]bool
}

// NewMemo makes an empty memo.
func NewMemo() *Memo {
	return &Memo{seed: maphash.MakeSeed(), chains: map[memoKey]memoChain{}, matchers: map[memoKey]*matcherSelector{},
		clusters: map[clusterKey]memoCluster{}}
}

type memoKey struct {
	where string // listener and chain name
	hash  uint64
	size  int
	names uint64 // matchers: the listener's chain names
}

type memoChain struct {
	chain *model.FilterChain
	unsup []model.Unsupported
	// routes is set when the chain used RDS: its result depends on them.
	rds bool
}

type clusterKey struct {
	c *clusterv3.Cluster
	// eds is the *Endpoints or *ClusterLoadAssignment the cluster's
	// endpoints came from.
	eds any
}

type memoCluster struct {
	cluster *model.Cluster
	unsup   []model.Unsupported
}

var deterministic = proto.MarshalOptions{Deterministic: true}

func (m *Memo) key(where string, msg proto.Message) (memoKey, bool) {
	b, err := deterministic.Marshal(msg)
	if err != nil {
		return memoKey{}, false
	}
	return memoKey{where: where, hash: maphash.Bytes(m.seed, b), size: len(b)}, true
}

func (m *Memo) begin() {
	m.usedChains = map[memoKey]bool{}
	m.usedMatchers = map[memoKey]bool{}
	m.usedClusters = map[clusterKey]bool{}
}

// use and useMatcher mark entries the running Translate needs; outside
// one (a check) nothing is marked, and what a check added survives until
// the next Translate's end.
func (m *Memo) use(k memoKey) {
	if m.usedChains != nil {
		m.usedChains[k] = true
	}
}

func (m *Memo) useMatcher(k memoKey) {
	if m.usedMatchers != nil {
		m.usedMatchers[k] = true
	}
}

// CheckListener is the package's CheckListener with the memo: chains and
// matchers unchanged since the last translation are not translated again,
// and the next Translate finds the new ones here. It also returns the RDS
// route names the listener's chains use.
func (m *Memo) CheckListener(l *listenerv3.Listener, opts Options) ([]string, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	t := &translator{opts: opts, in: Input{Memo: m, Routes: map[string]*routev3.RouteConfiguration{}}}
	ml, err := t.listener(l)
	if err != nil || ml == nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, c := range ml.Chains {
		if c.HTTP != nil && c.HTTP.RDSName != "" {
			set[c.HTTP.RDSName] = true
		}
	}
	if c := ml.DefaultChain; c != nil && c.HTTP != nil && c.HTTP.RDSName != "" {
		set[c.HTTP.RDSName] = true
	}
	return slices.Sorted(maps.Keys(set)), nil
}

// end drops what the last Translate did not use.
func (m *Memo) end() {
	for k := range m.chains {
		if !m.usedChains[k] {
			delete(m.chains, k)
		}
	}
	for k := range m.matchers {
		if !m.usedMatchers[k] {
			delete(m.matchers, k)
		}
	}
	for k := range m.clusters {
		if !m.usedClusters[k] {
			delete(m.clusters, k)
		}
	}
	m.usedChains, m.usedMatchers, m.usedClusters = nil, nil, nil
}

// memoChain returns the memoized translation of a chain, translating it on a
// miss.
func (t *translator) memoChain(fc *listenerv3.FilterChain, name, lwhere string, listenerDeny *model.Deny) (*model.FilterChain, error) {
	m := t.in.Memo
	if m == nil || listenerDeny != nil {
		return t.chain(fc, name, lwhere, listenerDeny)
	}
	k, ok := m.key(lwhere+"\x00"+name, fc)
	if !ok {
		return t.chain(fc, name, lwhere, listenerDeny)
	}
	if mc, hit := m.chains[k]; hit && !mc.rds {
		m.use(k)
		t.unsup = append(t.unsup, mc.unsup...)
		return mc.chain, nil
	}
	before := len(t.unsup)
	t.usedRDS = false
	c, err := t.chain(fc, name, lwhere, listenerDeny)
	if err != nil {
		return nil, err
	}
	m.chains[k] = memoChain{chain: c, unsup: append([]model.Unsupported(nil), t.unsup[before:]...), rds: t.usedRDS}
	m.use(k)
	return c, nil
}

// memoMatcher returns the memoized compilation of a listener's matcher;
// the chain names are part of the key, as compiling checks them.
func (t *translator) memoMatcher(mt *xdsmatcher.Matcher, chains map[string]bool, where string) (*matcherSelector, error) {
	m := t.in.Memo
	if m == nil {
		return compileMatcher(mt, chains)
	}
	k, ok := m.key(where, mt)
	if !ok {
		return compileMatcher(mt, chains)
	}
	var h maphash.Hash
	h.SetSeed(m.seed)
	for _, n := range slices.Sorted(maps.Keys(chains)) {
		h.WriteString(n)
		h.WriteByte(0)
	}
	k.names = h.Sum64()
	if sel, hit := m.matchers[k]; hit {
		m.useMatcher(k)
		return sel, nil
	}
	sel, err := compileMatcher(mt, chains)
	if err != nil {
		return nil, err
	}
	m.matchers[k] = sel
	m.useMatcher(k)
	return sel, nil
}

// memoCluster returns the memoized translation of a cluster with its
// current endpoints.
func (t *translator) memoCluster(c *clusterv3.Cluster) (*model.Cluster, error) {
	m := t.in.Memo
	if m == nil {
		return t.cluster(c)
	}
	k := clusterKey{c: c}
	if e := t.in.EDS[edsName(c)]; e != nil {
		k.eds = e
	} else if cla := t.in.Endpoints[edsName(c)]; cla != nil {
		k.eds = cla
	}
	if mc, hit := m.clusters[k]; hit {
		m.usedClusters[k] = true
		t.unsup = append(t.unsup, mc.unsup...)
		return mc.cluster, nil
	}
	before := len(t.unsup)
	mc, err := t.cluster(c)
	if err != nil {
		return nil, err
	}
	m.clusters[k] = memoCluster{cluster: mc, unsup: append([]model.Unsupported(nil), t.unsup[before:]...)}
	m.usedClusters[k] = true
	return mc, nil
}
