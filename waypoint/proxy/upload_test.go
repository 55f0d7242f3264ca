package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Uploads whose client holds the body back or stalls: whatever the
// upstream does, the client gets its answer without the waypoint waiting
// for a body that may never come.

// earlyUpstream reads a request's head and answers at once (answer ""
// reads a byte of the body and closes without answering).
func earlyUpstream(t *testing.T, answer string) netip.AddrPort {
	return rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		if answer == "" {
			br.Peek(1)
			return
		}
		io.WriteString(c, answer)
		br.Peek(1 << 20) // keeps the connection until the waypoint drops it
	})
}

// holdBack sends the head of an Expect: 100-continue upload and never
// its body; it returns the final status.
func holdBack(t *testing.T, te *testEngine) int {
	t.Helper()
	c, err := dialer(te.addr("main"), clientAddr, serviceVIP)(context.Background(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "PUT /upload HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n", 100<<10)
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		if resp.StatusCode != http.StatusContinue {
			return resp.StatusCode
		}
	}
}

func mirrored(cluster string) *model.Route {
	r := fwd(cluster)
	r.Forward.Mirrors = []model.Mirror{{Cluster: "shadow", Percent: 100}}
	return r
}

var unhealthy = [][]model.Endpoint{{{Address: netip.MustParseAddrPort("127.0.0.1:1"), Weight: 1, Healthy: false}}}

// A local reply (no healthy endpoint) before any read of the body, on a
// route with a mirror: the mirror does not wait for the body.
func TestUploadHeldBackLocalReplyWithMirror(t *testing.T) {
	shadow := backend(t, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) })
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(mirrored("main")), false,
		&model.Cluster{Name: "main", Endpoints: unhealthy}, &model.Cluster{Name: "shadow", Endpoints: endpoints(shadow)}))
	if code := holdBack(t, te); code != http.StatusServiceUnavailable {
		t.Fatalf("got %d, want 503", code)
	}
}

// An early 413, the upstream closing or keeping its connection, with and
// without a mirror.
func TestUploadHeldBackEarlyAnswer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer string
		mirror bool
	}{
		{"close", "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n", false},
		{"keep-alive", "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 8\r\n\r\ntoo big\n", false},
		{"close, mirror", "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := earlyUpstream(t, tc.answer)
			shadow := backend(t, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) })
			r := fwd("main")
			if tc.mirror {
				r = mirrored("main")
			}
			te := newTestEngine(t, Options{})
			te.apply(httpSnapshot(oneRoute(r), false,
				&model.Cluster{Name: "main", Endpoints: endpoints(up)}, &model.Cluster{Name: "shadow", Endpoints: endpoints(shadow)}))
			for range 5 {
				if code := holdBack(t, te); code != http.StatusRequestEntityTooLarge {
					t.Fatalf("got %d, want 413", code)
				}
			}
		})
	}
}

// A streaming (chunked) upload whose upstream dies before answering: the
// client hears of it while it is still sending.
func TestUploadUpstreamDiesMidStream(t *testing.T) {
	up := earlyUpstream(t, "")
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("main")), false, &model.Cluster{Name: "main", Endpoints: endpoints(up)}))
	c, err := dialer(te.addr("main"), clientAddr, serviceVIP)(context.Background(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST /stream HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer after the upstream died: %v", err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("got %d, want 503", resp.StatusCode)
	}
}

// A client that stalls mid-upload, on a route with a stream idle timeout:
// the timeout answers it.
func TestUploadStalledIdleTimeout(t *testing.T) {
	up := rawServer(t, func(c net.Conn) { io.Copy(io.Discard, c) }) // reads, never answers
	r := fwd("main")
	r.Forward.IdleTimeout = 300 * time.Millisecond
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false, &model.Cluster{Name: "main", Endpoints: endpoints(up)}))
	c, err := dialer(te.addr("main"), clientAddr, serviceVIP)(context.Background(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "PUT /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n", 200<<10)
	c.Write(make([]byte, 70<<10))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer for a stalled upload: %v", err)
	}
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Errorf("got %d, want 408 (Envoy's stream idle timeout)", resp.StatusCode)
	}
}

// An upload with Expect: 100-continue that the upstream refuses before
// reading it: the waypoint's upstream body writer reads the client body
// (which sends the client a 100 Continue) while the handler writes the
// upstream's early 413. The two writes to the client connection must not
// interleave (-race saw them do it), and the client gets a well-formed
// answer, also when it never sends the body (the waypoint must not wait
// for the upload before answering).
func TestExpectContinueEarlyAnswer(t *testing.T) {
	up := earlyUpstream(t, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n")
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(up)}))
	for i := range 40 {
		sendBody := i%2 == 0
		c, err := dialer(te.addr("main"), clientAddr, serviceVIP)(context.Background(), "", "")
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		const size = 100 << 10 // beyond what goes inline with the head
		fmt.Fprintf(c, "PUT /upload HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n", size)
		br := bufio.NewReader(c)
		var resp *http.Response
		for {
			resp, err = http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("try %d (body sent: %v): %v", i, sendBody, err)
			}
			if resp.StatusCode != http.StatusContinue {
				break
			}
			// As a client does on a 100: the body.
			if sendBody {
				go c.Write(make([]byte, size))
			}
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
		if resp.StatusCode != http.StatusRequestEntityTooLarge || string(body) != "too big\n" {
			t.Fatalf("try %d: %d %q", i, resp.StatusCode, body)
		}
		c.Close()
	}
}
