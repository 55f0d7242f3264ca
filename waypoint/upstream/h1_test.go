package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// countingServer is an HTTP server on loopback that counts the
// connections it accepted and has open.
type countingServer struct {
	*httptest.Server
	opened, open atomic.Int64
}

func newCountingServer(t *testing.T, h http.HandlerFunc, configure func(*http.Server)) *countingServer {
	t.Helper()
	cs := &countingServer{}
	cs.Server = httptest.NewUnstartedServer(h)
	cs.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			cs.opened.Add(1)
			cs.open.Add(1)
		case http.StateClosed, http.StateHijacked:
			cs.open.Add(-1)
		}
	}
	if configure != nil {
		configure(cs.Config)
	}
	cs.Start()
	t.Cleanup(cs.Close)
	return cs
}

func (cs *countingServer) addr() netip.AddrPort {
	return netip.MustParseAddrPort(cs.Listener.Addr().String())
}

func do(t *testing.T, c *Cluster, ctx context.Context, method, body string) (*http.Response, string, error) {
	t.Helper()
	h, err := c.Pick(&PickOptions{})
	if err != nil {
		return nil, "", err
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://"+h.Key+"/x", rd)
	if body != "" {
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(body)), nil }
	}
	resp, err := c.RoundTrip(ctx, req, h, false)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

func TestH1PendingQueueAndOverflow(t *testing.T) {
	release := make(chan struct{})
	var entered atomic.Int64
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		entered.Add(1)
		<-release
		io.WriteString(w, "done")
	}, nil)
	_, c := one(t, &model.Cluster{Name: "c", MaxConnections: 1, MaxPendingRequests: 1, Endpoints: [][]model.Endpoint{{{Address: srv.addr(), Healthy: true}}}})
	results := make(chan error, 2)
	for range 2 {
		go func() {
			_, body, err := do(t, c, context.Background(), "GET", "")
			if err == nil && body != "done" {
				err = errors.New("body " + body)
			}
			results <- err
		}()
	}
	// One request on the one connection, one pending.
	waitFor(t, "one request in, one queued", func() bool {
		c.h1.mu.Lock()
		defer c.h1.mu.Unlock()
		return entered.Load() == 1 && c.h1.waiters == 1
	})
	if _, _, err := do(t, c, context.Background(), "GET", ""); !errors.Is(err, ErrOverflow) {
		t.Fatalf("a second pending request with max_pending 1: %v, want overflow", err)
	}
	close(release)
	for range 2 {
		if err := <-results; err != nil {
			t.Error(err)
		}
	}
	if n := srv.opened.Load(); n != 1 {
		t.Errorf("%d connections opened with max_connections 1", n)
	}
}

func TestH1PendingGivesUpWithContext(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) { <-release }, nil)
	_, c := one(t, &model.Cluster{Name: "c", MaxConnections: 1, Endpoints: [][]model.Endpoint{{{Address: srv.addr(), Healthy: true}}}})
	go do(t, c, context.Background(), "GET", "")
	waitFor(t, "the connection taken", func() bool { return c.Stats().Connections == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, _, err := do(t, c, ctx, "GET", ""); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("pending request past its deadline: %v", err)
	}
	if time.Since(start) > time.Second {
		t.Error("the pending request waited beyond its context")
	}
}

func TestH1MaxRequestsPerConnection(t *testing.T) {
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }, nil)
	_, c := one(t, &model.Cluster{Name: "c", MaxRequestsPerConnection: 2, Endpoints: [][]model.Endpoint{{{Address: srv.addr(), Healthy: true}}}})
	for range 5 {
		if _, _, err := do(t, c, context.Background(), "GET", ""); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.opened.Load(); n != 3 {
		t.Errorf("5 requests at 2 per connection opened %d connections, want 3", n)
	}
}

func TestH1ReuseAndIdleTimeout(t *testing.T) {
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	}, nil)
	_, c := one(t, &model.Cluster{Name: "c", IdleTimeout: 100 * time.Millisecond, Endpoints: [][]model.Endpoint{{{Address: srv.addr(), Healthy: true}}}})
	for i := range 4 {
		method, body := "GET", ""
		if i%2 == 1 {
			method, body = "POST", "payload"
		}
		if _, got, err := do(t, c, context.Background(), method, body); err != nil || got != body {
			t.Fatalf("%s: %q %v", method, got, err)
		}
	}
	if n := srv.opened.Load(); n != 1 {
		t.Errorf("4 sequential requests opened %d connections, want 1", n)
	}
	// The idle connection is closed by the sweep, not only when next
	// used.
	waitFor(t, "the idle connection closed", func() bool { return srv.open.Load() == 0 && c.Stats().Connections == 0 })
	if _, _, err := do(t, c, context.Background(), "GET", ""); err != nil || srv.opened.Load() != 2 {
		t.Errorf("after the idle timeout: %v, %d connections opened", err, srv.opened.Load())
	}
}

func TestH1StaleKeepAliveRetried(t *testing.T) {
	// The server closes idle keep-alive connections after 150 ms: the
	// pool's connection is dead when the next request comes (a GET is
	// sent again on a new one; a POST's connection is looked at first,
	// having idled over livenessAfterUnsafe).
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Method+string(b))
	}, func(s *http.Server) { s.IdleTimeout = livenessAfterUnsafe + 50*time.Millisecond })
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{{Address: srv.addr(), Healthy: true}}}})
	for _, m := range []struct{ method, body string }{{"GET", ""}, {"POST", "b"}} {
		if _, _, err := do(t, c, context.Background(), m.method, m.body); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the server to close the idle connection", func() bool { return srv.open.Load() == 0 })
		if _, got, err := do(t, c, context.Background(), m.method, m.body); err != nil || got != m.method+m.body {
			t.Errorf("%s on a connection the server closed: %q %v (must be retried on a new one)", m.method, got, err)
		}
	}
}

// Several idle connections the endpoint closed: the retry after the first
// stale one must not take the next stale one.
func TestH1ManyStaleConnections(t *testing.T) {
	gate := make(chan struct{})
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("wait") != "" {
			<-gate
		}
		io.WriteString(w, "ok")
	}, func(s *http.Server) { s.IdleTimeout = livenessAfterUnsafe + 50*time.Millisecond })
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{{Address: srv.addr(), Healthy: true}}}})
	h, _ := c.Pick(&PickOptions{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", "http://"+h.Key+"/x?wait=1", nil)
			if resp, err := c.RoundTrip(context.Background(), req, h, false); err == nil {
				io.ReadAll(resp.Body)
				resp.Body.Close()
			}
		}()
	}
	waitFor(t, "four connections open", func() bool { return srv.open.Load() == 4 })
	close(gate)
	wg.Wait()
	waitFor(t, "the server to close them all", func() bool { return srv.open.Load() == 0 })
	for i := range 4 {
		if _, got, err := do(t, c, context.Background(), "POST", "body"); err != nil || got != "ok" {
			t.Fatalf("request %d after the endpoint closed four idle connections: %q %v", i, got, err)
		}
	}
}

func TestH1CancelUnblocks(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		io.WriteString(w, "abc")
		w.(http.Flusher).Flush()
		<-release
	}, nil)
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{{Address: srv.addr(), Healthy: true}}}})
	ctx, cancel := context.WithCancel(context.Background())
	h, _ := c.Pick(&PickOptions{})
	req, _ := http.NewRequest("GET", "http://"+h.Key+"/", nil)
	resp, err := c.RoundTrip(ctx, req, h, false)
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(30*time.Millisecond, cancel)
	start := time.Now()
	_, err = io.ReadAll(resp.Body)
	if err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("reading a stalled body after cancel: %v after %v", err, time.Since(start))
	}
	resp.Body.Close()
	waitFor(t, "the connection closed, not pooled", func() bool { return c.Stats().Connections == 0 })
}

func TestH2CThroughTransport(t *testing.T) {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Proto) }, func(s *http.Server) { s.Protocols = &p })
	_, c := one(t, &model.Cluster{Name: "c", Protocol: "http2", Endpoints: [][]model.Endpoint{{{Address: srv.addr(), Healthy: true}}}})
	// A first request opens the connection the others share.
	h, _ := c.Pick(&PickOptions{})
	req, _ := http.NewRequest("GET", "http://"+h.Key+"/", nil)
	if resp, err := c.RoundTrip(context.Background(), req, h, true); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, _ := c.Pick(&PickOptions{})
			req, _ := http.NewRequest("GET", "http://"+h.Key+"/", nil)
			resp, err := c.RoundTrip(context.Background(), req, h, true)
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "HTTP/2.0" {
				t.Errorf("proto %q", b)
			}
		}()
	}
	wg.Wait()
	if n := srv.opened.Load(); n != 1 {
		t.Errorf("11 h2c requests opened %d connections, want 1 (multiplexed)", n)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A connection idle for a while is looked at before use: one the endpoint
// closed is not used, so even a body that cannot be sent twice goes
// through.
func TestH1IdleConnectionCheckedBeforeUse(t *testing.T) {
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	}, func(s *http.Server) { s.IdleTimeout = 100 * time.Millisecond })
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{{Address: srv.addr(), Healthy: true}}}})
	post := func() (string, error) {
		h, _ := c.Pick(&PickOptions{})
		req, _ := http.NewRequest("POST", "http://"+h.Key+"/", nil)
		req.Body, req.ContentLength = io.NopCloser(strings.NewReader("once")), 4 // no GetBody
		resp, err := c.RoundTrip(context.Background(), req, h, false)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	if got, err := post(); err != nil || got != "once" {
		t.Fatal(got, err)
	}
	waitFor(t, "the endpoint to close the idle connection", func() bool { return srv.open.Load() == 0 })
	time.Sleep(livenessAfter)
	if got, err := post(); err != nil || got != "once" {
		t.Errorf("after the endpoint closed the idle connection: %q %v", got, err)
	}
}
