package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/netip"
	"testing"
)

// A dual-stack listener's IPv4 peers are IPv4 addresses in the access
// log and for the source (not ::ffff:a.b.c.d); IPv6 ones stay as they are.
func TestAddrPortUnmapsIPv4(t *testing.T) {
	for in, want := range map[net.Addr]string{
		&net.TCPAddr{IP: net.ParseIP("10.244.0.17"), Port: 55570}:  "10.244.0.17:55570", // 16-byte form
		&net.TCPAddr{IP: net.IPv4(10, 244, 0, 17).To4(), Port: 80}: "10.244.0.17:80",
		&net.TCPAddr{IP: net.ParseIP("fd00::17"), Port: 80}:        "[fd00::17]:80",
		handoffAddr{}: "invalid AddrPort",
	} {
		if got := addrPort(in).String(); got != want {
			t.Errorf("addrPort(%v) = %s, want %s", in, got, want)
		}
	}

	// What a listener on 0.0.0.0 gives for an IPv4 client.
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(l.Addr().(*net.TCPAddr).Port)).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if p := addrPort(s.RemoteAddr()); !p.Addr().Is4() || p.String() != c.LocalAddr().String() {
		t.Errorf("peer %s (from %v), want the client's %s", p, s.RemoteAddr(), c.LocalAddr())
	}
	if p := addrPort(s.LocalAddr()); !p.Addr().Is4() {
		t.Errorf("local %s (from %v) is not IPv4", p, s.LocalAddr())
	}
}

// countingConn counts the reads that reach the connection.
type countingConn struct {
	net.Conn
	reads int
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.reads++
	return c.Conn.Read(p)
}

// An h2c connection is read through its buffer for its whole life: the
// frame-header-then-payload reads of net/http's HTTP/2 server are served
// from one read of the socket; other connections drop the buffer once
// the sniffed bytes are read.
func TestProxiedConnKeepsBufferForH2C(t *testing.T) {
	frames := []byte("\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x0f" + // WINDOW_UPDATE
		"\x00\x00\x08\x06\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08") // PING
	for _, keep := range []bool{true, false} {
		a, b := net.Pipe()
		go func() {
			a.Write(frames)
			a.Close()
		}()
		cc := &countingConn{Conn: b}
		br := bufio.NewReaderSize(cc, sniffBufferSize)
		pc := &proxiedConn{Conn: cc, br: br, keepBuffer: keep}
		var got []byte
		for _, n := range []int{9, 4, 9, 8} {
			p := make([]byte, n)
			if _, err := io.ReadFull(pc, p); err != nil {
				t.Fatalf("keepBuffer=%v: read %d: %v", keep, n, err)
			}
			got = append(got, p...)
		}
		if !bytes.Equal(got, frames) {
			t.Fatalf("keepBuffer=%v: read %q, want %q", keep, got, frames)
		}
		if keep && cc.reads != 1 {
			t.Errorf("keepBuffer: %d reads of the connection for two frames, want 1", cc.reads)
		}
		if !keep && cc.reads < 4 {
			t.Errorf("without keepBuffer: %d reads, want one per read call", cc.reads)
		}
		b.Close()
	}
}
