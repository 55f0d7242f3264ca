package proxy

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

type seenRequest struct {
	host, uri, method, body string
	header                  http.Header
}

func TestMirroring(t *testing.T) {
	main := backend(t, func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		io.WriteString(w, "main")
	})
	seen := make(chan seenRequest, 16)
	var slow atomic.Bool
	shadow := backend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seen <- seenRequest{host: r.Host, uri: r.RequestURI, method: r.Method, body: string(b), header: r.Header.Clone()}
		if slow.Load() {
			time.Sleep(700 * time.Millisecond)
		}
		w.WriteHeader(500) // never seen by the client
	})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := mustAddrPort(ln.Addr().String())
	ln.Close()
	r := fwd("main")
	r.Forward.PrefixRewrite = "/v2/"
	r.Match.Prefix = "/v1/"
	r.Forward.Mirrors = []model.Mirror{{Cluster: "shadow", Percent: 100}, {Cluster: "dead", Percent: 100}, {Cluster: "never", Percent: 0}}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false,
		&model.Cluster{Name: "main", Endpoints: endpoints(main)},
		&model.Cluster{Name: "shadow", Endpoints: endpoints(shadow)},
		&model.Cluster{Name: "dead", ConnectTimeout: time.Second, Endpoints: endpoints(dead)},
		&model.Cluster{Name: "never", Endpoints: endpoints(shadow)},
	))
	c := client(te.addr("main"))
	tp := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

	code, body, _ := get(t, c, "http://reviews:9080/v1/list?x=1", "Traceparent", tp, "X-B3-Traceid", "463ac35c9f6413ad")
	if code != 200 || body != "main" {
		t.Fatalf("main response %d %q", code, body)
	}
	m := <-seen
	if m.host != "reviews-shadow:9080" || m.uri != "/v2/list?x=1" || m.method != "GET" {
		t.Errorf("shadow saw %s %s host %s", m.method, m.uri, m.host)
	}
	if m.header.Get("Traceparent") != tp || m.header.Get("X-B3-Traceid") != "463ac35c9f6413ad" || m.header.Get("X-Request-Id") == "" {
		t.Errorf("shadow headers %v", m.header)
	}
	if m.header.Get("X-Envoy-Attempt-Count") != "" {
		t.Error("the shadow carries the main request's attempt count")
	}

	resp, err := c.Post("http://reviews/v1/upload", "text/plain", strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if m := <-seen; m.body != "payload" || m.method != "POST" || m.host != "reviews-shadow" {
		t.Errorf("mirrored POST: %+v", m)
	}

	// A slow shadow never holds the client up.
	slow.Store(true)
	start := time.Now()
	if code, _, _ := get(t, c, "http://reviews/v1/x"); code != 200 || time.Since(start) > time.Second {
		t.Errorf("with a slow shadow: %d after %v", code, time.Since(start))
	}
	<-seen
	eventually(t, "the dead mirror's failures and the shadow's answers counted", func() bool {
		return te.Stats().MirrorsFailed >= 3 && te.Stats().MirrorsSent >= 2
	})
	select {
	case extra := <-seen:
		t.Errorf("a 0%% mirror was sent: %+v", extra)
	case <-time.After(50 * time.Millisecond):
	}
}

// istiod sets disable_shadow_host_suffix_append: the copy keeps the
// authority (after the route's host rewrite) unchanged.
func TestMirrorKeepHost(t *testing.T) {
	main := backend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "main") })
	seen := make(chan string, 4)
	shadow := backend(t, func(w http.ResponseWriter, r *http.Request) { seen <- r.Host })
	r := fwd("main")
	r.Forward.Mirrors = []model.Mirror{{Cluster: "shadow", Percent: 100, KeepHost: true}}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false,
		&model.Cluster{Name: "main", Endpoints: endpoints(main)},
		&model.Cluster{Name: "shadow", Endpoints: endpoints(shadow)}))
	c := client(te.addr("main"))
	if code, _, _ := get(t, c, "http://reviews:9080/x"); code != 200 {
		t.Fatalf("main response %d", code)
	}
	select {
	case h := <-seen:
		if h != "reviews:9080" {
			t.Errorf("shadow host %q, want reviews:9080", h)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no mirror")
	}
}

// The "-shadow" suffix goes on the host before the port; an IPv6 literal
// keeps its brackets whole ("[fd00::1]-shadow:9080", as Envoy writes it).
func TestMirrorShadowHostIPv6(t *testing.T) {
	main := backend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "main") })
	seen := make(chan string, 4)
	shadow := backend(t, func(w http.ResponseWriter, r *http.Request) { seen <- r.Host })
	r := fwd("main")
	r.Forward.Mirrors = []model.Mirror{{Cluster: "shadow", Percent: 100}}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false,
		&model.Cluster{Name: "main", Endpoints: endpoints(main)},
		&model.Cluster{Name: "shadow", Endpoints: endpoints(shadow)}))
	c := client(te.addr("main"))
	for _, tc := range []struct{ in, want string }{
		{"[fd00::1]:9080", "[fd00::1]-shadow:9080"},
		{"[fd00::1]", "[fd00::1]-shadow"},
	} {
		if code, _, _ := get(t, c, "http://"+tc.in+"/x"); code != 200 {
			t.Fatalf("%s: main response %d", tc.in, code)
		}
		select {
		case h := <-seen:
			if h != tc.want {
				t.Errorf("shadow host %q, want %q", h, tc.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no mirror")
		}
	}
}

// Envoy's router gives a shadow the request's global timeout, none when
// the route has none (router.cc: setTimeout(timeout_.global_timeout_));
// the waypoint used 15 s then. A shadow that is never answered ends with
// the route's timeout, or, without one, when its cluster is closed (gone
// from the configuration, or the engine closing), so its goroutine does
// not outlive the cluster.
func TestMirrorTimeoutIsTheRoutes(t *testing.T) {
	main := backend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "main") })
	started, ended := make(chan time.Time, 4), make(chan time.Time, 4)
	release := make(chan struct{})
	shadow := backend(t, func(w http.ResponseWriter, r *http.Request) {
		started <- time.Now()
		select {
		case <-r.Context().Done(): // the waypoint gave the copy up
			ended <- time.Now()
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) })
	timed := fwd("main")
	timed.Match.Prefix = "/timed"
	timed.Forward.Timeout = 300 * time.Millisecond
	timed.Forward.Mirrors = []model.Mirror{{Cluster: "shadow", Percent: 100}}
	untimed := fwd("main")
	untimed.Forward.Mirrors = []model.Mirror{{Cluster: "shadow", Percent: 100}}
	clusters := []*model.Cluster{{Name: "main", Endpoints: endpoints(main)}, {Name: "shadow", Endpoints: endpoints(shadow)}}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(timed, untimed), false, clusters...))
	c := client(te.addr("main"))
	wait := func(ch chan time.Time, what string, within time.Duration) time.Time {
		t.Helper()
		select {
		case at := <-ch:
			return at
		case <-time.After(within):
			t.Fatalf("%s: not within %v", what, within)
		}
		return time.Time{}
	}

	if code, _, _ := get(t, c, "http://reviews/timed"); code != 200 {
		t.Fatalf("main response %d", code)
	}
	s := wait(started, "timed mirror", 5*time.Second)
	if d := wait(ended, "timed mirror given up", 5*time.Second).Sub(s); d > 2*time.Second {
		t.Errorf("a mirror on a route with a 300ms timeout lasted %v", d)
	}

	if code, _, _ := get(t, c, "http://reviews/"); code != 200 {
		t.Fatalf("main response %d", code)
	}
	wait(started, "untimed mirror", 5*time.Second)
	select {
	case <-ended:
		t.Fatal("a mirror on a route without a timeout was given up by the waypoint")
	case <-time.After(500 * time.Millisecond):
	}
	// The shadow cluster leaves the configuration: its copy ends with it.
	te.apply(httpSnapshot(oneRoute(timed, untimed), false, clusters[0]))
	wait(ended, "untimed mirror after its cluster was removed", 2*time.Second)
}
