package h1

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// handler is what both servers serve in the comparisons: it echoes what it
// received and exercises the response writer's framing.
func handler(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(499)
		return
	}
	w.Header().Set("X-Method", r.Method)
	w.Header().Set("X-Uri", r.RequestURI)
	w.Header().Set("X-Host", r.Host)
	w.Header().Set("X-Body", string(body))
	w.Header().Set("X-Proto", r.Proto)
	if v := r.Trailer.Get("X-Req-Trailer"); v != "" {
		w.Header().Set("X-Got-Trailer", v)
	}
	w.Header().Set("Content-Type", "text/plain")
	switch r.URL.Path {
	case "/length":
		w.Header().Set("Content-Length", "5")
		io.WriteString(w, "hello")
	case "/stream":
		// No length: chunked on HTTP/1.1, close-delimited on 1.0.
		io.WriteString(w, "part1,")
		w.(http.Flusher).Flush()
		io.WriteString(w, "part2")
	case "/trailer":
		io.WriteString(w, "with trailer")
		w.(http.Flusher).Flush()
		w.Header().Set(http.TrailerPrefix+"Grpc-Status", "0")
	case "/nocontent":
		w.WriteHeader(http.StatusNoContent)
		io.WriteString(w, "ignored")
	case "/notmodified":
		w.WriteHeader(http.StatusNotModified)
	case "/nocontent-length":
		// As a proxy relays an endpoint's 204 that declares a length.
		w.Header().Set("Content-Length", "7")
		w.WriteHeader(http.StatusNoContent)
	case "/close":
		w.Header().Set("Connection", "close")
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ok")
	case "/short":
		// Declares more than it writes: the connection cannot be reused.
		w.Header().Set("Content-Length", "10")
		io.WriteString(w, "abc")
	case "/status":
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(418)
	default:
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.Write(body)
	}
}

// servers starts net/http's server and this package's on loopback with the
// same handler.
func servers(t *testing.T) (netHTTP, ours string) {
	t.Helper()
	ln1, _ := net.Listen("tcp", "127.0.0.1:0")
	std := &http.Server{Handler: http.HandlerFunc(handler)}
	go std.Serve(ln1)
	t.Cleanup(func() { std.Close() })

	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	s := &Server{Handler: func(w http.ResponseWriter, r *http.Request, _ any) { handler(w, r) }, IdleTimeout: time.Minute, MaxHeaderBytes: 8 << 10}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln2.Accept()
			if err != nil {
				return
			}
			go s.ServeConn(c, nil, nil)
		}
	}()
	t.Cleanup(func() { ln2.Close(); <-done })
	return ln1.Addr().String(), ln2.Addr().String()
}

// exchange writes raw bytes and reads every response that comes back
// until the connection closes or goes quiet, for the given method of the
// requests in order.
type result struct {
	status  int
	proto   string
	headers map[string]string
	body    string
	trailer string
	closed  bool // the server closed after the last response
}

var compared = []string{"X-Method", "X-Uri", "X-Host", "X-Body", "X-Proto", "X-Got-Trailer", "Content-Length", "Connection", "Content-Type", "Transfer-Encoding"}

func exchange(t *testing.T, addr, raw string, methods ...string) []result {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out []result
	for _, m := range methods {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		resp, err := http.ReadResponse(br, &http.Request{Method: m})
		if err != nil {
			t.Fatalf("%s: reading response %d: %v", addr, len(out)+1, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s: body %d: %v", addr, len(out)+1, err)
		}
		r := result{status: resp.StatusCode, proto: resp.Proto, body: string(b), headers: map[string]string{}, trailer: resp.Trailer.Get("Grpc-Status")}
		for _, k := range compared {
			r.headers[k] = resp.Header.Get(k)
		}
		if len(resp.TransferEncoding) > 0 {
			r.headers["Transfer-Encoding"] = strings.Join(resp.TransferEncoding, ",")
		}
		out = append(out, r)
	}
	c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	_, err = br.ReadByte()
	out[len(out)-1].closed = err == io.EOF
	return out
}

func TestServerMatchesNetHTTP(t *testing.T) {
	std, ours := servers(t)
	cases := []struct {
		name    string
		raw     string
		methods []string
	}{
		{"keep-alive and pipelining", "GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h:80\r\nContent-Length: 3\r\n\r\nabcGET /length HTTP/1.1\r\nHost: h\r\n\r\n", []string{"GET", "POST", "GET"}},
		{"chunked request with trailer", "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: X-Req-Trailer\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-Req-Trailer: t1\r\n\r\n", []string{"POST"}},
		{"chunked response", "GET /stream HTTP/1.1\r\nHost: h\r\n\r\n", []string{"GET"}},
		{"response trailers", "GET /trailer HTTP/1.1\r\nHost: h\r\n\r\n", []string{"GET"}},
		{"HTTP/1.0 closes", "GET /length HTTP/1.0\r\n\r\n", []string{"GET"}},
		{"HTTP/1.0 keep-alive", "GET /length HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /length HTTP/1.0\r\n\r\n", []string{"GET", "GET"}},
		{"HTTP/1.0 stream closes", "GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", []string{"GET"}},
		{"client asks to close", "GET /length HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", []string{"GET"}},
		{"handler asks to close", "GET /close HTTP/1.1\r\nHost: h\r\n\r\n", []string{"GET"}},
		{"HEAD has no body", "HEAD /length HTTP/1.1\r\nHost: h\r\n\r\nGET /length HTTP/1.1\r\nHost: h\r\n\r\n", []string{"HEAD", "GET"}},
		{"204 declaring a length", "GET /nocontent-length HTTP/1.1\r\nHost: h\r\n\r\nGET /length HTTP/1.1\r\nHost: h\r\n\r\n", []string{"GET", "GET"}},
		{"204 and 304", "GET /nocontent HTTP/1.1\r\nHost: h\r\n\r\nGET /notmodified HTTP/1.1\r\nHost: h\r\n\r\n", []string{"GET", "GET"}},
		{"unread body is skipped", "POST /status HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /length HTTP/1.1\r\nHost: h\r\n\r\n", []string{"POST", "GET"}},
		{"missing Host", "GET / HTTP/1.1\r\n\r\n", []string{"GET"}},
		{"bad request line", "GARBAGE\r\n\r\n", []string{"GET"}},
		{"expect 100-continue", "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi", []string{"POST", "POST"}},
		{"unknown expectation", "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: something\r\n\r\nhi", []string{"POST"}},
		{"absolute-form target", "GET http://other:8080/p?q HTTP/1.1\r\nHost: h\r\n\r\n", []string{"GET"}},
		{"lower-case names", "POST /x HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\nx-custom: v\r\n\r\nok", []string{"POST"}},
		{"repeated field", "GET /x HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-A: 2\r\n\r\n", []string{"GET"}},
		{"empty line before the request", "\r\nGET /length HTTP/1.1\r\nHost: h\r\n\r\n", []string{"GET"}},
		// Request smuggling and malformed framing.
		{"two different lengths", "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", []string{"POST"}},
		{"the same length twice", "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", []string{"POST"}},
		// Transfer-Encoding with Content-Length: net/http lets chunked win;
		// this server refuses it as Envoy does (TestServerRefusesAmbiguousFraming).
		{"unsupported transfer coding", "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", []string{"POST"}},
		{"negative length", "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", []string{"POST"}},
		{"signed length", "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc", []string{"POST"}},
		{"space before colon", "GET /x HTTP/1.1\r\nHost: h\r\nX-A : 1\r\n\r\n", []string{"GET"}},
		{"NUL in a value", "GET /x HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n", []string{"GET"}},
		{"two Host fields", "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", []string{"GET"}},
		{"HTTP/2.0 request line", "GET /x HTTP/2.0\r\nHost: h\r\n\r\n", []string{"GET"}},
		{"double space", "GET  /x HTTP/1.1\r\nHost: h\r\n\r\n", []string{"GET"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			methods := c.methods
			if c.name == "expect 100-continue" {
				methods = methods[:1] // the interim 100 is consumed by ReadResponse
			}
			want := exchange(t, std, c.raw, methods...)
			got := exchange(t, ours, c.raw, methods...)
			if len(got) != len(want) {
				t.Fatalf("%d responses, net/http gave %d", len(got), len(want))
			}
			for i := range want {
				w, g := want[i], got[i]
				if g.status != w.status || g.body != w.body || g.trailer != w.trailer || g.proto != w.proto {
					t.Errorf("response %d: got %d %s %q trailer %q, net/http %d %s %q trailer %q", i+1, g.status, g.proto, g.body, g.trailer, w.status, w.proto, w.body, w.trailer)
				}
				for _, k := range compared {
					if k == "Content-Type" && (w.status >= 400 && w.status < 500) {
						continue // error pages differ in charset wording only
					}
					if k == "Content-Length" && w.headers["Transfer-Encoding"] == "" && g.headers["Transfer-Encoding"] == "chunked" {
						continue
					}
					if g.headers[k] != w.headers[k] {
						t.Errorf("response %d: %s = %q, net/http %q", i+1, k, g.headers[k], w.headers[k])
					}
				}
			}
			if last := len(want) - 1; got[last].closed != want[last].closed {
				t.Errorf("closed after the last response: %v, net/http %v", got[last].closed, want[last].closed)
			}
		})
	}
}

// A handler that declares more than it writes: the client must see the
// body cut short (the connection closes), never take it for whole.
func TestServerShortBodyCloses(t *testing.T) {
	_, ours := servers(t)
	c, _ := net.Dial("tcp", ours)
	defer c.Close()
	io.WriteString(c, "GET /short HTTP/1.1\r\nHost: h\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); err != io.ErrUnexpectedEOF {
		t.Errorf("reading a short body: %v, want unexpected EOF", err)
	}
}

func TestServerHeaderLimit(t *testing.T) {
	_, ours := servers(t)
	big := "GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + strings.Repeat("a", 16<<10) + "\r\n\r\n"
	if r := exchange(t, ours, big, "GET"); r[0].status != http.StatusRequestHeaderFieldsTooLarge || !r[0].closed {
		t.Errorf("oversized header: %d closed=%v", r[0].status, r[0].closed)
	}
}

func TestServerHijack(t *testing.T) {
	s := &Server{Handler: func(w http.ResponseWriter, r *http.Request, _ any) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		io.Copy(brw, brw.Reader) // echo, what was pipelined first
		brw.Flush()
	}}
	addr := serveOne(t, s)
	c, _ := net.Dial("tcp", addr)
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nping")
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(b), "HTTP/1.1 101") || !strings.HasSuffix(string(b), "\r\n\r\nping") {
		t.Errorf("got %q", b)
	}
}

func TestServerNoticesClientLeaving(t *testing.T) {
	cancelled := make(chan error, 1)
	s := &Server{WatchAfter: 10 * time.Millisecond, Handler: func(w http.ResponseWriter, r *http.Request, _ any) {
		select {
		case <-r.Context().Done():
			cancelled <- r.Context().Err()
		case <-time.After(3 * time.Second):
			cancelled <- nil
		}
	}}
	addr := serveOne(t, s)
	c, _ := net.Dial("tcp", addr)
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
	time.Sleep(50 * time.Millisecond)
	c.Close()
	if err := <-cancelled; err != context.Canceled {
		t.Errorf("the request's context was not cancelled when the client left: %v", err)
	}
}

func TestServerWatcherKeepsPipelinedBytes(t *testing.T) {
	s := &Server{WatchAfter: 5 * time.Millisecond, Handler: func(w http.ResponseWriter, r *http.Request, _ any) {
		if r.URL.Path == "/slow" {
			time.Sleep(60 * time.Millisecond) // the watcher runs and sees the next request's bytes
		}
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, r.URL.Path[1:3])
	}}
	addr := serveOne(t, s)
	got := exchange(t, addr, "GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n", "GET", "GET")
	if got[0].body != "sl" || got[1].body != "ne" {
		t.Errorf("bodies %q %q", got[0].body, got[1].body)
	}
}

// TestClientWriteMatchesNetHTTP parses what WriteRequestHead/WriteBody
// write and what net/http's Request.Write writes for the same requests.
func TestClientWriteMatchesNetHTTP(t *testing.T) {
	mk := func(method, target, body string, length int64, trailer bool) *http.Request {
		var rb io.ReadCloser
		if body != "" || length > 0 {
			rb = io.NopCloser(strings.NewReader(body))
		}
		r, _ := http.NewRequest(method, target, nil)
		r.Body, r.ContentLength = rb, length
		r.Host = "svc.ns:8080"
		r.Header.Set("X-A", "1")
		r.Header.Add("X-Multi", "a")
		r.Header.Add("X-Multi", "b")
		r.Header["User-Agent"] = nil
		if trailer {
			r.Trailer = http.Header{"X-T": {"tv"}}
		}
		return r
	}
	cases := []*http.Request{
		mk("GET", "http://10.0.0.1:80/p%2Fq?x=1", "", 0, false),
		mk("POST", "http://10.0.0.1:80/p", "hello", 5, false),
		mk("POST", "http://10.0.0.1:80/p", "", 0, false),
		mk("PUT", "http://10.0.0.1:80/stream", "chunked body", -1, true),
	}
	for _, req := range cases {
		var ours, std strings.Builder
		bw := bufio.NewWriter(&ours)
		WriteRequestHead(bw, req)
		if err := WriteBody(bw, req); err != nil {
			t.Fatal(err)
		}
		bw.Flush()
		// A fresh copy of the body for net/http.
		cp := req.Clone(context.Background())
		if req.ContentLength != 0 {
			body := map[string]string{"/p": "hello", "/stream": "chunked body"}[req.URL.Path]
			cp.Body = io.NopCloser(strings.NewReader(body))
		}
		if cp.Trailer != nil {
			cp.Trailer = http.Header{"X-T": nil}
			// net/http sends trailer values set on req.Trailer when the
			// body is done; set them as it reads.
			cp.Body = io.NopCloser(io.MultiReader(cp.Body, trailerSetter{cp}))
		}
		if err := cp.Write(&std); err != nil {
			t.Fatal(err)
		}
		a := parse(t, ours.String())
		b := parse(t, std.String())
		if a != b {
			t.Errorf("%s %s:\n ours     %s\n net/http %s\nraw ours:\n%s\nraw net/http:\n%s", req.Method, req.URL, a, b, ours.String(), std.String())
		}
	}
}

type trailerSetter struct{ r *http.Request }

func (t trailerSetter) Read([]byte) (int, error) {
	t.r.Trailer.Set("X-T", "tv")
	return 0, io.EOF
}

// parse reads a request back and summarises what matters.
func parse(t *testing.T, raw string) string {
	t.Helper()
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		t.Fatalf("%v in %q", err, raw)
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range r.Header {
		if k == "User-Agent" || k == "Accept-Encoding" {
			continue
		}
		keys = append(keys, k+"="+strings.Join(r.Header[k], "|"))
	}
	slices.Sort(keys)
	return fmt.Sprintf("%s %s host=%s len=%d te=%v body=%q trailer=%v headers=%v", r.Method, r.RequestURI, r.Host, r.ContentLength, r.TransferEncoding, b, r.Trailer, keys)
}

// An HTTP/1.0 client that asked for keep-alive keeps its connection even
// when the handler removed the request's Connection field (the proxy
// drops hop-by-hop fields before it forwards).
func TestServerKeepsHTTP10KeepAlive(t *testing.T) {
	s := &Server{Handler: func(w http.ResponseWriter, r *http.Request, _ any) {
		r.Header.Del("Connection")
		w.Header().Set("Content-Length", "2") // HTTP/1.0 has no chunks
		io.WriteString(w, "ok")
	}}
	addr := serveOne(t, s)
	c, _ := net.Dial("tcp", addr)
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	br := bufio.NewReader(c)
	for i := range 2 {
		io.WriteString(c, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.ReadAll(resp.Body)
		if resp.Close || resp.Header.Get("Connection") != "keep-alive" {
			t.Fatalf("request %d: close=%v, Connection %q", i, resp.Close, resp.Header.Get("Connection"))
		}
	}
}

// The client-gone watcher never starts on a hijacked connection, also
// when its timer fires after the hijack (it would read what the handler
// now owns).
func TestServerNoWatcherAfterHijack(t *testing.T) {
	started := make(chan bool, 1)
	s := &Server{Handler: func(w http.ResponseWriter, r *http.Request, _ any) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			started <- false
			return
		}
		defer c.Close()
		cn := w.(*response).c
		cn.watch() // as the timer would, late
		cn.watchMu.Lock()
		started <- cn.watching
		cn.watchMu.Unlock()
	}}
	addr := serveOne(t, s)
	c, _ := net.Dial("tcp", addr)
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
	if <-started {
		t.Error("a watcher started on the hijacked connection")
	}
}

// serveOne serves the first connection to a new loopback listener with s
// and returns the listener's address; the listener closes with the test.
func serveOne(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err == nil {
			s.ServeConn(c, nil, nil)
		}
	}()
	return ln.Addr().String()
}

// A request expecting 100-continue answered before any read of its body:
// no 100 goes out, the answer says the connection closes (the client may
// hold the body back for good, as net/http's server assumes), and a
// reader still inside the body after the handler (a proxy's upstream body
// writer) is woken instead of waiting for an upload that never comes.
func TestServerExpectContinueAnsweredFirst(t *testing.T) {
	readErr := make(chan error, 1)
	s := &Server{Handler: func(w http.ResponseWriter, r *http.Request, _ any) {
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		io.WriteString(w, "no")
		go func() {
			_, err := r.Body.Read(make([]byte, 10))
			readErr <- err
		}()
	}}
	addr := serveOne(t, s)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "PUT /upload HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || string(body) != "no" || !resp.Close {
		t.Fatalf("got %d %q close=%v, want 413 \"no\" and the connection closing", resp.StatusCode, body, resp.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the answer: %v, want EOF (closed, nothing more sent)", err)
	}
	select {
	case err := <-readErr:
		if err == nil {
			t.Error("the body read after the answer returned data")
		}
	case <-time.After(3 * time.Second):
		t.Error("a reader left in the body still waits for the upload")
	}
}

// Framing and Host rules a proxy must hold to (RFC 9112 3.2 and 6.1):
// these requests are refused and the connection closed, so no byte of
// theirs is read as another request (smuggling past a front end that
// framed them otherwise).
func TestServerRefusesAmbiguousFraming(t *testing.T) {
	_, ours := servers(t)
	for name, raw := range map[string]string{
		"HTTP/1.0 with Transfer-Encoding": "POST /x HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
		"Transfer-Encoding and Content-Length": "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n" +
			"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
		"HTTP/1.1 absolute-form without Host": "GET http://other/p HTTP/1.1\r\n\r\n",
	} {
		r := exchange(t, ours, raw, "POST")
		if r[0].status != http.StatusBadRequest || !r[0].closed {
			t.Errorf("%s: %d, closed %v; want 400 and the connection closed", name, r[0].status, r[0].closed)
		}
	}
}

// A field line longer than the reader's buffer (a big cookie, a token) is
// read whole when the head is within MaxHeaderBytes, as net/http reads it.
func TestServerLongHeaderLine(t *testing.T) {
	std, ours := servers(t)
	raw := "GET /x HTTP/1.1\r\nHost: h\r\nCookie: " + strings.Repeat("a", 5000) + "\r\n\r\n"
	if got, want := exchange(t, ours, raw, "GET")[0].status, exchange(t, std, raw, "GET")[0].status; got != want || got != http.StatusOK {
		t.Errorf("a 5000-byte cookie: %d, net/http %d", got, want)
	}
	raw = "GET /x HTTP/1.1\r\nHost: h\r\nCookie: " + strings.Repeat("a", 20000) + "\r\n\r\n"
	if got := exchange(t, ours, raw, "GET")[0].status; got != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a cookie beyond MaxHeaderBytes: %d, want 431", got)
	}
}

// An upload that lasts longer than the idle timeout, its bytes coming all
// along, is not cut: the body's reads move the idle deadline on.
func TestServerIdleTimeoutSparesStreamingBody(t *testing.T) {
	got := make(chan error, 1)
	s := &Server{IdleTimeout: 300 * time.Millisecond, Handler: func(w http.ResponseWriter, r *http.Request, _ any) {
		_, err := io.ReadAll(r.Body)
		got <- err
		w.Header().Set("Content-Length", "0")
	}}
	addr := serveOne(t, s)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
	for range 8 {
		time.Sleep(100 * time.Millisecond)
		if _, err := io.WriteString(c, "1\r\na\r\n"); err != nil {
			break
		}
	}
	io.WriteString(c, "0\r\n\r\n")
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("a body sending every 100 ms, idle timeout 300 ms: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler never finished reading the body")
	}
}

// A handler's own 100 Continue is the only one the client sees (the
// body's first read must not send a second), and an interim answer
// carries none of the final answer's framing fields the handler set
// before it.
func TestServerExplicitInterimResponses(t *testing.T) {
	s := &Server{Handler: func(w http.ResponseWriter, r *http.Request, _ any) {
		w.Header().Set("Content-Length", "4")
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusContinue)
		b, _ := io.ReadAll(r.Body)
		w.Header().Del("Link")
		w.Write(b)
	}}
	addr := serveOne(t, s)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "PUT /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
	br := bufio.NewReader(c)
	var heads []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("after %q: %v", heads, err)
		}
		heads = append(heads, strings.TrimSpace(line))
		if line == "\r\n" && strings.Count(strings.Join(heads, "|"), "HTTP/1.1 ") == 2 {
			break
		}
	}
	io.WriteString(c, "data")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "data" {
		t.Fatalf("final answer %d %q, want 200 \"data\"", resp.StatusCode, body)
	}
	link := "Link: </a.css>; rel=preload"
	want := []string{"HTTP/1.1 103 Early Hints", link, "", "HTTP/1.1 100 Continue", link, ""}
	if strings.Join(heads, "|") != strings.Join(want, "|") {
		t.Errorf("interim answers %q, want %q", heads, want)
	}
}

// WireBytes is read by the handler while other goroutines may still read
// the connection: the client-gone watcher (a slow handler, a pipelined
// next request) and a proxy's upstream body writer still inside the
// body. Neither may be raced (go test -race), and neither's bytes beyond
// the request count.
func TestWireBytesWhileOthersRead(t *testing.T) {
	const first = "GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"
	const head = "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n"
	got := make(chan [2]int64, 2)
	s := &Server{WatchAfter: 5 * time.Millisecond, Handler: func(w http.ResponseWriter, r *http.Request, _ any) {
		switch r.URL.Path {
		case "/slow":
			time.Sleep(60 * time.Millisecond) // the watcher reads the next request's bytes
		case "/up":
			read := make(chan struct{})
			go func() {
				buf := make([]byte, 5)
				io.ReadFull(r.Body, buf)
				close(read)
				io.ReadAll(r.Body) // still reading when the handler returns
			}()
			<-read
		}
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ok")
		in, _, _ := WireBytes(w, true)
		got <- [2]int64{in, 0}
		if r.URL.Path == "/up" {
			time.Sleep(20 * time.Millisecond)
		}
	}}
	addr := serveOne(t, s)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, first)
	time.Sleep(20 * time.Millisecond)
	io.WriteString(c, head+"12345")
	if in := (<-got)[0]; in != int64(len(first)) {
		t.Errorf("first request: %d bytes in, want %d", in, len(first))
	}
	if in := (<-got)[0]; in != int64(len(head)+5) {
		t.Errorf("second request: %d bytes in, want %d", in, len(head)+5)
	}
	io.WriteString(c, "67890")
	time.Sleep(20 * time.Millisecond)
}

// WireBytes counts the end of a chunked response as finish writes it:
// the trailers writeField drops (a bad name, a value with CR or LF) are
// not on the wire.
func TestWireBytesChunkedEnd(t *testing.T) {
	out := make(chan int64, 1)
	s := &Server{Handler: func(w http.ResponseWriter, r *http.Request, _ any) {
		io.WriteString(w, "hello")
		w.Header()[http.TrailerPrefix+"Good"] = []string{"yes"}
		w.Header()[http.TrailerPrefix+"Bad Name"] = []string{"x"}
		w.Header()[http.TrailerPrefix+"Bad-Value"] = []string{"a\r\nb"}
		_, n, _ := WireBytes(w, true)
		out <- n
	}}
	addr := serveOne(t, s)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	wire, _ := io.ReadAll(c)
	if n := <-out; n != int64(len(wire)) {
		t.Errorf("WireBytes says %d bytes out, the client got %d:\n%s", n, len(wire), wire)
	}
}
