package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

func TestForwardBasic(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
	}{{"h1", Options{}}, {"net/http", Options{NetHTTPServer: true, NetHTTPUpstream: true}}} {
		t.Run(tc.name, func(t *testing.T) { testForwardBasic(t, tc.o) })
	}
}

func testForwardBasic(t *testing.T, o Options) {
	var seen http.Header
	var seenHost, seenURI string
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		seen, seenHost, seenURI = r.Header.Clone(), r.Host, r.RequestURI
		w.Header().Set("X-Backend", "1")
		io.WriteString(w, "hello "+r.Method)
	})
	te := newTestEngine(t, o)
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	c := client(te.addr("main"))
	code, body, resp := get(t, c, "http://svc.ns:80/a%2Fb/c?x=1&y", "X-Envoy-Retry-On", "5xx", "X-Envoy-Internal", "true",
		"Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "Tracestate", "a=b", "X-B3-Traceid", "abc", "B3", "abc-def-1")
	if code != 200 || body != "hello GET" || resp.Header.Get("X-Backend") != "1" {
		t.Fatalf("got %d %q %v", code, body, resp.Header)
	}
	if seenHost != "svc.ns:80" || seenURI != "/a%2Fb/c?x=1&y" {
		t.Errorf("upstream saw host %q uri %q", seenHost, seenURI)
	}
	// x-envoy-attempt-count only when the virtual host asks for it.
	for _, k := range []string{"X-Envoy-Retry-On", "X-Envoy-Internal", "X-Envoy-Attempt-Count"} {
		if seen.Get(k) != "" {
			t.Errorf("%s reached the upstream", k)
		}
	}
	for k, v := range map[string]string{"Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "Tracestate": "a=b",
		"X-B3-Traceid": "abc", "B3": "abc-def-1", "X-Forwarded-Proto": "http"} {
		if seen.Get(k) != v {
			t.Errorf("upstream %s = %q, want %q", k, seen.Get(k), v)
		}
	}
	if id := seen.Get("X-Request-Id"); len(id) != 36 || id[14] != '4' {
		t.Errorf("x-request-id %q is not a v4 UUID", id)
	}
	if _, ok := seen["User-Agent"]; ok && seen.Get("User-Agent") != "Go-http-client/1.1" {
		t.Errorf("user agent %q", seen.Get("User-Agent"))
	}
	log := te.access.String()
	if !strings.Contains(log, `"response_code":200`) || !strings.Contains(log, `"downstream_local_address":"10.96.0.10:80"`) || !strings.Contains(log, `"route_name":"to-c"`) {
		t.Errorf("access log: %s", log)
	}
}

func TestNoRoute404(t *testing.T) {
	te := newTestEngine(t, Options{})
	rt := &model.RouteTable{VirtualHosts: []*model.VirtualHost{{Domains: []string{"known"}, Routes: []*model.Route{fwd("c")}}}}
	te.apply(httpSnapshot(rt, false, &model.Cluster{Name: "c"}))
	code, _, resp := get(t, client(te.addr("main")), fmt.Sprintf("http://%s/", "unknown"))
	if code != 404 || resp.Header.Get("Server") != "istio-envoy" {
		t.Errorf("got %d, server %q", code, resp.Header.Get("Server"))
	}
	if !strings.Contains(te.access.String(), `"response_flags":"NR"`) {
		t.Errorf("access log: %s", te.access.String())
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
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n")
			}()
		}
	}()
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(netip.MustParseAddrPort(up.Addr().String()))}))
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
