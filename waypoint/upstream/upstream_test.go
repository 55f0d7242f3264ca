package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

func ep(addr string, weight uint32) model.Endpoint {
	return model.Endpoint{Address: netip.MustParseAddrPort(addr), Weight: weight, Healthy: true}
}

func one(t *testing.T, m *model.Cluster) (*Set, *Cluster) {
	t.Helper()
	s := NewSet(nil)
	t.Cleanup(s.Close)
	cs := s.Update(map[string]*model.Cluster{m.Name: m})
	return s, cs[m.Name]
}

func counts(t *testing.T, c *Cluster, n int, o func(i int) *PickOptions) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := range n {
		opts := &PickOptions{}
		if o != nil {
			opts = o(i)
		}
		h, err := c.Pick(opts)
		if err != nil {
			t.Fatal(err)
		}
		got[h.Key]++
	}
	return got
}

func TestRoundRobin(t *testing.T) {
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{ep("10.0.0.1:80", 1), ep("10.0.0.2:80", 1), ep("10.0.0.3:80", 1)}}})
	var seq []string
	for range 6 {
		h, _ := c.Pick(&PickOptions{})
		seq = append(seq, h.Key)
	}
	for i := 3; i < 6; i++ {
		if seq[i] != seq[i-3] || seq[i] == seq[i-1] {
			t.Fatalf("not a rotation: %v", seq)
		}
	}
}

func TestWeightedRoundRobinIsExactAndSpread(t *testing.T) {
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{ep("10.0.0.1:80", 5), ep("10.0.0.2:80", 1), ep("10.0.0.3:80", 2)}}})
	got := counts(t, c, 800, nil)
	if got["10.0.0.1:80"] != 500 || got["10.0.0.2:80"] != 100 || got["10.0.0.3:80"] != 200 {
		t.Fatalf("counts %v, want 500/100/200", got)
	}
	// Smooth: the heavy host never gets more than 5 of 8 in a row window.
	var run, maxRun int
	for range 80 {
		h, _ := c.Pick(&PickOptions{})
		if h.Key == "10.0.0.1:80" {
			run++
			maxRun = max(maxRun, run)
		} else {
			run = 0
		}
	}
	if maxRun > 3 {
		t.Errorf("weighted round robin bunches the heavy host: %d in a row", maxRun)
	}
}

func within(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol {
		t.Errorf("%s = %.3f, want %.3f ± %.3f", what, got, want, tol)
	}
}

func TestRandomWeighted(t *testing.T) {
	_, c := one(t, &model.Cluster{Name: "c", LB: "random", Endpoints: [][]model.Endpoint{{ep("10.0.0.1:80", 3), ep("10.0.0.2:80", 1)}}})
	const n = 20000
	got := counts(t, c, n, nil)
	within(t, "share of weight 3", float64(got["10.0.0.1:80"])/n, 0.75, 0.02)
}

func TestLeastRequestPrefersIdle(t *testing.T) {
	_, c := one(t, &model.Cluster{Name: "c", LB: "least_request", Endpoints: [][]model.Endpoint{{ep("10.0.0.1:80", 1), ep("10.0.0.2:80", 1)}}})
	busy, _ := c.Pick(&PickOptions{})
	for range 10 {
		busy.Started()
	}
	got := counts(t, c, 1000, nil)
	if got[busy.Key] != 0 {
		t.Errorf("the busy host got %d of 1000 with two hosts (P2C must pick the idle one)", got[busy.Key])
	}
	// The count survives a swap with the same endpoints.
	s := NewSet(nil)
	defer s.Close()
	m := &model.Cluster{Name: "c", LB: "least_request", Endpoints: [][]model.Endpoint{{ep("10.0.0.1:80", 1)}}}
	c2 := s.Update(map[string]*model.Cluster{"c": m})["c"]
	h, _ := c2.Pick(&PickOptions{})
	h.Started()
	c3 := s.Update(map[string]*model.Cluster{"c": {Name: "c", LB: "least_request", Endpoints: [][]model.Endpoint{{ep("10.0.0.1:80", 2)}}}})["c"]
	h2, _ := c3.Pick(&PickOptions{})
	if c3 != c2 || h2.Active() != 1 {
		t.Errorf("state across swap: same cluster %v, active %d (want 1)", c3 == c2, h2.Active())
	}
}

func TestPriorities(t *testing.T) {
	sick := ep("10.0.0.1:80", 1)
	sick.Healthy = false
	_, c := one(t, &model.Cluster{Name: "c", Endpoints: [][]model.Endpoint{{sick}, {ep("10.0.1.1:80", 1), ep("10.0.1.2:80", 1)}, {ep("10.0.2.1:80", 1)}}})
	got := counts(t, c, 10, nil)
	if got["10.0.1.1:80"] != 5 || got["10.0.1.2:80"] != 5 {
		t.Errorf("want the first priority with a healthy endpoint only: %v", got)
	}
	_, none := one(t, &model.Cluster{Name: "n", Endpoints: [][]model.Endpoint{{sick}}})
	if _, err := none.Pick(&PickOptions{}); !errors.Is(err, ErrNoHealthy) {
		t.Errorf("no healthy endpoint: err %v", err)
	}
	_, empty := one(t, &model.Cluster{Name: "e"})
	if _, err := empty.Pick(&PickOptions{}); !errors.Is(err, ErrNoHealthy) {
		t.Errorf("no endpoint: err %v", err)
	}
}

func hashedEndpoints(n int) []model.Endpoint {
	var eps []model.Endpoint
	for i := range n {
		eps = append(eps, ep(fmt.Sprintf("10.0.0.%d:80", i+1), 1))
	}
	return eps
}

func TestConsistentHashing(t *testing.T) {
	for _, lb := range []string{"ring_hash", "maglev"} {
		t.Run(lb, func(t *testing.T) {
			s := NewSet(nil)
			defer s.Close()
			c := s.Update(map[string]*model.Cluster{"c": {Name: "c", LB: lb, Endpoints: [][]model.Endpoint{hashedEndpoints(5)}}})["c"]
			before := map[int]string{}
			shares := map[string]int{}
			for k := range 5000 {
				o := &PickOptions{Hash: HashKey(fmt.Sprint("user-", k)), HasHash: true}
				h, _ := c.Pick(o)
				h2, _ := c.Pick(o)
				if h != h2 {
					t.Fatal("same key, different hosts")
				}
				before[k] = h.Key
				shares[h.Key]++
			}
			for k, n := range shares {
				within(t, "share of "+k, float64(n)/5000, 0.2, 0.07)
			}
			// Drop one host: only its keys move.
			c = s.Update(map[string]*model.Cluster{"c": {Name: "c", LB: lb, Endpoints: [][]model.Endpoint{hashedEndpoints(4)}}})["c"]
			// Its keys move; of the others only a few do (Maglev and a ring
			// sized by total weight both promise little disruption, not
			// none).
			moved, strays := 0, 0
			for k := range 5000 {
				h, _ := c.Pick(&PickOptions{Hash: HashKey(fmt.Sprint("user-", k)), HasHash: true})
				if before[k] == "10.0.0.5:80" {
					moved++
				} else if before[k] != h.Key {
					strays++
				}
			}
			within(t, "moved share", float64(moved)/5000, 0.2, 0.07)
			if strays > 5000*6/100 {
				t.Errorf("%d of %d keys of hosts that stayed moved", strays, 5000-moved)
			}
		})
	}
}

func TestPreviousHostsAvoided(t *testing.T) {
	_, c := one(t, &model.Cluster{Name: "c", LB: "random", Endpoints: [][]model.Endpoint{{ep("10.0.0.1:80", 1), ep("10.0.0.2:80", 1)}}})
	first, _ := c.Pick(&PickOptions{})
	for range 200 {
		h, _ := c.Pick(&PickOptions{Avoid: []*Host{first}, Attempts: 20})
		if h.Addr == first.Addr {
			t.Fatal("picked an avoided host with another one available")
		}
	}
	// With a single host there is nothing else: it is used.
	_, solo := one(t, &model.Cluster{Name: "s", Endpoints: [][]model.Endpoint{{ep("10.0.0.9:80", 1)}}})
	h, _ := solo.Pick(&PickOptions{})
	if h2, err := solo.Pick(&PickOptions{Avoid: []*Host{h}, Attempts: 3}); err != nil || h2.Addr != h.Addr {
		t.Errorf("single host: %v %v", h2, err)
	}
}

func TestOriginalDst(t *testing.T) {
	_, c := one(t, &model.Cluster{Name: "o", Kind: "original_dst"})
	h, err := c.Pick(&PickOptions{OrigDst: netip.MustParseAddrPort("10.1.2.3:8080")})
	if err != nil || h.Key != "10.1.2.3:8080" {
		t.Fatalf("got %v %v", h, err)
	}
	if _, err := c.Pick(&PickOptions{}); !errors.Is(err, ErrNoHealthy) {
		t.Errorf("no original destination: %v", err)
	}
}

func TestRequestAndRetryBreakers(t *testing.T) {
	_, c := one(t, &model.Cluster{Name: "c", MaxRequests: 2, MaxRetries: 1, Endpoints: [][]model.Endpoint{{ep("10.0.0.1:80", 1)}}})
	if !c.StartRequest() || !c.StartRequest() {
		t.Fatal("two requests must fit")
	}
	if c.StartRequest() {
		t.Fatal("a third request must overflow")
	}
	c.EndRequest()
	if !c.StartRequest() {
		t.Fatal("a slot came back")
	}
	if !c.StartRetry() || c.StartRetry() {
		t.Fatal("one retry at a time")
	}
	c.EndRetry()
	if st := c.Stats(); st.Overflows != 2 || st.Requests != 2 || st.Retries != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestPoolsReuseAndConnectionBreaker(t *testing.T) {
	var conns int
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns++
		}
	}
	srv.Start()
	defer srv.Close()
	addr := netip.MustParseAddrPort(srv.Listener.Addr().String())
	_, c := one(t, &model.Cluster{Name: "c", MaxConnections: 1, Endpoints: [][]model.Endpoint{{{Address: addr, Healthy: true}}}})
	get := func() error {
		h, _ := c.Pick(&PickOptions{})
		req, _ := http.NewRequest("GET", "http://"+h.Key+"/", nil)
		resp, err := c.Transport(false).RoundTrip(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	}
	for range 5 {
		if err := get(); err != nil {
			t.Fatal(err)
		}
	}
	if conns != 1 || c.Stats().Connections != 1 {
		t.Errorf("5 sequential requests opened %d connections (cluster counts %d), want 1", conns, c.Stats().Connections)
	}
	// The one connection is taken by a TCP dial: the pool cannot open
	// another.
	h, _ := c.Pick(&PickOptions{})
	if _, err := c.Dial(context.Background(), h); !errors.Is(err, ErrOverflow) {
		t.Errorf("dial beyond max_connections: %v", err)
	}
}

func TestConnectFailure(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	_, c := one(t, &model.Cluster{Name: "c", ConnectTimeout: time.Second, Endpoints: [][]model.Endpoint{{{Address: addr, Healthy: true}}}})
	req, _ := http.NewRequest("GET", "http://"+addr.String()+"/", nil)
	_, err := c.Transport(false).RoundTrip(req)
	var ce *ConnectError
	if !errors.As(err, &ce) {
		t.Fatalf("want a ConnectError, got %T %v", err, err)
	}
	if c.Stats().Connections != 0 {
		t.Errorf("failed dial still counted: %d", c.Stats().Connections)
	}
}

func TestRemovedClusterIsClosed(t *testing.T) {
	s := NewSet(nil)
	defer s.Close()
	cs := s.Update(map[string]*model.Cluster{"a": {Name: "a"}, "b": {Name: "b"}})
	a := cs["a"]
	a.rr.Store(41)
	cs2 := s.Update(map[string]*model.Cluster{"a": {Name: "a", LB: "random"}})
	if cs2["a"] != a || a.rr.Load() != 41 || a.Model().LB != "random" {
		t.Error("cluster a must keep its state and take the new config")
	}
	if !cs["b"].closed.Load() {
		t.Error("cluster b is gone and must be closed")
	}
	if got := s.Names(); len(got) != 1 || got[0] != "a" {
		t.Errorf("names %v", got)
	}
}
