package testbed

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netns"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/internal/cgroupv2"
)

var sweep sync.Once

// sweepOnce removes objects named by test processes that no longer exist
// (a run killed by a timeout never reaches its cleanups). Objects of live
// processes are left alone.
func sweepOnce() {
	sweep.Do(func() {
		dead := func(name string) bool {
			rest, ok := strings.CutPrefix(name, "kmt")
			if !ok {
				return false
			}
			end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
			if end <= 0 {
				return false
			}
			pid, err := strconv.Atoi(rest[:end])
			if err != nil || pid == os.Getpid() {
				return false
			}
			_, err = os.Stat("/proc/" + strconv.Itoa(pid))
			return os.IsNotExist(err)
		}
		if entries, err := os.ReadDir("/var/run/netns"); err == nil {
			for _, e := range entries {
				if dead(e.Name()) {
					_ = netns.DeleteNamed(e.Name())
				}
			}
		}
		if entries, err := os.ReadDir("/sys/fs/bpf"); err == nil {
			for _, e := range entries {
				if dead(e.Name()) {
					_ = loader.RemovePins(filepath.Join("/sys/fs/bpf", e.Name()))
				}
			}
		}
		if mnt, err := cgroupv2.Mountpoint(); err == nil {
			if entries, err := os.ReadDir(mnt); err == nil {
				for _, e := range entries {
					if e.IsDir() && dead(e.Name()) {
						_ = os.Remove(filepath.Join(mnt, e.Name()))
					}
				}
			}
		}
	})
}
