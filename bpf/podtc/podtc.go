// Package podtc attaches the data path's pod program to a pod's host-side
// veth, and finds, re-points and removes such attachments later from any
// process.
//
// An attachment is a direct-action cls_bpf filter on the veth's egress
// (toward the pod) under a clsact qdisc: about 0.5 ms to make, where a tcx
// link waits for an RCU grace period (~15 ms), on the path of every pod's
// start. The filter has a fixed priority and handle, so attaching again is
// a replace, and detaching removes only it: never the clsact qdisc or
// another tool's filters. The program passes a packet with TC_ACT_UNSPEC,
// which with cls_bpf (as with tcx) goes on to the next filter.
//
// A filter cannot be pinned, so the pinned map km_pod_tc records each one
// (key -> interface and network namespace). It uses plain bpf(2) and
// netlink calls: kmesh-cni, a process per pod, does not link cilium/ebpf.
// The loader creates the map and re-points the filters on a restart
// (Repoint); bpf/loader re-exports this API under its older names.
package podtc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kmesh-go/kmesh/bpf/internal/bpfsys"
)

// Prog is the tc program for a pod's host-side veth (egress: toward the
// pod). The loader pins it at <pinDir>/progs/km_tc_to_pod.
const Prog = "km_tc_to_pod"

// MapName records every attachment: attachment key -> the interface
// (ifindex, name) and the network namespace it is in. No BPF program
// reads it; it is the registry that outlives the processes that attach
// (kmesh-cni runs and exits), so that DEL, GC, CHECK and a restarted daemon
// find every filter again. It is pinned at <pinDir>/maps/km_pod_tc.
//
// Why a pinned map: the filter itself cannot be pinned, so something else
// must remember it, and it should live exactly as long as the pins it
// refers to. A map pinned beside the others does: it goes away with the
// pin directory (uninstall, a reboot), an update is one atomic syscall
// with no file to write, rename or lock, and every writer (the plugin, the
// daemon) already has the pin directory and nothing else in common.
// (bpffs cannot hold plain files.)
const MapName = "km_pod_tc"

// Layout of km_pod_tc, for the loader that creates it. The key is the
// attachment key, NUL-padded; the value is
//
//	u32 ifindex | u32 reserved | u64 netns dev | u64 netns inode | char ifname[16]
const (
	KeySize    = 200 // the longest key Key may make
	ValueSize  = 40
	MaxEntries = 65536 // not preallocated: only live records use memory
)

// The filter kmesh owns on a host veth's egress (clsact parent ffff:fff3).
// Other tc users pick their own priorities (tc's automatic ones count down
// from 49152, Cilium uses 1); lower numbers run first. 0x4b4d is "KM".
const (
	priority = 0x4b4d
	handle   = 1
)

// ProgPin is where a data path pinned at pinDir keeps the program.
func ProgPin(pinDir string) string { return filepath.Join(pinDir, "progs", Prog) }

// RecordsPin is where a data path pinned at pinDir keeps km_pod_tc.
func RecordsPin(pinDir string) string { return filepath.Join(pinDir, "maps", MapName) }

// legacyPin is where builds before cls_bpf pinned a pod's tcx link.
func legacyPin(pinDir, key string) string { return filepath.Join(pinDir, "tc", key) }

type record struct {
	Ifindex int
	Netns   netnsID
	Ifname  string
}

func (r record) marshal() []byte {
	b := make([]byte, ValueSize)
	binary.NativeEndian.PutUint32(b[0:], uint32(r.Ifindex))
	binary.NativeEndian.PutUint64(b[8:], r.Netns.Dev)
	binary.NativeEndian.PutUint64(b[16:], r.Netns.Ino)
	copy(b[24:40], r.Ifname)
	return b
}

func unmarshal(b []byte) record {
	name := b[24:40]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return record{
		Ifindex: int(binary.NativeEndian.Uint32(b[0:])),
		Netns:   netnsID{Dev: binary.NativeEndian.Uint64(b[8:]), Ino: binary.NativeEndian.Uint64(b[16:])},
		Ifname:  string(name),
	}
}

func keyBytes(key string) []byte {
	b := make([]byte, KeySize)
	copy(b, key)
	return b
}

func keyString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func openRecords(pinDir string) (*bpfsys.Object, error) {
	return bpfsys.Open(RecordsPin(pinDir), bpfsys.TypeMap)
}

// openOrCreateRecords opens km_pod_tc, making it when a data path loaded
// by an older daemon has none (a plugin upgraded before its daemon): the
// daemon adopts a map of this shape when it starts. Pinning fails rather
// than replace a map someone pinned meanwhile; then that one is used.
func openOrCreateRecords(pinDir string) (*bpfsys.Object, error) {
	o, err := openRecords(pinDir)
	if !errors.Is(err, os.ErrNotExist) {
		return o, err
	}
	if _, err := os.Stat(filepath.Dir(RecordsPin(pinDir))); err != nil {
		return nil, err // no data path at all
	}
	m, err := bpfsys.CreateHash(MapName, KeySize, ValueSize, MaxEntries)
	if err != nil {
		return nil, err
	}
	if err := m.Pin(RecordsPin(pinDir)); err != nil {
		m.Close()
		if errors.Is(err, os.ErrExist) {
			return openRecords(pinDir)
		}
		return nil, err
	}
	return m, nil
}

// each calls fn for every record.
func each(recs *bpfsys.Object, fn func(key string, r record)) error {
	var prev []byte
	next, val := make([]byte, KeySize), make([]byte, ValueSize)
	for {
		more, err := recs.NextKey(prev, next)
		if err != nil || !more {
			return err
		}
		switch err := recs.Lookup(next, val); {
		case errors.Is(err, bpfsys.ErrKeyNotExist):
		case err != nil:
			return err
		default:
			fn(keyString(next), unmarshal(val))
		}
		prev = append(prev[:0], next...)
	}
}

// Attach attaches the pinned pod program to egress of the interface with
// index ifindex (in the calling thread's network namespace) and records
// it under key. Attaching an already attached key replaces its filter in
// place.
func Attach(pinDir, key string, ifindex int) error {
	if err := checkKey(key); err != nil {
		return err
	}
	prog, err := bpfsys.Open(ProgPin(pinDir), bpfsys.TypeProg)
	if err != nil {
		return fmt.Errorf("open pinned %s under %s (is the kmesh data path loaded?): %w", Prog, pinDir, err)
	}
	defer prog.Close()
	recs, err := openOrCreateRecords(pinDir)
	if err != nil {
		return fmt.Errorf("open pinned %s under %s (is the kmesh data path loaded?): %w", MapName, pinDir, err)
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
		return fmt.Errorf("attach %s: interface %d: %w", Prog, ifindex, err)
	}
	rec := record{Ifindex: ifindex, Netns: ns, Ifname: name}

	// The key moved to another interface (a re-run ADD): take the filter
	// off the old one first.
	k := keyBytes(key)
	val := make([]byte, ValueSize)
	if err := recs.Lookup(k, val); err == nil {
		if old := unmarshal(val); old != rec {
			if err := detachRecorded(old); err != nil {
				return fmt.Errorf("detach tc %s from interface %d: %w", key, old.Ifindex, err)
			}
		}
	}
	// Record first: a run killed halfway leaves a record, which DEL and
	// GC act on, rather than a filter nobody knows of.
	if err := recs.Update(k, rec.marshal(), bpfsys.UpdateAny); err != nil {
		return fmt.Errorf("record tc attachment %s: %w", key, err)
	}
	if err := c.attach(ifindex, prog.FD()); err != nil {
		return fmt.Errorf("attach %s to interface %d: %w", Prog, ifindex, err)
	}
	// A daemon restart may have published a new program while we attached
	// the old one, and re-pointed the records before ours was there.
	if cur, err := bpfsys.Open(ProgPin(pinDir), bpfsys.TypeProg); err == nil {
		defer cur.Close()
		if !sameObject(cur, prog) {
			if err := c.attach(ifindex, cur.FD()); err != nil {
				return fmt.Errorf("attach %s to interface %d: %w", Prog, ifindex, err)
			}
		}
	}
	return nil
}

func sameObject(a, b *bpfsys.Object) bool {
	ida, err1 := a.ID()
	idb, err2 := b.ID()
	return err1 == nil && err2 == nil && ida == idb
}

// Detach removes a pod's tc attachment; a missing one is not an error.
// Only kmesh's own filter goes: the clsact qdisc and any other filters on
// the interface stay.
func Detach(pinDir, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := os.Remove(legacyPin(pinDir, key)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach tc link %s: %w", key, err)
	}
	recs, err := openRecords(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil // no data path: nothing attached
	}
	if err != nil {
		return fmt.Errorf("detach tc %s: %w", key, err)
	}
	defer recs.Close()
	k := keyBytes(key)
	val := make([]byte, ValueSize)
	if err := recs.Lookup(k, val); errors.Is(err, bpfsys.ErrKeyNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("detach tc %s: %w", key, err)
	}
	if err := detachRecorded(unmarshal(val)); err != nil {
		return fmt.Errorf("detach tc %s: %w", key, err)
	}
	if err := recs.Delete(k); err != nil && !errors.Is(err, bpfsys.ErrKeyNotExist) {
		return fmt.Errorf("detach tc %s: %w", key, err)
	}
	return nil
}

// detachRecorded removes the filter a record describes, if it is still
// there. A namespace that is gone, or that this process cannot reach, has
// nothing left to remove from here.
func detachRecorded(r record) error {
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

// Attachment describes a recorded per-pod attachment.
type Attachment struct {
	Key     string
	Ifindex int
	// Live is false when the filter is no longer on the interface, or the
	// interface (or its namespace) has gone away.
	Live bool
}

// Get reports the recorded attachment for key, if any.
func Get(pinDir, key string) (Attachment, bool, error) {
	if err := checkKey(key); err != nil {
		return Attachment{}, false, err
	}
	recs, err := openRecords(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return legacyGet(pinDir, key)
	}
	if err != nil {
		return Attachment{}, false, fmt.Errorf("open %s: %w", MapName, err)
	}
	defer recs.Close()
	val := make([]byte, ValueSize)
	if err := recs.Lookup(keyBytes(key), val); errors.Is(err, bpfsys.ErrKeyNotExist) {
		return legacyGet(pinDir, key)
	} else if err != nil {
		return Attachment{}, false, fmt.Errorf("read tc record %s: %w", key, err)
	}
	r := unmarshal(val)
	a := Attachment{Key: key, Ifindex: r.Ifindex}
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

// Keys lists every recorded attachment, sorted.
func Keys(pinDir string) ([]string, error) {
	var out []string
	entries, err := os.ReadDir(filepath.Join(pinDir, "tc"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, e := range entries {
		out = append(out, e.Name())
	}
	recs, err := openRecords(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	defer recs.Close()
	if err := each(recs, func(key string, _ record) { out = append(out, key) }); err != nil {
		return nil, err
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Repoint points every recorded filter at the program behind progFD (a
// restart of the data path with new programs), replacing each in place:
// one netlink request, no gap (cls_bpf swaps the program atomically), one
// socket per namespace. A filter that was removed meanwhile stays removed;
// a record whose interface is gone (a pod deleted without DEL) is dropped;
// a namespace this process cannot reach is left for the plugin's GC.
func Repoint(pinDir string, progFD int) error {
	recs, err := openRecords(pinDir)
	if err != nil {
		return fmt.Errorf("open %s: %w", MapName, err)
	}
	defer recs.Close()
	byNetns := map[netnsID]map[string]record{}
	err = each(recs, func(key string, r record) {
		if byNetns[r.Netns] == nil {
			byNetns[r.Netns] = map[string]record{}
		}
		byNetns[r.Netns][key] = r
	})
	if err != nil {
		return fmt.Errorf("list %s: %w", MapName, err)
	}
	var errs []error
	for ns, rs := range byNetns {
		c, err := dialTC(ns)
		if err != nil {
			continue
		}
		for key, r := range rs {
			switch err := c.replace(r.Ifindex, r.Ifname, progFD); {
			case errors.Is(err, errLinkGone):
				_ = recs.Delete(keyBytes(key))
			case err != nil && !errors.Is(err, os.ErrNotExist):
				errs = append(errs, fmt.Errorf("re-point tc of %s: %w", key, err))
			}
		}
		c.close()
	}
	return errors.Join(errs...)
}

// DetachAll removes every recorded filter and unpins the record map: for
// uninstalling the data path.
func DetachAll(pinDir string) error {
	recs, err := openRecords(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer recs.Close()
	var errs []error
	byNetns := map[netnsID][]record{}
	if err := each(recs, func(_ string, r record) { byNetns[r.Netns] = append(byNetns[r.Netns], r) }); err != nil {
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
	if err := os.Remove(RecordsPin(pinDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// legacyGet reports a pod attached by a build before cls_bpf: a tcx link
// pinned at <pinDir>/tc/<key>. Such pods keep working (the loader
// re-points their links too) and DEL, GC and CHECK still find them; new
// attachments never make one. Remove once no node runs such a build.
func legacyGet(pinDir, key string) (Attachment, bool, error) {
	l, err := bpfsys.Open(legacyPin(pinDir, key), bpfsys.TypeLink)
	if errors.Is(err, os.ErrNotExist) {
		return Attachment{}, false, nil
	}
	if err != nil {
		return Attachment{}, false, fmt.Errorf("open tc link %s: %w", key, err)
	}
	defer l.Close()
	a := Attachment{Key: key}
	// struct bpf_link_info: __u32 type, id, prog_id; then a union aligned
	// to 8 whose tcx member starts with __u32 ifindex (0 once defunct).
	var info [24]byte
	const linkTypeTCX = 11
	if err := l.Info(info[:]); err == nil && binary.NativeEndian.Uint32(info[0:]) == linkTypeTCX {
		a.Ifindex = int(binary.NativeEndian.Uint32(info[16:]))
		a.Live = a.Ifindex != 0
	}
	return a, true, nil
}

func checkKey(key string) error {
	if key == "" || key == "." || key == ".." || strings.ContainsAny(key, "/.\x00") || len(key) > KeySize {
		return fmt.Errorf("invalid tc attachment key %q", key)
	}
	return nil
}

// Key names a pod's tc attachment: the sandbox's container id and the
// host-side interface, so GC can match it against the runtime's list of
// valid attachments.
func Key(containerID, ifname string) string {
	k := containerID + "_" + ifname
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '.' || r == 0 {
			return '-'
		}
		return r
	}, k)
}
