package cnistate

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

func checkEncoding(t *testing.T, r *Record) {
	t.Helper()
	want, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if got := r.appendJSON(nil); !bytes.Equal(got, want) {
		t.Fatalf("appendJSON\n%s\nencoding/json\n%s", got, want)
	}
}

func TestEncodingIsEncodingJSONs(t *testing.T) {
	checkEncoding(t, &Record{})
	checkEncoding(t, &Record{
		Network: "k8s-pod-network", ContainerID: "0123abcd", IfName: "eth0", Netns: "/var/run/netns/cni-1",
		Cookie: 1<<63 + 5, PodName: "web-0", PodNamespace: "default", PodUID: "6f1c-22",
		IPs:        []string{"10.244.0.5", "fd00::5"},
		Interfaces: []Interface{{Name: "cni0", Mac: "aa:bb"}, {Name: "eth0", Sandbox: "/var/run/netns/cni-1"}, {}},
		HostVeth:   "veth1234", HostIfindex: -7, BPFDir: "/sys/fs/bpf/kmesh", Enrolled: true, WantEnrolled: true, TCKey: "k",
		Reason:     "namespace default has istio.io/dataplane-mode=kmesh <&> \"quoted\"\n\t\x01\x7f\u2028\u2029 é \xff",
		CgroupPath: "/kubepods/pod6f1c-22", CgroupID: 42, Signaled: true,
		Created: time.Date(2026, 11, 27, 7, 30, 1, 123456789, time.FixedZone("x", 3600)),
	})
}

// FuzzEncoding: byte for byte what encoding/json writes, for any text.
//
//	go test ./internal/cnistate -run '^$' -fuzz '^FuzzEncoding$' -fuzztime=30s
func FuzzEncoding(f *testing.F) {
	f.Add("k8s", "eth0", "10.0.0.1", "reason \"x\" <y>", uint64(7), int64(1700000000123456789), true)
	f.Add("", "\xff\xfe", "\u2028", "\x00\x1f\\", uint64(0), int64(0), false)
	f.Fuzz(func(t *testing.T, a, b, c, d string, n uint64, ns int64, flag bool) {
		r := &Record{
			Network: a, ContainerID: b, IfName: c, Netns: d, Cookie: n, PodName: d, PodNamespace: c, PodUID: b,
			HostVeth: a, HostIfindex: int(n), BPFDir: b, Enrolled: flag, WantEnrolled: !flag, TCKey: c, Reason: d, CgroupPath: a,
			CgroupID: n >> 1, Signaled: !flag,
			Created: time.Unix(0, ns%(1<<62)).UTC(),
		}
		if flag {
			r.IPs = []string{a, b}
			r.Interfaces = []Interface{{Name: c, Mac: d, Sandbox: a}, {Name: b}}
		}
		checkEncoding(t, r)
	})
}
