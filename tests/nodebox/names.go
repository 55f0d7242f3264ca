package nodebox

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/internal/cgroupv2"
)

// Every object a box makes is named "<prefix>-<pid>-<n>[-<what>]", so a later
// run can tell the leftovers of a killed run (its pid is gone) from objects of
// a run still going.

const (
	netnsDir = "/var/run/netns"
	bpffsDir = "/sys/fs/bpf"
)

// ownerGone reports whether name is "<prefix>-<pid>-..." for a pid that is
// not running (and not this process).
func ownerGone(name, prefix string) bool {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	if !ok {
		return false
	}
	pidStr, after, ok := strings.Cut(rest, "-")
	if !ok || after == "" {
		return false
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	_, err = os.Stat("/proc/" + pidStr)
	return os.IsNotExist(err)
}

// sweep removes what boxes of this prefix left behind when their process
// died before cleaning up: network namespaces, pin directories, cgroups and
// work folders. Objects of live processes are left alone.
func sweep(prefix string, logf func(string, ...any)) {
	each := func(dir string, fn func(path string)) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, e := range entries {
			if ownerGone(e.Name(), prefix) {
				fn(filepath.Join(dir, e.Name()))
			}
		}
	}
	each(netnsDir, func(p string) {
		logf("removing network namespace %s left by an earlier run", filepath.Base(p))
		if err := run("ip", "netns", "delete", filepath.Base(p)); err != nil {
			logf("%v", err)
		}
	})
	each(bpffsDir, func(p string) {
		logf("removing pins %s left by an earlier run", p)
		if err := loader.RemovePins(p); err != nil {
			logf("%v", err)
		}
	})
	if mnt, err := cgroupv2.Mountpoint(); err == nil {
		each(mnt, func(p string) {
			if pids, _ := cgroupv2.Procs(p); len(pids) > 0 {
				logf("cgroup %s left by an earlier run still holds processes %v; leaving it", p, pids)
				return
			}
			logf("removing cgroup %s left by an earlier run", p)
			if err := os.Remove(p); err != nil {
				logf("%v", err)
			}
		})
	}
	each(os.TempDir(), func(p string) {
		logf("removing %s left by an earlier run", p)
		if err := os.RemoveAll(p); err != nil {
			logf("%v", err)
		}
	})
}

// run runs a short command; its output goes into the error.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
