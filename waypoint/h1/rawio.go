package h1

import (
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

// YieldBeforeWrite lets the goroutines that are ready to run reach their
// own writes before the caller makes its write: the server before a
// response goes to its client, the upstream client before a request goes
// to its endpoint. One poll wakes the goroutines of several connections;
// yielding, they parse and route, then write one after another, so their
// peers get the requests (or answers) of one poll together and serve them
// in one wake-up, as from an event loop that reads everything ready
// before it writes (HAProxy). Writing as each is done spread them out, and
// a peer that had gone idle between two was woken for each. With nothing
// else ready it returns at once, though runtime.Gosched wakes an idle P's
// thread (wakep) first: at a fixed 1000 qps, three alternated rounds with
// and without the yield read p90 2.62-2.79 against 2.68-2.80 ms and the
// waypoint's CPU 103-118 against 112-116 µs per request, so that costs
// nothing measurable.
//
// Measured on kmesh-bench's held L7 path (fortio c=16 at saturation, 1
// KiB each way, each waypoint run alternated with HAProxy's, perf
// counting each process; a machine where a context switch is dear):
// without, the fortio server behind the waypoint was woken 1.04 times per
// request (0.87 behind HAProxy) and the client 0.73 (0.76), and the
// waypoint reached 0.85x HAProxy's max qps (median of 10 pairs); yielding
// before both writes, 0.94 and 0.66 times and 0.93x (11 pairs); before
// the response's write alone, 0.82x (4 pairs). This build against the one
// before it, 5 alternated rounds: 0.79x -> 0.91x HAProxy's max qps (higher
// in every round), the waypoint's CPU 94.9 -> 84.4 µs per request, the
// fortio server's 90.2 -> 81.6. perf's counting makes every system call
// and switch dearer; without it, 14 rounds of 2 s (as make bench's) on a
// machine whose speed varied 3x over them: medians 0.77x -> 0.85x, the
// new build ahead in 10 of the 14. make bench's runs of 9 did not tell it
// from their noise there (0.872x before, 0.858x twice after).
func YieldBeforeWrite() { runtime.Gosched() }

// rawConn reads and writes a socket with raw system calls through the
// poller (syscall.RawConn): the socket is non-blocking, so a read or write
// never blocks in the kernel, and making the call without the runtime's
// syscall bookkeeping keeps the P with the goroutine. With the bookkeeping
// (net.Conn's own Read and Write), a loopback write that runs the
// receiver's TCP input in our time takes long enough for sysmon to count
// the P as blocked, hand it to another thread and wake that thread: the
// runtime's share of a proxied request (measured: see the package
// comment).
type rawConn struct {
	net.Conn
	raw syscall.RawConn
	// Per call state, for the functions made once (a closure per call
	// would be an allocation per call). One reader and one writer at a
	// time, as net.Conn allows.
	rbuf    []byte
	rn      int
	rerr    error
	wbuf    []byte
	wn      int
	werr    error
	readFn  func(uintptr) bool
	writeFn func(uintptr) bool
	heldFn  func(uintptr) bool // writeThenRead
	// A write held for the next read (HoldWrite): hold asks for it, held
	// is it (the caller's buffer, untouched until that read).
	hold bool
	held []byte
}

// Raw wraps c for raw reads and writes when it is a socket; other
// connections come back as they are.
func Raw(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	rc := &rawConn{Conn: c, raw: raw}
	rc.readFn, rc.writeFn, rc.heldFn = rc.doRead, rc.doWrite, rc.writeThenRead
	return rc
}

// SyscallConn reaches the socket itself.
func (c *rawConn) SyscallConn() (syscall.RawConn, error) { return c.raw, nil }

// CloseWrite half-closes, when the connection can.
func (c *rawConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// HoldWrite makes the next Write on c, a connection of Raw, a promise:
// its bytes go out in the next Read, inside the wait for the answer,
// whose first attempt to read is then left out. The caller must Read
// next, with nothing buffered ahead of that read (it must reach the
// socket), and leave the written buffer alone until then (a request's
// flush followed by the read of its response). False when c is not one of
// Raw's; its writes then go out as usual.
//
// Why: a read is tried before every wait (the poller forgets a socket's
// readiness when a wait starts, so data that came before must be looked
// for), and right after a request went out the answer is never there
// yet: one read per exchange that fails with EAGAIN (0.5 per proxied
// request in strace, a system call of ~1 µs). Written after the wait has
// started, the answer cannot come before it, so no readiness is missed.
// What came before the wait is, though: a FIN or bytes the peer sent
// before the request went out wake nothing (a full close does: the
// request meets a reset). Only for a connection on which the peer is
// not expected to have sent anything: its first request, or, the
// caller's judgment, one just after its last answer.
func HoldWrite(c net.Conn) bool {
	rc, ok := c.(*rawConn)
	if ok {
		rc.hold = true
	}
	return ok
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rbuf, c.rn, c.rerr = p, 0, nil
	var err error
	if c.held != nil {
		err = c.raw.Read(c.heldFn)
		if err == nil && c.held != nil && c.rerr == nil {
			// The socket was full: the rest goes out as a write that
			// waits, then the read as usual.
			rest := c.held
			c.held = nil
			if _, werr := c.Write(rest); werr != nil {
				c.rbuf = nil
				return 0, werr
			}
			err = c.raw.Read(c.readFn)
		}
		c.held = nil
	} else {
		err = c.raw.Read(c.readFn)
	}
	c.rbuf = nil
	switch {
	case err != nil:
		// The poller's: a deadline, a closed connection.
		return 0, unwrapRaw(err)
	case c.rerr != nil:
		return 0, c.rerr
	case c.rn == 0:
		return 0, io.EOF
	}
	return c.rn, nil
}

func (c *rawConn) doRead(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)))
		switch errno {
		case 0:
			c.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait for the socket to be readable
		}
		c.rerr = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
		return true
	}
}

// writeThenRead writes the held bytes, then waits for the answer without
// the read that would fail: the first call runs after the wait was
// prepared, so the answer to these bytes wakes it.
func (c *rawConn) writeThenRead(fd uintptr) bool {
	if c.held == nil {
		return c.doRead(fd)
	}
	for len(c.held) > 0 {
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&c.held[0])), uintptr(len(c.held)))
		switch errno {
		case 0:
			c.held = c.held[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return true // Read writes the rest with a write that waits
		default:
			c.held = nil
			c.rerr = &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("write", errno)}
			return true
		}
	}
	c.held = nil
	return false
}

func (c *rawConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.hold {
		c.hold = false
		c.held = p
		return len(p), nil
	}
	c.wbuf, c.wn, c.werr = p, 0, nil
	err := c.raw.Write(c.writeFn)
	c.wbuf = nil
	switch {
	case c.werr != nil:
		return c.wn, c.werr
	case err != nil:
		return c.wn, unwrapRaw(err)
	}
	return c.wn, nil
}

func (c *rawConn) doWrite(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		rest := c.wbuf[c.wn:]
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
		switch errno {
		case 0:
			c.wn += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false // wait for room in the socket
		default:
			c.werr = &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("write", errno)}
			return true
		}
	}
	return true
}

// unwrapRaw turns the raw connection's errors back into what net.Conn's
// Read and Write return (net.OpError with Op "read"/"write" around the
// poller's error), so callers see timeouts and closes as usual.
func unwrapRaw(err error) error {
	if oe, ok := err.(*net.OpError); ok {
		switch oe.Op {
		case "raw-read":
			oe.Op = "read"
		case "raw-write":
			oe.Op = "write"
		}
	}
	return err
}
