package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/bpf/podtc"
)

// ProgToPod is the tc program for a pod's host-side veth (egress: toward
// the pod). It is pinned under <PinDir>/progs for kmesh-cni to attach.
const ProgToPod = podtc.Prog

// MapPodTC records the per-pod tc attachments (see bpf/podtc).
const MapPodTC = podtc.MapName

var podTCSpec = &ebpf.MapSpec{
	Name:       MapPodTC,
	Type:       ebpf.Hash,
	KeySize:    podtc.KeySize,
	ValueSize:  podtc.ValueSize,
	MaxEntries: podtc.MaxEntries,
	Flags:      unix.BPF_F_NO_PREALLOC,
}

// openOrCreatePodTC makes sure km_pod_tc is pinned. One that kmesh-cni
// made (it does when it finds none, see podtc) has this shape and is kept.
// A pinned map of another shape (an older layout) is replaced: the filters
// it described keep running their program until their pods go.
func openOrCreatePodTC(pinDir string) error {
	path := podtc.RecordsPin(pinDir)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err == nil {
		ok := podTCSpec.Compatible(m) == nil
		m.Close()
		if ok {
			return nil
		}
	}
	fresh := errors.Is(err, os.ErrNotExist)
	m, err = ebpf.NewMap(podTCSpec)
	if err != nil {
		return fmt.Errorf("loader: create %s: %w", MapPodTC, err)
	}
	defer m.Close()
	if fresh {
		// Pin only if nobody (a plugin run) pinned one meanwhile.
		if err := m.Pin(path); err != nil {
			if theirs, lerr := ebpf.LoadPinnedMap(path, nil); lerr == nil {
				theirs.Close()
				return nil
			}
			return fmt.Errorf("loader: pin %s: %w", MapPodTC, err)
		}
		return nil
	}
	tmp := path + "_new"
	_ = os.Remove(tmp)
	if err := m.Pin(tmp); err != nil {
		return fmt.Errorf("loader: pin %s: %w", MapPodTC, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("loader: pin %s: %w", MapPodTC, err)
	}
	return nil
}

// publishPodPrograms pins the per-pod programs and re-points every per-pod
// attachment made by earlier runs at the new programs, so a restart
// upgrades pods in place.
func (d *Datapath) publishPodPrograms() error {
	prog := d.progs[ProgToPod]
	if prog == nil {
		return fmt.Errorf("loader: object has no program %s", ProgToPod)
	}
	if err := openOrCreatePodTC(d.cfg.PinDir); err != nil {
		return err
	}
	// Pin beside the old pin and rename over it: kmesh-cni always finds a
	// program at the path, never a gap. An attach that loaded the old
	// program re-checks the pin after recording itself (podtc.Attach), so
	// between that and Repoint no pod is left on the old program.
	path := podtc.ProgPin(d.cfg.PinDir)
	tmp := path + "_new" // bpffs names cannot contain dots
	_ = os.Remove(tmp)
	if err := prog.Pin(tmp); err != nil {
		return fmt.Errorf("loader: pin %s: %w", ProgToPod, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("loader: publish %s: %w", ProgToPod, err)
	}
	if err := podtc.Repoint(d.cfg.PinDir, prog.FD()); err != nil {
		return fmt.Errorf("loader: %w", err)
	}
	d.updateLegacyPodLinks(prog)
	return nil
}

// updateLegacyPodLinks re-points the tcx links that builds before cls_bpf
// pinned at <PinDir>/tc/<key> (see podtc); a defunct one is unpinned.
func (d *Datapath) updateLegacyPodLinks(prog *ebpf.Program) {
	dir := filepath.Join(d.cfg.PinDir, tcSubdir)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			continue
		}
		err = l.Update(prog)
		l.Close()
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// AttachPodTC attaches the pinned pod program to egress of the interface
// with index ifindex (in the calling thread's network namespace) and
// records it as key (see podtc.Attach).
func AttachPodTC(pinDir, key string, ifindex int) error { return podtc.Attach(pinDir, key, ifindex) }

// DetachPodTC removes a pod's tc attachment; a missing one is not an error.
func DetachPodTC(pinDir, key string) error { return podtc.Detach(pinDir, key) }

// PodTCAttachment describes a recorded per-pod attachment.
type PodTCAttachment = podtc.Attachment

// PodTC reports the recorded attachment for key, if any.
func PodTC(pinDir, key string) (PodTCAttachment, bool, error) { return podtc.Get(pinDir, key) }

// PodTCKeys lists every recorded per-pod attachment.
func PodTCKeys(pinDir string) ([]string, error) { return podtc.Keys(pinDir) }

// PodTCKey names a pod's tc attachment (see podtc.Key).
func PodTCKey(containerID, ifname string) string { return podtc.Key(containerID, ifname) }
