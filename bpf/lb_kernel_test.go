package bpf_test

// Kernel tests (TestKernel*): real programs on a real kernel, real sockets
// between network namespaces. Run with KMESH_KERNEL_TESTS=1 as root.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

func TestKernelRandomSpreadsOverEveryBackend(t *testing.T) {
	f := newFixture(t, 3, loader.Sizes{})
	f.upsert(f.service(1, maps.Random, 0, 1, 2))

	for _, vip := range []netip.Addr{vip4, vip6} {
		counts := map[string]int{}
		for range 1000 {
			counts[f.mustAsk(hostPort(vip, 80))]++
		}
		t.Logf("%s: %s", vip, spread(counts))
		if len(counts) != 3 {
			t.Fatalf("%s: reached %d backends, want 3: %v", vip, len(counts), counts)
		}
		for who, n := range counts {
			// 1000 over 3: mean 333, sd 15; 233..433 is over six sd.
			if n < 233 || n > 433 {
				t.Errorf("%s: %s got %d of 1000 connects, not roughly even", vip, who, n)
			}
		}
	}
}

func TestKernelRoundRobinRotatesExactly(t *testing.T) {
	f := newFixture(t, 3, loader.Sizes{})
	f.upsert(f.service(1, maps.RoundRobin, 0, 1, 2))

	var seq []string
	for range 30 {
		seq = append(seq, f.mustAsk(hostPort(vip4, 80)))
	}
	first := seq[:3]
	if len(uniq(first)) != 3 {
		t.Fatalf("first round %v does not visit each backend once", first)
	}
	for i, who := range seq {
		if who != first[i%3] {
			t.Fatalf("connect %d went to %s, rotation %v predicts %s (sequence %v)", i, who, first, first[i%3], seq)
		}
	}
}

func uniq(s []string) []string {
	return slices.Compact(slices.Sorted(slices.Values(s)))
}

func TestKernelGetpeernameShowsTheServiceAddress(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	f.upsert(f.service(1, maps.Random, 0))

	for _, vip := range []netip.Addr{vip4, vip6} {
		c, err := f.client.Dial("tcp", hostPort(vip, 80), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		got := peerName(t, c)
		c.Close()
		if want := netip.AddrPortFrom(vip, 80); got != want {
			t.Errorf("getpeername = %s, want the VIP %s", got, want)
		}
	}
	// A connection that was not rewritten keeps its real peer.
	c, err := f.client.Dial("tcp", hostPort(f.servers[0].IP4, serverPort), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := peerName(t, c), netip.AddrPortFrom(f.servers[0].IP4, serverPort); got != want {
		t.Errorf("direct getpeername = %s, want %s", got, want)
	}
}

// A v4-mapped destination on an AF_INET6 socket is an IPv4 connection.
func TestKernelV4MappedOnV6Socket(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	f.upsert(f.service(1, maps.Random, 0))

	var who string
	err := podns.Do(f.client.NSPath, func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		mapped := netip.AddrFrom16(vip4.As16()) // ::ffff:10.96.0.10
		sa := &unix.SockaddrInet6{Port: 80, Addr: mapped.As16()}
		if err := unix.Connect(fd, sa); err != nil {
			return fmt.Errorf("connect to %s: %w", mapped, err)
		}
		buf := make([]byte, 16)
		n, err := unix.Read(fd, buf)
		if err != nil {
			return err
		}
		who = strings.TrimSpace(string(buf[:n]))
		peer, err := unix.Getpeername(fd)
		if err != nil {
			return err
		}
		if p := peer.(*unix.SockaddrInet6); netip.AddrFrom16(p.Addr) != mapped || p.Port != 80 {
			return fmt.Errorf("getpeername = %v, want %s:80", netip.AddrFrom16(p.Addr), mapped)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if who != "s0" {
		t.Fatalf("answered by %q", who)
	}
}

func TestKernelUDPRepliesComeFromTheService(t *testing.T) {
	f := newFixture(t, 3, loader.Sizes{})
	f.upsert(f.service(1, maps.Random, 0, 1, 2))

	for _, vip := range []netip.Addr{vip4, vip6} {
		network := "udp4"
		if vip.Is6() {
			network = "udp6"
		}
		// Unconnected: sendto the VIP, recvfrom says the VIP answered, and
		// the socket sticks to one backend.
		pc, err := f.client.ListenPacket(network, ":0")
		if err != nil {
			t.Fatal(err)
		}
		dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(vip, 53))
		var backends []string
		for i := range 20 {
			if _, err := pc.WriteTo([]byte(fmt.Sprintf("ping %d", i)), dst); err != nil {
				t.Fatal(err)
			}
			_ = pc.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 512)
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("%s: no reply: %v", vip, err)
			}
			if got := from.(*net.UDPAddr).AddrPort(); got.Addr().Unmap() != vip || got.Port() != 53 {
				t.Fatalf("%s: reply came from %s, want the service address", vip, got)
			}
			who, body, _ := strings.Cut(string(buf[:n]), "\n")
			if body != fmt.Sprintf("ping %d", i) {
				t.Fatalf("echo %q", body)
			}
			backends = append(backends, who)
		}
		pc.Close()
		if u := uniq(backends); len(u) != 1 {
			t.Errorf("%s: one unconnected socket was spread over %v", vip, u)
		}

		// Connected: the kernel only accepts replies from the peer, which
		// must be the backend, yet getpeername shows the VIP.
		c, err := f.client.Dial(network, netip.AddrPortFrom(vip, 53).String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("%s connected: %v", vip, err)
		}
		if !strings.HasSuffix(string(buf[:n]), "\nhello") {
			t.Fatalf("connected reply %q", buf[:n])
		}
		if got := peerName(t, c); got.Addr().Unmap() != vip || got.Port() != 53 {
			t.Errorf("connected UDP getpeername = %s", got)
		}
		c.Close()
	}
}

func TestKernelNotEnrolledIsUntouched(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	f.upsert(f.service(1, maps.Random, 0))
	other := f.net.AddPod(t, "outsider")

	// Same cgroup, same programs, but its netns is not enrolled: the VIP is
	// not rewritten, and with no route to it the connect fails in the pod.
	_, err := other.Dial("tcp", hostPort(vip4, 80), time.Second)
	if !errors.Is(err, unix.ENETUNREACH) {
		t.Fatalf("outsider connect to the VIP: %v, want ENETUNREACH (untouched)", err)
	}
	if who, err := other.Ask("tcp", hostPort(f.servers[0].IP4, serverPort), time.Second); err != nil || who != "s0" {
		t.Fatalf("outsider direct connect: %q %v", who, err)
	}
	// Enrolled, it works; released again, it is untouched again.
	cookie := f.enroll(other, maps.Enrollment{})
	if _, err := other.Ask("tcp", hostPort(vip4, 80), time.Second); err != nil {
		t.Fatalf("after enrolling: %v", err)
	}
	if err := f.manage.Release(cookie); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Dial("tcp", hostPort(vip4, 80), time.Second); !errors.Is(err, unix.ENETUNREACH) {
		t.Fatalf("after release: %v, want ENETUNREACH", err)
	}
}

func TestKernelNoEndpointFailsFast(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	f.upsert(f.service(1, maps.Random))

	for _, vip := range []netip.Addr{vip4, vip6} {
		start := time.Now()
		_, err := f.client.Dial("tcp", hostPort(vip, 80), 5*time.Second)
		took := time.Since(start)
		if !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatalf("%s: %v, want ECONNREFUSED", vip, err)
		}
		if took > 100*time.Millisecond {
			t.Errorf("%s: refusing took %s; it must not wait for SYN retries", vip, took)
		}
	}
	// A port the service does not have is refused as well.
	f.upsert(f.service(1, maps.Random, 0))
	if _, err := f.client.Dial("tcp", hostPort(vip4, 81), time.Second); !errors.Is(err, unix.ECONNREFUSED) {
		t.Fatalf("unknown port: %v, want ECONNREFUSED", err)
	}
	stats, err := f.maps.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if stats["no_endpoint"] < 2 || stats["no_port"] < 1 {
		t.Errorf("counters %v", stats)
	}
}

func TestKernelManyPortsAndManyServicesPerBackend(t *testing.T) {
	f := newFixture(t, 2, loader.Sizes{})
	svc := f.service(1, maps.Random, 0, 1)
	svc.Ports = nil
	for p := range 256 {
		svc.Ports = append(svc.Ports, maps.Port{Port: uint16(10000 + p), TargetPort: serverPort})
	}
	f.upsert(svc)
	for _, p := range []int{10000, 10001, 10127, 10254, 10255} {
		f.mustAsk(hostPort(vip4, p))
	}
	if _, err := f.ask(hostPort(vip4, 10256)); !errors.Is(err, unix.ECONNREFUSED) {
		t.Fatalf("port 10256 is not the service's: %v", err)
	}

	// 300 services all pointing at server 0.
	var txn maps.Txn
	for i := range 300 {
		vip := netip.AddrFrom4([4]byte{10, 96, 1 + byte(i/250), byte(i%250 + 1)})
		txn.Services = append(txn.Services, maps.Service{
			ID: uint32(1000 + i), VIPs: []netip.Addr{vip},
			Ports:     []maps.Port{{Port: 80, TargetPort: serverPort}},
			Endpoints: [][]uint32{{wid(0)}},
		})
	}
	if err := f.maps.Apply(txn); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1, 149, 298, 299} {
		vip := netip.AddrFrom4([4]byte{10, 96, 1 + byte(i/250), byte(i%250 + 1)})
		if who := f.mustAsk(hostPort(vip, 80)); who != "s0" {
			t.Fatalf("service %d answered by %s", i, who)
		}
	}
}

func TestKernelPortOverridePerWorkload(t *testing.T) {
	f := newFixture(t, 2, loader.Sizes{})
	// Server 1 also listens on 9090 and says so.
	f.servers[1].ServeTCP(t, 9090, "s1-9090")
	svc := f.service(1, maps.RoundRobin, 0, 1)
	svc.Ports = []maps.Port{{Port: 80, TargetPort: serverPort, Overrides: map[uint32]uint16{wid(1): 9090}}}
	f.upsert(svc)
	got := map[string]bool{}
	for range 4 {
		got[f.mustAsk(hostPort(vip4, 80))] = true
	}
	if !got["s0"] || !got["s1-9090"] || got["s1"] {
		t.Fatalf("answers %v: want s0 on 8080 and s1 on its own 9090", got)
	}
}

func TestKernelMaglevKeepsClientsAndMovesFew(t *testing.T) {
	f := newFixture(t, 5, loader.Sizes{MaglevTableSize: 4093})
	f.upsert(f.service(1, maps.Maglev, 0, 1, 2, 3, 4))

	// One client connects many times: always the same backend.
	var first string
	for i := range 30 {
		who := f.mustAsk(hostPort(vip4, 80))
		if i == 0 {
			first = who
		} else if who != first {
			t.Fatalf("connect %d went to %s, earlier ones to %s", i, who, first)
		}
	}

	// Many clients (the client key is what consistent hashing places).
	const clients = 400
	place := func() map[uint32]string {
		out := map[uint32]string{}
		for c := uint32(1); c <= clients; c++ {
			if err := f.manage.Enroll(f.cookie, maps.Enrollment{ClientID: c}); err != nil {
				t.Fatal(err)
			}
			out[c] = f.mustAsk(hostPort(vip4, 80))
		}
		return out
	}
	before := place()
	counts := map[string]int{}
	for _, who := range before {
		counts[who]++
	}
	t.Logf("400 clients over 5 backends: %s", spread(counts))
	if len(counts) != 5 {
		t.Fatalf("clients reached %d backends", len(counts))
	}

	f.upsert(f.service(1, maps.Maglev, 0, 1, 3, 4)) // s2 goes
	after := place()
	movedOthers, movedOff := 0, 0
	for c, was := range before {
		switch {
		case was == "s2":
			if after[c] == "s2" {
				t.Fatalf("client %d still on the removed backend", c)
			}
			movedOff++
		case after[c] != was:
			movedOthers++
		}
	}
	t.Logf("removing 1 of 5: %d clients left s2, %d others moved", movedOff, movedOthers)
	if movedOthers > clients/20 {
		t.Errorf("%d of %d clients not on the removed backend moved; Maglev should move ~1/N only", movedOthers, clients)
	}
}

func TestKernelLocalityFailoverAndStrict(t *testing.T) {
	f := newFixture(t, 3, loader.Sizes{})
	svc := f.service(1, maps.Random)
	svc.Endpoints = [][]uint32{{wid(0)}, {wid(1), wid(2)}}
	f.upsert(svc)
	for range 50 {
		if who := f.mustAsk(hostPort(vip4, 80)); who != "s0" {
			t.Fatalf("priority 0 has an endpoint, yet %s answered", who)
		}
	}

	// Priority 0 empties: fail over to priority 1, both of it.
	svc.Endpoints = [][]uint32{{}, {wid(1), wid(2)}}
	f.upsert(svc)
	got := map[string]int{}
	for range 60 {
		got[f.mustAsk(hostPort(vip4, 80))]++
	}
	if got["s0"] != 0 || got["s1"] == 0 || got["s2"] == 0 {
		t.Fatalf("failover spread %v, want s1 and s2 only", got)
	}

	// Strict never leaves priority 0.
	svc.Strict = true
	f.upsert(svc)
	if _, err := f.ask(hostPort(vip4, 80)); !errors.Is(err, unix.ECONNREFUSED) {
		t.Fatalf("strict with empty priority 0: %v, want ECONNREFUSED", err)
	}
	svc.Endpoints = [][]uint32{{wid(2)}, {wid(1)}}
	f.upsert(svc)
	for range 20 {
		if who := f.mustAsk(hostPort(vip4, 80)); who != "s2" {
			t.Fatalf("strict went to %s", who)
		}
	}
}

func TestKernelSessionAffinity(t *testing.T) {
	f := newFixture(t, 3, loader.Sizes{})
	svc := f.service(1, maps.Random, 0, 1, 2)
	svc.Affinity = time.Hour
	f.upsert(svc)

	sticky := f.mustAsk(hostPort(vip4, 80))
	for range 40 {
		if who := f.mustAsk(hostPort(vip4, 80)); who != sticky {
			t.Fatalf("affinity broken: %s then %s", sticky, who)
		}
	}
	// Expire the entry by ageing it; the next connect picks afresh, and over
	// a few expiries more than one backend shows up.
	aff := f.dp.Map(loader.MapAffinity)
	seen := map[string]bool{sticky: true}
	for range 12 {
		var v layout.AffinityValue
		key := layout.AffinityKey{NetnsCookie: f.cookie, ServiceID: 1}
		if err := aff.Lookup(key, &v); err != nil {
			t.Fatalf("no affinity entry: %v", err)
		}
		v.LastUsedNs -= uint64(2 * time.Hour)
		if err := aff.Put(key, v); err != nil {
			t.Fatal(err)
		}
		seen[f.mustAsk(hostPort(vip4, 80))] = true
	}
	if len(seen) < 2 {
		t.Fatalf("expired affinity never moved: %v", seen)
	}
	// A removed endpoint is not honoured even while fresh.
	sticky = f.mustAsk(hostPort(vip4, 80))
	var rest []uint32
	for i := range 3 {
		if fmt.Sprintf("s%d", i) != sticky {
			rest = append(rest, wid(i))
		}
	}
	svc.Endpoints = [][]uint32{rest}
	f.upsert(svc)
	for range 10 {
		if who := f.mustAsk(hostPort(vip4, 80)); who == sticky {
			t.Fatalf("affinity kept removed endpoint %s", sticky)
		}
	}
}

func TestKernelFullMapLeavesNothingHalfWritten(t *testing.T) {
	f := newFixture(t, 3, loader.Sizes{Endpoints: 4, Frontends: 64})
	f.upsert(f.service(1, maps.Random, 0, 1))
	before := f.maps.Services()

	// Two more services need 6 endpoints; only 2 slots are free.
	err := f.maps.Apply(maps.Txn{Services: []maps.Service{
		{ID: 2, VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")}, Ports: []maps.Port{{Port: 80, TargetPort: serverPort}}, Endpoints: [][]uint32{{wid(0), wid(1), wid(2)}}},
		{ID: 3, VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.30")}, Ports: []maps.Port{{Port: 80, TargetPort: serverPort}}, Endpoints: [][]uint32{{wid(0), wid(1), wid(2)}}},
	}})
	var full *maps.FullError
	if !errors.As(err, &full) || full.Map != loader.MapEndpoint {
		t.Fatalf("got %v, want a full %s", err, loader.MapEndpoint)
	}
	t.Logf("error: %v", err)
	if after := f.maps.Services(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("services changed by a refused update:\n%v\n%v", before, after)
	}
	// The kernel has nothing of services 2 and 3.
	if _, err := f.ask("10.96.0.20:80"); !errors.Is(err, unix.ENETUNREACH) {
		t.Fatalf("VIP of the refused service: %v, want untouched (ENETUNREACH)", err)
	}
	var n int
	var k layout.EndpointKey
	var v layout.EndpointValue
	it := f.dp.Map(loader.MapEndpoint).Iterate()
	for it.Next(&k, &v) {
		n++
		if k.ServiceID != 1 {
			t.Errorf("endpoint of service %d in the kernel", k.ServiceID)
		}
	}
	if n != 2 {
		t.Errorf("%d endpoint entries, want 2", n)
	}
	// The service that was there still works.
	f.mustAsk(hostPort(vip4, 80))
}

// While a client connects in a loop, endpoints come and go (never fewer than
// one): not one connect may fail.
func TestKernelEndpointChurnLosesNoConnect(t *testing.T) {
	f := newFixture(t, 4, loader.Sizes{})
	f.upsert(f.service(1, maps.Random, 0, 1, 2, 3))

	stop := f.askLoop(2)
	sets := [][]int{{0}, {0, 1, 2, 3}, {3}, {1, 2}, {2, 0, 3}, {1}, {3, 1, 0}, {2}}
	deadline := time.Now().Add(3 * time.Second)
	changes := 0
	for i := 0; time.Now().Before(deadline); i++ {
		svc := f.service(1, maps.Random, sets[i%len(sets)]...)
		// Some churn goes through priorities as well.
		if i%3 == 0 && len(svc.Endpoints[0]) > 1 {
			svc.Endpoints = [][]uint32{svc.Endpoints[0][:1], svc.Endpoints[0][1:]}
		}
		f.upsert(svc)
		changes++
		time.Sleep(2 * time.Millisecond)
	}
	ok, failed, first := stop()
	t.Logf("%d endpoint changes, %d connects, %d failed", changes, ok, failed)
	if failed != 0 {
		t.Fatalf("%d connects failed during churn; first: %v", failed, first)
	}
	if ok < 100 {
		t.Fatalf("only %d connects ran", ok)
	}
}

// The loader is closed and opened again from the pins while a client
// connects in a loop: no connect may fail, and the reopened typed API sees
// exactly what was written.
func TestKernelRestartFromPinsLosesNoConnect(t *testing.T) {
	f := newFixture(t, 3, loader.Sizes{})
	f.upsert(f.service(1, maps.RoundRobin, 0, 1, 2))
	wantServices, wantBackends := f.maps.Services(), f.maps.Backends()

	stop := f.askLoop(1)
	// Stopped at the end, or by the cleanup when a restart fails first; the
	// programs and maps reopened by then are closed after it.
	t.Cleanup(func() { stop(); f.dp.Close(); f.maps.Close() })

	for i := range 5 {
		time.Sleep(100 * time.Millisecond)
		f.maps.Close()
		if err := f.dp.Close(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // nobody holds the programs now but the pins
		dp, err := loader.Open(loader.Config{PinDir: f.pins, CgroupPath: f.cg.Path})
		if err != nil {
			t.Fatal(err)
		}
		f.dp = dp
		if !dp.Reused {
			t.Fatalf("restart %d did not reuse the pinned maps (replaced %v)", i, dp.Replaced)
		}
		m, err := maps.New(dp)
		if err != nil {
			t.Fatal(err)
		}
		f.maps = m
		if got := m.Services(); fmt.Sprint(got) != fmt.Sprint(wantServices) {
			t.Fatalf("read back services %v, want %v", got, wantServices)
		}
		if got := m.Backends(); fmt.Sprint(got) != fmt.Sprint(wantBackends) {
			t.Fatalf("read back backends %v, want %v", got, wantBackends)
		}
	}
	time.Sleep(100 * time.Millisecond)
	ok, failed, first := stop()
	t.Logf("%d connects across 5 restarts, %d failed", ok, failed)
	if failed != 0 {
		t.Fatalf("%d connects failed; first: %v", failed, first)
	}
	if len(f.dp.Links()) != 11 { // 8 socket-address hooks, sockops, two sk_msg
		t.Fatalf("links %v", f.dp.Links())
	}
	// An update after the restart is a diff against what the kernel holds.
	f.upsert(f.service(1, maps.RoundRobin, 0, 1))
	for range 6 {
		if who := f.mustAsk(hostPort(vip4, 80)); who == "s2" {
			t.Fatal("removed endpoint still used after restart")
		}
	}
}

// A pinned set written by another layout is replaced, not misread; the
// enrollment map is kept (its layout is a promise) and shared.
func TestKernelIncompatiblePinsAreReplaced(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	f.upsert(f.service(1, maps.Random, 0))

	// Pretend an older build wrote these pins.
	f.markLayout(layout.Version + 100)
	// And a map this version no longer has.
	retired, err := ebpf.NewMap(&ebpf.MapSpec{Name: "km_origin", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	retiredPin := filepath.Join(f.pins, "maps", "km_origin")
	if err := retired.Pin(retiredPin); err != nil {
		t.Fatal(err)
	}
	retired.Close()
	t.Cleanup(func() { os.Remove(retiredPin) })
	f.maps.Close()
	f.dp.Close()
	dp, err := loader.Open(loader.Config{PinDir: f.pins, CgroupPath: f.cg.Path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	if _, err := os.Stat(retiredPin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the pin of a retired map is still there: %v", err)
	}
	if dp.Reused || !slices.Contains(dp.Replaced, loader.MapService) || slices.Contains(dp.Replaced, loader.MapManage) {
		t.Fatalf("reused=%v replaced=%v, want a replaced set but for km_manage", dp.Reused, dp.Replaced)
	}
	m, err := maps.New(dp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if len(m.Services()) != 0 {
		t.Fatalf("services read from an incompatible set: %v", m.Services())
	}
	if _, enrolled, err := maps.NewManage(dp).Get(f.cookie); err != nil || !enrolled {
		t.Fatalf("enrollment lost across the replacement: %v %v", enrolled, err)
	}
	// The daemon writes its state again and traffic flows.
	if err := m.UpsertBackend(maps.Backend{ID: wid(0), Addresses: []netip.Addr{f.servers[0].IP4}}); err != nil {
		t.Fatal(err)
	}
	if err := m.UpsertService(f.service(1, maps.Random, 0)); err != nil {
		t.Fatal(err)
	}
	f.mustAsk(hostPort(vip4, 80))

	// Resizing a map keeps its contents (same layout, bigger map).
	m.Close()
	dp.Close()
	dp2, err := loader.Open(loader.Config{PinDir: f.pins, CgroupPath: f.cg.Path, Sizes: loader.Sizes{Endpoints: 4096}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp2.Close() })
	if !slices.Equal(dp2.Replaced, []string{loader.MapEndpoint}) {
		t.Fatalf("replaced %v, want only the endpoint map", dp2.Replaced)
	}
	f.mustAsk(hostPort(vip4, 80))
}

// markLayout makes the pinned set claim another build's layout version.
func (f *fixture) markLayout(v uint32) {
	f.t.Helper()
	m := f.dp.Map(loader.MapConfig)
	var c layout.ConfigValue
	if err := m.Lookup(uint32(0), &c); err != nil {
		f.t.Fatal(err)
	}
	c.LayoutVersion = v
	if err := m.Put(uint32(0), c); err != nil {
		f.t.Fatal(err)
	}
}

// A build of another layout is prepared beside the running one: the old
// programs keep translating with the old maps while the new maps are
// filled, pods enrolled meanwhile reach both, and Commit switches over.
// The new state differs (s0 is gone) to tell which set serves.
func TestKernelLayoutChangeServesTheOldSetUntilCommit(t *testing.T) {
	f := newFixture(t, 2, loader.Sizes{})
	f.upsert(f.service(1, maps.Random, 0, 1))
	f.markLayout(layout.Version + 1)
	f.maps.Close()
	f.dp.Close()

	dp, err := loader.Prepare(loader.Config{PinDir: f.pins, CgroupPath: f.cg.Path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	if !dp.Pending() || dp.PinnedLayout != layout.Version+1 {
		t.Fatalf("pending=%v pinned layout %d, want a prepared set beside layout %d", dp.Pending(), dp.PinnedLayout, layout.Version+1)
	}
	m, err := maps.New(dp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if len(m.Services()) != 0 {
		t.Fatalf("the new maps hold %v", m.Services())
	}
	// A pod enrolled now, through the pin as kmesh-cni does.
	late := f.net.AddPod(t, "late")
	pinned, err := maps.OpenManage(f.pins)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	c, err := podns.Cookie(late.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := pinned.Enroll(c, maps.Enrollment{}); err != nil {
		t.Fatal(err)
	}
	if err := m.UpsertBackend(maps.Backend{ID: wid(1), Addresses: []netip.Addr{f.servers[1].IP4, f.servers[1].IP6}}); err != nil {
		t.Fatal(err)
	}
	if err := m.UpsertService(f.service(1, maps.Random, 1)); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for range 40 {
		seen[f.mustAsk(hostPort(vip4, 80))]++
	}
	if len(seen) != 2 {
		t.Fatalf("before Commit the old set must serve (s0 and s1), got %v", seen)
	}
	if _, err := late.Ask("tcp", hostPort(vip4, 80), 2*time.Second); err != nil {
		t.Fatalf("pod enrolled while prepared, before Commit: %v", err)
	}

	if err := dp.Commit(); err != nil {
		t.Fatal(err)
	}
	if dp.Pending() {
		t.Fatal("still pending after Commit")
	}
	for _, p := range []*testbed.Pod{f.client, late} {
		for range 20 {
			if who, err := p.Ask("tcp", hostPort(vip4, 80), 2*time.Second); err != nil || who != "s1" {
				t.Fatalf("%s after Commit: %q %v, want s1 (the new state)", p.Name, who, err)
			}
		}
	}
	var cfg layout.ConfigValue
	if err := dp.Map(loader.MapConfig).Lookup(uint32(0), &cfg); err != nil || cfg.LayoutVersion != layout.Version {
		t.Fatalf("km_config after Commit: %+v %v", cfg, err)
	}
}

// The same with a resized km_manage, which cannot be shared: it is copied
// at Prepare, and again at Commit with what the plugin enrolled and
// released meanwhile.
func TestKernelLayoutChangeCopiesAResizedManageAtCommit(t *testing.T) {
	f := newFixture(t, 1, loader.Sizes{})
	f.upsert(f.service(1, maps.Random, 0))
	gone := f.net.AddPod(t, "gone")
	goneCookie := f.enroll(gone, maps.Enrollment{}) // copied at Prepare, released before Commit
	f.markLayout(layout.Version + 1)
	f.maps.Close()
	f.dp.Close()

	dp, err := loader.Prepare(loader.Config{PinDir: f.pins, CgroupPath: f.cg.Path, Sizes: loader.Sizes{Manage: 4096}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	if !dp.Pending() || !slices.Contains(dp.Replaced, loader.MapManage) {
		t.Fatalf("pending=%v replaced=%v, want km_manage copied", dp.Pending(), dp.Replaced)
	}
	pinned, err := maps.OpenManage(f.pins)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	late := f.net.AddPod(t, "late")
	lateCookie, err := podns.Cookie(late.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := pinned.Enroll(lateCookie, maps.Enrollment{}); err != nil {
		t.Fatal(err)
	}
	if err := pinned.Release(goneCookie); err != nil {
		t.Fatal(err)
	}
	m, err := maps.New(dp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if err := m.UpsertBackend(maps.Backend{ID: wid(0), Addresses: []netip.Addr{f.servers[0].IP4}}); err != nil {
		t.Fatal(err)
	}
	if err := m.UpsertService(f.service(1, maps.Random, 0)); err != nil {
		t.Fatal(err)
	}
	if err := dp.Commit(); err != nil {
		t.Fatal(err)
	}
	mg := maps.NewManage(dp)
	for cookie, want := range map[uint64]bool{f.cookie: true, lateCookie: true, goneCookie: false} {
		if _, enrolled, err := mg.Get(cookie); err != nil || enrolled != want {
			t.Errorf("netns %d enrolled=%v (%v) after Commit, want %v", cookie, enrolled, err, want)
		}
	}
	if _, err := late.Ask("tcp", hostPort(vip4, 80), 2*time.Second); err != nil {
		t.Fatalf("pod enrolled while prepared, after Commit: %v", err)
	}
}
