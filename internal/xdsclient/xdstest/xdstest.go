// Package xdstest is a delta ADS server for tests: go-control-plane's
// server over one linear cache per type, recording every request a client
// sends, in order. It stops and restarts on its address, serving after a
// restart what was set meanwhile (a control plane that went away).
package xdstest

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

// Server is the fake control plane; Start makes one.
type Server struct {
	t     testing.TB
	addr  string
	types []string

	mu      sync.Mutex
	state   map[string]map[string]types.Resource // what is served, by type and name
	caches  map[string]*cachev3.LinearCache
	running bool
	reqs    []*discoveryv3.DeltaDiscoveryRequest
	gs      *grpc.Server
	cancel  context.CancelFunc
}

// Start serves the given resource types on a loopback port until the
// test ends.
func Start(t testing.TB, typeURLs ...string) *Server {
	t.Helper()
	s := &Server{t: t, types: typeURLs, state: map[string]map[string]types.Resource{}}
	for _, u := range typeURLs {
		s.state[u] = map[string]types.Resource{}
	}
	if err := s.start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

func (s *Server) start(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.addr = l.Addr().String()
	s.mu.Lock()
	s.caches = map[string]*cachev3.LinearCache{}
	caches := map[string]cachev3.Cache{}
	for _, u := range s.types {
		initial := make(map[string]types.Resource, len(s.state[u]))
		for k, v := range s.state[u] {
			initial[k] = v
		}
		c := cachev3.NewLinearCache(u, cachev3.WithInitialResources(initial))
		s.caches[u], caches[u] = c, c
	}
	s.running = true
	s.mu.Unlock()
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        caches,
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	cb := serverv3.CallbackFuncs{StreamDeltaRequestFunc: func(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
		s.mu.Lock()
		s.reqs = append(s.reqs, proto.Clone(r).(*discoveryv3.DeltaDiscoveryRequest))
		s.mu.Unlock()
		return nil
	}}
	s.gs = grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s.gs, serverv3.NewServer(ctx, mux, cb))
	go func() { _ = s.gs.Serve(l) }()
	return nil
}

// Stop ends the server and its streams; Restart brings it back.
func (s *Server) Stop() {
	s.mu.Lock()
	running := s.running
	s.running = false
	s.mu.Unlock()
	if running {
		s.gs.Stop()
		s.cancel()
	}
}

// Restart serves again on the same address (retrying while the port is
// still held).
func (s *Server) Restart() {
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

// Set serves resources of a type by name; a nil resource deletes. While
// stopped, it changes what a restart serves.
func (s *Server) Set(typeURL string, res map[string]types.Resource) {
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
	c, live := s.caches[typeURL], s.running
	s.mu.Unlock()
	if live {
		if err := c.UpdateResources(up, del); err != nil {
			s.t.Fatal(err)
		}
	}
}

// Requests returns the requests received so far, in order.
func (s *Server) Requests() []*discoveryv3.DeltaDiscoveryRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*discoveryv3.DeltaDiscoveryRequest(nil), s.reqs...)
}

// WaitRequest waits up to 5 s for a request after the first n that
// satisfies ok and returns its index and the request.
func (s *Server) WaitRequest(n int, ok func(*discoveryv3.DeltaDiscoveryRequest) bool) (int, *discoveryv3.DeltaDiscoveryRequest) {
	s.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		rs := s.Requests()
		for i := n; i < len(rs); i++ {
			if ok(rs[i]) {
				return i, rs[i]
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	s.t.Fatalf("no matching request after #%d within 5s; got %d requests", n, len(s.Requests()))
	return 0, nil
}

// NACK waits for a NACK of a type after the first n requests and returns
// its message.
func (s *Server) NACK(n int, typeURL string) string {
	s.t.Helper()
	_, r := s.WaitRequest(n, func(r *discoveryv3.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == typeURL && r.GetErrorDetail() != nil
	})
	return r.GetErrorDetail().GetMessage()
}
