// Command wpbench compares kmesh-waypoint's engine with HAProxy in HTTP
// mode (the stand-in for Envoy, which is not installable here) as one
// proxy hop on loopback: the same fortio client and server, the two paths
// alternated within one run, medians and ratios printed as markdown.
//
//	go run ./waypoint/internal/wpbench            # the comparison
//	go run ./waypoint/internal/wpbench -h         # knobs
//
// The waypoint runs in a child process of its own (wpbench serve) with a
// synthetic configuration of -services services, so its resident memory
// is the waypoint's alone. Its listener accepts connections without a
// PROXY header (AllowWithoutProxyProtocol): a forwarder adding one would
// be a hop of its own; the header's cost is measured apart
// (BenchmarkProxyHeader in waypoint/proxy).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // the serve mode's -pprof
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/internal/fortio"
	"github.com/kmesh-go/kmesh/waypoint/internal/synth"
	"github.com/kmesh-go/kmesh/waypoint/proxy"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		if err := serve(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "wpbench serve:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "wpbench:", err)
		os.Exit(1)
	}
}

// serve runs the engine with a synthetic configuration until killed.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:18082", "waypoint listener")
	backend := fs.String("backend", "127.0.0.1:18080", "the endpoint of the service traffic goes to")
	services := fs.Int("services", 1000, "services in the configuration")
	pprof := fs.String("pprof", "", "serve net/http/pprof on this address")
	netHTTP := fs.Bool("nethttp", false, "HTTP/1.1 through net/http's Server and Transport instead of package h1")
	fs.Parse(args)
	e := proxy.New(proxy.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		NetHTTPUpstream: *netHTTP, NetHTTPServer: *netHTTP})
	snap := synth.Snapshot(synth.Options{Services: *services, Listen: netip.MustParseAddrPort(*listen), ProxyProtocol: true,
		AllowWithoutProxyProtocol: true, Backend: netip.MustParseAddrPort(*backend)})
	if err := e.Apply(snap); err != nil {
		return err
	}
	// What a configuration costs, not the garbage of building it.
	snap = nil
	runtime.GC()
	debug.FreeOSMemory()
	if *pprof != "" {
		go http.ListenAndServe(*pprof, nil)
	}
	fmt.Println("ready")
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
	return e.Close()
}

type path struct {
	key, label, url string
	proc            *os.Process
}

type sample struct {
	p50, p90, p99 float64 // ms at the fixed rate
	qps           float64 // saturation
	cpuUsPerReq   float64 // the proxy's CPU per request at saturation
}

func run(args []string) error {
	fs := flag.NewFlagSet("wpbench", flag.ExitOnError)
	runs := fs.Int("runs", 5, "alternated runs")
	fixed := fs.Duration("fixed", 10*time.Second, "duration of the fixed-rate load")
	sat := fs.Duration("sat", 10*time.Second, "duration of the saturation load")
	services := fs.Int("services", 1000, "services in the waypoint's configuration")
	conns := fs.Int("c", 16, "connections")
	payload := fs.Int("payload", 1024, "request and response payload bytes")
	fortio := fs.String("fortio", "", "fortio binary (default: PATH, then ~/go/bin)")
	keep := fs.Bool("pprof", false, "waypoint serves pprof on 127.0.0.1:18090")
	compare := fs.Bool("nethttp", false, "add a path: the waypoint on net/http's Server and Transport (HTTP/1.1), without package h1")
	variant := fs.String("variant", "", "add a path: the waypoint run with this environment (e.g. GOMAXPROCS=1)")
	fs.Parse(args)

	bin, err := findFortio(*fortio)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "wpbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	const backend, haproxyAddr, waypointAddr, netHTTPAddr, variantAddr = "127.0.0.1:18080", "127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083", "127.0.0.1:18084"
	// Something already on a port (a proxy left over, a server of another
	// run) would take part of a path's traffic: HAProxy binds with
	// SO_REUSEPORT and would share its port without a word.
	for _, a := range []string{backend, haproxyAddr, waypointAddr, netHTTPAddr, variantAddr} {
		if c, err := net.DialTimeout("tcp", a, 200*time.Millisecond); err == nil {
			c.Close()
			return fmt.Errorf("something already listens on %s: stop it first", a)
		}
	}
	var procs []*exec.Cmd
	defer func() {
		// Only what this run started, by PID.
		for _, c := range procs {
			c.Process.Signal(syscall.SIGTERM)
			c.Wait()
		}
	}()
	var env []string
	start := func(name string, argv ...string) (*exec.Cmd, error) {
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return nil, err
		}
		c := exec.Command(argv[0], argv[1:]...)
		if env != nil {
			c.Env = append(os.Environ(), env...)
		}
		c.Stdout, c.Stderr = logf, logf
		if err := c.Start(); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		procs = append(procs, c)
		return c, nil
	}
	if _, err := start("fortio-server", bin, "server", "-http-port", backend, "-grpc-port", "disabled", "-redirect-port", "disabled"); err != nil {
		return err
	}
	hcfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(hcfg, []byte(haproxyConfig(haproxyAddr, backend)), 0o644); err != nil {
		return err
	}
	hp, err := start("haproxy", "/usr/sbin/haproxy", "-db", "-f", hcfg)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	wargs := []string{self, "serve", "-listen", waypointAddr, "-backend", backend, "-services", strconv.Itoa(*services)}
	if *keep {
		wargs = append(wargs, "-pprof", "127.0.0.1:18090")
	}
	wp, err := start("waypoint", wargs...)
	if err != nil {
		return err
	}
	var wn *exec.Cmd
	if *compare {
		wn, err = start("waypoint-nethttp", self, "serve", "-listen", netHTTPAddr, "-backend", backend, "-services", strconv.Itoa(*services), "-nethttp")
		if err != nil {
			return err
		}
		if err := waitListening(ctx, netHTTPAddr); err != nil {
			return err
		}
	}
	var wv *exec.Cmd
	if *variant != "" {
		env = strings.Fields(*variant)
		wv, err = start("waypoint-variant", self, "serve", "-listen", variantAddr, "-backend", backend, "-services", strconv.Itoa(*services))
		env = nil
		if err != nil {
			return err
		}
		if err := waitListening(ctx, variantAddr); err != nil {
			return err
		}
	}
	for _, a := range []string{backend, haproxyAddr, waypointAddr} {
		if err := waitListening(ctx, a); err != nil {
			return fmt.Errorf("%s: %w (logs in %s)", a, err, dir)
		}
	}
	idle := map[int]int64{}
	for _, c := range procs {
		idle[c.Process.Pid] = rss(c.Process.Pid, "VmRSS")
	}
	rssIdle := idle[wp.Process.Pid]

	paths := []path{
		{key: "haproxy", label: "HAProxy HTTP hop (Envoy stand-in)", url: "http://" + haproxyAddr + "/", proc: hp.Process},
		{key: "waypoint", label: fmt.Sprintf("kmesh-waypoint (%d services)", *services), url: "http://" + waypointAddr + "/", proc: wp.Process},
	}
	if wn != nil {
		paths = append(paths, path{key: "nethttp", label: "kmesh-waypoint on net/http (Server and Transport)", url: "http://" + netHTTPAddr + "/", proc: wn.Process})
	}
	if wv != nil {
		paths = append(paths, path{key: "variant", label: "kmesh-waypoint, " + *variant, url: "http://" + variantAddr + "/", proc: wv.Process})
	}
	pl := strconv.Itoa(*payload)
	// Warm both paths up (connections, pools, the CPU frequency).
	for _, p := range paths {
		if _, err := load(ctx, bin, dir, p.url, "-qps", "0", "-c", strconv.Itoa(*conns), "-t", "2s", "-payload-size", pl); err != nil {
			return fmt.Errorf("%s warm-up: %w", p.key, err)
		}
	}
	loadStart, _ := os.ReadFile("/proc/loadavg")
	results := map[string][]sample{}
	for i := range *runs {
		order := slices.Clone(paths)
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for _, p := range order {
			fr, err := load(ctx, bin, dir, p.url, "-qps", "1000", "-c", strconv.Itoa(*conns), "-t", fixed.String(), "-payload-size", pl)
			if err != nil {
				return fmt.Errorf("%s fixed: %w", p.key, err)
			}
			cpu0 := cpuTime(p.proc.Pid)
			sr, err := load(ctx, bin, dir, p.url, "-qps", "0", "-c", strconv.Itoa(*conns), "-t", sat.String(), "-payload-size", pl)
			if err != nil {
				return fmt.Errorf("%s saturation: %w", p.key, err)
			}
			cpu := cpuTime(p.proc.Pid) - cpu0
			s := sample{p50: fr.pct(50), p90: fr.pct(90), p99: fr.pct(99), qps: sr.ActualQPS}
			if n := sr.count(); n > 0 {
				s.cpuUsPerReq = float64(cpu.Microseconds()) / float64(n)
			}
			results[p.key] = append(results[p.key], s)
			fmt.Fprintf(os.Stderr, "run %d %-8s p50 %.3f p90 %.3f p99 %.3f ms | max %.0f qps, %.1f µs CPU/req (errors %d/%d)\n",
				i+1, p.key, s.p50, s.p90, s.p99, s.qps, s.cpuUsPerReq, fr.errors()+sr.errors(), fr.count()+sr.count())
		}
	}
	loadEnd, _ := os.ReadFile("/proc/loadavg")
	rssBusy, hwm := rss(wp.Process.Pid, "VmRSS"), rss(wp.Process.Pid, "VmHWM")
	report(paths, results, *runs, *conns, *payload, *services, rssIdle, rssBusy, hwm, string(loadStart), string(loadEnd))
	fmt.Println("\nResident memory of each proxy (MiB): idle before the loads / after them / peak")
	for _, p := range paths {
		pid := p.proc.Pid
		fmt.Printf("  %-50s %5.1f / %5.1f / %5.1f\n", p.label, mib(idle[pid]), mib(rss(pid, "VmRSS")), mib(rss(pid, "VmHWM")))
	}
	return nil
}

func report(paths []path, res map[string][]sample, runs, conns, payload, services int, rssIdle, rssBusy, hwm int64, l0, l1 string) {
	med := func(key string, f func(sample) float64) float64 {
		var v []float64
		for _, s := range res[key] {
			v = append(v, f(s))
		}
		return median(v)
	}
	ratio := func(f func(sample) float64) float64 {
		var v []float64
		for i := range res["waypoint"] {
			if b := f(res["haproxy"][i]); b > 0 {
				v = append(v, f(res["waypoint"][i])/b)
			}
		}
		return median(v)
	}
	fmt.Printf("\nOne proxy hop on loopback, fortio %d connections, %d B payload each way, %d alternated runs (medians; ratios are medians of each run's own ratio).\n", conns, payload, runs)
	fmt.Printf("load average before: %s; after: %s\n\n", strings.TrimSpace(l0), strings.TrimSpace(l1))
	fmt.Println("| path | p50 ms @1000 qps | p90 ms @1000 qps | p99 ms @1000 qps | max qps | proxy CPU µs/req at max |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	for _, p := range paths {
		fmt.Printf("| %s | %.3f | %.3f | %.3f | %.0f | %.1f |\n", p.label, med(p.key, func(s sample) float64 { return s.p50 }),
			med(p.key, func(s sample) float64 { return s.p90 }), med(p.key, func(s sample) float64 { return s.p99 }),
			med(p.key, func(s sample) float64 { return s.qps }), med(p.key, func(s sample) float64 { return s.cpuUsPerReq }))
	}
	p90 := ratio(func(s sample) float64 { return s.p90 })
	qps := ratio(func(s sample) float64 { return s.qps })
	fmt.Printf("\nTargets (waypoint vs HAProxy):\n")
	fmt.Printf("  p90 at 1000 qps   %.3fx (target <= 1.00x): %s\n", p90, verdict(p90 <= 1.0))
	fmt.Printf("  max qps           %.3fx (target >= 0.90x): %s\n", qps, verdict(qps >= 0.9))
	fmt.Printf("  waypoint RSS      %.1f MiB idle, %.1f MiB after the loads, peak %.1f MiB, with %d services (target <= 40 MiB): %s\n",
		mib(rssIdle), mib(rssBusy), mib(hwm), services, verdict(mib(hwm) <= 40))
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func mib(kb int64) float64 { return float64(kb) / 1024 }

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func haproxyConfig(listen, backend string) string {
	// The project's bench uses the same HTTP-mode hop (tests/bench).
	return fmt.Sprintf(`global
    maxconn 8000
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend http_in
    mode http
    bind %s
    default_backend http_out
backend http_out
    mode http
    http-reuse always
    server s %s
`, listen, backend)
}

// fortioResult is the part of fortio's JSON the table uses.
type fortioResult struct {
	ActualQPS         float64
	DurationHistogram struct {
		Count       int64
		Percentiles []struct {
			Percentile float64
			Value      float64
		}
	}
	RetCodes map[string]int64
}

func (f *fortioResult) pct(p float64) float64 {
	for _, x := range f.DurationHistogram.Percentiles {
		if x.Percentile == p {
			return x.Value * 1000
		}
	}
	return 0
}

func (f *fortioResult) count() int64 { return f.DurationHistogram.Count }

func (f *fortioResult) errors() int64 {
	var n int64
	for code, c := range f.RetCodes {
		if code != "200" {
			n += c
		}
	}
	return n
}

func load(ctx context.Context, bin, dir, url string, args ...string) (*fortioResult, error) {
	out := filepath.Join(dir, "fortio.json")
	argv := append([]string{"load", "-quiet", "-json", out, "-p", "50,90,99"}, args...)
	argv = append(argv, url)
	cmd := exec.CommandContext(ctx, bin, argv...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%v: %s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	var r fortioResult
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func findFortio(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if p, err := exec.LookPath("fortio"); err == nil {
		return p, nil
	}
	home, _ := os.UserHomeDir()
	p := filepath.Join(home, "go", "bin", "fortio")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return "", errors.New("fortio not found: go install fortio.org/fortio@" + fortio.Version)
}

func waitListening(ctx context.Context, addr string) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return errors.New("not listening")
}

// rss reads a VmRSS/VmHWM line of /proc/pid/status, in KiB.
func rss(pid int, field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// cpuTime is a process's user+system time (all its threads).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	// Fields after the command name (which may hold spaces) in parens.
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	// USER_HZ is 100 on Linux.
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
