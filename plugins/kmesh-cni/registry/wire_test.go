//go:build !kmesh_grpc_client

package registry

import (
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
)

// full is a Pod with every field set; the long reason makes the
// sub-message's length take two varint bytes.
func full() (*Pod, *cniv1.Pod) {
	reason := strings.Repeat("r", 200)
	ours := &Pod{Name: "web", Namespace: "shop", UID: "u-1", ContainerID: "c1", NetnsPath: "/var/run/netns/x",
		NetnsCookie: 1 << 40, IPs: []string{"10.244.0.5", "", "fd00::5"},
		Interfaces: []Interface{{Name: "eth0", Mac: "aa:bb", Sandbox: "/var/run/netns/x"}, {Name: "veth1"}},
		HostVeth:   "veth1", Enrolled: true, Reason: reason, CgroupPath: "/kubepods/u-1", CgroupID: 300, CNIIfname: "eth0"}
	theirs := &cniv1.Pod{Name: "web", Namespace: "shop", Uid: "u-1", ContainerId: "c1", NetnsPath: "/var/run/netns/x",
		NetnsCookie: 1 << 40, Ips: []string{"10.244.0.5", "", "fd00::5"},
		Interfaces: []*cniv1.Interface{{Name: "eth0", Mac: "aa:bb", Sandbox: "/var/run/netns/x"}, {Name: "veth1"}},
		HostVeth:   "veth1", Enrolled: true, Reason: reason, CgroupPath: "/kubepods/u-1", CgroupId: 300, CniIfname: "eth0"}
	return ours, theirs
}

// The hand encoding must follow cni.proto: a field added there and not
// here fails this test.
func TestWireCoversEveryField(t *testing.T) {
	count := map[protoreflect.Message]int{
		(&cniv1.Pod{}).ProtoReflect():                14,
		(&cniv1.Interface{}).ProtoReflect():          3,
		(&cniv1.EnrollPodRequest{}).ProtoReflect():   1,
		(&cniv1.EnrollPodResponse{}).ProtoReflect():  1,
		(&cniv1.ReleasePodRequest{}).ProtoReflect():  3,
		(&cniv1.ReleasePodResponse{}).ProtoReflect(): 1,
		(&cniv1.ListPodsRequest{}).ProtoReflect():    0,
		(&cniv1.ListPodsResponse{}).ProtoReflect():   1,
		(&cniv1.StatusRequest{}).ProtoReflect():      0,
		(&cniv1.StatusResponse{}).ProtoReflect():     6,
		(&cniv1.DecidePodRequest{}).ProtoReflect():   3,
		(&cniv1.DecidePodResponse{}).ProtoReflect():  3,
	}
	for m, n := range count {
		if got := m.Descriptor().Fields().Len(); got != n {
			t.Errorf("%s has %d fields, wire.go handles %d: update wire.go and this test", m.Descriptor().FullName(), got, n)
		}
	}
}

func TestWireEncodesWhatProtobufDecodes(t *testing.T) {
	ours, theirs := full()
	got := &cniv1.EnrollPodRequest{}
	if err := proto.Unmarshal(encodeEnroll(ours), got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, &cniv1.EnrollPodRequest{Pod: theirs}) {
		t.Fatalf("decoded %v\nwant %v", got, theirs)
	}
	// Zero values stay out, as proto3 writes them.
	for _, p := range []*Pod{{}, {ContainerID: "c"}} {
		want, _ := proto.Marshal(&cniv1.EnrollPodRequest{Pod: &cniv1.Pod{ContainerId: p.ContainerID}})
		if b := encodeEnroll(p); string(b) != string(want) {
			t.Errorf("encode %+v: % x, protobuf writes % x", p, b, want)
		}
	}
	dec := &cniv1.DecidePodRequest{}
	if err := proto.Unmarshal(encodeDecide("shop", "cart", "u1"), dec); err != nil ||
		!proto.Equal(dec, &cniv1.DecidePodRequest{Namespace: "shop", Name: "cart", Uid: "u1"}) {
		t.Fatalf("decide: %v %v", dec, err)
	}
	rel := &cniv1.ReleasePodRequest{}
	if err := proto.Unmarshal(encodeRelease("c1", "/var/run/netns/x", 99), rel); err != nil ||
		!proto.Equal(rel, &cniv1.ReleasePodRequest{ContainerId: "c1", NetnsPath: "/var/run/netns/x", NetnsCookie: 99}) {
		t.Fatalf("release: %v %v", rel, err)
	}
}

func TestWireDecodesWhatProtobufEncodes(t *testing.T) {
	ours, theirs := full()
	b, err := proto.Marshal(&cniv1.ListPodsResponse{Pods: []*cniv1.Pod{theirs, {ContainerId: "c2"}}})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := decodePods(b)
	if err != nil || len(pods) != 2 {
		t.Fatalf("%d pods, %v", len(pods), err)
	}
	if !reflect.DeepEqual(pods[0], ours) || !reflect.DeepEqual(pods[1], &Pod{ContainerID: "c2"}) {
		t.Fatalf("decoded %+v\nwant %+v", pods[0], ours)
	}
	b, _ = proto.Marshal(&cniv1.StatusResponse{Ready: true, Message: "m", Pods: 3, EnrolledPods: 2, Version: "v", MeshSynced: true})
	st, err := decodeStatus(b)
	if err != nil || *st != (Status{Ready: true, Message: "m", Pods: 3, EnrolledPods: 2, Version: "v", MeshSynced: true}) {
		t.Fatalf("status %+v %v", st, err)
	}
	b, _ = proto.Marshal(&cniv1.DecidePodResponse{Known: true, Enroll: true, Reason: "namespace label"})
	if d, err := decodeDecision(b); err != nil || *d != (Decision{Known: true, Enroll: true, Reason: "namespace label"}) {
		t.Fatalf("decision %+v %v", d, err)
	}
	b, _ = proto.Marshal(&cniv1.EnrollPodResponse{Enrolled: true})
	if v, err := decodeBool(b); !v || err != nil {
		t.Fatalf("enrolled %v %v", v, err)
	}
	if v, err := decodeBool(nil); v || err != nil {
		t.Fatalf("empty answer: %v %v", v, err)
	}
}

// Unknown fields, as a newer daemon sends, are skipped; a broken message
// is an error, not a partial pod.
func TestWireSkipsUnknownFieldsAndRejectsBrokenOnes(t *testing.T) {
	b, _ := proto.Marshal(&cniv1.Pod{ContainerId: "c1", NetnsCookie: 5})
	b = append(b, 0xf8, 0x01, 7)                      // field 31, varint 7
	b = append(b, 0x85, 0x02, 1, 2, 3, 4)             // field 32, fixed32
	b = append(b, 0x8a, 0x02, 2, 'h', 'i')            // field 33, bytes
	b = append(b, 0x91, 0x02, 1, 2, 3, 4, 5, 6, 7, 8) // field 34, fixed64
	p, err := decodePod(b)
	if err != nil || p.ContainerID != "c1" || p.NetnsCookie != 5 {
		t.Fatalf("%+v %v", p, err)
	}
	for name, bad := range map[string][]byte{
		"truncated string": {0x22, 5, 'a'},
		"truncated varint": {0x30, 0x80},
		"cookie as string": {0x32, 1, 'x'},
		"name as varint":   {0x08, 1},
		"bad interface":    {0x42, 2, 0x08, 1},
		"truncated tag":    {0x80},
	} {
		if _, err := decodePod(bad); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func BenchmarkEncodeEnroll(b *testing.B) {
	ours, _ := full()
	b.ReportAllocs()
	for b.Loop() {
		encodeEnroll(ours)
	}
}

// Whatever the daemon sends, decoding does not panic, and what both
// decoders accept they read alike.
func FuzzDecodePod(f *testing.F) {
	_, theirs := full()
	b, _ := proto.Marshal(theirs)
	f.Add(b)
	f.Add([]byte{0x22, 5, 'a'})
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		ours, err := decodePod(b)
		theirs := &cniv1.Pod{}
		if err != nil || (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, theirs) != nil {
			return
		}
		back := &cniv1.Pod{}
		if err := proto.Unmarshal(ours.append(nil), back); err != nil {
			t.Fatalf("re-encoding what was read: %v", err)
		}
		if !proto.Equal(back, theirs) {
			t.Fatalf("read %v, protobuf reads %v", back, theirs)
		}
	})
}
