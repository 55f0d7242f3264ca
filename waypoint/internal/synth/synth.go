// Package synth builds synthetic waypoint snapshots shaped like what
// istiod sends a waypoint: per service an HTTP chain chosen by the
// service's VIP:port, a route table with the service's domains and a
// cluster of a few endpoints, and the workloads behind them as peers. For
// the benchmark and the memory check of a big configuration.
package synth

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Options shape the snapshot.
type Options struct {
	Services  int
	Endpoints int // per service (default 3)
	// Listen is the waypoint's listener address.
	Listen        netip.AddrPort
	ProxyProtocol bool
	// AllowWithoutProxyProtocol: connections without a header go to the
	// first service's chain (the benchmark's client sends none).
	AllowWithoutProxyProtocol bool
	// Backend, when valid, replaces the first service's endpoints: the
	// one the benchmark's traffic reaches.
	Backend netip.AddrPort
}

// byDestination selects the chain of the service at the destination.
type byDestination struct {
	chains map[netip.AddrPort]string
	def    string
}

func (s *byDestination) Select(ci model.ConnInfo) string {
	if name, ok := s.chains[ci.Destination]; ok {
		return name
	}
	return s.def
}

func (s *byDestination) NeedsProtocol(netip.AddrPort) bool { return false }

// VIP is service i's address.
func VIP(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), 80)
}

// Host is service i's hostname.
func Host(i int) string { return fmt.Sprintf("svc-%d.bench.svc.cluster.local", i) }

// Snapshot builds the configuration.
func Snapshot(o Options) *model.Snapshot {
	if o.Endpoints <= 0 {
		o.Endpoints = 3
	}
	sel := &byDestination{chains: map[netip.AddrPort]string{}}
	l := &model.Listener{
		Name: "waypoint", Address: o.Listen, ProxyProtocol: o.ProxyProtocol,
		AllowWithoutProxyProtocol: o.AllowWithoutProxyProtocol, HeaderTimeout: 5 * time.Second,
		Chains: map[string]*model.FilterChain{}, Select: sel,
	}
	s := &model.Snapshot{Version: fmt.Sprintf("synthetic-%d", o.Services), Listeners: []*model.Listener{l},
		Clusters: map[string]*model.Cluster{}, Peers: &model.Peers{ByAddress: map[netip.Addr]*model.Peer{}}}
	retry := &model.RetryPolicy{
		On:         map[string]bool{"connect-failure": true, "refused-stream": true, "unavailable": true, "cancelled": true, "retriable-status-codes": true},
		NumRetries: 2, RetriableStatusCodes: []int{503}, PreviousHosts: true, HostSelectionAttempts: 5,
	}
	for i := range o.Services {
		host, short := Host(i), fmt.Sprintf("svc-%d", i)
		ref := model.ServiceRef{Hostname: host, Name: short, Namespace: "bench"}
		chainName := fmt.Sprintf("inbound-vip|80|http|%s", host)
		clusterName := chainName
		vip := VIP(i)
		rt := &model.RouteTable{Name: chainName, VirtualHosts: []*model.VirtualHost{{
			Name: host + ":80",
			// A chain serves one service, so its one virtual host takes any
			// authority, as istiod writes a waypoint's inbound-vip routes.
			Domains: []string{host, host + ":80", short, short + ":80", short + ".bench", short + ".bench:80", vip.Addr().String(), vip.String(), "*"},
			Routes: []*model.Route{{
				Name:    "default",
				Match:   model.RouteMatch{Prefix: "/"},
				Forward: &model.ForwardAction{Cluster: clusterName, Retry: retry},
			}},
		}}}
		l.Chains[chainName] = &model.FilterChain{Name: chainName, Service: ref, HTTP: &model.HTTPConnectionManager{
			StatPrefix: chainName, Codec: "auto", Routes: rt, GenerateRequestID: true, ServerName: "istio-envoy",
			Filters: []model.HTTPFilter{{Name: "envoy.filters.http.fault"}, {Name: "envoy.filters.http.cors"}, {Name: "envoy.filters.http.router", Router: true}},
		}}
		sel.chains[vip] = chainName
		if i == 0 {
			sel.def = chainName
		}
		var eps []model.Endpoint
		for j := range o.Endpoints {
			a := netip.AddrFrom4([4]byte{10, 244, byte(i >> 6), byte((i&63)<<2 | j&3)})
			ep := model.Endpoint{Address: netip.AddrPortFrom(a, 8080), Weight: 1, Healthy: true, Workload: fmt.Sprintf("svc-%d-%d", i, j)}
			eps = append(eps, ep)
			s.Peers.ByAddress[a] = &model.Peer{Name: fmt.Sprintf("svc-%d-%d", i, j), Namespace: "bench", WorkloadName: short,
				ServiceAccount: short, CanonicalName: short, CanonicalRevision: "v1", ClusterID: "Kubernetes"}
		}
		if i == 0 && o.Backend.IsValid() {
			eps = []model.Endpoint{{Address: o.Backend, Weight: 1, Healthy: true, Workload: "backend"}}
		}
		s.Clusters[clusterName] = &model.Cluster{Name: clusterName, Kind: "eds", LB: "round_robin", ConnectTimeout: 10 * time.Second,
			Protocol: "http1", Endpoints: [][]model.Endpoint{eps}, Service: ref}
	}
	return s
}
