package telemetry

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kmesh-go/kmesh/bpf/layout"
)

type fakeResolver struct {
	peers map[netip.Addr]*Peer
	svcs  map[netip.Addr]*Service
	gen   uint64
}

func (f *fakeResolver) Peer(a netip.Addr) *Peer       { return f.peers[a] }
func (f *fakeResolver) Service(a netip.Addr) *Service { return f.svcs[a] }
func (f *fakeResolver) Generation() uint64            { return f.gen }

var (
	ipClient = netip.MustParseAddr("10.244.0.10")
	ipServer = netip.MustParseAddr("10.244.0.11")
	ipVIP    = netip.MustParseAddr("10.96.0.10")
	client   = &Peer{UID: "c", Workload: "sleep", Namespace: "demo", CanonicalService: "sleep", CanonicalRevision: "v1",
		Principal: "spiffe://cluster.local/ns/demo/sa/sleep", Cluster: "Kubernetes"}
	server = &Peer{UID: "s", Workload: "echo-v2", Namespace: "demo", CanonicalService: "echo",
		Principal: "spiffe://cluster.local/ns/demo/sa/echo", Cluster: "Kubernetes"}
	echoSvc = &Service{Hostname: "echo.demo.svc.cluster.local", Name: "echo", Namespace: "demo"}
)

func labelMap(values []string) map[string]string {
	m := map[string]string{}
	for i, n := range istioLabels {
		m[n] = values[i]
	}
	return m
}

func TestLabelValuesFollowIstio(t *testing.T) {
	got := labelMap(labelValues(ReporterSource, client, server, echoSvc, noFlags))
	want := map[string]string{
		"reporter":                       "source",
		"source_workload":                "sleep",
		"source_canonical_service":       "sleep",
		"source_canonical_revision":      "v1",
		"source_workload_namespace":      "demo",
		"source_principal":               "spiffe://cluster.local/ns/demo/sa/sleep",
		"source_app":                     "sleep",
		"source_version":                 "v1",
		"source_cluster":                 "Kubernetes",
		"destination_service":            "echo.demo.svc.cluster.local",
		"destination_service_namespace":  "demo",
		"destination_service_name":       "echo",
		"destination_workload":           "echo-v2",
		"destination_canonical_service":  "echo",
		"destination_canonical_revision": "latest",
		"destination_workload_namespace": "demo",
		"destination_principal":          "spiffe://cluster.local/ns/demo/sa/echo",
		"destination_app":                "echo",
		"destination_version":            "latest",
		"destination_cluster":            "Kubernetes",
		"request_protocol":               "tcp",
		"response_flags":                 "-",
		"connection_security_policy":     "unknown",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("source labels\n got %v\nwant %v", got, want)
	}

	// The destination reports plaintext as "none"; unknown ends and
	// services read "unknown".
	got = labelMap(labelValues(ReporterDestination, nil, server, nil, "DC"))
	for name, v := range map[string]string{
		"reporter": "destination", "source_workload": "unknown", "source_principal": "unknown",
		"source_canonical_revision": "unknown", "destination_service": "unknown",
		"destination_service_name": "unknown", "destination_workload": "echo-v2",
		"response_flags": "DC", "connection_security_policy": "none",
	} {
		if got[name] != v {
			t.Errorf("%s = %q, want %q", name, got[name], v)
		}
	}
	if len(istioLabels) != 23 {
		t.Errorf("%d labels", len(istioLabels))
	}
}

func TestResponseFlags(t *testing.T) {
	for _, c := range []struct {
		r    Reporter
		end  layout.ConnEnd
		want string
	}{
		{ReporterSource, layout.EndFin, "-"},
		{ReporterDestination, layout.EndFin, "-"},
		{ReporterSource, layout.EndReset, "UC"},
		{ReporterSource, layout.EndTimeout, "UC"},
		{ReporterDestination, layout.EndReset, "DC"},
		{ReporterDestination, layout.EndAbort, "DC"},
	} {
		if got := responseFlags(c.r, c.end); got != c.want {
			t.Errorf("%s %d: %q, want %q", c.r, c.end, got, c.want)
		}
	}
}

// Past the cap, new label sets are counted under the overflow set; existing
// sets keep counting as before; the number of series stays bounded.
func TestSeriesCapAndOverflow(t *testing.T) {
	m := newIstioMetrics()
	s := newSeriesSet(m, 3)
	peer := func(i int) *Peer { return &Peer{Workload: fmt.Sprintf("w%d", i), Namespace: "ns"} }
	for i := range 10 {
		s.get(labelValues(ReporterSource, peer(i), server, echoSvc, noFlags)).opened.Inc()
	}
	s.get(labelValues(ReporterSource, peer(0), server, echoSvc, noFlags)).opened.Inc()
	s.get(labelValues(ReporterDestination, peer(42), server, echoSvc, noFlags)).opened.Inc()
	s.get(labelValues(ReporterDestination, peer(43), server, echoSvc, "DC")).opened.Inc()

	if got := testutil.CollectAndCount(m.opened); got != 3+3 {
		t.Fatalf("%d series, want 3 kept + 3 overflow sets", got)
	}
	if s.size() != 6 {
		t.Errorf("size %d", s.size())
	}
	if v := testutil.ToFloat64(m.opened.WithLabelValues(labelValues(ReporterSource, peer(0), server, echoSvc, noFlags)...)); v != 2 {
		t.Errorf("first set counted %v, want 2", v)
	}
	if v := testutil.ToFloat64(m.opened.WithLabelValues(overflowValues(ReporterSource, noFlags)...)); v != 7 {
		t.Errorf("source overflow counted %v, want 7", v)
	}
	ov := labelMap(overflowValues(ReporterDestination, "DC"))
	if ov["reporter"] != "destination" || ov["source_workload"] != "overflow" || ov["response_flags"] != "DC" || ov["request_protocol"] != "tcp" {
		t.Errorf("overflow labels %v", ov)
	}
}

func newTestTelemetry(t *testing.T, max int, log *bytes.Buffer) (*Telemetry, *fakeResolver) {
	t.Helper()
	r := &fakeResolver{
		peers: map[netip.Addr]*Peer{ipClient: client, ipServer: server},
		svcs:  map[netip.Addr]*Service{ipVIP: echoSvc},
	}
	cfg := Config{Resolver: r, MaxSeries: max}
	if log != nil {
		cfg.AccessLog = log
	}
	tel := New(cfg)
	if err := tel.Register(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	return tel, r
}

// ev builds a record of the client end (or, with server, the server end)
// of one connection from ipClient:40000 to ipServer:8080 dialled as the VIP,
// as the kernel writes them.
func ev(cookie uint64, typ layout.EventType, server bool, sent, recv uint64, now uint64) *layout.ConnEvent {
	e := &layout.ConnEvent{Type: typ, BytesSent: sent, BytesReceived: recv, NowNs: now}
	c := &e.Conn
	c.Cookie, c.StartNs = cookie, 1_000_000_000
	c.Local, c.Remote = layout.AddrFrom(ipClient), layout.AddrFrom(ipServer)
	c.LocalPort, c.RemotePort = 40000, 8080
	c.Role = layout.RoleClient
	if server {
		c.Local, c.Remote = c.Remote, c.Local
		c.LocalPort, c.RemotePort = c.RemotePort, c.LocalPort
		c.Role = layout.RoleServer
	}
	c.Flags = layout.ConnTelemetry
	if !server {
		// Only the client end knows what it dialled (see pairOrigin).
		c.Orig, c.OrigPort = layout.AddrFrom(ipVIP), 80
		c.Flags |= layout.ConnRewritten
	}
	if typ == layout.EvClose {
		e.End = layout.EndFin
		e.SRTTUs = 50
	}
	return e
}

func value(c *prometheus.CounterVec, r Reporter, flags string) float64 {
	return testutil.ToFloat64(c.WithLabelValues(labelValues(r, client, server, echoSvc, flags)...))
}

func TestAccountingFromRecords(t *testing.T) {
	var log bytes.Buffer
	tel, _ := newTestTelemetry(t, 100, &log)
	m := tel.istio

	// Client end: open, two snapshots with growing totals, close.
	tel.handle(ev(1, layout.EvOpen, false, 0, 0, 1_000_000_000))
	tel.handle(ev(1, layout.EvSnapshot, false, 100, 1000, 2_000_000_000))
	tel.handle(ev(1, layout.EvSnapshot, false, 150, 1000, 3_000_000_000))
	// A stale snapshot (read before the one above) changes nothing.
	tel.handle(ev(1, layout.EvSnapshot, false, 120, 900, 2_500_000_000))
	if v := value(m.received, ReporterSource, noFlags); v != 150 {
		t.Errorf("request bytes so far %v, want 150", v)
	}
	// Server end of the same connection: its open event was lost; the
	// close alone accounts it (and learns the service from the client's
	// record). Its sent bytes are the response.
	tel.handle(ev(2, layout.EvClose, true, 5000, 200, 4_000_000_000))

	// A sweep is under way when the client closes: a snapshot taken
	// before the close but read after it is ignored.
	tel.startSweep()
	tel.handle(ev(1, layout.EvClose, false, 200, 5000, 4_000_000_000))
	tel.handle(ev(1, layout.EvSnapshot, false, 180, 4000, 3_900_000_000))
	tel.endSweep(map[uint64]bool{}, 3_800_000_000)

	for _, r := range []Reporter{ReporterSource, ReporterDestination} {
		if v := value(m.opened, r, noFlags); v != 1 {
			t.Errorf("%s opened %v", r, v)
		}
		if v := value(m.closed, r, noFlags); v != 1 {
			t.Errorf("%s closed %v", r, v)
		}
		if v := value(m.received, r, noFlags); v != 200 {
			t.Errorf("%s received (request) bytes %v, want 200", r, v)
		}
		if v := value(m.sent, r, noFlags); v != 5000 {
			t.Errorf("%s sent (response) bytes %v, want 5000", r, v)
		}
	}
	if len(tel.conns) != 0 {
		t.Errorf("%d connections still tracked", len(tel.conns))
	}

	// One access log line per closed end.
	tel.flush()
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("access log:\n%s", log.String())
	}
	// The server end closed first.
	var e Entry
	if err := json.Unmarshal([]byte(lines[1]), &e); err != nil {
		t.Fatal(err)
	}
	if e.Reporter != ReporterSource || e.Source.Workload != "sleep" || e.Destination.Workload != "echo-v2" ||
		e.Source.Address != "10.244.0.10:40000" || e.Destination.Address != "10.244.0.11:8080" ||
		e.Dialled != "10.96.0.10:80" || e.Service != "echo.demo.svc.cluster.local" ||
		e.RequestBytes != 200 || e.ResponseBytes != 5000 || e.DurationMs != 3000 || e.Result != "closed" ||
		e.ResponseFlags != "-" || e.RTTMicros != 50 {
		t.Errorf("access log line %s", lines[1])
	}
	if err := json.Unmarshal([]byte(lines[0]), &e); err != nil {
		t.Fatal(err)
	}
	if e.Reporter != ReporterDestination || e.Source.Address != "10.244.0.10:40000" || e.RequestBytes != 200 ||
		e.Service != "echo.demo.svc.cluster.local" {
		t.Errorf("server access log line %s", lines[0])
	}
}

func TestAbnormalEndAndLostClose(t *testing.T) {
	tel, _ := newTestTelemetry(t, 100, nil)
	m := tel.istio

	tel.handle(ev(1, layout.EvOpen, false, 0, 0, 1_000_000_000))
	cl := ev(1, layout.EvClose, false, 10, 0, 2_000_000_000)
	cl.End = layout.EndReset
	tel.handle(cl)
	if v := value(m.closed, ReporterSource, "UC"); v != 1 {
		t.Errorf("reset close counted %v under UC", v)
	}
	if v := value(m.opened, ReporterSource, noFlags); v != 1 {
		t.Errorf("opened %v", v)
	}
	if v := value(m.received, ReporterSource, "UC"); v != 10 {
		t.Errorf("final bytes %v under UC", v)
	}

	// A connection whose close event was lost: two sweeps without it
	// close it with what was last known.
	tel.handle(ev(3, layout.EvOpen, false, 0, 0, 5_000_000_000))
	tel.handle(ev(3, layout.EvSnapshot, false, 7, 9, 6_000_000_000))
	tel.endSweep(map[uint64]bool{}, 7_000_000_000)
	if len(tel.conns) != 1 {
		t.Fatal("dropped after one sweep")
	}
	tel.endSweep(map[uint64]bool{}, 8_000_000_000)
	if len(tel.conns) != 0 {
		t.Fatal("kept after two sweeps without it")
	}
	if v := value(m.closed, ReporterSource, noFlags); v != 1 {
		t.Errorf("lost close counted %v", v)
	}
	// Its late close event changes nothing.
	tel.handle(ev(3, layout.EvClose, false, 7, 9, 6_500_000_000))
	if v := value(m.closed, ReporterSource, noFlags); v != 1 {
		t.Errorf("late close counted again: %v", v)
	}
}

// However many workloads talk, the Istio metrics never hold more than the
// cap plus the overflow sets.
func TestCardinalityBoundUnderChurn(t *testing.T) {
	tel, r := newTestTelemetry(t, 50, nil)
	for i := range 1000 {
		ip := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		r.peers[ip] = &Peer{Workload: fmt.Sprintf("w%d", i), Namespace: "ns"}
		r.gen++
		e := ev(uint64(100+i), layout.EvClose, false, 1, 1, 2_000_000_000)
		e.Conn.Local = layout.AddrFrom(ip)
		if i%3 == 0 {
			e.End = layout.EndReset
		}
		tel.handle(e)
	}
	for _, c := range []*prometheus.CounterVec{tel.istio.opened, tel.istio.closed, tel.istio.sent, tel.istio.received} {
		if n := testutil.CollectAndCount(c); n > 50+4 {
			t.Errorf("%d series", n)
		}
	}
	var total float64
	ch := make(chan prometheus.Metric, 100)
	go func() { tel.istio.closed.Collect(ch); close(ch) }()
	for m := range ch {
		total += testutil.ToFloat64(m.(prometheus.Collector))
	}
	if total != 1000 {
		t.Errorf("closed adds up to %v, want 1000", total)
	}
}

func TestDecodeMatchesLayout(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 100 {
		var in layout.ConnEvent
		b := make([]byte, recordSize)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if err := binary.Read(bytes.NewReader(b), binary.LittleEndian, &in); err != nil {
			t.Fatal(err)
		}
		var out layout.ConnEvent
		if err := decode(b, &out); err != nil {
			t.Fatal(err)
		}
		if in != out {
			t.Fatalf("decode differs from the layout:\n%+v\n%+v", in, out)
		}
	}
	if n := binary.Size(layout.ConnEvent{}); n != recordSize {
		t.Fatalf("layout.ConnEvent is %d bytes, recordSize %d", n, recordSize)
	}
}

// One connection's four records (open and close of both ends), as the
// reader sees them: the per-connection cost of the accounting.
func BenchmarkHandleConnection(b *testing.B) {
	tel, _ := newTestTelemetry(&testing.T{}, 100, nil)
	recs := []*layout.ConnEvent{
		ev(0, layout.EvOpen, false, 0, 0, 1_000_000_000),
		ev(0, layout.EvOpen, true, 0, 0, 1_000_000_000),
		ev(0, layout.EvClose, false, 100, 1000, 2_000_000_000),
		ev(0, layout.EvClose, true, 1000, 100, 2_000_000_000),
	}
	buf := make([][]byte, len(recs))
	for i, r := range recs {
		var bb bytes.Buffer
		_ = binary.Write(&bb, binary.LittleEndian, r)
		buf[i] = bb.Bytes()
	}
	var e layout.ConnEvent
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		for j, raw := range buf {
			_ = decode(raw, &e)
			e.Conn.Cookie = uint64(2*i + j%2 + 1)
			tel.mu.Lock()
			tel.handle(&e)
			tel.mu.Unlock()
		}
	}
}

// The server end learns what its client dialled from the client's record;
// a client whose server never shows up (not enrolled, another node) leaves
// nothing waiting once it closes, and a tuple used again by a newer
// client is not taken from it by the older one's close.
func TestServerEndLearnsWhatTheClientDialled(t *testing.T) {
	tel, _ := newTestTelemetry(t, 100, nil)
	m := tel.istio
	withService := func() float64 { return value(m.closed, ReporterDestination, noFlags) }
	without := func() float64 {
		return testutil.ToFloat64(m.closed.WithLabelValues(labelValues(ReporterDestination, client, server, nil, noFlags)...))
	}
	left := func(when string) {
		t.Helper()
		if len(tel.dialled) != 0 || len(tel.waiting) != 0 || len(tel.waitingCookie) != 0 {
			t.Errorf("%s: %d dialled, %d waiting (%d cookies) left", when, len(tel.dialled), len(tel.waiting), len(tel.waitingCookie))
		}
	}

	// Both ends seen open (a sweep reads clients first).
	tel.handle(ev(1, layout.EvSnapshot, false, 0, 0, 1_000_000_000))
	tel.handle(ev(2, layout.EvSnapshot, true, 0, 0, 1_000_000_000))
	if n := len(tel.dialled); n != 0 {
		t.Errorf("%d dialled services waiting after the server end took its own", n)
	}
	tel.handle(ev(2, layout.EvClose, true, 10, 20, 2_000_000_000))
	tel.handle(ev(1, layout.EvClose, false, 20, 10, 2_000_000_000))
	if v := withService(); v != 1 {
		t.Errorf("destination reports with the service: %v, want 1", v)
	}
	left("both seen open")

	// Only closes, the server's first (it closed first): it waits for
	// the client's record, which comes right behind.
	tel.handle(ev(3, layout.EvClose, true, 10, 20, 3_000_000_000))
	if len(tel.waiting) != 1 || withService() != 1 {
		t.Fatalf("server end not held: %d waiting", len(tel.waiting))
	}
	tel.handle(ev(4, layout.EvClose, false, 20, 10, 3_000_100_000))
	if v := withService(); v != 2 {
		t.Errorf("destination reports with the service: %v, want 2", v)
	}
	tel.expirePairs(3_000_200_000)
	left("server closed first")

	// The client's close first: its entry outlives it for the server end.
	tel.handle(ev(5, layout.EvClose, false, 20, 10, 4_000_000_000))
	tel.expirePairs(4_000_000_000 + pairWait/2)
	tel.handle(ev(6, layout.EvClose, true, 10, 20, 4_000_100_000))
	if v := withService(); v != 3 {
		t.Errorf("destination reports with the service: %v, want 3", v)
	}
	left("client closed first")

	// No server end here: the client's entry goes pairWait after its close.
	tel.handle(ev(7, layout.EvClose, false, 0, 0, 5_000_000_000))
	if n := len(tel.dialled); n != 1 {
		t.Fatalf("%d dialled services kept after the client closed, want 1", n)
	}
	tel.expirePairs(5_000_000_000 + pairWait - 1)
	if n := len(tel.dialled); n != 1 {
		t.Fatalf("%d dialled services before pairWait, want 1", n)
	}
	tel.expirePairs(5_000_000_000 + pairWait)
	left("no server end")

	// The same tuple again: the newer client's entry survives the older
	// one's close, and its server end still gets it.
	tel.handle(ev(8, layout.EvSnapshot, false, 0, 0, 6_000_000_000))
	tel.handle(ev(9, layout.EvSnapshot, false, 0, 0, 6_100_000_000))
	tel.handle(ev(8, layout.EvClose, false, 0, 0, 6_200_000_000))
	tel.expirePairs(6_200_000_000 + pairWait)
	tel.handle(ev(10, layout.EvClose, true, 0, 0, 7_000_000_000))
	if v := withService(); v != 4 {
		t.Errorf("destination reports with the service: %v, want 4", v)
	}
	tel.handle(ev(9, layout.EvClose, false, 0, 0, 7_000_000_000))
	tel.expirePairs(8_000_000_000)
	left("tuple reused")

	// A server end whose client is not on this node (or dialled the pod
	// itself) has no service: it is accounted once the wait is over, and
	// not before.
	tel.handle(ev(11, layout.EvClose, true, 0, 0, 9_000_000_000))
	tel.expirePairs(9_000_000_000 + pairWait - 1)
	if v := without(); v != 0 {
		t.Errorf("accounted before the wait was over")
	}
	// A snapshot taken before that close, read now, changes nothing.
	tel.handle(ev(11, layout.EvSnapshot, true, 0, 0, 8_900_000_000))
	tel.expirePairs(9_000_000_000 + pairWait)
	if v := without(); v != 1 {
		t.Errorf("destination reports without a service: %v, want 1", v)
	}
	if v := testutil.ToFloat64(m.opened.WithLabelValues(labelValues(ReporterDestination, client, server, nil, noFlags)...)); v != 1 {
		t.Errorf("destination opened without a service: %v, want 1", v)
	}
	left("no client here")
	if len(tel.conns) != 0 {
		t.Errorf("%d connections still tracked", len(tel.conns))
	}
	// Each record is counted once as read, waiting or not.
	if v := testutil.ToFloat64(tel.events.WithLabelValues("close")); v != 11 {
		t.Errorf("close records counted %v, want 11", v)
	}
}

// Many server ends whose clients are elsewhere, and many clients whose
// servers are: each waits its time and goes, in order, and the queues
// give their memory back.
func TestPairingWaitsAreBounded(t *testing.T) {
	tel, _ := newTestTelemetry(t, 100, nil)
	const n = 3000
	for i := range n {
		e := ev(uint64(10+i), layout.EvClose, true, 0, 0, uint64(1_000_000_000+i*1000))
		e.Conn.RemotePort = uint16(10000 + i) // each from its own client port
		tel.handle(e)
		c := ev(uint64(100000+i), layout.EvClose, false, 0, 0, uint64(1_000_000_000+i*1000))
		c.Conn.LocalPort = uint16(40000 + i%20000)
		tel.handle(c)
	}
	if tel.waitQ.len() != n || len(tel.waiting) != n || tel.closedQ.len() != n || len(tel.dialled) != n {
		t.Fatalf("waiting %d/%d, dialled %d/%d, want %d each", tel.waitQ.len(), len(tel.waiting), tel.closedQ.len(), len(tel.dialled), n)
	}
	// Half of them are due.
	tel.expirePairs(1_000_000_000 + n/2*1000 + pairWait - 1)
	if got := len(tel.waiting); got != n/2 {
		t.Errorf("%d server ends still waiting, want %d", got, n/2)
	}
	if got := len(tel.dialled); got != n/2 {
		t.Errorf("%d dialled entries left, want %d", got, n/2)
	}
	tel.expirePairs(1_000_000_000 + n*1000 + pairWait)
	if len(tel.waiting) != 0 || len(tel.waitingCookie) != 0 || len(tel.dialled) != 0 {
		t.Errorf("left: %d waiting, %d cookies, %d dialled", len(tel.waiting), len(tel.waitingCookie), len(tel.dialled))
	}
	if tel.waitQ.len() != 0 || len(tel.waitQ.q) != 0 || tel.closedQ.len() != 0 || len(tel.closedQ.q) != 0 {
		t.Errorf("queues not emptied: %d (%d held), %d (%d held)", tel.waitQ.len(), len(tel.waitQ.q), tel.closedQ.len(), len(tel.closedQ.q))
	}
	// Every server end was accounted, without a service.
	if v := testutil.ToFloat64(tel.istio.closed.WithLabelValues(labelValues(ReporterDestination, client, server, nil, noFlags)...)); v != n {
		t.Errorf("destination closes without a service %v, want %d", v, n)
	}
}

func TestFifoCompacts(t *testing.T) {
	var f fifo
	for i := range 5000 {
		f.push(due{cookie: uint64(i)})
	}
	for i := range 4000 {
		d, ok := f.front()
		if !ok || d.cookie != uint64(i) {
			t.Fatalf("front %v %v, want %d", d, ok, i)
		}
		f.pop()
	}
	if f.len() != 1000 || len(f.q) > 2500 {
		t.Errorf("len %d, holding %d", f.len(), len(f.q))
	}
	for range 1000 {
		f.pop()
	}
	if _, ok := f.front(); ok || f.len() != 0 {
		t.Error("not empty")
	}
}

// With LocalPod known, a client whose server is not a pod here files
// nothing for pairing, and a server end whose client is not a pod here is
// accounted at once instead of waiting.
func TestPairingOnlyForPodsOnThisNode(t *testing.T) {
	tel, _ := newTestTelemetry(t, 100, nil)
	local := map[netip.Addr]bool{}
	tel.cfg.LocalPod = func(a netip.Addr) bool { return local[a] }
	without := func() float64 {
		return testutil.ToFloat64(tel.istio.closed.WithLabelValues(labelValues(ReporterDestination, client, server, nil, noFlags)...))
	}

	tel.handle(ev(1, layout.EvClose, false, 20, 10, 1_000_000_000))
	if n := len(tel.dialled); n != 0 {
		t.Errorf("%d dialled entries for a client whose server is elsewhere", n)
	}
	tel.handle(ev(2, layout.EvClose, true, 10, 20, 1_000_000_000))
	if n := len(tel.waiting); n != 0 || without() != 1 {
		t.Errorf("a server end whose client is elsewhere: %d waiting, %v accounted, want 0 and 1", n, without())
	}

	// Both pods here: pairing as usual.
	local[ipClient], local[ipServer] = true, true
	tel.handle(ev(3, layout.EvClose, false, 20, 10, 2_000_000_000))
	tel.handle(ev(4, layout.EvClose, true, 10, 20, 2_000_100_000))
	if v := value(tel.istio.closed, ReporterDestination, noFlags); v != 1 {
		t.Errorf("destination reports with the service: %v, want 1", v)
	}
	if len(tel.dialled) != 0 || len(tel.waiting) != 0 {
		t.Errorf("left: %d dialled, %d waiting", len(tel.dialled), len(tel.waiting))
	}
}
