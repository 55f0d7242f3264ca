package proxy

import (
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Envoy's tcp_proxy: idle_timeout 0s turns the idle timeout off (a
// DestinationRule's tcp.idleTimeout: 0s); only an unset one is 1 h.
func TestTCPIdleTimeoutDisabled(t *testing.T) {
	defer func(d time.Duration) { tcpIdleDefault = d }(tcpIdleDefault)
	tcpIdleDefault = 100 * time.Millisecond
	echo := tcpEcho(t, "127.0.0.1:0")
	te := newTestEngine(t, Options{})
	te.apply(tcpSnapshot(&model.TCPProxy{Cluster: "echo", IdleTimeout: model.NoTimeout}, model.ServiceRef{},
		&model.Cluster{Name: "echo", Endpoints: endpoints(echo)}))
	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 4)
	for i := range 2 {
		if i == 1 {
			time.Sleep(400 * time.Millisecond)
		}
		io.WriteString(conn, "ping")
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatalf("round %d: %v (closed while idle though the idle timeout is off)", i, err)
		}
	}
}

// istiodAppProtocol selects as istiod's application-protocol matcher does
// without PILOT_HTTP10: 'http/1.1' and 'h2c' to the HTTP chain, anything
// else (HTTP/1.0 included) to the TCP chain.
type istiodAppProtocol struct{}

func (istiodAppProtocol) Select(ci model.ConnInfo) string {
	if ci.Protocol == "http/1.1" || ci.Protocol == "h2c" {
		return "http"
	}
	return "tcp"
}
func (istiodAppProtocol) NeedsProtocol(netip.AddrPort) bool { return true }

// Envoy's http_inspector reports an HTTP/1.0 request line as 'http/1.0',
// not 'http/1.1': under istiod's matcher that connection is TCP proxied.
func TestHTTP10SniffedAsHTTP10(t *testing.T) {
	echo := tcpEcho(t, "127.0.0.1:0")
	httpUp := echoBackend(t, "via-http-chain")
	te := newTestEngine(t, Options{})
	s := httpSnapshot(oneRoute(fwd("web")), false, &model.Cluster{Name: "web", Endpoints: endpoints(httpUp)},
		&model.Cluster{Name: "echo", Endpoints: endpoints(echo)})
	l := s.Listeners[0]
	l.Select = istiodAppProtocol{}
	l.Chains["tcp"] = &model.FilterChain{Name: "tcp", TCP: &model.TCPProxy{Cluster: "echo"}}
	te.apply(s)

	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := "GET / HTTP/1.0\r\n\r\n"
	io.WriteString(conn, req)
	conn.(*net.TCPConn).CloseWrite()
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	got, _ := io.ReadAll(conn)
	if want := req + "|got " + strconv.Itoa(len(req)); string(got) != want {
		t.Errorf("HTTP/1.0 under an http/1.1+h2c matcher: got %q, want the TCP chain's echo %q", got, want)
	}
	// HTTP/1.1 still takes the HTTP chain.
	if code, body, _ := get(t, client(te.addr("main")), "http://x/"); code != 200 || body != "via-http-chain" {
		t.Errorf("HTTP/1.1: %d %q", code, body)
	}
}

// greeters are server-first endpoints that name themselves and close.
func greeters(t *testing.T, n int) []netip.AddrPort {
	var out []netip.AddrPort
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		name := "g" + strconv.Itoa(i)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, name)
				c.Close()
			}
		}()
		out = append(out, mustAddrPort(ln.Addr().String()))
	}
	return out
}

func greetingVia(t *testing.T, te *testEngine, src netip.AddrPort) string {
	t.Helper()
	conn, err := dialer(te.addr("main"), src, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	b, _ := io.ReadAll(conn)
	return string(b)
}

// Envoy's tcp_proxy hash_policy source_ip (istiod's consistentHash
// useSourceIp) hashes the downstream address for a ring-hash cluster: one
// client's connections all reach the same endpoint.
func TestTCPHashPolicySourceIP(t *testing.T) {
	te := newTestEngine(t, Options{})
	te.apply(tcpSnapshot(&model.TCPProxy{Cluster: "c", HashSourceIP: true}, model.ServiceRef{},
		&model.Cluster{Name: "c", LB: "ring_hash", Endpoints: endpoints(greeters(t, 4)...)}))
	first := greetingVia(t, te, clientAddr)
	for i := range 12 {
		// Another source port, the same address: the same endpoint.
		src := netip.AddrPortFrom(clientAddr.Addr(), uint16(41000+i))
		if got := greetingVia(t, te, src); got != first || got == "" {
			t.Fatalf("connection %d from %s reached %q, the first %q", i, src, got, first)
		}
	}
	seen := map[string]bool{}
	for i := range 32 {
		seen[greetingVia(t, te, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i), 7}), 40000))] = true
	}
	if len(seen) < 2 {
		t.Errorf("32 sources all reached %v: not spread", seen)
	}
}

// Envoy's tcp_proxy max_connect_attempts: a failed connect is tried again
// (a host picked again) before the connection is given up with UF.
func TestTCPMaxConnectAttempts(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := mustAddrPort(ln.Addr().String())
	ln.Close()
	live := greeters(t, 1)[0]
	te := newTestEngine(t, Options{})
	te.apply(tcpSnapshot(&model.TCPProxy{Cluster: "c", MaxConnectAttempts: 2}, model.ServiceRef{},
		&model.Cluster{Name: "c", Endpoints: endpoints(dead, live)}))
	for i := range 6 {
		if got := greetingVia(t, te, clientAddr); got != "g0" {
			t.Fatalf("connection %d: %q, want the live endpoint after a second attempt", i, got)
		}
	}
	// One attempt (the default): a connection that picks the dead endpoint fails.
	te.apply(tcpSnapshot(&model.TCPProxy{Cluster: "c"}, model.ServiceRef{},
		&model.Cluster{Name: "c", Endpoints: endpoints(dead, live)}))
	failed := 0
	for range 6 {
		if greetingVia(t, te, clientAddr) == "" {
			failed++
		}
	}
	if failed == 0 {
		t.Error("with one attempt no connection failed")
	}
}

// With allow_requests_without_proxy_protocol Envoy gives up on a header as
// soon as the bytes so far match neither signature: a short first message
// that merely starts with a signature's first byte ('P', '\r') is not held
// until the listener filter timeout.
func TestWithoutProxyHeaderShortStartNotHeld(t *testing.T) {
	echo := tcpEcho(t, "127.0.0.1:0")
	te := newTestEngine(t, Options{})
	s := tcpSnapshot(&model.TCPProxy{Cluster: "echo"}, model.ServiceRef{}, &model.Cluster{Name: "echo", Endpoints: endpoints(echo)})
	s.Listeners[0].AllowWithoutProxyProtocol = true
	s.Listeners[0].HeaderTimeout = 3 * time.Second
	te.apply(s)
	for _, first := range []string{"PING\r\n", "P", "\r\nhi", "PROX"} {
		conn, err := net.Dial("tcp", te.addr("main").String())
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		io.WriteString(conn, first)
		if first == "P" || first == "PROX" {
			// A prefix of a signature: the next byte decides.
			time.Sleep(50 * time.Millisecond)
			io.WriteString(conn, "!")
			first += "!"
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, len(first))
		_, err = io.ReadFull(conn, buf)
		conn.Close()
		if err != nil || string(buf) != first {
			t.Fatalf("%q: %q %v", first, buf, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%q echoed after %v: held for the header timeout", first, d)
		}
	}
}

// listener_filters_timeout 0s is Envoy's "no timeout" (istiod's sidecar
// listeners with the default protocolDetectionTimeout): a client slow to
// send its first bytes is still sniffed as what it sends, not given up on
// after the engine's default.
func TestListenerFiltersTimeoutOff(t *testing.T) {
	httpUp := echoBackend(t, "via-http-chain")
	te := newTestEngine(t, Options{HeaderTimeout: 200 * time.Millisecond})
	s := httpSnapshot(oneRoute(fwd("web")), false, &model.Cluster{Name: "web", Endpoints: endpoints(httpUp)})
	l := s.Listeners[0]
	l.HeaderTimeout = model.NoTimeout
	l.Select = protoSelect{}
	l.Chains["tcp"] = &model.FilterChain{Name: "tcp", TCP: &model.TCPProxy{Cluster: "web"}}
	te.apply(s)
	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.Sleep(500 * time.Millisecond)
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 4096)
	n, _ := io.ReadAtLeast(conn, buf, 1)
	if got := string(buf[:n]); !strings.Contains(got, "X-Envoy-Upstream-Service-Time") {
		t.Errorf("a late request: %q, want the HTTP chain's answer", got)
	}
}

// istiod's waypoint listener sets no continue_on_listener_filters_timeout:
// where the protocol must be sniffed, Envoy closes a connection whose
// http_inspector has not decided by listener_filters_timeout (a
// server-first client that sends nothing, a request line that never ends)
// or that closed before its first byte (active_tcp_socket.cc). With the
// flag on, the undecided connection takes the TCP chain.
func TestSniffTimeoutClosesUnlessContinue(t *testing.T) {
	greeter := greeters(t, 1)[0]
	for _, cont := range []bool{false, true} {
		te := newTestEngine(t, Options{})
		s := tcpSnapshot(&model.TCPProxy{Cluster: "g"}, model.ServiceRef{}, &model.Cluster{Name: "g", Endpoints: endpoints(greeter)})
		l := s.Listeners[0]
		l.HeaderTimeout = 150 * time.Millisecond
		l.ContinueOnFilterTimeout = cont
		l.Select = protoSelect{}
		l.Chains["http"] = &model.FilterChain{Name: "http", Deny: &model.Deny{HTTPStatus: 403, Reason: "not here"}}
		te.apply(s)
		for _, first := range []string{"", "GET /never-ends"} {
			conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(conn, first)
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			got, _ := io.ReadAll(conn)
			conn.Close()
			want := ""
			if cont {
				want = "g0"
			}
			if string(got) != want {
				t.Errorf("continue=%v, first %q: got %q, want %q", cont, first, got, want)
			}
		}
		// The client leaves before its first byte: nothing to proxy either way.
		conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
		if err != nil {
			t.Fatal(err)
		}
		conn.(*net.TCPConn).CloseWrite()
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		got, _ := io.ReadAll(conn)
		conn.Close()
		if len(got) != 0 {
			t.Errorf("continue=%v, a client gone before its first byte was proxied: %q", cont, got)
		}
		// Why each was closed, in the log: a client gone is no warning (a
		// TCP probe, a scan), an undetected protocol is.
		eventually(t, "the log line of the client gone", func() bool { return strings.Contains(te.log.String(), "client closed before its first byte") })
		log := te.log.String()
		if strings.Contains(log, "level=WARN") && strings.Contains(log, "reason=closed") {
			t.Errorf("continue=%v: a client gone before its first byte was warned about:\n%s", cont, log)
		}
		if !cont && !strings.Contains(log, "reason=timeout") {
			t.Errorf("an undetected protocol was not warned about with its reason:\n%s", log)
		}
	}
}

// Envoy's http_inspector reads up to 64 KiB (from 8 KiB, doubling) to find
// the end of the request line: a request with a long query string is HTTP,
// not sent to the TCP chain; still undecided at 64 KiB, it is closed.
func TestSniffLongRequestLine(t *testing.T) {
	httpUp := echoBackend(t, "via-http-chain")
	echo := tcpEcho(t, "127.0.0.1:0")
	te := newTestEngine(t, Options{})
	s := httpSnapshot(oneRoute(fwd("web")), false, &model.Cluster{Name: "web", Endpoints: endpoints(httpUp)},
		&model.Cluster{Name: "echo", Endpoints: endpoints(echo)})
	l := s.Listeners[0]
	l.Select = protoSelect{}
	l.Chains["tcp"] = &model.FilterChain{Name: "tcp", TCP: &model.TCPProxy{Cluster: "echo"}}
	te.apply(s)
	for _, n := range []int{20 << 10, 60 << 10} {
		if code, body, _ := get(t, client(te.addr("main")), "http://x/?q="+strings.Repeat("a", n)); code != 200 || body != "via-http-chain" {
			t.Errorf("request line of %d bytes: %d %q, want the HTTP chain's answer", n, code, body)
		}
	}
	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go io.WriteString(conn, "GET /"+strings.Repeat("a", 70<<10))
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if got, err := io.ReadAll(conn); len(got) != 0 || !closedByPeer(err) {
		t.Errorf("request line past 64 KiB: %d bytes back (%v), want the connection closed", len(got), err)
	}
}
