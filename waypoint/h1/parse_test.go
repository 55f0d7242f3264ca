package h1

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// summary is what both parsers must agree on about a response.
func summary(resp *http.Response, err error) string {
	if err != nil {
		return "error"
	}
	body, berr := io.ReadAll(resp.Body)
	var keys []string
	for k, v := range resp.Header {
		keys = append(keys, k+"="+strings.Join(v, "|"))
	}
	slices.Sort(keys)
	var tr []string
	for k, v := range resp.Trailer {
		tr = append(tr, k+"="+strings.Join(v, "|"))
	}
	slices.Sort(tr)
	return fmt.Sprintf("%d %s len=%d te=%v close=%v body=%q bodyerr=%v headers=%v trailer=%v",
		resp.StatusCode, resp.Proto, resp.ContentLength, resp.TransferEncoding, resp.Close, body, berr, keys, tr)
}

func TestReadResponseMatchesNetHTTP(t *testing.T) {
	cases := []struct{ name, method, raw string }{
		{"length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"},
		{"chunked with trailers", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Grpc-Status\r\n\r\n3\r\nabc\r\n0\r\nGrpc-Status: 0\r\n\r\n"},
		{"undeclared trailer", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: v\r\n\r\n"},
		{"close delimited", "GET", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"},
		{"HTTP/1.0", "GET", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		{"HTTP/1.0 keep-alive", "GET", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"},
		{"connection close", "GET", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"},
		{"HEAD", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"},
		{"204", "GET", "HTTP/1.1 204 No Content\r\n\r\n"},
		{"304", "GET", "HTTP/1.1 304 Not Modified\r\nEtag: x\r\n\r\n"},
		{"no reason", "GET", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"},
		{"repeated fields", "GET", "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n"},
		{"repeated three times, apart, in mixed case", "GET", "HTTP/1.1 200 OK\r\nVia: 1\r\nSet-Cookie: a=1\r\nvia: 2\r\nContent-Length: 0\r\nVIA: 3\r\nset-cookie: b\r\n\r\n"},
		{"content length twice, the same", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok"},
		{"lower-case names", "GET", "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-envoy-upstream: y\r\n\r\nok"},
		{"bare LF", "GET", "HTTP/1.1 200 OK\nContent-Length: 2\n\nok"},
		{"short body", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"},
		{"conflicting lengths", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"},
		{"bad status", "GET", "HTTP/1.1 2x0 OK\r\n\r\n"},
		{"truncated head", "GET", "HTTP/1.1 200 OK\r\nContent-Le"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := summary(http.ReadResponse(bufio.NewReader(strings.NewReader(c.raw)), &http.Request{Method: c.method}))
			var p Parser
			got := summary(p.ReadResponse(bufio.NewReader(strings.NewReader(c.raw)), c.method))
			if got != want {
				t.Errorf("\n ours     %s\n net/http %s", got, want)
			}
		})
	}
}

// Stricter than net/http on purpose: an upstream that is not HTTP/1.x is
// refused, not guessed at.
func TestReadResponseRefusesOtherVersions(t *testing.T) {
	var p Parser
	if _, err := p.ReadResponse(bufio.NewReader(strings.NewReader("HTTP/9.9 200 OK\r\n\r\n")), "GET"); err == nil {
		t.Error("HTTP/9.9 accepted")
	}
}

// Pipelined messages on one reader: each body ends where it should.
func TestParserKeepsMessagesApart(t *testing.T) {
	raw := "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
	br := bufio.NewReader(strings.NewReader(raw))
	var p Parser
	for _, want := range []string{"abc", "de", ""} {
		resp, err := p.ReadResponse(br, "GET")
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := io.ReadAll(resp.Body); string(b) != want {
			t.Errorf("body %q, want %q", b, want)
		}
	}
}

// BenchmarkParse compares this package's head parser with net/http's on a
// request and a response like the benchmark's.
func BenchmarkParse(b *testing.B) {
	req := "POST / HTTP/1.1\r\nHost: 127.0.0.1:18082\r\nUser-Agent: fortio.org/fortio-1.66.5\r\nContent-Length: 16\r\nContent-Type: application/octet-stream\r\nAccept-Encoding: gzip\r\n\r\n0123456789abcdef"
	resp := "HTTP/1.1 200 OK\r\nContent-Length: 16\r\nContent-Type: application/octet-stream\r\nDate: Sun, 06 Dec 2026 21:40:10 GMT\r\n\r\n0123456789abcdef"
	tmpl := &http.Request{}
	run := func(name, raw string, f func(br *bufio.Reader) (io.Reader, error)) {
		b.Run(name, func(b *testing.B) {
			rd := strings.NewReader(raw)
			br := bufio.NewReader(rd)
			b.ReportAllocs()
			for b.Loop() {
				rd.Reset(raw)
				br.Reset(rd)
				body, err := f(br)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, body)
			}
		})
	}
	var p Parser
	run("request/net-http", req, func(br *bufio.Reader) (io.Reader, error) {
		r, err := http.ReadRequest(br)
		if err != nil {
			return nil, err
		}
		return r.Body, nil
	})
	run("request/h1", req, func(br *bufio.Reader) (io.Reader, error) {
		r, err := p.ReadRequest(br, tmpl)
		if err != nil {
			return nil, err
		}
		return r.Body, nil
	})
	run("response/net-http", resp, func(br *bufio.Reader) (io.Reader, error) {
		r, err := http.ReadResponse(br, nil)
		if err != nil {
			return nil, err
		}
		return r.Body, nil
	})
	run("response/h1", resp, func(br *bufio.Reader) (io.Reader, error) {
		r, err := p.ReadResponse(br, "GET")
		if err != nil {
			return nil, err
		}
		return r.Body, nil
	})
}

// originForm must fill a URL exactly as url.ParseRequestURI does, or step
// aside.
func TestOriginFormMatchesURL(t *testing.T) {
	for _, target := range []string{"/", "/a/b.c-d_e~f", "//x", "/p?", "/p?a=1&b", "/p?a?", "/p??", "/p?a?b", "/p?#f",
		"/%41", "/a%2Fb", "/a b", "/a;b", "/a:b@c!$&'()*+,=", "/é", "/a#b", "*", "http://h/p", "/p?q=%zz"} {
		var u url.URL
		want, err := url.ParseRequestURI(target)
		if !originForm(target, &u) {
			continue
		}
		if err != nil {
			t.Errorf("%q: originForm took a target url refuses (%v)", target, err)
			continue
		}
		if u != *want {
			t.Errorf("%q: %#v, url.ParseRequestURI %#v", target, u, *want)
		}
	}
}

func FuzzOriginForm(f *testing.F) {
	for _, s := range []string{"/", "/a?b", "/p?", "/a%2F", "//x?y?"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		var u url.URL
		if !originForm(target, &u) {
			return
		}
		want, err := url.ParseRequestURI(target)
		if err != nil || u != *want {
			t.Fatalf("%q: %#v, url.ParseRequestURI %#v (%v)", target, u, want, err)
		}
	})
}

// A request's header map is the parser's, emptied for the next request:
// nothing of one request may show in the next.
func TestRequestHeaderReused(t *testing.T) {
	raw := "GET /1 HTTP/1.1\r\nHost: a\r\nX-One: 1\r\nVia: a\r\nVia: b\r\n\r\n" +
		"GET /2 HTTP/1.1\r\nHost: b\r\nX-Two: 2\r\n\r\n"
	br := bufio.NewReader(strings.NewReader(raw))
	var p Parser
	first, err := p.ReadRequest(br, &http.Request{})
	if err != nil {
		t.Fatal(err)
	}
	if got := first.Header.Values("Via"); !slices.Equal(got, []string{"a", "b"}) || first.Header.Get("X-One") != "1" {
		t.Fatalf("first request's header %v", first.Header)
	}
	kept := first.Header.Clone()
	second, err := p.ReadRequest(br, &http.Request{})
	if err != nil {
		t.Fatal(err)
	}
	if len(second.Header) != 1 || second.Header.Get("X-Two") != "2" || second.Host != "b" {
		t.Errorf("second request's header %v (host %q), want X-Two alone", second.Header, second.Host)
	}
	if kept.Get("X-One") != "1" || len(kept["Via"]) != 2 {
		t.Errorf("a clone taken before the next request changed: %v", kept)
	}
}

// A name repeated up to the field limit costs work in proportion to the
// fields, not to their square (it was gathered again at every repeat).
func TestRepeatedFieldsLinear(t *testing.T) {
	head := "GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("A: a\r\n", maxFields-2) + "\r\n"
	var p Parser
	var req *http.Request
	allocs := testing.AllocsPerRun(20, func() {
		var err error
		if req, err = p.ReadRequest(bufio.NewReaderSize(strings.NewReader(head), 4096), &http.Request{}); err != nil {
			t.Fatal(err)
		}
	})
	if got := len(req.Header["A"]); got != maxFields-2 {
		t.Fatalf("%d values of A, want %d", got, maxFields-2)
	}
	if allocs > 40 {
		t.Errorf("%.0f allocations for %d repeats of one name", allocs, maxFields-2)
	}
}

// A response with both Transfer-Encoding and Content-Length: chunked
// wins, as in net/http, and the connection is not used again (RFC 9112
// 6.1: it "ought to be handled as an error"; net/http keeps it).
func TestReadResponseChunkedAndLengthCloses(t *testing.T) {
	var p Parser
	resp, err := p.ReadResponse(bufio.NewReader(strings.NewReader("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n2\r\nok\r\n0\r\n\r\n")), "GET")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != "ok" || !resp.Close || resp.Header.Get("Content-Length") != "" {
		t.Errorf("body %q (%v), close %v, Content-Length %q; want \"ok\", close, no length", b, err, resp.Close, resp.Header.Get("Content-Length"))
	}
}

// readAllRequests reads pipelined requests from raw until an error (at
// most 8), each one as its method, target and body.
func readAllRequests(raw string, read func(*bufio.Reader) (*http.Request, error)) (msgs []string, err error) {
	br := bufio.NewReaderSize(strings.NewReader(raw), 4096)
	for len(msgs) < 8 {
		req, rerr := read(br)
		if rerr != nil {
			return msgs, rerr
		}
		b, berr := io.ReadAll(req.Body)
		if berr != nil {
			return msgs, berr
		}
		msgs = append(msgs, req.Method+" "+req.RequestURI+" "+strconv.Quote(string(b)))
	}
	return msgs, nil
}

// The parser never panics, and where it and net/http both take a run of
// pipelined requests they cut it at the same places (no request the
// waypoint reads as one thing that a server after it reads as another).
func FuzzReadRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /y HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: v\r\n\r\nGET / HTTP/1.0\r\n\r\n",
		"POST /x HTTP/1.1\nHost: h\nContent-Length: 1\n\nxGET / HTTP/1.1\r\nHost: h\r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		var p Parser
		ours, _ := readAllRequests(raw, func(br *bufio.Reader) (*http.Request, error) { return p.ReadRequest(br, &http.Request{}) })
		std, _ := readAllRequests(raw, http.ReadRequest)
		n := min(len(ours), len(std))
		if !slices.Equal(ours[:n], std[:n]) {
			t.Fatalf("%q: ours %q, net/http %q", raw, ours, std)
		}
	})
}

// The same for responses to GET: where both parsers take a run of
// responses they cut it at the same places (a response read one byte too
// short or too long would be the next request's answer).
func FuzzReadResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.0 200 OK\r\n\r\nrest",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add(s)
	}
	read := func(raw string, next func(*bufio.Reader) (*http.Response, error)) (msgs []string) {
		br := bufio.NewReaderSize(strings.NewReader(raw), 4096)
		for len(msgs) < 8 {
			resp, err := next(br)
			if err != nil {
				return msgs
			}
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return msgs
			}
			msgs = append(msgs, resp.Status+" "+strconv.Quote(string(b)))
		}
		return msgs
	}
	f.Fuzz(func(t *testing.T, raw string) {
		var p Parser
		ours := read(raw, func(br *bufio.Reader) (*http.Response, error) { return p.ReadResponse(br, "GET") })
		std := read(raw, func(br *bufio.Reader) (*http.Response, error) {
			return http.ReadResponse(br, &http.Request{Method: "GET"})
		})
		n := min(len(ours), len(std))
		if !slices.Equal(ours[:n], std[:n]) {
			t.Fatalf("%q: ours %q, net/http %q", raw, ours, std)
		}
	})
}

// An absolute-form target's scheme must be http or https, as Envoy's
// codec requires; any other is a 400, not a request for that scheme.
func TestAbsoluteFormSchemeMustBeHTTP(t *testing.T) {
	for target, ok := range map[string]bool{
		"http://svc/a":    true,
		"HTTPS://svc/a":   true,
		"/a":              true,
		"ftp://svc/a":     false,
		"javascript:x":    false,
		"gopher://svc:70": false,
	} {
		var p Parser
		br := bufio.NewReader(strings.NewReader("GET " + target + " HTTP/1.1\r\nHost: svc\r\n\r\n"))
		_, err := p.ReadRequest(br, &http.Request{})
		var pe *ParseError
		switch {
		case ok && err != nil:
			t.Errorf("%s: %v, want accepted", target, err)
		case !ok && (!errors.As(err, &pe) || pe.Status != http.StatusBadRequest):
			t.Errorf("%s: %v, want a 400", target, err)
		}
	}
}
