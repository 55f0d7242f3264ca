package xdsclient_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kmesh-go/kmesh/internal/xdsclient"
	"github.com/kmesh-go/kmesh/internal/xdsclient/xdstest"
)

const (
	typeCDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	typeEDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// store is a Handler that keeps what it accepted per type, rejects
// clusters whose connect timeout is negative, and lets a test react to
// each response (e.g. subscribe EDS for the clusters that arrived).
type store struct {
	mu      sync.Mutex
	state   map[string]map[string]proto.Message
	applied int
	synced  chan struct{}
	onApply func(typeURL string, s map[string]proto.Message)
	syncedO sync.Once
	// seen: the versions each resource arrived with, accepted or not,
	// by type and name.
	seen map[string][]string
	// keep: removals refused (the name stays, reported rejected).
	keep map[string]bool
}

func newStore() *store {
	return &store{state: map[string]map[string]proto.Message{typeCDS: {}, typeEDS: {}}, synced: make(chan struct{}), seen: map[string][]string{}}
}

func (s *store) Apply(typeURL string, ups []xdsclient.Resource, removes []string) (map[string]error, error) {
	rejected := map[string]error{}
	s.mu.Lock()
	m := s.state[typeURL]
	for _, r := range ups {
		s.seen[typeURL+" "+r.Name] = append(s.seen[typeURL+" "+r.Name], r.Version)
		var msg proto.Message
		switch typeURL {
		case typeCDS:
			c := &clusterv3.Cluster{}
			if err := r.Body.UnmarshalTo(c); err != nil {
				rejected[r.Name] = err
				continue
			}
			if c.GetConnectTimeout().AsDuration() < 0 {
				rejected[r.Name] = fmt.Errorf("cluster %s: negative connect_timeout", r.Name)
				continue
			}
			msg = c
		case typeEDS:
			e := &endpointv3.ClusterLoadAssignment{}
			if err := r.Body.UnmarshalTo(e); err != nil {
				rejected[r.Name] = err
				continue
			}
			msg = e
		default:
			return nil, errors.New("unexpected type " + typeURL)
		}
		m[r.Name] = msg
	}
	for _, n := range removes {
		if s.keep[n] {
			rejected[n] = fmt.Errorf("%s: removal not applied", n)
			continue
		}
		delete(m, n)
	}
	s.applied++
	cb := s.onApply
	snap := maps.Clone(m)
	s.mu.Unlock()
	if cb != nil {
		cb(typeURL, snap)
	}
	return rejected, nil
}

func (s *store) Synced()        { s.syncedO.Do(func() { close(s.synced) }) }
func (s *store) Connected(bool) {}

func (s *store) names(typeURL string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.state[typeURL]))
}

// versions returns the versions a resource arrived with, oldest first.
func (s *store) versions(typeURL, name string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seen[typeURL+" "+name])
}

func (s *store) get(typeURL, name string) proto.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state[typeURL][name]
}

func (s *store) waitNames(t *testing.T, typeURL string, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if slices.Equal(s.names(typeURL), want) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("%s: have %v, want %v", typeURL, s.names(typeURL), want)
}

func cluster(name string, timeout time.Duration) *clusterv3.Cluster {
	return &clusterv3.Cluster{Name: name, ConnectTimeout: durationpb.New(timeout),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}
}

func cla(name string, ports ...uint32) *endpointv3.ClusterLoadAssignment {
	c := &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{}}}
	for _, p := range ports {
		c.Endpoints[0].LbEndpoints = append(c.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
				Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.0.0.1",
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p}}}}}}})
	}
	return c
}

// run starts a client of CDS (wildcard) and EDS (named, following the
// clusters the store holds, as a waypoint does).
func run(t *testing.T, srv *xdstest.Server, st *store, meta any) *xdsclient.Client {
	t.Helper()
	c, err := xdsclient.New(xdsclient.Config{
		Address:   srv.Addr(),
		Plaintext: true,
		NodeID:    "waypoint~10.0.0.9~wp-0.ns~ns.svc.cluster.local",
		Metadata:  meta,
		Subscriptions: []xdsclient.Subscription{
			{TypeURL: typeCDS, Wildcard: true},
			{TypeURL: typeEDS},
		},
		MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 50 * time.Millisecond,
	}, st)
	if err != nil {
		t.Fatal(err)
	}
	st.onApply = func(typeURL string, m map[string]proto.Message) {
		if typeURL == typeCDS {
			if err := c.SetNames(typeEDS, slices.Collect(maps.Keys(m))); err != nil {
				t.Error(err)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func isACK(typeURL string) func(*discoveryv3.DeltaDiscoveryRequest) bool {
	return func(r *discoveryv3.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == typeURL && r.GetResponseNonce() != "" && r.GetErrorDetail() == nil
	}
}

func TestNamedSubscriptionFollowsCDSAfterItsACK(t *testing.T) {
	srv := xdstest.Start(t, typeCDS, typeEDS)
	srv.Set(typeCDS, map[string]types.Resource{"a": cluster("a", time.Second), "b": cluster("b", time.Second)})
	srv.Set(typeEDS, map[string]types.Resource{"a": cla("a", 80), "b": cla("b", 81), "c": cla("c", 82)})
	st := newStore()
	c := run(t, srv, st, map[string]any{"NAMESPACE": "ns", "LABELS": map[string]string{"gateway.networking.k8s.io/gateway-name": "wp"}})

	st.waitNames(t, typeCDS, "a", "b")
	st.waitNames(t, typeEDS, "a", "b") // never c: not subscribed
	select {
	case <-st.synced:
	case <-time.After(5 * time.Second):
		t.Fatal("never synced")
	}

	reqs := srv.Requests()
	// The first request carries the node with metadata of any shape.
	first := reqs[0]
	if first.GetTypeUrl() != typeCDS || first.GetNode().GetId() == "" {
		t.Fatalf("first request: %v", first)
	}
	labels := first.GetNode().GetMetadata().GetFields()["LABELS"].GetStructValue().GetFields()
	if labels["gateway.networking.k8s.io/gateway-name"].GetStringValue() != "wp" {
		t.Fatalf("LABELS not a map in the node metadata: %v", first.GetNode().GetMetadata())
	}
	// No EDS request before there were names (a nameless first request
	// would be a wildcard), and the EDS subscription follows the CDS ACK.
	ackIdx, _ := srv.WaitRequest(0, isACK(typeCDS))
	subIdx, sub := srv.WaitRequest(0, func(r *discoveryv3.DeltaDiscoveryRequest) bool { return r.GetTypeUrl() == typeEDS })
	if subIdx < ackIdx {
		t.Fatalf("EDS subscribed (#%d) before the CDS ACK (#%d)", subIdx, ackIdx)
	}
	if got := sub.GetResourceNamesSubscribe(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("EDS subscribe %v, want [a b] in one request", got)
	}
	if s := c.Stats(); s.NACKs != 0 || s.ACKs < 2 {
		t.Fatalf("stats %+v", s)
	}

	// Unsubscribe b: later changes of b no longer arrive, a's still do.
	n := len(srv.Requests())
	srv.Set(typeCDS, map[string]types.Resource{"b": nil})
	st.waitNames(t, typeCDS, "a")
	_, unsub := srv.WaitRequest(n, func(r *discoveryv3.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == typeEDS && len(r.GetResourceNamesUnsubscribe()) > 0
	})
	if !slices.Equal(unsub.GetResourceNamesUnsubscribe(), []string{"b"}) || len(unsub.GetResourceNamesSubscribe()) != 0 {
		t.Fatalf("unsubscribe request %v", unsub)
	}
	if !slices.Equal(c.Names(typeEDS), []string{"a"}) {
		t.Fatalf("names %v", c.Names(typeEDS))
	}
	st.mu.Lock()
	delete(st.state[typeEDS], "b") // the caller drops what it unsubscribed
	st.mu.Unlock()
	srv.Set(typeEDS, map[string]types.Resource{"b": cla("b", 91), "a": cla("a", 90)})
	deadline := time.Now().Add(5 * time.Second)
	for {
		a, _ := st.get(typeEDS, "a").(*endpointv3.ClusterLoadAssignment)
		if a != nil && a.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() == 90 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("update of a never arrived")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if st.get(typeEDS, "b") != nil {
		t.Fatal("b arrived after it was unsubscribed")
	}

	// Subscribing from outside a response goes out at once.
	n = len(srv.Requests())
	if err := c.SetNames(typeEDS, []string{"a", "c"}); err != nil {
		t.Fatal(err)
	}
	_, sub = srv.WaitRequest(n, func(r *discoveryv3.DeltaDiscoveryRequest) bool { return r.GetTypeUrl() == typeEDS })
	if !slices.Equal(sub.GetResourceNamesSubscribe(), []string{"c"}) {
		t.Fatalf("subscribe %v, want [c]", sub.GetResourceNamesSubscribe())
	}
	st.waitNames(t, typeEDS, "a", "c")
	if err := c.SetNames(typeCDS, []string{"x"}); err == nil {
		t.Fatal("SetNames on a wildcard subscription succeeded")
	}
}

func TestNACKKeepsLastGoodAndItsVersion(t *testing.T) {
	srv := xdstest.Start(t, typeCDS, typeEDS)
	srv.Set(typeCDS, map[string]types.Resource{"a": cluster("a", time.Second), "b": cluster("b", time.Second)})
	st := newStore()
	c := run(t, srv, st, nil)
	st.waitNames(t, typeCDS, "a", "b")
	srv.WaitRequest(0, isACK(typeCDS))

	// A bad version of a, a good new c, in one response.
	n := len(srv.Requests())
	srv.Set(typeCDS, map[string]types.Resource{"a": cluster("a", -time.Second), "c": cluster("c", 2*time.Second)})
	_, nack := srv.WaitRequest(n, func(r *discoveryv3.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == typeCDS && r.GetErrorDetail() != nil
	})
	if msg := nack.GetErrorDetail().GetMessage(); !strings.Contains(msg, "cluster a: negative connect_timeout") {
		t.Fatalf("NACK reason %q", msg)
	}
	st.waitNames(t, typeCDS, "a", "b", "c")
	if got := st.get(typeCDS, "a").(*clusterv3.Cluster).GetConnectTimeout().AsDuration(); got != time.Second {
		t.Fatalf("a's connect timeout %v: the last good version was not kept", got)
	}
	if s := c.Stats(); s.NACKs != 1 || !strings.Contains(s.LastNACK, "negative") {
		t.Fatalf("stats %+v", s)
	}

	// On a new stream the client resumes with the versions it applied:
	// a's good one, not the rejected one, so the server sends a again.
	srv.Stop()
	srv.Restart()
	_, resume := srv.WaitRequest(n, func(r *discoveryv3.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == typeCDS && r.GetNode() != nil
	})
	vs := resume.GetInitialResourceVersions()
	if len(vs) != 3 || vs["a"] == "" || vs["c"] == "" {
		t.Fatalf("initial_resource_versions %v", vs)
	}
	av := st.versions(typeCDS, "a")
	if len(av) < 2 || av[0] == av[1] {
		t.Fatalf("a arrived with versions %v, want a good one then a rejected one", av)
	}
	if vs["a"] != av[0] {
		t.Fatalf("resumed with a at %q, want its last good version %q (rejected: %q)", vs["a"], av[0], av[1])
	}
}

func TestResumeAfterReconnect(t *testing.T) {
	srv := xdstest.Start(t, typeCDS, typeEDS)
	srv.Set(typeCDS, map[string]types.Resource{"a": cluster("a", time.Second), "b": cluster("b", time.Second)})
	srv.Set(typeEDS, map[string]types.Resource{"a": cla("a", 80), "b": cla("b", 81)})
	st := newStore()
	c := run(t, srv, st, nil)
	st.waitNames(t, typeEDS, "a", "b")

	// While the server is away: b goes, d comes, a's endpoints change.
	srv.Stop()
	srv.Set(typeCDS, map[string]types.Resource{"b": nil, "d": cluster("d", time.Second)})
	srv.Set(typeEDS, map[string]types.Resource{"b": nil, "a": cla("a", 8080), "d": cla("d", 83)})
	time.Sleep(100 * time.Millisecond)
	st.waitNames(t, typeCDS, "a", "b") // the last state is kept meanwhile
	n := len(srv.Requests())
	srv.Restart()

	st.waitNames(t, typeCDS, "a", "d")
	st.waitNames(t, typeEDS, "a", "d")
	reqs := srv.Requests()[n:]
	var cds, eds *discoveryv3.DeltaDiscoveryRequest
	for _, r := range reqs {
		if r.GetTypeUrl() == typeCDS && cds == nil {
			cds = r
		}
		if r.GetTypeUrl() == typeEDS && eds == nil {
			eds = r
		}
	}
	if cds == nil || len(cds.GetInitialResourceVersions()) != 2 || cds.GetNode() == nil {
		t.Fatalf("CDS resume request %v", cds)
	}
	// EDS resumes with its names and versions in its first request.
	if eds == nil || !slices.Equal(eds.GetResourceNamesSubscribe(), []string{"a", "b"}) || len(eds.GetInitialResourceVersions()) != 2 {
		t.Fatalf("EDS resume request %v", eds)
	}
	deadline := time.Now().Add(5 * time.Second)
	for st.get(typeEDS, "a").(*endpointv3.ClusterLoadAssignment).GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() != 8080 {
		if time.Now().After(deadline) {
			t.Fatal("a's new endpoints never arrived")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if s := c.Stats(); s.Connects < 2 {
		t.Fatalf("connects %d", s.Connects)
	}
}

func TestConfigErrors(t *testing.T) {
	st := newStore()
	if _, err := xdsclient.New(xdsclient.Config{Address: "x"}, st); err == nil {
		t.Fatal("no subscriptions accepted")
	}
	if _, err := xdsclient.New(xdsclient.Config{Address: "x", Metadata: []string{"a"},
		Subscriptions: []xdsclient.Subscription{{TypeURL: typeCDS, Wildcard: true}}}, st); err == nil {
		t.Fatal("a list accepted as node metadata")
	}
	if _, err := xdsclient.New(xdsclient.Config{Address: "x",
		Subscriptions: []xdsclient.Subscription{{TypeURL: typeCDS, Wildcard: true}, {TypeURL: typeCDS}}}, st); err == nil {
		t.Fatal("a type subscribed twice accepted")
	}
}

// A removal the handler refuses (it keeps the resource, and says so) is
// NACKed, and the client keeps the resource's version: resuming on a new
// stream, it still names what the handler still holds.
func TestRefusedRemovalKeepsItsVersion(t *testing.T) {
	srv := xdstest.Start(t, typeCDS, typeEDS)
	srv.Set(typeCDS, map[string]types.Resource{"a": cluster("a", time.Second), "b": cluster("b", time.Second)})
	st := newStore()
	st.keep = map[string]bool{"b": true}
	run(t, srv, st, nil)
	st.waitNames(t, typeCDS, "a", "b")
	srv.WaitRequest(0, isACK(typeCDS))
	n := len(srv.Requests())
	srv.Set(typeCDS, map[string]types.Resource{"b": nil})
	_, nack := srv.WaitRequest(n, func(r *discoveryv3.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == typeCDS && r.GetErrorDetail() != nil
	})
	if msg := nack.GetErrorDetail().GetMessage(); !strings.Contains(msg, "b: removal not applied") {
		t.Fatalf("NACK reason %q", msg)
	}
	srv.Stop()
	srv.Restart()
	_, resume := srv.WaitRequest(n, func(r *discoveryv3.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == typeCDS && r.GetNode() != nil
	})
	if vs := resume.GetInitialResourceVersions(); vs["b"] == "" || vs["a"] == "" {
		t.Fatalf("resumed with %v: the refused removal dropped b's version", vs)
	}
}

// unsolicited is an ADS server that, once the client has subscribed, sends
// a response of a type nobody asked for, then a CDS response, and records
// every request.
type unsolicited struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	reqs chan *discoveryv3.DeltaDiscoveryRequest
}

func (u *unsolicited) DeltaAggregatedResources(s discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	if _, err := s.Recv(); err != nil {
		return err
	}
	body, err := anypb.New(cluster("a", time.Second))
	if err != nil {
		return err
	}
	unknown := &anypb.Any{TypeUrl: "type.googleapis.com/example.Unknown", Value: []byte{}}
	if err := s.Send(&discoveryv3.DeltaDiscoveryResponse{TypeUrl: unknown.TypeUrl, Nonce: "u1",
		Resources: []*discoveryv3.Resource{{Name: "x", Version: "1", Resource: unknown}}}); err != nil {
		return err
	}
	if err := s.Send(&discoveryv3.DeltaDiscoveryResponse{TypeUrl: typeCDS, Nonce: "c1",
		Resources: []*discoveryv3.Resource{{Name: "a", Version: "1", Resource: body}}}); err != nil {
		return err
	}
	for {
		r, err := s.Recv()
		if err != nil {
			return err
		}
		u.reqs <- r
	}
}

// A response for a type the client never subscribed is dropped without an
// answer, as Envoy does: istiod would take an ACK as a subscription to the
// type and a NACK for a type it does not track as an error on nothing.
func TestUnsubscribedTypeIsNotAnswered(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &unsolicited{reqs: make(chan *discoveryv3.DeltaDiscoveryRequest, 100)}
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, u)
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)

	st := newStore()
	c, err := xdsclient.New(xdsclient.Config{Address: l.Addr().String(), Plaintext: true, NodeID: "n",
		Subscriptions: []xdsclient.Subscription{{TypeURL: typeCDS, Wildcard: true}},
		MinBackoff:    20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, st)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	// Responses are answered in order: whatever answers u1 comes before
	// the ACK of c1.
	timeout := time.After(5 * time.Second)
	for {
		select {
		case r := <-u.reqs:
			if r.GetResponseNonce() == "u1" {
				t.Fatalf("the unsubscribed type was answered: %v", r)
			}
			if r.GetResponseNonce() != "c1" {
				continue
			}
			if r.GetTypeUrl() != typeCDS || r.GetErrorDetail() != nil {
				t.Fatalf("c1 answered with %v", r)
			}
			st.waitNames(t, typeCDS, "a")
			if s := c.Stats(); s.NACKs != 0 || s.Ignored != 1 || s.ACKs != 1 {
				t.Fatalf("stats %+v", s)
			}
			return
		case <-timeout:
			t.Fatal("no ACK of the CDS response")
		}
	}
}
