// Package translate turns Envoy's configuration (go-control-plane types,
// from istiod's xDS for a waypoint or from a bootstrap's static_resources)
// into a waypoint/model.Snapshot. It is pure: no I/O, no clocks, the same
// input gives the same Snapshot.
//
// What istiod's waypoint config means, and how it lands here:
//   - the internal listener "main_internal" holds the real work: its
//     filter_chain_matcher (destination IP -> port -> sniffed protocol ->
//     chain) and one chain per service port (inbound-vip|port|http|host,
//     ...|tcp|...) plus direct-http/direct-tcp for pod addresses. It
//     becomes the one listener the engine opens, at Options.ListenAddress
//     with the PROXY protocol (the kernel's redirect carries the original
//     destination there);
//   - connect_terminate (HBONE on 15008), connect_originate and the
//     main_internal/encap/connect_originate clusters are Envoy plumbing for
//     HBONE tunnelling: read for meaning, not emulated. "encap" (where the
//     direct chains send) becomes an original_dst cluster: connect to the
//     pod the client addressed;
//   - inbound-vip clusters' EDS endpoints are internal addresses whose
//     metadata filter_metadata["envoy.filters.listener.original_dst"].local
//     holds the pod's ip:port, which is what the engine dials.
//
// Anything that could deny traffic and is not enforced yet (RBAC, rate
// limits, ext_authz, JWT, Wasm, Lua, any unknown filter) turns its chain
// into a model.Deny; harmless filters istiod adds (metadata exchange,
// stats, ...) are skipped. Both are listed in Snapshot.Unsupported.
package translate

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Type URLs of the resources.
const (
	TypeListener = "type.googleapis.com/envoy.config.listener.v3.Listener"
	TypeCluster  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	TypeEndpoint = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	TypeRoute    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	TypeAddress  = "type.googleapis.com/istio.workload.Address"
)

// DefaultListenAddress is where the kernel sends a waypoint's traffic.
var DefaultListenAddress = netip.MustParseAddrPort("0.0.0.0:15019")

// Options say how the configuration maps onto the waypoint.
type Options struct {
	// Dispatch names the internal listener whose chains serve what the
	// kernel redirects (istiod's "main_internal"). When set, that listener
	// is the one the engine opens, at ListenAddress with the PROXY
	// protocol, and every other listener is plumbing. Empty: every
	// listener with a socket address is served as configured (static
	// files).
	Dispatch string
	// ListenAddress for the Dispatch listener (default 0.0.0.0:15019).
	ListenAddress netip.AddrPort
	// ListenerName of the Dispatch listener in the snapshot (default
	// "waypoint").
	ListenerName string
	// HeaderTimeout bounds the PROXY header and sniffing wait of the
	// Dispatch listener (0: the listener's listener_filters_timeout, else
	// the engine's default).
	HeaderTimeout time.Duration
}

// IstiodOptions are the options for istiod's waypoint configuration.
func IstiodOptions() Options {
	return Options{Dispatch: "main_internal", ListenAddress: DefaultListenAddress, ListenerName: "waypoint"}
}

// Input is everything a Snapshot is made of.
type Input struct {
	// Version names the snapshot (xDS versions, or a file's hash).
	Version   string
	Listeners []*listenerv3.Listener
	Clusters  []*clusterv3.Cluster
	// Endpoints of EDS clusters, by cluster name.
	Endpoints map[string]*endpointv3.ClusterLoadAssignment
	// EDS holds endpoints already compiled (CompileEndpoints), by cluster
	// name; it is looked at before Endpoints. The xDS layer keeps these
	// rather than the protos, which take five times the memory.
	EDS map[string]*Endpoints
	// Routes for HCMs that use RDS, by name.
	Routes map[string]*routev3.RouteConfiguration
	// Addresses from istiod's address xDS (workloads become Peers), as
	// protos or compiled (CompileAddress), or both.
	Addresses []*workloadapi.Address
	Workloads []*Workload
	// Memo, when set, reuses the translations of unchanged chains,
	// matchers and clusters from the previous Translate with it.
	Memo *Memo
}

// Translate builds a Snapshot. Resources that cannot be translated at all
// are an error (the xDS layer checks each resource on arrival with the
// Check functions, so a snapshot is built only from good ones).
func Translate(in Input, opts Options) (*model.Snapshot, error) {
	if opts.ListenAddress == (netip.AddrPort{}) {
		opts.ListenAddress = DefaultListenAddress
	}
	if opts.ListenerName == "" {
		opts.ListenerName = "waypoint"
	}
	t := &translator{opts: opts, in: in}
	if in.Memo != nil {
		in.Memo.begin()
	}
	snap := &model.Snapshot{Version: in.Version, Clusters: map[string]*model.Cluster{}}
	listeners := slices.Clone(in.Listeners)
	if opts.Dispatch != "" {
		// istiod's order is not meaningful; keep the snapshot stable.
		slices.SortFunc(listeners, func(a, b *listenerv3.Listener) int { return cmp.Compare(a.GetName(), b.GetName()) })
	}
	found := opts.Dispatch == ""
	for _, l := range listeners {
		ml, err := t.listener(l)
		if err != nil {
			return nil, err
		}
		if ml != nil {
			if opts.Dispatch != "" && l.GetName() == opts.Dispatch {
				found = true
			}
			snap.Listeners = append(snap.Listeners, ml)
		}
	}
	if !found && len(in.Listeners) > 0 {
		t.unsupported(model.Unsupported{Where: "listeners", Name: opts.Dispatch,
			Reason: "istiod sent no " + opts.Dispatch + " listener: the waypoint serves nothing (is this node a waypoint whose Pod is selected by its Service?)"})
	}
	for _, c := range in.Clusters {
		mc, err := t.memoCluster(c)
		if err != nil {
			return nil, err
		}
		if mc != nil {
			snap.Clusters[mc.Name] = mc
		}
	}
	snap.Peers = peers(in.Addresses, in.Workloads)
	snap.Unsupported = collapse(t.unsup)
	if in.Memo != nil {
		in.Memo.end()
	}
	return snap, nil
}

// translator carries the options and the Unsupported list of one run.
type translator struct {
	opts  Options
	in    Input
	unsup []model.Unsupported
	// usedRDS: the chain being translated took its routes from RDS.
	usedRDS bool
}

func (t *translator) unsupported(u model.Unsupported) {
	t.unsup = append(t.unsup, u)
}

// CheckListener translates one listener alone: Memo.CheckListener (what
// the xDS layer NACKs by) without a memo to keep.
func CheckListener(l *listenerv3.Listener, opts Options) error {
	_, err := NewMemo().CheckListener(l, opts)
	return err
}

// CheckCluster translates one cluster alone.
func CheckCluster(c *clusterv3.Cluster, opts Options) error {
	if err := c.Validate(); err != nil {
		return err
	}
	t := &translator{opts: opts, in: Input{Endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}}
	_, err := t.cluster(c)
	return err
}

// CheckEndpoints translates one ClusterLoadAssignment alone.
func CheckEndpoints(cla *endpointv3.ClusterLoadAssignment) error {
	_, err := CompileEndpoints(cla)
	return err
}

// Endpoints is a compiled ClusterLoadAssignment: its endpoints by
// priority and its overprovisioning factor (percent, 0 for the default).
// Immutable.
type Endpoints struct {
	byPriority       [][]model.Endpoint
	overprovisioning int
}

// CompileEndpoints checks and compiles a ClusterLoadAssignment.
func CompileEndpoints(cla *endpointv3.ClusterLoadAssignment) (*Endpoints, error) {
	if err := cla.Validate(); err != nil {
		return nil, err
	}
	return endpoints(cla)
}

// Equal reports whether two compiled assignments hold the same endpoints.
func (e *Endpoints) Equal(o *Endpoints) bool {
	if e == nil || o == nil {
		return e == o
	}
	return e.overprovisioning == o.overprovisioning &&
		slices.EqualFunc(e.byPriority, o.byPriority, func(a, b []model.Endpoint) bool { return slices.Equal(a, b) })
}

// edsEndpoints finds a cluster's EDS endpoints: compiled ones first, else
// the proto compiled now. key identifies them for the memo.
func (t *translator) edsEndpoints(name string) (eps *Endpoints, key any, err error) {
	if e := t.in.EDS[name]; e != nil {
		return e, e, nil
	}
	if cla := t.in.Endpoints[name]; cla != nil {
		eps, err := endpoints(cla)
		return eps, cla, err
	}
	return nil, nil, nil
}

// CheckRoute translates one RouteConfiguration alone.
func CheckRoute(rc *routev3.RouteConfiguration) error {
	if err := rc.Validate(); err != nil {
		return err
	}
	t := &translator{}
	_, err := t.routeTable(rc, "route "+rc.GetName())
	return err
}

// ReferencedRoutes lists the RDS route names the listeners use, for the
// xDS layer's RDS subscription.
func ReferencedRoutes(ls []*listenerv3.Listener) []string {
	set := map[string]bool{}
	for _, l := range ls {
		for _, fc := range append(slices.Clone(l.GetFilterChains()), l.GetDefaultFilterChain()) {
			for _, f := range fc.GetFilters() {
				if f.GetTypedConfig().GetTypeUrl() != typeHCM {
					continue
				}
				if h, err := unmarshalHCM(f); err == nil && h.GetRds() != nil {
					set[h.GetRds().GetRouteConfigName()] = true
				}
			}
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// EDSClusters lists the clusters that take their endpoints from EDS, by
// the name EDS knows them by, for the xDS layer's EDS subscription.
func EDSClusters(cs []*clusterv3.Cluster) []string {
	set := map[string]bool{}
	for _, c := range cs {
		if c.GetType() == clusterv3.Cluster_EDS {
			set[edsName(c)] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// edsName is the name a cluster's endpoints are published under.
func edsName(c *clusterv3.Cluster) string {
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.GetName()
}

func errorf(where, format string, args ...any) error {
	return fmt.Errorf("%s: %s", where, fmt.Sprintf(format, args...))
}

func unmarshalHCM(f *listenerv3.Filter) (*hcmv3.HttpConnectionManager, error) {
	var h hcmv3.HttpConnectionManager
	if err := f.GetTypedConfig().UnmarshalTo(&h); err != nil {
		return nil, err
	}
	return &h, nil
}

// collapse merges Unsupported entries that differ only in where they
// were met: istiod puts the same filters on every chain, and a thousand
// services would otherwise list each a thousand times.
func collapse(us []model.Unsupported) []model.Unsupported {
	type key struct {
		name, typeURL, reason string
		failClosed            bool
	}
	idx := map[key]int{}
	var out []model.Unsupported
	for _, u := range us {
		k := key{u.Name, u.TypeURL, u.Reason, u.FailClosed}
		if i, ok := idx[k]; ok {
			out[i].Count += max(u.Count, 1)
			continue
		}
		idx[k] = len(out)
		u.Count = max(u.Count, 1)
		out = append(out, u)
	}
	for i := range out {
		if out[i].Count > 1 {
			out[i].Where += fmt.Sprintf(" (and %d more)", out[i].Count-1)
		}
	}
	return out
}
