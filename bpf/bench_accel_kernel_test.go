package bpf_test

// Same-node acceleration benchmark: `make bench` (KMESH_BENCH=1). fortio's
// TCP echo (request/response on kept-alive connections) from a client pod
// to a server pod through the service VIP, acceleration off and on,
// alternating run by run so the shared machine's drift hits both alike. It
// prints a table and never fails on a time.

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

func TestBenchSockmapAcceleration(t *testing.T) {
	if os.Getenv("KMESH_BENCH") != "1" {
		t.Skip("benchmark: make bench")
	}
	fortio := testbed.Fortio(t)
	f := newFixtureWith(t, 0, loader.Config{})
	server := f.net.AddPod(t, "server")
	f.enroll(server, maps.Enrollment{})
	const echoPort = 8078
	server.FortioServer(t, f.cg, fortio, echoPort, "-tcp-port", strconv.Itoa(echoPort),
		"-http-port", "disabled", "-grpc-port", "disabled", "-redirect-port", "disabled", "-udp-port", "disabled")
	if err := f.maps.UpsertBackend(maps.Backend{ID: 1, Addresses: []netip.Addr{server.IP4}}); err != nil {
		t.Fatal(err)
	}
	f.upsert(maps.Service{ID: 1, VIPs: []netip.Addr{vip4}, Ports: []maps.Port{{Port: 80, TargetPort: echoPort}},
		Endpoints: [][]uint32{{1}}})

	runs := 3
	if v, err := strconv.Atoi(os.Getenv("KMESH_BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	dur := "5s"
	type key struct {
		conns, size int
		accel       bool
	}
	results := map[key][]testbed.FortioResult{}
	before, _ := f.maps.Stats()
	for r := range runs {
		for _, conns := range []int{1, 16} {
			for _, size := range []int{64, 1024} {
				for _, accel := range []bool{r%2 == 0, r%2 != 0} { // alternate which goes first
					if err := f.dp.SetFeatures(loader.Features{SockmapAccel: accel}); err != nil {
						t.Fatal(err)
					}
					res := f.client.FortioLoad(t, f.cg, fortio, "-qps", "0", "-c", strconv.Itoa(conns), "-t", dur,
						"-payload-size", strconv.Itoa(size), "tcp://"+hostPort(vip4, 80))
					if res.Errors != 0 || res.Calls == 0 {
						t.Fatalf("fortio: %+v", res)
					}
					results[key{conns, size, accel}] = append(results[key{conns, size, accel}], res)
				}
			}
		}
	}
	after, _ := f.maps.Stats()
	if after["msg_redirect"] == before["msg_redirect"] {
		t.Fatal("no run was accelerated")
	}

	fmt.Printf("\n### Same-node request/response, fortio %s TCP echo through the service VIP (%d runs of %s each, medians; runs alternate off/on; 2 shared cores)\n\n",
		testbed.FortioVersion, runs, dur)
	fmt.Println("| connections | payload | req/s off | req/s on | ratio | p50 off | p50 on | p99 off | p99 on | p99 ratio |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	us := func(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d.Nanoseconds())/1e3) }
	for _, conns := range []int{1, 16} {
		for _, size := range []int{64, 1024} {
			off, on := results[key{conns, size, false}], results[key{conns, size, true}]
			qOff, qOn := medianF(off, func(r testbed.FortioResult) float64 { return r.QPS }), medianF(on, func(r testbed.FortioResult) float64 { return r.QPS })
			p50Off, p50On := medianD(off, func(r testbed.FortioResult) time.Duration { return r.P50 }), medianD(on, func(r testbed.FortioResult) time.Duration { return r.P50 })
			p99Off, p99On := medianD(off, func(r testbed.FortioResult) time.Duration { return r.P99 }), medianD(on, func(r testbed.FortioResult) time.Duration { return r.P99 })
			fmt.Printf("| %d | %d B | %.0f | %.0f | %.2f | %s | %s | %s | %s | %.2f |\n", conns, size, qOff, qOn, qOn/qOff,
				us(p50Off), us(p50On), us(p99Off), us(p99On), float64(p99On)/float64(p99Off))
		}
	}
	fmt.Println()
	for k, rs := range results {
		var qs []string
		for _, r := range rs {
			qs = append(qs, fmt.Sprintf("%.0f", r.QPS))
		}
		t.Logf("c=%d size=%d accel=%v: qps %v", k.conns, k.size, k.accel, qs)
	}
}

func medianF(rs []testbed.FortioResult, f func(testbed.FortioResult) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func medianD(rs []testbed.FortioResult, f func(testbed.FortioResult) time.Duration) time.Duration {
	v := make([]time.Duration, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	return median(v)
}
