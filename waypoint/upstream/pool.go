package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/internal/coalesce"
)

// pools are a cluster's HTTP connection pools: one http.Transport per
// upstream protocol, made on first use (most clusters of a big
// configuration never see a request). A Transport pools connections per
// endpoint address, which is the per-endpoint pool Envoy keeps.
type pools struct {
	c      *Cluster
	mu     sync.Mutex
	h1, h2 atomic.Pointer[http.Transport]
	// h2c: the HTTP/2 connections (h2.go), made by h2's Transport.
	h2c h2Conns
	// settings the transports were made with; a change makes new ones.
	idle     time.Duration
	maxConns int
}

func newPools(c *Cluster) *pools {
	p := &pools{c: c}
	p.h2c.p = p
	return p
}

func (p *pools) update(old, st *state) {
	idle := st.m.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	maxConns := int(st.limits.connections)
	p.mu.Lock()
	defer p.mu.Unlock()
	if old != nil && idle == p.idle && maxConns == p.maxConns {
		return
	}
	p.idle, p.maxConns = idle, maxConns
	// New settings: new transports; the old ones' idle connections go now,
	// their busy ones with the requests using them.
	for _, t := range []*atomic.Pointer[http.Transport]{&p.h1, &p.h2} {
		if tr := t.Swap(nil); tr != nil {
			tr.CloseIdleConnections()
		}
	}
	p.h2c.closeIdle(true)
}

// Transport returns the pool for HTTP/1.1 (h2 false) or, for h2c prior
// knowledge (h2 true), the maker of the connections h2.go pools.
func (c *Cluster) Transport(h2 bool) *http.Transport {
	p := c.pools
	slot := &p.h1
	if h2 {
		slot = &p.h2
	}
	if t := slot.Load(); t != nil {
		return t
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := slot.Load(); t != nil {
		return t
	}
	t := &http.Transport{
		DialContext:         c.dial,
		MaxIdleConnsPerHost: p.maxConns,
		MaxConnsPerHost:     p.maxConns,
		IdleConnTimeout:     p.idle,
		// The client's Accept-Encoding goes through as it is, and bodies
		// are not decompressed on the way.
		DisableCompression: true,
	}
	var protos http.Protocols
	if h2 {
		t.DialContext = c.dialH2
		protos.SetUnencryptedHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	t.Protocols = &protos
	slot.Store(t)
	return t
}

func (p *pools) closeIdle() {
	for _, t := range []*http.Transport{p.h1.Load(), p.h2.Load()} {
		if t != nil {
			t.CloseIdleConnections()
		}
	}
	p.h2c.closeIdle(false)
}

// dial opens a connection to an endpoint within the cluster's connect
// timeout and max_connections.
func (c *Cluster) dial(ctx context.Context, _, addr string) (net.Conn, error) {
	st := c.state.Load()
	if c.connections.Add(1) > st.limits.connections {
		c.connections.Add(-1)
		c.overflows.Add(1)
		return nil, fmt.Errorf("%w: max_connections %d reached", ErrOverflow, st.limits.connections)
	}
	timeout := st.m.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		c.connections.Add(-1)
		return nil, &ConnectError{Addr: addr, Err: err}
	}
	return &countedConn{Conn: conn, c: c}, nil
}

// dialH2 dials a connection for HTTP/2, whose writes are coalesced:
// net/http's Transport flushes every frame by itself (see package
// coalesce).
func (c *Cluster) dialH2(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := c.dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return coalesce.New(conn), nil
}

// Dial opens a TCP connection to a host for the TCP proxy, counted in the
// cluster's connections like a pool's.
func (c *Cluster) Dial(ctx context.Context, h *Host) (net.Conn, error) {
	return c.dial(ctx, "tcp", h.Key)
}

// countedConn gives its slot of max_connections back when closed.
type countedConn struct {
	net.Conn
	c    *Cluster
	once sync.Once
}

func (cc *countedConn) Close() error {
	cc.once.Do(func() {
		cc.c.connections.Add(-1)
		// A slot of max_connections is free: HTTP/2 requests pending at
		// the limit may open a connection.
		cc.c.pools.h2c.signal()
	})
	return cc.Conn.Close()
}

// SyscallConn reaches the socket (the pool peeks at idle connections).
func (cc *countedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := cc.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("not a socket")
}

// CloseWrite half-closes (the TCP proxy passes a FIN on).
func (cc *countedConn) CloseWrite() error {
	if cw, ok := cc.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// gotConn tells the request's trace its connection is ready (the proxy
// starts a try's timer then, as Envoy does on a pool's ready
// connection); net/http's Transport, used for upgrades, calls it itself.
func gotConn(ctx context.Context, reused bool) {
	if tr := httptrace.ContextClientTrace(ctx); tr != nil && tr.GotConn != nil {
		tr.GotConn(httptrace.GotConnInfo{Reused: reused})
	}
}
