package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	proxyproto "github.com/pires/go-proxyproto"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/xds"
	"github.com/kmesh-go/kmesh/daemon/xds/xdstest"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

const waypointKey = "default/waypoint.default.svc.cluster.local"

// The daemon end to end: istiod names a waypoint for web by hostname; the
// daemon resolves it, flags the waypoint's pod in km_manage, and a client
// reaches the waypoint pod on the waypoint port with a PROXY v2 header
// naming the VIP it dialled, while the waypoint pod itself reaches web's
// backend. When web no longer names it, the pod is a plain pod again.
func TestKernelDaemonWaypoint(t *testing.T) {
	f := newMeshFixture(t, 1)
	wp := f.net.AddPod(t, "wp")
	// The waypoint: reads the header, answers with the destination it
	// names, or with what went wrong.
	ln, err := wp.Listen("tcp", fmt.Sprintf(":%d", loader.DefaultWaypointPort))
	if err != nil {
		t.Fatal(err)
	}
	testbed.Serve(t, ln, func(c net.Conn) {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		h, err := proxyproto.Read(bufio.NewReader(c))
		if err != nil {
			fmt.Fprintf(c, "error %v\n", err)
			return
		}
		fmt.Fprintf(c, "to %s\n", h.DestinationAddr)
	})
	seen := len(f.xds.Replies())
	nWP, wpSvc := xdstest.Service("default", "waypoint", []string{"10.96.0.50"}, map[uint32]uint32{15008: 15008})
	nWPPod, wpPod := xdstest.Workload("uid-wp", "default", "wp", []string{wp.IP4.String(), wp.IP6.String()}, []string{waypointKey})
	nWeb, web := xdstest.Service("default", "web", []string{"10.96.0.10", "fd00:96::10"}, map[uint32]uint32{80: 8080},
		func(s *workloadapi.Service) {
			s.Waypoint = &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Hostname{
				Hostname: &workloadapi.NamespacedHostname{Namespace: "default", Hostname: "waypoint.default.svc.cluster.local"}}, HboneMtlsPort: 15008}
		})
	if err := f.xds.Set(xds.TypeAddress, map[string]types.Resource{nWP: wpSvc, nWPPod: wpPod, nWeb: web}); err != nil {
		t.Fatal(err)
	}
	if r, err := f.xds.WaitReply(seen, 5*time.Second); err != nil || r.NACK != "" {
		t.Fatalf("waypoint update: %+v %v", r, err)
	}
	f.d.enroll(wp, "wp-sandbox")
	cookie, err := podns.Cookie(wp.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := maps.OpenManage(f.pins)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	flagged := func() bool {
		e, ok, err := m.Get(cookie)
		return err == nil && ok && e.Waypoint && e.WorkloadID != 0
	}
	f.waitFor("the waypoint pod flagged in km_manage", flagged)

	// The client speaks first, as HTTP does: its first bytes carry the
	// header.
	say := func(addr string) (string, error) {
		c, err := f.client.Dial("tcp", addr, 2*time.Second)
		if err != nil {
			return "", err
		}
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\n\r\n")
		return testbed.Greeting(c, 5*time.Second)
	}
	for _, vip := range []string{"10.96.0.10:80", "[fd00:96::10]:80"} {
		if got, err := say(vip); err != nil || got != "to "+vip {
			t.Fatalf("client to %s: %q %v, want the waypoint naming the VIP", vip, got, err)
		}
	}
	if who, err := wp.Ask("tcp", "10.96.0.10:80", 2*time.Second); err != nil || who != "s0" {
		t.Fatalf("waypoint pod to web: %q %v, want s0", who, err)
	}
	if v := f.d.metric(f.t, "kmesh_datapath_events_total", `event="wp_header"`); v < 2 {
		t.Errorf("kmesh_datapath_events_total{event=\"wp_header\"} = %v, want 2", v)
	}

	// web drops its waypoint: the waypoint's pod is a plain pod again and
	// clients reach web directly.
	seen = len(f.xds.Replies())
	_, web = xdstest.Service("default", "web", []string{"10.96.0.10", "fd00:96::10"}, map[uint32]uint32{80: 8080})
	if err := f.xds.Set(xds.TypeAddress, map[string]types.Resource{nWeb: web}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.xds.WaitReply(seen, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	f.waitFor("the waypoint flag cleared", func() bool { return !flagged() })
	if who, err := f.ask("10.96.0.10:80"); err != nil || who != "s0" {
		t.Fatalf("client to web without a waypoint: %q %v", who, err)
	}
}
