package loader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// ProgToPod is the tc program for a pod's host-side veth (egress: toward
// the pod). It is pinned under <PinDir>/progs for kmesh-cni to attach.
const ProgToPod = "km_tc_to_pod"

// MapPodTC records every per-pod tc attachment: attachment key -> the
// interface (ifindex, name) and the network namespace it is in. It is not
// read by any BPF program; it is the pinned registry that outlives the
// processes that attach (kmesh-cni runs and exits), so that DEL, GC, CHECK
// and a restarted daemon find every filter again.
//
// Why a pinned map and not a file: the attachment itself (a cls_bpf filter)
// cannot be pinned, so something else must remember it, and that something
// should live exactly as long as the pins it refers to. A map pinned beside
// the others does: it goes away with the pin directory (Uninstall,
// RemovePins, a reboot), an update is one atomic syscall with no file to
// fsync or lock, every writer (the plugin, the daemon) already has the pin
// directory and no other, and bpffs cannot hold plain files anyway.
const MapPodTC = "km_pod_tc"

// The filter kmesh owns on a host veth's egress (clsact parent ffff:fff3).
// One fixed priority and handle make attaching idempotent (a replace) and
// keep us off other tc users' filters: they pick their own priorities (tc's
// automatic ones count down from 49152, Cilium uses 1), and we never remove
// a filter we did not make nor the clsact qdisc, which may hold theirs.
// 0x4b4d is "KM"; lower numbers run first, so a policy filter of another
// tool at 1 still runs before us and ours before tc's automatic ones.
const (
	podTCPriority = 0x4b4d
	podTCHandle   = 1
)

// Layout of km_pod_tc. The key is the attachment key, NUL-padded.
const (
	podTCKeySize   = 200 // checkKey's limit
	podTCValueSize = 40
	podTCMaxPods   = 65536 // not preallocated: only live records use memory
)

var podTCSpec = &ebpf.MapSpec{
	Name:       MapPodTC,
	Type:       ebpf.Hash,
	KeySize:    podTCKeySize,
	ValueSize:  podTCValueSize,
	MaxEntries: podTCMaxPods,
	Flags:      unix.BPF_F_NO_PREALLOC,
}

// podTCRecord is one km_pod_tc value:
//
//	u32 ifindex | u32 reserved | u64 netns dev | u64 netns inode | char ifname[16]
type podTCRecord struct {
	Ifindex int
	Netns   netnsID
	Ifname  string
}

func (r podTCRecord) marshal() []byte {
	b := make([]byte, podTCValueSize)
	binary.LittleEndian.PutUint32(b[0:], uint32(r.Ifindex))
	binary.LittleEndian.PutUint64(b[8:], r.Netns.Dev)
	binary.LittleEndian.PutUint64(b[16:], r.Netns.Ino)
	copy(b[24:40], r.Ifname)
	return b
}

func unmarshalPodTC(b []byte) podTCRecord {
	name := b[24:40]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return podTCRecord{
		Ifindex: int(binary.LittleEndian.Uint32(b[0:])),
		Netns:   netnsID{Dev: binary.LittleEndian.Uint64(b[8:]), Ino: binary.LittleEndian.Uint64(b[16:])},
		Ifname:  string(name),
	}
}

func podTCKeyBytes(key string) []byte {
	b := make([]byte, podTCKeySize)
	copy(b, key)
	return b
}

func podTCKeyString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// openPodTCRecords opens the pinned record map of a loaded data path.
func openPodTCRecords(pinDir string) (*ebpf.Map, error) {
	return ebpf.LoadPinnedMap(filepath.Join(pinDir, mapsSubdir, MapPodTC), nil)
}

// openOrCreatePodTC reuses the pinned record map, or makes and pins one. A
// pinned map of another shape (an older layout) is replaced: the filters
// it described keep running their program until their pods go.
func openOrCreatePodTC(pinDir string) (*ebpf.Map, error) {
	path := filepath.Join(pinDir, mapsSubdir, MapPodTC)
	if m, err := ebpf.LoadPinnedMap(path, nil); err == nil {
		if podTCSpec.Compatible(m) == nil {
			return m, nil
		}
		m.Close()
	}
	m, err := ebpf.NewMap(podTCSpec)
	if err != nil {
		return nil, fmt.Errorf("loader: create %s: %w", MapPodTC, err)
	}
	tmp := path + "_new"
	_ = os.Remove(tmp)
	if err := m.Pin(tmp); err != nil {
		m.Close()
		return nil, fmt.Errorf("loader: pin %s: %w", MapPodTC, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		m.Close()
		return nil, fmt.Errorf("loader: pin %s: %w", MapPodTC, err)
	}
	return m, nil
}

// publishPodPrograms pins the per-pod programs and re-points every per-pod
// attachment made by earlier runs at the new programs, so a restart
// upgrades pods in place.
func (d *Datapath) publishPodPrograms() error {
	prog := d.progs[ProgToPod]
	if prog == nil {
		return fmt.Errorf("loader: object has no program %s", ProgToPod)
	}
	recs, err := openOrCreatePodTC(d.cfg.PinDir)
	if err != nil {
		return err
	}
	defer recs.Close()
	// Pin beside the old pin and rename over it: kmesh-cni always finds a
	// program at the path, never a gap. An attach that loaded the old
	// program re-checks the pin after recording itself (AttachPodTC), so
	// between that and the walk below no pod is left on the old program.
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

	// Replace each recorded filter in place (one netlink request, no gap:
	// cls_bpf swaps the program atomically), one netlink socket per
	// namespace. A record whose interface is gone is a pod deleted without
	// DEL: it is dropped. A namespace this process cannot reach is left
	// for the plugin's GC.
	byNetns := map[netnsID][]string{}
	all := map[string]podTCRecord{}
	key, val := make([]byte, podTCKeySize), make([]byte, podTCValueSize)
	it := recs.Iterate()
	for it.Next(&key, &val) {
		k, r := podTCKeyString(key), unmarshalPodTC(val)
		all[k] = r
		byNetns[r.Netns] = append(byNetns[r.Netns], k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("loader: list %s: %w", MapPodTC, err)
	}
	var errs []error
	for ns, keys := range byNetns {
		c, err := dialTC(ns)
		if err != nil {
			continue
		}
		for _, k := range keys {
			r := all[k]
			switch err := c.replace(r.Ifindex, r.Ifname, prog); {
			case errors.Is(err, errLinkGone):
				_ = recs.Delete(podTCKeyBytes(k))
			case err != nil && !errors.Is(err, os.ErrNotExist):
				// ErrNotExist: the filter was removed (DEL racing us, or
				// an operator): it stays removed.
				errs = append(errs, fmt.Errorf("loader: re-point tc of %s: %w", k, err))
			}
		}
		c.close()
	}
	d.updateLegacyPodLinks(prog)
	return errors.Join(errs...)
}

// AttachPodTC attaches the pinned pod program to egress of the interface
// with index ifindex (in the calling thread's network namespace), as a
// direct-action cls_bpf filter under a clsact qdisc, and records it under
// key in km_pod_tc so that it can be found and removed later by any
// process. Attaching an already attached key replaces its filter in place.
func AttachPodTC(pinDir, key string, ifindex int) error {
	if err := checkKey(key); err != nil {
		return err
	}
	progPath := filepath.Join(pinDir, progsSubdir, ProgToPod)
	prog, err := ebpf.LoadPinnedProgram(progPath, nil)
	if err != nil {
		return fmt.Errorf("open pinned %s under %s (is the kmesh data path loaded?): %w", ProgToPod, pinDir, err)
	}
	defer prog.Close()
	recs, err := openPodTCRecords(pinDir)
	if err != nil {
		return fmt.Errorf("open pinned %s under %s (is the kmesh data path loaded?): %w", MapPodTC, pinDir, err)
	}
	defer recs.Close()
	ns, err := currentNetns()
	if err != nil {
		return err
	}
	c, err := dialTC(ns)
	if err != nil {
		return err
	}
	defer c.close()
	name, err := c.linkName(ifindex)
	if err != nil {
		return fmt.Errorf("attach %s: interface %d: %w", ProgToPod, ifindex, err)
	}
	rec := podTCRecord{Ifindex: ifindex, Netns: ns, Ifname: name}

	// The key moved to another interface (a re-run ADD): take the filter
	// off the old one first.
	k := podTCKeyBytes(key)
	val := make([]byte, podTCValueSize)
	if err := recs.Lookup(k, &val); err == nil {
		if old := unmarshalPodTC(val); old != rec {
			if err := detachRecorded(old); err != nil {
				return fmt.Errorf("detach tc %s from interface %d: %w", key, old.Ifindex, err)
			}
		}
	}
	// Record first: a run killed halfway leaves a record, which DEL and
	// GC act on, rather than a filter nobody knows of.
	if err := recs.Put(k, rec.marshal()); err != nil {
		return fmt.Errorf("record tc attachment %s: %w", key, err)
	}
	if err := c.attach(ifindex, prog); err != nil {
		return fmt.Errorf("attach %s to interface %d: %w", ProgToPod, ifindex, err)
	}
	// A daemon restart may have published a new program while we attached
	// the old one, and walked the records before ours was there.
	if cur, err := ebpf.LoadPinnedProgram(progPath, nil); err == nil {
		defer cur.Close()
		if !sameProgram(cur, prog) {
			if err := c.attach(ifindex, cur); err != nil {
				return fmt.Errorf("attach %s to interface %d: %w", ProgToPod, ifindex, err)
			}
		}
	}
	return nil
}

// DetachPodTC removes a pod's tc attachment; a missing one is not an error.
// Only kmesh's own filter goes: the clsact qdisc and any other filters on
// the interface stay.
func DetachPodTC(pinDir, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := removeLegacyPodLink(pinDir, key); err != nil {
		return err
	}
	recs, err := openPodTCRecords(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil // no data path: nothing attached
	}
	if err != nil {
		return fmt.Errorf("detach tc %s: %w", key, err)
	}
	defer recs.Close()
	k := podTCKeyBytes(key)
	val := make([]byte, podTCValueSize)
	if err := recs.Lookup(k, &val); errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("detach tc %s: %w", key, err)
	}
	if err := detachRecorded(unmarshalPodTC(val)); err != nil {
		return fmt.Errorf("detach tc %s: %w", key, err)
	}
	if err := recs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("detach tc %s: %w", key, err)
	}
	return nil
}

// detachRecorded removes the filter a record describes, if it is still
// there. A namespace that is gone, or that this process cannot reach, has
// nothing left to remove from here.
func detachRecorded(r podTCRecord) error {
	c, err := dialTC(r.Netns)
	if errors.Is(err, errNetnsNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer c.close()
	err = c.detach(r.Ifindex, r.Ifname)
	if errors.Is(err, errLinkGone) {
		return nil
	}
	return err
}

// PodTCAttachment describes a recorded per-pod attachment.
type PodTCAttachment struct {
	Key     string
	Ifindex int
	// Live is false when the filter is no longer on the interface, or the
	// interface (or its namespace) has gone away.
	Live bool
}

// PodTC reports the recorded attachment for key, if any.
func PodTC(pinDir, key string) (PodTCAttachment, bool, error) {
	if err := checkKey(key); err != nil {
		return PodTCAttachment{}, false, err
	}
	recs, err := openPodTCRecords(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return legacyPodLink(pinDir, key)
	}
	if err != nil {
		return PodTCAttachment{}, false, fmt.Errorf("open %s: %w", MapPodTC, err)
	}
	defer recs.Close()
	val := make([]byte, podTCValueSize)
	if err := recs.Lookup(podTCKeyBytes(key), &val); errors.Is(err, ebpf.ErrKeyNotExist) {
		return legacyPodLink(pinDir, key)
	} else if err != nil {
		return PodTCAttachment{}, false, fmt.Errorf("read tc record %s: %w", key, err)
	}
	r := unmarshalPodTC(val)
	a := PodTCAttachment{Key: key, Ifindex: r.Ifindex}
	c, err := dialTC(r.Netns)
	if errors.Is(err, errNetnsNotFound) {
		return a, true, nil
	}
	if err != nil {
		return a, true, err
	}
	defer c.close()
	a.Live, err = c.present(r.Ifindex, r.Ifname)
	if errors.Is(err, errLinkGone) {
		err = nil
	}
	return a, true, err
}

// PodTCKeys lists every recorded per-pod attachment, sorted.
func PodTCKeys(pinDir string) ([]string, error) {
	out, err := legacyPodLinkKeys(pinDir)
	if err != nil {
		return nil, err
	}
	recs, err := openPodTCRecords(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	defer recs.Close()
	key, val := make([]byte, podTCKeySize), make([]byte, podTCValueSize)
	it := recs.Iterate()
	for it.Next(&key, &val) {
		out = append(out, podTCKeyString(key))
	}
	if err := it.Err(); err != nil {
		return nil, err
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// detachAllPodTC removes every recorded filter and the record map: for
// Uninstall and RemovePins.
func detachAllPodTC(pinDir string) error {
	recs, err := openPodTCRecords(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer recs.Close()
	var errs []error
	byNetns := map[netnsID][]podTCRecord{}
	key, val := make([]byte, podTCKeySize), make([]byte, podTCValueSize)
	it := recs.Iterate()
	for it.Next(&key, &val) {
		r := unmarshalPodTC(val)
		byNetns[r.Netns] = append(byNetns[r.Netns], r)
	}
	if err := it.Err(); err != nil {
		errs = append(errs, err)
	}
	for ns, rs := range byNetns {
		c, err := dialTC(ns)
		if errors.Is(err, errNetnsNotFound) {
			continue // gone, and its interfaces and filters with it
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, r := range rs {
			if err := c.detach(r.Ifindex, r.Ifname); err != nil && !errors.Is(err, errLinkGone) {
				errs = append(errs, fmt.Errorf("detach tc from %s: %w", r.Ifname, err))
			}
		}
		c.close()
	}
	if err := os.Remove(filepath.Join(pinDir, mapsSubdir, MapPodTC)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func sameProgram(a, b *ebpf.Program) bool {
	ia, err1 := a.Info()
	ib, err2 := b.Info()
	if err1 != nil || err2 != nil {
		return false
	}
	ida, ok1 := ia.ID()
	idb, ok2 := ib.ID()
	return ok1 && ok2 && ida == idb
}

// Pods attached by builds before cls_bpf have a tcx link pinned at
// <PinDir>/tc/<key>. They keep working (a restart re-points them too) and
// DEL, GC and CHECK still find them; new attachments never make one.
// Remove this once no node runs such a build.

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
		if err != nil {
			// The interface is gone: the link is defunct.
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

func legacyPodLink(pinDir, key string) (PodTCAttachment, bool, error) {
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, tcSubdir, key), nil)
	if errors.Is(err, os.ErrNotExist) {
		return PodTCAttachment{}, false, nil
	}
	if err != nil {
		return PodTCAttachment{}, false, fmt.Errorf("open tc link %s: %w", key, err)
	}
	defer l.Close()
	a := PodTCAttachment{Key: key}
	if info, err := l.Info(); err == nil && info.TCX() != nil {
		a.Ifindex = int(info.TCX().Ifindex)
		a.Live = a.Ifindex != 0
	}
	return a, true, nil
}

func removeLegacyPodLink(pinDir, key string) error {
	if err := os.Remove(filepath.Join(pinDir, tcSubdir, key)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach tc link %s: %w", key, err)
	}
	return nil
}

func legacyPodLinkKeys(pinDir string) ([]string, error) {
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
	if key == "" || key == "." || key == ".." || strings.ContainsAny(key, "/.\x00") || len(key) > podTCKeySize {
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
