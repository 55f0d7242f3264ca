package cgroupv2

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Whichever way it is found, the answer is a cgroup2 mount listed in the
// mount table.
func TestMountpointIsACgroup2Mount(t *testing.T) {
	mnt, err := Mountpoint()
	if err != nil {
		t.Skipf("no cgroup v2 here: %v", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Fatalf("%s: statfs %v, type %#x", mnt, err, st.Type)
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == mnt && strings.Contains(line, " - cgroup2 ") {
			return
		}
	}
	t.Fatalf("%s is not a cgroup2 mount in /proc/self/mountinfo", mnt)
}
