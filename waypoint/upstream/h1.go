package upstream

// HTTP/1.1 to endpoints: the cluster's connection pool, with the
// exchange on the caller's goroutine (the wire format is package
// waypoint/h1's; why not net/http's Transport is said there). Besides
// speed it gives what the Transport cannot: Envoy's per-cluster
// max_connections with pending requests queued (bounded by
// max_pending_requests) until a connection frees up, and
// max_requests_per_connection.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/waypoint/h1"
)

const (
	h1BufSize = 8 << 10
	// inlineBody: a request body of known length up to this is written
	// with the headers before the response is read; a longer one, or one
	// of unknown length (a stream), is written by its own goroutine while
	// the response is read, so an upstream that answers early is heard.
	inlineBody = 64 << 10
)

var aLongTimeAgo = time.Unix(1, 0)

// h1Pool holds a cluster's idle HTTP/1.1 connections by endpoint.
type h1Pool struct {
	c       *Cluster
	mu      sync.Mutex
	idle    map[string][]*h1Conn // LIFO: the warmest connection first
	nIdle   int
	waiters int
	wake    chan struct{} // closed when a connection is released or closed
	sweep   *time.Timer
	closed  bool
}

func newH1Pool(c *Cluster) *h1Pool {
	return &h1Pool{c: c, idle: map[string][]*h1Conn{}, wake: make(chan struct{})}
}

// h1Conn is one connection to an endpoint.
type h1Conn struct {
	p        *h1Pool
	host     string
	conn     net.Conn
	sock     net.Conn // the socket of h1.Raw under conn, nil when none
	rc       countingReader
	br       *bufio.Reader
	bw       *bufio.Writer
	parser   h1.Parser
	requests int
	idleAt   time.Time
	// abort unblocks the connection's I/O when a request's context ends
	// (made once: a closure per request is an allocation per request);
	// unhook clears it from the client-gone hook of the current request.
	abort  func()
	unhook func() bool
	hook   *h1.ClientGone
	// The liveness look (alive): the socket, and a function made once
	// with its state here (a closure per look cost three allocations).
	raw     syscall.RawConn
	peek    func(fd uintptr) bool
	peekBuf [1]byte
	live    bool
	// warm: idle for less than holdWithin when the pool handed it out.
	warm bool
}

// countingReader counts bytes read from the socket, so a failure can be
// told apart as "before any response byte" (a stale keep-alive connection
// the server closed) or not.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// get returns a connection to host: an idle one, a new one within
// max_connections, or, at the limit, the next one released (a pending
// request, bounded by max_pending_requests).
// With fresh (the retry after a stale connection), the endpoint's idle
// connections are closed instead of used: they idled at least as long as
// the one found dead (the pool hands out its newest first).
func (p *h1Pool) get(ctx context.Context, host string, fresh, probe bool) (*h1Conn, bool, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, false, errors.New("cluster removed")
		}
		if fresh {
			stale := p.idle[host]
			delete(p.idle, host)
			p.nIdle -= len(stale)
			fresh = false
			if len(stale) > 0 {
				p.mu.Unlock()
				for _, pc := range stale {
					pc.conn.Close()
				}
				continue
			}
		} else if pc := p.popIdle(host); pc != nil {
			p.mu.Unlock()
			if !pc.alive(probe) {
				pc.conn.Close()
				continue
			}
			return pc, true, nil
		}
		st := p.c.state.Load()
		if p.c.connections.Load() < st.limits.connections {
			p.mu.Unlock()
			pc, err := p.dial(ctx, host)
			if errors.Is(err, ErrOverflow) {
				continue // lost a race for the last slot: wait like the others
			}
			return pc, false, err
		}
		// At the limit. An idle connection to another endpoint gives its
		// slot up to this one.
		if victim := p.popAnyIdle(); victim != nil {
			p.mu.Unlock()
			victim.conn.Close()
			continue
		}
		if int64(p.waiters) >= st.limits.pending {
			p.mu.Unlock()
			p.c.overflows.Add(1)
			return nil, false, fmt.Errorf("%w: max_pending_requests %d reached", ErrOverflow, st.limits.pending)
		}
		p.waiters++
		wake := p.wake
		p.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
		}
		p.mu.Lock()
		p.waiters--
		p.mu.Unlock()
		if ctx.Err() != nil {
			return nil, false, context.Cause(ctx)
		}
	}
}

// popAnyIdle takes the oldest idle connection of any endpoint. Called with
// mu held.
func (p *h1Pool) popAnyIdle() *h1Conn {
	if p.nIdle == 0 {
		return nil
	}
	for h, list := range p.idle {
		if len(list) > 0 {
			pc := list[0]
			p.idle[h] = list[1:]
			p.nIdle--
			return pc
		}
	}
	return nil
}

// popIdle takes the newest idle connection to host that has not outlived
// the idle timeout. Called with mu held.
func (p *h1Pool) popIdle(host string) *h1Conn {
	list := p.idle[host]
	idleTimeout := p.c.idleTimeout()
	for len(list) > 0 {
		pc := list[len(list)-1]
		list = list[:len(list)-1]
		p.nIdle--
		if time.Since(pc.idleAt) < idleTimeout {
			p.idle[host] = list
			return pc
		}
		go pc.conn.Close()
	}
	delete(p.idle, host)
	return nil
}

// livenessAfter: a connection idle for longer is checked before use. An
// endpoint closes idle connections after seconds (fortio and Go servers
// after 30 s, nginx 75 s); Envoy's pool sees the FIN as it comes, ours
// looks when it matters, at the cost of a read only for connections that
// idled. A request that may not go twice is looked at sooner
// (livenessAfterUnsafe): an endpoint shutting down closes its idle
// connections at once, and such a request cannot be resent once it went
// out on one. Not at every use: with 64 connections at saturation each
// idles ~3 ms between requests, and a look there cost 8% of the request
// rate (kmesh-bench L7-2, c=64, with a 1 ms threshold).
const (
	livenessAfter       = time.Second
	livenessAfterUnsafe = 100 * time.Millisecond
)

// holdWithin: a kept connection idle for less has its request's write
// held for the response's read (h1.HoldWrite), as a new one always has.
// The wait that follows forgets whatever came before it: a FIN of an
// endpoint that shut its side and reads on without answering (a
// lingering close) would then be seen only when the endpoint closes for
// good (Apache: 2 s on), where the read tried first sees it at once and
// the request goes again on a new connection. An endpoint does that when
// it ends an idle keep-alive connection, seconds after its last answer;
// within 5 ms of one, only a shutdown that happens to fall there. At
// saturation the pool hands out connections idle for microseconds (the
// warmest first), ~3 ms at 64 connections: held, they skip a read that
// fails (EAGAIN) per request.
const holdWithin = 5 * time.Millisecond

// alive reports whether an idle connection can carry a request: nothing
// arrived on it meanwhile (a FIN, or an unsolicited answer before a
// close). A non-blocking peek at the socket: a read with a past deadline
// would not even look.
func (pc *h1Conn) alive(strict bool) bool {
	after := livenessAfter
	if strict {
		after = livenessAfterUnsafe
	}
	idle := time.Since(pc.idleAt)
	pc.warm = idle < holdWithin
	if idle < after {
		return true
	}
	if pc.br.Buffered() > 0 {
		return false
	}
	if pc.raw == nil {
		return true
	}
	pc.live = false
	if err := pc.raw.Read(pc.peek); err != nil {
		return false
	}
	return pc.live
}

// peekFd looks at the socket without waiting: alive when nothing is
// there to read (EAGAIN), not at EOF or an unsolicited byte.
func (pc *h1Conn) peekFd(fd uintptr) bool {
	// recvfrom(2) itself: unix.Recvfrom allocates the sender's address.
	_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&pc.peekBuf[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	pc.live = errno == unix.EAGAIN
	return true
}

func (p *h1Pool) dial(ctx context.Context, host string) (*h1Conn, error) {
	conn, err := p.c.dial(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	// Raw reads and writes: see package h1 (rawio.go).
	pc := &h1Conn{p: p, host: host, conn: conn}
	if cc, ok := conn.(*countedConn); ok {
		cc.Conn = h1.Raw(cc.Conn)
		pc.sock = cc.Conn
	}
	pc.abort = func() { pc.conn.SetDeadline(aLongTimeAgo) }
	pc.unhook = func() bool {
		g := pc.hook
		pc.hook = nil
		return g.Set(nil)
	}
	if sc, ok := conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			pc.raw, pc.peek = raw, pc.peekFd
		}
	}
	pc.rc.r = conn
	pc.br = bufio.NewReaderSize(&pc.rc, h1BufSize)
	pc.bw = bufio.NewWriterSize(conn, h1BufSize)
	return pc, nil
}

// release returns a connection to the pool, or closes it.
func (p *h1Pool) release(pc *h1Conn, reuse bool) {
	p.mu.Lock()
	if max := p.c.state.Load().m.MaxRequestsPerConnection; max > 0 && pc.requests >= max {
		reuse = false
	}
	if reuse && !p.closed {
		pc.idleAt = time.Now()
		p.idle[pc.host] = append(p.idle[pc.host], pc)
		p.nIdle++
		if p.sweep == nil {
			p.sweep = time.AfterFunc(p.c.idleTimeout(), p.sweepIdle)
		}
	}
	if p.waiters > 0 {
		close(p.wake)
		p.wake = make(chan struct{})
	}
	p.mu.Unlock()
	if !reuse {
		pc.conn.Close()
	}
}

// sweepIdle closes connections idle for longer than the idle timeout.
func (p *h1Pool) sweepIdle() {
	timeout := p.c.idleTimeout()
	var stale []*h1Conn
	p.mu.Lock()
	for h, list := range p.idle {
		keep := list[:0]
		for _, pc := range list {
			if time.Since(pc.idleAt) >= timeout {
				stale = append(stale, pc)
			} else {
				keep = append(keep, pc)
			}
		}
		p.nIdle -= len(list) - len(keep)
		if len(keep) == 0 {
			delete(p.idle, h)
		} else {
			p.idle[h] = keep
		}
	}
	if p.nIdle > 0 && !p.closed {
		p.sweep.Reset(timeout)
	} else {
		p.sweep = nil
	}
	p.mu.Unlock()
	for _, pc := range stale {
		pc.conn.Close()
	}
}

// closeIdle closes the idle connections; with final, the pool takes no
// connection back from now on.
func (p *h1Pool) closeIdle(final bool) {
	p.mu.Lock()
	var all []*h1Conn
	for _, list := range p.idle {
		all = append(all, list...)
	}
	p.idle, p.nIdle = map[string][]*h1Conn{}, 0
	if final {
		p.closed = true
		close(p.wake)
		p.wake = make(chan struct{})
	}
	p.mu.Unlock()
	for _, pc := range all {
		pc.conn.Close()
	}
}

func (c *Cluster) idleTimeout() time.Duration {
	if t := c.state.Load().m.IdleTimeout; t > 0 {
		return t
	}
	return DefaultIdleTimeout
}

// roundTrip sends req to host over HTTP/1.1 and returns the response
// once its headers are in; the body streams from the connection, which
// goes back to the pool when the body has been read to its end.
func (p *h1Pool) roundTrip(ctx context.Context, req *http.Request, host string) (*http.Response, error) {
	// A request that may not go twice (see exchange) is not sent on a
	// kept connection the endpoint already closed (it shut down, its idle
	// timeout passed): see livenessAfterUnsafe.
	probe := !idempotent(req)
	for try := 0; ; try++ {
		pc, reused, err := p.get(ctx, host, try > 0, probe)
		if err != nil {
			return nil, err
		}
		gotConn(ctx, reused)
		resp, err := pc.exchange(ctx, req)
		if err == nil {
			return resp, nil
		}
		var se *staleError
		if errors.As(err, &se) && reused && try == 0 && ctx.Err() == nil {
			// A keep-alive connection the endpoint had closed: once more on
			// a new connection, as net/http's Transport does.
			if req.Body != nil {
				b := rewind(req)
				if b == nil {
					return nil, se.err
				}
				// A copy of the request with the new body: the first
				// attempt's body writer may still be reading the old one.
				old := req.Body
				r := *req
				r.Body = b
				req = &r
				old.Close()
			}
			continue
		}
		if se != nil {
			return nil, se.err
		}
		return nil, err
	}
}

// Rewinder is a request body that can start over (the proxy's kept
// body), which spares a GetBody closure per request.
type Rewinder interface{ Rewind() io.ReadCloser }

// rewind is the request's body from its start, or nil.
func rewind(req *http.Request) io.ReadCloser {
	if rw, ok := req.Body.(Rewinder); ok {
		return rw.Rewind()
	}
	if req.GetBody != nil {
		if b, err := req.GetBody(); err == nil {
			return b
		}
	}
	return nil
}

// staleError is a failure on a connection before anything of a response
// arrived, where retrying on a new connection is safe.
type staleError struct{ err error }

func (e *staleError) Error() string { return e.err.Error() }

// exchange writes one request and reads its response headers.
func (pc *h1Conn) exchange(ctx context.Context, req *http.Request) (*http.Response, error) {
	pc.requests++
	// Cancellation (the client left, a timeout) unblocks the socket.
	stop := noStop
	var into *h1.Fields
	if g := h1.Hook(ctx); g != nil {
		// A request of our HTTP/1 server without a deadline of its own:
		// only its client leaving ends it. Its response header goes into
		// the downstream connection's reused map (one attempt at a time
		// runs on this goroutine: a retry's response replaces a discarded
		// one).
		into = g.Response()
		pc.hook = g
		stop = pc.unhook
		if !g.Set(pc.abort) {
			stop()
			pc.p.release(pc, true)
			return nil, context.Canceled
		}
	} else if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, pc.abort)
	}
	readBefore := pc.rc.n
	// A failure before any response byte on a connection the endpoint
	// closed can be sent again on a new one when the body can be.
	_, rewinds := req.Body.(Rewinder)
	// As net/http's Transport: once the request went out, only one that
	// is idempotent may go again (the endpoint may have acted on it before
	// it dropped the connection).
	replayable := (req.Body == nil || req.GetBody != nil || rewinds) && idempotent(req)
	fail := func(err error, safe bool) (*http.Response, error) {
		stop()
		pc.p.release(pc, false)
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		if safe {
			return nil, &staleError{err}
		}
		return nil, err
	}

	h1.WriteRequestHead(pc.bw, req)
	var bodyDone chan error
	inline := req.Body == nil || (req.ContentLength >= 0 && req.ContentLength <= inlineBody)
	if inline {
		if err := h1.WriteBody(pc.bw, req); err != nil {
			if errors.Is(err, h1.ErrBodyRead) {
				return fail(err, false)
			}
			// The endpoint may have answered early and closed: read on.
			bodyDone = make(chan error, 1)
			bodyDone <- err
		} else {
			// On a new connection, or a kept one idle for less than
			// holdWithin, the response's read writes the request
			// (h1.HoldWrite): no read that fails before the wait for it.
			// Nothing else writes to the connection before that read.
			// Not on others: the wait forgets whatever arrived before it
			// (see holdWithin). Nor when bytes of the endpoint's wait in
			// the reader: the response is parsed from them without a read,
			// which would then never send the request.
			if pc.bw.Buffered() > 0 && pc.br.Buffered() == 0 && pc.sock != nil && (pc.rc.n == 0 || pc.warm) {
				h1.HoldWrite(pc.sock)
			}
			// The requests of one poll reach the endpoint together.
			h1.YieldBeforeWrite()
			if err := pc.bw.Flush(); err != nil {
				return fail(err, replayable)
			}
		}
	} else {
		if err := pc.bw.Flush(); err != nil {
			return fail(err, replayable)
		}
		bodyDone = make(chan error, 1)
		go func() {
			err := h1.WriteBody(pc.bw, req)
			if err == nil {
				err = pc.bw.Flush()
			}
			bodyDone <- err
		}()
	}

	var resp *http.Response
	var err error
	informational := 0
	for {
		resp, err = pc.parser.ReadResponseInto(pc.br, req.Method, into)
		if err != nil {
			nothing := pc.rc.n == readBefore && pc.br.Buffered() == 0
			if bodyDone != nil {
				// Whatever the writer is doing, the connection is done.
				// It is not waited for: it may be in a read of a body the
				// client holds back (a stalled upload, one that waits for
				// a 100 Continue), and its writes go to this connection's
				// own buffer, which closes.
				pc.conn.SetDeadline(aLongTimeAgo)
			}
			// A reused connection closed before any byte of a response
			// (ReadResponse says unexpected EOF then) is one the endpoint
			// closed while it sat idle in the pool: Envoy's pool would have
			// seen the FIN and dropped it; nothing was processed, so the
			// request goes again on a new connection when it can be sent
			// again (no body, or one kept for replay).
			closed := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err)
			return fail(err, nothing && closed && replayable)
		}
		// 1xx responses (100 Continue, 103 Early Hints) precede the real
		// one; a few, as net/http's Transport takes (an endpoint sending
		// them without end would hold the request for good where no
		// timeout is set, istiod's default).
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			if informational++; informational > maxInformational {
				if bodyDone != nil {
					pc.conn.SetDeadline(aLongTimeAgo) // the body's writer ends too
				}
				return fail(fmt.Errorf("more than %d 1xx responses", maxInformational), false)
			}
			continue
		}
		break
	}
	// A 101 this pool never asked for (upgrades go through net/http's
	// Transport): what follows it is not HTTP/1.1 of ours.
	reuse := !resp.Close && !req.Close && resp.StatusCode != http.StatusSwitchingProtocols
	resp.Body = &h1Body{rc: resp.Body, pc: pc, stop: stop, reuse: reuse, bodyDone: bodyDone}
	return resp, nil
}

// maxInformational bounds the 1xx responses before the final one
// (net/http's Transport takes 5).
const maxInformational = 5

func noStop() bool { return true }

// idempotent: a method RFC 9110 calls safe to repeat that net/http's
// Transport repeats (GET, HEAD, OPTIONS, TRACE), or a request carrying an
// idempotency key.
func idempotent(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

func isReset(err error) bool {
	s := err.Error()
	return strings.Contains(s, "connection reset") || strings.Contains(s, "broken pipe")
}

// h1Body is a response body that gives its connection back at its end.
type h1Body struct {
	rc       io.ReadCloser
	pc       *h1Conn
	stop     func() bool
	reuse    bool
	bodyDone chan error // the request body writer, when one runs
	done     atomic.Bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done.Load() {
		// The connection (and its parser's body) may serve another request
		// by now.
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

// Close before the end closes the connection: the rest of the body
// would have to be read to reuse it.
func (b *h1Body) Close() error {
	b.finish(false)
	return nil
}

func (b *h1Body) finish(complete bool) {
	if b.done.Swap(true) {
		return
	}
	reuse := complete && b.reuse
	if reuse && b.pc.br.Buffered() > 0 {
		// The endpoint sent more than this response (a second answer, a
		// body after a 204 or an answer to HEAD): nothing of it answers
		// the next request, which would take it for its own. Envoy's codec
		// calls it extraneous data after the response and closes.
		reuse = false
	}
	if b.bodyDone != nil {
		if reuse {
			// The request body must be all written before the connection
			// carries another request. A writer still going means an
			// upstream that answered early; waiting for it could mean
			// waiting on a client that holds the body back, so the
			// connection goes instead.
			select {
			case err := <-b.bodyDone:
				reuse = err == nil
			default:
				reuse = false
			}
		}
		if !reuse {
			// Not waited for either: the writer's writes go to this
			// connection's own buffer, which closes.
			b.pc.conn.SetDeadline(aLongTimeAgo)
		}
	}
	if !b.stop() {
		// The context fired: the deadline is in the past, the connection
		// is of no use.
		reuse = false
	}
	b.pc.p.release(b.pc, reuse)
}
