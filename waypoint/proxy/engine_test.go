package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

func listenerAt(name, addr string, rt *model.RouteTable) *model.Listener {
	return &model.Listener{Name: name, Address: netip.MustParseAddrPort(addr), ProxyProtocol: true, Select: staticSelect("http"),
		Chains: map[string]*model.FilterChain{"http": {Name: "http", HTTP: &model.HTTPConnectionManager{Routes: rt, Filters: []model.HTTPFilter{{Router: true}}}}}}
}

func TestApplyOpensAndClosesListeners(t *testing.T) {
	be := echoBackend(t, "ok")
	cl := map[string]*model.Cluster{"c": {Name: "c", Endpoints: endpoints(be)}}
	te := newTestEngine(t, Options{})
	if te.Ready() {
		t.Error("ready before any snapshot")
	}
	te.apply(&model.Snapshot{Version: "1", Listeners: []*model.Listener{listenerAt("one", "127.0.0.1:0", oneRoute(fwd("c"))), listenerAt("two", "127.0.0.2:0", oneRoute(fwd("c")))}, Clusters: cl})
	if !te.Ready() {
		t.Error("not ready with its listeners open")
	}
	one, two := te.addr("one"), te.addr("two")
	// A keep-alive connection on "one" outlives the swap.
	c1 := client(one)
	if code, _, _ := get(t, c1, "http://x/"); code != 200 {
		t.Fatal(code)
	}
	te.apply(&model.Snapshot{Version: "2", Listeners: []*model.Listener{listenerAt("one", "127.0.0.1:0", oneRoute(fwd("c"))), listenerAt("three", "127.0.0.3:0", oneRoute(fwd("c")))}, Clusters: cl})
	if te.addr("one") != one {
		t.Errorf("listener one rebound: %v -> %v", one, te.addr("one"))
	}
	if _, err := net.DialTimeout("tcp", two.String(), time.Second); err == nil {
		t.Error("listener two still accepts")
	}
	if code, _, _ := get(t, c1, "http://x/"); code != 200 {
		t.Errorf("keep-alive connection after the swap: %d", code)
	}
	if code, _, _ := get(t, client(te.addr("three")), "http://x/"); code != 200 {
		t.Errorf("new listener: %d", code)
	}
	if st := te.Stats(); st.Version != "2" || st.Listeners != 2 || !st.Ready {
		t.Errorf("stats %+v", st)
	}
}

func TestApplyFailureChangesNothing(t *testing.T) {
	be := echoBackend(t, "ok")
	busy, _ := net.Listen("tcp", "127.0.0.1:0")
	defer busy.Close()
	te := newTestEngine(t, Options{})
	good := &model.Snapshot{Version: "good", Listeners: []*model.Listener{listenerAt("main", "127.0.0.1:0", oneRoute(fwd("c")))},
		Clusters: map[string]*model.Cluster{"c": {Name: "c", Endpoints: endpoints(be)}}}
	te.apply(good)
	bad := &model.Snapshot{Version: "bad", Listeners: []*model.Listener{listenerAt("main", "127.0.0.1:0", oneRoute()), listenerAt("busy", busy.Addr().String(), oneRoute())}}
	if err := te.Apply(bad); err == nil || !strings.Contains(err.Error(), "listen on") {
		t.Fatalf("binding a busy address: %v", err)
	}
	invalid := &model.Snapshot{Listeners: []*model.Listener{{Name: "x", Address: netip.MustParseAddrPort("127.0.0.1:0"),
		Chains: map[string]*model.FilterChain{"both": {HTTP: &model.HTTPConnectionManager{}, TCP: &model.TCPProxy{}}}}}}
	if err := te.Apply(invalid); err == nil {
		t.Fatal("a chain with two kinds was accepted")
	}
	if code, body, _ := get(t, client(te.addr("main")), "http://x/"); code != 200 || body != "ok" || te.Stats().Version != "good" {
		t.Errorf("after failed applies: %d %q version %s", code, body, te.Stats().Version)
	}
	if len(te.Clusters()) != 1 {
		t.Errorf("clusters changed by a failed apply: %v", te.Clusters())
	}
}

func TestClusterStateKeptAcrossSwaps(t *testing.T) {
	a, b := echoBackend(t, "a"), echoBackend(t, "b")
	snap := func(version string, clusters ...string) *model.Snapshot {
		s := httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(a, b)})
		s.Version = version
		for _, n := range clusters {
			s.Clusters[n] = &model.Cluster{Name: n}
		}
		return s
	}
	te := newTestEngine(t, Options{})
	te.apply(snap("1", "gone-later"))
	c := client(te.addr("main"))
	_, first, _ := get(t, c, "http://x/")
	// A new snapshot with the same cluster (new values, same name): the
	// round-robin cursor goes on where it was.
	te.apply(snap("2"))
	_, second, _ := get(t, c, "http://x/")
	if first == second {
		t.Errorf("round robin restarted across the swap: %s then %s", first, second)
	}
	if got := te.Clusters(); len(got) != 1 || got[0] != "c" {
		t.Errorf("clusters after the swap: %v (gone-later must be dropped)", got)
	}
}

func TestInFlightRequestFinishesOnItsConfig(t *testing.T) {
	release := make(chan struct{})
	slow := backend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, "old")
	})
	v2 := echoBackend(t, "new")
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("old")), false, &model.Cluster{Name: "old", Endpoints: endpoints(slow)}))
	c := client(te.addr("main"))
	done := make(chan string)
	go func() {
		code, body, _ := get(t, c, "http://x/slow")
		done <- http.StatusText(code) + " " + body
	}()
	eventually(t, "the request in flight", func() bool { return te.ClusterStats()["old"].Requests == 1 })
	// The new configuration routes elsewhere and drops the old cluster.
	te.apply(httpSnapshot(oneRoute(fwd("new")), false, &model.Cluster{Name: "new", Endpoints: endpoints(v2)}))
	if _, body, _ := get(t, c, "http://x/"); body != "new" {
		t.Errorf("a request after the swap went to %q", body)
	}
	close(release)
	if got := <-done; got != "OK old" {
		t.Errorf("the request in flight: %q", got)
	}
}

func TestKeepAliveConnectionSeesNewRoutes(t *testing.T) {
	a, b := echoBackend(t, "a"), echoBackend(t, "b")
	te := newTestEngine(t, Options{})
	clusters := []*model.Cluster{{Name: "a", Endpoints: endpoints(a)}, {Name: "b", Endpoints: endpoints(b)}}
	te.apply(httpSnapshot(oneRoute(fwd("a")), false, clusters...))
	var conns int
	tr := &http.Transport{DialContext: func(ctx context.Context, n, addr string) (net.Conn, error) {
		conns++
		return dialer(te.addr("main"), clientAddr, serviceVIP)(ctx, n, addr)
	}}
	c := &http.Client{Transport: tr}
	_, first, _ := get(t, c, "http://x/")
	te.apply(httpSnapshot(oneRoute(fwd("b")), false, clusters...))
	_, second, _ := get(t, c, "http://x/")
	if first != "a" || second != "b" || conns != 1 {
		t.Errorf("on one connection: %s then %s (%d connections)", first, second, conns)
	}
}

func TestCloseEndsEverything(t *testing.T) {
	echo := tcpEcho(t, "127.0.0.1:0")
	te := newTestEngine(t, Options{})
	te.apply(tcpSnapshot(&model.TCPProxy{Cluster: "echo"}, model.ServiceRef{}, &model.Cluster{Name: "echo", Endpoints: endpoints(echo)}))
	addr := te.addr("main")
	conn, _ := dialer(addr, clientAddr, serviceVIP)(t.Context(), "", "")
	defer conn.Close()
	io.WriteString(conn, "x")
	io.ReadFull(conn, make([]byte, 1))
	// And one still to send its PROXY header.
	silent, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	time.Sleep(20 * time.Millisecond)
	done := make(chan error)
	go func() { done <- te.Close() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs with a TCP connection open")
	}
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Error("the proxied connection survived Close")
	}
	silent.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := silent.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("a connection before its header survived Close: %v", err)
	}
	if te.Ready() {
		t.Error("ready after Close")
	}
	if _, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		t.Error("still listening after Close")
	}
}

// A keep-alive connection whose listener left the configuration finishes
// its request on the old one and is closed after it.
func TestConnectionOfRemovedListenerDrains(t *testing.T) {
	be := echoBackend(t, "ok")
	cl := map[string]*model.Cluster{"c": {Name: "c", Endpoints: endpoints(be)}}
	te := newTestEngine(t, Options{})
	te.apply(&model.Snapshot{Listeners: []*model.Listener{listenerAt("old", "127.0.0.2:0", oneRoute(fwd("c")))}, Clusters: cl})
	conn, err := dialer(te.addr("old"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	ask := func() *http.Response {
		t.Helper()
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		return resp
	}
	if resp := ask(); resp.StatusCode != 200 || resp.Close {
		t.Fatalf("before: %d close=%v", resp.StatusCode, resp.Close)
	}
	te.apply(&model.Snapshot{Listeners: []*model.Listener{listenerAt("new", "127.0.0.3:0", oneRoute(fwd("c")))}, Clusters: cl})
	if resp := ask(); resp.StatusCode != 200 || !resp.Close {
		t.Errorf("after the listener left: %d close=%v, want 200 and the connection closed", resp.StatusCode, resp.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("the connection stayed open: %v", err)
	}
}

// Drain, as at a pod's SIGTERM: no new connection is accepted, a
// keep-alive connection gets its answer with Connection: close, and Drain
// returns once that connection is gone.
func TestDrainFinishesKeepAliveConnections(t *testing.T) {
	be := echoBackend(t, "ok")
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	addr := te.addr("main")
	c := client(addr)
	if code, body, resp := get(t, c, "http://x/"); code != 200 || body != "ok" || resp.Close {
		t.Fatalf("before Drain: %d %q close=%v", code, body, resp.Close)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	drained := make(chan struct{})
	go func() { te.Drain(ctx); close(drained) }()
	eventually(t, "not ready while draining", func() bool { return !te.Ready() })
	if _, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		t.Error("still accepting connections while draining")
	}
	select {
	case <-drained:
		t.Fatal("Drain returned with a keep-alive connection still open")
	case <-time.After(100 * time.Millisecond):
	}
	// The open connection still gets its answer, the last on it.
	code, body, resp := get(t, c, "http://x/")
	if code != 200 || body != "ok" || !resp.Close {
		t.Errorf("while draining: %d %q close=%v, want 200 \"ok\" with Connection: close", code, body, resp.Close)
	}
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("Drain did not return after the last connection closed")
	}
}

// Close does not wait on h2c clients that stopped reading: net/http's
// server closes its connections one after another under its lock, so a
// close that waited for each one's unsent bytes made shutdown take that
// wait times the number of stalled clients.
func TestCloseDoesNotWaitOnStalledH2Clients(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	})
	te := newTestEngine(t, Options{Listen: func(network, addr string) (net.Listener, error) {
		ln, err := listen(network, addr)
		return smallSendBuffers{ln}, err
	}})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	addr := te.addr("main")
	const clients = 4
	var conns []net.Conn
	for range clients {
		c, err := dialer(addr, clientAddr, serviceVIP)(t.Context(), "", "")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
		// Windows far beyond what the sockets hold, a request, and no
		// read ever: the waypoint's writes back up.
		io.WriteString(c, http2.ClientPreface)
		fr := http2.NewFramer(c, c)
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
		fr.WriteWindowUpdate(0, 1<<30)
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	}
	time.Sleep(300 * time.Millisecond) // every connection's writes stuck
	start := time.Now()
	te.Close()
	if d := time.Since(start); d > 400*time.Millisecond {
		t.Errorf("Close took %v with %d stalled h2c clients", d, clients)
	}
	// And their connections do end.
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); !closedByPeer(err) {
			t.Errorf("a stalled client's connection did not end: %v", err)
		}
	}
}

// smallSendBuffers gives accepted connections a small send buffer, so a
// peer that does not read stalls the writer after a few KiB.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(4 << 10)
	}
	return c, err
}
