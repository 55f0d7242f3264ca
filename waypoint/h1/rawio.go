package h1

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

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
	// A write kept for the next read (DeferWrite): pend are its bytes,
	// wtrFn the read callback that sends them first.
	deferNext bool
	pend      []byte
	blocked   bool // the kept write met a full socket: finish it apart
	wtrFn     func(uintptr) bool
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
	rc.readFn, rc.writeFn, rc.wtrFn = rc.doRead, rc.doWrite, rc.doWriteThenRead
	return rc
}

// DeferWrite has the next Write on c (a connection Raw wrapped) keep its
// bytes instead of sending them, and the Read after it send them from
// inside the poller's read: the read state is reset before the bytes go,
// so the answer's arrival wakes the reader, and the reader skips the
// attempt to read that Go's poller otherwise makes first, which fails
// (EAGAIN) whenever the peer has not answered yet: one system call fewer
// per exchange. The caller must not touch the written bytes until that
// Read, and must Read next (a request, then its response). A failed send
// comes back from the Read. Reports whether c can do it.
func DeferWrite(c net.Conn) bool {
	rc, ok := c.(*rawConn)
	if ok {
		rc.deferNext = true
	}
	return ok
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

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rbuf, c.rn, c.rerr = p, 0, nil
	fn, kept := c.readFn, c.pend != nil
	if kept {
		c.wbuf, c.wn, c.werr, c.blocked = c.pend, 0, nil, false
		c.pend = nil
		fn = c.wtrFn
	}
	err := c.raw.Read(fn)
	if kept {
		// The kept write: failed, or stopped at a full socket (then
		// finished here, waiting for room, and the read made as usual).
		wbuf := c.wbuf
		c.wbuf = nil
		switch {
		case c.werr != nil:
			c.rbuf = nil
			return 0, c.werr
		case c.blocked && err == nil:
			if _, werr := c.Write(wbuf[c.wn:]); werr != nil {
				c.rbuf = nil
				return 0, werr
			}
			c.rbuf, c.rn, c.rerr = p, 0, nil
			err = c.raw.Read(c.readFn)
		}
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

func (c *rawConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.deferNext {
		c.deferNext = false
		if c.pend == nil {
			c.pend = p
			return len(p), nil
		}
	}
	if c.pend != nil {
		// A kept write not yet sent goes first (not how DeferWrite is
		// meant to be used, but the bytes keep their order).
		pend := c.pend
		c.pend = nil
		if n, err := c.Write(pend); err != nil {
			return n - len(pend), err
		}
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

// doWriteThenRead sends the kept write, then (false) waits for the
// socket to be readable, then reads.
func (c *rawConn) doWriteThenRead(fd uintptr) bool {
	if c.wn < len(c.wbuf) {
		if c.blocked || c.werr != nil {
			return true
		}
		if done := c.doWrite(fd); !done {
			// A full socket: leave the poller's read to wait for room.
			c.blocked = true
			return true
		}
		if c.werr != nil {
			return true
		}
		return false // sent: wait for the answer
	}
	return c.doRead(fd)
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
