// Package cnistate keeps one small JSON record per attachment (container id +
// interface) that kmesh-cni set up: which netns cookie it enrolled, which
// tc filter it attached, and what it told the daemon.
//
// The records are also the reference count of a netns's enrollment: one
// pod with several attachments (multus: one per network, each with its
// own interface, all in the sandbox's netns) shares one manage entry,
// which must stay while any of its attachments does. Sharing lists the
// others, under LockRefs, so a DEL or a failed ADD releases the netns only
// when its attachment was the last; being files, the count survives a
// plugin or daemon restart.
//
// DEL, CHECK and GC read it to undo or verify exactly what ADD did, even
// when the netns is gone. The daemon reads it (Read) when it starts, to
// learn every pod that was added while it was away: this is the re-signal
// path after a restart or an outage under failurePolicy "open".
package cnistate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Interface is one interface of the attachment, as the chain reported it.
type Interface struct {
	Name    string `json:"name"`
	Mac     string `json:"mac,omitempty"`
	Sandbox string `json:"sandbox,omitempty"`
}

// Record is what ADD did for one attachment.
type Record struct {
	// Network is the conflist's name: GC of one network leaves the
	// records of others alone.
	Network      string      `json:"network"`
	ContainerID  string      `json:"containerID"`
	IfName       string      `json:"ifName"`
	Netns        string      `json:"netns"`
	Cookie       uint64      `json:"cookie"`
	PodName      string      `json:"podName,omitempty"`
	PodNamespace string      `json:"podNamespace,omitempty"`
	PodUID       string      `json:"podUID,omitempty"`
	IPs          []string    `json:"ips,omitempty"`
	Interfaces   []Interface `json:"interfaces,omitempty"`
	HostVeth     string      `json:"hostVeth,omitempty"`
	HostIfindex  int         `json:"hostIfindex,omitempty"`
	// BPFDir is the data path the entries below were written to.
	BPFDir string `json:"bpfDir"`
	// Enrolled: ADD wrote Cookie into the manage map.
	Enrolled bool `json:"enrolled"`
	// WantEnrolled: ADD decided to enroll the pod, whether or not it could
	// (it cannot while no data path is pinned: the daemon then enrolls the
	// pod when it starts). Records written before the field existed say
	// so in Reason only (WantsEnrollment reads both).
	WantEnrolled bool `json:"wantEnrolled,omitempty"`
	// TCKey names the tc filter ADD attached to HostVeth (loader.PodTCKey,
	// the name the daemon uses too); empty when none was.
	TCKey      string `json:"tcKey,omitempty"`
	Reason     string `json:"reason,omitempty"`
	CgroupPath string `json:"cgroupPath,omitempty"`
	CgroupID   uint64 `json:"cgroupID,omitempty"`
	// Signaled: the daemon acknowledged the pod during ADD. False means
	// it still has to learn of it (Read at its start, or CHECK).
	Signaled bool      `json:"signaled"`
	Created  time.Time `json:"created"`
}

// NotEnrolledYet is appended to Reason when ADD decided to enroll the pod
// but found no data path pinned.
const NotEnrolledYet = "; not enrolled yet: "

// WantsEnrollment reports whether ADD decided to enroll the pod: the
// field, or for a record of an older plugin, an enrollment done or one
// put off for want of a data path.
func (r *Record) WantsEnrollment() bool {
	return r.WantEnrolled || r.Enrolled || strings.Contains(r.Reason, NotEnrolledYet)
}

// recordName is an attachment's record file name, without extension: a
// hash, since container ids and interface names may hold any characters
// CNI allows.
func recordName(containerID, ifName string) string {
	h := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return "km" + hex.EncodeToString(h[:16])
}

// Dir is an open state directory. Plugin runs hold it shared; GC holds it
// exclusive, so it never removes an attachment an ADD is halfway through.
type Dir struct {
	path string
	lock *os.File
}

const (
	lockName = "lock"
	// refsLockName serializes, briefly, the runs that change a netns's
	// attachments and its manage entry (ADD's enrollment, DEL's and a
	// failed ADD's release): without it two DELs of the two attachments
	// of one pod could each see the other still there and both keep the
	// entry, and an ADD could write the entry a DEL is about to remove.
	refsLockName = "refs.lock"
)

// Open creates the directory if needed and takes its lock.
func Open(path string, exclusive bool) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(path, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open state lock: %w", err)
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	if err := flock(f, how); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock state directory %s: %w", path, err)
	}
	return &Dir{path: path, lock: f}, nil
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// Close releases the lock.
func (d *Dir) Close() error { return d.lock.Close() }

// LockRefs takes the lock under which a run counts a netns's attachments
// (Sharing) and enrolls or releases it accordingly; unlock releases it.
// It is held for a few file and map operations, never across a call to
// the daemon or the API server. GC, which holds the directory exclusive,
// needs no LockRefs.
func (d *Dir) LockRefs() (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(d.path, refsLockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open state lock: %w", err)
	}
	if err := flock(f, syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock state directory %s: %w", d.path, err)
	}
	return func() { f.Close() }, nil
}

// Sharing returns the records of the other attachments of the netns of
// (containerID, ifName): those with its cookie, and those of its sandbox
// (the same container id, another interface), which share its netns
// whether or not a cookie was read (a DEL whose netns is gone or was not
// given has none). A cookie of 0 names no netns: only the sandbox counts
// then. Unreadable records are reported in err; the readable ones are
// returned all the same.
func (d *Dir) Sharing(cookie uint64, containerID, ifName string) ([]*Record, error) {
	recs, err := d.List()
	var out []*Record
	for _, r := range recs {
		if r.ContainerID == containerID && r.IfName == ifName {
			continue
		}
		if (cookie != 0 && r.Cookie == cookie) || r.ContainerID == containerID {
			out = append(out, r)
		}
	}
	return out, err
}

func (d *Dir) file(containerID, ifName string) string {
	return filepath.Join(d.path, recordName(containerID, ifName)+".json")
}

// Save writes a record atomically: readers see the old one or the new one.
func (d *Dir) Save(r *Record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("write state record: %w", err)
	}
	final := d.file(r.ContainerID, r.IfName)
	tmp := final + ".tmp" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write state record: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write state record: %w", err)
	}
	return nil
}

// Load returns the record of an attachment, if there is one.
func (d *Dir) Load(containerID, ifName string) (*Record, bool, error) {
	r, err := readRecord(d.file(containerID, ifName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return r, true, nil
}

// Remove deletes an attachment's record; a missing one is not an error.
func (d *Dir) Remove(containerID, ifName string) error {
	if err := os.Remove(d.file(containerID, ifName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove state record: %w", err)
	}
	return nil
}

// List returns every record in the directory.
func (d *Dir) List() ([]*Record, error) { return Read(d.path) }

// Read returns every record under path without taking the lock (records
// are replaced atomically, so each is whole). A missing directory holds no
// records. The daemon calls it at start to learn the node's pods.
func Read(path string) ([]*Record, error) {
	entries, err := os.ReadDir(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state directory: %w", err)
	}
	var out []*Record
	var errs []error
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		r, err := readRecord(filepath.Join(path, e.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, r)
	}
	return out, errors.Join(errs...)
}

func readRecord(file string) (*Record, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	r := &Record{}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("state record %s is corrupt: %w", file, err)
	}
	return r, nil
}
