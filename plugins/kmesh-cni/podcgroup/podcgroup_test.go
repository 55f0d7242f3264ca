package podcgroup

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestFind(t *testing.T) {
	const uid = "7d2c1f1e-5b8a-4e0e-9d67-3f0f3a7c2b11"
	cases := map[string]string{
		"cgroupfs guaranteed":  "/kubepods/pod" + uid,
		"cgroupfs burstable":   "/kubepods/burstable/pod" + uid,
		"systemd guaranteed":   "/kubepods.slice/kubepods-pod7d2c1f1e_5b8a_4e0e_9d67_3f0f3a7c2b11.slice",
		"systemd besteffort":   "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod7d2c1f1e_5b8a_4e0e_9d67_3f0f3a7c2b11.slice",
		"nested under kubelet": "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubepods-burstable-pod7d2c1f1e_5b8a_4e0e_9d67_3f0f3a7c2b11.slice",
	}
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			// Decoys: another pod, and a look-alike outside the kubelet's tree.
			for _, d := range []string{"/kubepods/burstable/pod0000", "/system.slice/pod" + uid, want} {
				if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			rel, id, ok := Find(root, uid)
			if !ok || rel != want {
				t.Fatalf("got %q %v, want %q", rel, ok, want)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join(root, want), &st); err != nil || st.Ino != id {
				t.Fatalf("id %d, inode %d (%v)", id, st.Ino, err)
			}
		})
	}
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "system.slice", "pod"+uid), 0o755)
	if _, _, ok := Find(root, uid); ok {
		t.Fatal("found a pod cgroup outside the kubelet's tree")
	}
	if _, _, ok := Find(root, ""); ok {
		t.Fatal("found a cgroup for no UID")
	}
	if _, _, ok := Find(root, "../x"); ok {
		t.Fatal("accepted a path in the UID")
	}
}
