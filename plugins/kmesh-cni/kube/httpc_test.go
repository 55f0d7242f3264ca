package kube

import (
	"bufio"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rawServer answers every request on a connection with answer(n), n
// counting requests over all connections, and counts connections.
func rawServer(t *testing.T, answer func(n int) string) (addr string, conns *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	conns = &atomic.Int32{}
	var reqs atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					a := answer(int(reqs.Add(1)))
					// An answer whose end is the connection's, one that
					// says so, and one marked to go away with its connection.
					if _, err := io.WriteString(c, strings.TrimSuffix(a, closeMark)); err != nil ||
						a == "" || strings.Contains(a, "Connection: close") || strings.HasPrefix(a, "HTTP/1.1 200 OK\r\n\r\n") || strings.HasSuffix(a, closeMark) {
						return
					}
				}
			}(c)
		}
	}()
	return l.Addr().String(), conns
}

// closeMark at the end of an answer makes rawServer close the connection
// after it, with nothing in the answer saying so.
const closeMark = "<close>"

func client(t *testing.T, server string) *httpClient {
	t.Helper()
	u, _ := url.Parse(server)
	return &httpClient{base: u, dial: (&net.Dialer{}).DialContext, timeout: 2 * time.Second}
}

func TestHTTPBodies(t *testing.T) {
	for name, tc := range map[string]struct {
		answer string
		want   string
		conns  int32
	}{
		"content-length": {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "hello", 1},
		"chunked":        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nX-Trailer: 1\r\n\r\n", "hello", 1},
		"until close":    {"HTTP/1.1 200 OK\r\n\r\nhello", "hello", 3},
		"close header":   {"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello", "hello", 3},
		"1xx first":      {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "hello", 1},
		"no content":     {"HTTP/1.1 204 No Content\r\n\r\n", "", 1},
	} {
		t.Run(name, func(t *testing.T) {
			addr, conns := rawServer(t, func(int) string { return tc.answer })
			h := client(t, "http://"+addr)
			defer h.close()
			for range 3 {
				st, b, err := h.do(context.Background(), "GET", "/x", nil, nil)
				if err != nil || st/100 != 2 || string(b) != tc.want {
					t.Fatalf("%d %q %v", st, b, err)
				}
			}
			if n := conns.Load(); n != tc.conns {
				t.Fatalf("%d connections for 3 requests, want %d", n, tc.conns)
			}
		})
	}
}

func TestHTTPMalformedAnswers(t *testing.T) {
	for name, answer := range map[string]string{
		"not http":       "SSH-2.0-OpenSSH\r\n\r\n",
		"bad status":     "HTTP/1.1 2x0 OK\r\n\r\n",
		"bad length":     "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"short body":     "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc" + closeMark,
		"bad chunk":      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"huge chunk":     fmt.Sprintf("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n", maxBody+1),
		"huge length":    fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", maxBody+1),
		"chunk no crlf":  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhelXX\r\n0\r\n\r\n",
		"closed at once": "",
	} {
		t.Run(name, func(t *testing.T) {
			addr, _ := rawServer(t, func(int) string { return answer })
			h := client(t, "http://"+addr)
			if _, _, err := h.do(context.Background(), "GET", "/x", nil, nil); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

// An idle connection the server closed is replaced, and the request is
// sent again once.
func TestHTTPStaleConnectionIsReplaced(t *testing.T) {
	addr, conns := rawServer(t, func(n int) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + closeMark
	})
	h := client(t, "http://"+addr)
	defer h.close()
	for i := range 3 {
		if _, b, err := h.do(context.Background(), "GET", "/", nil, nil); err != nil || string(b) != "ok" {
			t.Fatalf("request %d: %q %v", i, b, err)
		}
		time.Sleep(10 * time.Millisecond) // the server's FIN arrives
	}
	if n := conns.Load(); n != 3 {
		t.Fatalf("%d connections", n)
	}
}

func TestHTTPContextEndsARequest(t *testing.T) {
	addr, _ := rawServer(t, func(int) string { time.Sleep(2 * time.Second); return "" })
	h := client(t, "http://"+addr)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err := h.do(ctx, "GET", "/", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Fatalf("%v after %v", err, time.Since(start))
	}
	// Cancelled, not timed out.
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, _, err := h.do(ctx, "GET", "/", nil, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("%v", err)
	}
}

// Requests go through HTTPS_PROXY with CONNECT (https) and to HTTP_PROXY
// with the absolute URL (http), with the proxy's credentials.
func TestHTTPProxy(t *testing.T) {
	var connects, forwards atomic.Int32
	var auth atomic.Value
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth.Store(r.Header.Get("Proxy-Authorization"))
		if r.Method == http.MethodConnect {
			connects.Add(1)
			up, err := net.Dial("tcp", strings.Replace(r.Host, "api.example", "127.0.0.1", 1))
			if err != nil {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			w.WriteHeader(http.StatusOK)
			c, brw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			go func() { io.Copy(up, brw); up.Close() }()
			io.Copy(c, up)
			c.Close()
			return
		}
		forwards.Add(1)
		if !r.URL.IsAbs() {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "via proxy %s", r.URL.Path)
	}))
	t.Cleanup(proxy.Close)
	pu, _ := url.Parse(proxy.URL)
	pu.User = url.UserPassword("u", "p")

	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "secure "+r.URL.Path) }))
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	// The test servers are on loopback, which is never proxied: reach
	// them by a name that resolves there.
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, p, _ := net.SplitHostPort(addr)
		if host == "api.example" {
			addr = net.JoinHostPort("127.0.0.1", p)
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	env := map[string]string{"https_proxy": pu.String(), "HTTP_PROXY": pu.String()}
	getenv := func(k string) string { return env[k] }

	base, _ := url.Parse(fmt.Sprintf("https://api.example:%d", port))
	p, err := proxyFor(base, getenv)
	if err != nil || p == nil {
		t.Fatalf("proxy %v %v", p, err)
	}
	c, err := New(&Config{Server: base.String(), CAData: ca, ServerName: "example.com", Timeout: 2 * time.Second, Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	c.http.proxy = p
	st, b, err := c.http.do(context.Background(), "GET", "/tls", nil, nil)
	if err != nil || st != 200 || string(b) != "secure /tls" || connects.Load() != 1 {
		t.Fatalf("%d %q %v, %d CONNECTs", st, b, err, connects.Load())
	}
	if a, _ := auth.Load().(string); a != "Basic dTpw" {
		t.Fatalf("Proxy-Authorization %q", a)
	}

	hbase, _ := url.Parse("http://plain.example:8080")
	hp, _ := proxyFor(hbase, getenv)
	h := &httpClient{base: hbase, dial: (&net.Dialer{}).DialContext, timeout: 2 * time.Second, proxy: hp}
	st, b, err = h.do(context.Background(), "GET", "/plain", nil, nil)
	if err != nil || st != 200 || string(b) != "via proxy /plain" || forwards.Load() != 1 {
		t.Fatalf("%d %q %v", st, b, err)
	}

	// A proxy that refuses the tunnel is an error that names it.
	refuse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusForbidden) }))
	t.Cleanup(refuse.Close)
	c.http.close()
	c.http.proxy, _ = url.Parse(refuse.URL)
	if _, _, err := c.http.do(context.Background(), "GET", "/tls", nil, nil); err == nil || !strings.Contains(err.Error(), "refused the tunnel") {
		t.Fatalf("%v", err)
	}
}

func TestProxyFromEnvironment(t *testing.T) {
	u := func(s string) *url.URL { v, _ := url.Parse(s); return v }
	for _, tc := range []struct {
		server string
		env    map[string]string
		want   string
	}{
		{"https://10.96.0.1:443", nil, ""},
		{"https://10.96.0.1:443", map[string]string{"HTTPS_PROXY": "proxy:3128"}, "http://proxy:3128"},
		{"https://10.96.0.1:443", map[string]string{"HTTP_PROXY": "http://proxy:3128"}, ""},
		{"http://10.96.0.1:80", map[string]string{"http_proxy": "http://proxy:3128"}, "http://proxy:3128"},
		{"https://127.0.0.1:6443", map[string]string{"HTTPS_PROXY": "http://proxy:3128"}, ""},
		{"https://localhost:6443", map[string]string{"HTTPS_PROXY": "http://proxy:3128"}, ""},
		{"https://10.96.0.1:443", map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "10.96.0.0/12"}, ""},
		{"https://10.96.0.1:443", map[string]string{"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "10.96.0.1"}, ""},
		{"https://10.96.0.1:443", map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "10.96.0.1:6443"}, "http://proxy:3128"},
		{"https://api.cluster.local", map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": ".cluster.local"}, ""},
		{"https://api.cluster.local", map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "cluster.local"}, ""},
		{"https://api.cluster.local", map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*.cluster.local"}, ""},
		{"https://notcluster.local", map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "cluster.local"}, "http://proxy:3128"},
		{"https://api.example", map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}, ""},
	} {
		p, err := proxyFor(u(tc.server), func(k string) string { return tc.env[k] })
		got := ""
		if p != nil {
			got = p.String()
		}
		if err != nil || got != tc.want {
			t.Errorf("%s with %v: proxy %q %v, want %q", tc.server, tc.env, got, err, tc.want)
		}
	}
	if _, err := proxyFor(u("https://api"), func(k string) string {
		return map[string]string{"HTTPS_PROXY": "socks5://proxy:1080"}[k]
	}); err == nil {
		t.Error("a socks proxy was accepted")
	}
}
