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

	runs := 5
	if v, err := strconv.Atoi(os.Getenv("KMESH_BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	const dur = "3s"
	type key struct {
		conns, size int
		accel       bool
	}
	type combo struct{ conns, size int }
	results := map[key][]testbed.FortioResult{}
	qpsRatio, p99Ratio := map[combo][]float64{}, map[combo][]float64{}
	before, _ := f.maps.Stats()
	// Pairs of runs, off and on back to back (order alternating), so the
	// shared machine's drift hits both; ratios are taken per pair.
	for r := range runs {
		for _, conns := range []int{1, 16} {
			for _, size := range []int{64, 1024} {
				var pair [2]testbed.FortioResult
				for _, accel := range []bool{r%2 == 0, r%2 != 0} {
					if err := f.dp.SetFeatures(loader.Features{SockmapAccel: accel}); err != nil {
						t.Fatal(err)
					}
					res := f.client.FortioLoad(t, f.cg, fortio, "-qps", "0", "-c", strconv.Itoa(conns), "-t", dur,
						"-payload-size", strconv.Itoa(size), "tcp://"+hostPort(vip4, 80))
					if res.Errors != 0 || res.Calls == 0 {
						t.Fatalf("fortio: %+v", res)
					}
					results[key{conns, size, accel}] = append(results[key{conns, size, accel}], res)
					if accel {
						pair[1] = res
					} else {
						pair[0] = res
					}
				}
				c := combo{conns, size}
				qpsRatio[c] = append(qpsRatio[c], pair[1].QPS/pair[0].QPS)
				p99Ratio[c] = append(p99Ratio[c], float64(pair[1].P99)/float64(pair[0].P99))
			}
		}
	}
	after, _ := f.maps.Stats()
	if after["msg_redirect"] == before["msg_redirect"] {
		t.Fatal("no run was accelerated")
	}

	fmt.Printf("\n### Same-node request/response, fortio %s TCP echo through the service VIP (%d pairs of %s runs, off and on back to back; medians; 2 shared cores)\n\n",
		testbed.FortioVersion, runs, dur)
	fmt.Println("| connections | payload | req/s off | req/s on | req/s ratio (median of pairs) | p50 off | p50 on | p99 off | p99 on | p99 ratio (median of pairs) |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	us := func(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d.Nanoseconds())/1e3) }
	for _, conns := range []int{1, 16} {
		for _, size := range []int{64, 1024} {
			off, on := results[key{conns, size, false}], results[key{conns, size, true}]
			q := func(r testbed.FortioResult) float64 { return r.QPS }
			p50 := func(r testbed.FortioResult) time.Duration { return r.P50 }
			p99 := func(r testbed.FortioResult) time.Duration { return r.P99 }
			c := combo{conns, size}
			fmt.Printf("| %d | %d B | %.0f | %.0f | %.2f | %s | %s | %s | %s | %.2f |\n", conns, size,
				medianF(off, q), medianF(on, q), medianOf(qpsRatio[c]),
				us(medianD(off, p50)), us(medianD(on, p50)), us(medianD(off, p99)), us(medianD(on, p99)), medianOf(p99Ratio[c]))
		}
	}
	fmt.Println()
	for c, rs := range qpsRatio {
		t.Logf("c=%d size=%d: req/s ratios %v, p99 ratios %v", c.conns, c.size, rs, p99Ratio[c])
	}
}

func medianOf(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
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
