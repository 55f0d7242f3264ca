package manage_test

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/manage"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// The plugin's view (Open, by the pin) and the daemon's (FromFD, on the map
// it loaded) are one map.
func TestKernelManageThroughPinAndFD(t *testing.T) {
	testbed.Require(t)
	cg := testbed.NewCgroup(t)
	dp, pins := testbed.Datapath(t, cg, loader.Sizes{Manage: 2})
	daemon := manage.FromFD(dp.Map(loader.MapManage).FD())
	plugin, err := manage.Open(pins)
	if err != nil {
		t.Fatal(err)
	}
	defer plugin.Close()

	id := manage.ClientIDFor(netip.MustParseAddr("10.244.0.7"))
	if err := plugin.Enroll(7, manage.Enrollment{ClientID: id}); err != nil {
		t.Fatal(err)
	}
	if err := daemon.Enroll(8, manage.Enrollment{Waypoint: true}); err != nil {
		t.Fatal(err)
	}
	if e, ok, err := daemon.Get(7); err != nil || !ok || e.ClientID != id || e.Waypoint {
		t.Fatalf("the plugin's entry seen by the daemon: %+v %v %v", e, ok, err)
	}
	all, err := plugin.List()
	if err != nil || len(all) != 2 || !all[8].Waypoint {
		t.Fatalf("list %v %v", all, err)
	}
	if err := plugin.Enroll(9, manage.Enrollment{}); err == nil || !strings.Contains(err.Error(), "is full (2 pods enrolled") {
		t.Fatalf("a third pod in a map of 2: %v, want it to say the map is full and its size", err)
	}
	if err := plugin.Enroll(0, manage.Enrollment{}); !errors.Is(err, manage.ErrInvalid) {
		t.Fatalf("cookie 0: %v", err)
	}
	if err := daemon.Release(7); err != nil {
		t.Fatal(err)
	}
	if err := plugin.Release(7); err != nil {
		t.Fatalf("releasing twice: %v", err)
	}
	if _, ok, err := plugin.Get(7); ok || err != nil {
		t.Fatalf("released entry: %v %v", ok, err)
	}
	if _, err := manage.Open(pins + "-missing"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no data path: %v", err)
	}
}
