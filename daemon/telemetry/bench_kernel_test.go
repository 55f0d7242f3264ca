package telemetry_test

// Telemetry cost: `make bench` (KMESH_BENCH=1). A new connection per
// request (fortio HTTP, keepalive off) through the service VIP, with the
// kernel's telemetry off and on (and this package reading the events),
// alternating run by run. It prints a table and never fails on a time.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

func med(rs []testbed.FortioResult, f func(testbed.FortioResult) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	return medOf(v)
}

func medOf(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

func fmtAll(v []float64) string {
	var b strings.Builder
	for i, x := range v {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%.2f", x)
	}
	return b.String()
}

// cgroupCPU is the CPU time used by everything in cg so far (the fortio
// client and server, and this process with its event reader, all run in
// it): a cost measure less swayed than rates by the machine's other load.
func cgroupCPU(t *testing.T, cg *testbed.Cgroup) time.Duration {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cg.Path, "cpu.stat"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			us, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return time.Duration(us) * time.Microsecond
		}
	}
	t.Fatal("no usage_usec in cpu.stat")
	return 0
}

// cpuTime is this process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestBenchTelemetryCost(t *testing.T) {
	if os.Getenv("KMESH_BENCH") != "1" {
		t.Skip("benchmark: make bench")
	}
	fortio := testbed.Fortio(t)
	n := newNodeWith(t, loader.Features{Telemetry: true}, 10*time.Second, false, true)
	n.ln.Close() // fortio serves instead
	n.server.FortioServer(t, nil, fortio, serverPort, "-http-port", strconv.Itoa(serverPort),
		"-tcp-port", "disabled", "-grpc-port", "disabled", "-redirect-port", "disabled", "-udp-port", "disabled")

	runs := 11
	if v, err := strconv.Atoi(os.Getenv("KMESH_BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enable BPF run-time stats: %v", err)
	}
	defer stats.Close()
	sockops := n.dp.Program(loader.ProgSockops)

	// Pairs of short runs, off and on back to back (order alternating), so
	// the shared machine's drift hits both; the ratio is taken per pair.
	dur := "3s"
	if v := os.Getenv("KMESH_BENCH_DUR"); v != "" {
		dur = v
	}
	// KMESH_BENCH_ONLY=on or off runs one side alone (for a profiler).
	only := os.Getenv("KMESH_BENCH_ONLY")
	if only != "" && only != "on" && only != "off" {
		t.Fatalf("KMESH_BENCH_ONLY=%q: want on or off", only)
	}
	results := map[bool][]testbed.FortioResult{}
	var ratios []float64
	var progNs [2][]float64 // sockops run time per connection, off/on
	var userUs []float64    // this process's CPU (the event reader) per connection, on
	var cgUs [2][]float64   // CPU of everything in the test's cgroup per connection, off/on
	for r := range runs {
		var pair [2]float64
		order := []bool{r%2 == 0, r%2 != 0}
		if only != "" {
			order = []bool{only == "on"}
		}
		for _, on := range order {
			if err := n.dp.SetFeatures(loader.Features{Telemetry: on}); err != nil {
				t.Fatal(err)
			}
			before, _ := sockops.Stats()
			cpu0 := cpuTime()
			cg0 := cgroupCPU(t, n.cg)
			res := n.client.FortioLoad(t, nil, fortio, "-qps", "0", "-c", "4", "-keepalive=false", "-t", dur,
				fmt.Sprintf("http://%s:%d/", vip, vipPort))
			cpu := cpuTime() - cpu0
			cg := cgroupCPU(t, n.cg) - cg0
			after, _ := sockops.Stats()
			if res.Errors != 0 || res.Calls == 0 {
				t.Fatalf("fortio: %+v", res)
			}
			results[on] = append(results[on], res)
			i := 0
			if on {
				i = 1
				userUs = append(userUs, float64(cpu.Microseconds())/float64(res.Calls))
			}
			pair[i] = res.QPS
			progNs[i] = append(progNs[i], float64((after.Runtime-before.Runtime).Nanoseconds())/float64(res.Calls))
			cgUs[i] = append(cgUs[i], float64(cg.Microseconds())/float64(res.Calls))
		}
		if only == "" {
			ratios = append(ratios, pair[1]/pair[0])
		}
	}
	if only != "off" && n.metric("istio_tcp_connections_opened_total", nil) == 0 {
		t.Fatal("telemetry recorded nothing")
	}
	qps := func(r testbed.FortioResult) float64 { return r.QPS }
	p99 := func(r testbed.FortioResult) float64 { return float64(r.P99.Microseconds()) }
	off, on := results[false], results[true]
	fmt.Printf("\n### Telemetry cost: a new connection per request (fortio %s HTTP, -keepalive=false, 4 connections, through the service VIP; %d pairs of %s runs, off and on back to back; medians; 2 shared cores)\n\n",
		testbed.FortioVersion, runs, dur)
	fmt.Println("| telemetry | connections/s | p99 | CPU per connection (all of client, server, reader) | sockops run time per connection | reader CPU per connection |")
	fmt.Println("|---|---|---|---|---|---|")
	if len(off) > 0 {
		fmt.Printf("| off | %.0f | %.0f µs | %.1f µs | %.0f ns | - |\n", med(off, qps), med(off, p99), medOf(cgUs[0]), medOf(progNs[0]))
	}
	if len(on) > 0 {
		fmt.Printf("| on (both ends recorded, events read) | %.0f | %.0f µs | %.1f µs | %.0f ns | %.1f µs |\n", med(on, qps), med(on, p99), medOf(cgUs[1]), medOf(progNs[1]), medOf(userUs))
	}
	fmt.Println()
	if only == "" {
		fmt.Printf("Median of per-pair ratios (on/off connections/s): **%.3f** (pairs: %s)\n\n", medOf(ratios), fmtAll(ratios))
		fmt.Printf("CPU cost ratio (off/on CPU per connection; the connection rate a CPU-bound node keeps): **%.3f**\n\n", medOf(cgUs[0])/medOf(cgUs[1]))
	}
	for _, on := range []bool{false, true} {
		var qs []string
		for _, r := range results[on] {
			qs = append(qs, fmt.Sprintf("%.0f", r.QPS))
		}
		t.Logf("telemetry=%v: %v", on, qs)
	}
}
