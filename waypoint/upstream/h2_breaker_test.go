package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// oneStreamH2C is an h2c server taking one stream at a time per
// connection, whose handler answers "ok" once release gives it a turn.
func oneStreamH2C(t *testing.T, release <-chan struct{}, arrived chan<- struct{}) netip.AddrPort {
	t.Helper()
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	stop := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
			io.WriteString(w, "ok")
		case <-stop:
		}
	}))
	srv.Config.Protocols = &p
	srv.Config.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: 1}
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(stop) }) // first: a failed test leaves no handler waiting
	return netip.MustParseAddrPort(srv.Listener.Addr().String())
}

func h2Get(c *Cluster, h *Host) (string, error) {
	req, _ := http.NewRequest("GET", "http://"+h.Key+"/", nil)
	resp, err := c.RoundTrip(context.Background(), req, h, true)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// At max_connections with every stream of its connections taken, an
// HTTP/2 request waits for a stream to free up, as a pending request
// (bounded by max_pending_requests), as Envoy's pool queues it; it is
// not failed as an overflow (503 UO) while the endpoint is only busy.
func TestH2AtMaxConnectionsWaitsForAStream(t *testing.T) {
	release, arrived := make(chan struct{}), make(chan struct{}, 4)
	addr := oneStreamH2C(t, release, arrived)
	_, c := one(t, &model.Cluster{Name: "c", Protocol: "http2", MaxConnections: 1, MaxPendingRequests: 1,
		Endpoints: [][]model.Endpoint{{{Address: addr, Healthy: true}}}})
	h, _ := c.Pick(&PickOptions{})
	type result struct {
		body string
		err  error
	}
	// One request first: once its answer is in, so is the endpoint's
	// SETTINGS (one stream), which it sent before.
	go func() { <-arrived; release <- struct{}{} }()
	if b, err := h2Get(c, h); err != nil || b != "ok" {
		t.Fatalf("warm-up: %q %v", b, err)
	}
	first, second := make(chan result, 1), make(chan result, 1)
	go func() { b, err := h2Get(c, h); first <- result{b, err} }()
	<-arrived // the connection's one stream is taken
	go func() { b, err := h2Get(c, h); second <- result{b, err} }()
	time.Sleep(200 * time.Millisecond)
	// A third finds the one pending slot taken: that is an overflow.
	if _, err := h2Get(c, h); !errors.Is(err, ErrOverflow) {
		t.Errorf("beyond max_pending_requests: %v, want an overflow", err)
	}
	select {
	case r := <-second:
		t.Fatalf("the second request did not wait for the stream: %q %v", r.body, r.err)
	default:
	}
	release <- struct{}{}
	if r := <-first; r.err != nil || r.body != "ok" {
		t.Fatalf("first: %q %v", r.body, r.err)
	}
	<-arrived
	release <- struct{}{}
	select {
	case r := <-second:
		if r.err != nil || r.body != "ok" {
			t.Fatalf("second: %q %v", r.body, r.err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the second request never got the freed stream")
	}
	if n := c.Stats().Connections; n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}
