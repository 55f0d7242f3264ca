package proxy

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

func retryOn(n int, on ...string) *model.RetryPolicy {
	m := map[string]bool{}
	for _, o := range on {
		m[o] = true
	}
	return &model.RetryPolicy{On: m, NumRetries: n, BackoffBase: time.Millisecond}
}

func retryRoute(cluster string, p *model.RetryPolicy) *model.Route {
	r := fwd(cluster)
	r.Forward.Retry = p
	return r
}

func TestRetryHalfFailingBackendNoClientErrors(t *testing.T) {
	var calls atomic.Int64
	var attempts sync.Map
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		attempts.Store(r.Header.Get("X-Envoy-Attempt-Count"), true)
		if n%2 == 1 {
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, "ok")
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(counted(oneRoute(retryRoute("c", retryOn(3, "5xx")))), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	c := client(te.addr("main"))
	for i := range 200 {
		if code, body, _ := get(t, c, "http://x/"); code != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	if te.Stats().Retries != 200 {
		t.Errorf("%d retries, want 200 (every request's first attempt failed)", te.Stats().Retries)
	}
	if _, ok := attempts.Load("2"); !ok {
		t.Error("no upstream request carried x-envoy-attempt-count 2")
	}
}

func TestRetryWithoutPolicyOrCondition(t *testing.T) {
	var calls atomic.Int64
	be := backend(t, func(w http.ResponseWriter, r *http.Request) { calls.Add(1); w.WriteHeader(503) })
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(
		&model.Route{Name: "none", Match: model.RouteMatch{Prefix: "/none"}, Forward: &model.ForwardAction{Cluster: "c"}},
		retryRoute("c", retryOn(3, "connect-failure", "gateway-error-not")),
	), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	c := client(te.addr("main"))
	for _, path := range []string{"/none", "/other"} {
		calls.Store(0)
		if code, _, _ := get(t, c, "http://x"+path); code != 503 || calls.Load() != 1 {
			t.Errorf("%s: %d after %d attempts, want 503 after 1", path, code, calls.Load())
		}
	}
}

func TestRetriesExhaustedURX(t *testing.T) {
	var calls atomic.Int64
	be := backend(t, func(w http.ResponseWriter, r *http.Request) { calls.Add(1); w.WriteHeader(502) })
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(retryRoute("c", retryOn(2, "gateway-error"))), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	if code, _, _ := get(t, client(te.addr("main")), "http://x/"); code != 502 || calls.Load() != 3 {
		t.Errorf("got %d after %d attempts, want the upstream's 502 after 3", code, calls.Load())
	}
	if !strings.Contains(te.access.String(), `"response_code":502,"response_flags":"URX"`) {
		t.Errorf("access log: %s", te.access.String())
	}
}

func TestRetriableStatusCodes(t *testing.T) {
	var calls atomic.Int64
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.WriteHeader(418)
			return
		}
		io.WriteString(w, "ok")
	})
	p := retryOn(1, "retriable-status-codes")
	p.RetriableStatusCodes = []int{418}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(retryRoute("c", p)), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	if code, _, _ := get(t, client(te.addr("main")), "http://x/"); code != 200 || calls.Load() != 2 {
		t.Errorf("got %d after %d attempts", code, calls.Load())
	}
}

func TestRetryGRPCStatusInHeaders(t *testing.T) {
	var calls atomic.Int64
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		if calls.Add(1) == 1 {
			// Trailers-only: the status in the headers.
			w.Header().Set("Grpc-Status", "14")
			w.WriteHeader(200)
			return
		}
		w.Header().Set("Grpc-Status", "0")
		w.WriteHeader(200)
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(retryRoute("c", retryOn(2, "unavailable"))), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	code, _, resp := get(t, client(te.addr("main")), "http://x/pkg.Svc/M", "Content-Type", "application/grpc")
	if code != 200 || resp.Header.Get("Grpc-Status") != "0" || calls.Load() != 2 {
		t.Errorf("got %d grpc-status %q after %d attempts", code, resp.Header.Get("Grpc-Status"), calls.Load())
	}
	if !strings.Contains(te.access.String(), `"response_code":200`) {
		t.Errorf("access log: %s", te.access.String())
	}
}

func TestPerTryTimeout(t *testing.T) {
	var calls atomic.Int64
	var hang atomic.Bool
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 || hang.Load() {
			select {
			case <-time.After(3 * time.Second):
			case <-r.Context().Done():
			}
			return
		}
		io.WriteString(w, "second")
	})
	p := retryOn(1, "5xx")
	p.PerTryTimeout = 100 * time.Millisecond
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(retryRoute("c", p)), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	start := time.Now()
	if code, body, _ := get(t, client(te.addr("main")), "http://x/"); code != 200 || body != "second" {
		t.Errorf("got %d %q", code, body)
	}
	if d := time.Since(start); d < 90*time.Millisecond || d > 2*time.Second {
		t.Errorf("answered after %v, want just over the 100 ms per-try timeout", d)
	}
	// Every try times out: 504 UT, retries exhausted.
	hang.Store(true)
	if code, _, _ := get(t, client(te.addr("main")), "http://x/"); code != 504 {
		t.Errorf("all tries timing out: %d", code)
	}
	if !strings.Contains(te.access.String(), `"response_code":504,"response_flags":"UT,URX"`) {
		t.Errorf("access log: %s", te.access.String())
	}
}

func TestRetryConnectFailureOnAnotherHost(t *testing.T) {
	live := backend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "live") })
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := mustAddrPort(ln.Addr().String())
	ln.Close()
	p := retryOn(1, "connect-failure")
	// Random picks: the retry avoids the host that failed by picking
	// again, up to 50 times (a repeat of the dead one 50 times is 2^-50).
	p.PreviousHosts, p.HostSelectionAttempts = true, 50
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(retryRoute("c", p)), false, &model.Cluster{Name: "c", LB: "random", Endpoints: endpoints(dead, live)}))
	c := client(te.addr("main"))
	for i := range 50 {
		if code, body, _ := get(t, c, "http://x/"); code != 200 || body != "live" {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
}

func TestRetryReplaysBody(t *testing.T) {
	var calls atomic.Int64
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if calls.Add(1) == 1 {
			w.WriteHeader(503)
			return
		}
		w.Write(b)
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(retryRoute("c", retryOn(1, "5xx"))), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	body := strings.Repeat("0123456789", 1000)
	resp, err := client(te.addr("main")).Post("http://x/", "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(got) != body || calls.Load() != 2 {
		t.Errorf("got %d, %d bytes back after %d attempts", resp.StatusCode, len(got), calls.Load())
	}
}

func TestNoRetryOfBodyBeyondBuffer(t *testing.T) {
	var calls atomic.Int64
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		calls.Add(1)
		w.WriteHeader(503)
	})
	te := newTestEngine(t, Options{BufferLimit: 1024})
	te.apply(httpSnapshot(oneRoute(retryRoute("c", retryOn(3, "5xx"))), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	c := client(te.addr("main"))
	for _, tc := range []struct {
		size     int
		attempts int64
	}{{512, 4}, {4096, 1}} {
		calls.Store(0)
		resp, err := c.Post("http://x/", "text/plain", strings.NewReader(strings.Repeat("a", tc.size)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 503 || calls.Load() != tc.attempts {
			t.Errorf("%d-byte body: %d after %d attempts, want 503 after %d", tc.size, resp.StatusCode, calls.Load(), tc.attempts)
		}
	}
}

// An endpoint that closes idle connections: a POST through a route
// without a retry policy (its body is not kept) must not meet a dead
// pooled connection.
func TestIdleConnectionClosedByUpstream(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	}))
	srv.Config.IdleTimeout = 200 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(mustAddrPort(srv.Listener.Addr().String()))}))
	c := client(te.addr("main"))
	for i := range 2 {
		resp, err := c.Post("http://x/", "text/plain", strings.NewReader("body"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "body" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
		}
		time.Sleep(1200 * time.Millisecond) // the endpoint closes the idle connection
	}
}

// Kept bodies come from a pool: concurrent requests, half of them retried
// from their copy, must each get their own body back.
func TestConcurrentKeptBodiesStayApart(t *testing.T) {
	var n atomic.Int64
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if n.Add(1)%2 == 0 && r.Header.Get("X-Envoy-Attempt-Count") == "1" {
			w.WriteHeader(503)
			return
		}
		w.Write(b)
	})
	te := newTestEngine(t, Options{})
	// max_retries above the concurrency (Envoy's default of 3 concurrent
	// retries would turn some away: that is the breaker working).
	te.apply(httpSnapshot(counted(oneRoute(retryRoute("c", retryOn(3, "5xx")))), false, &model.Cluster{Name: "c", MaxRetries: 100, Endpoints: endpoints(be)}))
	c := client(te.addr("main"))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				body := strings.Repeat(string(rune('a'+g)), 500+i)
				resp, err := c.Post("http://x/", "text/plain", strings.NewReader(body))
				if err != nil {
					t.Error(err)
					return
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(got) != body {
					t.Errorf("goroutine %d request %d: %d, %d bytes back, want its own %d", g, i, resp.StatusCode, len(got), len(body))
					return
				}
			}
		}()
	}
	wg.Wait()
}

// max_retries counts retries in progress: while one is outstanding, a
// second request's failure is not retried.
func TestMaxRetriesBreaker(t *testing.T) {
	inRetry := make(chan struct{}, 1)
	release := make(chan struct{})
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Envoy-Attempt-Count") == "1" {
			w.WriteHeader(503)
			return
		}
		inRetry <- struct{}{}
		<-release
		io.WriteString(w, "retried")
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(counted(oneRoute(retryRoute("c", retryOn(1, "5xx")))), false, &model.Cluster{Name: "c", MaxRetries: 1, Endpoints: endpoints(be)}))
	c := client(te.addr("main"))
	first := make(chan string)
	go func() {
		_, body, _ := get(t, c, "http://x/")
		first <- body
	}()
	<-inRetry
	if code, _, _ := get(t, c, "http://x/"); code != 503 {
		t.Errorf("with the one retry slot taken: %d, want the upstream's 503 unretried", code)
	}
	close(release)
	if body := <-first; body != "retried" {
		t.Errorf("the first request: %q", body)
	}
	if st := te.ClusterStats()["c"]; st.Retries != 0 || st.Overflows == 0 {
		t.Errorf("cluster stats after: %+v", st)
	}
}

// include_request_attempt_count numbers every try upstream (a client's own
// value never passes); include_attempt_count_in_response tells the client
// how many tries its answer took.
func TestAttemptCountHeaders(t *testing.T) {
	var calls atomic.Int64
	var seen sync.Map
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		seen.Store(calls.Add(1), r.Header.Get("X-Envoy-Attempt-Count"))
		if calls.Load() == 1 {
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, "ok")
	})
	rt := counted(oneRoute(retryRoute("c", retryOn(2, "5xx"))))
	rt.VirtualHosts[0].AttemptCountInResponse = true
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(rt, false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	code, body, resp := get(t, client(te.addr("main")), "http://x/", "X-Envoy-Attempt-Count", "7")
	if code != 200 || body != "ok" {
		t.Fatalf("got %d %q", code, body)
	}
	for n, want := range map[int64]string{1: "1", 2: "2"} {
		if got, _ := seen.Load(n); got != want {
			t.Errorf("try %d carried x-envoy-attempt-count %q, want %q", n, got, want)
		}
	}
	if got := resp.Header.Get("X-Envoy-Attempt-Count"); got != "2" {
		t.Errorf("the answer says %q tries, want 2", got)
	}

	// The router's own answer after its tries says how many there were
	// too: an endpoint that refuses every connection, two retries.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := mustAddrPort(ln.Addr().String())
	ln.Close()
	rt = oneRoute(retryRoute("d", retryOn(2, "connect-failure")))
	rt.VirtualHosts[0].AttemptCountInResponse = true
	te.apply(httpSnapshot(rt, false, &model.Cluster{Name: "d", Endpoints: endpoints(dead)}))
	code, _, resp = get(t, client(te.addr("main")), "http://x/")
	if code != 503 || resp.Header.Get("X-Envoy-Attempt-Count") != "3" {
		t.Errorf("got %d with x-envoy-attempt-count %q, want 503 after 3 tries", code, resp.Header.Get("X-Envoy-Attempt-Count"))
	}
}

// The response header map is the downstream connection's, refilled by
// each response: a retried try's fields and an earlier request's must
// never reach the client. Each request on one keep-alive connection gets
// a failed try (503 with fields of its own) and then an answer whose
// fields name the request.
func TestResponseHeaderReuseKeepsResponsesApart(t *testing.T) {
	var calls atomic.Int64
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if n%2 == 1 {
			w.Header().Set("X-Failed-Try", "yes")
			w.Header().Add("X-Many", "a")
			w.Header().Add("X-Many", "b")
			w.WriteHeader(503)
			return
		}
		w.Header().Set("X-Answer", r.URL.Query().Get("i"))
		if n%4 == 0 {
			w.Header().Set("X-Every-Other", "1")
		}
		io.WriteString(w, "ok")
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(retryRoute("c", retryOn(1, "5xx"))), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	c := client(te.addr("main"))
	for i := range 50 {
		code, body, resp := get(t, c, "http://x/?i="+strconv.Itoa(i))
		if code != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
		if got := resp.Header.Values("X-Answer"); len(got) != 1 || got[0] != strconv.Itoa(i) {
			t.Fatalf("request %d: X-Answer %q", i, got)
		}
		if v := resp.Header.Values("X-Failed-Try"); v != nil {
			t.Fatalf("request %d: the failed try's field reached the client: %q", i, v)
		}
		if v := resp.Header.Values("X-Many"); v != nil {
			t.Fatalf("request %d: the failed try's repeated field reached the client: %q", i, v)
		}
		if want := (i+1)%2 == 0; (resp.Header.Get("X-Every-Other") != "") != want {
			t.Fatalf("request %d: X-Every-Other %q (an earlier response's field?)", i, resp.Header.Get("X-Every-Other"))
		}
	}
	if n := calls.Load(); n != 100 {
		t.Errorf("%d upstream calls, want 100 (two tries a request)", n)
	}
}

// A try's timer starts when both the request is complete and its
// connection ready (Envoy's onPoolReady with the downstream's end): a
// slow connect is not the try's to lose.
func TestPerTryTimerWaitsForTheConnection(t *testing.T) {
	fired := make(chan error, 1)
	d := &deadline{d: 20 * time.Millisecond, cause: errPerTryTimeout, needConn: true,
		cancel: func(err error) { fired <- err }}
	d.arm() // request complete, no connection yet
	select {
	case <-fired:
		t.Fatal("fired before the connection was ready")
	case <-time.After(60 * time.Millisecond):
	}
	d.connected()
	select {
	case err := <-fired:
		if err != errPerTryTimeout {
			t.Errorf("cause %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("never fired once connected")
	}
}

// Through the engine: every pool (HTTP/1.1, h2c, upgrades through
// net/http) says when it has a connection, so the per-try timeout still
// fires on an endpoint that never answers.
func TestPerTryTimeoutFiresOnEveryPool(t *testing.T) {
	hang := backend(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	for _, proto := range []string{"http1", "http2"} {
		r := fwd("c")
		r.Forward.Retry = &model.RetryPolicy{On: map[string]bool{"5xx": true}, NumRetries: 0, PerTryTimeout: 100 * time.Millisecond}
		te := newTestEngine(t, Options{})
		c := &model.Cluster{Name: "c", Protocol: proto, Endpoints: endpoints(hang)}
		if proto == "http2" {
			srv := &http2.Server{}
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
			c.Endpoints = endpoints(rawServer(t, func(c net.Conn) { srv.ServeConn(c, &http2.ServeConnOpts{Handler: h}) }))
		}
		te.apply(httpSnapshot(oneRoute(r), false, c))
		start := time.Now()
		code, _, _ := get(t, client(te.addr("main")), "http://x/")
		if d := time.Since(start); code != http.StatusGatewayTimeout || d > 2*time.Second {
			t.Errorf("%s: %d after %v, want 504 after the 100 ms per-try timeout", proto, code, d)
		}
	}
}
