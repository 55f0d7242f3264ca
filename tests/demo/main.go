// The kmesh demo: a node in a box on this machine, no cluster needed.
//
// It builds the binaries, makes a node (a network namespace with a bridge),
// starts kmesh-daemon with the mesh in conf/kmesh-demo.yaml, creates a client
// pod and the pods that file names through the real CNI chain (loopback,
// bridge + host-local, kmesh-cni), runs an HTTP server in each server pod and
// kmesh-waypoint (conf/waypoint-demo.yaml) in the waypoint pod, and sends
// requests from the client: to echo's address (L4: rewritten at connect()
// to a pod) and to web's (L7: sent by the kernel to the waypoint, which
// splits, retries and delays as its file says). Then it shows what the
// daemon and the waypoint hold (kmeshctl) and removes everything it made,
// also when interrupted with Ctrl-C.
//
//	sudo make demo            # or: cd tests && go run ./demo
//	go run ./demo -hold       # keep the node up until Ctrl-C, to look around
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/daemon/configfile"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/tests/nodebox"
)

func main() {
	// The demo runs itself as the pods' programs: `demo serve` in each
	// server pod, `demo client` in the client pod.
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "serve":
			serve(os.Args[2:])
			return
		case "client":
			client(os.Args[2:])
			return
		case "tcp":
			tcpClient(os.Args[2:])
			return
		}
	}
	hold := flag.Bool("hold", false, "keep the node running until Ctrl-C, to explore it")
	requests := flag.Int("n", 30, "requests to send to the service")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d := &demo{requests: *requests, hold: *hold}
	err := d.run(ctx)
	if ctx.Err() != nil {
		// Whatever failed, failed because we were asked to stop.
		fmt.Println("\nInterrupted.")
		err = nil
	}
	cleanErr := d.cleanup()
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "\ndemo failed: %v\n", err)
		os.Exit(1)
	case cleanErr != nil:
		fmt.Fprintf(os.Stderr, "\ncleanup failed: %v\n", cleanErr)
		os.Exit(1)
	}
}

type demo struct {
	requests int
	hold     bool
	box      *nodebox.Box
	step     int
}

const steps = 9

func (d *demo) title(format string, args ...any) {
	d.step++
	fmt.Printf("\n[%d/%d] %s\n", d.step, steps, fmt.Sprintf(format, args...))
}

func say(format string, args ...any) { fmt.Printf("      "+format+"\n", args...) }

// indent prints a command's output under the step.
func indent(out []byte) {
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Println("        " + l)
	}
}

// backend is a pod the config file names.
type backend struct {
	ns, name string
	ip       netip.Addr
	port     uint16
	pod      *nodebox.Pod
	// service is the key of the service it backs; waypoint: that service
	// is some service's waypoint, so this pod runs kmesh-waypoint.
	service  model.ServiceKey
	waypoint bool
}

// mesh is what the demo reads of conf/kmesh-demo.yaml: an L4 service, an
// L7 one (with a waypoint) and every pod.
type mesh struct {
	l4, l7   *model.Service
	backends []backend // in address order
}

func (m *mesh) of(k model.ServiceKey) []backend {
	var out []backend
	for _, b := range m.backends {
		if b.service == k {
			out = append(out, b)
		}
	}
	return out
}

func (d *demo) run(ctx context.Context) error {
	fmt.Println("kmesh demo: a service mesh data path in the kernel, on a node in a box")
	fmt.Println("=======================================================================")
	fmt.Println("Pods here are network namespaces on a bridge, made by the real CNI plugins.")
	fmt.Println("The pods have no route to a service address: only the eBPF connect hook")
	fmt.Println("that kmesh-daemon loads can turn it into a pod address (or a waypoint's).")
	if os.Geteuid() != 0 {
		return errors.New("run as root (it makes network namespaces, a cgroup and BPF programs)")
	}

	// The mesh the daemon will serve, read from the same file it reads,
	// and the waypoint's own file.
	root := nodebox.RepoRoot()
	confPath := filepath.Join(root, "conf", "kmesh-demo.yaml")
	wpConfPath := filepath.Join(root, "conf", "waypoint-demo.yaml")
	m, err := readMesh(confPath)
	if err != nil {
		return err
	}

	d.title("Building kmesh-daemon, kmesh-cni, kmesh-waypoint and kmeshctl (and fetching the CNI reference plugins once)")
	start := time.Now()
	bins, err := nodebox.Build(ctx, nodebox.BuildOptions{Root: root, Logf: func(f string, a ...any) { say(f, a...) }})
	if err != nil {
		return err
	}
	say("done in %s; binaries in %s", since(start), filepath.Dir(bins.Daemon))

	d.title("Making the node: a network namespace with a bridge, a cgroup, a BPF pin folder")
	d.box, err = nodebox.New(ctx, nodebox.Config{Prefix: "kmdemo", Bins: bins, DefaultEnroll: true,
		Logf: func(f string, a ...any) {
			// Only what a killed earlier run left and this one removes.
			if msg := fmt.Sprintf(f, a...); strings.Contains(msg, "earlier run") {
				say("%s", msg)
			}
		}})
	if err != nil {
		return err
	}
	b := d.box
	say("node network namespace  %s (bridge %s, %s)", b.NodeNS, b.Bridge, b.Gateway)
	say("cgroup                  %s  <- the socket programs attach here", b.Cgroup)
	say("BPF pins                %s", b.PinDir)
	say("kmesh-cni               defaultEnroll=true, no Kubernetes: every pod joins the mesh")

	d.title("Starting kmesh-daemon with %s", rel(root, confPath))
	for _, svc := range []*model.Service{m.l4, m.l7} {
		how := "L4, picked at connect()"
		if svc.Waypoint.IsSet() {
			how = "L7, through its waypoint " + string(svc.Waypoint.Service)
		}
		say("service %s at %s (%s), backed by", svc.Hostname, vipPort(svc), how)
		for _, be := range m.of(svc.Key) {
			say("  %-26s %s:%d", be.name, be.ip, be.port)
		}
	}
	start = time.Now()
	daemon, err := b.StartDaemon("--config-file", confPath, "--node-name", "node-1", "--locality", "eu-west-1/eu-west-1a")
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = b.WaitDaemonReady(rctx, daemon)
	cancel()
	if err != nil {
		return err
	}
	say("ready in %s: programs loaded and attached, the services are in the kernel maps (log: %s)", since(start), daemon.LogPath)

	d.title("Creating pods through the CNI chain: loopback, bridge + host-local, kmesh-cni")
	say("host-local hands out addresses from %s on; the client comes first, then the others", "10.244.0.10")
	self, err := os.Executable()
	if err != nil {
		return err
	}
	clientPod, err := b.AddPod(ctx, nodebox.PodSpec{Name: "client", Namespace: "demo"})
	if err != nil {
		return err
	}
	say("%-26s %-12s enrolled by kmesh-cni", "client", clientPod.IP)
	for i := range m.backends {
		be := &m.backends[i]
		be.pod, err = b.AddPod(ctx, nodebox.PodSpec{Name: be.name, Namespace: be.ns})
		if err != nil {
			return err
		}
		if be.pod.IP != be.ip {
			return fmt.Errorf("pod %s got %s from host-local, but %s says %s: is something else using the box's address range?",
				be.name, be.pod.IP, rel(root, confPath), be.ip)
		}
		say("%-26s %-12s matches the config file", be.name, be.pod.IP)
	}

	d.title("Starting an HTTP server in each server pod, kmesh-waypoint in the waypoint pod")
	var waypoint *backend
	for i := range m.backends {
		be := &m.backends[i]
		if be.waypoint {
			waypoint = be
			continue
		}
		argv := []string{self, "serve", "-name", be.name, "-addr", fmt.Sprintf(":%d", be.port)}
		if be.service == m.l7.Key {
			// web's pods also echo TCP on 9000; web-v2 fails every other
			// /flaky request, for the waypoint's retries to hide.
			argv = append(argv, "-tcp", ":9000")
			if strings.HasPrefix(be.name, "web-v2") {
				argv = append(argv, "-flaky")
			}
		}
		if _, err := b.Start(nodebox.ProcSpec{Name: "serve-" + be.name, Argv: argv, Pod: be.pod}); err != nil {
			return err
		}
	}
	for _, be := range m.backends {
		if be.waypoint {
			continue
		}
		if err := clientPod.WaitListening(ctx, netip.AddrPortFrom(be.ip, be.port), 10*time.Second); err != nil {
			return fmt.Errorf("server in %s: %w", be.name, err)
		}
	}
	say("each answers GET / with its pod name")
	if waypoint == nil {
		return fmt.Errorf("%s names no waypoint pod", rel(root, confPath))
	}
	wpAdmin := netip.AddrPortFrom(waypoint.ip, 15000).String()
	wp, err := b.Start(nodebox.ProcSpec{Name: "kmesh-waypoint", Pod: waypoint.pod, InCgroup: true, Argv: []string{
		bins.Waypoint, "--config-file", wpConfPath, "--admin-address", wpAdmin, "--status-address", "",
	}})
	if err != nil {
		return err
	}
	if err := clientPod.WaitListening(ctx, netip.AddrPortFrom(waypoint.ip, 15019), 10*time.Second); err != nil {
		return fmt.Errorf("kmesh-waypoint: %w\n%s", err, nodebox.Tail(wp.LogPath, 2000))
	}
	say("kmesh-waypoint in %s (%s): listening on 15019 for the kernel's connections, config %s",
		waypoint.name, waypoint.ip, rel(root, wpConfPath))

	url := fmt.Sprintf("http://%s/", vipPort(m.l4))
	d.title("L4: %d requests from the client pod to %s (a new connection each)", d.requests, url)
	counts, failures, err := d.fetch(ctx, self, clientPod, url, d.requests)
	if err != nil {
		return err
	}
	l4 := m.of(m.l4.Key)
	bars(l4, counts)
	if len(failures) > 0 {
		return fmt.Errorf("%d of %d requests failed, e.g. %s", len(failures), d.requests, failures[0])
	}
	for _, be := range l4 {
		if counts[be.name] == 0 {
			return fmt.Errorf("no request reached %s", be.name)
		}
	}
	say("every request reached a server: connect() to %s was rewritten in the kernel to", vipPort(m.l4))
	say("a pod address, so the packets went pod to pod with no proxy in between.")
	nodeErr := fetchFromNode(ctx, b, url)
	say("The same request from the node itself, which is not an enrolled pod:")
	say("  %v", nodeErr)

	if err := d.l7(ctx, self, clientPod, m); err != nil {
		return fmt.Errorf("%w\nend of kmesh-waypoint's log:\n%s", err, nodebox.Tail(wp.LogPath, 3000))
	}

	d.title("What the daemon and the waypoint hold (kmeshctl, talking to their admin APIs)")
	for _, args := range [][]string{{"status"}, {"dump", "services"}, {"dump", "maps"}} {
		out, err := b.Kmeshctl(ctx, args...)
		if err != nil {
			return err
		}
		fmt.Printf("\n      $ kmeshctl %s\n", strings.Join(args, " "))
		indent(out)
	}
	for _, view := range []string{"routes", "clusters"} {
		out, err := b.KmeshctlAt(ctx, wpAdmin, "waypoint", view)
		if err != nil {
			return err
		}
		fmt.Printf("\n      $ kmeshctl -admin %s waypoint %s\n", wpAdmin, view)
		indent(out)
	}

	if d.hold {
		fmt.Println("\nThe node stays up until Ctrl-C. Try:")
		fmt.Printf("  ip netns exec %s ip addr show eth0\n", clientPod.NetNS)
		fmt.Printf("  %s -admin %s dump pods   (run it inside: ip netns exec %s ...)\n", bins.Kmeshctl, b.AdminAddr, b.NodeNS)
		fmt.Printf("  %s -admin %s waypoint listeners   (likewise)\n", bins.Kmeshctl, wpAdmin)
		fmt.Printf("  logs in %s\n", b.Dir)
		<-ctx.Done()
	}
	return nil
}

// l7 sends the client's requests to the service behind the waypoint.
func (d *demo) l7(ctx context.Context, self string, clientPod *nodebox.Pod, m *mesh) error {
	web := m.of(m.l7.Key)
	url := fmt.Sprintf("http://%s/", vipPort(m.l7))
	n := max(d.requests*3, 60)
	d.title("L7: requests from the client pod to %s, which has a waypoint", vipPort(m.l7))
	say("the kernel sends each connect() to the waypoint pod's port 15019 and puts a PROXY v2")
	say("header naming %s in front of the client's first bytes; the waypoint routes by it", vipPort(m.l7))

	fmt.Printf("\n      GET %s x %d: the route splits 90/10 between web-v1 and web-v2, and adds a header\n", url, n)
	counts, failures, err := d.fetch(ctx, self, clientPod, url, n)
	if err != nil {
		return err
	}
	bars(web, counts)
	if len(failures) > 0 {
		return fmt.Errorf("%d of %d requests failed, e.g. %s", len(failures), n, failures[0])
	}
	if counts["header"] != n {
		return fmt.Errorf("the waypoint's header reached the backends on %d of %d requests", counts["header"], n)
	}
	say("every backend saw x-kmesh-waypoint: demo, added by the waypoint's route")

	flaky := url + "flaky"
	fmt.Printf("\n      GET %s x 20: web-v2 answers 503 to every other /flaky request; the route retries on 5xx\n", flaky)
	counts, failures, err = d.fetch(ctx, self, clientPod, flaky, 20)
	if err != nil {
		return err
	}
	bars(web, counts)
	if len(failures) > 0 {
		return fmt.Errorf("%d of 20 /flaky requests failed although the route retries, e.g. %s", len(failures), failures[0])
	}
	say("no request failed: the waypoint tried another pod where web-v2 failed")

	slow := url + "slow"
	fmt.Printf("\n      GET %s x 8: a fault delays each by 1 s with probability 1/2\n", slow)
	var delayed int
	for range 8 {
		start := time.Now()
		_, failures, err := d.fetch(ctx, self, clientPod, slow, 1)
		if err != nil {
			return err
		}
		if len(failures) > 0 {
			return fmt.Errorf("/slow failed: %s", failures[0])
		}
		took := time.Since(start)
		if took > 900*time.Millisecond {
			delayed++
		}
		say("  %s", took.Round(10*time.Millisecond))
	}
	say("%d of 8 delayed by the waypoint's fault filter (each time includes starting the client)", delayed)

	tcp := netip.AddrPortFrom(m.l7.VIPs[0], 9000)
	fmt.Printf("\n      TCP to %s: the waypoint's TCP chain passes the bytes to web-v1's echo\n", tcp)
	out, err := d.runClient(ctx, self, clientPod, "tcp", tcp.String())
	if err != nil {
		return err
	}
	say("  %s", strings.TrimSpace(out))
	return nil
}

// bars prints how many answers came from each backend.
func bars(backends []backend, counts map[string]int) {
	widest := 0
	for _, be := range backends {
		widest = max(widest, counts[be.name])
	}
	for _, be := range backends {
		n := counts[be.name]
		say("%-26s %-12s %3d  %s", be.name, be.ip, n, strings.Repeat("#", n*40/max(widest, 1)))
	}
}

// fetch runs `demo client` in the client pod, inside the box's cgroup so
// its connects pass the mesh's hook, and counts who answered (and, under
// "header", the answers whose request carried the waypoint's header).
func (d *demo) fetch(ctx context.Context, self string, pod *nodebox.Pod, url string, n int) (map[string]int, []string, error) {
	out, err := d.runClient(ctx, self, pod, "client", "-n", fmt.Sprint(n), url)
	if err != nil {
		return nil, nil, err
	}
	counts := map[string]int{}
	var failures []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if body, ok := strings.CutPrefix(line, "ok "); ok {
			f := strings.Fields(body)
			if len(f) > 0 {
				counts[f[0]]++
			}
			if strings.Contains(body, "x-kmesh-waypoint=demo") {
				counts["header"]++
			}
		} else if msg, ok := strings.CutPrefix(line, "error "); ok {
			failures = append(failures, msg)
		}
	}
	return counts, failures, nil
}

// runClient runs this program with args in the client pod, in the box's
// cgroup, and returns what it printed.
func (d *demo) runClient(ctx context.Context, self string, pod *nodebox.Pod, args ...string) (string, error) {
	var out strings.Builder
	p, err := d.box.Start(nodebox.ProcSpec{
		Name:     "client",
		Argv:     append([]string{self}, args...),
		Pod:      pod,
		InCgroup: true,
		Output:   &out,
	})
	if err != nil {
		return "", err
	}
	select {
	case <-p.Done():
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if err := p.Wait(); err != nil {
		return "", fmt.Errorf("%s: %v\n%s", args[0], err, out.String())
	}
	return out.String(), nil
}

// fetchFromNode shows that without enrollment the service address leads
// nowhere: the node namespace has no route to it.
func fetchFromNode(ctx context.Context, b *nodebox.Box, url string) error {
	c := &http.Client{Transport: &http.Transport{DialContext: b.DialNode}, Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return fmt.Errorf("unexpectedly answered: %s", resp.Status)
}

func (d *demo) cleanup() error {
	if d.box == nil {
		return nil
	}
	fmt.Println("\nCleaning up: stopping the servers and kmesh-daemon, CNI DEL for every pod,")
	fmt.Println("removing the namespaces, the BPF pins, the cgroup and the work folder.")
	b := d.box
	err := b.Close()
	var left []string
	for _, p := range []string{filepath.Join("/var/run/netns", b.NodeNS), b.Cgroup, b.PinDir, b.Dir} {
		if _, serr := os.Stat(p); serr == nil {
			left = append(left, p)
		}
	}
	if len(left) > 0 {
		err = errors.Join(err, fmt.Errorf("left behind: %s", strings.Join(left, ", ")))
	}
	if err == nil {
		fmt.Println("Nothing left behind. Done.")
	}
	return err
}

// readMesh finds the services and pods in the config file: the one service
// with a waypoint (L7), the waypoint's service, and one plain service (L4).
func readMesh(path string) (*mesh, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	res, rejected, err := configfile.Parse(raw)
	if err != nil {
		return nil, err
	}
	if len(rejected) > 0 {
		return nil, fmt.Errorf("%s: rejected entries: %v", path, rejected)
	}
	m := &mesh{}
	services := map[model.ServiceKey]*model.Service{}
	for _, r := range res {
		if s := r.Service; s != nil {
			if len(s.VIPs) == 0 || len(s.Ports) == 0 {
				return nil, fmt.Errorf("%s: service %s has no address or port", path, s.Key)
			}
			services[s.Key] = s
			if s.Waypoint.IsSet() {
				m.l7 = s
			}
		}
	}
	if m.l7 == nil || services[m.l7.Waypoint.Service] == nil {
		return nil, fmt.Errorf("%s: the demo expects a service whose waypoint is a service of the file", path)
	}
	for k, s := range services {
		if s != m.l7 && k != m.l7.Waypoint.Service {
			m.l4 = s
		}
	}
	if m.l4 == nil || len(services) != 3 {
		return nil, fmt.Errorf("%s: the demo expects three services: L4, L7 and its waypoint", path)
	}
	for _, r := range res {
		w := r.Workload
		if w == nil || len(w.Addresses) == 0 || len(w.Services) == 0 {
			continue
		}
		k := w.Services[0].Service
		svc := services[k]
		if svc == nil {
			return nil, fmt.Errorf("%s: workload %s backs an unknown service %s", path, w.Name, k)
		}
		m.backends = append(m.backends, backend{ns: w.Namespace, name: w.Name, ip: w.Addresses[0],
			port: w.TargetPort(k, svc.Ports[0]), service: k, waypoint: k == m.l7.Waypoint.Service})
	}
	// host-local hands out addresses in order: create the pods that way.
	slices.SortFunc(m.backends, func(a, b backend) int { return a.ip.Compare(b.ip) })
	if len(m.of(m.l4.Key)) == 0 || len(m.of(m.l7.Key)) == 0 {
		return nil, fmt.Errorf("%s: a service without workloads", path)
	}
	return m, nil
}

func vipPort(s *model.Service) string {
	return netip.AddrPortFrom(s.VIPs[0], s.Ports[0].ServicePort).String()
}

func rel(root, path string) string {
	if r, err := filepath.Rel(root, path); err == nil {
		return r
	}
	return path
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

// serve is `demo serve -name N -addr :8080 [-tcp :9000] [-flaky]`: answers
// every request with the pod's name (and the waypoint's header when the
// request carried it), echoes TCP lines on -tcp, and with -flaky answers
// every other /flaky request with 503.
func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	name := fs.String("name", "", "pod name to answer with")
	addr := fs.String("addr", ":8080", "listen address")
	tcp := fs.String("tcp", "", "also echo TCP lines on this address")
	flaky := fs.Bool("flaky", false, "fail every other /flaky request with 503")
	_ = fs.Parse(args)
	var calls atomic.Int64
	srv := &http.Server{Addr: *addr, ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if *flaky && strings.HasPrefix(r.URL.Path, "/flaky") && calls.Add(1)%2 == 1 {
			http.Error(w, *name+" failed on purpose", http.StatusServiceUnavailable)
			return
		}
		answer := *name
		if v := r.Header.Get("X-Kmesh-Waypoint"); v != "" {
			answer += " x-kmesh-waypoint=" + v
		}
		io.WriteString(w, answer+"\n")
	})}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if *tcp != "" {
		ln, err := net.Listen("tcp", *tcp)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go func() {
			<-ctx.Done()
			ln.Close()
		}()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					sc := bufio.NewScanner(c)
					for sc.Scan() {
						fmt.Fprintf(c, "%s echoes: %s\n", *name, sc.Text())
					}
				}()
			}
		}()
	}
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// client is `demo client -n N URL`: N GETs, each on a new connection, one
// line per request: "ok <body>" or "error <message>".
func client(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	n := fs.Int("n", 30, "requests")
	_ = fs.Parse(args)
	url := fs.Arg(0)
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}
	for range *n {
		resp, err := c.Get(url)
		if err != nil {
			fmt.Println("error", err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			fmt.Println("error", resp.Status, err)
			continue
		}
		fmt.Println("ok", strings.TrimSpace(string(body)))
	}
}

// tcpClient is `demo tcp ADDR`: one line there and the line back.
func tcpClient(args []string) {
	if len(args) != 1 {
		fmt.Println("usage: demo tcp ADDR")
		os.Exit(2)
	}
	c, err := net.DialTimeout("tcp", args[0], 2*time.Second)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c, "hello through the waypoint")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Print(line)
}
