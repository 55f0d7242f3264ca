package bpf_test

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// tcpSocks lists km_tcp_sock.
func tcpSocks(t *testing.T, dp *loader.Datapath) map[uint64]layout.SockValue {
	t.Helper()
	out := map[uint64]layout.SockValue{}
	var k uint64
	var v layout.SockValue
	it := dp.Map(loader.MapTCPSock).Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// cookieOf is a connection's socket cookie (SO_COOKIE).
func cookieOf(t *testing.T, c net.Conn) uint64 {
	t.Helper()
	var cookie uint64
	withFD(t, c.(*net.TCPConn), func(fd int) {
		var err error
		if cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE); err != nil {
			t.Fatal(err)
		}
	})
	return cookie
}

// dialVIP opens n connections from the client to the IPv4 VIP on port 80,
// closed when the test ends.
func (f *fixture) dialVIP(n int) []net.Conn {
	f.t.Helper()
	var conns []net.Conn
	for range n {
		c, err := f.client.Dial("tcp", hostPort(vip4, 80), 2*time.Second)
		if err != nil {
			f.t.Fatal(err)
		}
		f.t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	return conns
}

// waitNoTCPSocks waits until every element is gone.
func waitNoTCPSocks(t *testing.T, dp *loader.Datapath, why string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		left := tcpSocks(t, dp)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d elements left in km_tcp_sock: %+v", why, len(left), left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Each TCP end's element lives exactly as long as its socket: the
// rewritten client's from connect, the server end's from established
// (both pods enrolled, telemetry on), and the close callback deletes them,
// also for a connect the backend refused.
func TestKernelTCPSockElementsLiveWithTheirSockets(t *testing.T) {
	f := newFixtureWith(t, 1, loader.Config{Features: loader.Features{Telemetry: true}})
	f.enroll(f.servers[0], maps.Enrollment{})
	// The fixture's servers listen from outside the data path's cgroup;
	// this one is inside it, as an enrolled pod's server would be.
	ln, err := f.servers[0].Listen("tcp", ":8082")
	if err != nil {
		t.Fatal(err)
	}
	testbed.Serve(t, ln, func(c net.Conn) {
		c.Write([]byte("hi"))
		c.Read(make([]byte, 1)) // until the client closes
	})
	svc := f.service(1, maps.Random, 0)
	svc.Ports = []maps.Port{{Port: 80, TargetPort: 8082}, {Port: 81, TargetPort: 9}} // nothing listens on 9
	f.upsert(svc)

	conns := f.dialVIP(10)
	for _, c := range conns {
		// The server end is established once it has answered.
		if _, err := c.Read(make([]byte, 64)); err != nil {
			t.Fatal(err)
		}
	}
	socks := tcpSocks(t, f.dp)
	roles := map[layout.ConnRole]int{}
	for _, v := range socks {
		roles[v.Conn.Role]++
	}
	if len(socks) != 20 || roles[layout.RoleClient] != 10 || roles[layout.RoleServer] != 10 {
		t.Fatalf("km_tcp_sock holds %d elements by role %v, want 10 clients and 10 servers", len(socks), roles)
	}
	c0 := socks[cookieOf(t, conns[0])]
	if c0.Flags&(layout.SockRewritten|layout.SockConnecting) != layout.SockRewritten|layout.SockConnecting ||
		c0.Orig.Netip() != vip4 || c0.Conn.Cookie != cookieOf(t, conns[0]) {
		t.Errorf("client element %+v: want rewritten, connecting, the VIP dialled and its record", c0)
	}
	for _, c := range conns {
		c.Close()
	}
	waitNoTCPSocks(t, f.dp, "after every connection closed")

	if _, err := f.client.Dial("tcp", hostPort(vip4, 81), 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("connect to a port nothing listens on: %v, want ECONNREFUSED", err)
	}
	waitNoTCPSocks(t, f.dp, "after a refused connect")
}

// A connect that fails before TCP starts (here: no route to the backend)
// leaves its element behind; the janitor removes it at its second sweep
// and leaves open connections alone.
func TestKernelTCPSockJanitorClearsFailedConnects(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	f.upsert(f.service(1, maps.Random, 0))
	// Service 2's only backend is somewhere the client has no route to.
	nowhere := netip.MustParseAddr("10.250.0.1")
	if err := f.maps.UpsertBackend(maps.Backend{ID: 900, Addresses: []netip.Addr{nowhere}}); err != nil {
		t.Fatal(err)
	}
	vip2 := netip.MustParseAddr("10.96.0.20")
	f.upsert(maps.Service{ID: 2, VIPs: []netip.Addr{vip2}, Ports: []maps.Port{{Port: 80, TargetPort: serverPort}},
		Endpoints: [][]uint32{{900}}})

	open, err := f.client.Dial("tcp", hostPort(vip4, 80), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if _, err := f.client.Dial("tcp", hostPort(vip2, 80), 2*time.Second); !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("connect to a backend with no route: %v, want ENETUNREACH", err)
	}
	if n := len(tcpSocks(t, f.dp)); n != 2 {
		t.Fatalf("km_tcp_sock holds %d elements, want the open connection's and the failed connect's", n)
	}

	j, err := f.dp.NewTCPSockJanitor()
	if err != nil {
		t.Fatal(err)
	}
	if n, err := j.Sweep(); err != nil || n != 0 {
		t.Fatalf("first sweep removed %d (%v), want 0: an element is only suspect after one", n, err)
	}
	if n, err := j.Sweep(); err != nil || n != 1 {
		t.Fatalf("second sweep removed %d (%v), want the failed connect's element", n, err)
	}
	if n, max := j.Usage(); n != 1 || max != int(loader.DefaultSizes().TCPSockets) {
		t.Errorf("janitor usage %d of %d, want 1 of %d", n, max, loader.DefaultSizes().TCPSockets)
	}
	socks := tcpSocks(t, f.dp)
	if _, ok := socks[cookieOf(t, open)]; !ok || len(socks) != 1 {
		t.Fatalf("after the sweeps km_tcp_sock holds %+v, want only the open connection", socks)
	}
	if got := peerName(t, open); got != netip.AddrPortFrom(vip4, 80) {
		t.Errorf("getpeername of the open connection = %s, want the VIP", got)
	}
}

// A full km_tcp_sock is counted, and the socket that did not fit still
// connects (getpeername then shows the backend).
func TestKernelTCPSockFullIsCounted(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{TCPSockets: 2})
	f.upsert(f.service(1, maps.Random, 0))

	conns := f.dialVIP(3)
	if n := f.stat("tcp_sock_full"); n != 1 {
		t.Errorf("tcp_sock_full = %d, want 1", n)
	}
	if got := peerName(t, conns[2]); got != netip.AddrPortFrom(f.servers[0].IP4, serverPort) {
		t.Errorf("getpeername of the socket that did not fit = %s, want the backend", got)
	}
	if got := peerName(t, conns[0]); got != netip.AddrPortFrom(vip4, 80) {
		t.Errorf("getpeername of a socket that fit = %s, want the VIP", got)
	}
	var v layout.SockValue
	if err := f.dp.Map(loader.MapTCPSock).Lookup(cookieOf(t, conns[2]), &v); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("the socket that did not fit has an element (%v)", err)
	}
}
