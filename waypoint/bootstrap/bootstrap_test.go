package bootstrap

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/translate"
)

func TestDemoFile(t *testing.T) {
	snap, err := Load("../../conf/waypoint-demo.yaml", translate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Listeners) != 1 {
		t.Fatalf("%d listeners", len(snap.Listeners))
	}
	l := snap.Listeners[0]
	if l.Address != netip.MustParseAddrPort("0.0.0.0:15019") || !l.ProxyProtocol || l.AllowWithoutProxyProtocol || l.HeaderTimeout != 5*time.Second {
		t.Fatalf("listener %+v", l)
	}
	pick := func(dst string) string {
		return l.Select.Select(model.ConnInfo{Destination: netip.MustParseAddrPort(dst), Source: netip.MustParseAddrPort("10.244.0.5:40000")})
	}
	if got := pick("10.96.0.20:80"); got != "web-http" {
		t.Fatalf("web: %q", got)
	}
	if got := pick("10.96.0.20:9000"); got != "web-tcp" {
		t.Fatalf("web's TCP port: %q", got)
	}
	if got := pick("10.96.0.10:80"); got != "" {
		t.Fatalf("no chain for another VIP, got %q", got)
	}
	if l.Select.NeedsProtocol(netip.MustParseAddrPort("10.96.0.20:80")) {
		t.Fatal("no chain here depends on the protocol")
	}

	web := l.Chains["web-http"].HTTP
	if web == nil || len(web.Filters) != 2 || web.Filters[0].Fault == nil || !web.Filters[1].Router {
		t.Fatalf("web HCM %+v", web)
	}
	routes := web.Routes.VirtualHosts[0].Routes
	slow, flaky, split := routes[0], routes[1], routes[2]
	if fr := flaky.Forward.Retry; flaky.Forward.Cluster != "web-all" || fr == nil || fr.NumRetries != 2 || !fr.On["5xx"] || !fr.PreviousHosts || fr.HostSelectionAttempts != 3 {
		t.Fatalf("flaky %+v retry %+v", flaky.Forward, fr)
	}
	if !web.NormalizePath {
		t.Fatal("normalize_path not read")
	}
	if slow.PerFilter.Fault == nil || slow.PerFilter.Fault.Delay != time.Second || slow.PerFilter.Fault.DelayPercent != 50 {
		t.Fatalf("slow fault %+v", slow.PerFilter.Fault)
	}
	w := split.Forward.Weighted
	if w == nil || w.Total != 100 || w.Clusters[0].Name != "web-v1" || w.Clusters[0].Weight != 90 || w.Clusters[1].Weight != 10 {
		t.Fatalf("split %+v", w)
	}
	r := split.Forward.Retry
	if r == nil || r.NumRetries != 2 || !r.On["5xx"] || !r.On["connect-failure"] || r.PerTryTimeout != time.Second {
		t.Fatalf("retry %+v", r)
	}
	if split.Forward.Timeout != 5*time.Second {
		t.Fatalf("timeout %v", split.Forward.Timeout)
	}
	h := split.Headers.RequestAdd
	if len(h) != 1 || h[0] != (model.HeaderValue{Name: "x-kmesh-waypoint", Value: "demo"}) || split.Headers.ResponseRemove[0] != "x-internal-debug" {
		t.Fatalf("header ops %+v", split.Headers)
	}
	tcp := l.Chains["web-tcp"].TCP
	if tcp == nil || tcp.Cluster != "web-tcp" || tcp.IdleTimeout != 10*time.Minute {
		t.Fatalf("web-tcp %+v", tcp)
	}
	c := snap.Clusters["web-all"]
	if c.Kind != "static" || len(c.Endpoints[0]) != 2 || c.ConnectTimeout != 2*time.Second || c.Endpoints[0][1].Address != netip.MustParseAddrPort("10.244.0.16:8080") {
		t.Fatalf("web-all %+v", c)
	}
	if snap.Clusters["web-tcp"].MaxConnections != 100 {
		t.Fatalf("web-tcp limits %+v", snap.Clusters["web-tcp"])
	}
	if len(snap.Unsupported) != 0 {
		t.Fatalf("unsupported %+v", snap.Unsupported)
	}
	if !strings.HasPrefix(snap.Version, "file:") {
		t.Fatalf("version %q", snap.Version)
	}
}

func TestParseErrors(t *testing.T) {
	for name, body := range map[string]string{
		"not yaml":       "static_resources: [",
		"unknown field":  "static_resources: {listeners: [{name: x, bogus: 1}]}",
		"no listeners":   "static_resources: {clusters: []}",
		"unknown type":   `static_resources: {listeners: [{name: x, listener_filters: [{name: f, typed_config: {"@type": type.googleapis.com/no.such.Type}}]}]}`,
		"dynamic":        "dynamic_resources: {lds_config: {ads: {}}}\nstatic_resources: {listeners: [{name: x}]}",
		"translate fail": "static_resources: {listeners: [{name: x, address: {socket_address: {address: 0.0.0.0, port_value: 1}}, filter_chains: [{filters: [{name: f, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy}}]}]}]}",
	} {
		dir := t.TempDir()
		p := filepath.Join(dir, "b.yaml")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(p, translate.Options{}); err == nil {
			t.Errorf("%s: loaded", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// TestWatch: a change is applied, a bad version is skipped and the last
// good kept, and an editor's rename-over is seen.
func TestWatch(t *testing.T) {
	demo, err := os.ReadFile("../../conf/waypoint-demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "waypoint.yaml")
	if err := os.WriteFile(path, demo, 0o644); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []*model.Snapshot
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, path, translate.Options{}, func(s *model.Snapshot) error {
			mu.Lock()
			got = append(got, s)
			mu.Unlock()
			return nil
		}, nil)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	wait := func(n int) *model.Snapshot {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			if len(got) >= n {
				s := got[n-1]
				mu.Unlock()
				return s
			}
			mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("no snapshot #%d", n)
		return nil
	}
	first := wait(1)

	// A bad version: nothing applied.
	if err := os.WriteFile(path, []byte("static_resources: {listeners: [{name: broken, bogus: 1}]}"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	mu.Lock()
	n := len(got)
	mu.Unlock()
	if n != 1 {
		t.Fatalf("a bad file was applied (%d snapshots)", n)
	}

	// An editor's save: a new file renamed over the old one.
	changed := strings.Replace(string(demo), "weight: 90", "weight: 50", 1)
	changed = strings.Replace(changed, "weight: 10", "weight: 50", 1)
	tmp := filepath.Join(dir, ".waypoint.yaml.swp")
	if err := os.WriteFile(tmp, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	second := wait(2)
	if second.Version == first.Version {
		t.Fatal("same version after a change")
	}
	w := second.Listeners[0].Chains["web-http"].HTTP.Routes.VirtualHosts[0].Routes[2].Forward.Weighted
	if w.Clusters[0].Weight != 50 || w.Clusters[1].Weight != 50 {
		t.Fatalf("weights %+v", w.Clusters)
	}
}

// Top-level bootstrap fields Envoy would act on and kmesh-waypoint does
// not are reported as unsupported, never dropped silently; node (only a
// name with static resources) is not.
func TestIgnoredBootstrapFields(t *testing.T) {
	body := `node: {id: x, cluster: demo}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 9901}}}
stats_flush_interval: 5s
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: 15019}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: c}
  clusters:
  - name: c
    type: STATIC
    load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}}]}]}
`
	p := filepath.Join(t.TempDir(), "b.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err := Load(p, translate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, u := range snap.Unsupported {
		if u.Where == "bootstrap" {
			if u.FailClosed {
				t.Errorf("%s fails closed", u.Name)
			}
			got = append(got, u.Name)
		}
	}
	if strings.Join(got, ",") != "admin,stats_flush_interval" {
		t.Errorf("reported %v, want admin and stats_flush_interval", got)
	}
}

// A version the engine refuses (a port it cannot bind, say) is tried
// again while the file stays the same, and taken once what stood in its
// way is gone; the first version refused does not end the watch.
func TestWatchRetriesRefusedVersion(t *testing.T) {
	demo, err := os.ReadFile("../../conf/waypoint-demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "waypoint.yaml")
	if err := os.WriteFile(path, demo, 0o644); err != nil {
		t.Fatal(err)
	}
	old := RetryApply
	RetryApply = 50 * time.Millisecond
	defer func() { RetryApply = old }()
	var tries, taken atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, path, translate.Options{}, func(*model.Snapshot) error {
			if tries.Add(1) < 3 {
				return errors.New("address already in use")
			}
			taken.Add(1)
			return nil
		}, nil)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for taken.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // no more tries once taken
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if taken.Load() != 1 || tries.Load() != 3 {
		t.Errorf("%d tries, %d taken; want the third try taken and no more", tries.Load(), taken.Load())
	}
}
