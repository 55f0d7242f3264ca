package bpf_test

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

const (
	serverPort = 8080
	udpPort    = 5353
)

var (
	vip4 = netip.MustParseAddr("10.96.0.10")
	vip6 = netip.MustParseAddr("fd00:96::10")
)

// fixture is a node in a box: a data path attached to a fresh cgroup that
// this test process joins, a client pod (enrolled) and server pods each
// greeting with its own name.
type fixture struct {
	t       *testing.T
	cg      *testbed.Cgroup
	dp      *loader.Datapath
	pins    string
	maps    *maps.Maps
	manage  *maps.Manage
	net     *testbed.Network
	client  *testbed.Pod
	cookie  uint64
	servers []*testbed.Pod
}

// wid is the workload id the fixture gives server i.
func wid(i int) uint32 { return uint32(100 + i) }

func newFixture(t *testing.T, nServers int, sizes loader.Sizes) *fixture {
	t.Helper()
	return newFixtureWith(t, nServers, loader.Config{Sizes: sizes})
}

// newFixtureWith is newFixture with kernel features (telemetry,
// acceleration) set in cfg.
func newFixtureWith(t *testing.T, nServers int, cfg loader.Config) *fixture {
	t.Helper()
	testbed.Require(t)
	f := &fixture{t: t}
	f.cg = testbed.NewCgroup(t)
	f.dp, f.pins = testbed.DatapathWith(t, f.cg, cfg)
	m, err := maps.New(f.dp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	f.maps = m
	f.manage = maps.NewManage(f.dp)
	f.net = testbed.NewNetwork(t)
	f.client = f.net.AddPod(t, "client")
	for i := range nServers {
		p := f.net.AddPod(t, fmt.Sprintf("s%d", i))
		p.ServeTCP(t, serverPort, p.Name)
		p.ServeUDP(t, udpPort, p.Name)
		f.servers = append(f.servers, p)
		if err := f.maps.UpsertBackend(maps.Backend{ID: wid(i), Addresses: []netip.Addr{p.IP4, p.IP6}}); err != nil {
			t.Fatal(err)
		}
	}
	f.cg.Join(t)
	f.cookie = f.enroll(f.client, maps.Enrollment{})
	return f
}

// restart closes the data path and opens it again from its pins, as a
// daemon restart does, with new maps handles.
func (f *fixture) restart() {
	f.t.Helper()
	f.maps.Close()
	f.dp.Close()
	dp, err := loader.Open(loader.Config{PinDir: f.pins, CgroupPath: f.cg.Path})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { dp.Close() })
	m, err := maps.New(dp)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(m.Close)
	f.dp, f.maps = dp, m
}

// stat is the data path counter name.
func (f *fixture) stat(name string) uint64 {
	f.t.Helper()
	st, err := f.maps.Stats()
	if err != nil {
		f.t.Fatal(err)
	}
	return st[name]
}

func (f *fixture) enroll(p *testbed.Pod, e maps.Enrollment) uint64 {
	f.t.Helper()
	c, err := podns.Cookie(p.NSPath)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := f.manage.Enroll(c, e); err != nil {
		f.t.Fatal(err)
	}
	return c
}

// service builds a one-port service (80 -> 8080, 53 -> 5353) over the given
// servers, all in priority 0.
func (f *fixture) service(id uint32, policy maps.LBPolicy, servers ...int) maps.Service {
	var eps []uint32
	for _, s := range servers {
		eps = append(eps, wid(s))
	}
	return maps.Service{
		ID:        id,
		VIPs:      []netip.Addr{vip4, vip6},
		Ports:     []maps.Port{{Port: 80, TargetPort: serverPort}, {Port: 53, TargetPort: udpPort}},
		Policy:    policy,
		Endpoints: [][]uint32{eps},
	}
}

func (f *fixture) upsert(s maps.Service) {
	f.t.Helper()
	if err := f.maps.UpsertService(s); err != nil {
		f.t.Fatal(err)
	}
}

// ask connects from the client to addr and returns the answering server.
// askLoop has n clients ask vip4:80 over and over until stop is called
// (by the test, or by the cleanup when a step fails first).
func (f *fixture) askLoop(n int) (stop func() (ok, failed int64, first string)) {
	return testbed.Repeat(f.t, n, func() error {
		_, err := f.ask(hostPort(vip4, 80))
		return err
	})
}

func (f *fixture) ask(addr string) (string, error) {
	return f.client.Ask("tcp", addr, 2*time.Second)
}

func (f *fixture) mustAsk(addr string) string {
	f.t.Helper()
	who, err := f.ask(addr)
	if err != nil {
		f.t.Fatalf("connect %s: %v", addr, err)
	}
	return who
}

func hostPort(a netip.Addr, port int) string {
	return netip.AddrPortFrom(a, uint16(port)).String()
}

// peerName calls getpeername(2) on a connection directly.
func peerName(t *testing.T, c net.Conn) netip.AddrPort {
	t.Helper()
	sc, ok := c.(syscall.Conn)
	if !ok {
		t.Fatalf("%T has no raw connection", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var sa unix.Sockaddr
	var serr error
	if err := raw.Control(func(fd uintptr) { sa, serr = unix.Getpeername(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	t.Fatalf("unexpected sockaddr %T", sa)
	return netip.AddrPort{}
}

func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("s%d", i)
	}
	return out
}

func spread(counts map[string]int) string {
	var b strings.Builder
	for _, n := range names(len(counts) + 3) {
		if c, ok := counts[n]; ok {
			fmt.Fprintf(&b, "%s=%d ", n, c)
		}
	}
	return b.String()
}
