package cniserver

import (
	"fmt"
	"path/filepath"
	"testing"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
)

// What EnrollPod costs the daemon on a node that already has n pods: the
// plugin's ADD waits for it.
func BenchmarkRegistryAdd(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			r, err := NewRegistry(filepath.Join(b.TempDir(), "pods.json"), &fakeEnroller{cookies: map[uint64]bool{}})
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			pod := func(i int) *cniv1.Pod {
				return &cniv1.Pod{Name: fmt.Sprintf("web-%d", i), Namespace: "default", Uid: fmt.Sprintf("uid-%d", i),
					ContainerId: fmt.Sprintf("%064d", i), NetnsPath: fmt.Sprintf("/var/run/netns/cni-%d", i), NetnsCookie: uint64(i + 1),
					Ips: []string{"10.244.0.1/24"}, HostVeth: "veth12345678", Reason: "namespace label istio.io/dataplane-mode=kmesh",
					Interfaces: []*cniv1.Interface{{Name: "veth12345678", Mac: "02:00:00:00:00:01"}, {Name: "eth0", Sandbox: "/var/run/netns/x"}}}
			}
			for i := range n {
				if _, err := r.Add(pod(i)); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := r.Add(pod(n + i%10)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
