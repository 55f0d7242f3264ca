package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// mirrorBackend answers with the request it saw, as headers.
func mirrorBackend(t *testing.T, name string) *model.Cluster {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Seen-Uri", r.RequestURI)
		w.Header().Set("X-Seen-Host", r.Host)
		for k, v := range r.Header {
			w.Header()["X-Seen-"+k] = v
		}
		w.Header().Set("X-Upstream-Resp", "u")
		io.WriteString(w, name)
	})
	return &model.Cluster{Name: name, Endpoints: endpoints(be)}
}

func TestRouteActions(t *testing.T) {
	v1, v2 := mirrorBackend(t, "v1"), mirrorBackend(t, "v2")
	rt := &model.RouteTable{
		Name:    "rt",
		Headers: model.HeaderOps{RequestAdd: []model.HeaderValue{{Name: "x-level", Value: "table"}}, ResponseAdd: []model.HeaderValue{{Name: "x-resp-level", Value: "table"}}},
		VirtualHosts: []*model.VirtualHost{
			{Name: "reviews", Domains: []string{"reviews", "reviews:9080"},
				Headers: model.HeaderOps{RequestAdd: []model.HeaderValue{{Name: "x-vh", Value: "1"}}, ResponseRemove: []string{"x-upstream-resp"}},
				Routes: []*model.Route{
					{Name: "jason", Match: model.RouteMatch{Prefix: "/", Headers: []model.HeaderMatch{{Name: "end-user", Value: &model.StringMatch{Exact: "jason", Kind: "exact"}}}},
						Forward: &model.ForwardAction{Cluster: "v2"}},
					{Name: "redirect", Match: model.RouteMatch{Path: "/old"}, Redirect: &model.RedirectAction{Path: "/new", Status: 302}},
					{Name: "https", Match: model.RouteMatch{Prefix: "/secure"}, Redirect: &model.RedirectAction{Scheme: "https", Host: "secure.example"}},
					{Name: "direct", Match: model.RouteMatch{Path: "/health"}, Direct: &model.DirectResponse{Status: 200, Body: []byte("healthy")},
						Headers: model.HeaderOps{ResponseAdd: []model.HeaderValue{{Name: "x-direct", Value: "yes"}}}},
					{Name: "teapot", Match: model.RouteMatch{Path: "/teapot"}, Direct: &model.DirectResponse{Status: 418}},
					{Name: "prefix-rewrite", Match: model.RouteMatch{Prefix: "/api/v1/"}, Forward: &model.ForwardAction{Cluster: "v1", PrefixRewrite: "/"}},
					{Name: "regex-rewrite", Match: model.RouteMatch{Regex: regexp.MustCompile(`/users/[0-9]+/profile`)},
						Forward: &model.ForwardAction{Cluster: "v1", RegexRewrite: &model.RegexRewrite{Pattern: regexp.MustCompile(`^/users/([0-9]+)/profile$`), Substitution: "/profile?user=${1}"}}},
					{Name: "host-rewrite", Match: model.RouteMatch{Prefix: "/host"}, Forward: &model.ForwardAction{Cluster: "v1", HostRewrite: "internal.svc"}},
					{Name: "auto-host", Match: model.RouteMatch{Prefix: "/auto"}, Forward: &model.ForwardAction{Cluster: "v1", AutoHostRewrite: true}},
					{Name: "headers", Match: model.RouteMatch{Prefix: "/headers"}, Forward: &model.ForwardAction{Cluster: "v1"},
						Headers: model.HeaderOps{
							RequestAdd:     []model.HeaderValue{{Name: "x-level", Value: "route"}, {Name: "x-route", Value: "r"}, {Name: "x-keep", Value: "ignored", AddIfAbsent: true}, {Name: "x-list", Value: "route", Append: true}},
							RequestRemove:  []string{"x-secret"},
							ResponseAdd:    []model.HeaderValue{{Name: "x-resp-level", Value: "route"}, {Name: "x-resp-route", Value: "r"}},
							ResponseRemove: []string{"x-seen-x-route"},
						}},
					{Name: "default", Match: model.RouteMatch{Prefix: "/"}, Forward: &model.ForwardAction{Cluster: "v1"}},
				}},
			{Name: "deny", Domains: []string{"forbidden"}, Routes: []*model.Route{{Name: "denied", Deny: &model.Deny{HTTPStatus: 403, Reason: "unsupported jwt rule"}}}},
		},
	}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(rt, false, v1, v2))
	c := client(te.addr("main"))

	t.Run("header match", func(t *testing.T) {
		if _, body, _ := get(t, c, "http://reviews:9080/", "End-User", "jason"); body != "v2" {
			t.Errorf("jason went to %s", body)
		}
		if _, body, _ := get(t, c, "http://reviews:9080/"); body != "v1" {
			t.Errorf("others went to %s", body)
		}
	})
	t.Run("no virtual host", func(t *testing.T) {
		if code, _, _ := get(t, c, "http://ratings/"); code != 404 {
			t.Errorf("unknown authority: %d", code)
		}
	})
	t.Run("redirect", func(t *testing.T) {
		code, _, resp := get(t, c, "http://reviews/old?q=1")
		if code != 302 || resp.Header.Get("Location") != "http://reviews/new?q=1" {
			t.Errorf("redirect: %d %q", code, resp.Header.Get("Location"))
		}
		code, _, resp = get(t, c, "http://reviews:9080/secure/x")
		if code != 301 || resp.Header.Get("Location") != "https://secure.example/secure/x" {
			t.Errorf("scheme redirect: %d %q", code, resp.Header.Get("Location"))
		}
	})
	t.Run("direct response", func(t *testing.T) {
		code, body, resp := get(t, c, "http://reviews/health")
		if code != 200 || body != "healthy" || resp.Header.Get("X-Direct") != "yes" || resp.Header.Get("X-Resp-Level") != "table" {
			t.Errorf("direct: %d %q %v", code, body, resp.Header)
		}
		if code, body, _ := get(t, c, "http://reviews/teapot"); code != 418 || body != "" {
			t.Errorf("direct without body: %d %q", code, body)
		}
	})
	t.Run("prefix rewrite", func(t *testing.T) {
		if _, _, resp := get(t, c, "http://reviews/api/v1/items?page=2"); resp.Header.Get("X-Seen-Uri") != "/items?page=2" {
			t.Errorf("upstream saw %q", resp.Header.Get("X-Seen-Uri"))
		}
	})
	t.Run("regex rewrite", func(t *testing.T) {
		if _, _, resp := get(t, c, "http://reviews/users/42/profile"); resp.Header.Get("X-Seen-Uri") != "/profile?user=42" {
			t.Errorf("upstream saw %q", resp.Header.Get("X-Seen-Uri"))
		}
	})
	t.Run("host rewrite", func(t *testing.T) {
		if _, _, resp := get(t, c, "http://reviews/host"); resp.Header.Get("X-Seen-Host") != "internal.svc" {
			t.Errorf("upstream saw host %q", resp.Header.Get("X-Seen-Host"))
		}
		// An endpoint without a hostname (istiod's EDS): Envoy leaves Host.
		_, _, resp := get(t, c, "http://reviews/auto")
		if h := resp.Header.Get("X-Seen-Host"); h != "reviews" {
			t.Errorf("auto host rewrite to an endpoint without a hostname: upstream saw %q", h)
		}
	})
	t.Run("header operations", func(t *testing.T) {
		_, _, resp := get(t, c, "http://reviews/headers", "X-Secret", "s", "X-Keep", "client", "X-List", "client")
		h := resp.Header
		want := map[string]string{
			"X-Seen-X-Level":  "table", // least specific wins
			"X-Seen-X-Vh":     "1",
			"X-Seen-X-Secret": "",
			"X-Seen-X-Keep":   "client",
			"X-Resp-Level":    "table",
			"X-Resp-Route":    "r",
			"X-Seen-X-Route":  "", // removed from the response by the route
			"X-Upstream-Resp": "", // removed by the virtual host
		}
		for k, v := range want {
			if h.Get(k) != v {
				t.Errorf("%s = %q, want %q", k, h.Get(k), v)
			}
		}
		if got := h.Values("X-Seen-X-List"); strings.Join(got, ",") != "client,route" {
			t.Errorf("appended header: %v", got)
		}
	})
	t.Run("deny route", func(t *testing.T) {
		if code, body, _ := get(t, c, "http://forbidden/"); code != 403 || body != "RBAC: access denied" {
			t.Errorf("deny: %d %q", code, body)
		}
		if !strings.Contains(te.log.String(), "unsupported jwt rule") {
			t.Error("deny reason not logged")
		}
	})
}

func TestWeightedClusters(t *testing.T) {
	a, b := mirrorBackend(t, "a"), mirrorBackend(t, "b")
	r := &model.Route{Name: "split", Forward: &model.ForwardAction{Weighted: &model.WeightedClusters{Total: 100, Clusters: []model.WeightedCluster{
		{Name: "a", Weight: 80, Headers: model.HeaderOps{RequestAdd: []model.HeaderValue{{Name: "x-canary", Value: "no"}}}},
		{Name: "b", Weight: 20, Headers: model.HeaderOps{RequestAdd: []model.HeaderValue{{Name: "x-canary", Value: "yes"}}}},
	}}}}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false, a, b))
	c := client(te.addr("main"))
	const n = 1000
	got := map[string]int{}
	for range n {
		_, body, resp := get(t, c, "http://x/")
		got[body]++
		if want := map[string]string{"a": "no", "b": "yes"}[body]; resp.Header.Get("X-Seen-X-Canary") != want {
			t.Fatalf("%s saw x-canary %q", body, resp.Header.Get("X-Seen-X-Canary"))
		}
	}
	// 20% of 1000: standard deviation ~13; 5 of them is far outside chance.
	if share := float64(got["b"]) / n; math.Abs(share-0.2) > 0.065 {
		t.Errorf("canary share %.3f, want 0.20 (%v)", share, got)
	}
}

func TestTimeoutIs504(t *testing.T) {
	slow := backend(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
		io.WriteString(w, "late")
	})
	r := &model.Route{Name: "t", Forward: &model.ForwardAction{Cluster: "c", Timeout: 100 * time.Millisecond}}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false, &model.Cluster{Name: "c", Endpoints: endpoints(slow)}))
	start := time.Now()
	code, body, _ := get(t, client(te.addr("main")), "http://x/")
	if code != 504 || body != "upstream request timeout" {
		t.Errorf("got %d %q", code, body)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("answered after %v", d)
	}
	if !strings.Contains(te.access.String(), `"response_flags":"UT"`) {
		t.Errorf("access log: %s", te.access.String())
	}
}

func TestUpstreamFailureFlags(t *testing.T) {
	dead := func() *model.Cluster {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		return &model.Cluster{Name: "dead", ConnectTimeout: time.Second, Endpoints: endpoints(mustAddrPort(addr))}
	}()
	resetter := func() *model.Cluster {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					bufio.NewReader(c).ReadString('\n')
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
				}()
			}
		}()
		return &model.Cluster{Name: "reset", Endpoints: endpoints(mustAddrPort(ln.Addr().String()))}
	}()
	sick := &model.Cluster{Name: "sick", Endpoints: [][]model.Endpoint{{{Address: mustAddrPort("127.0.0.1:1"), Healthy: false}}}}
	full := mirrorBackend(t, "full")
	full.Name, full.MaxRequests = "full", 1
	rt := oneRoute(
		&model.Route{Name: "dead", Match: model.RouteMatch{Prefix: "/dead"}, Forward: &model.ForwardAction{Cluster: "dead"}},
		&model.Route{Name: "reset", Match: model.RouteMatch{Prefix: "/reset"}, Forward: &model.ForwardAction{Cluster: "reset"}},
		&model.Route{Name: "sick", Match: model.RouteMatch{Prefix: "/sick"}, Forward: &model.ForwardAction{Cluster: "sick"}},
		&model.Route{Name: "none", Match: model.RouteMatch{Prefix: "/none"}, Forward: &model.ForwardAction{Cluster: "missing"}},
	)
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(rt, false, dead, resetter, sick, full))
	c := client(te.addr("main"))
	for _, tc := range []struct {
		path, flag string
		code       int
		body       string
	}{
		{"/dead", "UF", 503, bodyConnect},
		{"/reset", "UC", 503, bodyReset},
		{"/sick", "UH", 503, bodyNoHealthy},
		{"/none", "NC", 503, "cluster not found"},
	} {
		code, body, _ := get(t, c, "http://x"+tc.path)
		if code != tc.code || body != tc.body {
			t.Errorf("%s: %d %q", tc.path, code, body)
		}
		if !strings.Contains(te.access.String(), fmt.Sprintf(`"path":"%s","protocol":"HTTP/1.1","response_code":%d,"response_flags":"%s"`, tc.path, tc.code, tc.flag)) {
			t.Errorf("%s: flag %s not logged: %s", tc.path, tc.flag, te.access.String())
		}
	}
}

func TestCircuitBreakerUO(t *testing.T) {
	release := make(chan struct{})
	be := backend(t, func(w http.ResponseWriter, r *http.Request) { <-release; io.WriteString(w, "ok") })
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", MaxRequests: 1, Endpoints: endpoints(be)}))
	c := client(te.addr("main"))
	first := make(chan int)
	go func() {
		code, _, _ := get(t, c, "http://x/")
		first <- code
	}()
	eventually(t, "the first request in flight", func() bool { return te.ClusterStats()["c"].Requests == 1 })
	code, body, _ := get(t, c, "http://x/")
	close(release)
	if code != 503 || body != bodyOverflow {
		t.Errorf("over max_requests: %d %q", code, body)
	}
	if code := <-first; code != 200 {
		t.Errorf("the first request: %d", code)
	}
	if !strings.Contains(te.access.String(), `"response_flags":"UO"`) {
		t.Errorf("access log: %s", te.access.String())
	}
}

func TestCORS(t *testing.T) {
	be := mirrorBackend(t, "be")
	cors := &model.CORS{AllowOrigins: []model.StringMatch{{Exact: "https://app.example", Kind: "exact"}}, AllowMethods: "GET,PUT",
		AllowHeaders: "x-token", ExposeHeaders: "x-seen-uri", MaxAge: "86400"}
	r := fwd("be")
	r.PerFilter.CORS = cors
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false, be))
	c := client(te.addr("main"))
	req, _ := http.NewRequest("OPTIONS", "http://x/", nil)
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", "PUT")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "" || resp.Header.Get("Access-Control-Allow-Methods") != "GET,PUT" ||
		resp.Header.Get("Access-Control-Max-Age") != "86400" || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Errorf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	_, _, got := get(t, c, "http://x/", "Origin", "https://app.example")
	if got.Header.Get("X-Backend") != "be" || got.Header.Get("Access-Control-Allow-Origin") != "https://app.example" || got.Header.Get("Access-Control-Expose-Headers") != "x-seen-uri" {
		t.Errorf("actual request: %v", got.Header)
	}
	_, _, got = get(t, c, "http://x/", "Origin", "https://evil.example")
	if got.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("origin not allowed got CORS headers: %v", got.Header)
	}
}

func TestFaultInjection(t *testing.T) {
	be := mirrorBackend(t, "be")
	abort := fwd("be")
	abort.Match = model.RouteMatch{Prefix: "/abort"}
	abort.PerFilter.Fault = &model.Fault{AbortHTTPStatus: 503, AbortPercent: 50}
	delay := fwd("be")
	delay.Match = model.RouteMatch{Prefix: "/delay"}
	delay.PerFilter.Fault = &model.Fault{Delay: 150 * time.Millisecond, DelayPercent: 100}
	grpcAbort := fwd("be")
	grpcAbort.Match = model.RouteMatch{Prefix: "/grpc"}
	grpcAbort.PerFilter.Fault = &model.Fault{AbortGRPCStatus: ptr(14), AbortPercent: 100}
	off := fwd("be")
	off.Match = model.RouteMatch{Prefix: "/off"}
	off.PerFilter.Fault = &model.Fault{AbortHTTPStatus: 500, AbortPercent: 100}
	off.PerFilter.Disabled = map[string]bool{"envoy.filters.http.fault": true}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(abort, delay, grpcAbort, off), false, be))
	c := client(te.addr("main"))

	const n = 400
	aborted := 0
	for range n {
		code, body, _ := get(t, c, "http://x/abort")
		if code == 503 {
			aborted++
			if body != "fault filter abort" {
				t.Fatalf("abort body %q", body)
			}
		}
	}
	if share := float64(aborted) / n; math.Abs(share-0.5) > 0.1 {
		t.Errorf("aborted %.2f of requests, want 0.5", share)
	}
	start := time.Now()
	if code, _, _ := get(t, c, "http://x/delay"); code != 200 || time.Since(start) < 140*time.Millisecond {
		t.Errorf("delay: %d after %v", code, time.Since(start))
	}
	code, _, resp := get(t, c, "http://x/grpc", "Content-Type", "application/grpc")
	if code != 200 || resp.Header.Get("Grpc-Status") != "14" || resp.Header.Get("Grpc-Message") != "fault filter abort" {
		t.Errorf("gRPC abort: %d %v", code, resp.Header)
	}
	if code, body, _ := get(t, c, "http://x/off"); code != 200 || body != "be" {
		t.Errorf("fault disabled on the route: %d %q", code, body)
	}
	log := te.access.String()
	if !strings.Contains(log, `"response_flags":"FI"`) || !strings.Contains(log, `"response_flags":"DI"`) {
		t.Errorf("flags FI/DI missing from the access log")
	}
}

func TestLocalReplyToGRPCRequest(t *testing.T) {
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(&model.RouteTable{VirtualHosts: []*model.VirtualHost{{Domains: []string{"known"}}}}, false))
	code, _, resp := get(t, client(te.addr("main")), "http://unknown/pkg.Svc/Method", "Content-Type", "application/grpc")
	if code != 200 || resp.Header.Get("Grpc-Status") != "12" {
		t.Errorf("NR to a gRPC client: %d grpc-status %q (want 200 with UNIMPLEMENTED)", code, resp.Header.Get("Grpc-Status"))
	}
}

func TestUpgradeIsAByteStream(t *testing.T) {
	// An upstream that switches protocols and echoes in upper case.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil || req.Header.Get("Upgrade") != "echo" {
					io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
					return
				}
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
				buf := make([]byte, 1024)
				for {
					n, err := br.Read(buf)
					if n > 0 {
						c.Write([]byte(strings.ToUpper(string(buf[:n]))))
					}
					if err != nil {
						c.(*net.TCPConn).CloseWrite()
						return
					}
				}
			}()
		}
	}()
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("ws")), false, &model.Cluster{Name: "ws", Endpoints: endpoints(mustAddrPort(ln.Addr().String()))}))
	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	head := "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
	io.WriteString(conn, head)
	// Everything the waypoint sends, for the sizes it reports.
	var raw bytes.Buffer
	br := bufio.NewReader(io.TeeReader(conn, &raw))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "echo" {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	for _, msg := range []string{"hello", "world"} {
		io.WriteString(conn, msg)
		buf := make([]byte, len(msg))
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.ReadFull(br, buf); err != nil || string(buf) != strings.ToUpper(msg) {
			t.Fatalf("echo of %q: %q %v", msg, buf, err)
		}
	}
	conn.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after half-close: %q %v", rest, err)
	}
	// Istio's sizes of an upgraded stream are all its bytes each way, the
	// heads included (Envoy's downstream bytes meter).
	text := ""
	eventually(t, "the stream counted", func() bool {
		text = metricsText(t, te)
		// Each histogram is observed in turn: both counts, then the sums.
		return strings.HasSuffix(grep(text, "istio_request_bytes_count"), "} 1") && strings.HasSuffix(grep(text, "istio_response_bytes_count"), "} 1")
	})
	if got, want := grep(text, "istio_request_bytes_sum"), fmt.Sprintf("} %d", len(head)+len("helloworld")); !strings.HasSuffix(got, want) {
		t.Errorf("request bytes %s, want %s", got, want)
	}
	if got, want := grep(text, "istio_response_bytes_sum"), fmt.Sprintf("} %d", raw.Len()); !strings.HasSuffix(got, want) {
		t.Errorf("response bytes %s, want %s", got, want)
	}
}

func TestH2CDownstreamAndUpstream(t *testing.T) {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Up-Proto", r.Proto)
		w.Write(b)
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Protocol: "downstream", Endpoints: endpoints(srv)}))
	for _, tc := range []struct {
		c        *http.Client
		down, up string
	}{
		{h2client(te.addr("main")), "HTTP/2.0", "HTTP/2.0"},
		{client(te.addr("main")), "HTTP/1.1", ""},
	} {
		req, _ := http.NewRequest("POST", "http://x/", strings.NewReader("ping"))
		resp, err := tc.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if tc.up == "" {
			// An h2c-only upstream cannot speak HTTP/1.1: "downstream"
			// means the client's protocol, so this fails upstream.
			if resp.StatusCode != 503 {
				t.Errorf("HTTP/1.1 client to an h2c-only upstream: %d", resp.StatusCode)
			}
			continue
		}
		if resp.Proto != tc.down || resp.Header.Get("X-Up-Proto") != tc.up || string(b) != "ping" {
			t.Errorf("down %s up %s body %q", resp.Proto, resp.Header.Get("X-Up-Proto"), b)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestGRPCTimeoutHeader(t *testing.T) {
	slow := backend(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
		w.Header().Set("Grpc-Status", "0")
	})
	honour := fwd("c")
	honour.Match.Prefix = "/honour"
	honour.Forward.Timeout = 5 * time.Second
	honour.Forward.MaxGRPCTimeout = ptr(time.Duration(0)) // no cap
	capped := fwd("c")
	capped.Match.Prefix = "/capped"
	capped.Forward.MaxGRPCTimeout = ptr(100 * time.Millisecond)
	ignore := fwd("c")
	ignore.Match.Prefix = "/ignore"
	ignore.Forward.Timeout = 150 * time.Millisecond
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(honour, capped, ignore), false, &model.Cluster{Name: "c", Endpoints: endpoints(slow)}))
	c := client(te.addr("main"))
	for _, tc := range []struct {
		path, timeout string
		max           time.Duration
	}{
		{"/honour", "100m", time.Second},              // grpc-timeout 100 ms replaces the route's 5 s
		{"/capped", "10S", time.Second},               // 10 s capped to 100 ms
		{"/ignore", "10S", time.Second},               // not honoured: the route's 150 ms
		{"/capped", "50000u", 500 * time.Millisecond}, // 50 ms, under the cap
	} {
		start := time.Now()
		code, _, resp := get(t, c, "http://x"+tc.path, "Content-Type", "application/grpc", "Grpc-Timeout", tc.timeout)
		if d := time.Since(start); code != 200 || resp.Header.Get("Grpc-Status") != "14" || d > tc.max {
			t.Errorf("%s with grpc-timeout %s: %d grpc-status %q after %v", tc.path, tc.timeout, code, resp.Header.Get("Grpc-Status"), d)
		}
	}
}

func TestClientGoneIsDC(t *testing.T) {
	entered := make(chan struct{}, 1)
	slow := backend(t, func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(slow)}))
	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	<-entered
	start := time.Now()
	conn.Close()
	eventually(t, "the request logged", func() bool { return strings.Contains(te.access.String(), `"response_flags":"DC"`) })
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("noticed the client leaving after %v", d)
	}
	eventually(t, "the upstream request released", func() bool { return te.ClusterStats()["c"].Requests == 0 })
}

func TestOriginalDestinationCluster(t *testing.T) {
	// Direct-to-pod chains connect where the client dialled: the PROXY
	// header's destination.
	pod := echoBackend(t, "pod")
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("passthrough")), false, &model.Cluster{Name: "passthrough", Kind: "original_dst"}))
	c := &http.Client{Transport: &http.Transport{DialContext: dialer(te.addr("main"), clientAddr, pod)}, Timeout: 5 * time.Second}
	if code, body, _ := get(t, c, "http://pod.ns:8080/"); code != 200 || body != "pod" {
		t.Errorf("original_dst: %d %q", code, body)
	}
	if !strings.Contains(te.access.String(), `"upstream_host":"`+pod.String()+`"`) {
		t.Errorf("access log: %s", te.access.String())
	}
}

func TestStreamIdleTimeout(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/silent":
			time.Sleep(time.Second)
		case "/stalls":
			io.WriteString(w, "first")
			w.(http.Flusher).Flush()
			time.Sleep(time.Second)
			io.WriteString(w, "late")
		case "/trickle":
			for range 8 {
				io.WriteString(w, ".")
				w.(http.Flusher).Flush()
				time.Sleep(40 * time.Millisecond)
			}
		}
	})
	s := httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)})
	s.Listeners[0].Chains["http"].HTTP.StreamIdleTimeout = 150 * time.Millisecond
	te := newTestEngine(t, Options{})
	te.apply(s)
	c := client(te.addr("main"))
	if code, body, _ := get(t, c, "http://x/silent"); code != 408 || body != "stream timeout" {
		t.Errorf("silent upstream: %d %q", code, body)
	}
	resp, err := c.Get("http://x/stalls")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "first" || err == nil {
		t.Errorf("upstream stalling mid-body: %d %q %v (want the stream cut)", resp.StatusCode, b, err)
	}
	if code, body, _ := get(t, c, "http://x/trickle"); code != 200 || body != "........" {
		t.Errorf("a slow but steady stream: %d %q", code, body)
	}
	eventually(t, "SI logged twice", func() bool { return strings.Count(te.access.String(), `"response_flags":"SI"`) == 2 })
}

func TestRequestTimeout(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	s := httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)})
	s.Listeners[0].Chains["http"].HTTP.RequestTimeout = 150 * time.Millisecond
	te := newTestEngine(t, Options{})
	te.apply(s)
	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Ten bytes announced, three sent, then nothing.
	io.WriteString(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 408 || string(b) != "request timeout" {
		t.Errorf("request not in whole: %d %q", resp.StatusCode, b)
	}
	// A whole request is not subject to it, however slow its answer.
	if code, body, _ := get(t, client(te.addr("main")), "http://x/"); code != 200 || body != "" {
		t.Errorf("complete request: %d %q", code, body)
	}
}

// With normalize_path and merge_slashes (istiod sets the first on every
// waypoint chain) a request is routed and forwarded on its normalized
// path: "/public/../admin" is an /admin request, never a /public one.
func TestNormalizedPathRouting(t *testing.T) {
	admin, public := mirrorBackend(t, "admin"), mirrorBackend(t, "public")
	snap := httpSnapshot(oneRoute(
		&model.Route{Name: "admin", Match: model.RouteMatch{Prefix: "/admin"}, Forward: &model.ForwardAction{Cluster: "admin"}},
		&model.Route{Name: "public", Match: model.RouteMatch{Prefix: "/public"}, Forward: &model.ForwardAction{Cluster: "public"}},
	), false, admin, public)
	checkNormalizedRouting(t, snap, []routedPath{
		{"/public/../admin/x", "admin", "/admin/x"},
		{"/public/%2e%2e/admin", "admin", "/admin"},
		{"//public///x?y=1", "public", "/public/x?y=1"},
		{"/%61dmin", "admin", "/admin"},
	})
}

// Envoy's path_with_escaped_slashes_action: %2F and %5C in the path are
// kept, refused, redirected to or forwarded unescaped.
func TestEscapedSlashesAction(t *testing.T) {
	var seen atomic.Value
	seen.Store("")
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.RequestURI)
		io.WriteString(w, "ok")
	})
	for _, tc := range []struct {
		action, wantURI, wantLocation string
		wantCode                      int
	}{
		{"", "/a%2Fb?q=%2F", "", 200},
		{"reject", "", "", 400},
		{"redirect", "", "/a/b?q=%2F", 307},
		{"forward", "/a/b?q=%2F", "", 200},
	} {
		snap := httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)})
		snap.Listeners[0].Chains["http"].HTTP.EscapedSlashes = tc.action
		te := newTestEngine(t, Options{})
		te.apply(snap)
		seen.Store("")
		code, _, resp := get(t, client(te.addr("main")), "http://x/a%2Fb?q=%2F")
		if code != tc.wantCode || seen.Load() != tc.wantURI || resp.Header.Get("Location") != tc.wantLocation {
			t.Errorf("action %q: %d, upstream saw %q, Location %q; want %d, %q, %q", tc.action, code, seen.Load(), resp.Header.Get("Location"), tc.wantCode, tc.wantURI, tc.wantLocation)
		}
	}
}

// A route whose cluster is not there answers the route's
// cluster-not-found status (istiod: 500), else 503, flagged NC.
func TestClusterNotFoundStatus(t *testing.T) {
	for status, want := range map[int]int{0: 503, 500: 500} {
		r := fwd("missing")
		r.Forward.ClusterNotFoundStatus = status
		te := newTestEngine(t, Options{})
		te.apply(httpSnapshot(oneRoute(r), false))
		if code, _, _ := get(t, client(te.addr("main")), "http://x/"); code != want {
			t.Errorf("cluster_not_found status %d: got %d, want %d", status, code, want)
		}
		eventually(t, "NC logged", func() bool { return strings.Contains(te.access.String(), `"response_flags":"NC"`) })
	}
}

// A filter the connection manager disables runs only where the most
// specific level naming it (route, then virtual host) enables it.
func TestFilterDisabledByDefault(t *testing.T) {
	be := mirrorBackend(t, "be")
	const fault = "envoy.filters.http.fault"
	on := fwd("be")
	on.Match = model.RouteMatch{Prefix: "/on"}
	on.PerFilter.Enabled = map[string]bool{fault: true}
	plain := fwd("be")
	plain.Match = model.RouteMatch{Prefix: "/plain"}
	offHere := fwd("be")
	offHere.Match = model.RouteMatch{Prefix: "/vhon-routeoff"}
	offHere.PerFilter.Disabled = map[string]bool{fault: true}
	rt := oneRoute(on, plain)
	vhOn := &model.VirtualHost{Name: "vhon", Domains: []string{"vhon"}, Routes: []*model.Route{offHere, fwd("be")},
		PerFilter: model.PerFilterConfig{Enabled: map[string]bool{fault: true}}}
	rt.VirtualHosts = append([]*model.VirtualHost{vhOn}, rt.VirtualHosts...)
	snap := httpSnapshot(rt, false, be)
	hcm := snap.Listeners[0].Chains["http"].HTTP
	hcm.Filters[0] = model.HTTPFilter{Name: fault, Off: true, Fault: &model.Fault{AbortHTTPStatus: 418, AbortPercent: 100}}
	te := newTestEngine(t, Options{})
	te.apply(snap)
	c := client(te.addr("main"))
	for url, want := range map[string]int{
		"http://x/on": 418, "http://x/plain": 200, "http://vhon/any": 418, "http://vhon/vhon-routeoff": 200,
	} {
		if code, _, _ := get(t, c, url); code != want {
			t.Errorf("%s: %d, want %d", url, code, want)
		}
	}
}

// A route table's own typed_per_filter_config is the least specific
// level: it configures the fault filter for every route, a virtual host's
// or a route's own config replaces it, and it enables a filter the
// connection manager turns off.
func TestRouteTablePerFilter(t *testing.T) {
	be := mirrorBackend(t, "be")
	const fault = "envoy.filters.http.fault"
	abort := func(code int) *model.Fault { return &model.Fault{AbortHTTPStatus: code, AbortPercent: 100} }
	plain := fwd("be")
	plain.Match = model.RouteMatch{Prefix: "/plain"}
	own := fwd("be")
	own.Match = model.RouteMatch{Prefix: "/own"}
	own.PerFilter.Fault = abort(429)
	off := fwd("be")
	off.Match = model.RouteMatch{Prefix: "/off"}
	off.PerFilter.Disabled = map[string]bool{fault: true}
	rt := oneRoute(plain, own, off)
	rt.VirtualHosts = append([]*model.VirtualHost{{Name: "vhb", Domains: []string{"vhb"}, Routes: []*model.Route{fwd("be")},
		PerFilter: model.PerFilterConfig{Fault: abort(503)}}}, rt.VirtualHosts...)
	rt.PerFilter = model.PerFilterConfig{Fault: abort(418), Enabled: map[string]bool{fault: true}}
	snap := httpSnapshot(rt, false, be)
	hcm := snap.Listeners[0].Chains["http"].HTTP
	hcm.Filters[0] = model.HTTPFilter{Name: fault, Off: true, Fault: &model.Fault{}}
	te := newTestEngine(t, Options{})
	te.apply(snap)
	c := client(te.addr("main"))
	for url, want := range map[string]int{
		"http://x/plain": 418, "http://x/own": 429, "http://x/off": 200, "http://vhb/any": 503,
	} {
		if code, _, _ := get(t, c, url); code != want {
			t.Errorf("%s: %d, want %d", url, code, want)
		}
	}
}

func TestHeaderValueOperatorsFilledIn(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s|%s|%s|%v", r.Header.Get("X-Real-Ip"), r.Header.Get("X-Dst"), r.Header.Get("X-Ua"), r.Header["X-None"])
	})
	r := fwd("c")
	r.Headers = model.HeaderOps{
		RequestAdd: []model.HeaderValue{
			{Name: "x-real-ip", Value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
			{Name: "x-dst", Value: "%DOWNSTREAM_LOCAL_ADDRESS%"},
			{Name: "x-ua", Value: "ua=%REQ(user-agent)%"},
			{Name: "x-none", Value: "%REQ(x-missing)%"},
		},
		ResponseAdd: []model.HeaderValue{{Name: "x-proto", Value: "%PROTOCOL%"}},
	}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	code, body, resp := get(t, client(te.addr("main")), "http://x/", "User-Agent", "tester")
	// The PROXY header's source and destination (the client and the
	// original destination), as Envoy's proxy_protocol filter makes them.
	if want := "10.0.0.9|10.96.0.10:80|ua=tester|[]"; code != 200 || body != want {
		t.Errorf("got %d %q, want %q", code, body, want)
	}
	if p := resp.Header.Get("X-Proto"); p != "HTTP/1.1" {
		t.Errorf("x-proto %q", p)
	}
	// Without use_remote_address (istiod's waypoint) the stream's client
	// is X-Forwarded-For's last address, as Envoy's HCM sets it.
	if _, body, _ := get(t, client(te.addr("main")), "http://x/", "X-Forwarded-For", "203.0.113.1, 203.0.113.7"); !strings.HasPrefix(body, "203.0.113.7|") {
		t.Errorf("with x-forwarded-for: %q", body)
	}
	if _, body, _ := get(t, client(te.addr("main")), "http://x/", "X-Forwarded-For", "unknown"); !strings.HasPrefix(body, "10.0.0.9|") {
		t.Errorf("with an x-forwarded-for that is no address: %q", body)
	}
}

func TestEnvoyRouterHeaders(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s|%s|%s", r.URL.Path, r.Header.Get("X-Envoy-Original-Path"), r.Header.Get("X-Envoy-Expected-Rq-Timeout-Ms"))
	})
	rewrite := &model.Route{Name: "rw", Match: model.RouteMatch{Prefix: "/old/"}, Forward: &model.ForwardAction{Cluster: "c", PrefixRewrite: "/new/"}}
	timed := &model.Route{Name: "timed", Match: model.RouteMatch{Prefix: "/timed"}, Forward: &model.ForwardAction{Cluster: "c", Timeout: 5 * time.Second}}
	perTry := &model.Route{Name: "per-try", Match: model.RouteMatch{Prefix: "/try"}, Forward: &model.ForwardAction{Cluster: "c", Timeout: 5 * time.Second,
		Retry: &model.RetryPolicy{On: map[string]bool{"5xx": true}, NumRetries: 1, PerTryTimeout: 300 * time.Millisecond}}}
	direct := &model.Route{Name: "direct", Match: model.RouteMatch{Path: "/direct"}, Direct: &model.DirectResponse{Status: 200, Body: []byte("d")}}
	for _, suppress := range []bool{false, true} {
		snap := httpSnapshot(oneRoute(rewrite, timed, perTry, direct, fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)})
		snap.Listeners[0].Chains["http"].HTTP.SuppressEnvoyHeaders = suppress
		te := newTestEngine(t, Options{})
		te.apply(snap)
		c := client(te.addr("main"))

		code, body, resp := get(t, c, "http://x/old/a?q=1")
		want := "/new/a|/old/a?q=1|"
		if suppress {
			want = "/new/a||"
		}
		if code != 200 || body != want {
			t.Errorf("suppress=%v rewrite: %d %q, want %q", suppress, code, body, want)
		}
		st := resp.Header.Get("X-Envoy-Upstream-Service-Time")
		if _, err := strconv.Atoi(st); (err != nil) != suppress {
			t.Errorf("suppress=%v: x-envoy-upstream-service-time %q", suppress, st)
		}
		_, body, _ = get(t, c, "http://x/timed", "X-Envoy-Expected-Rq-Timeout-Ms", "1")
		if ms, _ := strconv.Atoi(strings.Split(body, "|")[2]); suppress && ms != 0 || !suppress && (ms < 4000 || ms > 5000) {
			t.Errorf("suppress=%v route timeout: %q", suppress, body)
		}
		if _, body, _ = get(t, c, "http://x/try"); !suppress && !strings.HasSuffix(body, "|300") {
			t.Errorf("per-try timeout: %q", body)
		}
		if _, body, _ = get(t, c, "http://x/plain"); !strings.HasSuffix(body, "||") {
			t.Errorf("no timeout, no header: %q", body)
		}
		// A local reply did not come from an endpoint.
		if _, _, resp := get(t, c, "http://x/direct"); resp.Header.Get("X-Envoy-Upstream-Service-Time") != "" {
			t.Errorf("a direct response with an upstream service time")
		}
	}
}

// Envoy's router counts the expected timeout from the complete request
// (its route timer starts then), not from the request's arrival: time
// spent before the router (a fault filter's delay) is not taken off.
func TestExpectedTimeoutAfterFaultDelay(t *testing.T) {
	be := mirrorBackend(t, "be")
	r := fwd("be")
	r.Forward.Timeout = 2 * time.Second
	r.PerFilter.Fault = &model.Fault{Delay: 400 * time.Millisecond, DelayPercent: 100}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false, be))
	code, _, resp := get(t, client(te.addr("main")), "http://x/")
	ms, err := strconv.Atoi(resp.Header.Get("X-Seen-X-Envoy-Expected-Rq-Timeout-Ms"))
	if code != 200 || err != nil || ms < 1900 || ms > 2000 {
		t.Errorf("%d: x-envoy-expected-rq-timeout-ms %d (%v), want 2000 (the route timeout, all of it left)", code, ms, err)
	}
}

// x-envoy-upstream-service-time is Envoy's time from the complete request
// to the endpoint's response headers, and is not sent when the endpoint
// answered before the request was complete.
func TestUpstreamServiceTimeFromCompleteRequest(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/early" {
			http.NewResponseController(w).EnableFullDuplex()
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
		}
		io.Copy(io.Discard, r.Body)
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	c := client(te.addr("main"))

	// A slow upload: the time it takes is the client's, not the endpoint's.
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte("a"))
		time.Sleep(500 * time.Millisecond)
		pw.Write([]byte("b"))
		pw.Close()
	}()
	resp, err := c.Post("http://x/slow", "text/plain", pr)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	st, err := strconv.Atoi(resp.Header.Get("X-Envoy-Upstream-Service-Time"))
	if err != nil || st >= 400 {
		t.Errorf("slow upload: x-envoy-upstream-service-time %d (%v), want the endpoint's time after the body came in", st, err)
	}

	// An answer before the request is complete: no service time.
	pr, pw = io.Pipe()
	defer pw.Close()
	go pw.Write([]byte("a"))
	resp, err = c.Post("http://x/early", "text/plain", pr)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := resp.Header["X-Envoy-Upstream-Service-Time"]; ok {
		t.Errorf("early answer: x-envoy-upstream-service-time %v, want none", v)
	}
	pw.Close()
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// %REQ(:AUTHORITY)%, %REQ(:PATH)%, %REQ(:METHOD)% and %REQ(:SCHEME)% are Envoy's
// pseudo-headers: request header operations see the path before the
// route's rewrite (Envoy rewrites after them), response ones after it.
func TestHeaderValueOperatorsPseudoHeaders(t *testing.T) {
	be := mirrorBackend(t, "be")
	r := fwd("be")
	r.Match = model.RouteMatch{Prefix: "/old/"}
	r.Forward.PrefixRewrite = "/new/"
	r.Headers = model.HeaderOps{
		RequestAdd: []model.HeaderValue{
			{Name: "x-auth", Value: "%REQ(:AUTHORITY)%"},
			{Name: "x-path", Value: "%REQ(:PATH)%"},
			{Name: "x-method", Value: "%REQ(:METHOD)%"},
			{Name: "x-scheme", Value: "%REQ(:SCHEME)%"},
		},
		ResponseAdd: []model.HeaderValue{{Name: "x-path-resp", Value: "%REQ(:PATH)%"}},
	}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false, be))
	code, _, resp := get(t, client(te.addr("main")), "http://svc.ns:8080/old/a?q=1")
	h := resp.Header
	if code != 200 || h.Get("X-Seen-X-Auth") != "svc.ns:8080" || h.Get("X-Seen-X-Path") != "/old/a?q=1" || h.Get("X-Seen-X-Method") != "GET" ||
		h.Get("X-Seen-X-Scheme") != "http" {
		t.Errorf("%d: upstream saw x-auth %q x-path %q x-method %q x-scheme %q", code, h.Get("X-Seen-X-Auth"), h.Get("X-Seen-X-Path"),
			h.Get("X-Seen-X-Method"), h.Get("X-Seen-X-Scheme"))
	}
	if p := h.Get("X-Path-Resp"); p != "/new/a?q=1" {
		t.Errorf("response x-path-resp %q, want the rewritten path", p)
	}
}

// Envoy's HTTP/1 codec never ends an upgrade request (the stream goes on
// after the 101), so its router, which sends x-envoy-upstream-service-time
// only for a complete request, sends none with the 101.
func TestUpgradeWithoutUpstreamServiceTime(t *testing.T) {
	up := rawServer(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		io.Copy(io.Discard, c)
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("ws")), false, &model.Cluster{Name: "ws", Endpoints: endpoints(up)}))
	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if v, ok := resp.Header["X-Envoy-Upstream-Service-Time"]; ok {
		t.Errorf("101 with x-envoy-upstream-service-time %v", v)
	}
}

// Envoy computes the expected timeout in whole milliseconds: the time
// elapsed is truncated first, so a try sent within the first millisecond
// announces the route timeout exactly.
func TestExpectedTimeoutWholeMilliseconds(t *testing.T) {
	for _, c := range []struct {
		route, perTry, elapsed time.Duration
		want                   string
	}{
		{5 * time.Second, 0, 300 * time.Microsecond, "5000"},
		{5 * time.Second, 0, 1700 * time.Microsecond, "4999"},
		{5 * time.Second, 300 * time.Millisecond, 4800*time.Millisecond + 500*time.Microsecond, "200"},
		{5 * time.Second, 0, 6 * time.Second, "1"},
		{0, 300 * time.Millisecond, time.Second, "300"},
	} {
		if got := strconv.FormatInt(expectedTimeout(c.route, c.perTry, c.elapsed).Milliseconds(), 10); got != c.want {
			t.Errorf("route %v per try %v after %v: %q, want %q", c.route, c.perTry, c.elapsed, got, c.want)
		}
	}
}

// A grpc_status abort on a request that is not gRPC: Envoy's local reply
// is plain HTTP with the abort's HTTP code (200) and its text, no
// grpc-status (the gRPC form is only for gRPC requests).
func TestFaultGRPCAbortOnPlainHTTP(t *testing.T) {
	be := mirrorBackend(t, "be")
	r := fwd("be")
	r.PerFilter.Fault = &model.Fault{AbortGRPCStatus: ptr(14), AbortPercent: 100}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false, be))
	code, body, resp := get(t, client(te.addr("main")), "http://x/")
	if code != 200 || body != "fault filter abort" || resp.Header.Get("Grpc-Status") != "" || resp.Header.Get("Content-Type") == "application/grpc" {
		t.Errorf("gRPC abort on plain HTTP: %d %q %v", code, body, resp.Header)
	}
}

// A redirect or direct_response route has no route entry in Envoy, and
// the CORS filter does nothing there: a preflight gets the redirect, and
// no CORS headers are added.
func TestCORSNotOnRedirectRoute(t *testing.T) {
	r := &model.Route{Name: "redir", Match: model.RouteMatch{Prefix: "/"}, Redirect: &model.RedirectAction{Path: "/new", Status: 302}}
	r.PerFilter.CORS = &model.CORS{AllowOrigins: []model.StringMatch{{Exact: "*", Kind: "exact"}}, AllowMethods: "GET"}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false))
	req, _ := http.NewRequest("OPTIONS", "http://x/", nil)
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", "GET")
	c := client(te.addr("main"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 302 || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("preflight on a redirect route: %d %v", resp.StatusCode, resp.Header)
	}
}

// The preflight answer's response code details are Envoy's
// "cors_response".
func TestCORSPreflightDetails(t *testing.T) {
	r := fwd("be")
	r.PerFilter.CORS = &model.CORS{AllowOrigins: []model.StringMatch{{Exact: "*", Kind: "exact"}}}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false, mirrorBackend(t, "be")))
	req, _ := http.NewRequest("OPTIONS", "http://x/", nil)
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", "GET")
	resp, err := client(te.addr("main")).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	eventually(t, "the access log entry", func() bool { return strings.Contains(te.access.String(), "response_code_details") })
	if log := te.access.String(); !strings.Contains(log, `"response_code_details":"cors_response"`) {
		t.Errorf("access log: %s", log)
	}
}

// istiod sets the deprecated max_grpc_timeout on every route, and Envoy's
// router then sends a gRPC request's grpc-timeout upstream as the time
// the try is given: the route's or the client's timeout, the per-try
// timeout when sooner. Without the rewrite (max_stream_duration), or for
// a request that is not gRPC, the client's header passes as it came.
func TestGRPCTimeoutRewritten(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Grpc-Status", "0")
		fmt.Fprint(w, r.Header.Get("Grpc-Timeout"))
	})
	route := func(prefix string, timeout time.Duration, max *time.Duration, rewrite bool, perTry time.Duration) *model.Route {
		r := fwd("c")
		r.Match.Prefix = prefix
		r.Forward.Timeout, r.Forward.MaxGRPCTimeout, r.Forward.RewriteGRPCTimeout = timeout, max, rewrite
		if perTry > 0 {
			r.Forward.Retry = &model.RetryPolicy{On: map[string]bool{"5xx": true}, NumRetries: 1, PerTryTimeout: perTry}
		}
		return r
	}
	routes := []*model.Route{
		route("/client", 0, ptr(time.Duration(0)), true, 0),                 // the client's 10 s, no cap
		route("/capped", 0, ptr(2*time.Second), true, 0),                    // capped to 2 s
		route("/try", 0, ptr(time.Duration(0)), true, 300*time.Millisecond), // the per-try timeout is sooner
		route("/hours", 0, ptr(time.Duration(0)), true, 0),                  // a long one in a bigger unit
		route("/kept", 0, ptr(time.Duration(0)), false, 0),                  // max_stream_duration: not rewritten
		route("/none", 0, ptr(time.Duration(0)), true, 0),                   // no timeout at all: nothing to write
	}
	for _, suppress := range []bool{false, true} {
		snap := httpSnapshot(oneRoute(routes...), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)})
		snap.Listeners[0].Chains["http"].HTTP.SuppressEnvoyHeaders = suppress
		te := newTestEngine(t, Options{})
		te.apply(snap)
		c := client(te.addr("main"))
		for _, tc := range []struct {
			path, sent string
			grpc       bool
			want       []string
		}{
			{"/client", "10S", true, []string{"10000m", "9999m"}},
			{"/capped", "10S", true, []string{"2000m", "1999m"}},
			{"/try", "10S", true, []string{"300m"}},
			{"/hours", "99999999M", true, []string{"99999999M", "99999998M"}},
			{"/kept", "10S", true, []string{"10S"}},
			{"/none", "", true, []string{""}},
			{"/client", "10S", false, []string{"10S"}},
		} {
			hdr := []string{"Grpc-Timeout", tc.sent}
			if tc.grpc {
				hdr = append(hdr, "Content-Type", "application/grpc")
			}
			code, body, _ := get(t, c, "http://x"+tc.path, hdr...)
			if code != 200 || !slices.Contains(tc.want, body) {
				t.Errorf("suppress=%v %s grpc=%v sent %q: %d upstream got %q, want one of %q", suppress, tc.path, tc.grpc, tc.sent, code, body, tc.want)
			}
		}
	}
}

func TestFormatGRPCTimeout(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{300 * time.Millisecond, "300m"},
		{99999999 * time.Millisecond, "99999999m"},
		{100000000 * time.Millisecond, "100000S"},
		{99999999 * time.Minute, "99999999M"},
		{100000000 * time.Minute, "1666666H"},
		{time.Duration(1<<63 - 1), "2562047H"},
	} {
		if got := formatGRPCTimeout(c.d); got != c.want {
			t.Errorf("%v: %q, want %q", c.d, got, c.want)
		}
	}
}

// A #fragment in the request target is no part of the path: Envoy as istiod
// configures it (http_reject_path_with_fragment off, so the fragment is
// stripped) routes and forwards "/admin#x" as "/admin", and never lets the
// fragment take part in resolving dot segments ("/public#/../admin" is a
// /public request).
func TestFragmentStrippedBeforeRouting(t *testing.T) {
	admin, public := mirrorBackend(t, "admin"), mirrorBackend(t, "public")
	snap := httpSnapshot(oneRoute(
		&model.Route{Name: "admin", Match: model.RouteMatch{Path: "/admin"}, Forward: &model.ForwardAction{Cluster: "admin"}},
		&model.Route{Name: "public", Match: model.RouteMatch{PathSeparatedPrefix: "/public"}, Forward: &model.ForwardAction{Cluster: "public"}},
	), false, admin, public)
	checkNormalizedRouting(t, snap, []routedPath{
		{"/admin#frag", "admin", "/admin"},
		{"/admin?x=1#frag", "admin", "/admin?x=1"},
		{"/public#/../admin", "public", "/public"},
	})
}

// With UNESCAPE_AND_REDIRECT Envoy unescapes, then normalizes and merges
// slashes, and only then answers the redirect: its Location is the
// normalized path, not the merely unescaped one.
func TestEscapedSlashesRedirectIsNormalized(t *testing.T) {
	snap := httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c"})
	hcm := snap.Listeners[0].Chains["http"].HTTP
	hcm.EscapedSlashes, hcm.NormalizePath, hcm.MergeSlashes = "redirect", true, true
	te := newTestEngine(t, Options{})
	te.apply(snap)
	code, _, resp := get(t, client(te.addr("main")), "http://x/a%2F%2Fb/c%2F..%2Fd?q=%2F")
	if code != 307 || resp.Header.Get("Location") != "/a/b/d?q=%2F" {
		t.Errorf("%d, Location %q; want 307, %q", code, resp.Header.Get("Location"), "/a/b/d?q=%2F")
	}
}

// A weighted cluster's host_rewrite_literal (istiod sets it for a
// destination's headers.request.set authority) sets :authority for the
// requests that cluster takes; the route's own rewrite, when set, wins, as
// Envoy applies it after the cluster's.
func TestWeightedClusterHostRewrite(t *testing.T) {
	a := mirrorBackend(t, "a")
	for _, c := range []struct{ route, want string }{{"", "a.example"}, {"route.example", "route.example"}} {
		r := &model.Route{Name: "w", Forward: &model.ForwardAction{HostRewrite: c.route, Weighted: &model.WeightedClusters{Total: 1,
			Clusters: []model.WeightedCluster{{Name: "a", Weight: 1, HostRewrite: "a.example"}}}}}
		te := newTestEngine(t, Options{})
		te.apply(httpSnapshot(oneRoute(r), false, a))
		_, _, resp := get(t, client(te.addr("main")), "http://x/")
		if got := resp.Header.Get("X-Seen-Host"); got != c.want {
			t.Errorf("route rewrite %q: upstream saw Host %q, want %q", c.route, got, c.want)
		}
	}
}

// append_x_forwarded_host: a host rewrite appends the authority it
// replaces to x-forwarded-host, unless that is already its last value
// (Envoy's updateAuthority); no rewrite, nothing appended.
func TestAppendXForwardedHostOnHostRewrite(t *testing.T) {
	a := mirrorBackend(t, "a")
	for _, c := range []struct {
		rewrite, sent string
		want          []string
	}{
		{"b.example", "", []string{"x:8080"}},
		{"b.example", "p1, x:8080", []string{"p1, x:8080"}},
		{"b.example", "p1", []string{"p1,x:8080"}},
		{"", "", nil},
	} {
		r := &model.Route{Name: "r", Forward: &model.ForwardAction{Cluster: "a", HostRewrite: c.rewrite, AppendXForwardedHost: true}}
		te := newTestEngine(t, Options{})
		te.apply(httpSnapshot(oneRoute(r), false, a))
		var hdr []string
		if c.sent != "" {
			hdr = []string{"X-Forwarded-Host", c.sent}
		}
		_, _, resp := get(t, client(te.addr("main")), "http://x:8080/", hdr...)
		if got := resp.Header.Values("X-Seen-X-Forwarded-Host"); !slices.Equal(got, c.want) {
			t.Errorf("rewrite %q, sent %q: upstream saw x-forwarded-host %q, want %q", c.rewrite, c.sent, got, c.want)
		}
	}
}

// Envoy's HCM lets through only the upgrade types its upgrade_configs
// name (istiod: websocket), a route's own upgrade_configs turning a type
// on or off over it; any other upgrade is refused with 403 before the
// filters, and never reaches the endpoint.
func TestUpgradeTypesAllowed(t *testing.T) {
	var reached atomic.Int32
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		w.WriteHeader(http.StatusBadRequest) // no switch: the status tells it reached
	})
	echoOn := fwd("c")
	echoOn.Match.Prefix = "/echo-on"
	echoOn.Forward.Upgrades = map[string]bool{"echo": true}
	wsOff := fwd("c")
	wsOff.Match.Prefix = "/ws-off"
	wsOff.Forward.Upgrades = map[string]bool{"websocket": false}
	snap := httpSnapshot(oneRoute(echoOn, wsOff, fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)})
	snap.Listeners[0].Chains["http"].HTTP.Upgrades = map[string]bool{"websocket": true}
	te := newTestEngine(t, Options{})
	te.apply(snap)
	for _, c := range []struct {
		path, upgrade string
		refused       bool
	}{
		{"/", "websocket", false},
		{"/", "WebSocket", false},
		{"/", "echo", true},
		{"/echo-on", "echo", false},
		{"/ws-off", "websocket", true},
		{"/", "", false},
	} {
		before := reached.Load()
		req := "GET " + c.path + " HTTP/1.1\r\nHost: x\r\n"
		if c.upgrade != "" {
			req += "Upgrade: " + c.upgrade + "\r\nConnection: Upgrade\r\n"
		}
		resp, _ := rawExchange(t, te, req+"\r\n", "GET")
		got := reached.Load() > before
		if c.refused && (resp.StatusCode != http.StatusForbidden || got) || !c.refused && (resp.StatusCode == http.StatusForbidden || !got) {
			t.Errorf("%s upgrade %q: %d, reached the endpoint %v; want refused %v", c.path, c.upgrade, resp.StatusCode, got, c.refused)
		}
	}
	if !strings.Contains(te.access.String(), `"response_code_details":"upgrade_failed"`) {
		t.Errorf("no upgrade_failed in the access log")
	}
}

// auto_host_rewrite puts the endpoint's hostname in Host (Envoy's
// host->hostname()), appending the authority it replaces to
// x-forwarded-host when the route asks.
func TestAutoHostRewriteUsesEndpointHostname(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s|%s", r.Host, r.Header.Get("X-Forwarded-Host"))
	})
	r := fwd("c")
	r.Forward.AutoHostRewrite, r.Forward.AppendXForwardedHost = true, true
	eps := endpoints(be)
	eps[0][0].Hostname = "backend.internal"
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false, &model.Cluster{Name: "c", Endpoints: eps}))
	if code, body, _ := get(t, client(te.addr("main")), "http://reviews/"); code != 200 || body != "backend.internal|reviews" {
		t.Errorf("%d %q, want Host backend.internal and x-forwarded-host reviews", code, body)
	}
}

// routedPath is a raw request target, the backend it must reach and the
// target that backend must see.
type routedPath struct{ path, backend, seen string }

// checkNormalizedRouting sends each path, raw, to snap with istiod's
// path normalization (normalize_path and merge_slashes) on.
func checkNormalizedRouting(t *testing.T, snap *model.Snapshot, cases []routedPath) {
	t.Helper()
	hcm := snap.Listeners[0].Chains["http"].HTTP
	hcm.NormalizePath, hcm.MergeSlashes = true, true
	te := newTestEngine(t, Options{})
	te.apply(snap)
	addr := te.addr("main")
	for _, c := range cases {
		conn, err := dialer(addr, clientAddr, serviceVIP)(t.Context(), "", "")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", c.path)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		conn.Close()
		if got := resp.Header.Get("X-Backend"); got != c.backend || resp.Header.Get("X-Seen-Uri") != c.seen {
			t.Errorf("%s: %d, reached %q with %q, want %q with %q", c.path, resp.StatusCode, got, resp.Header.Get("X-Seen-Uri"), c.backend, c.seen)
		}
	}
}

// Envoy's router sets x-envoy-original-path only when its rewrite gave a
// path (RouteEntryImplBase::finalizePathHeader): a regex rewrite that
// leaves nothing is a failed one, the path goes out as it came and no
// header is added; one that matches nothing still gave a path (the same
// one), and the header is there.
func TestOriginalPathOnlyWhenRewritten(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		_, had := r.Header["X-Envoy-Original-Path"]
		fmt.Fprintf(w, "%s|%v|%s", r.URL.Path, had, r.Header.Get("X-Envoy-Original-Path"))
	})
	failed := &model.Route{Name: "failed", Match: model.RouteMatch{Prefix: "/gone"}, Forward: &model.ForwardAction{Cluster: "c",
		RegexRewrite: &model.RegexRewrite{Pattern: regexp.MustCompile(`^.*$`), Substitution: ""}}}
	same := &model.Route{Name: "same", Match: model.RouteMatch{Prefix: "/same"}, Forward: &model.ForwardAction{Cluster: "c",
		RegexRewrite: &model.RegexRewrite{Pattern: regexp.MustCompile(`^/nomatch$`), Substitution: "/x"}}}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(failed, same, fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	c := client(te.addr("main"))
	if _, body, _ := get(t, c, "http://x/gone/a"); body != "/gone/a|false|" {
		t.Errorf("failed regex rewrite: %q, want the path unchanged and no x-envoy-original-path", body)
	}
	if _, body, _ := get(t, c, "http://x/same/a"); body != "/same/a|true|/same/a" {
		t.Errorf("regex rewrite that matched nothing: %q", body)
	}
}

// A redirect's Location keeps the request's :scheme (Envoy's
// Http::Utility::newUri), which Envoy's connection manager takes from
// x-forwarded-proto only when that names http or https, and from an
// absolute-form target before that; the port is dropped on a scheme
// change by x-forwarded-proto's default port. A :scheme header matcher
// reads the same scheme.
func TestRedirectSchemeIsTheRequestScheme(t *testing.T) {
	redirect := &model.Route{Name: "r", Match: model.RouteMatch{Prefix: "/r"}, Redirect: &model.RedirectAction{Path: "/new", Status: 302}}
	toHTTPS := &model.Route{Name: "s", Match: model.RouteMatch{Prefix: "/s"}, Redirect: &model.RedirectAction{Scheme: "https", Status: 302}}
	byScheme := &model.Route{Name: "m", Match: model.RouteMatch{Prefix: "/m", Headers: []model.HeaderMatch{{Name: ":scheme", Value: &model.StringMatch{Kind: "exact", Exact: "https"}}}},
		Direct: &model.DirectResponse{Status: 200, Body: []byte("https")}}
	other := &model.Route{Name: "o", Match: model.RouteMatch{Prefix: "/m"}, Direct: &model.DirectResponse{Status: 200, Body: []byte("other")}}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(redirect, toHTTPS, byScheme, other), false))
	cases := []struct{ raw, want string }{
		{"GET /r HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: javascript\r\n\r\n", "http://h/new"},
		{"GET /r HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: HTTPS\r\n\r\n", "https://h/new"},
		{"GET /r HTTP/1.1\r\nHost: h\r\n\r\n", "http://h/new"},
		{"GET https://h/r HTTP/1.1\r\nHost: h\r\n\r\n", "https://h/new"},
		// The request's scheme is http (x-forwarded-proto set for it):
		// :80 goes with the change to https; :443 stays.
		{"GET /s HTTP/1.1\r\nHost: h:80\r\n\r\n", "https://h/s"},
		{"GET /s HTTP/1.1\r\nHost: h:443\r\nX-Forwarded-Proto: bogus\r\n\r\n", "https://h:443/s"},
	}
	for _, c := range cases {
		resp, _ := rawExchange(t, te, c.raw, "GET")
		if loc := resp.Header.Get("Location"); resp.StatusCode != 302 || loc != c.want {
			t.Errorf("%q: %d Location %q, want %q", c.raw, resp.StatusCode, loc, c.want)
		}
	}
	for raw, want := range map[string]string{
		"GET /m HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\n\r\n": "https",
		"GET /m HTTP/1.1\r\nHost: h\r\n\r\n":                             "other",
		"GET https://h/m HTTP/1.1\r\nHost: h\r\n\r\n":                    "https",
	} {
		if _, body := rawExchange(t, te, raw, "GET"); body != want {
			t.Errorf("%q: routed to %q, want %q", raw, body, want)
		}
	}
}
