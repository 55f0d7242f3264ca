// Package coalesce gathers the writes a connection gets in one burst into
// one write call.
//
// net/http's HTTP/2 server and Transport flush every frame by itself: a
// unary gRPC call through the waypoint made ~8 write calls (the request's
// HEADERS, DATA and an empty END_STREAM DATA upstream; the response's
// HEADERS, DATA and trailers downstream; PING acks and WINDOW_UPDATEs),
// where HAProxy made ~4 for the same call. Each write to a local peer runs
// the peer's TCP receive on the writer's time and may wake it: half of the
// waypoint's CPU per gRPC call was in those writes.
//
// A Conn's Write appends to a buffer and starts, if none is running, a
// goroutine that writes the buffer out. The goroutine is made runnable on
// the writer's P, so it usually runs when the writer blocks (waiting for
// a frame's answer, a channel, the next read): what the writer wrote until
// then leaves in one call. Nothing waits for a timer, and a writer that
// gets far ahead of the socket waits (at most maxPending bytes are held).
// A write error is returned by the next Write.
package coalesce

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// maxPending bounds the bytes held for writing: a Write that would go
// past it waits for the socket (HTTP/2 frames are 16 KiB by default, so a
// burst of a few frames goes out whole).
const maxPending = 64 << 10

// keepCap is the largest buffer the pool keeps; bigger ones (a long
// burst of DATA) go back to the garbage collector.
const keepCap = 16 << 10

// bufs hold bursts. A connection takes one for a burst and gives it back
// when the burst is written: an idle connection holds none (net/http's
// HTTP/2 server gives its write buffer back when idle for the same
// reason: many idle connections stay cheap).
var bufs = sync.Pool{New: func() any { return &buf{b: make([]byte, 0, 4<<10)} }}

type buf struct{ b []byte }

func putBuf(b *buf) {
	if b == nil || cap(b.b) > keepCap {
		return
	}
	b.b = b.b[:0]
	bufs.Put(b)
}

// closeGrace bounds how long the socket stays open after Close for held
// bytes to be written (an HTTP/2 GOAWAY, the last frames) when the peer
// does not read.
const closeGrace = 250 * time.Millisecond

// Conn is a net.Conn whose writes are coalesced. Reads, addresses and
// deadlines are the underlying connection's.
type Conn struct {
	net.Conn

	mu      sync.Mutex
	cond    sync.Cond // signalled when held bytes leave or an error is set
	pending *buf      // written by the caller, not yet to the socket (nil: none)
	active  bool      // a flusher goroutine owns the socket's writes
	err     error     // the first write error
	// closed: Close was called. Writes fail; a running flusher writes
	// out what is held and closes the socket. Atomic for Read.
	closed atomic.Bool
}

// New wraps c.
func New(c net.Conn) *Conn {
	w := &Conn{Conn: c}
	w.cond.L = &w.mu
	return w
}

// Write holds p for the flusher and returns at once, unless more than
// maxPending bytes are held: then it waits for the socket to take them.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for c.err == nil && !c.closed.Load() && c.pending != nil && len(c.pending.b)+len(p) > maxPending {
		c.cond.Wait()
	}
	if c.closed.Load() {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	if len(p) == 0 {
		c.mu.Unlock()
		return 0, nil
	}
	if c.pending == nil {
		c.pending = bufs.Get().(*buf)
	}
	c.pending.b = append(c.pending.b, p...)
	if !c.active {
		c.active = true
		go c.flush()
	}
	c.mu.Unlock()
	return len(p), nil
}

// flush writes out what is held until nothing is; after Close, it
// closes the socket.
func (c *Conn) flush() {
	c.mu.Lock()
	for c.pending != nil && c.err == nil {
		b := c.pending
		c.pending = nil // the next Write takes another buffer
		c.mu.Unlock()
		_, err := c.Conn.Write(b.b)
		putBuf(b)
		c.mu.Lock()
		if err != nil && c.err == nil {
			c.err = err
			putBuf(c.pending)
			c.pending = nil
		}
		c.cond.Broadcast()
	}
	c.active = false
	closed := c.closed.Load()
	c.cond.Broadcast()
	c.mu.Unlock()
	if closed {
		c.Conn.Close()
	}
}

// Read is the connection's; once Close was called it fails as a closed
// connection's does, though the socket may stay open a little longer for
// the held bytes.
func (c *Conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && c.closed.Load() {
		err = &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: net.ErrClosed}
	}
	return n, err
}

// Flush waits until every byte written so far has reached the socket, and
// returns the write error if one came.
func (c *Conn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.active && c.err == nil {
		c.cond.Wait()
	}
	if c.err == nil && c.closed.Load() {
		return net.ErrClosed
	}
	return c.err
}

// Close closes the connection at once for its user, as a net.Conn's
// Close does: Writes fail, blocked ones included, and Reads end. Bytes
// still held are not lost: the flusher writes them out, within
// closeGrace for a peer that does not read, and closes the socket after
// them. Close does not wait for that, since its callers do not expect it
// to block: net/http's server closes all its connections one after
// another holding its lock, the pools close idle connections holding
// theirs.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.closed.Store(true)
	c.cond.Broadcast() // writers waiting for room give up
	if c.active {
		if c.err == nil {
			c.Conn.SetWriteDeadline(time.Now().Add(closeGrace))
		}
		// The net.Conn contract: Close unblocks a Read.
		c.Conn.SetReadDeadline(time.Now())
		c.mu.Unlock()
		return nil
	}
	putBuf(c.pending)
	c.pending = nil
	c.mu.Unlock()
	return c.Conn.Close()
}

// CloseWrite half-closes the connection after what is held is written
// (an HTTP/1 connection net/http serves on a chain fixed to HTTP/2, an
// upgrade's stream): the FIN must not overtake the answer.
func (c *Conn) CloseWrite() error {
	if err := c.Flush(); err != nil {
		return err
	}
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
