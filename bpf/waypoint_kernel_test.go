package bpf_test

// Kernel tests of the way to a waypoint: the connect hook sends TCP to a
// waypoint pod on the node's waypoint port, sockops files the socket in
// km_wp_sock, and the sk_msg program puts a PROXY v2 header naming the
// original destination in front of the client's first bytes. The fake
// waypoints here record the bytes they receive; go-proxyproto is the
// reference parser of what they got.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

var (
	wpVIP4 = netip.MustParseAddr("10.96.0.50")
	wpVIP6 = netip.MustParseAddr("fd00:96::50")
)

const (
	wpServiceID = 50
	payload     = "GET / HTTP/1.1\r\nHost: web\r\n\r\n"
)

// fakeWaypoint is a waypoint pod listening on the waypoint port. For each
// connection it records what arrives until the client stops sending (or
// wait passes), then answers its own name and closes. With greetFirst it
// speaks first, as the server of a server-first protocol would.
type fakeWaypoint struct {
	*testbed.Pod
	ln         net.Listener
	id         uint32 // its workload id
	got        chan []byte
	wait       time.Duration
	greetFirst bool
}

// addWaypoint makes a waypoint pod with workload id, listening from inside
// the data path's cgroup (as a waypoint pod's proxy would).
func (f *fixture) addWaypoint(name string, id uint32) *fakeWaypoint {
	f.t.Helper()
	w := &fakeWaypoint{Pod: f.net.AddPod(f.t, name), id: id, got: make(chan []byte, 256), wait: 3 * time.Second}
	ln, err := w.Listen("tcp", fmt.Sprintf(":%d", loader.DefaultWaypointPort))
	if err != nil {
		f.t.Fatal(err)
	}
	w.ln = ln
	testbed.Serve(f.t, ln, func(c net.Conn) {
		if w.greetFirst {
			io.WriteString(c, "220 "+name+"\n")
		}
		c.SetReadDeadline(time.Now().Add(w.wait))
		b, _ := io.ReadAll(c)
		w.got <- b
		io.WriteString(c, name+"\n")
	})
	if err := f.maps.UpsertBackend(maps.Backend{ID: id, Addresses: []netip.Addr{w.IP4, w.IP6}}); err != nil {
		f.t.Fatal(err)
	}
	return w
}

// received is what the waypoint recorded for its next connection.
func (w *fakeWaypoint) received(t *testing.T) []byte {
	t.Helper()
	select {
	case b := <-w.got:
		return b
	case <-time.After(5 * time.Second):
		t.Fatalf("waypoint %s recorded no connection", w.Name)
		return nil
	}
}

// waypointService is a service (VIPs wpVIP4, wpVIP6) over the given
// waypoint pods.
func (f *fixture) waypointService(policy maps.LBPolicy, pods ...*fakeWaypoint) {
	f.t.Helper()
	var eps []uint32
	for _, p := range pods {
		eps = append(eps, p.id)
	}
	f.upsert(maps.Service{ID: wpServiceID, VIPs: []netip.Addr{wpVIP4, wpVIP6}, Ports: []maps.Port{{Port: 15008}},
		Policy: policy, Endpoints: [][]uint32{eps}})
}

// behindWaypoint puts the waypoint service over the given pods and service
// 1 (vip4, vip6 port 80) behind it, and returns service 1.
func (f *fixture) behindWaypoint(pods ...*fakeWaypoint) maps.Service {
	f.t.Helper()
	f.waypointService(maps.Random, pods...)
	svc := f.service(1, maps.Random, 0)
	svc.Waypoint = maps.ServiceRef(wpServiceID)
	f.upsert(svc)
	return svc
}

// talk dials addr from the client pod, sends the payload, half-closes and
// returns the waypoint's answer with the connection's own ends.
func (f *fixture) talk(addr string) (answer string, local, peer netip.AddrPort) {
	f.t.Helper()
	c, err := f.client.Dial("tcp", addr, 2*time.Second)
	if err != nil {
		f.t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	local = c.LocalAddr().(*net.TCPAddr).AddrPort()
	peer = peerName(f.t, c)
	if _, err := io.WriteString(c, payload); err != nil {
		f.t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	answer, err = testbed.Greeting(c, 5*time.Second)
	if err != nil {
		f.t.Fatalf("%s: no answer: %v", addr, err)
	}
	return answer, local, peer
}

// checkHeader parses what a waypoint received with go-proxyproto and checks
// every byte of the fixed part too: a PROXY v2 header from src to dst,
// then the payload intact.
func checkHeader(t *testing.T, got []byte, src, dst netip.AddrPort) {
	t.Helper()
	v4 := dst.Addr().Unmap().Is4()
	fam, alen := byte(0x21), 36
	if v4 {
		fam, alen = 0x11, 12
	}
	fixed := append([]byte("\r\n\r\n\x00\r\nQUIT\n\x21"), fam, 0, byte(alen))
	if !bytes.HasPrefix(got, fixed) {
		t.Fatalf("received %q, want it to start with the PROXY v2 fixed header %q", got[:min(len(got), 16)], fixed)
	}
	r := bufio.NewReader(bytes.NewReader(got))
	h, err := proxyproto.Read(r)
	if err != nil {
		t.Fatalf("go-proxyproto cannot read %q: %v", got, err)
	}
	want := proxyproto.TCPv6
	if v4 {
		want = proxyproto.TCPv4
	}
	if h.Version != 2 || !h.Command.IsProxy() || h.TransportProtocol != want {
		t.Errorf("header version %d command %v transport %v, want 2 PROXY %v", h.Version, h.Command, h.TransportProtocol, want)
	}
	s, d, ok := h.TCPAddrs()
	if !ok {
		t.Fatalf("header addresses %v -> %v are not TCP", h.SourceAddr, h.DestinationAddr)
	}
	unmap := func(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }
	if got := unmap(s.AddrPort()); got != unmap(src) {
		t.Errorf("header source %s, want the client's own %s", got, unmap(src))
	}
	if got := unmap(d.AddrPort()); got != unmap(dst) {
		t.Errorf("header destination %s, want what the client dialled, %s", got, unmap(dst))
	}
	if len(got) != 16+alen+len(payload) {
		t.Errorf("%d bytes received, want %d of header and the %d of the payload", len(got), 16+alen, len(payload))
	}
	if rest, _ := io.ReadAll(r); string(rest) != payload {
		t.Errorf("after the header %q, want the client's payload %q", rest, payload)
	}
}

// wpSocks lists the sockets (cookies) waiting in km_wp_sock.
func wpSocks(t *testing.T, dp *loader.Datapath) []uint64 {
	t.Helper()
	var out []uint64
	var k, v uint64
	it := dp.Map(loader.MapWpSock).Iterate()
	for it.Next(&k, &v) {
		out = append(out, k)
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// Every way to a waypoint, with the kernel's features off (the header does
// not depend on them) and on: a service VIP of each family (a waypoint
// service), a pod addressed directly (a waypoint workload) of each family,
// and an AF_INET6 socket dialling a v4-mapped VIP. The waypoint reads a
// PROXY v2 header naming what the client dialled, then the payload;
// getpeername shows the address dialled.
func TestKernelWaypointGetsProxyHeader(t *testing.T) {
	for _, feat := range []loader.Features{{}, {Telemetry: true, SockmapAccel: true}} {
		t.Run(fmt.Sprintf("telemetry=%v,accel=%v", feat.Telemetry, feat.SockmapAccel), func(t *testing.T) {
			f := newFixtureWith(t, 2, loader.Config{Features: feat})
			wp := f.addWaypoint("wp0", 150)
			f.behindWaypoint(wp)
			// s1's own address has a waypoint workload.
			if err := f.maps.UpsertBackend(maps.Backend{ID: wid(1), Addresses: []netip.Addr{f.servers[1].IP4, f.servers[1].IP6},
				Waypoint: maps.WorkloadRef(wp.id)}); err != nil {
				t.Fatal(err)
			}
			dests := map[string]netip.AddrPort{
				"VIP v4": netip.AddrPortFrom(vip4, 80),
				"VIP v6": netip.AddrPortFrom(vip6, 80),
				"pod v4": netip.AddrPortFrom(f.servers[1].IP4, serverPort),
				"pod v6": netip.AddrPortFrom(f.servers[1].IP6, serverPort),
			}
			for name, dst := range dests {
				before := f.stat("wp_header")
				answer, local, peer := f.talk(dst.String())
				if answer != "wp0" {
					t.Fatalf("%s: answered by %q, want the waypoint", name, answer)
				}
				if peer != dst {
					t.Errorf("%s: getpeername %s, want what was dialled, %s", name, peer, dst)
				}
				checkHeader(t, wp.received(t), local, dst)
				if n := f.stat("wp_header") - before; n != 1 {
					t.Errorf("%s: wp_header counted %d, want 1", name, n)
				}
			}
			f.v4MappedToWaypoint(wp)
			if left := wpSocks(t, f.dp); len(left) != 0 {
				t.Errorf("km_wp_sock still holds %v: a socket leaves it with its header", left)
			}
		})
	}
}

// v4MappedToWaypoint dials ::ffff:VIP from an AF_INET6 socket: an IPv4
// connection, so the header takes the IPv4 form.
func (f *fixture) v4MappedToWaypoint(wp *fakeWaypoint) {
	t := f.t
	t.Helper()
	mapped := netip.AddrFrom16(vip4.As16())
	var local netip.AddrPort
	var answer string
	err := podns.Do(f.client.NSPath, func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, &unix.SockaddrInet6{Port: 80, Addr: mapped.As16()}); err != nil {
			return fmt.Errorf("connect %s: %w", mapped, err)
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return err
		}
		s6 := sa.(*unix.SockaddrInet6)
		local = netip.AddrPortFrom(netip.AddrFrom16(s6.Addr), uint16(s6.Port))
		if _, err := unix.Write(fd, []byte(payload)); err != nil {
			return err
		}
		unix.Shutdown(fd, unix.SHUT_WR)
		buf := make([]byte, 64)
		n, err := unix.Read(fd, buf)
		answer = strings.TrimSpace(string(buf[:max(n, 0)]))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if answer != wp.Name {
		t.Fatalf("v4-mapped: answered by %q", answer)
	}
	checkHeader(t, wp.received(t), local, netip.AddrPortFrom(vip4, 80))
}

// A waypoint service with two pods: its own load balancing spreads the
// clients over both.
func TestKernelWaypointSpreadsOverItsPods(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	wps := []*fakeWaypoint{f.addWaypoint("wp0", 150), f.addWaypoint("wp1", 151)}
	f.behindWaypoint(wps...)
	counts := map[string]int{}
	for range 100 {
		answer, _, _ := f.talk(hostPort(vip4, 80))
		counts[answer]++
	}
	for _, w := range wps {
		for len(w.got) > 0 {
			<-w.got
		}
	}
	t.Logf("100 connections: %v", counts)
	// Random over two: mean 50, sd 5.
	if counts["wp0"] < 25 || counts["wp1"] < 25 {
		t.Fatalf("connections over the waypoint's pods: %v, want both used about evenly", counts)
	}
}

// A waypoint's own pod (flagged in km_manage) dialling the same VIP, or a
// pod with a waypoint, reaches the real backend with its bytes untouched:
// no loop through itself, no header.
func TestKernelWaypointPodReachesTheRealBackend(t *testing.T) {
	f := newFixture(t, 2, loader.Sizes{})
	wp := f.addWaypoint("wp0", 150)
	f.behindWaypoint(wp)
	if err := f.maps.UpsertBackend(maps.Backend{ID: wid(1), Addresses: []netip.Addr{f.servers[1].IP4, f.servers[1].IP6},
		Waypoint: maps.WorkloadRef(wp.id)}); err != nil {
		t.Fatal(err)
	}
	f.enroll(wp.Pod, maps.Enrollment{Waypoint: true, WorkloadID: wp.id})
	for dst, want := range map[string]string{
		hostPort(vip4, 80):                     "s0",
		hostPort(vip6, 80):                     "s0",
		hostPort(f.servers[1].IP4, serverPort): "s1",
	} {
		c, err := wp.Dial("tcp", dst, 2*time.Second)
		if err != nil {
			t.Fatalf("waypoint pod to %s: %v", dst, err)
		}
		who, err := testbed.Greeting(c, 2*time.Second)
		if err != nil || who != want {
			c.Close()
			t.Fatalf("waypoint pod to %s: answered by %q (%v), want %s", dst, who, err, want)
		}
		// The backend echoes: exactly what was sent comes back.
		io.WriteString(c, "ping\n")
		echo, err := testbed.Greeting(c, 2*time.Second)
		c.Close()
		if err != nil || echo != "ping" {
			t.Fatalf("waypoint pod to %s: echo %q (%v), want the bytes sent, no header", dst, echo, err)
		}
	}
}

// UDP never goes to a waypoint (waypoints speak TCP only): datagrams to a
// service with one, connected or not, reach its backend, and a pod with a
// waypoint is reached directly.
func TestKernelWaypointUDPGoesToTheBackend(t *testing.T) {
	f := newFixture(t, 2, loader.Sizes{})
	wp := f.addWaypoint("wp0", 150)
	f.behindWaypoint(wp)
	if err := f.maps.UpsertBackend(maps.Backend{ID: wid(1), Addresses: []netip.Addr{f.servers[1].IP4, f.servers[1].IP6},
		Waypoint: maps.WorkloadRef(wp.id)}); err != nil {
		t.Fatal(err)
	}
	for dst, want := range map[netip.AddrPort]string{
		netip.AddrPortFrom(vip4, 53):                  "s0",
		netip.AddrPortFrom(vip6, 53):                  "s0",
		netip.AddrPortFrom(f.servers[1].IP4, udpPort): "s1",
	} {
		network := "udp4"
		if dst.Addr().Is6() {
			network = "udp6"
		}
		pc, err := f.client.ListenPacket(network, ":0")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pc.WriteTo([]byte("hello"), net.UDPAddrFromAddrPort(dst)); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 512)
		n, from, err := pc.ReadFrom(buf)
		pc.Close()
		if err != nil {
			t.Fatalf("sendto %s: no reply: %v", dst, err)
		}
		who, _, _ := strings.Cut(string(buf[:n]), "\n")
		if who != want || from.(*net.UDPAddr).AddrPort().Addr().Unmap() != dst.Addr() {
			t.Fatalf("sendto %s: reply from %s by %q, want %s from the address sent to", dst, from, who, want)
		}

		c, err := f.client.Dial(network, dst.String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("hello"))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err = c.Read(buf)
		c.Close()
		if who, _, _ := strings.Cut(string(buf[:max(n, 0)]), "\n"); err != nil || who != want {
			t.Fatalf("connected UDP to %s: %q %v, want %s", dst, buf[:max(n, 0)], err, want)
		}
	}
}

// No usable waypoint pod: the connect fails at once with ECONNREFUSED,
// counted, never bypassing the waypoint. A waypoint service without
// endpoints, a waypoint pod of the other family, and a waypoint that is
// named but gone (maps.ClosedWaypoint).
func TestKernelWaypointWithoutPodsRefuses(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	svc := f.behindWaypoint() // no pods
	refused := func(what, dst string) {
		t.Helper()
		before := f.stat("no_waypoint")
		if _, err := f.ask(dst); !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatalf("%s: %v, want ECONNREFUSED", what, err)
		}
		if f.stat("no_waypoint") != before+1 {
			t.Errorf("%s: no_waypoint not counted", what)
		}
	}
	refused("waypoint service without pods", hostPort(vip4, 80))

	// An IPv4-only waypoint pod for an IPv6 client.
	wp := f.addWaypoint("wp0", 150)
	if err := f.maps.UpsertBackend(maps.Backend{ID: wp.id, Addresses: []netip.Addr{wp.IP4}}); err != nil {
		t.Fatal(err)
	}
	f.waypointService(maps.Random, wp)
	refused("IPv6 client, IPv4-only waypoint", hostPort(vip6, 80))
	if answer, _, _ := f.talk(hostPort(vip4, 80)); answer != "wp0" {
		t.Fatalf("IPv4 client: answered by %q", answer)
	}
	<-wp.got

	svc.Waypoint = maps.ClosedWaypoint
	f.upsert(svc)
	refused("waypoint named but gone", hostPort(vip4, 80))
}

// With acceleration on, neither end of a client-waypoint connection is in
// km_sockhash, nor is the waypoint's own connection to a backend; an
// ordinary connection between the same pods still is.
func TestKernelWaypointConnectionsAreNotAccelerated(t *testing.T) {
	f := newFixtureWith(t, 0, loader.Config{Features: loader.Features{SockmapAccel: true, Telemetry: true}})
	wp := f.addWaypoint("wp0", 150)
	f.enroll(wp.Pod, maps.Enrollment{Waypoint: true, WorkloadID: wp.id})
	// A backend inside the data path, enrolled, so its end could be
	// accelerated.
	backend := f.net.AddPod(t, "s0")
	f.enroll(backend, maps.Enrollment{})
	ln, err := backend.Listen("tcp", fmt.Sprintf(":%d", serverPort))
	if err != nil {
		t.Fatal(err)
	}
	// Read and write, not io.Copy: that splices, and a splice
	// reader misses accelerated data (see docs/datapath.md).
	testbed.Serve(t, ln, func(c net.Conn) {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			c.Write(buf[:n])
		}
	})
	if err := f.maps.UpsertBackend(maps.Backend{ID: wid(0), Addresses: []netip.Addr{backend.IP4, backend.IP6}}); err != nil {
		t.Fatal(err)
	}
	f.behindWaypoint(wp)

	sockhash := func() map[layout.Tuple]uint64 {
		out := map[layout.Tuple]uint64{}
		var k layout.Tuple
		var v uint64
		it := f.dp.Map(loader.MapSockhash).Iterate()
		for it.Next(&k, &v) {
			out[k] = v
		}
		return out
	}
	before := f.stat("sockhash_add")
	if answer, _, _ := f.talk(hostPort(vip4, 80)); answer != "wp0" {
		t.Fatalf("answered by %q", answer)
	}
	wp.received(t)
	// The waypoint's own connection to the backend.
	c, err := wp.Dial("tcp", hostPort(vip4, 80), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "x\n")
	if line, err := testbed.Greeting(c, time.Second); err != nil || line != "x" {
		t.Fatalf("waypoint to backend: %q %v", line, err)
	}
	// The backend's own end may be filed (it is an ordinary enrolled
	// pod); with its peer absent it only ever passes to TCP.
	for tu := range sockhash() {
		if a := tu.Local.Netip(); a == f.client.IP4 || a == wp.IP4 {
			t.Errorf("km_sockhash holds %s:%d -> %s:%d, an end of a waypoint connection", a, tu.LocalPort, tu.Remote.Netip(), tu.RemotePort)
		}
	}
	if n := f.stat("msg_redirect"); n != 0 {
		t.Errorf("%d sends went past TCP on waypoint connections", n)
	}
	c.Close()

	// Control: the client straight to the backend is accelerated.
	d, err := f.client.Dial("tcp", hostPort(backend.IP4, serverPort), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	io.WriteString(d, "y\n")
	if line, err := testbed.Greeting(d, time.Second); err != nil || line != "y" {
		t.Fatalf("client to backend: %q %v", line, err)
	}
	if f.stat("msg_redirect") == 0 {
		t.Fatalf("an ordinary connection was not accelerated (%d sockets filed): the control is broken", f.stat("sockhash_add")-before)
	}
}

// Server-first protocols: the client connects and waits for the server to
// speak. Nothing reaches the waypoint, which cannot know where the client
// meant to go, so it can only give up. This pins today's behaviour: if it
// changes (a header sent at connect), this test says so. If the waypoint
// speaks first anyway, the client's first bytes still carry the header.
func TestKernelWaypointServerFirst(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	wp := f.addWaypoint("wp0", 150)
	wp.wait = 500 * time.Millisecond
	f.behindWaypoint(wp)

	c, err := f.client.Dial("tcp", hostPort(vip4, 80), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := len(wpSocks(t, f.dp)); n != 1 {
		t.Fatalf("km_wp_sock holds %d sockets while the client is silent, want 1", n)
	}
	// The client only reads: the waypoint, after its wait, got nothing.
	got := wp.received(t)
	if len(got) != 0 {
		t.Fatalf("a silent client's waypoint received %q, want nothing", got)
	}
	if line, err := testbed.Greeting(c, time.Second); err != nil || line != "wp0" {
		t.Fatalf("after giving up the waypoint said %q (%v)", line, err)
	}
	c.Close()
	deadline := time.Now().Add(2 * time.Second)
	for len(wpSocks(t, f.dp)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("a closed socket is still in km_wp_sock: %v", wpSocks(t, f.dp))
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The waypoint greets first; the client answers: header, then payload.
	wp.greetFirst, wp.wait = true, 3*time.Second
	c, err = f.client.Dial("tcp", hostPort(vip4, 80), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if line, err := testbed.Greeting(c, time.Second); err != nil || line != "220 wp0" {
		t.Fatalf("greeting %q (%v)", line, err)
	}
	io.WriteString(c, payload)
	c.(*net.TCPConn).CloseWrite()
	checkHeader(t, wp.received(t), c.LocalAddr().(*net.TCPAddr).AddrPort(), netip.AddrPortFrom(vip4, 80))
}

// A full km_wp_sock is counted, and the connection that did not fit
// reaches its waypoint without a header.
func TestKernelWaypointSockFullIsCounted(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{WaypointSockets: 1})
	wp := f.addWaypoint("wp0", 150)
	f.behindWaypoint(wp)

	first, err := f.client.Dial("tcp", hostPort(vip4, 80), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := f.client.Dial("tcp", hostPort(vip4, 80), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if n := f.stat("wp_sock_full"); n != 1 {
		t.Fatalf("wp_sock_full = %d, want 1", n)
	}
	io.WriteString(second, payload)
	second.(*net.TCPConn).CloseWrite()
	if got := wp.received(t); string(got) != payload {
		t.Fatalf("the connection that did not fit delivered %q, want the bare payload", got)
	}
	io.WriteString(first, payload)
	first.(*net.TCPConn).CloseWrite()
	checkHeader(t, wp.received(t), first.LocalAddr().(*net.TCPAddr).AddrPort(), netip.AddrPortFrom(vip4, 80))
}

// A restart of the loader keeps km_wp_sock and switches its program: a
// client that connected before and sends after still gets its header.
func TestKernelWaypointSocketsSurviveARestart(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	wp := f.addWaypoint("wp0", 150)
	f.behindWaypoint(wp)
	c, err := f.client.Dial("tcp", hostPort(vip4, 80), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := len(wpSocks(t, f.dp)); n != 1 {
		t.Fatalf("km_wp_sock holds %d sockets, want 1", n)
	}

	f.maps.Close()
	f.dp.Close()
	dp, err := loader.Open(loader.Config{PinDir: f.pins, CgroupPath: f.cg.Path})
	if err != nil {
		t.Fatal(err)
	}
	f.dp = dp
	t.Cleanup(func() { dp.Close() })
	if !dp.Reused {
		t.Fatalf("restart replaced %v", dp.Replaced)
	}
	if n := len(wpSocks(t, dp)); n != 1 {
		t.Fatalf("after the restart km_wp_sock holds %d sockets, want the waiting one", n)
	}
	io.WriteString(c, payload)
	c.(*net.TCPConn).CloseWrite()
	checkHeader(t, wp.received(t), c.LocalAddr().(*net.TCPAddr).AddrPort(), netip.AddrPortFrom(vip4, 80))
}

// The element of a waypoint-bound socket says so, and that its header
// went; once the waypoint acknowledged data the socket leaves km_wp_sock
// (open still), and what it sends later goes out untouched.
func TestKernelWaypointElementIsMarked(t *testing.T) {
	for _, feat := range []loader.Features{{}, {Telemetry: true, SockmapAccel: true}} {
		t.Run(fmt.Sprintf("telemetry=%v,accel=%v", feat.Telemetry, feat.SockmapAccel), func(t *testing.T) {
			elementIsMarked(t, feat)
		})
	}
}

func elementIsMarked(t *testing.T, feat loader.Features) {
	f := newFixtureWith(t, 1, loader.Config{Features: feat})
	wp := f.addWaypoint("wp0", 150)
	f.behindWaypoint(wp)
	c, err := f.client.Dial("tcp", hostPort(vip4, 80), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var v layout.SockValue
	if err := f.dp.Map(loader.MapTCPSock).Lookup(cookieOf(t, c), &v); err != nil {
		t.Fatal(err)
	}
	if v.Flags&layout.SockWaypoint == 0 || v.Flags&layout.SockHeaderSent != 0 {
		t.Fatalf("flags %#x before the first send, want waypoint and no header yet", v.Flags)
	}
	if port := binary.BigEndian.Uint16([]byte{byte(v.OrigPort), byte(v.OrigPort >> 8)}); v.Orig.Netip() != vip4 || port != 80 {
		t.Errorf("element keeps %s:%d, want the VIP dialled", v.Orig.Netip(), port)
	}
	io.WriteString(c, payload[:4])
	if err := f.dp.Map(loader.MapTCPSock).Lookup(cookieOf(t, c), &v); err != nil {
		t.Fatal(err)
	}
	if v.Flags&layout.SockHeaderSent == 0 {
		t.Fatalf("flags %#x after the first send, want the header marked sent", v.Flags)
	}
	deadline := time.Now().Add(2 * time.Second)
	for len(wpSocks(t, f.dp)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the socket is still in km_wp_sock after its data was acknowledged")
		}
		time.Sleep(5 * time.Millisecond)
	}
	io.WriteString(c, payload[4:])
	c.(*net.TCPConn).CloseWrite()
	checkHeader(t, wp.received(t), c.LocalAddr().(*net.TCPAddr).AddrPort(), netip.AddrPortFrom(vip4, 80))
}

// TCP Fast Open: a client's data can leave in its SYN, before its
// connection is established and so ahead of any header. The header must
// then not land in the middle of the stream: such a connection gets none
// (the waypoint sees bare bytes and can refuse them), counted. A Fast Open
// connect without a cookie yet sends its data after the handshake, and
// gets its header as usual.
func TestKernelWaypointFastOpenGetsNoHeaderMidStream(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	wp := f.addWaypoint("wp0", 150)
	f.behindWaypoint(wp)
	// The waypoint accepts data in SYNs.
	if err := podns.Do(wp.NSPath, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/tcp_fastopen", []byte("3"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	raw, err := wp.ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_FASTOPEN, 16) })
	if err != nil {
		t.Fatal(err)
	}
	fastOpen := func() netip.AddrPort {
		var local netip.AddrPort
		err := podns.Do(f.client.NSPath, func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT, 1); err != nil {
				return err
			}
			if err := unix.Connect(fd, &unix.SockaddrInet4{Port: 80, Addr: vip4.As4()}); err != nil {
				return fmt.Errorf("connect: %w", err)
			}
			// With a cookie, this goes in the SYN.
			if _, err := unix.Write(fd, []byte(payload[:10])); err != nil {
				return fmt.Errorf("first write: %w", err)
			}
			sa, err := unix.Getsockname(fd)
			if err != nil {
				return err
			}
			s4 := sa.(*unix.SockaddrInet4)
			local = netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), uint16(s4.Port))
			time.Sleep(50 * time.Millisecond)
			if _, err := unix.Write(fd, []byte(payload[10:])); err != nil {
				return fmt.Errorf("second write: %w", err)
			}
			if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
				return err
			}
			buf := make([]byte, 64)
			_, err = unix.Read(fd, buf)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return local
	}
	// No cookie yet: a plain handshake, then the data with its header.
	local := fastOpen()
	checkHeader(t, wp.received(t), local, netip.AddrPortFrom(vip4, 80))

	// With the cookie the first bytes ride in the SYN.
	before := f.stat("wp_no_header")
	fastOpen()
	got := wp.received(t)
	if i := bytes.Index(got, []byte("\r\n\r\n\x00\r\nQUIT\n")); i >= 0 {
		t.Fatalf("a PROXY v2 header at offset %d of the stream: %q", i, got)
	}
	if string(got) != payload {
		t.Errorf("received %q, want the bare payload", got)
	}
	if n := f.stat("wp_no_header") - before; n != 1 {
		t.Errorf("wp_no_header counted %d, want 1", n)
	}
}

// The header leaves in the same segment as the first bytes behind it (a
// segment of its own costs a transmit and a receive more per connection),
// up to a page of them; a first write beyond a page arrives whole too.
func TestKernelWaypointHeaderSharesTheFirstSegment(t *testing.T) {
	f := newFixtureWith(t, 1, loader.Config{})
	wp := f.addWaypoint("wp0", 150)
	f.behindWaypoint(wp)
	big := strings.Repeat("0123456789abcdef", 1000) // 16000 bytes
	for _, tc := range []struct {
		name    string
		dst     netip.AddrPort
		payload string
		segs    uint32 // data segments the client sends, at most
	}{
		{"VIP v4", netip.AddrPortFrom(vip4, 80), payload, 1},
		{"VIP v6", netip.AddrPortFrom(vip6, 80), payload, 1},
		{"VIP v4, a page and more", netip.AddrPortFrom(vip4, 80), big, 0},
	} {
		c, err := f.client.Dial("tcp", tc.dst.String(), 2*time.Second)
		if err != nil {
			t.Fatalf("%s: dial: %v", tc.name, err)
		}
		local := c.LocalAddr().(*net.TCPAddr).AddrPort()
		if _, err := io.WriteString(c, tc.payload); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		answer, err := testbed.Greeting(c, 5*time.Second)
		if err != nil || answer != "wp0" {
			t.Fatalf("%s: answer %q, %v", tc.name, answer, err)
		}
		info := tcpInfo(t, c)
		c.Close()
		if tc.segs > 0 && info.Data_segs_out > tc.segs {
			t.Errorf("%s: the client sent %d data segments for the header and %d bytes, want %d",
				tc.name, info.Data_segs_out, len(tc.payload), tc.segs)
		}
		got := wp.received(t)
		h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(got)))
		if err != nil {
			t.Fatalf("%s: go-proxyproto cannot read %q: %v", tc.name, got[:min(len(got), 64)], err)
		}
		s, d, ok := h.TCPAddrs()
		if !ok || s.AddrPort() != local || d.AddrPort() != tc.dst {
			t.Errorf("%s: header %v -> %v, want %s -> %s", tc.name, h.SourceAddr, h.DestinationAddr, local, tc.dst)
		}
		hlen := 16 + 12
		if tc.dst.Addr().Is6() {
			hlen = 16 + 36
		}
		if len(got) != hlen+len(tc.payload) || string(got[hlen:]) != tc.payload {
			t.Errorf("%s: %d bytes after the header, want the %d of the payload intact", tc.name, len(got)-hlen, len(tc.payload))
		}
	}
}

// tcpInfo reads the kernel's TCP_INFO of a connection.
func tcpInfo(t *testing.T, c net.Conn) *unix.TCPInfo {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := raw.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return info
}
