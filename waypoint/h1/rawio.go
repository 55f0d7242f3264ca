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
	rc.readFn, rc.writeFn = rc.doRead, rc.doWrite
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

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rbuf, c.rn, c.rerr = p, 0, nil
	err := c.raw.Read(c.readFn)
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
