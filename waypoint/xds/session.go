// Package xds is kmesh-waypoint's session with istiod: it connects as a
// waypoint node, subscribes to what Envoy would (LDS and CDS by wildcard,
// EDS for the clusters CDS named, RDS for the routes listeners name) plus
// istiod's address xDS for peer identities, and turns every change into a
// new model.Snapshot through waypoint/translate, handed to a callback (the
// engine's Apply).
//
// Each resource is checked on arrival: one that cannot be translated is
// NACKed with the reason and its last good version kept. Clusters warm as
// in Envoy: a snapshot that brings a new EDS cluster waits (up to
// WarmTimeout, counted for each name) for its endpoints, so traffic is
// never routed to a cluster that exists but has no endpoints yet. While istiod is away the last
// snapshot keeps serving.
package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/kmesh-go/kmesh/internal/xdsclient"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/translate"
)

// Config of a session.
type Config struct {
	// Address of istiod: its TLS port 15012 (with RootCertFile and
	// TokenFile), or 15010 with Plaintext.
	Address      string
	Plaintext    bool
	RootCertFile string
	TokenFile    string
	// ServerName in istiod's certificate (default: the host of Address,
	// istiod.istio-system.svc for an IP or localhost; see
	// xdsclient.DefaultServerName).
	ServerName string
	// Dialer replaces the network dial (tests, network namespaces).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	Node   Node
	// Translate options; zero means translate.IstiodOptions().
	Translate translate.Options
	// Apply receives each new snapshot, from one goroutine at a time. It
	// should swap the snapshot in and return; an error (a listener that
	// cannot bind, say) leaves the last snapshot running, and a listener
	// response that brought the change is NACKed with the error and
	// undone here, as Envoy rejects a listener it cannot bind.
	Apply func(*model.Snapshot) error
	// WarmTimeout bounds the wait for the endpoints of each new cluster
	// and the routes of each new listener, from when that name started
	// warming (default 5s). Envoy's bound is the subscription's
	// initial_fetch_timeout, which istiod sets to 0s (no bound) for EDS
	// and RDS; the waypoint keeps one so a lost answer cannot hold every
	// later change back.
	WarmTimeout time.Duration
	Logger      *slog.Logger
	// Backoff bounds of the reconnects (default 100ms .. 15s).
	MinBackoff, MaxBackoff time.Duration
}

// Stats of a session.
type Stats struct {
	xdsclient.Stats
	// Snapshots handed to Apply.
	Snapshots uint64
	// Version of the last snapshot.
	Version string
	// Latency from the arrival of the response that changed something to
	// the snapshot applied (Apply returned: in the engine, in effect for
	// the next request): the last one, p50 and p99 over the last 1024
	// snapshots.
	LastLatency, P50Latency, P99Latency time.Duration
	// Recent are the last snapshots applied, oldest first.
	Recent []Applied
	// Warming: EDS or RDS names awaited before the next snapshot.
	Warming int
	// Unsupported entries of the last snapshot (fail-closed ones too).
	Unsupported, FailClosed int
}

// Applied is one snapshot applied.
type Applied struct {
	Version string
	// At is when Apply returned; Latency is from the arrival of the
	// oldest response it carries.
	At      time.Time
	Latency time.Duration
}

// recentApplied is how many Stats.Recent keeps.
const recentApplied = 32

// Session is a waypoint's xDS session.
type Session struct {
	cfg    Config
	log    *slog.Logger
	client *xdsclient.Client

	// publishMu serialises changes and their hand-over (the xDS
	// goroutine and the warming timer), so snapshots reach Apply in
	// order; mu guards the state readers see.
	publishMu sync.Mutex
	mu        sync.Mutex
	listeners map[string]*listenerv3.Listener
	clusters  map[string]*clusterv3.Cluster
	endpoints map[string]*translate.Endpoints
	routes    map[string]*routev3.RouteConfiguration
	// listenerRoutes: the RDS names each listener's chains use.
	listenerRoutes map[string][]string
	addresses      map[string]*translate.Workload
	// answered: types that answered; listeners count once a response
	// of theirs was accepted whole. The first snapshot waits for both: a
	// NACKed dispatch listener leaves nothing to serve, and a snapshot
	// without it would start the engine (and report it ready) empty;
	// Istio's readiness for Envoy likewise waits for an LDS update that
	// succeeded. A rejected cluster costs only its own service (and some
	// that are NACKed here Envoy would take), so clusters count at once.
	answered  map[string]bool
	warming   map[string]time.Time // EDS/RDS names awaited, since
	warmTimer *time.Timer
	// pending is when the oldest change not in a snapshot arrived.
	pending   time.Time
	memo      *translate.Memo
	gen       uint64
	last      *model.Snapshot
	up        atomic.Bool
	latencies [1024]time.Duration
	nLat      int
	recent    []Applied
	stats     Stats
}

// Type URLs of the subscriptions, in Envoy's ADS order.
var subscriptions = []xdsclient.Subscription{
	{TypeURL: translate.TypeCluster, Wildcard: true},
	{TypeURL: translate.TypeEndpoint},
	{TypeURL: translate.TypeListener, Wildcard: true},
	{TypeURL: translate.TypeRoute},
	{TypeURL: translate.TypeAddress, Wildcard: true},
}

// New makes a session; Run drives it.
func New(cfg Config) (*Session, error) {
	if cfg.Apply == nil {
		return nil, errors.New("waypoint xds: Apply is required")
	}
	if err := cfg.Node.check(); err != nil {
		return nil, fmt.Errorf("waypoint xds: node: %w", err)
	}
	cfg.Node.defaults()
	if cfg.Translate == (translate.Options{}) {
		cfg.Translate = translate.IstiodOptions()
	}
	if cfg.WarmTimeout == 0 {
		cfg.WarmTimeout = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Session{cfg: cfg, log: log.With("component", "waypoint-xds"),
		listeners: map[string]*listenerv3.Listener{}, clusters: map[string]*clusterv3.Cluster{},
		endpoints: map[string]*translate.Endpoints{}, routes: map[string]*routev3.RouteConfiguration{}, listenerRoutes: map[string][]string{},
		addresses: map[string]*translate.Workload{}, answered: map[string]bool{}, warming: map[string]time.Time{},
		memo: translate.NewMemo()}
	c, err := xdsclient.New(xdsclient.Config{
		Address: cfg.Address, Plaintext: cfg.Plaintext, RootCertFile: cfg.RootCertFile, TokenFile: cfg.TokenFile,
		ServerName: cfg.ServerName, NodeID: cfg.Node.ID(), Metadata: cfg.Node.Metadata(),
		Subscriptions: subscriptions, Dialer: cfg.Dialer, Logger: log,
		MinBackoff: cfg.MinBackoff, MaxBackoff: cfg.MaxBackoff,
	}, s)
	if err != nil {
		return nil, err
	}
	s.client = c
	return s, nil
}

// Run keeps the session up until ctx ends.
func (s *Session) Run(ctx context.Context) {
	defer func() {
		s.mu.Lock()
		if s.warmTimer != nil {
			s.warmTimer.Stop()
		}
		s.mu.Unlock()
	}()
	s.client.Run(ctx)
}

// Snapshot is the last snapshot handed over (nil before the first).
func (s *Session) Snapshot() *model.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Ready reports whether a first snapshot was handed over.
func (s *Session) Ready() bool { return s.Snapshot() != nil }

// Stats returns the session's counters.
func (s *Session) Stats() Stats {
	s.mu.Lock()
	st := s.stats
	n := min(s.nLat, len(s.latencies))
	lat := slices.Clone(s.latencies[:n])
	st.Warming = len(s.warming)
	st.Recent = slices.Clone(s.recent)
	s.mu.Unlock()
	st.Stats = s.client.Stats()
	if n > 0 {
		slices.Sort(lat)
		st.P50Latency = lat[n/2]
		st.P99Latency = lat[min(n-1, n*99/100)]
	}
	return st
}

// Connected implements xdsclient.Handler.
func (s *Session) Connected(up bool) {
	if s.up.Swap(up) == up {
		return
	}
	if !up {
		s.log.Warn("istiod away; serving the last snapshot", "version", s.version())
	}
}

func (s *Session) version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil {
		return ""
	}
	return s.last.Version
}

// Synced implements xdsclient.Handler.
func (s *Session) Synced() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log.Info("istiod sync complete", "listeners", len(s.listeners), "clusters", len(s.clusters),
		"endpoints", len(s.endpoints), "addresses", len(s.addresses))
}

// Apply implements xdsclient.Handler: decode and check each resource,
// keep the good ones, follow CDS with the EDS subscription and LDS with
// the RDS one, and publish a snapshot unless something is warming.
func (s *Session) Apply(typeURL string, ups []xdsclient.Resource, removes []string) (map[string]error, error) {
	arrival := time.Now()
	rejected := map[string]error{}
	s.publishMu.Lock()
	defer s.publishMu.Unlock()
	s.mu.Lock()
	undo := s.saveLocked(typeURL)
	wasAnswered := s.answered[typeURL]
	var changed bool
	switch typeURL {
	case translate.TypeListener:
		// The check translates through the memo, so the snapshot after it
		// finds the new chains done, and says which routes RDS must bring.
		routesOf := map[string][]string{}
		changed = applyTyped(s.listeners, ups, removes, rejected, func(l *listenerv3.Listener) error {
			names, err := s.memo.CheckListener(l, s.cfg.Translate)
			if err == nil {
				routesOf[l.GetName()] = names
			}
			return err
		})
		maps.Copy(s.listenerRoutes, routesOf)
		for _, n := range removes {
			delete(s.listenerRoutes, n)
		}
		follow(s, translate.TypeRoute, s.listenerRouteNamesLocked(), s.routes, arrival)
	case translate.TypeCluster:
		changed = applyTyped(s.clusters, ups, removes, rejected, func(c *clusterv3.Cluster) error {
			return translate.CheckCluster(c, s.cfg.Translate)
		})
		follow(s, translate.TypeEndpoint, translate.EDSClusters(slices.Collect(maps.Values(s.clusters))), s.endpoints, arrival)
	case translate.TypeEndpoint:
		changed = applyCompiled(s.endpoints, ups, removes, rejected, translate.CompileEndpoints)
		s.settle(translate.TypeEndpoint, ups, removes)
	case translate.TypeRoute:
		// Envoy ignores the removal of a route configuration a listener
		// still names, and keeps serving it: without it the chain would
		// answer 503 to everything until a new version came.
		// (On a copy: the caller reads the response's removals again.)
		removes = slices.DeleteFunc(slices.Clone(removes), s.routeInUseLocked)
		changed = applyTyped(s.routes, ups, removes, rejected, translate.CheckRoute)
		s.settle(translate.TypeRoute, ups, removes)
	case translate.TypeAddress:
		changed = applyCompiled(s.addresses, ups, removes, rejected, translate.CompileAddress)
	default:
		s.mu.Unlock()
		return nil, fmt.Errorf("unexpected type %s", typeURL)
	}
	first := !s.answered[typeURL] && (typeURL != translate.TypeListener || len(rejected) == 0)
	if first {
		s.answered[typeURL] = true
	}
	if (changed || first) && s.pending.IsZero() {
		s.pending = arrival
	}
	snap, since := s.buildLocked()
	s.mu.Unlock()
	if snap == nil {
		return rejected, nil
	}
	if err := s.cfg.Apply(snap); err != nil {
		// The engine kept the last snapshot running. A listener response
		// (what brings binds, the usual refusal) is refused whole and
		// undone, as Envoy rejects a listener it cannot bind; any other
		// is kept, since the refusal may come from a change held back
		// earlier (warming), and undoing this one would not clear it.
		if typeURL != translate.TypeListener {
			s.log.Error("snapshot refused by the engine; the last one keeps running", "type", typeURL, "version", snap.Version, "err", err)
			return rejected, nil
		}
		s.mu.Lock()
		undo()
		s.answered[typeURL] = wasAnswered
		s.pending = since
		s.mu.Unlock()
		s.log.Warn("snapshot refused by the engine; listener response NACKed and undone", "version", snap.Version, "err", err)
		for _, r := range ups {
			rejected[r.Name] = fmt.Errorf("%s: not applied: %v", r.Name, err)
		}
		for _, n := range removes {
			// Undone too: the client keeps their versions.
			rejected[n] = fmt.Errorf("%s: removal not applied: %v", n, err)
		}
		return rejected, nil
	}
	s.committed(snap, since)
	return rejected, nil
}

// saveLocked keeps what a listener response can change, and returns what
// puts it back (the maps hold pointers to decoded resources that are
// never modified, so shallow copies do); other types are not undone.
// Besides the listeners, a listener response changes the RDS side
// (follow): route configurations no listener names any more are dropped
// and unsubscribed, new names warm. The undo puts the routes held back
// and follows the restored listeners again, which subscribes what they
// name and stops the warming of what only the refused response named:
// istiod sends no route the session unsubscribed, so the restored chains
// would otherwise lose their routes for good.
func (s *Session) saveLocked(typeURL string) func() {
	if typeURL != translate.TypeListener {
		return func() {}
	}
	l, r, routes := maps.Clone(s.listeners), maps.Clone(s.listenerRoutes), maps.Clone(s.routes)
	return func() {
		s.listeners, s.listenerRoutes, s.routes = l, r, routes
		follow(s, translate.TypeRoute, s.listenerRouteNamesLocked(), s.routes, time.Now())
	}
}

// listenerRouteNamesLocked lists the RDS names the listeners use, sorted.
func (s *Session) listenerRouteNamesLocked() []string {
	var routes []string
	for _, names := range s.listenerRoutes {
		routes = append(routes, names...)
	}
	slices.Sort(routes)
	return slices.Compact(routes)
}

// applyTyped decodes upserts into m, checking each; a bad one keeps its
// previous version and is reported. It says whether anything changed: a
// resumed stream resends what we hold, which needs no new snapshot.
func applyTyped[T proto.Message](m map[string]T, ups []xdsclient.Resource, removes []string, rejected map[string]error, check func(T) error) bool {
	changed := false
	for _, r := range ups {
		var v T
		v = v.ProtoReflect().Type().New().Interface().(T)
		if err := r.Body.UnmarshalTo(v); err != nil {
			rejected[r.Name] = fmt.Errorf("%s: %v", r.Name, err)
			continue
		}
		if old, ok := m[r.Name]; ok && proto.Equal(old, v) {
			continue
		}
		if err := check(v); err != nil {
			rejected[r.Name] = fmt.Errorf("%s: %v", r.Name, err)
			continue
		}
		m[r.Name] = v
		changed = true
	}
	for _, n := range removes {
		if _, ok := m[n]; ok {
			delete(m, n)
			changed = true
		}
	}
	return changed
}

// applyCompiled is applyTyped for the types kept compiled rather than as
// protos (endpoints, addresses): a fraction of the protos' memory.
func applyCompiled[P proto.Message, C interface{ Equal(C) bool }](m map[string]C, ups []xdsclient.Resource, removes []string,
	rejected map[string]error, compile func(P) (C, error)) bool {
	changed := false
	for _, r := range ups {
		var p P
		p = p.ProtoReflect().Type().New().Interface().(P)
		if err := r.Body.UnmarshalTo(p); err != nil {
			rejected[r.Name] = fmt.Errorf("%s: %v", r.Name, err)
			continue
		}
		c, err := compile(p)
		if err != nil {
			rejected[r.Name] = fmt.Errorf("%s: %v", r.Name, err)
			continue
		}
		if old, ok := m[r.Name]; ok && old.Equal(c) {
			continue
		}
		m[r.Name] = c
		changed = true
	}
	for _, n := range removes {
		if _, ok := m[n]; ok {
			delete(m, n)
			changed = true
		}
	}
	return changed
}

// follow sets a named subscription to the names the parent type
// references: names new to the subscription and not held yet warm, names
// no longer referenced are dropped. A name subscribed already does not
// warm again: it warmed when it came, and if its answer never came (the
// warming timed out) or was a removal, a parent resent unchanged (istiod
// resends every cluster on each push) is no reason to hold the next
// snapshot; Envoy warms only what was added or changed.
func follow[T any](s *Session, typeURL string, names []string, held map[string]T, now time.Time) {
	subscribed := map[string]bool{}
	for _, n := range s.client.Names(typeURL) {
		subscribed[n] = true
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
		if _, ok := held[n]; ok || subscribed[n] {
			continue
		}
		if _, ok := s.warming[warmKey(typeURL, n)]; !ok {
			s.warming[warmKey(typeURL, n)] = now
		}
	}
	for n := range held {
		if !want[n] {
			delete(held, n)
		}
	}
	for k := range s.warming {
		if kind, name := cutKind(k); kind == typeURL && !want[name] {
			delete(s.warming, k)
		}
	}
	if err := s.client.SetNames(typeURL, names); err != nil {
		s.log.Error("subscription change", "type", typeURL, "err", err)
	}
}

func warmKey(typeURL, name string) string { return typeURL + "\x00" + name }

func cutKind(k string) (string, string) {
	kind, name, _ := strings.Cut(k, "\x00")
	return kind, name
}

// settle ends the warming of the type's names that answered (an answer,
// even a removal, is what Envoy waits for).
func (s *Session) settle(typeURL string, ups []xdsclient.Resource, removes []string) {
	for _, r := range ups {
		delete(s.warming, warmKey(typeURL, r.Name))
	}
	for _, n := range removes {
		delete(s.warming, warmKey(typeURL, n))
	}
}

// buildLocked builds the snapshot to hand over, if there is something
// new, the first listeners and clusters are in, and nothing warms (or a
// warming timed out), with the arrival of the oldest change it carries;
// nil otherwise.
//
// Each name warms for WarmTimeout from when it started, as each of
// Envoy's clusters has its own init timer (initial_fetch_timeout, per
// subscription: source/common/upstream/cluster_manager_impl.cc and
// cds_api_helper.cc; a cluster becomes active when it, not its
// neighbours, is initialized). When names time out they are given up and
// the snapshot goes out, but names still within their own time keep
// warming: a new cluster among them is left out of it (Envoy does not
// route to a cluster that is still warming) and so is a listener not
// served yet that names a route configuration still warming (Envoy's
// listener warms until its RDS answers).
func (s *Session) buildLocked() (*model.Snapshot, time.Time) {
	now := time.Now()
	// partial: names timed out just now, so this snapshot goes out though
	// others still warm (without them). Only this build: one that cannot
	// go out yet (the first LDS or CDS answer missing) must not let a
	// later one skip the warming of names that came since.
	expired := s.expireLocked(now)
	partial := !expired.IsZero()
	if partial && s.pending.IsZero() {
		// What was held back for the names that timed out goes out now.
		s.pending = expired
	}
	if s.pending.IsZero() {
		s.armWarmTimerLocked(now)
		return nil, time.Time{}
	}
	if !s.answered[translate.TypeListener] || !s.answered[translate.TypeCluster] {
		return nil, time.Time{}
	}
	if len(s.warming) > 0 && !partial {
		s.armWarmTimerLocked(now)
		return nil, time.Time{}
	}
	in := translate.Input{
		Listeners: sortedValues(s.listeners),
		Clusters:  sortedValues(s.clusters),
		EDS:       s.endpoints,
		Routes:    s.routes,
		Workloads: sortedValues(s.addresses),
		Memo:      s.memo,
	}
	if len(s.warming) > 0 {
		in.Clusters, in.Listeners = s.withoutWarmingLocked(in.Clusters, in.Listeners)
	}
	s.armWarmTimerLocked(now)
	s.gen++
	in.Version = fmt.Sprintf("xds-%d", s.gen)
	snap, err := translate.Translate(in, s.cfg.Translate)
	if err != nil {
		// Each resource passed its check alone; a failure here is a bug.
		s.log.Error("snapshot not built; keeping the last one", "err", err)
		s.pending = time.Time{}
		return nil, time.Time{}
	}
	since := s.pending
	s.pending = time.Time{}
	return snap, since
}

// expireLocked gives up the names that warmed for WarmTimeout and
// returns when the oldest of them started warming (zero when none).
func (s *Session) expireLocked(now time.Time) time.Time {
	var oldest time.Time
	var names []string
	for k, t := range s.warming {
		if now.Sub(t) < s.cfg.WarmTimeout {
			continue
		}
		names = append(names, k)
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	if len(names) == 0 {
		return time.Time{}
	}
	for _, k := range names {
		delete(s.warming, k)
	}
	slices.Sort(names)
	_, first := cutKind(names[0])
	s.log.Warn("warming timed out; publishing without them", "names", len(names), "first", first, "still_warming", len(s.warming))
	return oldest
}

// armWarmTimerLocked sets the timer for the next name to time out, or
// stops it when nothing warms.
func (s *Session) armWarmTimerLocked(now time.Time) {
	if s.warmTimer != nil {
		s.warmTimer.Stop()
		s.warmTimer = nil
	}
	if len(s.warming) == 0 {
		return
	}
	var oldest time.Time
	for _, t := range s.warming {
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	s.warmTimer = time.AfterFunc(max(s.cfg.WarmTimeout-now.Sub(oldest), 0), s.warmTimedOut)
}

// withoutWarmingLocked leaves out of a snapshot that goes out while names
// still warm the clusters whose endpoints are awaited and the listeners
// not served yet whose route configurations are. (A listener served
// already keeps its place: this session does not keep its previous
// version, and leaving it out would stop all its traffic; its chains that
// name a route configuration still warming answer 503 until it comes.)
func (s *Session) withoutWarmingLocked(cs []*clusterv3.Cluster, ls []*listenerv3.Listener) ([]*clusterv3.Cluster, []*listenerv3.Listener) {
	cs = slices.DeleteFunc(slices.Clone(cs), func(c *clusterv3.Cluster) bool {
		for _, n := range translate.EDSClusters([]*clusterv3.Cluster{c}) {
			if _, ok := s.warming[warmKey(translate.TypeEndpoint, n)]; ok {
				return true
			}
		}
		return false
	})
	served := map[string]bool{}
	if s.last != nil {
		for _, l := range s.last.Listeners {
			served[l.Name] = true
		}
	}
	ls = slices.DeleteFunc(slices.Clone(ls), func(l *listenerv3.Listener) bool {
		if served[l.GetName()] {
			return false
		}
		for _, n := range s.listenerRoutes[l.GetName()] {
			if _, ok := s.warming[warmKey(translate.TypeRoute, n)]; ok {
				return true
			}
		}
		return false
	})
	return cs, ls
}

// committed records a snapshot the engine took.
func (s *Session) committed(snap *model.Snapshot, since time.Time) {
	s.mu.Lock()
	s.last = snap
	s.stats.Snapshots++
	s.stats.Version = snap.Version
	s.stats.Unsupported, s.stats.FailClosed = len(snap.Unsupported), 0
	for _, u := range snap.Unsupported {
		if u.FailClosed {
			s.stats.FailClosed++
		}
	}
	s.mu.Unlock()
	s.log.Info("snapshot", "version", snap.Version, "built", time.Since(since).Round(10*time.Microsecond),
		"listeners", len(snap.Listeners), "clusters", len(snap.Clusters), "unsupported", len(snap.Unsupported))
	s.applied(snap.Version, since)
}

func (s *Session) warmTimedOut() {
	s.publishMu.Lock()
	defer s.publishMu.Unlock()
	s.mu.Lock()
	snap, since := s.buildLocked()
	s.mu.Unlock()
	if snap == nil {
		return
	}
	if err := s.cfg.Apply(snap); err != nil {
		// No response to refuse: the last snapshot keeps running.
		s.log.Warn("snapshot refused by the engine", "version", snap.Version, "err", err)
		return
	}
	s.committed(snap, since)
}

// applied records a snapshot Apply took, and how long after the arrival
// of what it carries.
func (s *Session) applied(version string, since time.Time) {
	now := time.Now()
	lat := now.Sub(since)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latencies[s.nLat%len(s.latencies)] = lat
	s.nLat++
	s.stats.LastLatency = lat
	if len(s.recent) == recentApplied {
		s.recent = slices.Delete(s.recent, 0, 1)
	}
	s.recent = append(s.recent, Applied{Version: version, At: now, Latency: lat})
}

func sortedValues[T any](m map[string]T) []T {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]T, 0, len(keys))
	for _, k := range keys {
		out = append(out, m[k])
	}
	return out
}

// routeInUseLocked tells whether a listener's chain names the route
// configuration.
func (s *Session) routeInUseLocked(name string) bool {
	for _, names := range s.listenerRoutes {
		if slices.Contains(names, name) {
			return true
		}
	}
	return false
}
