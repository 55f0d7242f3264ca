package upstream

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// splitListener hands its first connection to first and the others to
// Accept (an http.Server's).
type splitListener struct {
	net.Listener
	once  sync.Once
	first func(net.Conn)
}

func (l *splitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		handled := false
		l.once.Do(func() { handled = true; go l.first(c) })
		if !handled {
			return c, nil
		}
	}
}

func h2Frame(typ, flags byte, stream uint32, payload []byte) []byte {
	f := make([]byte, 9, 9+len(payload))
	f[0], f[1], f[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	f[3], f[4] = typ, flags
	binary.BigEndian.PutUint32(f[5:], stream)
	return append(f, payload...)
}

// rewindBody is a request body that can start over (as the proxy's kept
// body): read after its Close, it fails, as the proxy's does.
type rewindBody struct {
	r      io.Reader
	s      string
	closed bool
	mu     sync.Mutex
}

func newRewindBody(s string) *rewindBody { return &rewindBody{r: strings.NewReader(s), s: s} }

func (b *rewindBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, errors.New("read after close")
	}
	return b.r.Read(p)
}

func (b *rewindBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

func (b *rewindBody) Rewind() io.ReadCloser { return newRewindBody(b.s) }

// A request that reserved a stream on a connection that then got a
// GOAWAY (its RoundTrip waited behind another request's headers) fails
// there with "client conn not usable" before anything of it went out;
// the pool sends it on another connection. Its body was closed by the
// failed attempt: the other connection must get the body whole (from its
// start), not the headers and a reset.
func TestH2NotUsableRetrySendsTheWholeBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	goAway, drain := make(chan struct{}), make(chan struct{})
	first := func(c net.Conn) {
		defer c.Close()
		c.Write(h2Frame(0x4, 0, 0, nil)) // SETTINGS
		br := bufio.NewReader(c)
		preface := make([]byte, 24)
		if _, err := io.ReadFull(br, preface); err != nil {
			return
		}
		// Answer the first request (stream 1) with a 200 (HPACK static 8).
		for {
			var hdr [9]byte
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return
			}
			n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
			if _, err := io.CopyN(io.Discard, br, int64(n)); err != nil {
				return
			}
			if hdr[3] == 0x1 && binary.BigEndian.Uint32(hdr[5:]) == 1 {
				break
			}
		}
		c.Write(h2Frame(0x1, 0x1|0x4, 1, []byte{0x88}))
		// Now read nothing: the next request's headers fill the socket.
		<-goAway
		payload := make([]byte, 8)
		binary.BigEndian.PutUint32(payload, 3) // last stream: the big one
		c.Write(h2Frame(0x7, 0, 0, payload))
		<-drain
		io.Copy(io.Discard, br)
	}
	sl := &splitListener{Listener: ln, first: first}
	bodies := make(chan string, 4)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			bodies <- "error: " + err.Error()
			return
		}
		bodies <- string(b)
		io.WriteString(w, "ok")
	})}
	go srv.Serve(sl)
	t.Cleanup(func() { srv.Close() })
	addr := netip.MustParseAddrPort(ln.Addr().String())

	_, c := one(t, &model.Cluster{Name: "c", Protocol: "http2", Endpoints: [][]model.Endpoint{{{Address: addr, Healthy: true}}}})
	h, _ := c.Pick(&PickOptions{})
	req, _ := http.NewRequest("GET", "http://"+h.Key+"/", nil)
	resp, err := c.RoundTrip(context.Background(), req, h, true)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		big, _ := http.NewRequest("GET", "http://"+h.Key+"/big", nil)
		big.Header.Set("X-Big", strings.Repeat("a", 16<<20))
		if resp, err := c.RoundTrip(ctx, big, h, true); err == nil {
			resp.Body.Close()
		}
	}()
	time.Sleep(300 * time.Millisecond) // its headers wait on the socket
	type result struct {
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		post, _ := http.NewRequest("POST", "http://"+h.Key+"/post", nil)
		post.Body, post.ContentLength = newRewindBody("hello"), 5
		resp, err := c.RoundTrip(ctx, post, h, true)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{body: string(b)}
	}()
	time.Sleep(200 * time.Millisecond) // the POST reserved, waits behind the big headers
	close(goAway)
	time.Sleep(200 * time.Millisecond) // the client took the GOAWAY in
	close(drain)
	select {
	case r := <-done:
		var got string
		select {
		case got = <-bodies:
		default:
		}
		if r.err != nil || r.body != "ok" || got != "hello" {
			t.Errorf("POST after a GOAWAY on its reserved connection: %q %v; the endpoint got body %q; want ok, hello", r.body, r.err, got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("POST hung")
	}
}

// fullListener is a loopback address whose accept queue is full: a
// connect to it hangs (its SYNs are dropped) until the dialer gives up.
func fullListener(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
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
	sa, _ := syscall.Getsockname(fd)
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port))
	// Fill the queue (a backlog of 0 holds one) with connections never
	// accepted.
	for i := 0; i < 2; i++ {
		c, err := net.DialTimeout("tcp", addr.String(), 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
	}
	return addr
}

// Requests waiting for a connection being opened fail with its failure,
// as Envoy fails a connection's pending requests, rather than each open
// one in turn after it: N waiters on an endpoint that never answers
// would wait N connect timeouts.
func TestH2DialFailureFailsItsWaiters(t *testing.T) {
	addr := fullListener(t)
	_, c := one(t, &model.Cluster{Name: "c", Protocol: "http2", ConnectTimeout: 300 * time.Millisecond,
		Endpoints: [][]model.Endpoint{{{Address: addr, Healthy: true}}}})
	h, _ := c.Pick(&PickOptions{})
	const n = 4
	start := time.Now()
	errs := make(chan error, n)
	for range n {
		go func() {
			req, _ := http.NewRequest("GET", "http://"+h.Key+"/", nil)
			resp, err := c.RoundTrip(context.Background(), req, h, true)
			if err == nil {
				resp.Body.Close()
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err == nil {
			t.Error("a request to an endpoint that never accepts succeeded")
		}
	}
	if took := time.Since(start); took > 900*time.Millisecond {
		t.Errorf("%d requests took %v for one connect timeout of 300ms: the waiters dialled in turn", n, took)
	}
}
