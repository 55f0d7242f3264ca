// Package xdstest is an in-process delta xDS server for istiod's ambient
// types, built on go-control-plane, for tests and benchmarks: set workload
// resources, watch what the client ACKs and NACKs, stop and restart.
package xdstest

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/kmesh-go/kmesh/daemon/xds"
)

// Reply is one ACK or NACK a client sent.
type Reply struct {
	TypeURL string
	Nonce   string
	NACK    string // the error detail; empty for an ACK
	At      time.Time
}

// Server serves Address and Authorization resources.
type Server struct {
	Addr string

	mu       sync.Mutex
	addrs    *cachev3.LinearCache
	authz    *cachev3.LinearCache
	state    map[string]map[string]types.Resource // what we serve, for restarts
	replies  []Reply
	connects int
	gs       *grpc.Server
	cancel   context.CancelFunc
	sent     map[string]time.Time // nonce -> when the response left
}

// Start listens on addr ("127.0.0.1:0" for any port).
func Start(addr string) (*Server, error) {
	s := &Server{state: map[string]map[string]types.Resource{xds.TypeAddress: {}, xds.TypeAuthorization: {}}, sent: map[string]time.Time{}}
	if err := s.start(addr); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) start(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.Addr = l.Addr().String()
	s.addrs = cachev3.NewLinearCache(xds.TypeAddress, cachev3.WithInitialResources(s.state[xds.TypeAddress]))
	s.authz = cachev3.NewLinearCache(xds.TypeAuthorization, cachev3.WithInitialResources(s.state[xds.TypeAuthorization]))
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cachev3.Cache{xds.TypeAddress: s.addrs, xds.TypeAuthorization: s.authz},
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	cb := serverv3.CallbackFuncs{
		DeltaStreamOpenFunc: func(context.Context, int64, string) error {
			s.mu.Lock()
			s.connects++
			s.mu.Unlock()
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			if r.GetResponseNonce() == "" {
				return nil
			}
			s.mu.Lock()
			s.replies = append(s.replies, Reply{TypeURL: r.GetTypeUrl(), Nonce: r.GetResponseNonce(), NACK: r.GetErrorDetail().GetMessage(), At: time.Now()})
			s.mu.Unlock()
			return nil
		},
		StreamDeltaResponseFunc: func(_ int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
			s.mu.Lock()
			s.sent[resp.GetNonce()] = time.Now()
			s.mu.Unlock()
		},
	}
	srv := serverv3.NewServer(ctx, mux, cb)
	s.gs = grpc.NewServer(grpc.MaxRecvMsgSize(256 << 20))
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s.gs, srv)
	go func() { _ = s.gs.Serve(l) }()
	return nil
}

// Stop closes every stream and the listener; the served state is kept for
// Restart.
func (s *Server) Stop() {
	s.gs.Stop()
	s.cancel()
}

// Restart serves the kept state again on the same address (new versions,
// as a restarted istiod would).
func (s *Server) Restart() error {
	for i := 0; ; i++ {
		err := s.start(s.Addr)
		if err == nil || i > 50 {
			return err
		}
		time.Sleep(20 * time.Millisecond) // the port may linger briefly
	}
}

// Set serves (or replaces) resources; nil values delete.
func (s *Server) Set(typeURL string, res map[string]types.Resource) error {
	s.mu.Lock()
	c := s.cache(typeURL)
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
	s.mu.Unlock()
	return c.UpdateResources(up, del)
}

// SetWhileDown changes what a restarted server will serve.
func (s *Server) SetWhileDown(typeURL string, res map[string]types.Resource) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, r := range res {
		if r == nil {
			delete(s.state[typeURL], n)
		} else {
			s.state[typeURL][n] = r
		}
	}
}

func (s *Server) cache(typeURL string) *cachev3.LinearCache {
	if typeURL == xds.TypeAuthorization {
		return s.authz
	}
	return s.addrs
}

// Replies returns every ACK/NACK so far.
func (s *Server) Replies() []Reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Reply(nil), s.replies...)
}

// SentAt says when the response with nonce left the server.
func (s *Server) SentAt(nonce string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.sent[nonce]
	return t, ok
}

// Connects counts delta streams opened.
func (s *Server) Connects() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connects
}

// WaitReply waits for the next reply after n replies, up to timeout.
func (s *Server) WaitReply(n int, timeout time.Duration) (Reply, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		if len(s.replies) > n {
			r := s.replies[n]
			s.mu.Unlock()
			return r, nil
		}
		s.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
	return Reply{}, fmt.Errorf("no reply #%d within %s", n+1, timeout)
}

// Service builds an Address resource for a service.
func Service(ns, name string, vips []string, ports map[uint32]uint32, mut ...func(*workloadapi.Service)) (string, *workloadapi.Address) {
	host := fmt.Sprintf("%s.%s.svc.cluster.local", name, ns)
	s := &workloadapi.Service{Name: name, Namespace: ns, Hostname: host}
	for _, v := range vips {
		s.Addresses = append(s.Addresses, &workloadapi.NetworkAddress{Address: ip(v)})
	}
	for sp, tp := range ports {
		s.Ports = append(s.Ports, &workloadapi.Port{ServicePort: sp, TargetPort: tp})
	}
	for _, m := range mut {
		m(s)
	}
	return ns + "/" + host, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
}

// Workload builds an Address resource for a pod backing services (keys
// "ns/hostname").
func Workload(uid, ns, name string, ips []string, services []string, mut ...func(*workloadapi.Workload)) (string, *workloadapi.Address) {
	w := &workloadapi.Workload{Uid: uid, Name: name, Namespace: ns, Status: workloadapi.WorkloadStatus_HEALTHY,
		ServiceAccount: "default", TrustDomain: "cluster.local", Services: map[string]*workloadapi.PortList{}}
	for _, v := range ips {
		w.Addresses = append(w.Addresses, ip(v))
	}
	for _, k := range services {
		w.Services[k] = &workloadapi.PortList{}
	}
	for _, m := range mut {
		m(w)
	}
	return uid, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

// Policy names an Authorization resource.
func Policy(a *security.Authorization) (string, *security.Authorization) {
	return a.GetNamespace() + "/" + a.GetName(), a
}

func ip(s string) []byte {
	a := net.ParseIP(s)
	if v4 := a.To4(); v4 != nil {
		return v4
	}
	return a
}
