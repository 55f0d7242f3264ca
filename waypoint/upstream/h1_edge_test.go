package upstream

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// rawServer runs serve for every accepted connection (its index).
func rawServer(t *testing.T, serve func(i int, c net.Conn, br *bufio.Reader)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(i int) { defer c.Close(); serve(i, c, bufio.NewReader(c)) }(i)
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

type gatedReader struct {
	gate <-chan struct{}
	mu   sync.Mutex
	r    io.Reader
	max  int
}

func (g *gatedReader) Read(p []byte) (int, error) {
	<-g.gate
	if g.max > 0 && len(p) > g.max {
		p = p[:g.max] // a client's upload arrives in pieces
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.r.Read(p)
}
func (g *gatedReader) Close() error { return nil }

// The retry on a new connection after a kept one was found closed (here
// an idempotent POST: it carries an idempotency key) gives the request a
// new body while the first attempt's body writer still runs: that writer
// must not take the retry's bytes.
func TestStaleRetryBodyNotStolenByOldWriter(t *testing.T) {
	const size = 100 << 10 // > inlineBody: written by a goroutine
	payload := bytes.Repeat([]byte("a"), size)
	got := make(chan int, 1)
	addr := rawServer(t, func(i int, c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if i == 0 && req.Method == "POST" {
				return // the endpoint drops the reused connection: no byte of a response
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, _ := io.Copy(io.Discard, req.Body)
			if req.Method == "POST" {
				got <- int(n)
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{{Address: addr, Healthy: true}}}})
	if _, _, err := do(t, c, context.Background(), "GET", ""); err != nil {
		t.Fatal(err)
	}
	h, _ := c.Pick(&PickOptions{})
	oldGate, newGate := make(chan struct{}), make(chan struct{})
	var retried atomic.Bool
	req, _ := http.NewRequest("POST", "http://"+h.Key+"/x", nil)
	req.ContentLength = size
	req.Header.Set("Idempotency-Key", "k1")
	req.Body = &gatedReader{gate: oldGate, r: bytes.NewReader(payload), max: 1000}
	req.GetBody = func() (io.ReadCloser, error) {
		retried.Store(true)
		return &gatedReader{gate: newGate, r: bytes.NewReader(payload)}, nil
	}
	done := make(chan error, 1)
	go func() {
		resp, err := c.RoundTrip(context.Background(), req, h, false)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		done <- err
	}()
	waitFor(t, "the retry", retried.Load)
	time.Sleep(100 * time.Millisecond)
	close(oldGate) // the first attempt's writer wakes, loops, reads req.Body: the retry's
	time.Sleep(100 * time.Millisecond)
	close(newGate)
	// The endpoint counts the body before it answers, so a round trip
	// that ended well has its count waiting (select picks at random among
	// ready cases: both can be by the time it runs).
	select {
	case n := <-got:
		if n != size {
			t.Errorf("retried POST reached the endpoint with %d of %d body bytes", n, size)
		}
	case err := <-done:
		if err != nil {
			t.Errorf("retried POST failed: %v", err)
			break
		}
		select {
		case n := <-got:
			if n != size {
				t.Errorf("retried POST reached the endpoint with %d of %d body bytes", n, size)
			}
		default:
			t.Error("the retried POST was answered, but the endpoint counted no body")
		}
	case <-time.After(5 * time.Second):
		t.Error("no body arrived")
	}
}

// A POST the endpoint received whole before it dropped the connection
// without answering (a crash, a restart) is not sent again: like net/http's
// Transport, only an idempotent request goes again once it went out.
func TestPostNotResentAfterEndpointReadIt(t *testing.T) {
	var posts atomic.Int64
	addr := rawServer(t, func(i int, c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if req.Method == "POST" {
				posts.Add(1)
				if i == 0 {
					return // processed, then the connection drops
				}
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{{Address: addr, Healthy: true}}}})
	if _, _, err := do(t, c, context.Background(), "GET", ""); err != nil {
		t.Fatal(err)
	}
	_, _, err := do(t, c, context.Background(), "POST", "charge-card")
	if n := posts.Load(); n != 1 {
		t.Errorf("a non-idempotent POST reached the endpoint %d times (err %v)", n, err)
	}
}

// A response field line longer than the 8 KiB read buffer is read whole
// (Envoy takes 60 KiB of response headers).
func TestLongResponseHeaderLine(t *testing.T) {
	srv := newCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", strings.Repeat("a", 9000))
		io.WriteString(w, "ok")
	}, nil)
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{{Address: srv.addr(), Healthy: true}}}})
	if _, body, err := do(t, c, context.Background(), "GET", ""); err != nil || body != "ok" {
		t.Errorf("9000-byte response header: %q %v", body, err)
	}
}

// A 101 this pool never asked for (upgrades go through net/http's
// Transport) ends its connection: what follows it is never taken as the
// next request's response.
func TestUnsolicited101NotReused(t *testing.T) {
	addr := rawServer(t, func(i int, c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
		time.Sleep(time.Second)
	})
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{{Address: addr, Healthy: true}}}})
	do(t, c, context.Background(), "GET", "")
	if _, body, err := do(t, c, context.Background(), "GET", ""); err == nil && body == "stale" {
		t.Errorf("the second request got the bytes after the first one's 101: %q", body)
	}
}

// Bytes an endpoint sends after a complete response (a second answer to
// one request, a body after a 204 or an answer to HEAD) are not an answer
// to the next request on the connection: the connection is not reused
// (Envoy's codec calls them extraneous data and closes; net/http's
// Transport closes on an unsolicited response), so no request ever gets
// another's answer.
func TestExtraBytesAfterResponseNotReused(t *testing.T) {
	for _, tc := range []struct{ name, method, resp string }{
		{"second response", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"},
		{"chunks after 204", "GET", "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"},
		{"body after HEAD", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var conns atomic.Int32
			addr := rawServer(t, func(i int, c net.Conn, br *bufio.Reader) {
				conns.Add(1)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					if req.Method == tc.method {
						io.WriteString(c, tc.resp)
					} else {
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
					}
				}
			})
			_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{{Address: addr, Healthy: true}}}})
			if _, _, err := do(t, c, context.Background(), tc.method, ""); err != nil {
				t.Fatal(err)
			}
			_, body, err := do(t, c, context.Background(), "POST", "x")
			if err != nil || body != "fresh" {
				t.Errorf("the next request got %q (%v), want its own answer", body, err)
			}
		})
	}
}

// Informational responses before the final one: a few are skipped, an
// endpoint that keeps sending them fails the request instead of holding
// it for good (net/http's Transport takes 5 too).
func TestInformationalResponsesBounded(t *testing.T) {
	for _, c := range []struct {
		n    int
		fail bool
	}{{2, false}, {5, false}, {6, true}} {
		addr := rawServer(t, func(i int, conn net.Conn, br *bufio.Reader) {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(conn, strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", c.n)+"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			time.Sleep(100 * time.Millisecond)
		})
		_, cl := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{{Address: addr, Healthy: true}}}})
		_, body, err := do(t, cl, context.Background(), "GET", "")
		if c.fail && err == nil || !c.fail && (err != nil || body != "ok") {
			t.Errorf("%d 1xx before the answer: %q %v (want failure %v)", c.n, body, err, c.fail)
		}
	}
}
