package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

func outlierCluster(o *model.OutlierDetection, eps ...netip.AddrPort) *model.Cluster {
	return &model.Cluster{Name: "c", Outlier: o, Endpoints: endpoints(eps...)}
}

func fastOutlier(n uint32) *model.OutlierDetection {
	return &model.OutlierDetection{Consecutive5xx: n, EnforcingConsecutive5xx: 100, ConsecutiveGatewayFailure: 5,
		ConsecutiveLocalOriginFailure: 5, EnforcingConsecutiveLocalOriginFailure: 100,
		Interval: time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: time.Minute, MaxEjectionPercent: 50}
}

// A DestinationRule's outlierDetection through the engine: an endpoint
// that answers 503 is ejected after its consecutive errors and takes no
// more requests; its healthy peer takes them all.
func TestOutlierDetectionEjectsFailingEndpoint(t *testing.T) {
	good := backend(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "good") })
	bad := backend(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, outlierCluster(fastOutlier(3), good, bad)))
	c := client(te.addr("main"))
	fails := 0
	for range 10 {
		if code, _, _ := get(t, c, "http://x/"); code != 200 {
			fails++
		}
	}
	if fails != 3 {
		t.Errorf("%d of the first 10 requests failed, want 3 (round robin until the third 503 ejects it)", fails)
	}
	for i := range 20 {
		if code, body, _ := get(t, c, "http://x/"); code != 200 || body != "good" {
			t.Fatalf("request %d after the ejection: %d %q", i, code, body)
		}
	}
	if st := te.ClusterStats()["c"]; st.Ejected != 1 || st.Ejections != 1 {
		t.Errorf("cluster stats %+v", st)
	}
}

// Connect failures count as 503s (Envoy's router without
// split_external_local_origin_errors): an endpoint nobody listens on is
// ejected too.
func TestOutlierDetectionEjectsUnreachableEndpoint(t *testing.T) {
	good := backend(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "good") })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, outlierCluster(fastOutlier(2), good, dead)))
	c := client(te.addr("main"))
	for range 6 {
		get(t, c, "http://x/")
	}
	for i := range 10 {
		if code, body, _ := get(t, c, "http://x/"); code != 200 || body != "good" {
			t.Fatalf("request %d after the ejection: %d %q", i, code, body)
		}
	}
	if !strings.Contains(te.access.String(), `"response_flags":"UF"`) {
		t.Errorf("no connect failure logged before the ejection")
	}
}

// gRPC: a trailers-only answer's grpc-status counts as the HTTP status
// it maps to (UNAVAILABLE is a 503), though the HTTP status is 200.
func TestOutlierDetectionReadsGRPCStatus(t *testing.T) {
	good := backend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Grpc-Status", "0")
	})
	bad := backend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Grpc-Status", "14")
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, outlierCluster(fastOutlier(2), good, bad)))
	c := client(te.addr("main"))
	for range 6 {
		get(t, c, "http://x/", "Content-Type", "application/grpc")
	}
	for i := range 10 {
		if _, _, resp := get(t, c, "http://x/", "Content-Type", "application/grpc"); resp.Header.Get("Grpc-Status") != "0" {
			t.Fatalf("request %d after the ejection: grpc-status %q", i, resp.Header.Get("Grpc-Status"))
		}
	}
}

// With split_external_local_origin_errors, a try whose connection is
// ready clears the endpoint's local-origin count, as Envoy's upstream
// request reports a connect success on pool ready: an endpoint that
// takes each connection and then drops the request fails once in a row
// each time (Envoy counts such resets as local-origin failures only),
// and is not ejected by consecutive_local_origin_failure.
func TestOutlierSplitLocalOriginCountsFromTheConnection(t *testing.T) {
	good := backend(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "good") })
	// Takes the connection, reads the request, closes without an answer.
	drop := rawServer(t, func(c net.Conn) { c.Read(make([]byte, 4096)) })
	o := fastOutlier(5)
	o.SplitLocalOrigin, o.ConsecutiveLocalOriginFailure = true, 2
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, outlierCluster(o, good, drop)))
	c := client(te.addr("main"))
	fails := 0
	for range 8 {
		if code, _, _ := get(t, c, "http://x/"); code != 200 {
			fails++
		}
	}
	if st := te.ClusterStats()["c"]; st.Ejections != 0 || fails != 4 {
		t.Errorf("%d of 8 requests failed, ejections %d: want 4 and none (each connection made clears the count)", fails, st.Ejections)
	}
}

// stuckEndpoint is a loopback address whose connects hang: a listener
// with a backlog of 0 whose one queued connection is never accepted, so
// the kernel drops further SYNs. Skips the test where they do not hang.
func stuckEndpoint(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(netip.AddrFrom4(sa.(*syscall.SockaddrInet4).Addr), uint16(sa.(*syscall.SockaddrInet4).Port))
	filler, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	if c, err := net.DialTimeout("tcp", addr.String(), 200*time.Millisecond); err == nil {
		c.Close()
		t.Skip("a full accept queue does not hold connects here")
	}
	return addr
}

// Envoy's router reports a route timeout to outlier detection only for a
// try that has its host, which it learns when its pool is ready: a try
// still connecting when the route timeout fires counts against nobody.
func TestOutlierRouteTimeoutWhileConnectingNotCounted(t *testing.T) {
	good := backend(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "good") })
	stuck := stuckEndpoint(t)
	cl := outlierCluster(fastOutlier(1), good, stuck)
	cl.ConnectTimeout = 5 * time.Second
	r := fwd("c")
	r.Forward.Timeout = 200 * time.Millisecond
	rt := oneRoute(r)
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(rt, false, cl))
	c := client(te.addr("main"))
	codes := map[int]int{}
	for range 2 {
		code, _, _ := get(t, c, "http://x/")
		codes[code]++
	}
	if codes[200] != 1 || codes[504] != 1 {
		t.Fatalf("answers %v, want one 200 and one 504 (the route timeout while connecting)", codes)
	}
	if st := te.ClusterStats()["c"]; st.Ejections != 0 {
		t.Errorf("the endpoint still connecting at the route timeout was ejected: %+v", st)
	}
}

// A reset after the answer started is reported as Envoy's onUpstreamReset
// does, whatever came before: an endpoint that answers 503 and breaks off
// its body has failed twice in a row (the 503, then the reset, a
// connect failure to the detector) and is ejected at two consecutive 5xx.
func TestOutlierResetAfterAnswerCounted(t *testing.T) {
	good := backend(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "good") })
	cut := rawServer(t, func(c net.Conn) {
		c.Read(make([]byte, 4096))
		io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100\r\n\r\npartial")
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, outlierCluster(fastOutlier(2), good, cut)))
	c := client(te.addr("main"))
	for range 10 {
		// The client's transport retries a request whose kept connection
		// broke on another one: errors are not counted here, the access
		// log's lines are.
		if resp, err := c.Get("http://x/"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	if n := strings.Count(te.access.String(), `"response_flags":"UC"`); n != 1 {
		t.Errorf("%d requests reached the endpoint that breaks off its answer, want 1 (ejected by its 503 and reset)", n)
	}
}
