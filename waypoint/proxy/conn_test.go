package proxy

import (
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
