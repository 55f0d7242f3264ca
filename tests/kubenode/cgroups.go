package kubenode

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The node's cgroups. The kubelet runs with cgroupRoot set to the node's
// own name, so its kubepods tree (and runc's containers below it) lands
// under /<name> in every hierarchy instead of at the machine's root. On this
// hybrid machine runc also puts each container at the same path in the
// cgroup v2 hierarchy (/sys/fs/cgroup/unified), which is where kmesh's
// programs attach: <unified>/<name>/kubepods. containerd and the kubelet
// themselves run in <unified>/<name>/runtime, outside kubepods.

const cgroupFS = "/sys/fs/cgroup"

// hierarchies are the mounted cgroup hierarchies, v1 controllers and the
// v2 one, as directories.
func hierarchies() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		i := slices.Index(f, "-")
		if i < 0 || i+1 >= len(f) || len(f) < 5 {
			continue
		}
		// A v2-only machine mounts its one hierarchy at cgroupFS itself.
		if fs := f[i+1]; (fs == "cgroup" || fs == "cgroup2") && (f[4] == cgroupFS || strings.HasPrefix(f[4], cgroupFS+"/")) {
			out = append(out, f[4])
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no cgroup hierarchy is mounted under " + cgroupFS)
	}
	return out, nil
}

// unifiedMount is the cgroup v2 mount: /sys/fs/cgroup/unified on a hybrid
// machine, /sys/fs/cgroup on a v2-only one.
func unifiedMount() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if i := slices.Index(f, "-"); i > 0 && i+1 < len(f) && f[i+1] == "cgroup2" && strings.HasPrefix(f[4], cgroupFS) {
			return f[4], nil
		}
	}
	return "", errors.New("cgroup2 is not mounted (.ci/deps mounts it at /sys/fs/cgroup/unified)")
}

// makeCgroupRoot creates /<name> in every hierarchy (the kubelet refuses a
// cgroupRoot that does not exist), with the parent's cpus and memory nodes
// in the cpuset one.
func makeCgroupRoot(name string) error {
	hs, err := hierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		dir := filepath.Join(h, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			return fmt.Errorf("create cgroup: %w", err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					return fmt.Errorf("cgroup %s: %s: %w", dir, f, err)
				}
			}
		}
	}
	return nil
}

// killCgroupRoot ends every process under /<name> (the node's runtime,
// shims and containers) and waits until they are gone: cgroup.kill on the
// v2 tree, then SIGKILL by pid for anything a v1 hierarchy still lists.
func killCgroupRoot(name string) error {
	if u, err := unifiedMount(); err == nil {
		if _, err := os.Stat(filepath.Join(u, name, "cgroup.kill")); err == nil {
			_ = os.WriteFile(filepath.Join(u, name, "cgroup.kill"), []byte("1"), 0o644)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		pids := cgroupPids(name)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still in cgroup %s", pids, name)
		}
		for _, pid := range pids {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cgroupPids lists the processes anywhere under /<name>, in any hierarchy.
func cgroupPids(name string) []int {
	hs, _ := hierarchies()
	seen := map[int]bool{}
	var out []int
	for _, h := range hs {
		_ = filepath.WalkDir(filepath.Join(h, name), func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, s := range strings.Fields(string(b)) {
				var pid int
				if _, err := fmt.Sscan(s, &pid); err == nil && !seen[pid] {
					seen[pid] = true
					out = append(out, pid)
				}
			}
			return nil
		})
	}
	return out
}

// removeCgroupRoot removes /<name> and everything below it, deepest first,
// in every hierarchy.
func removeCgroupRoot(name string) error {
	hs, err := hierarchies()
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hs {
		errs = append(errs, removeCgroupTree(filepath.Join(h, name)))
	}
	return errors.Join(errs...)
}

func removeCgroupTree(dir string) error {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
		}
	}
	return errors.Join(errs...)
}

// PodCgroups lists the pod-level cgroups (kubepods/.../pod<uid>) under the
// node's cgroup root in every hierarchy, as "<hierarchy>:<pod<uid>>".
func (n *Node) PodCgroups() []string {
	hs, _ := hierarchies()
	var out []string
	for _, h := range hs {
		base := filepath.Join(h, n.base)
		_ = filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() && strings.HasPrefix(d.Name(), "pod") {
				out = append(out, filepath.Base(h)+":"+d.Name())
				return filepath.SkipDir
			}
			return nil
		})
	}
	return out
}
