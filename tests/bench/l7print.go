package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/tests/benchtab"
	"github.com/kmesh-go/kmesh/tests/nodebox"
)

// printL7 prints the L7 tables and the verdicts on the waypoint's targets
// (against the HAProxy hop, same run).
func (b *bench) printL7(st *l7State) {
	r := st.res
	const (
		fixed    = "fixed 1000qps c16"
		newConn  = "new conn c4"
		grpcRate = "grpc 1000qps c16"
		grpcMax  = "grpc max qps c16"
		sat16    = "max qps c16"
	)
	has := func(key string) bool { _, ok := r.by[key]; return ok }
	vs := func(base, key, kind string, f func(sample) float64) string {
		if !has(base) || !has(key) {
			return "-"
		}
		return ratio(benchtab.Median(r.kindRatios(base, key, kind, f)))
	}
	perReq := func(f func(s sample) time.Duration) func(s sample) float64 {
		return func(s sample) float64 {
			if s.requests == 0 {
				return 0
			}
			return float64(f(s).Nanoseconds()) / 1000 / float64(s.requests)
		}
	}
	proxyCPU := perReq(func(s sample) time.Duration { return s.proxyCPU })
	daemonCPU := perReq(func(s sample) time.Duration { return s.meshCPU })
	clientCPU := perReq(func(s sample) time.Duration { return s.clientCPU })
	failed := func(key, kind string) string {
		return fmt.Sprintf("%.0f", r.sum(key, kind, func(s sample) float64 { return float64(s.failed) }))
	}
	la := func(l []string) string {
		if len(l) >= 3 {
			return strings.Join(l[:3], " ")
		}
		return "?"
	}
	ran := func(kind string) bool {
		for _, p := range st.paths {
			if len(r.by[p.key][kind]) > 0 {
				return true
			}
		}
		return false
	}
	host, _ := os.Hostname()
	fmt.Printf("\nkmesh L7 benchmark: one proxy hop that speaks HTTP (%s, %d CPUs, shared: load average %s at start, %s at end)\n",
		host, runtime.NumCPU(), la(st.load1), la(st.load2))
	fmt.Printf("fortio %s, 1 KiB each way (gRPC: ping with 1 KiB); medians of %d runs per cell, paths interleaved (order\n", nodebox.FortioVersion, b.runs)
	fmt.Printf("reversed every other run); \"vs\" columns are the median of each run's own ratio; %s in all.\n", st.took.Round(time.Second))
	fmt.Println("HAProxy stands in for Envoy (not installable here), in a pod of its own: the position a waypoint has.")

	if ran(fixed) {
		fmt.Printf("\nL7-1. HTTP/1.1, fixed rate: 1000 qps, 16 connections, %s per run (ms)\n\n", b.l7.fixed)
		t := &benchtab.Table{Header: []string{"path", "p50", "p90", "p99", "p90 vs direct", "p90 vs HAProxy", "failed"}}
		for _, p := range st.paths {
			t.Rows = append(t.Rows, []string{p.label,
				fmt.Sprintf("%.3f", r.median(p.key, fixed, p50)), fmt.Sprintf("%.3f", r.median(p.key, fixed, p90)),
				fmt.Sprintf("%.3f", r.median(p.key, fixed, p99)), vs("direct", p.key, fixed, p90), vs("haproxy", p.key, fixed, p90),
				failed(p.key, fixed)})
		}
		t.Print()
	}
	if ran(sat16) {
		fmt.Printf("\nL7-2. HTTP/1.1, saturation (qps 0), %s per run: requests/s and p90 (ms)\n\n", b.l7.sat)
		t := &benchtab.Table{Header: []string{"path", "c=4 qps", "p90", "c=16 qps", "p90", "c=64 qps", "p90", "c=16 vs direct", "c=16 vs HAProxy", "failed"}}
		for _, p := range st.paths {
			cells := []string{p.label}
			n := 0.0
			for _, c := range []int{4, 16, 64} {
				k := fmt.Sprintf("max qps c%d", c)
				cells = append(cells, fmt.Sprintf("%.0f", r.median(p.key, k, qps)), fmt.Sprintf("%.3f", r.median(p.key, k, p90)))
				n += r.sum(p.key, k, func(s sample) float64 { return float64(s.failed) })
			}
			cells = append(cells, vs("direct", p.key, sat16, qps), vs("haproxy", p.key, sat16, qps), fmt.Sprintf("%.0f", n))
			t.Rows = append(t.Rows, cells)
		}
		t.Print()
	}
	if ran(newConn) {
		fmt.Printf("\nL7-3. HTTP/1.1, a new connection per request (-keepalive=false), 4 connections, %s per run\n", b.l7.nc)
		fmt.Println("   (the proxies keep their connections to the server; CPU in µs per request from /proc)")
		fmt.Println()
		t := &benchtab.Table{Header: []string{"path", "requests/s", "vs direct", "vs HAProxy", "p90 ms", "client CPU", "proxy CPU", "daemon CPU", "failed"}}
		for _, p := range st.paths {
			t.Rows = append(t.Rows, []string{p.label, fmt.Sprintf("%.0f", r.median(p.key, newConn, qps)),
				vs("direct", p.key, newConn, qps), vs("haproxy", p.key, newConn, qps),
				fmt.Sprintf("%.3f", r.median(p.key, newConn, p90)), fmt.Sprintf("%.1f", r.median(p.key, newConn, clientCPU)),
				fmt.Sprintf("%.1f", r.median(p.key, newConn, proxyCPU)), fmt.Sprintf("%.1f", r.median(p.key, newConn, daemonCPU)),
				failed(p.key, newConn)})
		}
		t.Print()
	}
	if ran(fixed) {
		fmt.Println("\nL7-4. What the proxy costs: its CPU (user+system) per request, and its resident memory")
		fmt.Println("   (the daemon's CPU is kmesh-daemon's share: it reads the connection records of the waypoint path's")
		fmt.Println("   sockets; RSS idle after a warm-up, after the runs, and the peak)")
		fmt.Println()
		t := &benchtab.Table{Header: []string{"path", "proxy µs/req @1000 qps", "proxy µs/req @c=16 max", "vs HAProxy", "daemon µs/req @1000 qps", "RSS MiB idle / after / peak"}}
		for _, p := range st.paths {
			if p.proxy == nil {
				continue
			}
			i, a := st.idleRSS[p.key], st.afterRSS[p.key]
			t.Rows = append(t.Rows, []string{p.label,
				fmt.Sprintf("%.1f", r.median(p.key, fixed, proxyCPU)), fmt.Sprintf("%.1f", r.median(p.key, sat16, proxyCPU)),
				vs("haproxy", p.key, sat16, proxyCPU), fmt.Sprintf("%.1f", r.median(p.key, fixed, daemonCPU)),
				fmt.Sprintf("%s / %s / %s", mib(i.rss), mib(a.rss), mib(a.hwm))})
		}
		t.Print()
	}
	if ran(grpcRate) {
		fmt.Printf("\nL7-5. gRPC (fortio ping, h2c both ways): 1000 qps over 16 connections (%s per run), and saturation at 16 (%s)\n\n", b.l7.fixed, b.l7.sat)
		t := &benchtab.Table{Header: []string{"path", "p50 ms", "p90 ms", "p99 ms", "p90 vs HAProxy", "max qps", "vs direct", "vs HAProxy", "proxy µs/req @max", "failed"}}
		for _, p := range st.paths {
			t.Rows = append(t.Rows, []string{p.label,
				fmt.Sprintf("%.3f", r.median(p.key, grpcRate, p50)), fmt.Sprintf("%.3f", r.median(p.key, grpcRate, p90)),
				fmt.Sprintf("%.3f", r.median(p.key, grpcRate, p99)), vs("haproxy", p.key, grpcRate, p90),
				fmt.Sprintf("%.0f", r.median(p.key, grpcMax, qps)), vs("direct", p.key, grpcMax, qps), vs("haproxy", p.key, grpcMax, qps),
				fmt.Sprintf("%.1f", r.median(p.key, grpcMax, proxyCPU)),
				fmt.Sprintf("%.0f", r.sum(p.key, grpcRate, func(s sample) float64 { return float64(s.failed) })+r.sum(p.key, grpcMax, func(s sample) float64 { return float64(s.failed) })+
					float64(r.aborted[p.key+"\x00"+grpcRate]+r.aborted[p.key+"\x00"+grpcMax]))})
		}
		t.Print()
		fmt.Println("   (failed counts the first calls of runs fortio gave up on, each run made again)")
	}
	if m := st.mem; m != nil {
		fmt.Printf("\nL7-6. kmesh-waypoint's memory with %d services (3 pods each) and %d workloads fed over xDS\n", m.services, m.workloads)
		fmt.Println("   (a second waypoint pod, --xds-plaintext to a go-control-plane server serving istiod-shaped config;")
		fmt.Printf("   ready %s after its start; loaded through the kernel's redirect: %s at 1000 qps, then %s at c=64, %.0f qps, %d failed)\n",
			m.pushTook.Round(time.Millisecond), b.l7.fixed, b.l7.fixed, m.loadQPS, m.loadFailed)
		fmt.Println()
		t := &benchtab.Table{Header: []string{"when", "RSS MiB", "anonymous", "file-backed", "peak so far", "Go heap in use MiB"}}
		row := func(when string, x rssInfo, heap string) {
			t.Rows = append(t.Rows, []string{when, mib(x.rss), mib(x.anon), mib(x.file), mib(x.hwm), heap})
		}
		row("after the first push (ready)", m.firstPush, "")
		row("steady, 10 s later", m.steady, fmt.Sprintf("%.1f", m.heapSteady))
		row("under load (highest sample)", m.underLoad, "")
		row("after the load", m.afterLoad, fmt.Sprintf("%.1f", m.heapLoad))
		t.Print()
	}

	if has("waypoint") && has("haproxy") {
		fmt.Println("\nTargets (kmesh's waypoint hop vs the HAProxy HTTP hop, same run):")
		if ran(fixed) {
			verdict("p90 at 1000 qps", r.kindRatios("haproxy", "waypoint", fixed, p90), 1.00, true)
		}
		if ran(sat16) {
			verdict("max qps at 16 connections", r.kindRatios("haproxy", "waypoint", sat16, qps), 0.90, false)
		}
		if ran(grpcRate) {
			fmt.Println("  (gRPC, no target: p90 and max qps as above)")
			verdict("gRPC p90 at 1000 qps", r.kindRatios("haproxy", "waypoint", grpcRate, p90), 1.00, true)
			verdict("gRPC max qps at 16 connections", r.kindRatios("haproxy", "waypoint", grpcMax, qps), 0.90, false)
		}
	}
	if m := st.mem; m != nil {
		peak := max(m.firstPush.hwm, m.underLoad.hwm, m.afterLoad.hwm)
		v := "met"
		if float64(peak)/1024 > 40 {
			v = "NOT met"
		}
		fmt.Printf("  %-34s %s MiB peak (first push %s, steady %s, under load %s; target <= 40 MiB): %s\n",
			fmt.Sprintf("waypoint RSS, %d services", m.services), mib(peak), mib(m.firstPush.rss), mib(m.steady.rss), mib(m.underLoad.rss), v)
	}
	fmt.Println("\nPaths: fortio runs in the client pod, beside the mesh's cgroup for direct and HAProxy (kmesh's tc program")
	fmt.Println("off the client's veth), inside it for the waypoint path, whose connect() kmesh sends to the waypoint pod.")
	fmt.Printf("The waypoint pod is %s; kmesh-waypoint runs an Envoy bootstrap: a listener on 15019 with the PROXY\n", map[bool]string{true: "enrolled, kmesh-waypoint in the mesh's cgroup", false: "not enrolled, kmesh-waypoint beside the mesh's cgroup"}[b.l7.inMesh])
	fmt.Println("protocol, a chain per port of the service shaped as istiod writes a waypoint's (its HCM settings, fault, CORS,")
	fmt.Println("router, istiod's default retry policy), the server pod as a static endpoint (h2c for gRPC). HAProxy: HTTP")
	fmt.Println("mode, http-reuse always, h2c both ways for gRPC.")
}

// verdict prints a target's median ratio with its 95% interval.
func verdict(what string, runs []float64, limit float64, atMost bool) {
	if len(runs) == 0 {
		return
	}
	v := benchtab.Median(runs)
	ok, cmp := v >= limit, ">="
	if atMost {
		ok, cmp = v <= limit, "<="
	}
	word := "met"
	if !ok {
		word = "NOT met"
	}
	spread := fmt.Sprintf("%d runs", len(runs))
	if lo, hi, ok := benchtab.MedianInterval(runs); ok {
		spread = fmt.Sprintf("95%% interval of the median %.3f-%.3f over %d runs", lo, hi, len(runs))
		if lo < limit && limit < hi {
			word += ", within the noise"
		}
	}
	fmt.Printf("  %-34s %.3fx (target %s %.2fx; %s): %s\n", what, v, cmp, limit, spread, word)
}
