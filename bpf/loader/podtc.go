package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// ProgToPod is the tc program for a pod's host-side veth (egress: toward
// the pod). It is pinned under <PinDir>/progs for kmesh-cni to attach.
const ProgToPod = "km_tc_to_pod"

// publishPodPrograms pins the per-pod programs and re-points every per-pod
// link made by earlier runs at the new programs, so a restart upgrades pods
// in place.
func (d *Datapath) publishPodPrograms() error {
	prog := d.progs[ProgToPod]
	if prog == nil {
		return fmt.Errorf("loader: object has no program %s", ProgToPod)
	}
	// Pin beside the old pin and rename over it: kmesh-cni always finds a
	// program at the path, never a gap.
	path := filepath.Join(d.cfg.PinDir, progsSubdir, ProgToPod)
	tmp := path + "_new" // bpffs names cannot contain dots
	_ = os.Remove(tmp)
	if err := prog.Pin(tmp); err != nil {
		return fmt.Errorf("loader: pin %s: %w", ProgToPod, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("loader: publish %s: %w", ProgToPod, err)
	}
	dir := filepath.Join(d.cfg.PinDir, tcSubdir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("loader: list pod links: %w", err)
	}
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			continue
		}
		err = l.Update(prog)
		l.Close()
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			// The interface is gone (pod deleted without DEL): the link is
			// defunct and its pin only a leftover.
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	return nil
}

// AttachPodTC attaches the pinned pod program to egress of the interface
// with index ifindex (in the calling thread's network namespace) and pins
// the link as key, so it outlives the caller. Attaching an already attached
// key replaces its link.
func AttachPodTC(pinDir, key string, ifindex int) error {
	if err := checkKey(key); err != nil {
		return err
	}
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(pinDir, progsSubdir, ProgToPod), nil)
	if err != nil {
		return fmt.Errorf("open pinned %s under %s (is the kmesh data path loaded?): %w", ProgToPod, pinDir, err)
	}
	defer prog.Close()
	path := filepath.Join(pinDir, tcSubdir, key)
	// Already attached here: just make sure it runs the current program.
	// (Detaching and attaching again would race the kernel's deferred
	// release of the old link.)
	if old, err := link.LoadPinnedLink(path, nil); err == nil {
		info, ierr := old.Info()
		if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
			err := old.Update(prog)
			old.Close()
			if err != nil {
				return fmt.Errorf("update tc link %s: %w", key, err)
			}
			return nil
		}
		old.Close()
	}
	if err := DetachPodTC(pinDir, key); err != nil {
		return err
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		return fmt.Errorf("attach %s to interface %d: %w", ProgToPod, ifindex, err)
	}
	defer l.Close()
	if err := l.Pin(path); err != nil {
		return fmt.Errorf("pin tc link %s: %w", key, err)
	}
	return nil
}

// DetachPodTC removes a pod's tc attachment; a missing one is not an error.
func DetachPodTC(pinDir, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	path := filepath.Join(pinDir, tcSubdir, key)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach tc link %s: %w", key, err)
	}
	return nil
}

// PodTCAttachment describes a pinned per-pod link.
type PodTCAttachment struct {
	Key     string
	Ifindex int
	// Live is false when the interface has gone away under the link.
	Live bool
}

// PodTC reports the pinned attachment for key, if any.
func PodTC(pinDir, key string) (PodTCAttachment, bool, error) {
	if err := checkKey(key); err != nil {
		return PodTCAttachment{}, false, err
	}
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, tcSubdir, key), nil)
	if errors.Is(err, os.ErrNotExist) {
		return PodTCAttachment{}, false, nil
	}
	if err != nil {
		return PodTCAttachment{}, false, fmt.Errorf("open tc link %s: %w", key, err)
	}
	defer l.Close()
	a := PodTCAttachment{Key: key}
	info, err := l.Info()
	if err != nil {
		return a, true, nil
	}
	if tcx := info.TCX(); tcx != nil {
		a.Ifindex = int(tcx.Ifindex)
		a.Live = tcx.Ifindex != 0
	}
	return a, true, nil
}

// PodTCKeys lists every pinned per-pod attachment.
func PodTCKeys(pinDir string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(pinDir, tcSubdir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out, nil
}

func checkKey(key string) error {
	if key == "" || key == "." || key == ".." || strings.ContainsAny(key, "/.\x00") || len(key) > 200 {
		return fmt.Errorf("invalid tc attachment key %q", key)
	}
	return nil
}

// PodTCKey names a pod's tc attachment: the sandbox's container id and the
// host-side interface, so GC can match it against the runtime's list of
// valid attachments.
func PodTCKey(containerID, ifname string) string {
	k := containerID + "_" + ifname
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '.' || r == 0 {
			return '-'
		}
		return r
	}, k)
}
