package enforcer

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// A sweep resets the established connections a policy now denies, IPv4
// and IPv6 (through the netlink library and through our own IPv6
// request), and leaves the others open: connections to a dual-stack
// listener (an IPv4 one is a v4-mapped IPv6 socket) and to an IPv4-only
// one, denied by port.
func TestKernelSweepResetsDeniedConnections(t *testing.T) {
	testbed.Require(t)
	n := testbed.NewNetwork(t)
	srv, cli := n.AddPod(t, "server"), n.AddPod(t, "client")
	const denied, allowed, denied4 = 8080, 8081, 8082
	srv.ServeTCP(t, denied, "denied")
	srv.ServeTCP(t, allowed, "allowed")
	serveIPv4Only(t, srv, denied4)

	type conn struct {
		name  string
		c     net.Conn
		r     *bufio.Reader
		reset bool
	}
	var conns []*conn
	for _, d := range []struct {
		addr  netip.Addr
		port  uint16
		reset bool
	}{
		{srv.IP4, denied, true}, {srv.IP6, denied, true}, {srv.IP4, denied4, true},
		{srv.IP4, allowed, false}, {srv.IP6, allowed, false},
	} {
		addr := netip.AddrPortFrom(d.addr, d.port).String()
		c, err := cli.Dial("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		defer c.Close()
		// The greeting: the server has accepted the connection.
		cn := &conn{name: addr, c: c, r: bufio.NewReader(c), reset: d.reset}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := cn.r.ReadString('\n'); err != nil {
			t.Fatalf("greeting on %s: %v", addr, err)
		}
		conns = append(conns, cn)
	}

	var closed int
	err := podns.Do(srv.NSPath, func() error {
		var err error
		closed, err = closeDenied(func(client, server netip.Addr, port uint16) bool {
			if client != cli.IP4 && client != cli.IP6 || server != srv.IP4 && server != srv.IP6 {
				t.Errorf("asked about %s -> %s:%d, not the client and server pods", client, server, port)
			}
			return port != allowed
		})
		return err
	})
	if err != nil || closed != 3 {
		t.Fatalf("sweep closed %d connections (%v), want 3", closed, err)
	}
	for _, cn := range conns {
		_ = cn.c.SetDeadline(time.Now().Add(2 * time.Second))
		if cn.reset {
			if _, err := cn.r.ReadString('\n'); !errors.Is(err, unix.ECONNRESET) {
				t.Errorf("%s: %v, want a reset", cn.name, err)
			}
			continue
		}
		if _, err := io.WriteString(cn.c, "still here\n"); err != nil {
			t.Fatalf("%s: %v", cn.name, err)
		}
		if line, err := cn.r.ReadString('\n'); err != nil || line != "still here\n" {
			t.Errorf("%s, allowed: %q %v", cn.name, line, err)
		}
	}
}

// serveIPv4Only greets and echoes on an AF_INET listener, whose
// connections are AF_INET sockets (a dual-stack one's are AF_INET6).
func serveIPv4Only(t *testing.T, p *testbed.Pod, port uint16) {
	l, err := p.Listen("tcp4", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	testbed.Serve(t, l, func(c net.Conn) {
		if _, err := io.WriteString(c, "ipv4\n"); err == nil {
			_, _ = io.Copy(c, c)
		}
	})
}
