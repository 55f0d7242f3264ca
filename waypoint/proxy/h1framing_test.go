package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// rawExchange sends raw bytes to the waypoint and reads one response to
// method.
func rawExchange(t *testing.T, te *testEngine, raw, method string) (*http.Response, string) {
	t.Helper()
	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	io.WriteString(conn, raw)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// An h2c upgrade is not forwarded: the endpoint would switch the
// connection to HTTP/2 and every request the client then sends on it
// would reach the endpoint unrouted and unfiltered (h2c smuggling).
// Envoy's codec strips the h2c upgrade (Upgrade, HTTP2-Settings and their
// Connection tokens) and serves the request as an ordinary one.
func TestH2CUpgradeNotForwarded(t *testing.T) {
	seen := make(chan http.Header, 1)
	addr := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		seen <- req.Header
		if req.Header.Get("Upgrade") != "" {
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
			time.Sleep(time.Second)
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(addr)}))
	resp, body := rawExchange(t, te, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", "GET")
	if resp.StatusCode != 200 || body != "ok" {
		t.Errorf("h2c upgrade request: %d %q, want the endpoint's 200 as for any request", resp.StatusCode, body)
	}
	h := <-seen
	for _, k := range []string{"Upgrade", "Http2-Settings", "Connection"} {
		if v, ok := h[k]; ok {
			t.Errorf("the endpoint got %s: %q", k, v)
		}
	}
}

// A 101 to a request that asked for no upgrade is not relayed: the client
// would take its connection for switched while the waypoint reads HTTP on
// it still. A server must not switch to a protocol the client did not ask
// for (RFC 9110 7.8); net/http's ReverseProxy answers such a 101 with 502,
// and Envoy's codec counts the endpoint's protocol error (UPE).
func TestUnrequested101Is502(t *testing.T) {
	addr := rawServer(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: Upgrade\r\n\r\n")
		time.Sleep(time.Second)
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(addr)}))
	resp, _ := rawExchange(t, te, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "GET")
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("a 101 the client never asked for: %d, want 502", resp.StatusCode)
	}
}

// Headers the client's Connection names are its hop's and go, but before
// the waypoint adds its own: naming x-request-id or x-forwarded-proto
// there does not take the waypoint's off, and naming Content-Length
// does not lose the body.
func TestConnectionNominatedHeadersDropped(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%v|%s|%s|%s|%s", r.Header.Get("X-Request-Id") != "", r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Hop"), r.Header.Get("X-Kept"), b)
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	resp, body := rawExchange(t, te, "POST / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Request-Id, X-Forwarded-Proto, X-Hop, Content-Length\r\n"+
		"X-Request-Id: client-id\r\nX-Hop: 1\r\nX-Kept: 2\r\nContent-Length: 4\r\n\r\nbody", "POST")
	if resp.StatusCode != 200 || body != "true|http||2|body" {
		t.Errorf("%d %q, want the waypoint's id and proto, X-Hop dropped, X-Kept and the body through", resp.StatusCode, body)
	}
}
