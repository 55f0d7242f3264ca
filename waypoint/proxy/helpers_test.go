package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/net/http2"

	"github.com/kmesh-go/kmesh/internal/testbed"
	"github.com/kmesh-go/kmesh/waypoint/model"
)

// syncBuffer is a bytes.Buffer safe for the engine's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testEngine is an engine on loopback with its log, access log and metrics.
type testEngine struct {
	*Engine
	t      testing.TB
	log    *syncBuffer
	access *syncBuffer
	reg    *prometheus.Registry
}

func newTestEngine(t testing.TB, o Options) *testEngine {
	t.Helper()
	te := &testEngine{t: t, log: &syncBuffer{}, access: &syncBuffer{}, reg: prometheus.NewRegistry()}
	o.Logger = slog.New(slog.NewTextHandler(te.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if o.AccessLog == nil {
		o.AccessLog = te.access
	}
	te.Engine = New(o)
	if err := te.Register(te.reg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { te.Close() })
	return te
}

func (te *testEngine) apply(s *model.Snapshot) {
	te.t.Helper()
	if err := te.Apply(s); err != nil {
		te.t.Fatal(err)
	}
}

// addr is the bound address of the listener named name.
func (te *testEngine) addr(name string) netip.AddrPort {
	te.t.Helper()
	a, ok := te.ListenerAddrs()[name]
	if !ok {
		te.t.Fatalf("no listener %q", name)
	}
	return a
}

// backend is a test HTTP server on loopback.
func backend(t *testing.T, h http.HandlerFunc) netip.AddrPort {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return netip.MustParseAddrPort(s.Listener.Addr().String())
}

func endpoints(addrs ...netip.AddrPort) [][]model.Endpoint {
	var eps []model.Endpoint
	for _, a := range addrs {
		eps = append(eps, model.Endpoint{Address: a, Weight: 1, Healthy: true})
	}
	return [][]model.Endpoint{eps}
}

// staticSelect sends every connection to one chain.
type staticSelect string

func (s staticSelect) Select(model.ConnInfo) string      { return string(s) }
func (s staticSelect) NeedsProtocol(netip.AddrPort) bool { return false }

// protoSelect picks by sniffed protocol: "http" for HTTP/1 and h2c,
// "tcp" otherwise.
type protoSelect struct{}

func (protoSelect) Select(ci model.ConnInfo) string {
	if ci.Protocol == model.ProtocolTCP {
		return "tcp"
	}
	return "http"
}
func (protoSelect) NeedsProtocol(netip.AddrPort) bool { return true }

// httpSnapshot is one listener on 127.0.0.1:0 (PROXY header required
// unless noHeader) with one HTTP chain over rt, and the given clusters.
func httpSnapshot(rt *model.RouteTable, noHeader bool, clusters ...*model.Cluster) *model.Snapshot {
	cm := map[string]*model.Cluster{}
	for _, c := range clusters {
		cm[c.Name] = c
	}
	return &model.Snapshot{
		Version: "test",
		Listeners: []*model.Listener{{
			Name: "main", Address: netip.MustParseAddrPort("127.0.0.1:0"),
			ProxyProtocol: !noHeader, HeaderTimeout: 2 * time.Second,
			Chains: map[string]*model.FilterChain{"http": {Name: "http", HTTP: &model.HTTPConnectionManager{
				Codec: "auto", Routes: rt, GenerateRequestID: true, ServerName: "istio-envoy",
				Filters: []model.HTTPFilter{{Name: "envoy.filters.http.fault"}, {Name: "envoy.filters.http.cors"}, {Name: "envoy.filters.http.router", Router: true}},
			}, Service: model.ServiceRef{Hostname: "svc.ns.svc.cluster.local", Name: "svc", Namespace: "ns"}}},
			Select: staticSelect("http"),
		}},
		Clusters: cm,
	}
}

// oneRoute is a table with one virtual host for every domain.
func oneRoute(routes ...*model.Route) *model.RouteTable {
	return &model.RouteTable{Name: "rt", VirtualHosts: []*model.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: routes}}}
}

// counted has its virtual hosts send x-envoy-attempt-count upstream
// (include_request_attempt_count), for tests that tell tries apart by it.
func counted(rt *model.RouteTable) *model.RouteTable {
	for _, vh := range rt.VirtualHosts {
		vh.AttemptCount = true
	}
	return rt
}

func fwd(cluster string) *model.Route {
	return &model.Route{Name: "to-" + cluster, Forward: &model.ForwardAction{Cluster: cluster}}
}

// dialer connects to the waypoint and writes a PROXY v2 header naming
// src and dst first (the kernel's job in production). An invalid src
// writes no header.
func dialer(waypoint netip.AddrPort, src, dst netip.AddrPort) func(ctx context.Context, _, _ string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", waypoint.String())
		if err != nil || !src.IsValid() {
			return c, err
		}
		h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(dst))
		if _, err := h.WriteTo(c); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

var (
	clientAddr = netip.MustParseAddrPort("10.0.0.9:40000")
	serviceVIP = netip.MustParseAddrPort("10.96.0.10:80")
)

// client is an HTTP/1.1 client through the waypoint with PROXY headers.
func client(waypoint netip.AddrPort) *http.Client {
	return &http.Client{
		Transport: &http.Transport{DialContext: dialer(waypoint, clientAddr, serviceVIP), DisableCompression: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
		Timeout: 20 * time.Second,
	}
}

// h2client speaks h2c prior knowledge through the waypoint.
func h2client(waypoint netip.AddrPort) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{DialContext: dialer(waypoint, clientAddr, serviceVIP), Protocols: &p}, Timeout: 20 * time.Second}
}

// get does a GET and returns the status, body and response.
func get(t *testing.T, c *http.Client, url string, hdr ...string) (int, string, *http.Response) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp
}

// eventually polls cond for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// newH2CServer is an h2c-only (prior knowledge) server on loopback.
func newH2CServer(t *testing.T, h http.HandlerFunc) netip.AddrPort {
	t.Helper()
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	s := httptest.NewUnstartedServer(h)
	s.Config.Protocols = &p
	s.Start()
	t.Cleanup(s.Close)
	return netip.MustParseAddrPort(s.Listener.Addr().String())
}

// metricsText is the engine's metrics in Prometheus' text format.
func metricsText(t *testing.T, te *testEngine) string {
	t.Helper()
	mfs, err := te.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// grep keeps the lines containing s.
func grep(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// closedByPeer: io.ReadAll ended because the waypoint closed: a FIN (no
// error) or, when the client's bytes were left unread, a reset.
func closedByPeer(err error) bool {
	return err == nil || strings.Contains(err.Error(), "connection reset")
}

// rawServer serves each connection to a new loopback listener with serve
// on a goroutine of its own, closing it when serve returns; the listener
// and its open connections close with the test (testbed.Serve).
func rawServer(t *testing.T, serve func(c net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testbed.Serve(t, ln, serve)
	return netip.MustParseAddrPort(ln.Addr().String())
}

// h2cFrames speaks just enough HTTP/2 on c for a test upstream: the
// preface and SETTINGS, then each HEADERS frame to onHeaders, until it
// says to stop or the connection ends.
func h2cFrames(c net.Conn, onHeaders func(fr *http2.Framer, f *http2.HeadersFrame) (more bool)) {
	br := bufio.NewReader(c)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(br, preface); err != nil {
		return
	}
	fr := http2.NewFramer(c, br)
	fr.WriteSettings()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			if !onHeaders(fr, f) {
				return
			}
		}
	}
}
