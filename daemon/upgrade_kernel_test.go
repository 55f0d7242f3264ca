package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// An upgrade to a build whose kernel layout differs, under load: the
// running programs keep translating with their maps until the new daemon
// has filled the new ones from istiod's state, then every link switches.
// Not one request fails, over TCP (fortio, a new connection per request,
// and greeting servers, both families) and connected UDP, and every answer
// comes from a backend (the pods have no route to a VIP that is not
// translated).
//
// The new build is simulated by the pins: the stopped daemon's km_config
// is marked with another layout version, which is all the loader reads to
// tell its own set from another build's.
func TestKernelDaemonLayoutUpgradeUnderLoad(t *testing.T) {
	fortio := testbed.Fortio(t)
	f := newMeshFixtureWith(t, 3, map[uint32]uint32{80: 8080, 81: 8082}, func(p *testbed.Pod) {
		p.ServeTCP(t, 8080, p.Name)
		p.ServeUDP(t, 8080, p.Name)
		p.FortioServer(t, nil, fortio, 8082, "-http-port", "8082", "-grpc-port", "disabled",
			"-redirect-port", "disabled", "-tcp-port", "disabled", "-udp-port", "disabled")
	})
	frontendBefore := pinnedMapID(t, f.pins, loader.MapFrontend)

	type result struct {
		r   testbed.FortioResult
		err error
	}
	load := make(chan result, 1)
	go func() {
		r, err := f.client.RunFortioLoad(f.cg, fortio, "-c", "2", "-qps", "300", "-t", "12s", "-keepalive=false",
			"-timeout", "2s", "http://10.96.0.10:81/")
		load <- result{r, err}
	}()
	stopTCP4 := f.loop("10.96.0.10:80")
	stopTCP6 := f.loop("[fd00:96::10]:80")
	stopUDP := f.udpLoop("10.96.0.10:80")

	time.Sleep(2 * time.Second)
	f.d.stop(syscall.SIGTERM)
	markPinsWithLayout(t, f.pins, layout.Version+1)
	time.Sleep(300 * time.Millisecond) // the old programs alone, no daemon
	f.d.start()
	f.d.waitReady(30 * time.Second)

	res := <-load
	if res.err != nil {
		t.Fatal(res.err)
	}
	okTCP4, failTCP4, first4 := stopTCP4()
	okTCP6, failTCP6, first6 := stopTCP6()
	okUDP, failUDP, firstUDP := stopUDP()
	t.Logf("fortio: %d requests (new connection each) at %.0f/s, %d failed, p99 %s", res.r.Calls, res.r.QPS, res.r.Errors, res.r.P99)
	t.Logf("greeting loops: tcp4 %d ok %d failed, tcp6 %d ok %d failed; connected udp4 %d ok %d failed",
		okTCP4, failTCP4, okTCP6, failTCP6, okUDP, failUDP)

	log, _ := os.ReadFile(f.d.log.Name())
	if !strings.Contains(string(log), "has another layout") || !strings.Contains(string(log), "switched to this build's programs") {
		t.Fatalf("the daemon did not prepare and switch (log below)\n%s", tail(string(log), 30))
	}
	if got := pinnedLayout(t, f.pins); got != layout.Version {
		t.Fatalf("pinned layout %d after the upgrade, want %d", got, layout.Version)
	}
	if pinnedMapID(t, f.pins, loader.MapFrontend) == frontendBefore {
		t.Fatal("km_frontend was not replaced")
	}
	if res.r.Calls < 100 || okTCP4 == 0 || okTCP6 == 0 || okUDP == 0 {
		t.Fatal("too little load to tell")
	}
	if res.r.Errors != 0 || failTCP4+failTCP6+failUDP != 0 {
		t.Fatalf("requests failed across the upgrade: fortio %d, tcp4 %d (%s), tcp6 %d (%s), udp %d (%s)",
			res.r.Errors, failTCP4, first4, failTCP6, first6, failUDP, firstUDP)
	}
	// The new maps serve: the upgraded daemon's own state, read back.
	if m, _ := f.d.maps(); len(m.Services) != 1 || len(m.Services[0].Endpoints[0]) != 3 {
		t.Fatalf("maps after the upgrade: %+v", m)
	}
}

// udpLoop asks over a new connected UDP socket until stopped.
func (f *meshFixture) udpLoop(addr string) (stop func() (ok, failed int64, first string)) {
	return testbed.Repeat(f.t, 1, func() error {
		c, err := f.client.Dial("udp", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = udpWho(c)
		return err
	})
}

func openPinnedConfig(t *testing.T, pins string) *ebpf.Map {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(pins, "maps", loader.MapConfig), nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// markPinsWithLayout makes the pinned set claim it was written by another
// layout version.
func markPinsWithLayout(t *testing.T, pins string, v uint32) {
	t.Helper()
	m := openPinnedConfig(t, pins)
	defer m.Close()
	var c layout.ConfigValue
	if err := m.Lookup(uint32(0), &c); err != nil {
		t.Fatal(err)
	}
	c.LayoutVersion = v
	if err := m.Put(uint32(0), c); err != nil {
		t.Fatal(err)
	}
}

func pinnedLayout(t *testing.T, pins string) uint32 {
	t.Helper()
	m := openPinnedConfig(t, pins)
	defer m.Close()
	var c layout.ConfigValue
	if err := m.Lookup(uint32(0), &c); err != nil {
		t.Fatal(err)
	}
	return c.LayoutVersion
}

func pinnedMapID(t *testing.T, pins, name string) ebpf.MapID {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(pins, "maps", name), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal(fmt.Errorf("no id for %s", name))
	}
	return id
}
