package proxy

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/internal/synth"
	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Outlier detection on a route without a timeout (istiod's default: 0s,
// none) costs a request nothing: what a try reports to it needs no trace
// of its connection then. Allocations per proxied HTTP/1.1 request, as
// BenchmarkHTTP1Proxy measures them, with and without it.
func TestOutlierDetectionWithoutRouteTimeoutAllocatesNothingMore(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under the race detector")
	}
	perRequest := func(od bool) float64 {
		body := bytes.Repeat([]byte("x"), 1024)
		resp := append([]byte("HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n"), body...)
		up, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer up.Close()
		go func() {
			for {
				c, err := up.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					buf := make([]byte, 16<<10)
					for readMessage(c, buf) == nil {
						if _, err := c.Write(resp); err != nil {
							return
						}
					}
				}()
			}
		}()
		snap := synth.Snapshot(synth.Options{Services: 10, Listen: netip.MustParseAddrPort("127.0.0.1:0"),
			Backend: netip.MustParseAddrPort(up.Addr().String())})
		if od {
			for _, c := range snap.Clusters {
				c.Outlier = &model.OutlierDetection{Consecutive5xx: 5, EnforcingConsecutive5xx: 100,
					Interval: time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 10}
			}
		}
		e := New(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		defer e.Close()
		if err := e.Apply(snap); err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", e.ListenerAddrs()["waypoint"].String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		req := append([]byte("POST / HTTP/1.1\r\nHost: 10.96.0.30:80\r\nContent-Length: 1024\r\n\r\n"), body...)
		buf := make([]byte, 16<<10)
		one := func() {
			if _, err := c.Write(req); err != nil {
				t.Fatal(err)
			}
			if err := readMessage(c, buf); err != nil {
				t.Fatal(err)
			}
		}
		for range 100 {
			one() // warm the pools and caches
		}
		return testing.AllocsPerRun(2000, one)
	}
	without, with := perRequest(false), perRequest(true)
	if with > without+0.5 {
		t.Errorf("%.1f allocations per request with outlier detection, %.1f without", with, without)
	}
}
