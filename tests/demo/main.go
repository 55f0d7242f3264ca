// The kmesh demo: a node in a box on this machine, no cluster needed.
//
// It builds the binaries, makes a node (a network namespace with a bridge),
// starts kmesh-daemon with the mesh in conf/kmesh-demo.yaml, creates a client
// pod and the three server pods that file names through the real CNI chain
// (loopback, bridge + host-local, kmesh-cni), runs an HTTP server in each
// server pod, and sends requests from the client to the service address.
// Then it shows what the daemon holds (kmeshctl) and removes everything it
// made, also when interrupted with Ctrl-C.
//
//	sudo make demo            # or: cd tests && go run ./demo
//	go run ./demo -hold       # keep the node up until Ctrl-C, to look around
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
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

const steps = 7

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

// backend is a server pod the config file names.
type backend struct {
	ns, name string
	ip       netip.Addr
	port     uint16
	pod      *nodebox.Pod
}

func (d *demo) run(ctx context.Context) error {
	fmt.Println("kmesh demo: a service mesh data path in the kernel, on a node in a box")
	fmt.Println("=======================================================================")
	fmt.Println("Pods here are network namespaces on a bridge, made by the real CNI plugins.")
	fmt.Println("The pods have no route to the service address: only the eBPF connect hook")
	fmt.Println("that kmesh-daemon loads can turn it into a pod address.")
	if os.Geteuid() != 0 {
		return errors.New("run as root (it makes network namespaces, a cgroup and BPF programs)")
	}

	// The mesh the daemon will serve, read from the same file it reads.
	root := nodebox.RepoRoot()
	confPath := filepath.Join(root, "conf", "kmesh-demo.yaml")
	svc, backends, err := readMesh(confPath)
	if err != nil {
		return err
	}

	d.title("Building kmesh-daemon, kmesh-cni and kmeshctl (and fetching the CNI reference plugins once)")
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
	say("the mesh in that file: service %s at %s, backed by", svc.Hostname, vipPort(svc))
	for _, be := range backends {
		say("  %-22s %s:%d", be.name, be.ip, be.port)
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
	say("ready in %s: programs loaded and attached, the service is in the kernel maps (log: %s)", since(start), daemon.LogPath)

	d.title("Creating pods through the CNI chain: loopback, bridge + host-local, kmesh-cni")
	say("host-local hands out addresses from %s on; the client comes first, then the servers", "10.244.0.10")
	self, err := os.Executable()
	if err != nil {
		return err
	}
	clientPod, err := b.AddPod(ctx, nodebox.PodSpec{Name: "client", Namespace: "demo"})
	if err != nil {
		return err
	}
	say("%-22s %-12s enrolled by kmesh-cni", "client", clientPod.IP)
	for i := range backends {
		be := &backends[i]
		be.pod, err = b.AddPod(ctx, nodebox.PodSpec{Name: be.name, Namespace: be.ns})
		if err != nil {
			return err
		}
		if be.pod.IP != be.ip {
			return fmt.Errorf("pod %s got %s from host-local, but %s says %s: is something else using the box's address range?",
				be.name, be.pod.IP, rel(root, confPath), be.ip)
		}
		say("%-22s %-12s matches the config file", be.name, be.pod.IP)
	}

	d.title("Starting an HTTP server on port %d in each server pod", backends[0].port)
	for _, be := range backends {
		_, err := b.Start(nodebox.ProcSpec{
			Name: "serve-" + be.name,
			Argv: []string{self, "serve", "-name", be.name, "-addr", fmt.Sprintf(":%d", be.port)},
			Pod:  be.pod,
		})
		if err != nil {
			return err
		}
	}
	for _, be := range backends {
		if err := clientPod.WaitListening(ctx, netip.AddrPortFrom(be.ip, be.port), 10*time.Second); err != nil {
			return fmt.Errorf("server in %s: %w", be.name, err)
		}
	}
	say("each answers GET / with its pod name")

	url := fmt.Sprintf("http://%s/", vipPort(svc))
	d.title("%d requests from the client pod to %s (a new connection each)", d.requests, url)
	counts, failures, err := d.fetch(ctx, self, clientPod, url)
	if err != nil {
		return err
	}
	widest := 0
	for _, be := range backends {
		widest = max(widest, counts[be.name])
	}
	for _, be := range backends {
		n := counts[be.name]
		bar := strings.Repeat("#", n*40/max(widest, 1))
		say("%-22s %-12s %3d  %s", be.name, be.ip, n, bar)
	}
	if len(failures) > 0 {
		return fmt.Errorf("%d of %d requests failed, e.g. %s", len(failures), d.requests, failures[0])
	}
	for _, be := range backends {
		if counts[be.name] == 0 {
			return fmt.Errorf("no request reached %s", be.name)
		}
	}
	say("every request reached a server: connect() to %s was rewritten in the kernel to", vipPort(svc))
	say("a pod address, so the packets went pod to pod with no proxy in between.")
	nodeErr := fetchFromNode(ctx, b, url)
	say("The same request from the node itself, which is not an enrolled pod:")
	say("  %v", nodeErr)

	d.title("What the daemon holds (kmeshctl, talking to its admin API on %s)", b.AdminAddr)
	for _, args := range [][]string{{"status"}, {"dump", "services"}, {"dump", "maps"}} {
		out, err := b.Kmeshctl(ctx, args...)
		if err != nil {
			return err
		}
		fmt.Printf("\n      $ kmeshctl %s\n", strings.Join(args, " "))
		indent(out)
	}

	if d.hold {
		fmt.Println("\nThe node stays up until Ctrl-C. Try:")
		fmt.Printf("  ip netns exec %s ip addr show eth0\n", clientPod.NetNS)
		fmt.Printf("  %s -admin %s dump pods   (run it inside: ip netns exec %s ...)\n", bins.Kmeshctl, b.AdminAddr, b.NodeNS)
		fmt.Printf("  logs in %s\n", b.Dir)
		<-ctx.Done()
	}
	return nil
}

// fetch runs `demo client` in the client pod, inside the box's cgroup so
// its connects pass the mesh's hook, and counts who answered.
func (d *demo) fetch(ctx context.Context, self string, pod *nodebox.Pod, url string) (map[string]int, []string, error) {
	var out strings.Builder
	p, err := d.box.Start(nodebox.ProcSpec{
		Name:     "client",
		Argv:     []string{self, "client", "-n", fmt.Sprint(d.requests), url},
		Pod:      pod,
		InCgroup: true,
		Output:   &out,
	})
	if err != nil {
		return nil, nil, err
	}
	select {
	case <-p.Done():
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	if err := p.Wait(); err != nil {
		return nil, nil, fmt.Errorf("client: %v\n%s", err, out.String())
	}
	counts := map[string]int{}
	var failures []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if who, ok := strings.CutPrefix(line, "ok "); ok {
			counts[who]++
		} else if msg, ok := strings.CutPrefix(line, "error "); ok {
			failures = append(failures, msg)
		}
	}
	return counts, failures, nil
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

// readMesh finds the service and its backends in the config file.
func readMesh(path string) (*model.Service, []backend, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	res, rejected, err := configfile.Parse(raw)
	if err != nil {
		return nil, nil, err
	}
	if len(rejected) > 0 {
		return nil, nil, fmt.Errorf("%s: rejected entries: %v", path, rejected)
	}
	var svc *model.Service
	for _, r := range res {
		if r.Service != nil {
			if svc != nil {
				return nil, nil, fmt.Errorf("%s: the demo expects one service", path)
			}
			svc = r.Service
		}
	}
	if svc == nil || len(svc.VIPs) == 0 || len(svc.Ports) == 0 {
		return nil, nil, fmt.Errorf("%s: no service with an address and a port", path)
	}
	var out []backend
	for _, r := range res {
		w := r.Workload
		if w == nil || len(w.Addresses) == 0 {
			continue
		}
		port := w.TargetPort(svc.Key, svc.Ports[0])
		out = append(out, backend{ns: w.Namespace, name: w.Name, ip: w.Addresses[0], port: port})
	}
	// host-local hands out addresses in order: create the pods that way.
	slices.SortFunc(out, func(a, b backend) int { return a.ip.Compare(b.ip) })
	if len(out) == 0 {
		return nil, nil, fmt.Errorf("%s: no workloads", path)
	}
	return svc, out, nil
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

// serve is `demo serve -name N -addr :8080`: answers every request with
// the pod's name.
func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	name := fs.String("name", "", "pod name to answer with")
	addr := fs.String("addr", ":8080", "listen address")
	_ = fs.Parse(args)
	srv := &http.Server{Addr: *addr, ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, *name+"\n")
	})}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
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
