package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/kmesh-go/kmesh/waypoint/internal/coalesce"
	"github.com/kmesh-go/kmesh/waypoint/model"
)

// acceptLoop accepts connections until the listener is closed; each is
// handled on its own goroutine, so a slow client holds up nobody.
func (e *Engine) acceptLoop(b *boundListener) {
	defer close(b.done)
	var backoff time.Duration
	for {
		c, err := b.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors and the like: wait a little, as
			// net/http's server does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			e.log.Warn("waypoint accept failed", "listener", b.key, "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go e.serveConn(b, c)
	}
}

// serveConn reads the PROXY header, sniffs when the chain selector needs
// the protocol, picks the chain and runs it.
func (e *Engine) serveConn(b *boundListener, c net.Conn) {
	// Tracked from the start, so Close ends a connection still sending its
	// header too; an h2c connection is net/http's once handed over.
	if !e.trackConn(c) {
		c.Close()
		return
	}
	tracked := true
	defer func() {
		if tracked {
			e.untrackConn(c)
		}
	}()
	cfg := e.cfg.Load()
	lc := cfg.listeners[b.key]
	if lc == nil {
		// The listener left the configuration while this was accepted.
		c.Close()
		return
	}
	timeout := lc.m.HeaderTimeout
	if timeout == 0 {
		timeout = e.opts.HeaderTimeout
	}
	cs := &connState{peer: addrPort(c.RemoteAddr()), listenerKey: b.key}
	local := addrPort(c.LocalAddr())
	cs.info = model.ConnInfo{Destination: local, Source: cs.peer}

	// One deadline covers the header and the sniffing: a client that
	// never speaks (a server-first protocol without a header) is given
	// up on, never waited for.
	if timeout > 0 {
		// NoTimeout (Envoy's listener_filters_timeout 0s): the header
		// and first bytes are waited for as long as they take.
		c.SetReadDeadline(deadlineFrom(timeout))
	}
	br := readers.Get().(*bufio.Reader)
	br.Reset(c)
	if lc.m.ProxyProtocol {
		src, dst, reason, err := readProxyHeader(br, lc.m.AllowWithoutProxyProtocol)
		if err != nil {
			e.stats.headerFailure(reason)
			if ok, suppressed := e.warn.allow(); ok {
				e.log.Warn("waypoint: closing connection without a valid PROXY header", "listener", lc.m.Name,
					"peer", cs.peer, "reason", reason, "err", err, "timeout", timeout, "suppressed", suppressed)
			}
			c.Close()
			putReader(br)
			return
		}
		if dst.IsValid() {
			cs.info.Source, cs.info.Destination = src, dst
		}
	}
	if lc.needsProtocol(cs.info) {
		proto, nbr, why := e.sniff(c, br, lc.m.ContinueOnFilterTimeout)
		br = nbr
		if why != "" {
			// A client that left before its first byte (a TCP probe, a
			// scan) is no operator's concern: counted, logged at debug.
			if why == "closed" {
				e.log.Debug("waypoint: client closed before its first byte", "listener", lc.m.Name, "peer", cs.peer)
			} else if ok, suppressed := e.warn.allow(); ok {
				e.log.Warn("waypoint: closing connection whose protocol was not detected", "reason", why, "listener", lc.m.Name,
					"peer", cs.peer, "destination", cs.info.Destination, "timeout", timeout, "suppressed", suppressed)
			}
			c.Close()
			putReader(br)
			return
		}
		cs.info.Protocol = proto
	}
	ch := lc.chainFor(cs.info)
	if ch != nil && ch.m.HTTP != nil && cs.info.Protocol == "" {
		// Which HTTP server: h2c or HTTP/1.
		cs.info.Protocol = httpVersion(br, ch.m.HTTP.Codec)
	}
	if timeout > 0 {
		c.SetReadDeadline(time.Time{})
	}

	if ch == nil {
		e.stats.connections.WithLabelValues("none").Inc()
		if ok, suppressed := e.warn.allow(); ok {
			e.log.Warn("waypoint: no filter chain for connection", "listener", lc.m.Name, "peer", cs.peer,
				"destination", cs.info.Destination, "protocol", cs.info.Protocol, "suppressed", suppressed)
		}
		c.Close()
		putReader(br)
		return
	}
	cs.resolved.Store(&resolution{cfg: cfg, chain: ch, source: cfg.snap.Peers.Lookup(cs.peer.Addr())})
	pc := &proxiedConn{Conn: c, br: br, state: cs}
	switch {
	case ch.m.TCP != nil:
		e.stats.connections.WithLabelValues("tcp").Inc()
		e.proxyTCP(pc, cs, cfg, ch)
	case ch.m.Deny != nil:
		e.stats.connections.WithLabelValues("deny").Inc()
		if e.denyConn(pc, cs, ch) {
			e.untrackConn(c)
			tracked = false
		}
	default:
		e.stats.connections.WithLabelValues("http").Inc()
		if e.serveHTTPConn(pc, cs) {
			e.untrackConn(c)
			tracked = false
		}
	}
}

// readers hold the first bytes of connections (PROXY header, sniffing).
// One goes back only where nothing can read it any more: the connection
// closed early, or package h1 done with it without a hijack; TCP chains,
// Deny and h2c keep theirs to the garbage collector.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, sniffBufferSize) }}

func putReader(br *bufio.Reader) {
	if br.Size() != sniffBufferSize {
		// Grown for a long request line (sniff): not the pool's kind.
		return
	}
	br.Reset(nil)
	readers.Put(br)
}

// serveHTTPConn gives an HTTP connection to its server: h2c to net/http's
// (handedOver: it is that server's to close now), HTTP/1 to package h1's
// on this goroutine.
func (e *Engine) serveHTTPConn(pc *proxiedConn, cs *connState) (handedOver bool) {
	if cs.info.Protocol == model.ProtocolHTTP2 || e.opts.NetHTTPServer {
		if cs.info.Protocol == model.ProtocolHTTP2 {
			pc.keepBuffer = true
			// net/http's HTTP/2 server flushes every frame by itself.
			pc.Conn = coalesce.New(pc.Conn)
		}
		if !e.handoff.give(pc) {
			pc.Close()
			return false
		}
		return true
	}
	br := pc.br
	pc.br = nil
	if !e.h1.ServeConn(pc.Conn, br, cs) {
		putReader(br)
	}
	return false
}

// httpVersion tells h2c prior knowledge from HTTP/1 by the first bytes
// ("PRI " starts only the h2 preface); a chain whose codec is fixed says
// it without looking.
func httpVersion(br *bufio.Reader, codec string) string {
	switch codec {
	case "http1":
		return model.ProtocolHTTP1
	case "http2":
		return model.ProtocolHTTP2
	}
	for n := 1; n <= 4; n++ {
		b, err := br.Peek(n)
		if err != nil || b[n-1] != h2Preface[n-1] {
			return model.ProtocolHTTP1
		}
	}
	return model.ProtocolHTTP2
}

// readProxyHeader reads a PROXY header (v1 or v2) and returns the source
// and original destination it names. A LOCAL command (a health check by
// the sender itself) or, when allowed, no header at all leaves both
// invalid: the connection's own addresses stand. reason is the failure
// counter's label.
func readProxyHeader(br *bufio.Reader, allowWithout bool) (src, dst netip.AddrPort, reason string, err error) {
	if allowWithout {
		switch could, err := mayStartProxyHeader(br); {
		case err != nil && !isTimeout(err):
			return src, dst, "invalid", err
		case err != nil || !could:
			// Nothing came in time (a server-first client), or the
			// bytes so far match neither signature: no header.
			return netip.AddrPort{}, netip.AddrPort{}, "", nil
		}
	}
	h, err := proxyproto.Read(br)
	switch {
	case err == nil:
	case errors.Is(err, proxyproto.ErrNoProxyProtocol) && allowWithout:
		return netip.AddrPort{}, netip.AddrPort{}, "", nil
	case isTimeout(err):
		if allowWithout {
			// A server-first client sends nothing: with headers optional
			// that is a connection without one.
			return netip.AddrPort{}, netip.AddrPort{}, "", nil
		}
		return src, dst, "timeout", err
	default:
		return src, dst, "invalid", err
	}
	if h.Command.IsLocal() {
		return netip.AddrPort{}, netip.AddrPort{}, "", nil
	}
	s, d, ok := h.TCPAddrs()
	if !ok {
		return src, dst, "invalid", errors.New("PROXY header without TCP addresses")
	}
	src = netip.AddrPortFrom(s.AddrPort().Addr().Unmap(), s.AddrPort().Port())
	dst = netip.AddrPortFrom(d.AddrPort().Addr().Unmap(), d.AddrPort().Port())
	return src, dst, "", nil
}

// mayStartProxyHeader waits for bytes only while those seen so far are a
// prefix of a PROXY signature (v1 or v2), as Envoy does when headers are
// optional: go-proxyproto alone would wait for 12 bytes once the first is
// a 'P' or a CR, holding a short first message ("PING\r\n") until the
// timeout. false as soon as the start matches neither; an EOF is no
// header either.
func mayStartProxyHeader(br *bufio.Reader) (bool, error) {
	n := 1
	for {
		b, err := br.Peek(n)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return false, nil
			}
			return false, err
		}
		b = b[:br.Buffered()]
		v1 := bytes.HasPrefix(proxyproto.SIGV1, b[:min(len(b), len(proxyproto.SIGV1))])
		v2 := bytes.HasPrefix(proxyproto.SIGV2, b[:min(len(b), len(proxyproto.SIGV2))])
		switch {
		case !v1 && !v2:
			return false, nil
		case v1 && len(b) >= len(proxyproto.SIGV1), v2 && len(b) >= len(proxyproto.SIGV2):
			return true, nil
		}
		n = len(b) + 1
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
