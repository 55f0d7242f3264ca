package main

// The daemon benchmark (make bench): a full snapshot from the xDS server
// into the maps, the daemon's memory, and single endpoint changes. It
// prints a table and never fails on a time.

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/kmesh-go/kmesh/daemon/xds"
	"github.com/kmesh-go/kmesh/daemon/xds/xdstest"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

func TestBenchDaemon(t *testing.T) {
	if os.Getenv("KMESH_BENCH") != "1" {
		t.Skip("benchmark: make bench")
	}
	testbed.Require(t)
	const services, perService = 10000, 10
	cg := testbed.NewCgroup(t)
	pins := testbed.PinDir(t)
	srv, err := xdstest.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	d := startDaemon(t, cg, pins, "--xds-address", srv.Addr, "--xds-plaintext", "--log-level", "debug")
	d.waitReady(10 * time.Second)
	rssIdle := rss(t, d.cmd.Process.Pid)

	snapshot := xdstest.Resources(xdstest.Mesh(services, perService))
	seen := len(srv.Replies())
	start := time.Now()
	if err := srv.Set(xds.TypeAddress, snapshot); err != nil {
		t.Fatal(err)
	}
	r, err := srv.WaitReply(seen, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	full := r.At.Sub(start)
	if r.NACK != "" {
		t.Fatalf("snapshot NACKed: %s", r.NACK)
	}
	sentAt, _ := srv.SentAt(r.Nonce)
	_, metrics, _ := d.get("/metrics")
	if !strings.Contains(string(metrics), fmt.Sprintf(`kmesh_map_entries{map="km_endpoint"} %d`, services*perService)) {
		t.Fatalf("endpoints not all in the maps after the ACK")
	}
	time.Sleep(3 * time.Second) // steady state: the snapshot's garbage returned
	rssFull := rss(t, d.cmd.Process.Pid)

	// One endpoint added to (then removed from) a service, 300 times.
	var lat []time.Duration
	for i := range 300 {
		k := services*perService + i
		key := fmt.Sprintf("ns%d/svc%d.ns%d.svc.cluster.local", i%100, i, i%100)
		n, w := xdstest.Workload(fmt.Sprintf("uid-%d", k), fmt.Sprintf("ns%d", i%100), "extra", []string{fmt.Sprintf("10.200.%d.%d", i/256, i%256)}, []string{key})
		for _, res := range []types.Resource{w, nil} {
			seen := len(srv.Replies())
			if err := srv.Set(xds.TypeAddress, map[string]types.Resource{n: res}); err != nil {
				t.Fatal(err)
			}
			r, err := srv.WaitReply(seen, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			sent, ok := srv.SentAt(r.Nonce)
			if !ok || r.NACK != "" {
				t.Fatalf("reply %+v", r)
			}
			lat = append(lat, r.At.Sub(sent))
		}
	}
	slices.Sort(lat)
	if b, err := os.ReadFile(d.log.Name()); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "msg=decoded") || strings.Contains(l, `msg="mesh update"`) {
				if strings.Contains(l, "resources=110000") || strings.Contains(l, "backends=100000") {
					fmt.Println("phase timing:", l[strings.Index(l, "msg="):])
				}
			}
		}
	}

	fmt.Printf("\n### kmesh-daemon: istiod-style xDS into the kernel maps\n\n")
	fmt.Println("| what | result |")
	fmt.Println("|---|---|")
	fmt.Printf("| full snapshot %d services x %d endpoints (%d resources), server send -> maps written (ACK) | %s |\n",
		services, perService, len(snapshot), r.At.Sub(sentAt).Round(time.Millisecond))
	fmt.Printf("| same, from the update call on the server (includes the server's encoding) | %s |\n", full.Round(time.Millisecond))
	fmt.Printf("| daemon resident memory, idle -> with the snapshot | %.1f MiB -> %.1f MiB |\n", rssIdle, rssFull)
	fmt.Printf("| one endpoint change, server send -> map written (ACK), p50 / p99 / max over %d | %s / %s / %s |\n",
		len(lat), lat[len(lat)/2].Round(10*time.Microsecond), lat[len(lat)*99/100].Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
}

func rss(t *testing.T, pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
