package upstream

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// An endpoint that ends a keep-alive connection with a lingering close
// (Apache, nginx: shutdown of its write side, then it reads and discards
// whatever comes for a while) has sent its FIN before the pool's next
// request on the connection. The request's read sees that EOF at once
// and the request goes again on a new connection (a stale one); it must
// not wait for an answer that never comes: the FIN's readiness arrived
// before the read's wait started.
func TestH1HalfClosedKeepAliveNotWaitedOn(t *testing.T) {
	addr := rawServer(t, func(i int, c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		if i == 0 {
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, br) // lingering: read on, never answer
			return
		}
		http.ReadRequest(br)
	})
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{{Address: addr, Healthy: true}}}})
	if _, _, err := do(t, c, context.Background(), "GET", ""); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the FIN is in (well within livenessAfter)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	if _, got, err := do(t, c, ctx, "GET", ""); err != nil || got != "ok" {
		t.Errorf("GET on a half-closed keep-alive connection after %v: %q %v; want ok on a new connection at once", time.Since(start), got, err)
	}
}

// An endpoint whose answer came with bytes after it (an unsolicited
// second answer, in the same segment) has them buffered when the pool's
// next request goes out on the connection: the response is then parsed
// from the buffer without a read, so a request held for that read would
// never be sent. It must go out at once, whatever is parsed.
func TestH1BufferedBytesRequestStillSent(t *testing.T) {
	got := make(chan string, 4)
	addr := rawServer(t, func(i int, c net.Conn, br *bufio.Reader) {
		for n := 0; ; n++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			got <- req.URL.Path
			if n == 0 {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"+
					"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		}
	})
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{{Address: addr, Healthy: true}}}})
	for _, path := range []string{"/first", "/second"} {
		h, _ := c.Pick(&PickOptions{})
		req, _ := http.NewRequest("GET", "http://"+h.Key+path, nil)
		resp, err := c.RoundTrip(context.Background(), req, h, false)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for _, want := range []string{"/first", "/second"} {
		select {
		case p := <-got:
			if p != want {
				t.Fatalf("the endpoint got %s, want %s", p, want)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("%s never reached the endpoint", want)
		}
	}
}
