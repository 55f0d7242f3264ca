// Package podcgroup finds a Kubernetes pod's cgroup v2 directory from its
// UID. The kubelet makes the directory before it asks for the sandbox, so
// it is there when the CNI plugin runs; its name depends on the cgroup
// driver:
//
//	cgroupfs: <root>/kubepods[/burstable|/besteffort]/pod<uid>
//	systemd:  <root>/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid with _>.slice
//
// under a root the kubelet may nest (--cgroup-root, kind's /kubelet.slice).
package podcgroup

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// maxDepth bounds the search below the hierarchy's root.
const maxDepth = 5

// Find returns the pod's cgroup directory (relative to root, with a
// leading slash) and its cgroup id (the directory's inode, which is what
// bpf_get_current_cgroup_id returns). ok is false when there is none.
func Find(root, uid string) (rel string, id uint64, ok bool) {
	if uid == "" || strings.ContainsAny(uid, "/.") {
		return "", 0, false
	}
	names := map[string]bool{
		"pod" + uid: true,
		"kubepods-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice": true,
	}
	systemdSuffix := "-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"
	match := func(name string) bool {
		return names[name] || strings.HasPrefix(name, "kubepods-") && strings.HasSuffix(name, systemdSuffix)
	}

	// The kubelet's default layouts first: a few stats instead of a walk.
	su := strings.ReplaceAll(uid, "-", "_")
	for _, rel := range []string{
		"/kubepods/pod" + uid,
		"/kubepods/burstable/pod" + uid,
		"/kubepods/besteffort/pod" + uid,
		"/kubepods.slice/kubepods-pod" + su + ".slice",
		"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + su + ".slice",
		"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + su + ".slice",
	} {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(root, rel), &st); err == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			return rel, st.Ino, true
		}
	}

	type dir struct {
		path string
		// inKube: below a directory the kubelet owns.
		inKube bool
	}
	level := []dir{{path: root}}
	for depth := 0; depth < maxDepth && len(level) > 0; depth++ {
		var next []dir
		for _, d := range level {
			entries, err := os.ReadDir(d.path)
			if err != nil {
				continue
			}
			for _, e := range entries {
				if !e.IsDir() {
					continue
				}
				path := filepath.Join(d.path, e.Name())
				inKube := d.inKube || strings.Contains(e.Name(), "kube")
				if inKube && match(e.Name()) {
					var st syscall.Stat_t
					if err := syscall.Stat(path, &st); err != nil {
						return "", 0, false
					}
					r, _ := filepath.Rel(root, path)
					return "/" + r, st.Ino, true
				}
				// Only descend where the kubelet keeps pods, not into every
				// system service's cgroup.
				// Pods do not nest: another pod's cgroup holds only its
				// containers.
				isPod := strings.HasPrefix(e.Name(), "pod") || strings.Contains(e.Name(), "-pod")
				if inKube && !isPod {
					next = append(next, dir{path, true})
				}
			}
		}
		level = next
	}
	return "", 0, false
}
