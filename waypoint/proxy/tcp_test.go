package proxy

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// tcpEcho echoes until the client half-closes, then says how much it got
// and half-closes in turn.
func tcpEcho(t *testing.T, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(c, c)
				io.WriteString(c, "|got "+strconv.FormatInt(n, 10))
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return mustAddrPort(ln.Addr().String())
}

func tcpSnapshot(tp *model.TCPProxy, service model.ServiceRef, clusters ...*model.Cluster) *model.Snapshot {
	cm := map[string]*model.Cluster{}
	for _, c := range clusters {
		cm[c.Name] = c
	}
	return &model.Snapshot{
		Listeners: []*model.Listener{{Name: "main", Address: netip.MustParseAddrPort("127.0.0.1:0"), ProxyProtocol: true,
			Select: staticSelect("tcp"), Chains: map[string]*model.FilterChain{"tcp": {Name: "tcp", TCP: tp, Service: service}}}},
		Clusters: cm,
	}
}

func TestTCPProxyHalfCloseAndBytes(t *testing.T) {
	echo := tcpEcho(t, "127.0.0.2:0")
	te := newTestEngine(t, Options{})
	te.apply(tcpSnapshot(&model.TCPProxy{Cluster: "echo"}, model.ServiceRef{Hostname: "echo.ns.svc.cluster.local", Name: "echo", Namespace: "ns"},
		&model.Cluster{Name: "echo", Endpoints: endpoints(echo)}))
	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := bytes.Repeat([]byte("x"), 100000)
	go func() {
		conn.Write(payload)
		// Half-close: the echo sees EOF, answers and half-closes back.
		conn.(*net.TCPConn).CloseWrite()
	}()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	want := string(payload) + "|got 100000"
	if string(got) != want {
		t.Fatalf("got %d bytes, want %d (tail %q)", len(got), len(want), got[max(0, len(got)-20):])
	}
	// Accounted when both directions are done (its access log line), with
	// no protocol: Envoy's %PROTOCOL% is unset ("-", JSON null) for TCP.
	eventually(t, "the connection accounted", func() bool { return strings.Contains(te.access.String(), `"bytes_received"`) })
	text := metricsText(t, te)
	for _, want := range []string{
		`istio_tcp_received_bytes_total{connection_security_policy="none",destination_app="unknown"`,
		`destination_service="echo.ns.svc.cluster.local"`,
		`request_protocol="tcp"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s:\n%s", want, grep(text, "istio_tcp"))
		}
	}
	if !strings.Contains(grep(text, "istio_tcp_received_bytes_total"), " 100000") || !strings.Contains(grep(text, "istio_tcp_sent_bytes_total"), " 100011") {
		t.Errorf("byte counts:\n%s", grep(text, "bytes_total"))
	}
	if !strings.Contains(te.access.String(), `"protocol":null,"response_code":0`) || !strings.Contains(te.access.String(), `"bytes_received":100000,"bytes_sent":100011`) {
		t.Errorf("access log: %s", te.access.String())
	}
	// The client is the PROXY header's source, as Envoy's tcp_proxy logs
	// the connection's remote address after the proxy_protocol filter.
	if want := `"downstream_remote_address":"` + clientAddr.String() + `"`; !strings.Contains(te.access.String(), want) {
		t.Errorf("access log lacks %s: %s", want, te.access.String())
	}
}

func TestTCPProxyServerFirstAndWeighted(t *testing.T) {
	// Server-first upstreams: they greet, the client never speaks first.
	greeter := func(name string) netip.AddrPort {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, "220 "+name+"\r\n")
				c.Close()
			}
		}()
		return mustAddrPort(ln.Addr().String())
	}
	a, b := greeter("a"), greeter("b")
	te := newTestEngine(t, Options{})
	te.apply(tcpSnapshot(&model.TCPProxy{Weighted: &model.WeightedClusters{Clusters: []model.WeightedCluster{{Name: "a", Weight: 1}, {Name: "b", Weight: 3}}}},
		model.ServiceRef{}, &model.Cluster{Name: "a", Endpoints: endpoints(a)}, &model.Cluster{Name: "b", Endpoints: endpoints(b)}))
	counts := map[string]int{}
	for range 200 {
		conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
		if err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		got, _ := io.ReadAll(conn)
		conn.Close()
		counts[string(got)]++
	}
	if counts["220 a\r\n"]+counts["220 b\r\n"] != 200 || counts["220 b\r\n"] < 120 || counts["220 b\r\n"] > 180 {
		t.Errorf("greetings %v, want all 200 at about 1:3", counts)
	}
}

func TestTCPProxyIdleTimeoutAndConnectFailure(t *testing.T) {
	quiet := tcpEcho(t, "127.0.0.1:0")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := mustAddrPort(ln.Addr().String())
	ln.Close()
	te := newTestEngine(t, Options{})
	te.apply(tcpSnapshot(&model.TCPProxy{Cluster: "quiet", IdleTimeout: 150 * time.Millisecond}, model.ServiceRef{},
		&model.Cluster{Name: "quiet", Endpoints: endpoints(quiet)}))
	conn, _ := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	defer conn.Close()
	io.WriteString(conn, "ping")
	buf := make([]byte, 4)
	io.ReadFull(conn, buf)
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Read(buf); err != io.EOF {
		t.Errorf("idle connection: %v, want closed", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 2*time.Second {
		t.Errorf("closed after %v idle, want ~150 ms", d)
	}

	te.apply(tcpSnapshot(&model.TCPProxy{Cluster: "dead"}, model.ServiceRef{}, &model.Cluster{Name: "dead", ConnectTimeout: time.Second, Endpoints: endpoints(dead)}))
	conn2, _ := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	defer conn2.Close()
	io.WriteString(conn2, "hello")
	conn2.SetReadDeadline(time.Now().Add(3 * time.Second))
	// Closed: with the client's bytes unread that may be a reset.
	if b, err := io.ReadAll(conn2); len(b) != 0 || !closedByPeer(err) {
		t.Errorf("upstream down: %q %v", b, err)
	}
	eventually(t, "UF counted", func() bool { return strings.Contains(metricsText(t, te), `response_flags="UF"`) })
}

// A long-lived connection's bytes show in the metrics while it is open
// (Istio reports open connections every tcp_reporting_duration).
func TestTCPBytesOfOpenConnection(t *testing.T) {
	echo := tcpEcho(t, "127.0.0.1:0")
	te := newTestEngine(t, Options{})
	te.apply(tcpSnapshot(&model.TCPProxy{Cluster: "echo"}, model.ServiceRef{Hostname: "echo.ns.svc.cluster.local"}, &model.Cluster{Name: "echo", Endpoints: endpoints(echo)}))
	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "hello")
	buf := make([]byte, 5)
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatal(err)
	}
	eventually(t, "5 bytes each way counted on the open connection", func() bool {
		m := metricsText(t, te)
		return strings.Contains(grep(m, "istio_tcp_received_bytes_total"), " 5") && strings.Contains(grep(m, "istio_tcp_sent_bytes_total"), " 5")
	})
}
