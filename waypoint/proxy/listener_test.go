package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// recordSelect remembers what it was asked and answers by destination.
type recordSelect struct {
	byDst map[netip.AddrPort]string
	seen  chan model.ConnInfo
	proto bool
}

func (s *recordSelect) Select(ci model.ConnInfo) string {
	select {
	case s.seen <- ci:
	default:
	}
	return s.byDst[ci.Destination]
}

func (s *recordSelect) NeedsProtocol(netip.AddrPort) bool { return s.proto }

// echoBackend answers with what identifies it.
func echoBackend(t *testing.T, name string) netip.AddrPort {
	return backend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
}

func TestProxyHeaderVersionsAndChainByDestination(t *testing.T) {
	a, b := echoBackend(t, "a"), echoBackend(t, "b")
	dstA := netip.MustParseAddrPort("10.96.0.1:80")
	dstB := netip.MustParseAddrPort("[fd00::96:2]:8080")
	sel := &recordSelect{byDst: map[netip.AddrPort]string{dstA: "a", dstB: "b"}, seen: make(chan model.ConnInfo, 16)}
	hcm := func(cluster string) *model.HTTPConnectionManager {
		return &model.HTTPConnectionManager{Routes: oneRoute(fwd(cluster)), Filters: []model.HTTPFilter{{Router: true}}}
	}
	te := newTestEngine(t, Options{})
	te.apply(&model.Snapshot{
		Listeners: []*model.Listener{{Name: "main", Address: netip.MustParseAddrPort("127.0.0.1:0"), ProxyProtocol: true,
			Chains: map[string]*model.FilterChain{"a": {Name: "a", HTTP: hcm("a")}, "b": {Name: "b", HTTP: hcm("b")}}, Select: sel}},
		Clusters: map[string]*model.Cluster{"a": {Name: "a", Endpoints: endpoints(a)}, "b": {Name: "b", Endpoints: endpoints(b)}},
	})
	wp := te.addr("main")
	cases := []struct {
		name     string
		src, dst netip.AddrPort
		version  byte
		want     string
	}{
		{"v2 IPv4", netip.MustParseAddrPort("10.0.0.9:5000"), dstA, 2, "a"},
		{"v2 IPv6", netip.MustParseAddrPort("[fd00::9]:5001"), dstB, 2, "b"},
		{"v1 IPv4", netip.MustParseAddrPort("10.0.0.9:5002"), dstA, 1, "a"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", wp.String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			h := proxyproto.HeaderProxyFromAddrs(c.version, net.TCPAddrFromAddrPort(c.src), net.TCPAddrFromAddrPort(c.dst))
			if _, err := h.WriteTo(conn); err != nil {
				t.Fatal(err)
			}
			io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if string(body) != c.want {
				t.Errorf("went to %q, want %q", body, c.want)
			}
			ci := <-sel.seen
			if ci.Destination != c.dst || ci.Source != c.src {
				t.Errorf("selector saw %+v, want source %v destination %v", ci, c.src, c.dst)
			}
		})
	}
}

func TestProxyHeaderLocalCommandUsesConnectionAddresses(t *testing.T) {
	a := echoBackend(t, "local")
	sel := &recordSelect{seen: make(chan model.ConnInfo, 4), byDst: map[netip.AddrPort]string{}}
	te := newTestEngine(t, Options{})
	s := httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(a)})
	s.Listeners[0].Select = sel
	s.Listeners[0].DefaultChain = s.Listeners[0].Chains["http"]
	te.apply(s)
	conn, _ := net.Dial("tcp", te.addr("main").String())
	defer conn.Close()
	h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	h.WriteTo(conn)
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	if ci := <-sel.seen; ci.Destination != te.addr("main") {
		t.Errorf("LOCAL: destination %v, want the listener's own %v", ci.Destination, te.addr("main"))
	}
}

func headerFailures(te *testEngine, reason string) float64 {
	return testutil.ToFloat64(te.stats.headerFailures.WithLabelValues(reason))
}

func TestMissingHeaderTimesOutCountedAndClosed(t *testing.T) {
	te := newTestEngine(t, Options{})
	s := httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c"})
	s.Listeners[0].HeaderTimeout = 100 * time.Millisecond
	te.apply(s)
	// A server-first client: connects and waits to be spoken to.
	conn, _ := net.Dial("tcp", te.addr("main").String())
	defer conn.Close()
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := conn.Read(make([]byte, 1))
	if n != 0 || err != io.EOF {
		t.Fatalf("read %d %v, want the waypoint to close", n, err)
	}
	if d := time.Since(start); d < 80*time.Millisecond || d > 2*time.Second {
		t.Errorf("closed after %v, want the 100 ms header timeout", d)
	}
	if headerFailures(te, "timeout") != 1 || headerFailures(te, "invalid") != 0 {
		t.Errorf("failures: timeout %v invalid %v", headerFailures(te, "timeout"), headerFailures(te, "invalid"))
	}
	if !strings.Contains(te.log.String(), "reason=timeout") {
		t.Errorf("no log line: %s", te.log.String())
	}
}

func TestInvalidHeaderCountedAndClosed(t *testing.T) {
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c"}))
	for i, raw := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",           // no header at all
		"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x05hello", // v2 signature, bad length
		"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n",       // v1, bad address
	} {
		conn, _ := net.Dial("tcp", te.addr("main").String())
		io.WriteString(conn, raw)
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, err := io.ReadAll(conn)
		conn.Close()
		if len(b) != 0 || !closedByPeer(err) {
			t.Errorf("case %d: got %q %v, want a plain close", i, b, err)
		}
		if got := headerFailures(te, "invalid"); got != float64(i+1) {
			t.Errorf("case %d: invalid count %v", i, got)
		}
	}
}

func TestConnectionsWithoutHeaderAllowed(t *testing.T) {
	a := echoBackend(t, "ok")
	te := newTestEngine(t, Options{})
	s := httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(a)})
	s.Listeners[0].AllowWithoutProxyProtocol = true
	te.apply(s)
	plain := &http.Client{Timeout: 5 * time.Second}
	if code, body, _ := get(t, plain, fmt.Sprintf("http://%s/", te.addr("main"))); code != 200 || body != "ok" {
		t.Errorf("without a header: %d %q", code, body)
	}
	if code, body, _ := get(t, client(te.addr("main")), "http://x/"); code != 200 || body != "ok" {
		t.Errorf("with a header: %d %q", code, body)
	}
}

func TestSniffing(t *testing.T) {
	cases := []struct {
		name, first string
		want        string
	}{
		{"http1", "GET /x HTTP/1.1\r\nHost: a\r\n\r\n", model.ProtocolHTTP1},
		{"http1.0", "POST /x?y=1 HTTP/1.0\r\n\r\n", model.ProtocolHTTP10},
		{"other http1.x", "GET / HTTP/1.2\r\n\r\n", model.ProtocolHTTP10},
		{"h2c", string(h2Preface), model.ProtocolHTTP2},
		{"tls-like", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", model.ProtocolTCP},
		{"redis", "*1\r\n$4\r\nPING\r\n", model.ProtocolTCP},
		{"not a version", "GET / FOO/1.1\r\n", model.ProtocolTCP},
		{"method with space only", "HELLO world\n", model.ProtocolTCP},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sel := &recordSelect{seen: make(chan model.ConnInfo, 1), proto: true, byDst: map[netip.AddrPort]string{}}
			te := newTestEngine(t, Options{})
			te.apply(&model.Snapshot{Listeners: []*model.Listener{{Name: "main", Address: netip.MustParseAddrPort("127.0.0.1:0"),
				ProxyProtocol: true, HeaderTimeout: 150 * time.Millisecond, Select: sel,
				Chains: map[string]*model.FilterChain{}}}})
			conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			io.WriteString(conn, c.first)
			select {
			case ci := <-sel.seen:
				if ci.Protocol != c.want {
					t.Errorf("sniffed %q, want %q", ci.Protocol, c.want)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("no chain selection")
			}
		})
	}
	// A byte at a time still reads as HTTP.
	sel := &recordSelect{seen: make(chan model.ConnInfo, 1), proto: true, byDst: map[netip.AddrPort]string{}}
	te := newTestEngine(t, Options{})
	te.apply(&model.Snapshot{Listeners: []*model.Listener{{Name: "main", Address: netip.MustParseAddrPort("127.0.0.1:0"),
		ProxyProtocol: true, HeaderTimeout: 2 * time.Second, Select: sel, Chains: map[string]*model.FilterChain{}}}})
	conn, _ := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	defer conn.Close()
	for _, b := range []byte("GET /slow HTTP/1.1\r\n") {
		conn.Write([]byte{b})
		time.Sleep(2 * time.Millisecond)
	}
	if ci := <-sel.seen; ci.Protocol != model.ProtocolHTTP1 {
		t.Errorf("trickled request line sniffed as %q", ci.Protocol)
	}
}

func TestDenyChains(t *testing.T) {
	te := newTestEngine(t, Options{})
	te.apply(&model.Snapshot{Listeners: []*model.Listener{{Name: "main", Address: netip.MustParseAddrPort("127.0.0.1:0"),
		ProxyProtocol: true, HeaderTimeout: 300 * time.Millisecond, Select: staticSelect("deny"),
		Chains: map[string]*model.FilterChain{"deny": {Name: "deny", Deny: &model.Deny{HTTPStatus: 403, Reason: "RBAC with unsupported principals"}}}}}})
	// An HTTP client gets the status.
	code, body, _ := get(t, client(te.addr("main")), "http://x/")
	if code != 403 || body != "RBAC: access denied" {
		t.Errorf("HTTP through a Deny chain: %d %q", code, body)
	}
	// h2c too.
	if code, _, _ := get(t, h2client(te.addr("main")), "http://x/"); code != 403 {
		t.Errorf("h2c through a Deny chain: %d", code)
	}
	// Anything else is closed.
	conn, _ := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	defer conn.Close()
	io.WriteString(conn, "\x00\x01binary")
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if b, err := io.ReadAll(conn); len(b) != 0 || !closedByPeer(err) {
		t.Errorf("TCP through a Deny chain: %q %v", b, err)
	}
	if n := testutil.ToFloat64(te.stats.denied.WithLabelValues("chain")); n != 3 {
		t.Errorf("denied count %v, want 3", n)
	}
	if !strings.Contains(te.log.String(), "RBAC with unsupported principals") {
		t.Errorf("reason not logged: %s", te.log.String())
	}
}

func TestNoChainCloses(t *testing.T) {
	te := newTestEngine(t, Options{})
	te.apply(&model.Snapshot{Listeners: []*model.Listener{{Name: "main", Address: netip.MustParseAddrPort("127.0.0.1:0"),
		ProxyProtocol: true, Select: staticSelect("missing"), Chains: map[string]*model.FilterChain{}}}})
	conn, _ := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	defer conn.Close()
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if b, err := io.ReadAll(conn); len(b) != 0 || !closedByPeer(err) {
		t.Errorf("got %q %v, want a close", b, err)
	}
	if n := testutil.ToFloat64(te.stats.connections.WithLabelValues("none")); n != 1 {
		t.Errorf("no-chain count %v", n)
	}
}
