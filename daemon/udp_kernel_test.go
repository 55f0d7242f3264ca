package main

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/daemon/xds"
	"github.com/kmesh-go/kmesh/daemon/xds/xdstest"
)

// istiod takes the endpoint of a connected UDP socket out of the service:
// the daemon has the socket aborted at once (a blocked receive fails), and
// the application's new socket reaches the endpoint that is left.
func TestKernelDaemonConnectedUDPFollowsEndpoints(t *testing.T) {
	f := newMeshFixture(t, 2)
	for _, p := range f.servers {
		p.ServeUDP(t, 8080, p.Name) // the service's 80 -> 8080 holds for UDP too
	}
	for _, vip := range []string{"10.96.0.10:80", "[fd00:96::10]:80"} {
		c, err := f.client.Dial("udp", vip, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		who, err := udpWho(c)
		if err != nil {
			t.Fatalf("%s: %v", vip, err)
		}
		i := strings.TrimPrefix(who, "s")
		readErr := make(chan error, 1)
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := c.Read(make([]byte, 512))
			readErr <- err
		}()

		srv := f.servers[who[1]-'0']
		n, w := xdstest.Workload("uid-s"+i, "default", who, []string{srv.IP4.String(), srv.IP6.String()}, []string{webKey},
			func(w *workloadapi.Workload) { w.Status = workloadapi.WorkloadStatus_UNHEALTHY })
		start := time.Now()
		if err := f.xds.Set(xds.TypeAddress, map[string]types.Resource{n: w}); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-readErr:
			if !errors.Is(err, syscall.ECONNABORTED) {
				t.Fatalf("%s: receive on the socket to %s: %v, want ECONNABORTED", vip, who, err)
			}
			t.Logf("%s: the socket to %s failed %s after istiod removed it", vip, who, time.Since(start).Round(time.Millisecond))
		case <-time.After(3 * time.Second):
			t.Fatalf("%s: the socket to %s still waits 3s after istiod removed its endpoint", vip, who)
		}
		c2, err := f.client.Dial("udp", vip, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		if other, err := udpWho(c2); err != nil || other == who {
			t.Fatalf("%s: a new socket reached %q (%v), want the other endpoint", vip, other, err)
		}
		// Healthy again for the next family.
		n, w = xdstest.Workload("uid-s"+i, "default", who, []string{srv.IP4.String(), srv.IP6.String()}, []string{webKey})
		if err := f.xds.Set(xds.TypeAddress, map[string]types.Resource{n: w}); err != nil {
			t.Fatal(err)
		}
		f.waitFor(who+" back in the service", func() bool {
			m, _ := f.d.maps()
			return len(m.Services[0].Endpoints[0]) == 2
		})
	}
}

func udpWho(c net.Conn) (string, error) {
	if _, err := c.Write([]byte("who")); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	who, _, _ := strings.Cut(string(buf[:n]), "\n")
	if !strings.HasPrefix(who, "s") {
		return "", fmt.Errorf("reply %q", buf[:n])
	}
	return who, nil
}
