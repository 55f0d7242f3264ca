package proxy

import (
	"bufio"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// connState is what the engine knows of a downstream connection.
type connState struct {
	// peer is the TCP peer: the client's real address, the only one an
	// identity is derived from.
	peer netip.AddrPort
	// info: the PROXY header's source and destination (the original
	// destination) and the sniffed protocol.
	info        model.ConnInfo
	listenerKey string
	// resolved is the chain for the current configuration, re-resolved
	// when the configuration changes (keep-alive connections outlive
	// snapshots).
	resolved atomic.Pointer[resolution]
}

// resolution is a connection's chain under one configuration.
type resolution struct {
	cfg   *config
	chain *chain
	// source is the workload at the TCP peer address, nil if unknown.
	source *model.Peer
	// draining: the listener or chain is gone from the current
	// configuration; requests finish on the old one and the connection
	// is closed after the response.
	draining bool
}

// resolve returns the connection's chain under the current configuration.
func (cs *connState) resolve(cur *config) *resolution {
	r := cs.resolved.Load()
	if r.cfg == cur || r.draining {
		return r
	}
	next := &resolution{cfg: cur, source: cur.snap.Peers.Lookup(cs.peer.Addr())}
	if lc := cur.listeners[cs.listenerKey]; lc != nil {
		next.chain = lc.chainFor(cs.info)
	}
	if next.chain == nil || next.chain.m.HTTP == nil && next.chain.m.Deny == nil {
		// Nothing HTTP for this connection any more: finish on the old
		// chain and close.
		next = &resolution{cfg: r.cfg, chain: r.chain, source: r.source, draining: true}
	}
	cs.resolved.CompareAndSwap(r, next)
	return next
}

// proxiedConn is a downstream connection after its PROXY header, with the
// bytes read while sniffing still to be read.
type proxiedConn struct {
	net.Conn
	br    *bufio.Reader // nil once its buffered bytes are read (unless keepBuffer)
	state *connState

	// keepBuffer reads through br for the connection's life. net/http's
	// HTTP/2 server reads a cleartext connection a frame header (9 bytes)
	// and a payload at a time: two read calls per frame, eight per unary
	// gRPC call (HEADERS, DATA, WINDOW_UPDATE, PING), where through the
	// buffer it is about one per batch of frames.
	keepBuffer bool
}

func (c *proxiedConn) Read(p []byte) (int, error) {
	if c.keepBuffer {
		return c.br.Read(p)
	}
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(p)
		}
		// Drained: read the socket directly and let the buffer go.
		c.br = nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the connection (TCP proxy).
func (c *proxiedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// handoff is the net.Listener the HTTP server serves: connections whose
// chain is HTTP are handed to it after their header and sniffing.
type handoff struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newHandoff() *handoff { return &handoff{ch: make(chan net.Conn), done: make(chan struct{})} }

func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.ch:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

// give hands c to the server; false when it is closed.
func (h *handoff) give(c net.Conn) bool {
	select {
	case h.ch <- c:
		return true
	case <-h.done:
		return false
	}
}

func (h *handoff) Close() error {
	h.once.Do(func() { close(h.done) })
	return nil
}

func (h *handoff) Addr() net.Addr { return handoffAddr{} }

type handoffAddr struct{}

func (handoffAddr) Network() string { return "handoff" }
func (handoffAddr) String() string  { return "waypoint-listeners" }

// addrPort converts a net.Addr of a TCP socket. An IPv4 peer of a
// dual-stack listener (Go listens on "0.0.0.0" with an AF_INET6 socket)
// comes as ::ffff:a.b.c.d: it is given back as the IPv4 address it is,
// as the PROXY header and the peers' addresses write it.
func addrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	if ta, ok := a.(*net.TCPAddr); ok {
		ap = ta.AddrPort()
	} else {
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// deadlineFrom is now plus d.
func deadlineFrom(d time.Duration) time.Time { return time.Now().Add(d) }
