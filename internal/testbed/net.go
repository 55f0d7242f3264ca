package testbed

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/podns"
)

// Pod subnets inside every test network. Each network has its own node
// namespace, so networks of concurrent tests never meet.
var (
	podNet4 = netip.MustParsePrefix("10.244.0.0/24")
	podNet6 = netip.MustParsePrefix("fd00:10:244::/64")
)

// Network is a node namespace holding a bridge that pods attach to.
type Network struct {
	Node   string // name of the node namespace (under /var/run/netns)
	Bridge string
	mu     sync.Mutex
	next   int
}

// Pod is a network namespace with one veth into the node's bridge.
type Pod struct {
	Name     string
	NSPath   string
	IP4, IP6 netip.Addr
	// HostVeth is the pod's veth peer inside the node namespace.
	HostVeth string
}

// NewNamespace creates a named network namespace with loopback up and
// deletes it when the test ends.
func NewNamespace(t testing.TB) string {
	t.Helper()
	name := Name()
	if err := createNamedNS(name); err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	if err := inNS(name, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	}); err != nil {
		t.Fatalf("loopback up in %s: %v", name, err)
	}
	return name
}

// NSPath is where a named namespace is bind-mounted.
func NSPath(name string) string { return filepath.Join("/var/run/netns", name) }

func createNamedNS(name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name) // also moves this thread into it
		if err != nil {
			errc <- err
			return
		}
		ns.Close()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime will discard it.
			errc <- fmt.Errorf("return to the original netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

// inNS runs fn with a netlink handle bound to the named namespace.
func inNS(name string, fn func(h *netlink.Handle) error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	return fn(h)
}

// NewNetwork makes a node namespace with a bridge (10.244.0.1/24 and
// fd00:10:244::1/64).
func NewNetwork(t testing.TB) *Network {
	t.Helper()
	n := &Network{Node: NewNamespace(t), Bridge: "br0", next: 10}
	err := inNS(n.Node, func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Bridge}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge: %w", err)
		}
		for _, a := range []string{"10.244.0.1/24", "fd00:10:244::1/64"} {
			addr, _ := netlink.ParseAddr(a)
			addr.Flags = unix.IFA_F_NODAD
			if err := h.AddrAdd(br, addr); err != nil {
				return fmt.Errorf("address %s on bridge: %w", a, err)
			}
		}
		return h.LinkSetUp(br)
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// AddPod makes a pod namespace wired to the bridge with the next free
// addresses. The pod has routes to the pod subnets only.
func (n *Network) AddPod(t testing.TB, name string) *Pod {
	t.Helper()
	n.mu.Lock()
	host := n.next
	n.next++
	n.mu.Unlock()

	nsName := NewNamespace(t)
	p := &Pod{
		Name:     name,
		NSPath:   NSPath(nsName),
		IP4:      nthAddr(podNet4, host),
		IP6:      nthAddr(podNet6, host),
		HostVeth: Name(),
	}
	podNS, err := netns.GetFromName(nsName)
	if err != nil {
		t.Fatal(err)
	}
	defer podNS.Close()
	peer := Name()
	err = inNS(n.Node, func(h *netlink.Handle) error {
		br, err := h.LinkByName(n.Bridge)
		if err != nil {
			return err
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: p.HostVeth, MasterIndex: br.Attrs().Index},
			PeerName:      peer,
			PeerNamespace: netlink.NsFd(podNS),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		l, err := h.LinkByName(p.HostVeth)
		if err != nil {
			return err
		}
		return h.LinkSetUp(l)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = inNS(nsName, func(h *netlink.Handle) error {
		l, err := h.LinkByName(peer)
		if err != nil {
			return err
		}
		if err := h.LinkSetName(l, "eth0"); err != nil {
			return err
		}
		for _, a := range []string{
			netip.PrefixFrom(p.IP4, podNet4.Bits()).String(),
			netip.PrefixFrom(p.IP6, podNet6.Bits()).String(),
		} {
			addr, _ := netlink.ParseAddr(a)
			addr.Flags = unix.IFA_F_NODAD
			if err := h.AddrAdd(l, addr); err != nil {
				return fmt.Errorf("address %s: %w", a, err)
			}
		}
		return h.LinkSetUp(l)
	})
	if err != nil {
		t.Fatal(err)
	}
	// The kernel turns carrier changes into operstate (and the bridge port
	// into forwarding) from a deferred worker, up to a second later; until
	// then the bridge drops the pod's frames and a first connect stalls on
	// a lost ARP. Wait for both ends to be up.
	deadline := time.Now().Add(3 * time.Second)
	for {
		hostUp, podUp := operUp(n.Node, p.HostVeth), operUp(nsName, "eth0")
		if hostUp && podUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s: veth not up after 3s (host side %v, pod side %v)", name, hostUp, podUp)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return p
}

func operUp(ns, ifname string) bool {
	up := false
	_ = inNS(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(ifname)
		if err == nil {
			up = l.Attrs().OperState == netlink.OperUp
		}
		return nil
	})
	return up
}

func nthAddr(p netip.Prefix, n int) netip.Addr {
	b := p.Addr().AsSlice()
	b[len(b)-1] += byte(n)
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Dial connects from inside the pod. The socket belongs to this process's
// cgroup, so a test that joined the data path's cgroup goes through it.
func (p *Pod) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := podns.Do(p.NSPath, func() error {
		var err error
		d := net.Dialer{Timeout: timeout}
		c, err = d.Dial(network, addr)
		return err
	})
	return c, err
}

// ListenPacket opens a UDP socket inside the pod.
func (p *Pod) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := podns.Do(p.NSPath, func() error {
		var err error
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}

// Listen opens a TCP listener inside the pod.
func (p *Pod) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := podns.Do(p.NSPath, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// ServeTCP runs a server on port (both families) that greets each connection
// with "<id>\n" and then echoes what it reads.
func (p *Pod) ServeTCP(t testing.TB, port uint16, id string) {
	t.Helper()
	l, err := p.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatalf("listen in %s: %v", p.Name, err)
	}
	Serve(t, l, func(c net.Conn) {
		if _, err := io.WriteString(c, id+"\n"); err != nil {
			return
		}
		_, _ = io.Copy(c, c)
	})
}

// Serve runs handle on every connection l accepts, each in a goroutine of
// its own, and closes the connection when handle returns. When the test
// ends it closes l and the connections still open and waits for the
// handlers, so none outlives the test.
func Serve(t testing.TB, l net.Listener, handle func(c net.Conn)) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		l.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				stop := context.AfterFunc(ctx, func() { c.Close() })
				defer stop()
				handle(c)
			}()
		}
	}()
}

// ServeUDP answers each datagram on port with "<id>\n" followed by it.
func (p *Pod) ServeUDP(t testing.TB, port uint16, id string) {
	t.Helper()
	c, err := p.ListenPacket("udp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatalf("listen udp in %s: %v", p.Name, err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteTo(append([]byte(id+"\n"), buf[:n]...), from)
		}
	}()
}

// Greeting reads the "<id>\n" a ServeTCP server sends first.
func Greeting(c net.Conn, timeout time.Duration) (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// Ask dials addr from the pod and returns which server answered.
func (p *Pod) Ask(network, addr string, timeout time.Duration) (string, error) {
	c, err := p.Dial(network, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return Greeting(c, timeout)
}

// Command runs a program inside the pod namespace and, when cg is not nil,
// inside that cgroup: the shell joins the cgroup first, then enters the
// namespace (ip netns exec remounts /sys, which hides cgroupfs).
func (p *Pod) Command(cg *Cgroup, name string, args ...string) *exec.Cmd {
	ns := filepath.Base(p.NSPath)
	if cg == nil {
		return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	}
	script := `echo $$ > "$1/cgroup.procs" && shift && exec ip netns exec "$@"`
	return exec.Command("sh", append([]string{"-c", script, "sh", cg.Path, ns, name}, args...)...)
}
