package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

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
