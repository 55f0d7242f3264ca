package main

import (
	"net/netip"
	"testing"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
)

func TestPodAddrs(t *testing.T) {
	var p podAddrs
	if p.has(netip.MustParseAddr("10.244.0.5")) {
		t.Fatal("an empty set has an address")
	}
	p.refresh(func() []*cniv1.Pod {
		return []*cniv1.Pod{
			{ContainerId: "a", Enrolled: true, Ips: []string{"10.244.0.5/24", "fd00:244::5/64"}},
			{ContainerId: "b", Enrolled: true, Ips: []string{"10.244.0.6", "not an address"}},
			{ContainerId: "c", Ips: []string{"10.244.0.8/24"}}, // not enrolled: its ends are not recorded
		}
	})
	for _, a := range []string{"10.244.0.5", "fd00:244::5", "10.244.0.6", "::ffff:10.244.0.6"} {
		if !p.has(netip.MustParseAddr(a)) {
			t.Errorf("%s missing", a)
		}
	}
	for _, a := range []string{"10.244.0.7", "10.244.0.8"} {
		if p.has(netip.MustParseAddr(a)) {
			t.Errorf("%s is no enrolled pod's", a)
		}
	}
	p.refresh(func() []*cniv1.Pod { return nil })
	if p.has(netip.MustParseAddr("10.244.0.5")) {
		t.Error("a removed pod's address stays")
	}
}
