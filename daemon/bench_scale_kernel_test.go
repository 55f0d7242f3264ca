package main

// The mesh-scale benchmark (make bench): a mesh of 1,000 and 10,000
// services x 10 endpoints (xdstest.Mesh) given to a running daemon over
// xDS and as its --config-file, how long until it is in the kernel maps,
// and the daemon's memory afterwards. It prints a table and never fails on
// a time.

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/daemon/xds"
	"github.com/kmesh-go/kmesh/daemon/xds/xdstest"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

const benchEndpointsPerService = 10

// scaleSample is one daemon given one mesh.
type scaleSample struct {
	took    time.Duration // the source's change -> the mesh in the maps
	cpu     time.Duration // the daemon's CPU (user+system) meanwhile
	rss     float64       // MiB, 3 s after
	peak    float64       // MiB, the process's high-water mark
	loadavg string
}

func TestBenchMeshScale(t *testing.T) {
	if os.Getenv("KMESH_BENCH") != "1" {
		t.Skip("benchmark: make bench")
	}
	testbed.Require(t)
	runs := 3
	if v, err := strconv.Atoi(os.Getenv("KMESH_BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	sizes := []int{1000, 10000}
	if v := os.Getenv("KMESH_BENCH_SERVICES"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				t.Fatalf("KMESH_BENCH_SERVICES=%q: %v", v, err)
			}
			sizes = append(sizes, n)
		}
	}
	paths := []string{"xds", "file"}
	if v := os.Getenv("KMESH_BENCH_ONLY"); v != "" {
		paths = []string{v}
	}
	samples := map[string][]scaleSample{}
	startLoad := loadAverage()
	for run := range runs {
		for _, services := range sizes {
			order := slices.Clone(paths)
			if run%2 == 1 {
				slices.Reverse(order) // neither path always goes first
			}
			for _, path := range order {
				key := fmt.Sprintf("%d/%s", services, path)
				t.Run(strings.ReplaceAll(key, "/", "-"), func(t *testing.T) {
					var s scaleSample
					if path == "xds" {
						s = meshOverXDS(t, services)
					} else {
						s = meshFromFile(t, services)
					}
					t.Logf("%s run %d: %s, CPU %s, RSS %.1f MiB (peak %.1f), load %s", key, run, s.took.Round(time.Millisecond),
						s.cpu.Round(time.Millisecond), s.rss, s.peak, s.loadavg)
					samples[key] = append(samples[key], s)
				})
			}
		}
	}

	fmt.Printf("\n### kmesh-daemon: a whole mesh from istiod (xDS) and from --config-file\n\n")
	fmt.Printf("Services x %d endpoints each, given to a running daemon; medians of %d runs (a fresh daemon each, paths alternating). "+
		"Time: xDS from the server's send to the daemon's ACK (written to the maps), file from the rename into place to the daemon's "+
		"\"config applied\" (its 100 ms debounce included). RSS 3 s after. Load average %s at the start, %s at the end.\n\n",
		benchEndpointsPerService, runs, startLoad, loadAverage())
	fmt.Println("| services | resources | source | time | daemon CPU | RSS after | peak RSS | runs (time) |")
	fmt.Println("|---:|---:|---|---:|---:|---:|---:|---|")
	for _, services := range sizes {
		for _, path := range paths {
			ss := samples[fmt.Sprintf("%d/%s", services, path)]
			if len(ss) == 0 {
				continue
			}
			var took, cpu []time.Duration
			var rss, peak []float64
			var each []string
			for _, s := range ss {
				took, cpu = append(took, s.took), append(cpu, s.cpu)
				rss, peak = append(rss, s.rss), append(peak, s.peak)
				each = append(each, s.took.Round(10*time.Millisecond).String())
			}
			fmt.Printf("| %d | %d | %s | %s | %s | %.0f MiB | %.0f MiB | %s |\n", services, services*(1+benchEndpointsPerService),
				map[string]string{"xds": "xDS", "file": "--config-file"}[path],
				median(took).Round(10*time.Millisecond), median(cpu).Round(10*time.Millisecond), median(rss), median(peak), strings.Join(each, ", "))
		}
	}
}

// meshOverXDS starts a daemon on an empty xDS server, then serves it the
// mesh in one push.
func meshOverXDS(t *testing.T, services int) scaleSample {
	cg, pins := testbed.NewCgroup(t), testbed.PinDir(t)
	srv, err := xdstest.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	d := startDaemon(t, cg, pins, "--xds-address", srv.Addr, "--xds-plaintext", "--log-level", "debug")
	d.waitReady(20 * time.Second)
	mesh := xdstest.Resources(xdstest.Mesh(services, benchEndpointsPerService))
	load := loadAverage()
	profiled := d.profile(t, fmt.Sprintf("%d-xds", services))
	cpu0 := cpuTime(t, d.cmd.Process.Pid)
	seen := len(srv.Replies())
	if err := srv.Set(xds.TypeAddress, mesh); err != nil {
		t.Fatal(err)
	}
	r, err := srv.WaitReply(seen, 120*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.NACK != "" {
		t.Fatalf("mesh NACKed: %s", r.NACK)
	}
	sent, ok := srv.SentAt(r.Nonce)
	if !ok {
		t.Fatalf("no send time for nonce %s", r.Nonce)
	}
	s := scaleSample{took: r.At.Sub(sent), cpu: cpuTime(t, d.cmd.Process.Pid) - cpu0, loadavg: load}
	d.requireEndpoints(services * benchEndpointsPerService)
	d.logPhases(t)
	profiled()
	time.Sleep(3 * time.Second)
	s.rss, s.peak = memory(t, d.cmd.Process.Pid)
	d.logHeap(t)
	return s
}

// meshFromFile starts a daemon on an empty config file, then renames the
// mesh's file over it, as an editor or a ConfigMap update does.
func meshFromFile(t *testing.T, services int) scaleSample {
	cg, pins := testbed.NewCgroup(t), testbed.PinDir(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "mesh.json")
	if err := os.WriteFile(file, []byte("addresses: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cg, pins, "--config-file", file, "--log-level", "debug")
	d.waitReady(20 * time.Second)
	next := filepath.Join(dir, "mesh.json.next")
	f, err := os.Create(next)
	if err != nil {
		t.Fatal(err)
	}
	if err := xdstest.WriteConfigFile(f, xdstest.Mesh(services, benchEndpointsPerService)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	resources := services * (1 + benchEndpointsPerService)
	load := loadAverage()
	profiled := d.profile(t, fmt.Sprintf("%d-file", services))
	cpu0 := cpuTime(t, d.cmd.Process.Pid)
	start := time.Now()
	if err := os.Rename(next, file); err != nil {
		t.Fatal(err)
	}
	applied := d.waitLog(t, fmt.Sprintf("resources=%d ", resources), "config applied", 120*time.Second)
	s := scaleSample{took: applied.Sub(start), cpu: cpuTime(t, d.cmd.Process.Pid) - cpu0, loadavg: load}
	d.requireEndpoints(services * benchEndpointsPerService)
	d.logPhases(t)
	profiled()
	time.Sleep(3 * time.Second)
	s.rss, s.peak = memory(t, d.cmd.Process.Pid)
	d.logHeap(t)
	return s
}

// profile, with KMESH_BENCH_PPROF=dir, records the daemon's CPU for the
// next 10 s into dir/name.cpu.pprof; the function it returns waits for that
// and saves the heap as name.heap.pprof.
func (d *daemon) profile(t *testing.T, name string) func() {
	dir := os.Getenv("KMESH_BENCH_PPROF")
	if dir == "" {
		return func() {}
	}
	save := func(path, file string) {
		code, b, err := d.get(path)
		if err != nil || code != 200 {
			t.Errorf("%s: %d %v", path, code, err)
			return
		}
		if err := os.WriteFile(filepath.Join(dir, name+file), b, 0o644); err != nil {
			t.Error(err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		save("/debug/pprof/profile?seconds=10", ".cpu.pprof")
	}()
	time.Sleep(200 * time.Millisecond) // the profiler is on
	return func() {
		<-done
		save("/debug/pprof/heap?gc=1", ".heap.pprof")
	}
}

// waitLog waits for a log line holding msg and detail and returns the time
// the daemon wrote in it (millisecond precision).
func (d *daemon) waitLog(t *testing.T, detail, msg string, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(d.log.Name())
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, msg) && strings.Contains(l+" ", detail) {
				v, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
				at, err := time.Parse(time.RFC3339Nano, v)
				if err != nil {
					t.Fatalf("log line %q: %v", l, err)
				}
				return at
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %q with %q in the daemon's log within %s", msg, detail, timeout)
	return time.Time{}
}

// requireEndpoints checks that the maps hold n endpoints.
func (d *daemon) requireEndpoints(n int) {
	d.t.Helper()
	_, metrics, err := d.get("/metrics")
	if err != nil {
		d.t.Fatal(err)
	}
	if want := fmt.Sprintf(`kmesh_map_entries{map="km_endpoint"} %d`+"\n", n); !strings.Contains(string(metrics), want) {
		d.t.Fatalf("the maps do not hold the mesh: no %q in the metrics", strings.TrimSpace(want))
	}
}

// logPhases logs the daemon's own timing of the big update's steps.
func (d *daemon) logPhases(t *testing.T) {
	b, err := os.ReadFile(d.log.Name())
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(b), "\n") {
		for _, m := range []string{"msg=decoded", "msg=parsed", `msg="mesh update"`, `msg="config applied"`, `msg="data path synced"`} {
			if i := strings.Index(l, m); i >= 0 {
				t.Logf("  %s", l[i:])
			}
		}
	}
}

// logHeap logs the Go runtime's view of the daemon's memory, to tell the
// live heap from what the runtime keeps around it.
func (d *daemon) logHeap(t *testing.T) {
	_, b, err := d.get("/metrics")
	if err != nil {
		return
	}
	var parts []string
	for _, l := range strings.Split(string(b), "\n") {
		for _, m := range []string{"go_memstats_heap_inuse_bytes ", "go_memstats_heap_idle_bytes ", "go_memstats_heap_released_bytes ",
			"go_memstats_stack_inuse_bytes ", "go_memstats_sys_bytes ", "go_memstats_next_gc_bytes "} {
			if v, ok := strings.CutPrefix(l, m); ok {
				f, _ := strconv.ParseFloat(v, 64)
				parts = append(parts, fmt.Sprintf("%s=%.1fMiB", strings.TrimSuffix(strings.TrimPrefix(m, "go_memstats_"), "_bytes "), f/(1<<20)))
			}
		}
	}
	if _, b, err := d.get("/debug/pprof/heap?debug=1"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "# HeapAlloc = "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				parts = append(parts, fmt.Sprintf("heap_alloc=%.1fMiB", f/(1<<20)))
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", d.cmd.Process.Pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			for _, m := range []string{"Rss:", "Anonymous:"} {
				if v, ok := strings.CutPrefix(l, m); ok {
					kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
					parts = append(parts, fmt.Sprintf("%s=%.1fMiB", strings.ToLower(strings.TrimSuffix(m, ":")), kb/1024))
				}
			}
		}
	}
	t.Logf("  memory: %s", strings.Join(parts, " "))
}

// memory reads a process's resident set and its high-water mark, in MiB.
func memory(t *testing.T, pid int) (rss, peak float64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		switch k {
		case "VmRSS":
			rss = kb / 1024
		case "VmHWM":
			peak = kb / 1024
		}
	}
	return rss, peak
}

// cpuTime is a process's user and system time so far.
func cpuTime(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which sits in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:3], " ")
}

func median[T time.Duration | float64](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
