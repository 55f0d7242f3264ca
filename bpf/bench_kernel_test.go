package bpf_test

// The data-path benchmark: run with `make bench` (KMESH_BENCH=1). It prints
// tables and never fails on a time; targets are read from the table.

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

func TestBenchDatapath(t *testing.T) {
	if os.Getenv("KMESH_BENCH") != "1" {
		t.Skip("benchmark: make bench")
	}
	f := newFixture(t, 1, loader.Sizes{Frontends: 300000, Services: 150000, Ports: 300000, Endpoints: 1200000})
	f.upsert(f.service(1, maps.Random, 0))
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enable BPF run-time stats: %v", err)
	}
	defer stats.Close()

	paths := []netip.AddrPort{netip.AddrPortFrom(f.servers[0].IP4, serverPort), netip.AddrPortFrom(vip4, 80)}
	const rounds, perRound = 21, 1000
	connect4 := f.dp.Program("km_connect4")

	// Each round alternates the two paths connect by connect, so drift on
	// this shared machine hits both alike; the table shows round medians.
	type cost struct{ total, connect, prog [2]time.Duration }
	measure := func() cost {
		var tot, con [2][]time.Duration
		var prog [2][]time.Duration
		for range rounds {
			for p := range paths {
				// Program time per path: run each path alone for a short burst.
				before, _ := connect4.Stats()
				if _, _, err := connectFirstByte(f.client.NSPath, paths[p:p+1], 200); err != nil {
					t.Fatal(err)
				}
				after, _ := connect4.Stats()
				if n := after.RunCount - before.RunCount; n > 0 {
					prog[p] = append(prog[p], (after.Runtime-before.Runtime)/time.Duration(n))
				}
			}
			d, c, err := connectFirstByte(f.client.NSPath, paths, perRound)
			if err != nil {
				t.Fatal(err)
			}
			for p := range paths {
				tot[p] = append(tot[p], d[p])
				con[p] = append(con[p], c[p])
			}
		}
		var out cost
		for p := range paths {
			out.total[p], out.connect[p], out.prog[p] = median(tot[p]), median(con[p]), median(prog[p])
		}
		return out
	}

	// 10 services in the maps.
	var txn maps.Txn
	for i := range 9 {
		txn.Services = append(txn.Services, benchService(uint32(10+i), i, wid(0)))
	}
	if err := f.maps.Apply(txn); err != nil {
		t.Fatal(err)
	}
	small := measure()

	// 100,000 services in the maps.
	txn = maps.Txn{}
	for i := 9; i < 100000-1; i++ {
		txn.Services = append(txn.Services, benchService(uint32(10+i), i, wid(0)))
	}
	if err := f.maps.Apply(txn); err != nil {
		t.Fatal(err)
	}
	large := measure()

	fmt.Printf("\n### connect() + first byte, one client pod -> one server pod (medians of %d rounds x %d connects per path, paths alternating)\n\n", rounds, perRound)
	fmt.Println("| path | services in maps | connect + first byte | ratio to direct | connect() alone | ratio to direct | connect4 program run time |")
	fmt.Println("|---|---|---|---|---|---|---|")
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	row := func(path string, n int, c cost, p int) {
		fmt.Printf("| %s | %d | %.1f µs | %.3f | %.1f µs | %.3f | %d ns |\n", path, n,
			us(c.total[p]), float64(c.total[p])/float64(c.total[0]),
			us(c.connect[p]), float64(c.connect[p])/float64(c.connect[0]), c.prog[p].Nanoseconds())
	}
	row("direct to pod IP", 10, small, 0)
	row("service VIP (ours)", 10, small, 1)
	row("direct to pod IP", 100000, large, 0)
	row("service VIP (ours)", 100000, large, 1)
	fmt.Printf("\nVIP with 100,000 vs 10 services: connect + first byte ratio %.3f, connect() alone %.3f, program run time %.3f\n",
		float64(large.total[1])/float64(small.total[1]), float64(large.connect[1])/float64(small.connect[1]),
		float64(large.prog[1])/float64(small.prog[1]))
}

// benchService is service id with VIP 10.100.x.y, one port, one endpoint.
func benchService(id uint32, i int, w uint32) maps.Service {
	return maps.Service{
		ID:        id,
		VIPs:      []netip.Addr{netip.AddrFrom4([4]byte{10, 100 + byte(i>>16), byte(i >> 8), byte(i)})},
		Ports:     []maps.Port{{Port: 80, TargetPort: serverPort}},
		Endpoints: [][]uint32{{w}},
	}
}

func median(v []time.Duration) time.Duration {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// connectFirstByte opens n connections to each destination, alternating
// between them, one after another from a thread inside the pod namespace
// (raw syscalls, nothing else in the loop); it reads the server's first byte
// and resets the connection (no TIME_WAIT). It returns, per destination, the
// mean time per connection and the mean time inside connect().
func connectFirstByte(nsPath string, dsts []netip.AddrPort, n int) ([]time.Duration, []time.Duration, error) {
	type result struct {
		d, c []time.Duration
		err  error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // the thread is discarded afterwards, never unlocked
		ns, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			res <- result{err: err}
			return
		}
		err = unix.Setns(ns, unix.CLONE_NEWNET)
		unix.Close(ns)
		if err != nil {
			res <- result{err: err}
			return
		}
		total := make([]time.Duration, len(dsts))
		inConnect := make([]time.Duration, len(dsts))
		buf := make([]byte, 64)
		for range n {
			for i, dst := range dsts {
				sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
				start := time.Now()
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					res <- result{err: err}
					return
				}
				c0 := time.Now()
				err = unix.Connect(fd, sa)
				inConnect[i] += time.Since(c0)
				if err != nil {
					unix.Close(fd)
					res <- result{err: fmt.Errorf("connect %s: %w", dst, err)}
					return
				}
				if _, err := unix.Read(fd, buf); err != nil {
					unix.Close(fd)
					res <- result{err: err}
					return
				}
				total[i] += time.Since(start)
				_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
				unix.Close(fd)
			}
		}
		for i := range dsts {
			total[i] /= time.Duration(n)
			inConnect[i] /= time.Duration(n)
		}
		res <- result{d: total, c: inConnect}
	}()
	r := <-res
	return r.d, r.c, r.err
}

// TestBenchProgramming measures the typed API: a full snapshot of 10,000
// services x 10 endpoints, the kernel memory it takes, and single endpoint
// changes.
func TestBenchProgramming(t *testing.T) {
	if os.Getenv("KMESH_BENCH") != "1" {
		t.Skip("benchmark: make bench")
	}
	f := newFixture(t, 0, loader.Sizes{})
	const services, perService, backends = 10000, 10, 2000

	var txn maps.Txn
	for i := range backends {
		txn.Backends = append(txn.Backends, maps.Backend{ID: uint32(1 + i),
			Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 250, byte(i >> 8), byte(i)})}})
	}
	for i := range services {
		s := benchService(uint32(1+i), i, 0)
		s.Endpoints = [][]uint32{make([]uint32, perService)}
		for j := range perService {
			s.Endpoints[0][j] = uint32(1 + (i*perService+j)%backends)
		}
		txn.Services = append(txn.Services, s)
	}
	memBefore := mapMemory(t, f.dp)
	start := time.Now()
	if err := f.maps.Apply(txn); err != nil {
		t.Fatal(err)
	}
	full := time.Since(start)
	memAfter := mapMemory(t, f.dp)

	// Single endpoint changes, alternately removing and re-adding one.
	svcs := f.maps.Services()
	var lat []time.Duration
	for i := range 2000 {
		s := svcs[i%len(svcs)]
		eps := s.Endpoints[0]
		if i%2 == 0 {
			s.Endpoints = [][]uint32{eps[1:]}
		}
		start := time.Now()
		if err := f.maps.UpsertService(s); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if i%2 == 0 {
			s.Endpoints = [][]uint32{eps}
			if err := f.maps.UpsertService(s); err != nil {
				t.Fatal(err)
			}
		}
	}
	slices.Sort(lat)

	fmt.Printf("\n### programming the maps through the typed API\n\n")
	fmt.Println("| what | result |")
	fmt.Println("|---|---|")
	fmt.Printf("| full snapshot: %d services x %d endpoints, %d backends, one transaction | %s |\n", services, perService, backends, full.Round(time.Millisecond))
	fmt.Printf("| kernel memory of the maps (fdinfo memlock), before -> after | %.1f MiB -> %.1f MiB |\n", memBefore/1048576, memAfter/1048576)
	fmt.Printf("| one endpoint removed from a service, p50 / p99 | %s / %s |\n", lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond))
}

// mapMemory sums the kernel's memory estimate of every pinned map.
func mapMemory(t *testing.T, dp *loader.Datapath) float64 {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dp.PinDir(), "maps"))
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, e := range entries {
		m := dp.Map(e.Name())
		if m == nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "memlock:"); ok {
				n, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				total += n
			}
		}
	}
	return total
}

// TestBenchAuthz: new-connection rate toward a pod with no policies and
// with 64 (allowing) policies, and established throughput with each.
func TestBenchAuthz(t *testing.T) {
	if os.Getenv("KMESH_BENCH") != "1" {
		t.Skip("benchmark: make bench")
	}
	f := newAuthzFixture(t)
	// 64 ALLOW policies, each with a few matches; the client's identity
	// (frontend/web, id 1) is allowed by the last one only.
	var many []*model.AuthzPolicy
	for i := range 64 {
		m := model.Match{Namespaces: strs(model.MatchExact, fmt.Sprintf("team-%d", i)), DestinationPorts: []uint16{uint16(10000 + i)}}
		if i == 63 {
			m = model.Match{Namespaces: strs(model.MatchExact, "frontend")}
		}
		p := pol(i, model.ActionAllow, m)
		p.Groups[0] = append(p.Groups[0], []model.Match{{NotSourceIPs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("192.0.%d.0/24", i))}}})
		many = append(many, p)
	}
	dst := []netip.AddrPort{netip.AddrPortFrom(f.server.IP4, serverPort)}
	const rounds, perRound = 21, 1000
	configs := []struct {
		name     string
		policies []*model.AuthzPolicy
	}{{"no policies", nil}, {"64 policies", many}}

	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enable BPF run-time stats: %v", err)
	}
	defer stats.Close()
	tcProg, connProg := f.dp.Program(loader.ProgToPod), f.dp.Program("km_connect4")
	runtime := func(p *ebpf.Program) time.Duration {
		st, err := p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st.Runtime
	}

	// Rounds alternate the two configurations (re-pointing the pod's
	// policy set), so drift on this shared machine hits both alike.
	var outsider, enrolled, thr, tcPerConn, connPerCall [2][]float64
	for range rounds {
		for ci, c := range configs {
			f.guard(c.policies)
			tc0 := runtime(tcProg)
			d, _, err := connectFirstByte(f.outsider.NSPath, dst, perRound)
			if err != nil {
				t.Fatal(err)
			}
			tcPerConn[ci] = append(tcPerConn[ci], float64(runtime(tcProg)-tc0)/perRound)
			outsider[ci] = append(outsider[ci], 1e9/float64(d[0]))
			c0 := runtime(connProg)
			d, _, err = connectFirstByte(f.client.NSPath, dst, perRound)
			if err != nil {
				t.Fatal(err)
			}
			connPerCall[ci] = append(connPerCall[ci], float64(runtime(connProg)-c0)/perRound)
			enrolled[ci] = append(enrolled[ci], 1e9/float64(d[0]))
			thr[ci] = append(thr[ci], throughput(t, f.outsider, netip.AddrPortFrom(f.server.IP4, 9090), 64<<20))
		}
	}
	med := func(v []float64) float64 {
		v = slices.Clone(v)
		slices.Sort(v)
		return v[len(v)/2]
	}
	fmt.Printf("\n### authorization cost toward a guarded pod (medians of %d alternating rounds x %d connects; throughput: %d x 64 MiB)\n\n", rounds, perRound, len(thr[0]))
	fmt.Println("| policies on the pod | new conn/s, client outside the mesh (tc decides) | ratio | tc program time per connection | new conn/s, enrolled client (connect() decides) | ratio | connect4 program time per call | established throughput | ratio |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for ci, c := range configs {
		fmt.Printf("| %s | %.0f | %.3f | %.0f ns | %.0f | %.3f | %.0f ns | %.2f Gbit/s | %.3f |\n", c.name,
			med(outsider[ci]), med(outsider[ci])/med(outsider[0]), med(tcPerConn[ci]),
			med(enrolled[ci]), med(enrolled[ci])/med(enrolled[0]), med(connPerCall[ci]),
			med(thr[ci])/1e9, med(thr[ci])/med(thr[0]))
	}
}

// throughput streams n bytes from the pod to dst (an echo server whose
// greeting is skipped) and returns bits per second of the one-way stream.
func throughput(t *testing.T, p *testbed.Pod, dst netip.AddrPort, n int) float64 {
	t.Helper()
	c, err := p.Dial("tcp", dst.String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	done := make(chan error, 1)
	go func() {
		// Read the greeting and the echo back, discarding.
		total, want := 0, n
		for total < want {
			k, err := c.Read(buf)
			if err != nil {
				done <- err
				return
			}
			total += k
		}
		done <- nil
	}()
	out := make([]byte, 64<<10)
	start := time.Now()
	for sent := 0; sent < n; sent += len(out) {
		if _, err := c.Write(out); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return float64(n) * 8 / time.Since(start).Seconds()
}

// TestBenchWaypoint prints what the kernel spends on a connection sent to
// a waypoint beside one to a plain service: the connect hook (two load
// balancing picks and the config lookup instead of one pick), sockops (it
// files the socket in km_wp_sock and releases it at the first
// acknowledgement) and the sk_msg program that writes the PROXY v2 header.
func TestBenchWaypoint(t *testing.T) {
	if os.Getenv("KMESH_BENCH") != "1" {
		t.Skip("benchmark: make bench")
	}
	f := newFixture(t, 1, loader.Sizes{})
	f.upsert(f.service(1, maps.Random, 0))
	wp := f.net.AddPod(t, "wp0")
	ln, err := wp.Listen("tcp", fmt.Sprintf(":%d", loader.DefaultWaypointPort))
	if err != nil {
		t.Fatal(err)
	}
	testbed.Serve(t, ln, func(c net.Conn) {
		buf := make([]byte, 256)
		if _, err := c.Read(buf); err == nil {
			c.Write([]byte("y"))
		}
	})
	if err := f.maps.UpsertBackend(maps.Backend{ID: 150, Addresses: []netip.Addr{wp.IP4}}); err != nil {
		t.Fatal(err)
	}
	if err := f.maps.UpsertService(maps.Service{ID: 50, VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.50")},
		Ports: []maps.Port{{Port: 15008}}, Endpoints: [][]uint32{{150}}}); err != nil {
		t.Fatal(err)
	}
	vip2 := netip.MustParseAddr("10.96.0.20")
	if err := f.maps.UpsertService(maps.Service{ID: 2, VIPs: []netip.Addr{vip2}, Ports: []maps.Port{{Port: 80, TargetPort: serverPort}},
		Endpoints: [][]uint32{{wid(0)}}, Waypoint: maps.ServiceRef(50)}); err != nil {
		t.Fatal(err)
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enable BPF run-time stats: %v", err)
	}
	defer stats.Close()

	paths := []netip.AddrPort{netip.AddrPortFrom(vip4, 80), netip.AddrPortFrom(vip2, 80)}
	progs := []string{"km_connect4", loader.ProgSockops, loader.ProgWpMsg}
	const rounds, perRound = 21, 300
	var perConn [2][3][]time.Duration
	for range rounds {
		for p, dst := range paths {
			var before [3]ebpf.ProgramStats
			for i, name := range progs {
				s, _ := f.dp.Program(name).Stats()
				before[i] = *s
			}
			if err := sendFirst(f.client.NSPath, dst, perRound); err != nil {
				t.Fatal(err)
			}
			for i, name := range progs {
				s, _ := f.dp.Program(name).Stats()
				perConn[p][i] = append(perConn[p][i], (s.Runtime-before[i].Runtime)/perRound)
			}
		}
	}
	fmt.Printf("\n### Kernel time per connection to a waypoint (medians of %d rounds x %d connections per path, paths alternating; client sends 1 byte, reads 1)\n\n", rounds, perRound)
	fmt.Println("| path | km_connect4 | km_sockops (all callbacks) | km_wp_msg (PROXY v2 header) |")
	fmt.Println("|---|---:|---:|---:|")
	for p, label := range []string{"service VIP, no waypoint", "service VIP with a waypoint service"} {
		fmt.Printf("| %s | %d ns | %d ns | %d ns |\n", label, median(perConn[p][0]).Nanoseconds(),
			median(perConn[p][1]).Nanoseconds(), median(perConn[p][2]).Nanoseconds())
	}
}

// sendFirst opens n connections to dst one after another from a thread in
// the pod namespace: connect, send a byte, read the answer, reset.
func sendFirst(nsPath string, dst netip.AddrPort, n int) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the thread is discarded afterwards, never unlocked
		ns, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		err = unix.Setns(ns, unix.CLONE_NEWNET)
		unix.Close(ns)
		if err != nil {
			errc <- err
			return
		}
		sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
		buf := make([]byte, 64)
		for range n {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				errc <- err
				return
			}
			err = unix.Connect(fd, sa)
			if err == nil {
				_, err = unix.Write(fd, []byte("x"))
			}
			if err == nil {
				_, err = unix.Read(fd, buf)
			}
			_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			unix.Close(fd)
			if err != nil {
				errc <- fmt.Errorf("%s: %w", dst, err)
				return
			}
		}
		errc <- nil
	}()
	return <-errc
}
