package xds

import (
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kmesh-go/kmesh/internal/xdsclient"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/translate"
	"github.com/kmesh-go/kmesh/waypoint/translate/translatetest"
)

// BenchmarkListenerPush1000 is what a route change costs the waypoint
// with 1000 services: istiod resends the dispatch listener, which is
// decoded, checked, compared and translated (the memo keeps the 999
// unchanged chains) into the snapshot handed over.
func BenchmarkListenerPush1000(b *testing.B) {
	in := translatetest.Synthetic(1000)
	s, err := New(Config{Address: "127.0.0.1:1", Plaintext: true, Node: testNode(), Apply: func(*model.Snapshot) error { return nil }})
	if err != nil {
		b.Fatal(err)
	}
	wire := func(name string, m proto.Message) []xdsclient.Resource {
		a, err := anypb.New(m)
		if err != nil {
			b.Fatal(err)
		}
		return []xdsclient.Resource{{Name: name, Body: a}}
	}
	var cs, es []xdsclient.Resource
	for _, c := range in.Clusters {
		cs = append(cs, wire(c.GetName(), c)...)
		es = append(es, wire(c.GetName(), in.Endpoints[c.GetName()])...)
	}
	for _, step := range []struct {
		t string
		r []xdsclient.Resource
	}{{translate.TypeCluster, cs}, {translate.TypeEndpoint, es}, {translate.TypeListener, wire("main_internal", in.Listeners[0])}} {
		if _, err := s.Apply(step.t, step.r, nil); err != nil {
			b.Fatal(err)
		}
	}
	// Two versions of the listener that differ in one chain, alternated.
	l2 := proto.Clone(in.Listeners[0]).(*listenerv3.Listener)
	l2.FilterChains[0] = proto.Clone(translatetest.Synthetic(1).Listeners[0].FilterChains[0]).(*listenerv3.FilterChain)
	l2.FilterChains[0].Name = in.Listeners[0].FilterChains[0].Name
	versions := [][]xdsclient.Resource{wire("main_internal", l2), wire("main_internal", in.Listeners[0])}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := s.Apply(translate.TypeListener, versions[i%2], nil); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
