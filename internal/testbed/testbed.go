// Package testbed builds what kernel tests need on a real kernel: a cgroup v2
// subtree, a bpffs pin directory, and "pods" (network namespaces joined by
// veth to a bridge inside a private "node" namespace). Everything is named
// with this process's id and removed by t.Cleanup, also on failure; a later
// run sweeps what a killed run left behind.
//
// Nothing here touches the host's own interfaces or root cgroup: the bridge
// lives in a namespace of its own and the pods have no default route, so a
// destination the data path does not rewrite fails inside the namespace.
package testbed

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/internal/cgroupv2"
)

// EnvKernel turns kernel tests on. Without it they skip; with it a missing
// prerequisite fails the test instead of hiding it.
const EnvKernel = "KMESH_KERNEL_TESTS"

// Require marks a test as a kernel test.
func Require(t testing.TB) {
	t.Helper()
	if os.Getenv(EnvKernel) != "1" {
		t.Skipf("kernel test: set %s=1 and run as root", EnvKernel)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("%s=1 but not root", EnvKernel)
	}
	sweepOnce()
}

var seq atomic.Uint32

// prefix names every object of this process: kmt<pid>.
func prefix() string { return "kmt" + strconv.Itoa(os.Getpid()) }

// Name returns a fresh object name for this process, short enough for an
// interface name (15 bytes) when pid < 10^7.
func Name() string { return fmt.Sprintf("%s%c%d", prefix(), 'a', seq.Add(1)) }

// Cgroup is a cgroup v2 directory the test made.
type Cgroup struct {
	Path string
}

// NewCgroup makes a cgroup v2 directory under the hierarchy's root.
func NewCgroup(t testing.TB) *Cgroup {
	t.Helper()
	mnt, err := cgroupv2.Mountpoint()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mnt, Name())
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	cg := &Cgroup{Path: dir}
	t.Cleanup(func() { cg.remove(t, mnt) })
	return cg
}

func (c *Cgroup) remove(t testing.TB, mnt string) {
	// Anything still inside (this process, a child) goes back to the root.
	if pids, err := cgroupv2.Procs(c.Path); err == nil {
		for _, pid := range pids {
			_ = cgroupv2.Move(mnt, pid)
		}
	}
	if err := os.Remove(c.Path); err != nil && !os.IsNotExist(err) {
		t.Errorf("remove cgroup %s: %v", c.Path, err)
	}
}

// Join moves this test process into the cgroup until the test ends, so the
// sockets it opens pass through programs attached there.
func (c *Cgroup) Join(t testing.TB) {
	t.Helper()
	mnt, err := cgroupv2.Mountpoint()
	if err != nil {
		t.Fatal(err)
	}
	prev, err := cgroupv2.Of(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if err := cgroupv2.Move(c.Path, os.Getpid()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cgroupv2.Move(filepath.Join(mnt, prev), os.Getpid()); err != nil {
			_ = cgroupv2.Move(mnt, os.Getpid())
		}
	})
}

// PinDir returns a fresh directory path on bpffs (not created) that is
// emptied and removed when the test ends.
func PinDir(t testing.TB) string {
	t.Helper()
	if err := ensureBPFFS(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join("/sys/fs/bpf", Name())
	t.Cleanup(func() {
		if err := loader.RemovePins(dir); err != nil {
			t.Errorf("remove pins: %v", err)
		}
	})
	return dir
}

// Datapath loads and attaches the data path to cg with pins under a fresh
// directory, and uninstalls it when the test ends.
func Datapath(t testing.TB, cg *Cgroup, sizes loader.Sizes) (*loader.Datapath, string) {
	t.Helper()
	pins := PinDir(t)
	dp, err := loader.Open(loader.Config{PinDir: pins, CgroupPath: cg.Path, Sizes: sizes})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dp.Close() })
	return dp, pins
}

// DatapathWith is Datapath with features turned on (cfg's PinDir and
// CgroupPath are filled in).
func DatapathWith(t testing.TB, cg *Cgroup, cfg loader.Config) (*loader.Datapath, string) {
	t.Helper()
	pins := PinDir(t)
	cfg.PinDir, cfg.CgroupPath = pins, cg.Path
	dp, err := loader.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dp.Close() })
	return dp, pins
}

func ensureBPFFS() error {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf" {
			return nil
		}
	}
	return fmt.Errorf("bpffs is not mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")
}
