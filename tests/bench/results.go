package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/tests/benchtab"
	"github.com/kmesh-go/kmesh/tests/nodebox"
)

// sample is one fortio run's figures.
type sample struct {
	qps                                     float64
	p50, p90, p99                           time.Duration
	requests, failed                        int64
	clientCPU, serverCPU, proxyCPU, meshCPU time.Duration
	run, pos                                int // which run, and where in that run's order of paths
}

// results holds every sample by path and measurement.
type results struct {
	by   map[string]map[string][]sample
	keys [][2]string // path and measurement, in the order first added
	// aborted counts runs fortio gave up on at their first call (gRPC),
	// by path and measurement; each was made again.
	aborted map[string]int
}

func newResults() *results {
	return &results{by: map[string]map[string][]sample{}, aborted: map[string]int{}}
}

func (r *results) add(path, kind string, s sample) {
	if r.by[path] == nil {
		r.by[path] = map[string][]sample{}
	}
	if r.by[path][kind] == nil {
		r.keys = append(r.keys, [2]string{path, kind})
	}
	r.by[path][kind] = append(r.by[path][kind], s)
}

// median of one figure over the runs of a path's measurement.
func (r *results) median(path, kind string, f func(sample) float64) float64 {
	var v []float64
	for _, s := range r.by[path][kind] {
		v = append(v, f(s))
	}
	return benchtab.Median(v)
}

// sum of one figure over every run of a path's measurement.
func (r *results) sum(path, kind string, f func(sample) float64) float64 {
	t := 0.0
	for _, s := range r.by[path][kind] {
		t += f(s)
	}
	return t
}

// paired is the median over runs of path's figure divided by direct's in
// the same run: runs next to each other share the machine's mood, so their
// ratio is steadier than a ratio of medians on a shared machine.
func (r *results) paired(path, kind string, f func(sample) float64) float64 {
	return benchtab.Median(r.ratios(path, kind, f))
}

// pairedBy is paired for a figure computed per run from several
// measurements (e.g. the best of the saturation runs).
func (r *results) pairedBy(path string, f func(key string, run int) float64) float64 {
	return benchtab.Median(r.ratiosBy(path, f))
}

// ratiosBy is each run's ratio of path's figure to direct's.
func (r *results) ratiosBy(path string, f func(key string, run int) float64) []float64 {
	return r.ratiosTo("direct", path, f)
}

// ratiosTo is each run's ratio of path's figure to base's.
func (r *results) ratiosTo(base, path string, f func(key string, run int) float64) []float64 {
	var v []float64
	for run := 0; ; run++ {
		a, b := f(path, run), f(base, run)
		if a == 0 || b == 0 {
			break
		}
		v = append(v, a/b)
	}
	return v
}

// ratios is ratiosBy for one measurement's figure.
func (r *results) ratios(path, kind string, f func(sample) float64) []float64 {
	return r.kindRatios("direct", path, kind, f)
}

// kindRatios is ratiosTo for one measurement's figure.
func (r *results) kindRatios(base, path, kind string, f func(sample) float64) []float64 {
	return r.ratiosTo(base, path, func(key string, run int) float64 {
		s := r.by[key][kind]
		if run >= len(s) {
			return 0
		}
		return f(s[run])
	})
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func qps(s sample) float64 { return s.qps }
func p50(s sample) float64 { return ms(s.p50) }
func p90(s sample) float64 { return ms(s.p90) }
func p99(s sample) float64 { return ms(s.p99) }

func ratio(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", v)
}

func (b *bench) print(took time.Duration, load1, load2 []string) {
	r := b.results
	const fixed = "fixed 1000qps c16"
	const newConn = "new conn c4"
	direct := "direct"
	var t *benchtab.Table
	row := func(cells ...string) {
		if t == nil {
			t = &benchtab.Table{Header: cells}
		} else {
			t.Rows = append(t.Rows, cells)
		}
	}
	flush := func() {
		t.Print()
		t = nil
	}
	label := func(p *path) string { return p.label }
	host, _ := os.Hostname()
	la := func(l []string) string {
		if len(l) >= 3 {
			return strings.Join(l[:3], " ")
		}
		return "?"
	}

	fmt.Printf("\nkmesh side-by-side benchmark (%s, %d CPUs, shared with other builds: load average %s at start, %s at end)\n",
		host, runtime.NumCPU(), la(load1), la(load2))
	fmt.Printf("fortio %s, 1 KiB POSTed and echoed; medians of %d runs per cell, paths interleaved (order reversed\n", nodebox.FortioVersion, b.runs)
	fmt.Printf("every other run); \"vs direct\" is the median of each run's ratio to direct in that run; %s in all.\n", took.Round(time.Second))
	fmt.Println("Client and server are pods (netns on a bridge) on the same 2 cores as fortio, HAProxy and the daemon:")
	fmt.Println("ratios measured side by side are the result, not the absolute times.")
	if !b.telemetry {
		fmt.Println("kmesh-daemon ran with --telemetry=false (no connection records, no sockops work per connection).")
	}

	maxQPS := func(key string) float64 {
		m := 0.0
		for _, c := range []int{1, 16, 64} {
			m = max(m, r.median(key, fmt.Sprintf("max qps c%d", c), qps))
		}
		return m
	}
	// The best of one run's saturation measurements.
	runMax := func(key string, run int) float64 {
		m := 0.0
		for _, c := range []int{1, 16, 64} {
			if s := r.by[key][fmt.Sprintf("max qps c%d", c)]; run < len(s) {
				m = max(m, s[run].qps)
			}
		}
		return m
	}
	ran := func(kind string) bool {
		for _, p := range b.paths {
			if len(r.by[p.key][kind]) > 0 {
				return true
			}
		}
		return false
	}

	if ran(fixed) {
		fmt.Printf("\n1. Fixed rate: 1000 qps, 16 connections, %s per run (latency in ms)\n\n", b.fixed)
		row("path", "p50", "p90", "p99", "p90 vs direct", "failed")
		for _, p := range b.paths {
			row(label(p),
				fmt.Sprintf("%.3f", r.median(p.key, fixed, p50)),
				fmt.Sprintf("%.3f", r.median(p.key, fixed, p90)),
				fmt.Sprintf("%.3f", r.median(p.key, fixed, p99)),
				ratio(r.paired(p.key, fixed, p90)),
				fmt.Sprintf("%.0f", r.sum(p.key, fixed, func(s sample) float64 { return float64(s.failed) })))
		}
		flush()
	}

	if ran("max qps c1") {
		fmt.Printf("\n2. Saturation (qps 0), %s per run: requests/s and p90 in ms\n\n", b.sat)
		row("path", "c=1 qps", "p90", "c=16 qps", "p90", "c=64 qps", "p90", "max qps", "vs direct")
		for _, p := range b.paths {
			cells := []string{label(p)}
			for _, c := range []int{1, 16, 64} {
				k := fmt.Sprintf("max qps c%d", c)
				cells = append(cells, fmt.Sprintf("%.0f", r.median(p.key, k, qps)), fmt.Sprintf("%.3f", r.median(p.key, k, p90)))
			}
			cells = append(cells, fmt.Sprintf("%.0f", maxQPS(p.key)), ratio(r.pairedBy(p.key, runMax)))
			row(cells...)
		}
		flush()
	}

	if ran(newConn) {
		fmt.Printf("\n3. A new connection per request (-keepalive=false), 4 connections, %s per run\n", b.nc)
		fmt.Println("   (client CPU: the fortio client's user+system time per request; the connect hook runs in its")
		fmt.Println("   connect() and counts there, so this is the kernel's per-connection cost on the client side)")
		fmt.Println()
		row("path", "requests/s", "vs direct", "p90 ms", "client CPU µs/req", "vs direct", "proxy / daemon µs/req", "failed")
		perReq := func(f func(s sample) time.Duration) func(s sample) float64 {
			return func(s sample) float64 {
				if s.requests == 0 {
					return 0
				}
				return float64(f(s).Nanoseconds()) / 1000 / float64(s.requests)
			}
		}
		clientCPU := perReq(func(s sample) time.Duration { return s.clientCPU })
		// The daemon's share of a connection: its reader accounts the
		// connection's records (telemetry).
		otherCPU := perReq(func(s sample) time.Duration { return s.proxyCPU + s.meshCPU })
		for _, p := range b.paths {
			row(label(p),
				fmt.Sprintf("%.0f", r.median(p.key, newConn, qps)),
				ratio(r.paired(p.key, newConn, qps)),
				fmt.Sprintf("%.3f", r.median(p.key, newConn, p90)),
				fmt.Sprintf("%.1f", r.median(p.key, newConn, clientCPU)),
				ratio(r.paired(p.key, newConn, clientCPU)),
				fmt.Sprintf("%.1f", r.median(p.key, newConn, otherCPU)),
				fmt.Sprintf("%.0f", r.sum(p.key, newConn, func(s sample) float64 { return float64(s.failed) })))
		}
		flush()
	}

	if ran(fixed) {
		fmt.Println("\n4. CPU seconds (user+system, from /proc) per 10,000 requests at the fixed rate")
		fmt.Println("   (the proxy column is HAProxy for its paths, kmesh-daemon for kmesh's; kernel softirq time is nobody's)")
		fmt.Println()
		row("path", "fortio client", "fortio server", "proxy / daemon", "total")
		per10k := func(key string, f func(s sample) time.Duration) float64 {
			n := r.sum(key, fixed, func(s sample) float64 { return float64(s.requests) })
			if n == 0 {
				return 0
			}
			return r.sum(key, fixed, func(s sample) float64 { return f(s).Seconds() }) / n * 10000
		}
		for _, p := range b.paths {
			c := per10k(p.key, func(s sample) time.Duration { return s.clientCPU })
			s := per10k(p.key, func(s sample) time.Duration { return s.serverCPU })
			x := per10k(p.key, func(s sample) time.Duration { return s.proxyCPU + s.meshCPU })
			row(label(p), fmt.Sprintf("%.3f", c), fmt.Sprintf("%.3f", s), fmt.Sprintf("%.3f", x), fmt.Sprintf("%.3f", c+s+x))
		}
		flush()
	}

	if b.cost != nil {
		b.cost.print()
	}

	if slices.ContainsFunc(b.paths, func(p *path) bool { return p.key == "kmesh" }) && slices.ContainsFunc(b.paths, func(p *path) bool { return p.key == direct }) {
		fmt.Println("\nTargets (kmesh vs direct):")
		// The verdict is on the median of the runs' ratios; the interval
		// says how far this run of the benchmark can be trusted on it.
		check := func(what string, runs []float64, limit float64, atMost bool) {
			v := benchtab.Median(runs)
			ok := v >= limit
			cmp := ">="
			if atMost {
				ok, cmp = v <= limit, "<="
			}
			verdict := "met"
			if !ok {
				verdict = "NOT met"
			}
			spread := fmt.Sprintf("%d runs", len(runs))
			if lo, hi, ok := benchtab.MedianInterval(runs); ok {
				spread = fmt.Sprintf("95%% interval of the median %.3f-%.3f over %d runs", lo, hi, len(runs))
				if lo < limit && limit < hi {
					verdict += ", within the noise"
				}
			}
			fmt.Printf("  %-34s %.3fx (target %s %.2fx; %s): %s\n", what, v, cmp, limit, spread, verdict)
		}
		if ran(fixed) {
			check("p90 at 1000 qps", r.ratios("kmesh", fixed, p90), 1.05, true)
		}
		if ran("max qps c1") {
			check("max qps (best connection count)", r.ratiosBy("kmesh", runMax), 0.95, false)
		}
		if ran(newConn) {
			check("new connections per second", r.ratios("kmesh", newConn, qps), 0.95, false)
		}
	}
	fmt.Println("\nPaths: fortio runs in the client pod; for kmesh's paths inside the cgroup the data path is attached")
	fmt.Println("to (the client pod is enrolled), for the others in a cgroup beside it at the same depth, with kmesh's")
	fmt.Println("tc program taken off the client's veth, so they meet no kmesh program. The server pod is not enrolled;")
	fmt.Println("kmesh-tc adds kmesh's tc program on its veth, as for an enrolled server.")
	fmt.Println("iptables DNAT runs in the client pod's netfilter (kube-proxy's rules, per pod) to a second fortio")
	fmt.Println("server in the server pod (port 8081), so its conntrack entries never meet the other paths' connections")
	fmt.Println("to port 8080 (they did, and dropped their SYNs: every row's new-connection rate fell); HAProxy listens on")
	fmt.Println("the client pod's loopback, as a sidecar would, in TCP mode (like a ztunnel hop) and HTTP mode (like")
	fmt.Println("an Envoy sidecar; it reuses server connections).")
}

// writeCSV writes every sample, one line per fortio run, for analyses the
// tables do not make (order effects, drift over a run, distributions).
func (r *results) writeCSV(name string) error {
	var b strings.Builder
	b.WriteString("run,pos,path,measurement,qps,requests,failed,p50_ms,p90_ms,p99_ms,client_cpu_ms,server_cpu_ms,proxy_cpu_ms,mesh_cpu_ms\n")
	for _, k := range r.keys {
		for _, s := range r.by[k[0]][k[1]] {
			fmt.Fprintf(&b, "%d,%d,%s,%s,%.1f,%d,%d,%.4f,%.4f,%.4f,%.1f,%.1f,%.1f,%.1f\n",
				s.run, s.pos, k[0], k[1], s.qps, s.requests, s.failed, ms(s.p50), ms(s.p90), ms(s.p99),
				ms(s.clientCPU), ms(s.serverCPU), ms(s.proxyCPU), ms(s.meshCPU))
		}
	}
	return os.WriteFile(name, []byte(b.String()), 0o644)
}
