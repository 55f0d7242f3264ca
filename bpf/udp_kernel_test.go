package bpf_test

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/podns"
)

// udpAsk sends on a connected UDP socket and returns which server answered.
func udpAsk(c net.Conn, timeout time.Duration) (string, error) {
	if _, err := c.Write([]byte("who")); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	who, _, _ := strings.Cut(string(buf[:n]), "\n")
	return who, nil
}

// sweepUDP runs the sweeper in the client pod's namespace.
func (f *fixture) sweepUDP(s *loader.UDPSweeper) int {
	f.t.Helper()
	var n int
	if err := podns.Do(f.client.NSPath, func() error {
		var err error
		n, err = s.Sweep()
		return err
	}); err != nil {
		f.t.Fatal(err)
	}
	return n
}

// A connected UDP socket keeps the backend its connect() was given: when
// that endpoint leaves the service, the socket is aborted (a blocked
// receive fails at once, a send fails) and a new one reaches a live
// endpoint. Sockets of the endpoints that stay are left alone, also the
// one whose endpoint moved to another slot when the list shrank.
func TestKernelConnectedUDPLeavesARemovedEndpoint(t *testing.T) {
	f := newFixture(t, 3, loader.Sizes{})
	sweeper, err := f.dp.NewUDPSweeper()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sweeper.Close() })

	for _, vip := range []netip.Addr{vip4, vip6} {
		network := "udp4"
		if vip.Is6() {
			network = "udp6"
		}
		f.upsert(f.service(1, maps.RoundRobin, 0, 1, 2))
		// One connected socket per backend (round robin hands them out in turn).
		by := map[string]net.Conn{}
		for range 3 {
			c, err := f.client.Dial(network, netip.AddrPortFrom(vip, 53).String(), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			who, err := udpAsk(c, 2*time.Second)
			if err != nil {
				t.Fatalf("%s: %v", vip, err)
			}
			by[who] = c
		}
		if len(by) != 3 {
			t.Fatalf("%s: connected sockets reached %d backends, want 3", vip, len(by))
		}
		if n := f.sweepUDP(sweeper); n != 0 {
			t.Fatalf("%s: a sweep with every endpoint in place closed %d sockets", vip, n)
		}

		// A receive blocked on s0's socket, then s0 leaves the service (s2
		// moves into its slot).
		gone := by["s0"]
		_ = gone.SetReadDeadline(time.Now().Add(10 * time.Second))
		readErr := make(chan error, 1)
		go func() {
			_, err := gone.Read(make([]byte, 512))
			readErr <- err
		}()
		f.upsert(f.service(1, maps.RoundRobin, 1, 2))
		start := time.Now()
		if n := f.sweepUDP(sweeper); n != 1 {
			t.Fatalf("%s: sweep closed %d sockets, want 1 (s0's)", vip, n)
		}
		select {
		case err := <-readErr:
			if !errors.Is(err, syscall.ECONNABORTED) {
				t.Fatalf("%s: blocked receive on s0's socket returned %v, want ECONNABORTED", vip, err)
			}
			t.Logf("%s: blocked receive failed %s after the sweep started", vip, time.Since(start).Round(time.Microsecond))
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: the blocked receive on s0's socket is still waiting", vip)
		}
		if _, err := gone.Write([]byte("again")); !errors.Is(err, syscall.EDESTADDRREQ) {
			t.Fatalf("%s: send on the closed socket: %v, want EDESTADDRREQ", vip, err)
		}
		for _, name := range []string{"s1", "s2"} {
			if who, err := udpAsk(by[name], 2*time.Second); err != nil || who != name {
				t.Fatalf("%s: %s's socket after the sweep: %q %v", vip, name, who, err)
			}
		}
		// The application reconnects: a live endpoint answers.
		c, err := f.client.Dial(network, netip.AddrPortFrom(vip, 53).String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		who, err := udpAsk(c, 2*time.Second)
		c.Close()
		if err != nil || (who != "s1" && who != "s2") {
			t.Fatalf("%s: reconnected socket: %q %v", vip, who, err)
		}
		// Once found in its new slot, s2's socket costs one lookup; nothing
		// else is closed.
		if n := f.sweepUDP(sweeper); n != 0 {
			t.Fatalf("%s: a second sweep closed %d sockets", vip, n)
		}
		for _, c := range by {
			c.Close()
		}
	}

	// The whole service goes: its connected sockets are closed too.
	c, err := f.client.Dial("udp4", netip.AddrPortFrom(vip4, 53).String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := udpAsk(c, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := f.maps.DeleteService(1); err != nil {
		t.Fatal(err)
	}
	if n := f.sweepUDP(sweeper); n != 1 {
		t.Fatalf("deleted service: sweep closed %d sockets, want 1", n)
	}
	// What a sweep costs the daemon per pod: entering the namespace and
	// one walk over its UDP sockets.
	const n = 200
	start := time.Now()
	for range n {
		f.sweepUDP(sweeper)
	}
	t.Logf("one pod's sweep (enter its namespace, walk its UDP sockets): %s", (time.Since(start) / n).Round(time.Microsecond))
	if n := f.stat("udp_endpoint_gone"); n != 3 {
		t.Fatalf("udp_endpoint_gone = %d, want 3", n)
	}
}
