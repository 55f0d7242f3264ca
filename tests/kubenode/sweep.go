package kubenode

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// ownerGone reports whether name is "<prefix>-<pid>-<n>" for a pid that is
// not running (and not this process).
func ownerGone(name, prefix string) bool {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	if !ok {
		return false
	}
	pidStr, seq, ok := strings.Cut(rest, "-")
	if !ok {
		return false
	}
	if _, err := strconv.Atoi(seq); err != nil {
		return false
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	_, err = os.Stat("/proc/" + pidStr)
	return os.IsNotExist(err)
}

// sweep removes what nodes of this prefix left when their process died
// before Close: the processes in their cgroups (containerd's shims and the
// containers outlive it), their mount namespace, network namespace,
// cgroups and folder, and writes back the sysctls they recorded.
func sweep(prefix string, logf func(string, ...any)) {
	names := map[string]bool{}
	for _, dir := range []string{os.TempDir(), "/run/netns"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if ownerGone(e.Name(), prefix) {
				names[e.Name()] = true
			}
		}
	}
	if u, err := unifiedMount(); err == nil {
		entries, _ := os.ReadDir(u)
		for _, e := range entries {
			if e.IsDir() && ownerGone(e.Name(), prefix) {
				names[e.Name()] = true
			}
		}
	}
	for name := range names {
		logf("removing node %s left by an earlier run", name)
		if err := killCgroupRoot(name); err != nil {
			logf("%v", err)
		}
		dir := filepath.Join(os.TempDir(), name)
		m := &mountNS{dir: filepath.Join(dir, "ns"), File: filepath.Join(dir, "ns", "mnt")}
		if err := m.remove(); err != nil {
			logf("%v", err)
		}
		if _, err := os.Stat(filepath.Join("/run/netns", name)); err == nil {
			if err := run("ip", "netns", "delete", name); err != nil {
				logf("%v", err)
			}
		}
		if err := removeCgroupRoot(name); err != nil {
			logf("%v", err)
		}
		if h, err := loadHostState(filepath.Join(dir, "host-state.json")); err == nil {
			if changed, err := h.restore(); err != nil {
				logf("%v", err)
			} else {
				for _, c := range changed {
					logf("restored %s", c)
				}
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			logf("%v", err)
		}
	}
}

func commandContext(ctx context.Context, env []string, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	return cmd.CombinedOutput()
}
