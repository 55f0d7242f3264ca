package xdsclient_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// testServer is go-control-plane's delta ADS server over one linear cache
// per type, recording every request a client sends, in order.
type testServer struct {
	t     *testing.T
	addr  string
	types []string

	mu     sync.Mutex
	state  map[string]map[string]types.Resource
	caches map[string]*cachev3.LinearCache
	reqs   []*discoveryv3.DeltaDiscoveryRequest
	gs     *grpc.Server
	cancel context.CancelFunc
}

func startServer(t *testing.T, typeURLs ...string) *testServer {
	t.Helper()
	s := &testServer{t: t, types: typeURLs, state: map[string]map[string]types.Resource{}}
	for _, u := range typeURLs {
		s.state[u] = map[string]types.Resource{}
	}
	if err := s.start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop)
	return s
}

func (s *testServer) start(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.addr = l.Addr().String()
	s.mu.Lock()
	s.caches = map[string]*cachev3.LinearCache{}
	caches := map[string]cachev3.Cache{}
	for _, u := range s.types {
		c := cachev3.NewLinearCache(u, cachev3.WithInitialResources(clone(s.state[u])))
		s.caches[u] = c
		caches[u] = c
	}
	s.mu.Unlock()
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        caches,
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	cb := serverv3.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			s.mu.Lock()
			s.reqs = append(s.reqs, proto.Clone(r).(*discoveryv3.DeltaDiscoveryRequest))
			s.mu.Unlock()
			return nil
		},
	}
	s.gs = grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s.gs, serverv3.NewServer(ctx, mux, cb))
	go func() { _ = s.gs.Serve(l) }()
	return nil
}

func (s *testServer) stop() {
	s.gs.Stop()
	s.cancel()
}

func (s *testServer) restart() {
	s.t.Helper()
	for i := 0; ; i++ {
		err := s.start(s.addr)
		if err == nil {
			return
		}
		if i > 100 {
			s.t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// set serves resources of a type; nil deletes. While stopped, it only
// changes what a restart serves.
func (s *testServer) set(typeURL string, res map[string]types.Resource, live bool) {
	s.t.Helper()
	s.mu.Lock()
	up := map[string]types.Resource{}
	var del []string
	for n, r := range res {
		if r == nil {
			delete(s.state[typeURL], n)
			del = append(del, n)
		} else {
			s.state[typeURL][n] = r
			up[n] = r
		}
	}
	c := s.caches[typeURL]
	s.mu.Unlock()
	if live {
		if err := c.UpdateResources(up, del); err != nil {
			s.t.Fatal(err)
		}
	}
}

func (s *testServer) requests() []*discoveryv3.DeltaDiscoveryRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*discoveryv3.DeltaDiscoveryRequest(nil), s.reqs...)
}

// waitRequest waits for a request after the first n that satisfies ok and
// returns its index.
func (s *testServer) waitRequest(n int, ok func(*discoveryv3.DeltaDiscoveryRequest) bool) (int, *discoveryv3.DeltaDiscoveryRequest) {
	s.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		rs := s.requests()
		for i := n; i < len(rs); i++ {
			if ok(rs[i]) {
				return i, rs[i]
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	s.t.Fatalf("no matching request after #%d within 5s; got %d requests", n, len(s.requests()))
	return 0, nil
}

func clone(m map[string]types.Resource) map[string]types.Resource {
	out := make(map[string]types.Resource, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
